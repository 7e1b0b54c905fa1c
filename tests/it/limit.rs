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
    let o = big_job(&env, "big", &["--no-pty", "--max-log-size", "1M"]);
    // The terminal copy is whole.
    assert_eq!(o.stdout.len() as u64, LINES * 100);
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
