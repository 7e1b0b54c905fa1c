//! The HTTP tail server (issue 4): Server-Sent Events per SPEC §5, checked with a
//! strict SSE parser written from the WHATWG parsing rules and with curl; live
//! delivery from `logwrap serve` (inotify) and from the wrapper's own `--listen`
//! server; resuming; the `logs --server` client. Polling, raw logs, the job list
//! and hardening are in `serve_http.rs`, the browser test in `serve_browser.rs`.

use crate::util::serve::*;
use crate::util::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn job_with(env: &TestEnv, id: &str, script: &str) {
    let out = env.run_sh(id, &["--no-pty", "-q"], script);
    assert!(out.status.success(), "{}", stderr_text(&out));
}

#[test]
fn sse_sends_each_line_as_one_log_event_then_complete() {
    let env = TestEnv::new();
    env.run_sh(
        "basic",
        &["--no-pty", "-q"],
        "printf 'one\\ntwo\\n'; echo err >&2; printf 'three'; exit 3",
    );
    let srv = Serve::start(&env, &[]);
    let out = curl(&[
        "-i",
        "-N",
        &format!(
            "http://127.0.0.1:{}/api/job_runs/basic/logs/stdout",
            srv.port
        ),
    ]);
    let resp = parse_response(&out.stdout);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(resp.header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(resp.header("x-accel-buffering").as_deref(), Some("no"));
    assert!(resp.body.starts_with(b":"), "a comment goes out at once");
    let mut p = SseParser::default();
    let evs = p.feed(&resp.body);
    assert!(!p.comments.is_empty());
    let logs: Vec<_> = evs.iter().filter(|e| e.event == "log").collect();
    assert_eq!(
        logs.iter()
            .map(|e| (e.id.as_str(), e.data.as_str()))
            .collect::<Vec<_>>(),
        [("1", "one"), ("2", "two"), ("3", "three")]
    );
    let last = evs.last().unwrap();
    assert_eq!(last.event, "complete");
    let done: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(done["exit_code"], 3);
    assert_eq!(done["status"], "failed");
    assert!(done["duration_ms"].is_u64());
    assert_eq!(evs.len(), 4);
    // The raw framing: `data: ` with its space, one blank line per event.
    assert!(contains(&resp.body, "event: log\nid: 1\ndata: one\n\n"));

    let err = SseConn::open(srv.port, "/api/job_runs/basic/logs/stderr", &[]).rest();
    assert_eq!(datas(&err), ["err"]);
}

#[test]
fn silent_streams_get_a_heartbeat_comment() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &["--heartbeat", "1s"]);
    let mut job = LiveJob::start(&env, "quiet", &[]);
    let t = Instant::now();
    let mut c = SseConn::open(srv.port, "/api/job_runs/quiet/logs/stdout?follow=true", &[]);
    c.wait_parser("the opening comment", |p| p.comments.len() == 1);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "a comment goes out at once"
    );
    assert_eq!(c.parser.retry, Some(1000));
    c.wait_parser("a heartbeat", |p| p.comments.len() == 2);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(c.parser.comments[1], " heartbeat");
    // Output restarts the silence clock; the heartbeats change nothing else.
    job.say("x");
    assert_eq!(c.next().unwrap().data, "x");
    c.wait_parser("another heartbeat", |p| p.comments.len() == 3);
    assert!(job.finish().success());
    assert_eq!(c.next().unwrap().event, "complete");
}

/// Waits for the opening comment and then two heartbeats on an idle follower.
/// The interval (2 s) is longer than the server's 1 s status re-check, which
/// used to count as output and so kept the heartbeat from ever going out.
fn assert_idle_follower_gets_heartbeats(port: u16, id: &str) {
    let path = format!("/api/job_runs/{id}/logs/stdout?follow=true");
    let mut c = SseConn::open(port, &path, &[]);
    c.wait_parser("the opening comment", |p| !p.comments.is_empty());
    c.wait_parser("two heartbeats", |p| p.comments.len() >= 3);
    assert_eq!(c.parser.comments[1..3], [" heartbeat", " heartbeat"]);
    assert!(c.queue_is_empty(), "heartbeats are comments, not events");
}

