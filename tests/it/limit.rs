//! Per-job size limits (issue 12 point 4): `--max-log-size` keeps each stream's
//! head and a rolling tail on disk, bounded, with an explicit gap that readers
//! report, true line numbers, and the terminal copy untouched.

use crate::util::*;
use std::os::unix::fs::MetadataExt;

/// The limit the tests set, and the per-stream bound the store promises for it:
/// the limit plus one segment (`limit / 16`, at least 64 KiB) plus one read
/// from the child (64 KiB).
const LIMIT: u64 = 1 << 20;
const BOUND: u64 = LIMIT + (64 << 10) + (64 << 10);
/// Lines the job prints: 100 bytes each, 10 MB in all, ten times the limit.
const LINES: u64 = 100_000;

/// A shell script printing `LINES` numbered lines of exactly 100 bytes.
fn script() -> String {
    format!(
        "awk 'BEGIN {{ for (i = 1; i <= {LINES}; i++) printf \"line %08d %s\\n\", i, \"{}\" }}'",
        "x".repeat(100 - 15)
    )
}

fn line(n: u64) -> String {
    format!("line {n:08} {}\n", "x".repeat(85))
}

/// Runs the big job as `id` with `extra` options and returns its output.
fn big_job(env: &TestEnv, id: &str, extra: &[&str]) -> std::process::Output {
    let o = env.run_sh(id, extra, &script());
    assert_ok(&o);
    o
}

