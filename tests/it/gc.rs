//! Retention (issue 5): `logwrap gc` against real job directories — TTL, size
//! cap, dry run, running and abandoned jobs, odd entries and symlinks, concurrent
//! collectors and wrappers, a large root — and the wrapper's own housekeeping.

use crate::util::*;
use logwrap::gc::{maybe_collect, Housekeeping, Policy};
use logwrap::timefmt::{rfc3339_ms, unix_ms};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const DAY_MS: i64 = 86_400_000;
const MIB: usize = 1 << 20;
/// Generous: these tests run beside the whole suite on a loaded CI machine.
const LIMIT: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn jobs_dir(env: &TestEnv) -> PathBuf {
    env.root.join("job_runs")
}

/// A job directory as a wrapper leaves it: metadata.json with `status`, the
/// given start and end, and `payload` bytes of stdout.
fn fake_job(
    env: &TestEnv,
    id: &str,
    status: &str,
    started_ms: i64,
    ended_ms: Option<i64>,
    payload: usize,
) -> PathBuf {
    let dir = env.job_dir(id);
    fs::create_dir_all(&dir).unwrap();
    let meta = serde_json::json!({
        "job_run_id": id, "command": ["true"], "cwd": "/", "hostname": "test",
        "pid": 1, "child_pid": null, "pty": false,
        "started_at": rfc3339_ms(started_ms), "ended_at": ended_ms.map(rfc3339_ms),
        "duration_ms": ended_ms.map(|e| e - started_ms), "status": status,
        "exit_code": if status == "running" { None } else { Some(0) },
        "signal": null, "stdout": {"bytes": payload, "lines": 0},
        "stderr": {"bytes": 0, "lines": 0}, "missing_deps": [], "marker_errors": [],
        "building_partitions": [], "log_errors": [], "tail_url": null,
        "logwrap_version": "test"
    });
    let path = dir.join("metadata.json");
    fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    // Loud if the metadata format moves on: a fake the store cannot read would
    // be judged by its (fresh) mtime and these tests would prove nothing.
    logwrap::metadata::read(&path).expect("fake metadata.json must parse");
    fs::write(dir.join("stdout.log"), vec![b'x'; payload]).unwrap();
    fs::write(dir.join("stderr.log"), b"").unwrap();
    dir
}

/// A job that succeeded `days_ago` days ago after running a minute.
fn finished_job(env: &TestEnv, id: &str, days_ago: f64, payload: usize) -> PathBuf {
    let end = now_ms() - (days_ago * DAY_MS as f64) as i64;
    fake_job(env, id, "succeeded", end - 60_000, Some(end), payload)
}

fn set_mtime(path: &Path, days_ago: f64) {
    let t = SystemTime::now() - Duration::from_secs_f64(days_ago * 86_400.0);
    fs::File::open(path).unwrap().set_modified(t).unwrap();
}

fn gc(env: &TestEnv, args: &[&str]) -> Output {
    let mut all = vec!["gc"];
    all.extend_from_slice(args);
    env.run(&all)
}