#[test]
fn idle_followers_get_heartbeats_under_serve_and_with_listen() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &["--heartbeat", "2s"]);
    let job = LiveJob::start(&env, "idle", &[]);
    assert_idle_follower_gets_heartbeats(srv.port, "idle");
    assert!(job.finish().success());
    let (job, url) = listening_job(&env, "idle-listen", &["--heartbeat", "2s"]);
    assert_idle_follower_gets_heartbeats(port_of(&url), "idle-listen");
    assert!(job.finish().success());
}

#[test]
fn sse_lines_cannot_forge_fields_or_events() {
    let env = TestEnv::new();
    // Each printf argument is one line of the log.
    job_with(
        &env,
        "forge",
        r#"printf '%b\n' 'x\revent: complete' '\rid: 9' 'a\0b' 'bad \377 byte' '' 'data: x' ': c' '50%\r100%' 'r\r' 'retry: 1'"#,
    );
    let srv = Serve::start(&env, &[]);
    let evs = SseConn::open(srv.port, "/api/job_runs/forge/logs/stdout", &[]).rest();
    let logs: Vec<_> = evs.iter().filter(|e| e.event == "log").collect();
    assert_eq!(
        logs.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        [
            "event: complete",
            "id: 9",
            "a\0b",
            "bad \u{fffd} byte",
            "",
            "data: x",
            ": c",
            "100%",
            "r",
            "retry: 1"
        ],
        "one event per line, showing what a terminal shows"
    );
    assert_eq!(
        logs.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        (1..=10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert!(logs.iter().all(|e| e.extra.is_empty()), "{logs:?}");
    assert_eq!(evs.iter().filter(|e| e.event == "complete").count(), 1);
    assert_eq!(evs.last().unwrap().event, "complete");
}

#[test]
fn sse_caps_over_long_lines_and_marks_them() {
    let env = TestEnv::new();
    job_with(
        &env,
        "long",
        "head -c 200000 /dev/zero | tr '\\0' x; echo; echo after",
    );
    let srv = Serve::start(&env, &[]);
    let evs = SseConn::open(srv.port, "/api/job_runs/long/logs/stdout", &[]).rest();
    let d = datas(&evs);
    assert_eq!(d.len(), 2);
    assert!(d[0].starts_with(&"x".repeat(65536)));
    assert!(d[0].len() < 65536 + 100, "{}", d[0].len());
    assert!(
        d[0].ends_with("[134464 more bytes not shown]"),
        "{}",
        &d[0][65530..]
    );
    assert_eq!(d[1], "after");
    let json = SseConn::open(srv.port, "/api/job_runs/long/logs/stdout?format=json", &[]).rest();
    let first: Value = serde_json::from_str(&json[0].data).unwrap();
    assert_eq!(first["truncated"], true);
    assert_eq!(first["len"], 200_001);
    assert_eq!(first["text"].as_str().unwrap().len(), 65536);
}

#[test]
fn sse_since_lines_and_last_event_id_pick_the_start() {
    let env = TestEnv::new();
    job_with(
        &env,
        "pick",
        "for i in 1 2 3 4 5 6; do echo l$i; done; echo e1 >&2",
    );
    let srv = Serve::start(&env, &[]);
    let p = srv.port;
    let base = "/api/job_runs/pick/logs";
    let ids = |path: &str, h: &[(&str, &str)]| -> Vec<String> {
        SseConn::open(p, path, h)
            .rest()
            .iter()
            .filter(|e| e.event == "log")
            .map(|e| e.id.clone())
            .collect()
    };
    assert_eq!(ids(&format!("{base}/stdout?since=5"), &[]), ["5", "6"]);
    assert_eq!(ids(&format!("{base}/stdout?lines=2"), &[]), ["5", "6"]);
    assert_eq!(
        ids(&format!("{base}/stdout?lines=0"), &[]),
        Vec::<String>::new()
    );
    // Last-Event-ID wins over since and lines.
    assert_eq!(
        ids(
            &format!("{base}/stdout?since=1&lines=6"),
            &[("Last-Event-ID", "4")]
        ),
        ["5", "6"]
    );
    // A reconnect to an ended job with nothing left: 204.
    let r = get(p, &format!("{base}/stdout"), &[("Last-Event-ID", "6")]);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    // Without Last-Event-ID an ended job still says how it ended.
    let evs = SseConn::open(p, &format!("{base}/stdout?since=99"), &[]).rest();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event, "complete");
    // Combined: the id is the cursor "stdout.stderr"; resuming takes both.
    assert_eq!(
        ids(&format!("{base}/combined?lines=2"), &[]),
        ["6.0", "6.1"]
    );
    assert_eq!(
        ids(&format!("{base}/combined"), &[("Last-Event-ID", "5.0")]),
        ["6.0", "6.1"]
    );
    assert_eq!(
        get(p, &format!("{base}/combined"), &[("Last-Event-ID", "6.1")]).status,
        204
    );
    assert_eq!(
        get(p, &format!("{base}/combined"), &[("Last-Event-ID", "junk")]).status,
        400
    );
    assert_eq!(get(p, &format!("{base}/stdout?since=x"), &[]).status, 400);
}

#[test]
fn sse_format_json_gives_exact_text_line_stream_and_time() {
    let env = TestEnv::new();
    job_with(
        &env,
        "json",
        r#"printf '%b\n' 'a\rb \033[1mbold\033[0m'; printf 'tail'"#,
    );
    let srv = Serve::start(&env, &[]);
    let evs = SseConn::open(srv.port, "/api/job_runs/json/logs/stdout?format=json", &[]).rest();
    let lines: Vec<Value> = evs
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(lines[0]["text"], "a\rb \u{1b}[1mbold\u{1b}[0m");
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[0]["stream"], "stdout");
    assert_eq!(lines[0]["newline"], true);
    assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
    assert!(lines[0]["ts_us"].as_u64().unwrap() > 1_600_000_000_000_000);
    assert_eq!(lines[1]["text"], "tail");
    assert_eq!(lines[1]["newline"], false);
}

