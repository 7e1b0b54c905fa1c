//! Reading fixes found by using logwrap as a user would (issue 11, point 7):
//! a start past the current end waits for that line, over HTTP as locally.

use crate::util::job::Follower;
use crate::util::serve::*;
use crate::util::*;

#[test]
fn since_and_last_event_id_past_the_end_wait_for_that_line() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start(&env, "ahead", &[]);
    job.say("l1");
    job.say("l2");
    job.say("e:x1");
    wait_until(LIMIT, "two lines", || {
        env.stdout_log("ahead") == b"l1\nl2\n" && env.stderr_log("ahead") == b"x1\n"
    });
    let base = "/api/job_runs/ahead/logs";
    let mut since = SseConn::open(srv.port, &format!("{base}/stdout?follow=true&since=5"), &[]);
    let mut resumed = SseConn::open(
        srv.port,
        &format!("{base}/stdout?follow=true"),
        &[("Last-Event-ID", "4")],
    );
    let mut combined = SseConn::open(
        srv.port,
        &format!("{base}/combined?follow=true"),
        &[("Last-Event-ID", "4.2")],
    );
    let url = format!("http://127.0.0.1:{}", srv.port);
    let mut remote = Follower::start(&env, &["--server", &url, "-f", "--since", "5", "ahead"]);
    for l in ["l3", "l4", "l5", "l6", "e:x2", "e:x3"] {
        job.say(l);
    }
    let first = |c: &mut SseConn| loop {
        let e = c.next().expect("an event");
        if e.event == "log" {
            break (e.id, e.data);
        }
    };
    assert_eq!(first(&mut since), ("5".to_string(), "l5".to_string()));
    assert_eq!(first(&mut resumed), ("5".to_string(), "l5".to_string()));
    // Combined resumes each stream after its own number.
    assert_eq!(first(&mut combined), ("5.2".to_string(), "l5".to_string()));
    assert_eq!(first(&mut combined), ("6.2".to_string(), "l6".to_string()));
    assert_eq!(first(&mut combined), ("6.3".to_string(), "x3".to_string()));
    remote.wait_for("l6\n");
    assert_eq!(job.finish().code(), Some(0));
    let (code, out, err) = remote.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "l5\nl6\n");
}

#[test]
fn logs_of_a_job_that_wrote_only_stderr_hints_at_stderr_on_a_terminal() {
    let env = TestEnv::new();
    assert_ok(&env.run_sh("quiet", &["--no-pty", "-q"], "echo oops >&2"));
    let pty = nix::pty::openpty(None, None).unwrap();
    let o = env
        .cmd()
        .args(["logs", "quiet"])
        .stdout(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(
        stderr_text(&o),
        "logwrap: job quiet wrote nothing to stdout but 5 bytes to stderr; \
         add --stderr (or --all for both) to see them\n"
    );
    // Not for a script reading a pipe, nor when stderr was asked for.
    let piped = env.run(&["logs", "quiet"]);
    assert_ok(&piped);
    assert!(piped.stdout.is_empty() && piped.stderr.is_empty());
    let o = env
        .cmd()
        .args(["logs", "--stderr", "quiet"])
        .stdout(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
        .output()
        .unwrap();
    assert!(o.stderr.is_empty(), "{}", stderr_text(&o));
}

#[test]
fn timestamps_and_prefixes_go_on_the_text_a_progress_line_ends_with() {
    let env = TestEnv::new();
    assert_ok(&env.run_sh(
        "bar",
        &["--no-pty", "-q"],
        "printf '10%%\\r50%%\\r100%% done\\n'; printf 'dos\\r\\n'",
    ));
    let o = env.run(&["logs", "--prefix", "bar"]);
    assert_ok(&o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "10%\r50%\rstdout: 100% done\nstdout: dos\r\n"
    );
    let o = env.run(&["logs", "--timestamps", "--all", "bar"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let first = text.lines().next().unwrap();
    let (frames, shown) = first.rsplit_once('\r').unwrap();
    assert_eq!(frames, "10%\r50%");
    // RFC 3339 with ms, a space, then the text the terminal shows.
    assert_eq!(
        shown.len(),
        "2026-01-01T00:00:00.000Z 100% done".len(),
        "{shown:?}"
    );
    assert!(shown.ends_with("Z 100% done"), "{shown:?}");
}