/// Starts a wrapper (pipe mode) whose job runs `script` and then waits for its
/// stdin to close, so the test decides when it ends.
fn start_waiting_job(env: &TestEnv, id: &str, extra: &[&str], script: &str) -> Child {
    let mut c = env.cmd();
    c.args(["--no-pty", "--job-run-id", id])
        .args(extra)
        .args(["--", "sh", "-c", &format!("{script}; read x; exit 0")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

fn wait_running(env: &TestEnv, id: &str) {
    let path = env.job_dir(id).join("metadata.json");
    wait_until(LIMIT, &format!("job {id} running"), || {
        logwrap::metadata::read(&path).is_ok_and(|m| m.child_pid.is_some())
    });
}

/// Ends a job started by [`start_waiting_job`] and returns the wrapper's output.
fn release(mut child: Child) -> Output {
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

// ---- TTL -------------------------------------------------------------------

#[test]
fn finished_jobs_past_the_ttl_go_and_recent_ones_stay() {
    let env = TestEnv::new();
    finished_job(&env, "old", 10.0, 1000);
    finished_job(&env, "older", 30.0, 1000);
    finished_job(&env, "recent", 1.0, 1000);
    let o = gc(&env, &[]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(!env.job_dir("old").exists());
    assert!(!env.job_dir("older").exists());
    assert!(env.job_dir("recent").join("stdout.log").exists());
    let out = stdout_text(&o);
    assert!(out.starts_with("deleted 2 jobs, freed "), "{out}");
    assert!(out.contains("kept 1 job"), "{out}");
    assert_eq!(stderr_text(&o), "");
}

#[test]
fn the_ttl_comes_from_the_flag_else_the_environment_with_fractions() {
    let env = TestEnv::new();
    finished_job(&env, "a-day-old", 1.0, 10);
    finished_job(&env, "an-hour-old", 1.0 / 24.0, 10);
    let o = env
        .cmd()
        .args(["gc", "--ttl-days", "2"])
        .env("DATABUILD_LOG_TTL_DAYS", "0.5")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    assert!(
        env.job_dir("a-day-old").exists(),
        "the flag wins over the env"
    );
    let o = env
        .cmd()
        .arg("gc")
        .env("DATABUILD_LOG_TTL_DAYS", "0.5")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(!env.job_dir("a-day-old").exists());
    assert!(env.job_dir("an-hour-old").exists());
}

#[test]
fn a_running_job_is_never_deleted_and_an_abandoned_one_is() {
    let env = TestEnv::new();
    let long_ago = now_ms() - 30 * DAY_MS;
    // A collection just finished, so the wrapper's own housekeeping is not
    // due: it would race this test's `gc` (and its making of the fake job).
    fs::create_dir_all(&env.root).unwrap();
    fs::write(env.root.join(".gc-stamp"), b"").unwrap();
    // Running for 30 days: its wrapper is alive (holds the lock), so it stays.
    let child = start_waiting_job(&env, "running", &[], "echo started");
    wait_running(&env, "running");
    let meta_path = env.job_dir("running").join("metadata.json");
    let mut meta = logwrap::metadata::read(&meta_path).unwrap();
    meta.started_at = rfc3339_ms(long_ago);
    std::fs::write(&meta_path, meta.to_json()).unwrap();
    // "running" on disk but its wrapper is gone: abandoned, so finished.
    fake_job(&env, "abandoned", "running", long_ago, None, 10);

    let o = gc(&env, &["--ttl-days", "0", "--max-size", "0"]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(env.job_dir("running").join("metadata.json").exists());
    assert!(!env.job_dir("abandoned").exists());

    let o = release(child);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert_eq!(env.stdout_log("running"), b"started\n");
}

#[test]
fn directories_without_metadata_are_left_alone_while_young() {
    let env = TestEnv::new();
    // What a wrapper leaves for a moment between mkdir and metadata.json.
    fs::create_dir_all(env.job_dir("being-created")).unwrap();
    // A damaged directory (no metadata.json) whose mtime is 10 days old.
    let damaged = env.job_dir("damaged");
    fs::create_dir_all(&damaged).unwrap();
    fs::write(damaged.join("stdout.log"), b"partial").unwrap();
    set_mtime(&damaged, 10.0);
    // Garbage metadata: age from the directory too.
    let garbled = finished_job(&env, "garbled", 1.0, 10);
    fs::write(garbled.join("metadata.json"), b"{not json").unwrap();
    set_mtime(&garbled, 10.0);

    let o = gc(&env, &[]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(env.job_dir("being-created").exists());
    assert!(!damaged.exists());
    assert!(!garbled.exists());
    // Even the most aggressive policy spares the young one.
    let o = gc(&env, &["--ttl-days", "0", "--max-size", "0"]);
    assert_eq!(code(&o), 0);
    assert!(env.job_dir("being-created").exists());
}

// ---- Size cap ----------------------------------------------------------------

#[test]
fn over_the_cap_the_oldest_finished_jobs_go_until_the_rest_fits() {
    let env = TestEnv::new();
    for (id, days) in [("d1", 1.0), ("d4", 4.0), ("d2", 2.0), ("d3", 3.0)] {
        finished_job(&env, id, days, MIB);
    }
    // ~4 MiB in all; 2.5M keeps the two newest (~2 MiB plus a few KiB).
    let o = gc(&env, &["--max-size", "2.5M"]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(!env.job_dir("d4").exists());
    assert!(!env.job_dir("d3").exists());
    assert!(env.job_dir("d2").exists());
    assert!(env.job_dir("d1").exists());
    assert!(
        stdout_text(&o).starts_with("deleted 2 jobs"),
        "{}",
        stdout_text(&o)
    );
}

#[test]
fn the_cap_comes_from_the_environment_in_gib_with_fractions() {
    let env = TestEnv::new();
    for (id, days) in [("d1", 1.0), ("d2", 2.0), ("d3", 3.0), ("d4", 4.0)] {
        finished_job(&env, id, days, MIB);
    }
    // 0.0025 GiB = 2.56 MiB.
    let o = env
        .cmd()
        .arg("gc")
        .env("DATABUILD_LOG_MAX_SIZE_GB", "0.0025")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    let left: Vec<_> = ["d1", "d2", "d3", "d4"]
        .into_iter()
        .filter(|id| env.job_dir(id).exists())
        .collect();
    assert_eq!(left, ["d1", "d2"]);
}

#[test]
fn running_jobs_alone_over_the_cap_get_a_note_and_exit_0() {
    let env = TestEnv::new();
    let child = start_waiting_job(&env, "big", &["--quiet"], "head -c 2097152 /dev/zero");
    let log = env.job_dir("big").join("stdout.log");
    wait_until(LIMIT, "2 MiB in the running job's log", || {
        fs::metadata(&log).is_ok_and(|m| m.len() == 2 * MIB as u64)
    });
    finished_job(&env, "small", 0.1, 10);

    let o = gc(&env, &["--max-size", "1M"]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(
        stderr_text(&o).contains("note: running jobs alone hold"),
        "{}",
        stderr_text(&o)
    );
    assert!(env.job_dir("big").exists());
    assert!(!env.job_dir("small").exists(), "finished jobs still go");
    assert_eq!(code(&release(child)), 0);
}

// ---- Dry run, output, errors -------------------------------------------------

#[test]
fn dry_run_lists_what_would_go_and_why_and_deletes_nothing() {
    let env = TestEnv::new();
    finished_job(&env, "expired", 9.0, 1000);
    finished_job(&env, "big-old", 2.0, MIB);
    finished_job(&env, "new", 0.5, 1000);
    let o = gc(&env, &["--dry-run", "--max-size", "100K"]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    let out = stdout_text(&o);
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("would delete expired "), "{out}");
    assert!(lines[0].contains("past the 7.0 days TTL"), "{out}");
    assert!(lines[1].starts_with("would delete big-old "), "{out}");
    assert!(lines[1].contains("more than 100.0 KiB"), "{out}");
    assert!(lines[1].contains(" bytes)"), "sizes are exact too: {out}");
    assert!(
        lines[2].starts_with("dry run: would delete 2 jobs"),
        "{out}"
    );
    for id in ["expired", "big-old", "new"] {
        assert!(env.job_dir(id).join("stdout.log").exists(), "{id}");
    }
}

#[test]
fn bad_settings_exit_2_with_a_clear_message() {
    let env = TestEnv::new();
    for (args, needle) in [
        (&["gc", "--max-size", "10X"][..], "invalid size unit"),
        (&["gc", "--max-size", "lots"][..], "invalid size"),
        (
            &["gc", "--ttl-days", "-1"][..],
            "invalid number of days '-1'",
        ),
        (&["gc", "--ttl-days", "week"][..], "invalid number of days"),
    ] {
        let o = env.run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr_text(&o));
        assert!(
            stderr_text(&o).contains(needle),
            "{args:?}: {}",
            stderr_text(&o)
        );
    }
    for (var, value) in [
        ("DATABUILD_LOG_MAX_SIZE_GB", "10G"),
        ("DATABUILD_LOG_TTL_DAYS", "soon"),
    ] {
        let o = env.cmd().arg("gc").env(var, value).output().unwrap();
        assert_eq!(code(&o), 2, "{var}: {}", stderr_text(&o));
        let err = stderr_text(&o);
        assert!(err.starts_with(&format!("logwrap: {var}: ")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

// ---- Odd entries and symlinks ------------------------------------------------

#[test]
fn symlinks_stray_files_and_odd_names_are_skipped_and_never_followed() {
    let env = TestEnv::new();
    finished_job(&env, "keep-me", 0.1, 10);
    // An old "job" outside the root, reachable through a symlink named like a job.
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), b"mine").unwrap();
    let outside_job = env.path("outside-job");
    fs::create_dir_all(&outside_job).unwrap();
    fs::write(outside_job.join("precious"), b"mine").unwrap();
    std::os::unix::fs::symlink(&outside_job, jobs_dir(&env).join("linked-job")).unwrap();
    // An expired job holding a symlink to a directory outside.
    let expired = finished_job(&env, "expired", 10.0, 10);
    std::os::unix::fs::symlink(&outside, expired.join("escape")).unwrap();
    // A stray file, a directory whose name is not an id, a dangling symlink.
    fs::write(jobs_dir(&env).join("stray.txt"), b"hello").unwrap();
    fs::create_dir_all(jobs_dir(&env).join("not an id")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", jobs_dir(&env).join("dangling")).unwrap();
    // Stray things in the root itself are none of gc's business.
    fs::write(env.root.join("notes.txt"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, env.root.join("link")).unwrap();

    let o = gc(&env, &["--ttl-days", "1"]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    let err = stderr_text(&o);
    for name in ["linked-job", "stray.txt", "not an id", "dangling"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("logwrap: warning: skipping") && l.contains(name)),
            "no warning for {name}: {err}"
        );
    }
    assert!(!expired.exists(), "the expired job itself goes");
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"mine");
    assert_eq!(fs::read(outside_job.join("precious")).unwrap(), b"mine");
    assert!(fs::symlink_metadata(jobs_dir(&env).join("linked-job")).is_ok());
    assert!(jobs_dir(&env).join("stray.txt").exists());
    assert!(env.job_dir("keep-me").exists());
    assert!(env.root.join("notes.txt").exists());
}

#[test]
fn a_symlinked_job_runs_directory_is_refused_not_followed() {
    let env = TestEnv::new();
    let elsewhere = env.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(&env.root).unwrap();
    std::os::unix::fs::symlink(&elsewhere, jobs_dir(&env)).unwrap();
    let old = finished_job(&env, "old", 10.0, 10);
    let o = gc(&env, &[]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr_text(&o).contains("is a symlink"),
        "{}",
        stderr_text(&o)
    );
    assert!(old.exists());
    assert!(elsewhere.join("old").exists());
}

#[test]
fn unreadable_job_directories_are_skipped_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    let locked = finished_job(&env, "locked", 10.0, 10);
    finished_job(&env, "old", 10.0, 10);
    let mut cmd = env.cmd();
    cmd.arg("gc");
    if nix::unistd::geteuid().is_root() {
        // Permissions do not stop root: collect as nobody, who owns the root.
        let nobody = 65534;
        let chown = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&env.dir)
            .status()
            .unwrap();
        assert!(chown.success());
        cmd.uid(nobody).gid(nobody);
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let o = cmd.output().unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(stderr_text(&o).contains("skipping"), "{}", stderr_text(&o));
    assert!(locked.exists());
    assert!(!env.job_dir("old").exists());
}

#[test]
fn leftovers_of_a_dead_collector_are_removed_a_live_ones_are_not() {
    let env = TestEnv::new();
    finished_job(&env, "recent", 0.1, 10);
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = jobs_dir(&env).join(format!(".deleting-old-{dead_pid}-0"));
    fs::create_dir_all(stale.join("sub")).unwrap();
    fs::write(stale.join("sub/stdout.log"), b"x").unwrap();
    let busy = jobs_dir(&env).join(format!(".deleting-busy-{}-0", std::process::id()));
    fs::create_dir_all(&busy).unwrap();
    let temp = jobs_dir(&env).join(".something.tmp");
    fs::write(&temp, b"x").unwrap();

    let o = gc(&env, &[]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(!stale.exists());
    assert!(busy.exists(), "its collector (this test) is alive");
    assert!(temp.exists());
    assert!(env.job_dir("recent").exists());
    assert!(
        stdout_text(&o).contains("removed 1 left over"),
        "{}",
        stdout_text(&o)
    );
}

// ---- Concurrency and scale ---------------------------------------------------

#[test]
fn collectors_and_wrappers_running_together_never_fail_each_other() {
    const EXPIRED: usize = 300;
    const WAITING: usize = 12;
    const QUICK: usize = 24;
    const COLLECTORS: usize = 3;
    const LINES: usize = 200;
    let env = Arc::new(TestEnv::new());
    for i in 0..EXPIRED {
        finished_job(&env, &format!("expired-{i}"), 10.0, 100);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    // The most aggressive collectors there are: every finished job goes at once.
    let collectors: Vec<_> = (0..COLLECTORS)
        .map(|_| {
            let (env, stop, problems) = (env.clone(), stop.clone(), problems.clone());
            std::thread::spawn(move || {
                let mut runs = 0;
                while !stop.load(Ordering::SeqCst) || runs == 0 {
                    let o = gc(&env, &["--ttl-days", "0", "--max-size", "0"]);
                    // The note that running jobs alone exceed a 0-byte cap is
                    // expected; any other word on stderr is a failure.
                    let err = stderr_text(&o);
                    if code(&o) != 0 || err.lines().any(|l| !l.starts_with("logwrap: note:")) {
                        problems.lock().unwrap().push(format!(
                            "gc exit {}: {}",
                            code(&o),
                            stderr_text(&o)
                        ));
                    }
                    runs += 1;
                }
                runs
            })
        })
        .collect();

    let script = format!("i=1; while [ $i -le {LINES} ]; do echo \"line $i\"; i=$((i+1)); done");
    let expected: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    let waiting: Vec<_> = (0..WAITING)
        .map(|i| {
            let (env, script, expected) = (env.clone(), script.clone(), expected.clone());
            std::thread::spawn(move || {
                let id = format!("waiting-{i}");
                let child = start_waiting_job(&env, &id, &[], &script);
                // While it runs, every line is in its log: gc never touched it.
                wait_until(LIMIT, &format!("{id}'s log complete"), || {
                    env.stdout_log(&id).len() >= expected.len()
                });
                assert_eq!(String::from_utf8_lossy(&env.stdout_log(&id)), expected);
                assert_eq!(env.meta(&id)["status"], "running");
                let o = release(child);
                assert_eq!(code(&o), 0, "{id}: {}", stderr_text(&o));
                assert_eq!(stdout_text(&o), expected, "{id}: terminal copy");
            })
        })
        .collect();
    let quick: Vec<_> = (0..QUICK)
        .map(|i| {
            let env = env.clone();
            std::thread::spawn(move || {
                // Created, run and finished while the collectors sweep: a
                // directory mid-creation must never be taken from under it.
                let o = env.run_sh(&format!("quick-{i}"), &["--no-pty"], "echo quick");
                assert_eq!(code(&o), 0, "quick-{i}: {}", stderr_text(&o));
                assert_eq!(o.stdout, b"quick\n");
                assert_eq!(stderr_text(&o), "");
            })
        })
        .collect();
    for t in waiting.into_iter().chain(quick) {
        t.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for t in collectors {
        assert!(t.join().unwrap() > 0);
    }
    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    // Nothing is left half-deleted, and every finished job went.
    let o = gc(&env, &["--ttl-days", "0", "--max-size", "0"]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    let left: Vec<_> = fs::read_dir(jobs_dir(&env))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn two_thousand_jobs_are_deleted_completely() {
    const JOBS: usize = 2000;
    let env = TestEnv::new();
    for i in 0..JOBS {
        finished_job(&env, &format!("job-{i:05}"), 8.0 + i as f64 / 1000.0, 100);
    }
    finished_job(&env, "survivor", 1.0, 100);
    let o = gc(&env, &[]);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert!(
        stdout_text(&o).starts_with(&format!("deleted {JOBS} jobs")),
        "{}",
        stdout_text(&o)
    );
    let left: Vec<_> = fs::read_dir(jobs_dir(&env))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["survivor"]);
}

// ---- Housekeeping in the wrapper ---------------------------------------------

#[test]
fn a_wrapper_collects_an_expired_job_while_its_own_job_runs() {
    let env = TestEnv::new();
    let expired = finished_job(&env, "expired", 10.0, 100);
    finished_job(&env, "recent", 1.0, 100);
    let child = start_waiting_job(&env, "worker", &[], "echo working");
    wait_until(
        LIMIT,
        "the wrapper's housekeeping to delete the job",
        || !expired.exists(),
    );
    let o = release(child);
    assert_eq!(code(&o), 0, "{}", stderr_text(&o));
    assert_eq!(o.stdout, b"working\n");
    assert_eq!(stderr_text(&o), "", "housekeeping is silent");
    assert!(env.job_dir("recent").exists());
    assert!(env.root.join(".gc-stamp").is_file());
}

#[test]
fn a_failing_housekeeping_never_changes_the_jobs_exit_status() {
    let env = TestEnv::new();
    let expired = finished_job(&env, "expired", 10.0, 100);
    // A directory where the stamp belongs makes every housekeeping run fail.
    fs::create_dir_all(env.root.join(".gc-stamp")).unwrap();
    for (script, want) in [("echo out; exit 3", 3), ("echo out", 0)] {
        let o = env.run_sh("j", &["--no-pty"], script);
        assert_eq!(code(&o), want, "{}", stderr_text(&o));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(stderr_text(&o), "");
        fs::remove_dir_all(env.job_dir("j")).unwrap();
    }
    assert!(expired.exists());
    // The same failure, seen from the library: an error, not a panic.
    let hk = Housekeeping {
        root: env.root.clone(),
        policy: Policy::default(),
    };
    assert!(maybe_collect(&hk).is_err());
}

#[test]
fn the_interval_stamp_allows_one_collection_per_hour() {
    let env = TestEnv::new();
    fs::create_dir_all(jobs_dir(&env)).unwrap();
    let hk = Housekeeping {
        root: env.root.clone(),
        policy: Policy::default(),
    };
    finished_job(&env, "first", 10.0, 100);
    let r = maybe_collect(&hk)
        .unwrap()
        .expect("a first collection is due");
    assert_eq!(r.deleted, 1);
    assert!(!env.job_dir("first").exists());

    finished_job(&env, "second", 10.0, 100);
    assert_eq!(maybe_collect(&hk).unwrap(), None, "collected just now");
    assert!(env.job_dir("second").exists());

    // An hour later it is due again...
    let stamp = env.root.join(".gc-stamp");
    set_mtime(&stamp, 2.0 / 24.0);
    // ...but not while another process is collecting (holds the stamp's lock).
    let holder = fs::File::open(&stamp).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    assert_eq!(maybe_collect(&hk).unwrap(), None, "someone else collects");
    drop(holder);
    let r = maybe_collect(&hk)
        .unwrap()
        .expect("due again after an hour");
    assert_eq!(r.deleted, 1);
    assert!(!env.job_dir("second").exists());
    // A finished collection restarts the interval.
    let age = SystemTime::now()
        .duration_since(fs::metadata(&stamp).unwrap().modified().unwrap())
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "{age:?}");
}

/// A job that nested its own files far deeper than gc measures (and deeper
/// than a descriptor per level would allow) is still collected whole, with a
/// warning that its size counts only what lies above.
#[test]
fn a_job_nested_deeper_than_descriptors_allow_is_collected_whole() {
    let env = TestEnv::new();
    let dir = finished_job(&env, "deep", 10.0, 100);
    // 300 levels of 200-byte names, made one step at a time (60 KB of
    // path, past PATH_MAX), with a file at each.
    {
        use nix::fcntl::{open, openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let name = "d".repeat(200);
        let mut fd = open(&dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..300 {
            mkdirat(&fd, name.as_str(), Mode::S_IRWXU).unwrap();
            drop(openat(&fd, "f", OFlag::O_CREAT | OFlag::O_WRONLY, Mode::S_IRUSR).unwrap());
            fd = openat(
                &fd,
                name.as_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
        }
    }
    finished_job(&env, "plain", 10.0, 100);
    // Fewer descriptors than levels: gc must not hold one per level.
    let mut cmd = env.cmd();
    cmd.args(["gc", "--ttl-days", "1"]);
    with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 64, 64);
    let o = cmd.output().unwrap();
    let err = stderr_text(&o);
    assert_eq!(code(&o), 0, "{err}");
    assert!(
        stdout_text(&o).starts_with("deleted 2 jobs"),
        "{}{err}",
        stdout_text(&o)
    );
    assert!(
        err.contains("job deep has files that could not be measured (nested more than 32"),
        "{err}"
    );
    assert!(!dir.exists());
    assert_eq!(fs::read_dir(jobs_dir(&env)).unwrap().count(), 0);
}

/// A job that left read-only directories in its own (as Go's module cache
/// is) is still collected by a gc running as an ordinary user, who owns them
/// but may not write to them. Needs root to run gc as another user; skipped
/// otherwise.
#[test]
fn a_job_with_read_only_directories_is_collected() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED a_job_with_read_only_directories_is_collected: needs root");
        return;
    }
    let env = TestEnv::new();
    let dir = finished_job(&env, "ro", 10.0, 100);
    fs::create_dir_all(dir.join("pkg/mod/cache")).unwrap();
    fs::write(dir.join("pkg/mod/cache/file"), b"x").unwrap();
    // Read-only far below the levels the remover holds open (it moves
    // those up, which needs them writable), and one made unreadable (gc
    // cannot measure it, and removes it all the same).
    let deep: std::path::PathBuf = std::iter::repeat_n("d", 20).collect();
    fs::create_dir_all(dir.join(&deep).join("ro")).unwrap();
    fs::write(dir.join(&deep).join("ro/f"), b"x").unwrap();
    fs::create_dir_all(dir.join("locked/inner")).unwrap();
    let nobody = 65534;
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{nobody}:{nobody}")])
        .arg(&env.root)
        .status()
        .unwrap();
    assert!(chown.success());
    let mut read_only = vec![
        dir.join("pkg/mod/cache"),
        dir.join("pkg/mod"),
        dir.join("pkg"),
    ];
    read_only.push(dir.join(&deep).join("ro"));
    let mut up = dir.join(&deep);
    while up != dir {
        read_only.push(up.clone());
        up.pop();
    }
    for d in read_only {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).unwrap();
    }
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    }
    let mut cmd = env.cmd();
    cmd.args(["gc", "--ttl-days", "1"]);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setgid/setuid between fork and exec are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgid(nobody) != 0 || libc::setuid(nobody) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let o = cmd.output().unwrap();
    let err = stderr_text(&o);
    assert_eq!(code(&o), 0, "{err}");
    assert!(
        stdout_text(&o).starts_with("deleted 1 job"),
        "{}{err}",
        stdout_text(&o)
    );
    assert!(err.contains("could not be measured"), "{err}");
    assert!(!dir.exists());
    assert_eq!(fs::read_dir(jobs_dir(&env)).unwrap().count(), 0);
}