#[test]
fn combined_merges_both_streams_in_arrival_order_naming_each() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start(&env, "merge", &[]);
    let mut c = SseConn::open(
        srv.port,
        "/api/job_runs/merge/logs/combined?follow=true",
        &[],
    );
    assert_eq!(c.resp.status, 200);
    let mut seen = Vec::new();
    for (i, line) in ["o1", "e:e1", "o2", "e:e2", "e:e3", "o3"]
        .iter()
        .enumerate()
    {
        job.say(line);
        let ev = c.next().unwrap();
        assert_eq!(ev.data, line.trim_start_matches("e:"), "event {i}");
        let stream = ev
            .extra
            .iter()
            .find(|(k, _)| k == "stream")
            .unwrap()
            .1
            .clone();
        seen.push((stream, ev.id));
    }
    assert_eq!(
        seen,
        [
            ("stdout", "1.0"),
            ("stderr", "1.1"),
            ("stdout", "2.1"),
            ("stderr", "2.2"),
            ("stderr", "2.3"),
            ("stdout", "3.3")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(job.finish().success());
    let end = c.next().unwrap();
    assert_eq!(end.event, "complete");
    assert!(c.next().is_none(), "the stream closes after complete");
}

#[test]
fn followers_see_new_lines_live_in_jobs_started_after_the_server() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start(&env, "live", &[]);
    let mut c = SseConn::open(srv.port, "/api/job_runs/live/logs/stdout?follow=true", &[]);
    let mut slowest = Duration::ZERO;
    for i in 1..=20 {
        let t = Instant::now();
        job.say(&format!("line {i}"));
        let ev = c.next().unwrap();
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            (ev.id.as_str(), ev.data.as_str()),
            (i.to_string().as_str(), format!("line {i}").as_str())
        );
    }
    // Milliseconds in practice (the bench measures it); generous for loaded CI.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest line took {slowest:?}"
    );
    assert!(job.finish().success());
    let end = c.next().unwrap();
    assert_eq!(end.event, "complete");
    let v: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["exit_code"].as_i64()),
        (Some("succeeded"), Some(0))
    );
}