#[test]
fn a_job_far_over_the_limit_keeps_head_and_tail_within_the_bound() {
    let env = TestEnv::new();
    // The terminal copy goes to a file (written inline, so it never lags and
    // is never finished from the log): it is whole while the log is cut.
    let copy = env.path("copy.txt");
    let o = env
        .cmd()
        .stdout(std::fs::File::create(&copy).unwrap())
        .args([
            "--no-pty",
            "--max-log-size",
            "1M",
            "--job-run-id",
            "big",
            "--",
        ])
        .args(["sh", "-c", &script()])
        .output()
        .unwrap();
    assert_ok(&o);
    let want_all: String = (1..=LINES).map(line).collect();
    assert!(
        std::fs::read(&copy).unwrap() == want_all.as_bytes(),
        "the terminal copy is whole"
    );
    let disk = std::fs::metadata(env.job_dir("big").join("stdout.log"))
        .unwrap()
        .blocks()
        * 512;
    assert!(disk <= BOUND, "stdout.log uses {disk} bytes on disk");
    let meta = env.meta("big");
    assert_eq!(meta["stdout"]["bytes"], LINES * 100, "true size");
    assert_eq!(meta["stdout"]["lines"], LINES, "true line count");
    let t = &meta["truncated"]["stdout"];
    let (bytes, lines) = (
        t["omitted_bytes"].as_u64().unwrap(),
        t["omitted_lines"].as_u64().unwrap(),
    );
    assert_eq!(bytes, lines * 100, "{meta}");
    assert!(bytes >= LINES * 100 - BOUND, "{meta}");
    assert!(meta["truncated"].get("stderr").is_none(), "{meta}");

    // `logs`: the head, the gap said with its counts, the tail with its true
    // line numbers, through the last line.
    let out = env.run(&["logs", "big"]);
    assert_ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let notice =
        format!("[logwrap: {bytes} bytes ({lines} lines) of stdout omitted by --max-log-size]\n");
    let (head, tail) = text.split_once(&notice).expect("a gap notice");
    let head_lines = head.len() as u64 / 100;
    assert!(head_lines >= LIMIT / 2 / 100, "{head_lines}");
    let want_head: String = (1..=head_lines).map(line).collect();
    assert_eq!(head, want_head);
    let want_tail: String = (head_lines + lines + 1..=LINES).map(line).collect();
    assert_eq!(tail, want_tail);

    // `--tail` and `--since` count true line numbers.
    let out = env.run(&["logs", "big", "--tail", "2"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        line(LINES - 1) + &line(LINES)
    );
    let inside = head_lines + lines / 2;
    let out = env.run(&["logs", "big", "--since", &inside.to_string()]);
    let text = String::from_utf8(out.stdout).unwrap();
    let first_kept = head_lines + lines + 1;
    let want: String = (first_kept..=LINES).map(line).collect();
    assert_eq!(
        text,
        notice + &want,
        "a start inside the gap shows the gap first"
    );
}

#[test]
fn under_the_limit_the_log_is_whole_and_nothing_is_marked() {
    let env = TestEnv::new();
    big_job(&env, "small", &["--no-pty", "--max-log-size", "100M"]);
    assert_eq!(env.stdout_log("small").len() as u64, LINES * 100);
    let meta = env.meta("small");
    assert_eq!(meta["truncated"], serde_json::json!({}), "{meta}");
    let out = env.run(&["logs", "small"]);
    assert_eq!(out.stdout, env.stdout_log("small"));
}

#[test]
fn the_limit_comes_from_the_environment_and_applies_in_pty_mode() {
    let env = TestEnv::new();
    let o = env
        .cmd()
        .env("DATABUILD_LOG_MAX_JOB_SIZE", "1M")
        .args([
            "--quiet",
            "--job-run-id",
            "pty",
            "--",
            "sh",
            "-c",
            &script(),
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let disk = std::fs::metadata(env.job_dir("pty").join("stdout.log"))
        .unwrap()
        .blocks()
        * 512;
    assert!(disk <= BOUND, "stdout.log uses {disk} bytes on disk");
    let meta = env.meta("pty");
    assert!(
        meta["truncated"]["stdout"]["omitted_lines"]
            .as_u64()
            .unwrap()
            > 0,
        "{meta}"
    );
    let out = env.run(&["logs", "pty", "--tail", "1"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), line(LINES));
}

#[test]
fn a_limit_too_small_to_be_useful_is_refused() {
    let env = TestEnv::new();
    let o = env.run_sh("tiny", &["--max-log-size", "1K"], "true");
    assert_fails_with(&o, 125);
    assert!(stderr_text(&o).contains("too small"), "{}", stderr_text(&o));
}

/// Runs the big job under a 1M limit and returns its gap: (last head line,
/// omitted bytes, omitted lines).
fn cut_job(env: &TestEnv, id: &str) -> (u64, u64, u64) {
    big_job(env, id, &["--no-pty", "--quiet", "--max-log-size", "1M"]);
    let t = &env.meta(id)["truncated"]["stdout"];
    let (bytes, lines) = (
        t["omitted_bytes"].as_u64().unwrap(),
        t["omitted_lines"].as_u64().unwrap(),
    );
    let text = String::from_utf8(env.run(&["logs", id]).stdout).unwrap();
    let head = text.split_once("[logwrap:").unwrap().0.len() as u64 / 100;
    (head, bytes, lines)
}

#[test]
fn sse_sends_a_gap_event_then_the_tail_with_true_ids() {
    use crate::util::serve::{Serve, SseConn};
    let env = TestEnv::new();
    let (head, bytes, lines) = cut_job(&env, "sse");
    let srv = Serve::start(&env, &[]);
    let mut c = SseConn::open(srv.port, "/api/job_runs/sse/logs/stdout", &[]);
    let evs = c.rest();
    let gap_at = evs
        .iter()
        .position(|e| e.event == "gap")
        .expect("a gap event");
    let ids = |evs: &[crate::util::serve::SseEvent]| -> Vec<u64> {
        evs.iter()
            .filter(|e| e.event == "log")
            .map(|e| e.id.parse().unwrap())
            .collect()
    };
    assert_eq!(ids(&evs[..gap_at]), (1..=head).collect::<Vec<_>>());
    let gap: serde_json::Value = serde_json::from_str(&evs[gap_at].data).unwrap();
    assert_eq!(gap["omitted_bytes"], bytes);
    assert_eq!(gap["omitted_lines"], lines);
    assert_eq!(gap["first_line"], head + 1);
    assert_eq!(gap["last_line"], head + lines);
    assert_eq!(
        gap["message"],
        format!("{bytes} bytes ({lines} lines) of stdout omitted by --max-log-size")
    );
    let tail = &evs[gap_at + 1..];
    assert_eq!(ids(tail), (head + lines + 1..=LINES).collect::<Vec<_>>());
    assert_eq!(tail[0].data, line(head + lines + 1).trim_end());
    assert_eq!(evs.last().unwrap().event, "complete");

    // A start inside the gap gets the gap first; the last lines, no gap.
    let inside = head + lines / 2;
    let mut c = SseConn::open(
        srv.port,
        &format!("/api/job_runs/sse/logs/stdout?since={inside}"),
        &[],
    );
    let evs = c.rest();
    assert_eq!(evs[0].event, "gap");
    assert_eq!(evs[1].id, (head + lines + 1).to_string());
    let mut c = SseConn::open(srv.port, "/api/job_runs/sse/logs/stdout?lines=3", &[]);
    let evs = c.rest();
    assert_eq!(ids(&evs), vec![LINES - 2, LINES - 1, LINES]);
    assert!(evs.iter().all(|e| e.event != "gap"));
}

/// A page's jump to a line (`at=L<n>` on `combined`) inside or right after a
/// size limit's gap starts with the gap event and the first kept line: the
/// omitted lines keep their places in the combined numbering, and no kept
/// line is skipped.
#[test]
fn a_combined_jump_into_the_gap_starts_with_it_and_the_first_kept_line() {
    use crate::util::serve::{Serve, SseConn};
    let env = TestEnv::new();
    let (head, _, lines) = cut_job(&env, "jump");
    let srv = Serve::start(&env, &[]);
    let first_kept = head + lines + 1;
    for (at, gap) in [
        (head + lines / 2, true),
        (first_kept, true),
        (first_kept + 1, false),
        (head, false),
    ] {
        let mut c = SseConn::open(
            srv.port,
            &format!("/api/job_runs/jump/logs/combined?at=L{at}&count=2"),
            &[],
        );
        let evs = c.rest();
        let logs: Vec<&str> = evs
            .iter()
            .filter(|e| e.event == "log")
            .map(|e| e.id.as_str())
            .collect();
        let want = if at <= head { at } else { at.max(first_kept) };
        assert_eq!(logs[0], format!("{want}.0"), "at=L{at}: {evs:?}");
        assert_eq!(evs[0].event == "gap", gap, "at=L{at}: {evs:?}");
    }
}

#[test]
fn log_tail_polling_says_where_the_gap_is_and_skips_it() {
    use crate::util::serve::{get, Serve};
    let env = TestEnv::new();
    let (head, bytes, lines) = cut_job(&env, "poll");
    let srv = Serve::start(&env, &[]);
    let mut text = String::new();
    let mut start = 0u64;
    let mut omitted = None;
    for _ in 0..1000 {
        let v = get(
            srv.port,
            &format!("/api/job_runs/poll/log-tail?start={start}"),
            &[],
        )
        .json();
        text += v["content"].as_str().unwrap();
        if !v["omitted"].is_null() {
            omitted = Some(v["omitted"].clone());
        }
        let next = v["new_size"].as_u64().unwrap();
        if v["is_finished"] == true {
            break;
        }
        assert!(next > start, "polling makes progress");
        start = next;
    }
    assert_eq!(
        omitted,
        Some(serde_json::json!({"omitted_bytes": bytes, "omitted_lines": lines}))
    );
    let notice =
        format!("[logwrap: {bytes} bytes ({lines} lines) of stdout omitted by --max-log-size]\n");
    let want: String = (1..=head).map(line).collect::<String>()
        + &notice
        + &(head + lines + 1..=LINES).map(line).collect::<String>();
    assert!(
        text == want,
        "polled text differs from head + notice + tail"
    );
}

/// `logs --server` reads a cut log as local reading does: the gap notice in
/// the output where the cut is, in every mode.
#[test]
fn logs_from_a_server_show_the_cut_where_local_reading_does() {
    use crate::util::serve::Serve;
    let env = TestEnv::new();
    cut_job(&env, "remote");
    let srv = Serve::start(&env, &[]);
    let url = format!("http://127.0.0.1:{}", srv.port);
    for mode in [&[][..], &["--prefix"], &["--all"], &["--tail", "5"]] {
        let local = env.run(&[&["logs"][..], mode, &["remote"]].concat());
        let remote = env.run(&[&["logs", "--server", &url][..], mode, &["remote"]].concat());
        assert_ok(&local);
        assert_ok(&remote);
        let text = String::from_utf8_lossy(&remote.stdout);
        if mode.is_empty() || mode[0] != "--tail" {
            assert!(text.contains("omitted by --max-log-size"), "{mode:?}");
        }
        assert!(
            local.stdout == remote.stdout,
            "{mode:?}: remote and local differ"
        );
    }
}
