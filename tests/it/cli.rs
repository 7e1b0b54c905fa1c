//! The command layer: exit codes of every subcommand, a closed pipe, the store
//! root every command agrees on, and the newcomer's mistakes answered with a
//! hint instead of a junk job (issue 9 points 3-5).

use crate::util::{assert_fails_with, assert_ok, contains, stderr_text, wait_until, TestEnv};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

/// How long a spawned `serve` gets to print its banner.
const BANNER_WAIT: Duration = Duration::from_secs(10);

/// The job directories under the test's root (none when the root is absent).
fn jobs(env: &TestEnv) -> usize {
    std::fs::read_dir(env.root.join("job_runs")).map_or(0, |d| d.count())
}

#[test]
fn usage_errors_exit_2_for_every_subcommand() {
    let env = TestEnv::new();
    for args in [
        &["serve", "--heartbeat", "abc"][..],
        &["serve", "--listen", "nonsense"],
        &["serve", "--header-timeout", "x"],
        &["serve", "--token-file", "/no/such/file"],
        &["ls", "--bogus"],
        &["ls", "--status", "nope"],
        &["show"],
        &["show", "../x"],
        &["logs", "--tail", "x"],
        &["gc", "--max-size", "lots"],
        // Values that would silently break the server or say nothing.
        &["serve", "--idle-timeout", "0"],
        &["serve", "--header-timeout", "0"],
        &["serve", "--token", ""],
        &["serve", "--max-connections", "0"],
        &["ls", "--limit", "0"],
        &["logs", "--server", "nonsense", "x"],
        &["logs", "--server", "http://h:99999", "x"],
        &["logs", "--token", "t", "x"],
    ] {
        let o = env.run(args);
        assert_fails_with(&o, 2);
        assert!(stderr_text(&o).starts_with("logwrap: "), "{args:?}");
    }
    // The wrapper's own bad options stay 125 (SPEC §1).
    assert_fails_with(&env.run(&["--bogus", "--", "true"]), 125);
    assert_fails_with(&env.run(&["--listen", "nonsense", "--", "true"]), 125);
    assert_eq!(jobs(&env), 0);
}

#[test]
fn not_found_exits_1_and_the_wrappers_codes_are_unchanged() {
    let env = TestEnv::new();
    assert_fails_with(&env.run(&["show", "nosuch"]), 1);
    assert_fails_with(&env.run(&["logs", "nosuch"]), 1);
    assert_fails_with(&env.run_sh("three", &["--no-pty"], "exit 3"), 3);
    assert_fails_with(&env.run(&["--no-pty", "--", "/no/such/cmd"]), 127);
    assert_fails_with(
        &env.run(&["--no-pty", "--timeout", "0.05", "--", "sleep", "5"]),
        124,
    );
    assert_fails_with(&env.run_sh("sig", &["--no-pty"], "kill -TERM $$"), 143);
    assert_ok(&env.run(&["show", "three"]));
}

/// Runs `logwrap <args>` with its stdout a pipe nobody reads any more.
fn with_closed_stdout(env: &TestEnv, args: &[&str]) -> Output {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    env.cmd()
        .args(args)
        .stdout(Stdio::from(writer))
        .output()
        .unwrap()
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let env = TestEnv::new();
    assert_ok(&env.run_sh("piped", &["--no-pty", "-q"], "seq 1 20000"));
    for args in [
        &["ls", "--json"][..],
        &["ls"],
        &["show", "piped"],
        &["show", "--json", "piped"],
        &["logs", "piped"],
        &["logs", "--all", "--timestamps", "piped"],
    ] {
        let o = with_closed_stdout(&env, args);
        assert_ok(&o);
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr_text(&o));
    }
}