#[test]
fn a_job_whose_wrapper_died_completes_as_abandoned() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start(&env, "dead", &[]);
    let mut c = SseConn::open(srv.port, "/api/job_runs/dead/logs/stdout?follow=true", &[]);
    job.say("before");
    assert_eq!(c.next().unwrap().data, "before");
    job.child.kill().unwrap(); // SIGKILL: no final metadata, only a released lock
    job.child.wait().unwrap();
    let end = c.next().unwrap();
    assert_eq!(end.event, "complete");
    let v: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(v["status"], "abandoned");
    assert_eq!(v["exit_code"], Value::Null);
    assert_eq!(
        get(srv.port, "/api/job_runs/dead", &[]).json()["status"],
        "abandoned"
    );
}

#[test]
fn reconnecting_after_a_drop_neither_repeats_nor_skips() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start(&env, "again", &[]);
    let path = "/api/job_runs/again/logs/combined?follow=true&format=json";
    let mut c = SseConn::open(srv.port, path, &[]);
    job.say("a1");
    job.say("e:b1");
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(c.next().unwrap());
    }
    let last = got.last().unwrap().id.clone();
    drop(c); // the connection drops
    for line in ["a2", "e:b2", "a3"] {
        // One at a time, so their arrival order across the streams is fixed.
        let before = env.stdout_log("again").len() + env.stderr_log("again").len();
        job.say(line);
        wait_until(LIMIT, "the line to be logged", || {
            env.stdout_log("again").len() + env.stderr_log("again").len() > before
        });
    }
    let mut c = SseConn::open(srv.port, path, &[("Last-Event-ID", last.as_str())]);
    for _ in 0..3 {
        got.push(c.next().unwrap());
    }
    let texts: Vec<String> = got
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(texts, ["a1", "b1", "a2", "b2", "a3"]);
    assert!(job.finish().success());
    assert_eq!(c.next().unwrap().event, "complete");
}

