//! The live job list (issue 11, point 5): sizes and line counts of running
//! jobs in the API, `ls --json` and `show`; the job list's paging and search;
//! the job events stream (`/api/events`). The page itself is tested in
//! `serve_browser.rs`.

use crate::util::serve::*;
use crate::util::*;
use serde_json::Value;

/// The `stdout`/`stderr` counts of a metadata document, as `(bytes, lines)`.
fn counts(m: &Value) -> [(u64, u64); 2] {
    ["stdout", "stderr"].map(|s| {
        (
            m[s]["bytes"].as_u64().unwrap_or(u64::MAX),
            m[s]["lines"].as_u64().unwrap_or(u64::MAX),
        )
    })
}

#[test]
fn a_running_job_shows_its_sizes_and_lines_as_they_are_now() {
    let env = TestEnv::new();
    // Two whole lines and one in progress on stdout, one line on stderr, then
    // the job waits on its stdin.
    let job = LiveJob::start_script(
        &env,
        "live",
        &[],
        "printf 'one\\ntwo\\nthr'; echo oops >&2; read x || true",
    );
    wait_until(LIMIT, "the output to be written", || {
        env.stdout_log("live").len() == 11 && env.stderr_log("live").len() == 5
    });
    let want = [(11, 3), (5, 1)];
    // metadata.json itself only gets the counts when the job ends.
    assert_eq!(counts(&env.meta("live")), [(0, 0), (0, 0)]);

    let srv = Serve::start(&env, &[]);
    let one = get(srv.port, "/api/job_runs/live", &[]).json();
    assert_eq!(one["status"], "running");
    assert_eq!(counts(&one), want, "GET /api/job_runs/live");
    let list = get(srv.port, "/api/job_runs", &[]).json();
    assert_eq!(counts(&list[0]), want, "GET /api/job_runs");

    let ls = env.run(&["ls", "--json"]);
    assert_ok(&ls);
    let ls: Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(counts(&ls[0]), want, "ls --json");

    let show = env.run(&["show", "live", "--json"]);
    assert_ok(&show);
    let show: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(counts(&show), want, "show --json");
    let text = env.run(&["show", "live"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("11 bytes (11B), 3 lines"),
        "show gives the live counts: {text}"
    );

    assert!(job.finish().success());
    let done = get(srv.port, "/api/job_runs/live", &[]).json();
    assert_eq!(counts(&done), want, "the final counts agree");
}

/// The next job event that is not `progress`, with its data parsed.
fn next_change(c: &mut SseConn) -> (String, Value) {
    loop {
        let e = c.next().expect("the job events stream stays open");
        if e.event != "progress" {
            return (e.event, serde_json::from_str(&e.data).unwrap());
        }
    }
}

#[test]
fn the_job_events_stream_announces_jobs_starting_progressing_and_ending() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut c = SseConn::open(srv.port, "/api/events", &[]);
    assert_eq!(c.resp.status, 200);
    assert_eq!(
        c.resp.header("content-type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );

    let mut job = LiveJob::start(&env, "ok-job", &[]);
    let (event, v) = next_change(&mut c);
    assert_eq!(
        (event.as_str(), &v["id"], &v["status"]),
        ("started", &"ok-job".into(), &"running".into())
    );
    assert_eq!(v["command"][0], "sh");
    assert!(
        v["started_at"].is_string() && v["duration_ms"].is_u64(),
        "{v}"
    );

    // New output: a progress event with the live counts.
    job.say("hello");
    loop {
        let e = c.next().unwrap();
        assert_eq!(e.event, "progress", "{e:?}");
        let v: Value = serde_json::from_str(&e.data).unwrap();
        if v["stdout"]["lines"] == 1 {
            assert_eq!(v["stdout"]["bytes"], 6);
            break;
        }
    }
    assert!(job.finish().success());
    let (event, v) = next_change(&mut c);
    assert_eq!(
        (event.as_str(), &v["status"], &v["exit_code"]),
        ("finished", &"succeeded".into(), &0.into())
    );

    // A job that starts and ends between two looks: both are told.
    let out = env.run_sh("quick", &["--no-pty", "-q"], "exit 3");
    assert_eq!(out.status.code(), Some(3));
    let (event, v) = next_change(&mut c);
    assert_eq!((event.as_str(), &v["id"]), ("started", &"quick".into()));
    let (event, v) = next_change(&mut c);
    assert_eq!(
        (event.as_str(), &v["status"], &v["exit_code"]),
        ("finished", &"failed".into(), &3.into())
    );

    // A wrapper killed without a word: its job turns abandoned.
    let mut dead = LiveJob::start(&env, "dead", &[]);
    let (event, _) = next_change(&mut c);
    assert_eq!(event, "started");
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let (event, v) = next_change(&mut c);
    assert_eq!(
        (event.as_str(), &v["id"], &v["status"]),
        ("status", &"dead".into(), &"abandoned".into())
    );

    // Removed (gc, or by hand): told too.
    std::fs::remove_dir_all(env.job_dir("quick")).unwrap();
    let (event, v) = next_change(&mut c);
    assert_eq!((event.as_str(), &v["id"]), ("removed", &"quick".into()));
}

#[test]
fn the_job_events_stream_needs_the_token_and_gets_heartbeats() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &["--token", "s3cret", "--heartbeat", "1s"]);
    assert_eq!(get(srv.port, "/api/events", &[]).status, 401);
    let mut c = SseConn::open(srv.port, "/api/events?token=s3cret", &[]);
    assert_eq!(c.resp.status, 200);
    c.wait_parser("a heartbeat", |p| {
        p.comments.iter().any(|c| c == " heartbeat")
    });
    // "events" is a job id like any other under /api/job_runs/.
    env.run_sh("events", &["--no-pty", "-q"], "true");
    let job = get(
        srv.port,
        "/api/job_runs/events",
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(job.json()["job_run_id"], "events");
}