#[test]
fn log_dir_before_a_subcommand_lists_jobs_instead_of_running_ls() {
    let env = TestEnv::new();
    assert_ok(&env.run_sh("listed", &["-q"], "true"));
    let root = env.root.to_str().unwrap();
    let o = env
        .cmd()
        .env_remove("DATABUILD_LOG_DIR")
        .args(["--log-dir", root, "ls"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        contains(&o.stdout, "listed"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(jobs(&env), 1, "no job was run");
}

#[test]
fn wrapper_options_before_a_subcommand_are_refused_with_a_hint() {
    let env = TestEnv::new();
    let o = env.run(&["--quiet", "ls"]);
    assert_fails_with(&o, 2);
    assert!(
        stderr_text(&o).contains("logwrap --quiet -- ls"),
        "{}",
        stderr_text(&o)
    );
    assert_eq!(jobs(&env), 0);
}

#[test]
fn a_mistyped_subcommand_gets_did_you_mean_and_no_job() {
    let env = TestEnv::new();
    let o = env.run(&["lgos"]);
    assert_fails_with(&o, 2);
    let err = stderr_text(&o);
    assert!(err.contains("did you mean `logs`?"), "{err}");
    assert!(err.contains("write `logwrap -- lgos`"), "{err}");
    assert_eq!(jobs(&env), 0);
    // A real command a letter away from a subcommand still runs as a job.
    assert_ok(&env.run(&["-q", "sh", "-c", "true"]));
    assert_eq!(jobs(&env), 1);
}

#[test]
fn a_forgotten_double_dash_says_to_add_it() {
    let env = TestEnv::new();
    let o = env.run(&["ls", "-l"]);
    assert_fails_with(&o, 2);
    let err = stderr_text(&o);
    assert!(
        err.contains("to run `ls -l` as a job, write `logwrap -- ls -l`"),
        "{err}"
    );
    assert_eq!(jobs(&env), 0);
}

#[test]
fn a_missing_required_argument_is_named() {
    let env = TestEnv::new();
    let o = env.run(&["show"]);
    assert_fails_with(&o, 2);
    let err = stderr_text(&o);
    assert!(err.contains("missing <ID>"), "{err}");
    assert!(!err.contains("provided:;"), "{err}");
}

#[test]
fn reading_commands_never_create_a_root() {
    let env = TestEnv::new();
    let missing = env.path("nowhere/logs");
    let dir = missing.to_str().unwrap();
    for args in [
        &["ls", "--log-dir", dir][..],
        &["ls", "--json", "--log-dir", dir],
        &["show", "--log-dir", dir, "x"],
        &["logs", "--log-dir", dir, "x"],
        &["gc", "--dry-run", "--log-dir", dir],
        &["gc", "--log-dir", dir],
    ] {
        env.run(args);
        assert!(!env.path("nowhere").exists(), "{args:?} created the root");
    }
    // The default root (no --log-dir): neither the system root nor the
    // user's fallback appears.
    let system = Path::new("/var/log/databuild");
    let system_before = system.exists();
    let o = env
        .cmd()
        .env_remove("DATABUILD_LOG_DIR")
        .env("XDG_STATE_HOME", env.path("state"))
        .args(["ls"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(!env.path("state").exists());
    assert_eq!(
        system.exists(),
        system_before,
        "ls created /var/log/databuild"
    );
}

/// The `<root>/job_runs` a reading command names for an unknown job.
fn root_named_by(o: &Output) -> String {
    let err = stderr_text(o);
    let rest = err
        .split(" under ")
        .nth(1)
        .unwrap_or_else(|| panic!("{err}"));
    let dir = rest.split(';').next().unwrap_or_default();
    dir.trim_end_matches("/job_runs").to_string()
}

#[test]
fn every_reading_command_and_serve_agree_on_the_default_root() {
    let env = TestEnv::new();
    let reading = |args: &[&str]| {
        env.cmd()
            .env_remove("DATABUILD_LOG_DIR")
            .env("XDG_STATE_HOME", env.path("state"))
            .args(args)
            .output()
            .unwrap()
    };
    let show = root_named_by(&reading(&["show", "nosuch-job"]));
    let logs = root_named_by(&reading(&["logs", "nosuch-job"]));
    assert_eq!(show, logs);
    let mut serve = env
        .cmd()
        .env_remove("DATABUILD_LOG_DIR")
        .env("XDG_STATE_HOME", env.path("state"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let stderr = serve.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    wait_until(BANNER_WAIT, "serve's banner", || {
        match lines.next() {
            Some(Ok(l)) => banner = l,
            _ => return true,
        }
        banner.contains("jobs under")
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = serve.wait();
    let served = banner
        .split("jobs under ")
        .nth(1)
        .unwrap_or_else(|| panic!("{banner}"));
    assert_eq!(
        served.trim_end_matches(')').trim_end_matches("/job_runs"),
        show,
        "{banner}"
    );
}

/// The indented command lines of the README's Quick start section.
fn quick_start_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Quick start\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Quick start section");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_quick_start_has_two_commands_and_its_job_part_runs_twice() {
    let commands = quick_start_commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(commands[1], "make test");
    // The build is what the test suite already did; what follows it must work
    // for a newcomer with only ~/.local/bin/logwrap, and work again.
    let install = "make install PREFIX=\"$HOME/.local\" && ";
    let job = commands[0]
        .strip_prefix(install)
        .unwrap_or_else(|| panic!("first command does not start with {install:?}"));
    let env = TestEnv::new();
    let bin = env.path(".local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(crate::util::BIN, bin.join("logwrap")).unwrap();
    for round in 1..=2 {
        let o = std::process::Command::new("sh")
            .args(["-c", job])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &env.dir)
            .env("TMPDIR", &env.dir)
            .current_dir(&env.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_ok(&o);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("the job exited 3"), "round {round}: {out}");
        assert!(out.contains("stderr: a warning"), "round {round}: {out}");
        let demo = env.path("logwrap-demo/job_runs");
        assert_eq!(std::fs::read_dir(&demo).unwrap().count(), round);
    }
}

/// An environment variable set but empty counts as unset for every option
/// that reads one; the token a `serve` exports does not stop local reading;
/// a duration too small to be one is refused rather than read as 0; and a
/// blank `--partition` is no partition.
#[test]
fn empty_variables_are_unset_and_tokens_are_for_servers_only() {
    let env = TestEnv::new();
    for var in [
        "DATABUILD_LOG_MAX_JOB_SIZE",
        "DATABUILD_LOG_REDIS_CA_FILE",
        "DATABUILD_LOG_TOKEN",
    ] {
        let o = env
            .cmd()
            .env(var, "")
            .args([
                "--job-run-id",
                &var.to_lowercase().replace('_', "-"),
                "-q",
                "--",
            ])
            .args(["echo", "ok"])
            .output()
            .unwrap();
        assert_ok(&o);
    }
    let id = "databuild-log-max-job-size";
    for (var, value) in [
        ("DATABUILD_LOG_SERVER", ""),
        ("DATABUILD_LOG_TOKEN", "abc"),
        ("DATABUILD_LOG_REDIS_CA_FILE", ""),
    ] {
        let o = env
            .cmd()
            .env(var, value)
            .args(["logs", id])
            .output()
            .unwrap();
        assert_ok(&o);
        assert_eq!(o.stdout, b"ok\n", "{var}={value}");
    }
    let o = env.run(&["--timeout", "0.0000000001", "--", "sleep", "5"]);
    assert_fails_with(&o, 125);
    assert!(stderr_text(&o).contains("shorter than a nanosecond"));
    assert_ok(&env.run(&[
        "--job-run-id",
        "parts",
        "-q",
        "--partition",
        " ",
        "--partition",
        "a",
        "--",
        "true",
    ]));
    assert_eq!(
        env.meta("parts")["building_partitions"],
        serde_json::json!(["a"])
    );
}