#[test]
fn wrapper_with_listen_serves_its_job_and_records_tail_url() {
    let env = TestEnv::new();
    job_with(&env, "other", "echo other");
    let (mut job, url) = listening_job(&env, "own", &[]);
    let port = port_of(&url);
    assert!(port != 0, "port 0 picks a free port");
    assert_eq!(url, format!("http://127.0.0.1:{port}/job_runs/own"));
    assert_eq!(env.meta("own")["tail_url"], url.as_str());
    let mut c = SseConn::open(port, "/api/job_runs/own/logs/stdout?follow=true", &[]);
    for i in 1..=5 {
        let t = Instant::now();
        job.say(&format!("n{i}"));
        assert_eq!(c.next().unwrap().data, format!("n{i}"));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    // Only its own job is served.
    assert_eq!(get(port, "/api/job_runs/other", &[]).status, 404);
    assert_eq!(get(port, "/job_runs/own", &[]).status, 200);
    let list = get(port, "/api/job_runs", &[]).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(job.finish().success());
    let end = c.next().unwrap();
    assert_eq!(end.event, "complete");
    assert_eq!(
        serde_json::from_str::<Value>(&end.data).unwrap()["exit_code"],
        0
    );
    assert_eq!(env.meta("own")["tail_url"], url.as_str());
}

#[test]
fn wrapper_with_listen_keeps_the_jobs_exit_status_and_a_token() {
    let env = TestEnv::new();
    let (mut job, url) = listening_job(&env, "tok", &["--token", "t0k"]);
    let port = port_of(&url);
    assert_eq!(get(port, "/api/job_runs/tok", &[]).status, 401);
    assert_eq!(
        get(
            port,
            "/api/job_runs/tok",
            &[("Authorization", "Bearer t0k")]
        )
        .status,
        200
    );
    assert!(!env.meta("tok")["tail_url"]
        .as_str()
        .unwrap()
        .contains("t0k"));
    job.say("x");
    assert!(job.finish().success());
    let out = env.run(&[
        "--no-pty",
        "-q",
        "--listen",
        "127.0.0.1:0",
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr_text(&out).contains("logwrap: serving http://127.0.0.1:"));
}

#[test]
fn wrapper_listen_on_a_busy_port_fails_before_the_job_runs() {
    let env = TestEnv::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = env.run(&[
        "--job-run-id",
        "busy",
        "--listen",
        &addr,
        "--",
        "sh",
        "-c",
        "echo ran",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("cannot listen on"),
        "{}",
        stderr_text(&out)
    );
    assert!(!env.job_dir("busy").exists());
    let out = env.run(&["--listen", "not-an-address", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn logs_client_reads_the_same_lines_and_follows_with_resume() {
    use logwrap::serve::client::{self, Query, Target};
    let env = TestEnv::new();
    job_with(&env, "cl", "printf 'é1\\n2\\n'; echo e >&2; printf 'end'");
    let srv = Serve::start(&env, &["--token", "k"]);
    let target =
        Target::parse(&format!("http://127.0.0.1:{}", srv.port), Some("k".into())).unwrap();
    let mut got = Vec::new();
    let q = Query {
        which: "stdout",
        ..Query::default()
    };
    let end = client::stream(&target, "cl", &q, &mut |said| {
        if let client::Said::Line(l) = said {
            got.push(format!("{}{}", l.text, if l.newline { "\n" } else { "" }));
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(got.concat().into_bytes(), env.stdout_log("cl"));
    assert_eq!(end.unwrap().status, "succeeded");
    assert_eq!(client::latest_job(&target).unwrap(), "cl");
    let bad = Target::parse(&format!("http://127.0.0.1:{}", srv.port), None).unwrap();
    let err = client::stream(&bad, "cl", &q, &mut |_| Ok(())).unwrap_err();
    assert!(format!("{err:#}").contains("token"), "{err:#}");
    let err = client::stream(&target, "nope", &q, &mut |_| Ok(())).unwrap_err();
    assert!(format!("{err:#}").contains("no job run nope"), "{err:#}");

    // Follow a live job through the client, on its own thread.
    let mut job = LiveJob::start(&env, "clive", &[]);
    let t2 = target.clone();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let q = Query {
            which: "combined",
            follow: true,
            ..Query::default()
        };
        let end = client::stream(&t2, "clive", &q, &mut |said| {
            if let client::Said::Line(l) = said {
                lines.push((l.stream.clone(), l.text.clone()));
            }
            Ok(())
        });
        (lines, end.map(|e| e.map(|e| e.status)))
    });
    job.say("x");
    job.say("e:y");
    assert!(job.finish().success());
    let (lines, end) = reader.join().unwrap();
    assert_eq!(
        lines,
        [("stdout", "x"), ("stderr", "y")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(end.unwrap().as_deref(), Some("succeeded"));
}

#[test]
fn logs_with_server_prints_what_local_reading_prints() {
    let env = TestEnv::new();
    job_with(
        &env,
        "remote",
        "seq 1 50; echo oops >&2; echo 'é and more'; printf 'no newline'",
    );
    assert_eq!(
        env.run_sh("failing", &["-q"], "exit 3").status.code(),
        Some(3)
    );
    let srv = Serve::start(&env, &["--token", "sekrit"]);
    let url = format!("http://127.0.0.1:{}", srv.port);
    let cases: [&[&str]; 6] = [
        &["remote"],
        &["remote", "--stderr"],
        &["remote", "--tail", "3"],
        &["remote", "--since", "48"],
        &["remote", "--all", "--prefix"],
        &["--timestamps", "remote"],
    ];
    for args in cases {
        let local = env.cmd().arg("logs").args(args).output().unwrap();
        let remote = env
            .cmd()
            .env("DATABUILD_LOG_TOKEN", "sekrit")
            .args(["logs", "--server", &url])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            remote.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr_text(&remote)
        );
        assert_eq!(
            String::from_utf8_lossy(&remote.stdout),
            String::from_utf8_lossy(&local.stdout),
            "{args:?}"
        );
    }
    let o = env
        .cmd()
        .env("DATABUILD_LOG_SERVER", &url)
        .args([
            "logs",
            "failing",
            "--token",
            "sekrit",
            "--follow",
            "--exit-status",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr_text(&o));
    let o = env
        .cmd()
        .args(["logs", "remote", "--server", &url])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_text(&o).contains("token"), "{}", stderr_text(&o));
}

#[test]
fn lines_full_of_escape_sequences_cost_the_server_little_memory() {
    let env = TestEnv::new();
    // Three 64 KB lines: a CR, then 16,000 `ESC[1m` (each SGR used to copy the
    // whole style so far: ~500 MiB per line).
    let script = r#"awk 'BEGIN { s = "\r"; for (i = 0; i < 16000; i++) s = s "\033[1m"; for (j = 0; j < 3; j++) print s "end" }'"#;
    job_with(&env, "sgr", script);
    let srv = Serve::start(&env, &[]);
    for format in ["text", "json"] {
        let path = format!("/api/job_runs/sgr/logs/stdout?format={format}");
        let evs = SseConn::open(srv.port, &path, &[]).rest();
        let lines = datas(&evs);
        assert_eq!(lines.len(), 3, "{format}");
        assert!(lines.iter().all(|l| l.contains("end")), "{format}");
    }
    let peak = proc_status_kib(srv.pid(), "VmHWM");
    assert!(peak < 64 * 1024, "serve peaked at {peak} KiB");
}

#[test]
fn a_listen_job_with_many_followers_delivers_every_line_to_each_and_completes() {
    let env = TestEnv::new();
    const FOLLOWERS: usize = 100;
    const LINES: usize = 3000;
    // On "go", LINES numbered lines at full speed, alternating stdout and stderr.
    let script = format!(
        "read go; i=0; while [ $i -lt {LINES} ]; do echo $i; i=$((i+1)); echo $i >&2; i=$((i+1)); done"
    );
    let (mut job, url) = listening_script(&env, "fanl", &[], &script);
    let port = port_of(&url);
    let mut conns: Vec<SseConn> = (0..FOLLOWERS)
        .map(|_| SseConn::open(port, "/api/job_runs/fanl/logs/combined?follow=true", &[]))
        .collect();
    for c in &mut conns {
        c.wait_parser("the opening comment", |p| !p.comments.is_empty());
    }
    job.say("go");
    for (n, c) in conns.iter_mut().enumerate() {
        let evs = c.rest();
        let mut got: Vec<usize> = datas(&evs).iter().map(|l| l.parse().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..LINES).collect::<Vec<_>>(), "follower {n}");
        let end = evs.last().unwrap();
        assert_eq!(end.event, "complete", "follower {n}");
        assert_eq!(
            serde_json::from_str::<Value>(&end.data).unwrap()["exit_code"],
            0
        );
    }
    assert!(job.finish().success());
    assert_eq!(env.meta("fanl")["stdout"]["lines"], LINES / 2);
}

#[test]
fn followers_holding_every_descriptor_allowed_never_cost_the_job_its_end() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    let env = TestEnv::new();
    let mut cmd = env.cmd();
    cmd.args([
        "--job-run-id",
        "fd",
        "--no-pty",
        "-q",
        "--listen",
        "127.0.0.1:0",
    ])
    .args([
        "--",
        "sh",
        "-c",
        "read go; echo 'DATABUILD_MISSING_DEPS_JSON: {\"partitions\": [\"a/b\"]}'; echo done",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // A hard limit of 256, which the server cannot raise.
    with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 256, 256);
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let url = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "no URL: {said}");
        said += &line;
        if line.starts_with("logwrap: serving http") {
            break line["logwrap: serving ".len()..].trim().to_string();
        }
    };
    assert!(
        said.contains("serving at most 25 connections, not 1024: the descriptor limit is 256"),
        "{said}"
    );
    // Far more followers of both streams than descriptors: each gets its
    // stream or a 503, and none takes what the wrapper needs.
    let port = port_of(&url);
    let mut conns = Vec::new();
    let (mut streams, mut refused) = (0, 0);
    for _ in 0..120 {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let req =
            "GET /api/job_runs/fd/logs/combined?follow=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        if s.write_all(req.as_bytes()).is_err() {
            continue;
        }
        let mut head = [0u8; 12];
        match s.read_exact(&mut head) {
            Ok(()) if head.ends_with(b"200") => streams += 1,
            Ok(()) if head.ends_with(b"503") => refused += 1,
            _ => {}
        }
        conns.push(s);
    }
    assert!(
        streams >= 20 && refused > 0,
        "{streams} streams, {refused} refused"
    );
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(!rest.contains("Too many open files"), "{rest}");
    let meta = env.meta("fd");
    assert_eq!(meta["status"], "succeeded", "{meta}");
    assert_eq!(
        meta["missing_deps"][0]["value"]["partitions"][0], "a/b",
        "{meta}"
    );
    drop(conns);
}
