//! Reading from the terminal (issue 3): `logs` (raw bytes, streams, tail/since,
//! timestamps, follow), `ls`, `show`, abandoned jobs, damaged indexes, errors and
//! exit codes, and the man page covering every flag.

use crate::util::job::*;
use crate::util::*;
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// Generous bound for anything that normally takes milliseconds, so a loaded CI
/// machine does not fail a test that is really waiting for a condition.
const LIMIT: Duration = Duration::from_secs(20);

fn code(o: &Output) -> i32 {
    o.status.code().expect("logwrap exited by a signal")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `logwrap <args>` and insists on success.
fn ok(env: &TestEnv, args: &[&str]) -> Vec<u8> {
    let o = env.run(args);
    assert_eq!(code(&o), 0, "logwrap {args:?}: {}", stderr_text(&o));
    o.stdout
}

/// A job run to its end in pipe mode (so the bytes are exactly the child's).
fn job(env: &TestEnv, id: &str, script: &str) {
    let o = env.run_sh(id, &["--no-pty", "--quiet"], script);
    assert!(
        o.status.code().is_some(),
        "job {id} did not run: {}",
        stderr_text(&o)
    );
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill on a process this test started (checked by the caller).
    unsafe { libc::kill(pid as i32, sig) };
}

// ---- logs: bytes, streams, lines ---------------------------------------------

#[test]
fn logs_prints_stdout_and_stderr_byte_for_byte() {
    let env = TestEnv::new();
    // Binary of every value, CRs, invalid UTF-8, a 12 MB line (many reads and
    // index chunks long), and a last line without a newline.
    let mut data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    data.extend_from_slice(b"\r\nbare\rcr\xff\xfe\n");
    data.extend(std::iter::repeat_n(b'x', 12 << 20));
    data.extend_from_slice(b"\nno newline at the end");
    std::fs::write(env.path("data.bin"), &data).unwrap();
    job(&env, "bin", "cat data.bin; printf 'e1\\ne2' >&2");
    assert_eq!(ok(&env, &["logs", "bin"]), data);
    assert_eq!(ok(&env, &["logs", "bin", "--stderr"]), b"e1\ne2");
    let tail = ok(&env, &["logs", "bin", "--tail", "2"]);
    assert_eq!(tail.len(), (12 << 20) + 1 + 21, "the long line, exact");
    assert!(tail.ends_with(b"x\nno newline at the end"));
    // Line modes copy long lines in full too.
    let stamped = ok(&env, &["logs", "bin", "--timestamps", "--since", "2"]);
    assert!(contains(&stamped, &"x".repeat(12 << 20)));
}

#[test]
fn logs_without_an_id_reads_the_most_recent_job() {
    let env = TestEnv::new();
    // Ids in the opposite order of time: started_at decides, not the name.
    job(&env, "zzz-first", "echo first");
    job(&env, "aaa-second", "echo second");
    assert_eq!(ok(&env, &["logs"]), b"second\n");
    let o = TestEnv::new().run(&["logs"]);
    assert_eq!(code(&o), 1);
    assert!(stderr_text(&o).contains("no jobs"), "{}", stderr_text(&o));
}

#[test]
fn tail_and_since_count_lines_from_one_with_an_unterminated_last_line() {
    let env = TestEnv::new();
    job(&env, "lines", "printf '1\\n2\\n3\\n4\\n5'");
    let logs = |args: &[&str]| text(&ok(&env, &[&["logs", "lines"], args].concat()));
    assert_eq!(logs(&["-n", "2"]), "4\n5");
    assert_eq!(logs(&["--tail", "10"]), "1\n2\n3\n4\n5");
    assert_eq!(logs(&["--tail", "0"]), "");
    assert_eq!(logs(&["--since", "4"]), "4\n5");
    assert_eq!(logs(&["--since", "1"]), "1\n2\n3\n4\n5");
    assert_eq!(logs(&["--since", "5"]), "5");
    assert_eq!(logs(&["--since", "6"]), "");
    assert_eq!(logs(&["--since", "99"]), "");
    assert_eq!(logs(&["--prefix", "-n", "1"]), "stdout: 5\n");
}

/// A script that writes to both streams in a known arrival order: before each
/// write it waits until the previous line is in its log file.
const INTERLEAVED: &str = r#"
    logged() { until grep -q "^$2\$" "$DATABUILD_JOB_LOG_DIR/$1.log"; do :; done; }
    echo o1; logged stdout o1
    echo e1 >&2; logged stderr e1
    echo o2; logged stdout o2
    echo e2 >&2; logged stderr e2
    echo e3 >&2
"#;

#[test]
fn all_merges_both_streams_in_arrival_order() {
    let env = TestEnv::new();
    job(&env, "mix", INTERLEAVED);
    let logs = |args: &[&str]| text(&ok(&env, &[&["logs", "mix", "--all"], args].concat()));
    assert_eq!(logs(&[]), "o1\ne1\no2\ne2\ne3\n");
    assert_eq!(
        logs(&["--prefix"]),
        "stdout: o1\nstderr: e1\nstdout: o2\nstderr: e2\nstderr: e3\n"
    );
    assert_eq!(
        logs(&["--tail", "3"]),
        "o2\ne2\ne3\n",
        "last 3 merged lines"
    );
    assert_eq!(
        logs(&["--since", "2"]),
        "e1\no2\ne2\ne3\n",
        "from merged line 2"
    );
}

#[test]
fn timestamps_are_when_each_line_was_read() {
    let env = TestEnv::new();
    job(&env, "ts", "echo one; echo two");
    let meta = env.meta("ts");
    let ms = |v: &Value| logwrap::timefmt::parse_rfc3339_ms(v.as_str().unwrap()).unwrap();
    let (start, end) = (ms(&meta["started_at"]), ms(&meta["ended_at"]));
    let out = text(&ok(&env, &["logs", "ts", "--timestamps"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, want) in lines.iter().zip(["one", "two"]) {
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, want);
        assert_eq!(stamp.len(), 24, "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
            "{stamp}"
        );
        let t = logwrap::timefmt::parse_rfc3339_ms(stamp).unwrap();
        assert!(start <= t && t <= end, "{stamp} outside the job's run");
    }
}

#[test]
fn since_seeks_with_the_index_instead_of_scanning() {
    let env = TestEnv::new();
    job(&env, "big", "seq 1 200000");
    // Blank the first 100 KB without newlines. A scan would now count lines
    // wrongly; the index still knows where line 150000 starts.
    let path = env.job_dir("big").join("stdout.log");
    let mut log = std::fs::read(&path).unwrap();
    log[..100_000].fill(b'#');
    std::fs::write(&path, &log).unwrap();
    let out = env.run(&["logs", "big", "--since", "150000"]);
    assert!(
        out.stdout.starts_with(b"150000\n150001\n"),
        "{}",
        text(&out.stdout[..40])
    );
    assert!(out.stdout.ends_with(b"\n200000\n"));
    assert_eq!(stderr_text(&out), "", "no warning: the index was used");
}

// ---- damaged indexes ---------------------------------------------------------

#[test]
fn a_missing_or_damaged_index_falls_back_to_a_scan_with_one_warning() {
    let env = TestEnv::new();
    job(&env, "idx", "seq 1 5000");
    let idx = env.job_dir("idx").join("stdout.idx");
    let whole = std::fs::read(&idx).unwrap();
    let damages: [(&str, Option<Vec<u8>>); 4] = [
        ("missing (an older version)", None),
        ("bad header", Some(b"not an index at all".to_vec())),
        (
            "garbage records",
            Some([&whole[..16], &[0xee; 96][..]].concat()),
        ),
        // Half a record: a crash while writing the first.
        ("cut short", Some(whole[..16 + 16].to_vec())),
    ];
    for (what, bytes) in damages {
        match &bytes {
            None => std::fs::remove_file(&idx).unwrap(),
            Some(b) => std::fs::write(&idx, b).unwrap(),
        }
        let o = env.run(&["logs", "idx", "--tail", "2"]);
        assert_eq!(code(&o), 0, "{what}");
        assert_eq!(text(&o.stdout), "4999\n5000\n", "{what}");
        let warning = stderr_text(&o);
        assert_eq!(warning.lines().count(), 1, "{what}: {warning}");
        assert!(
            warning.contains("warning") && warning.contains("index"),
            "{what}: {warning}"
        );
        let o = env.run(&["logs", "idx", "--since", "4998", "--timestamps"]);
        assert_eq!(
            o.stdout.iter().filter(|&&b| b == b'\n').count(),
            3,
            "{what}"
        );
        // A plain full copy needs no index, so says nothing.
        let o = env.run(&["logs", "idx"]);
        assert_eq!(o.stdout.len(), whole_log_len(&env, "idx"), "{what}");
        assert_eq!(stderr_text(&o), "", "{what}");
    }
}

fn whole_log_len(env: &TestEnv, id: &str) -> usize {
    env.stdout_log(id).len()
}

// ---- follow ------------------------------------------------------------------

#[test]
fn follow_prints_each_new_line_within_milliseconds_and_ends_with_the_job() {
    let env = TestEnv::new();
    let gate = Gate::new(&env, "gate");
    let script = format!(
        "echo ready; echo ready-err >&2; for i in 1 2 3 4 5 6 7; do {g}; echo line$i; echo err$i >&2; done; exit 3",
        g = gate.wait()
    );
    let mut job = spawn_job(&env, "live", &script);
    let mut plain = Follower::start(&env, &["-f", "live", "--exit-status"]);
    let mut merged = Follower::start(&env, &["live", "-f", "--all", "--prefix", "--timestamps"]);
    plain.wait_for("ready\n");
    merged.wait_for("stderr: ready-err\n");
    let mut delays = Vec::new();
    for i in 1..=7 {
        let opened = Instant::now();
        gate.open();
        let seen = plain.wait_for(&format!("line{i}\n"));
        delays.push(seen.saturating_duration_since(opened));
        merged.wait_for(&format!("stderr: err{i}\n"));
    }
    delays.sort();
    // A sleep loop checking every 250 ms would have a median near 125 ms.
    assert!(
        delays[delays.len() / 2] < Duration::from_millis(60),
        "median delay {:?} (all: {delays:?})",
        delays[delays.len() / 2]
    );
    assert_eq!(wait_child(&mut job, "the job").code(), Some(3));
    let (status, out, _) = plain.finish();
    assert_eq!(status, 3, "--exit-status: the job's own status");
    assert_eq!(out, env.stdout_log("live"), "every byte, once");
    let (status, out, _) = merged.finish();
    assert_eq!(status, 0);
    let out = text(&out);
    assert_eq!(out.lines().count(), 16, "{out}");
    assert!(
        out.lines().all(|l| l.as_bytes()[23] == b'Z'),
        "each line timestamped: {out}"
    );
    let order: Vec<&str> = out.lines().map(|l| &l[25..]).collect();
    assert_eq!(
        order[..4],
        [
            "stdout: ready",
            "stderr: ready-err",
            "stdout: line1",
            "stderr: err1"
        ]
    );
}

#[test]
fn follow_with_tail_or_since_starts_there_then_follows() {
    let env = TestEnv::new();
    let gate = Gate::new(&env, "gate");
    let script = format!(
        "seq 1 20; {g}; printf 'par'; {g}; echo 'tial'; seq 22 25",
        g = gate.wait()
    );
    let mut job = spawn_job(&env, "tf", &script);
    wait_until(LIMIT, "20 lines", || {
        env.stdout_log("tf").ends_with(b"20\n")
    });
    let mut tail = Follower::start(&env, &["tf", "-f", "--tail", "3"]);
    let since = Follower::start(&env, &["tf", "-f", "--since", "23"]);
    tail.wait_for("18\n19\n20\n");
    gate.open();
    // Raw follow prints an unfinished line as it comes, like tail -f.
    tail.wait_for("20\npar");
    gate.open();
    assert_eq!(wait_child(&mut job, "the job").code(), Some(0));
    let (status, out, _) = tail.finish();
    assert_eq!(
        (status, text(&out)),
        (0, "18\n19\n20\npartial\n22\n23\n24\n25\n".into())
    );
    let (status, out, _) = since.finish();
    assert_eq!(
        (status, text(&out)),
        (0, "23\n24\n25\n".into()),
        "line 23 was not there yet"
    );
}

#[test]
fn follow_waits_briefly_for_a_job_that_has_not_started() {
    let env = TestEnv::new();
    let mut f = Follower::start(&env, &["-f", "later"]);
    let mut err = String::new();
    // The follower says it waits before the job exists.
    let mut stderr = f.child.stderr.take().unwrap();
    let mut buf = [0u8; 256];
    while !err.contains('\n') {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "the follower ended without saying it waits");
        err.push_str(&text(&buf[..n]));
    }
    assert!(err.contains("later"), "{err}");
    f.child.stderr = Some(stderr);
    job(&env, "later", "echo started late");
    let (status, out, _) = f.finish();
    assert_eq!((status, out), (0, b"started late\n".to_vec()));
}

#[test]
fn follow_gives_up_on_a_job_that_never_starts() {
    let env = TestEnv::new();
    job(&env, "never-1", "true");
    let started = Instant::now();
    let o = env.run(&["logs", "-f", "never"]);
    assert_eq!(code(&o), 1);
    let err = stderr_text(&o);
    assert!(
        err.contains("waiting") && err.contains("no job never"),
        "{err}"
    );
    assert!(err.contains("closest: never-1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn follow_of_a_finished_job_prints_it_and_exits_with_its_status() {
    let env = TestEnv::new();
    job(&env, "done", "echo out; exit 7");
    let o = env.run(&["logs", "-f", "done", "--exit-status"]);
    assert_eq!((code(&o), o.stdout), (7, b"out\n".to_vec()));
    assert_eq!(
        code(&env.run(&["logs", "-f", "done"])),
        0,
        "without the flag"
    );
}

#[test]
fn deleting_the_log_ends_follow_with_a_clear_message() {
    let env = TestEnv::new();
    let gate = Gate::new(&env, "gate");
    let script = format!("echo before; {g}", g = gate.wait());
    let mut job = spawn_job(&env, "gone", &script);
    wait_until(LIMIT, "the job's output", || {
        env.stdout_log("gone") == b"before\n"
    });
    let mut f = Follower::start(&env, &["-f", "gone"]);
    f.wait_for("before\n");
    std::fs::remove_file(env.job_dir("gone").join("stdout.log")).unwrap();
    let (status, out, err) = f.finish();
    assert_eq!((status, out), (1, b"before\n".to_vec()));
    assert!(err.contains("deleted"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    gate.open();
    wait_child(&mut job, "the job");
}

// ---- abandoned ---------------------------------------------------------------

#[test]
fn a_wrapper_killed_with_sigkill_reads_as_abandoned_everywhere() {
    let env = TestEnv::new();
    let mut wrapper = spawn_job(
        &env,
        "dead",
        "echo line1; printf 'line2\\npart'; exec sleep 300",
    );
    wait_until(LIMIT, "output", || {
        env.stdout_log("dead").ends_with(b"part")
    });
    let mut follower = Follower::start(&env, &["-f", "dead", "--exit-status"]);
    follower.wait_for("part");
    let child_pid = env.meta("dead")["child_pid"].as_u64().unwrap() as u32;
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    let killed = Instant::now();

    let (status, out, err) = follower.finish();
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "follow noticed late"
    );
    assert_eq!(status, 137, "--exit-status of an abandoned job");
    assert_eq!(out, b"line1\nline2\npart");
    assert!(err.contains("abandoned"), "{err}");

    let ls = text(&ok(&env, &["ls"]));
    assert!(ls.lines().nth(1).unwrap().contains("abandoned"), "{ls}");
    let json: Value = serde_json::from_slice(&ok(&env, &["ls", "--json"])).unwrap();
    assert_eq!(json[0]["status"], "abandoned");
    assert!(text(&ok(&env, &["show", "dead"])).contains("abandoned"));
    let shown: Value = serde_json::from_slice(&ok(&env, &["show", "dead", "--json"])).unwrap();
    assert_eq!(shown["status"], "abandoned");
    let o = env.run(&["logs", "-f", "dead"]);
    assert_eq!((code(&o), o.stdout), (0, b"line1\nline2\npart".to_vec()));
    assert_eq!(
        text(&ok(&env, &["logs", "dead", "--all"])),
        "line1\nline2\npart\n"
    );

    // The orphaned child is ours: kill it by the pid the metadata recorded, once
    // sure that pid is still our `sleep 300`.
    let cmdline = std::fs::read(format!("/proc/{child_pid}/cmdline")).unwrap_or_default();
    if contains(&cmdline, "sleep") && contains(&cmdline, "300") {
        signal(child_pid, libc::SIGKILL);
    }
}

// ---- ls and show -------------------------------------------------------------

#[test]
fn ls_lists_jobs_newest_first_aligned_and_filtered() {
    let env = TestEnv::new();
    job(&env, "b-ok", "echo fine");
    job(&env, "a-fail", "echo bad >&2; exit 4");
    let out = text(&ok(&env, &["ls"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("COMMAND"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("a-fail") && lines[2].starts_with("b-ok"),
        "newest first: {out}"
    );
    let col = |l: &str, w: &str| l.find(w).unwrap_or_else(|| panic!("{w} in {l}"));
    assert_eq!(col(lines[0], "STATUS"), col(lines[1], "failed"));
    assert_eq!(col(lines[0], "STATUS"), col(lines[2], "succeeded"));
    assert_eq!(col(lines[0], "COMMAND"), col(lines[1], "sh -c"));
    assert!(
        lines[1].contains(" 4 ") && lines[1].contains("4B"),
        "exit code, stderr size: {out}"
    );
    assert!(!out.contains('\x1b'), "no colour into a pipe");

    let failed = text(&ok(&env, &["ls", "--status", "failed"]));
    assert_eq!(failed.lines().count(), 2, "{failed}");
    assert!(failed.contains("a-fail") && !failed.contains("b-ok"));
    let both = text(&ok(&env, &["ls", "--status", "failed,succeeded"]));
    assert_eq!(both.lines().count(), 3, "{both}");
    let limited = text(&ok(&env, &["ls", "--limit", "1"]));
    assert_eq!(limited.lines().count(), 2);
    assert!(limited.contains("a-fail"));

    let json: Value = serde_json::from_slice(&ok(&env, &["ls", "--json"])).unwrap();
    let jobs = json.as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["job_run_id"], "a-fail");
    assert_eq!(jobs[0]["exit_code"], 4);
    assert_eq!(
        jobs[1]["command"],
        serde_json::json!(["sh", "-c", "echo fine"])
    );
    let none: Value =
        serde_json::from_slice(&ok(&env, &["ls", "--json", "--status", "running"])).unwrap();
    assert_eq!(none, serde_json::json!([]));
}

/// Runs `logwrap ls` on a terminal (the wrapper gives its child one) of `cols`
/// columns; returns what the terminal showed.
fn ls_on_a_terminal(env: &TestEnv, id: &str, cols: &str, extra_env: &[(&str, &str)]) -> String {
    let mut cmd = env.cmd();
    cmd.args([
        "--job-run-id",
        id,
        "--quiet",
        "--cols",
        cols,
        "--",
        BIN,
        "ls",
    ]);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    text(&env.stdout_log(id))
}

#[test]
fn ls_on_a_terminal_has_colour_unless_no_color_and_fits_the_width() {
    let env = TestEnv::new();
    job(&env, "wide", &format!("echo {}", "x".repeat(300)));
    let screen = ls_on_a_terminal(&env, "tty", "100", &[]);
    assert!(screen.contains("\x1b[32msucceeded"), "{screen:?}");
    let plain = |s: &str| {
        let mut out = String::new();
        let mut esc = false;
        for c in s.chars() {
            match (esc, c) {
                (false, '\x1b') => esc = true,
                (true, 'm') => esc = false,
                (false, c) => out.push(c),
                _ => {}
            }
        }
        out
    };
    for line in plain(&screen).lines() {
        assert!(
            line.chars().count() <= 100,
            "{line:?} is wider than the terminal"
        );
    }
    assert!(screen.contains('…'), "the long command is cut: {screen}");
    let screen = ls_on_a_terminal(&env, "tty2", "100", &[("NO_COLOR", "1")]);
    assert!(!screen.contains('\x1b'), "{screen:?}");
}

#[test]
fn show_prints_metadata_with_live_status_and_markers() {
    let env = TestEnv::new();
    job(
        &env,
        "mark",
        r#"echo 'DATABUILD_MISSING_DEPS_JSON:{"partitions":["p1"]}'; echo 'DATABUILD_MISSING_DEPS_JSON:{oops'"#,
    );
    let out = text(&ok(&env, &["show", "mark"]));
    for want in [
        "job_run_id: mark",
        "succeeded",
        "missing_deps (1)",
        "p1",
        "marker_errors (1)",
        "stdout:1",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    let json: Value = serde_json::from_slice(&ok(&env, &["show", "mark", "--json"])).unwrap();
    assert_eq!(
        json,
        env.meta("mark"),
        "--json is the document (live status)"
    );
}

// ---- errors and exit codes ---------------------------------------------------

#[test]
fn an_unknown_id_names_the_closest_ids_and_exits_1() {
    let env = TestEnv::new();
    job(&env, "build-42", "true");
    job(&env, "deploy-7", "true");
    for cmd in ["logs", "show"] {
        let o = env.run(&[cmd, "build-43"]);
        assert_eq!(code(&o), 1, "{cmd}");
        let err = stderr_text(&o);
        assert!(
            err.contains("closest: build-42") && !err.contains("deploy-7"),
            "{cmd}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn invalid_ids_and_options_are_usage_errors_with_exit_2() {
    let env = TestEnv::new();
    job(&env, "j", "true");
    for args in [
        &["logs", "../etc"][..],
        &["logs", "a/b"],
        &["show", ".hidden"],
        &["show"],
        &["logs", "j", "--tail", "many"],
        &["logs", "j", "--tail", "1", "--since", "2"],
        &["logs", "j", "--stderr", "--all"],
        &["logs", "j", "--exit-status"],
        &["logs", "j", "--bogus"],
        &["ls", "--status", "exploded"],
        &["ls", "--limit", "-1"],
    ] {
        let o = env.run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr_text(&o));
        assert!(!stderr_text(&o).is_empty(), "{args:?} says why");
    }
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let env = TestEnv::new();
    job(&env, "many", "seq 1 300000");
    let mut child = env
        .cmd()
        .args(["logs", "many"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 2];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then closed
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert_eq!(stderr_text(&o), "");
}

// ---- docs --------------------------------------------------------------------

/// Every `--long-flag` in a help text.
fn long_flags(help: &str) -> Vec<String> {
    let mut flags: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && w.as_bytes()[2].is_ascii_alphabetic())
        .map(String::from)
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn every_long_flag_in_help_is_in_the_man_page() {
    let env = TestEnv::new();
    let man = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/logwrap.1"))
        .unwrap()
        .replace("\\-", "-");
    let mut missing = Vec::new();
    for sub in [
        None,
        Some("logs"),
        Some("ls"),
        Some("show"),
        Some("grep"),
        Some("gc"),
        Some("serve"),
    ] {
        let mut args: Vec<&str> = sub.into_iter().collect();
        args.push("--help");
        let help = text(&ok(&env, &args));
        for flag in long_flags(&help) {
            if !man.contains(&flag) {
                missing.push(format!("{} {flag}", sub.unwrap_or("logwrap")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from man/logwrap.1: {missing:?}"
    );
}

#[test]
fn show_escapes_control_characters_of_the_command_and_cwd() {
    let env = TestEnv::new();
    let cwd = env.path("dir\x1b[2J\rx");
    std::fs::create_dir_all(&cwd).unwrap();
    let o = env
        .cmd()
        .current_dir(&cwd)
        .args(["--job-run-id", "ctl", "--", "echo", "a\x1b[31mred\r\nline"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr_text(&o));
    let o = env.run(&["show", "ctl"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        !text.contains('\x1b') && !text.contains('\r'),
        "raw control characters: {text:?}"
    );
    assert!(text.contains(r"echo $'a\e[31mred\r\nline'"), "{text}");
    assert!(text.contains(r"dir\e[2J\rx"), "{text}");
}

#[test]
fn no_text_a_job_writes_into_its_metadata_reaches_the_terminal_raw() {
    // A job owns its directory: after the wrapper, anything may rewrite its
    // metadata.json, and a Redis source holds whatever a machine sent. An
    // OSC 52 (clipboard write) and a screen clear in every text field.
    let env = TestEnv::new();
    assert_ok(&env.run_sh("m", &["-q", "--no-pty"], "true"));
    let evil = "\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J";
    let path = env.job_dir("m").join("metadata.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for k in [
        "started_at",
        "ended_at",
        "tail_url",
        "logwrap_version",
        "signal",
    ] {
        meta[k] = format!("x{evil}").into();
    }
    meta["exit_code"] = serde_json::Value::Null;
    meta["log_errors"] = serde_json::json!([format!("L{evil}")]);
    meta["marker_errors"] =
        serde_json::json!([{"stream": "stdout", "line": 1, "error": format!("E{evil}")}]);
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    // And an entry no job run id can be, for gc to skip.
    std::fs::create_dir(env.root.join("job_runs").join(format!("x{evil}"))).unwrap();

    let raw = |o: &std::process::Output| {
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr_text(o));
        assert!(
            !text.contains('\x1b') && !text.contains('\x07'),
            "raw control characters: {text:?}"
        );
        text
    };
    let show = env.run(&["show", "m"]);
    assert_ok(&show);
    let text = raw(&show);
    for field in [
        "started_at",
        "ended_at",
        "tail_url",
        "logwrap",
        "log_errors",
        "marker_errors",
    ] {
        assert!(text.contains(field), "{field} missing: {text}");
    }
    assert!(
        text.contains(r"x\e]52;c;ZWNobyBwd25lZA==\x07\e[2J"),
        "{text}"
    );
    let ls = env.run(&["ls"]);
    assert_ok(&ls);
    assert!(raw(&ls).contains(r"x\e]52"));
    let gc = env.run(&["gc"]);
    assert!(raw(&gc).contains(r"x\e]52"), "{}", stderr_text(&gc));
}

#[test]
fn an_unfinished_last_line_read_from_its_number_keeps_its_timestamp() {
    let env = TestEnv::new();
    job(&env, "partial", "printf 'a\\nb\\nc'");
    let out = String::from_utf8(ok(
        &env,
        &["logs", "--since", "3", "--timestamps", "partial"],
    ))
    .unwrap();
    assert!(out.starts_with("20") && out.ends_with(" c\n"), "{out:?}");
}
