//! Shipping to Redis Streams (issue 10) against a real `redis-server`: the
//! shipped entries rebuild the log files byte for byte, Redis being down or
//! restarted never costs the job or a line, and `logwrap ship` completes what
//! a wrapper could not.

use crate::util::job::{wait_child, Gate};
use crate::util::redis_server::{assert_same, field, shipped, wait_shipped, RedisServer};
use crate::util::*;
use std::process::Stdio;
use std::time::Duration;

/// Upper bound for waiting on shipping to catch up.
const LIMIT: Duration = Duration::from_secs(30);

/// Byte offset shipped so far of `stream`, from the meta hash mark.
/// A quiet pipe-mode wrapper shipping to `url`, running `sh -c script`.
fn spawn_shipping(env: &TestEnv, id: &str, url: &str, script: &str) -> std::process::Child {
    env.cmd()
        .args(["--job-run-id", id, "--no-pty", "--quiet", "--ship", url])
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn shipped_to(r: &RedisServer, id: &str, stream: &str) -> u64 {
    r.meta_field(id, &format!("{stream}_end"))
        .and_then(|m| m.split(' ').next().and_then(|o| o.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn shipped_entries_rebuild_both_logs_byte_for_byte() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    // Every byte value, CRs and a bare CR line, a line of 3 MiB (several
    // entries' worth), 20,000 short lines and a last line without a newline.
    let script = "printf 'bin:'; awk 'BEGIN{for(i=1;i<256;i++) if (i!=10) printf \"%c\", i; printf \"\\n\"}'; \
        printf 'a\\r\\nprogress 10%%\\rprogress 100%%\\r\\n'; \
        head -c 3145728 /dev/zero | tr '\\0' x; echo; \
        seq 1 20000; echo oops >&2; printf 'no newline at the end'";
    let out = env.run_sh(
        "ship1",
        &["--no-pty", "--quiet", "--ship", &redis.url()],
        script,
    );
    assert_ok(&out);
    wait_shipped(&env, "ship1");
    let entries = redis.log("ship1");
    assert_same(
        &shipped(&entries, "stdout"),
        &env.stdout_log("ship1"),
        "ship1 stdout",
    );
    assert_same(
        &shipped(&entries, "stderr"),
        &env.stderr_log("ship1"),
        "ship1 stderr",
    );
    assert!(env.stdout_log("ship1").len() > 3 << 20);
    // Whole lines only, except pieces of the long line and the last line.
    for e in entries.iter().filter(|e| e.1.contains_key("data")) {
        let d = &e.1["data"];
        assert!(d.ends_with(b"\n") || d.len() == 1 << 20 || d.ends_with(b"at the end"));
    }
    let end = entries.last().unwrap();
    assert_eq!(field(end, "end"), "1");
    assert_eq!(field(end, "status"), "succeeded");
    assert_eq!(
        field(end, "stdout_bytes"),
        env.stdout_log("ship1").len().to_string()
    );
    let meta = env.meta("ship1");
    assert_eq!(meta["ship"]["complete"], true, "{meta}");
    assert_eq!(
        meta["ship"]["bytes"],
        env.stdout_log("ship1").len() as u64 + 5
    );
    let jobs = redis.xrange("logwrap:jobs");
    let events: Vec<String> = jobs.iter().map(|e| field(e, "event")).collect();
    assert_eq!(events, ["started", "finished"]);
    assert_eq!(field(&jobs[1], "id"), "ship1");
    assert_eq!(field(&jobs[1], "exit_code"), "0");
}

#[test]
fn an_unreachable_redis_leaves_the_job_alone_and_ship_completes_it_later() {
    let env = TestEnv::new();
    // Nothing listens there: connection refused at once.
    let sock = env.path("redis/redis.sock");
    let url = format!("redis+unix://{}", sock.display());
    let out = env.run_sh(
        "down",
        &["--no-pty", "--quiet", "--ship", &url],
        "seq 1 1000; echo e >&2; exit 3",
    );
    assert_fails_with(&out, 3);
    assert_eq!(env.stdout_log("down").len(), 3893);
    let meta = env.meta("down");
    assert_eq!(meta["exit_code"], 3);
    assert_eq!(meta["ship"]["complete"], false, "{meta}");
    // A job this short is shipped from its end, by a process its wrapper does
    // not wait for: it records what failed once the wrapper has exited.
    let said = |id: &str, what: &str| {
        let meta = env.meta(id);
        meta["ship"]["complete"] == false
            && meta["ship"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(what))
    };
    assert!(
        said("down", "connecting to") || said("down", "in the background"),
        "{meta}"
    );
    wait_until(LIMIT, "the failure to be recorded", || {
        said("down", "connecting to")
    });
    // A job that runs until its shipping process has tried Redis (it says so
    // in ship.json): the wrapper's own final metadata says what failed.
    let out = env.run_sh(
        "down2",
        &["--no-pty", "--quiet", "--ship", &url],
        "echo x; while [ ! -e \"$DATABUILD_JOB_LOG_DIR/ship.json\" ]; do sleep 0.01; done",
    );
    assert_ok(&out);
    assert!(said("down2", "connecting to"), "{}", env.meta("down2"));

    // Later, with Redis up, `logwrap ship` catches up; again ships nothing new.
    let redis = RedisServer::start(&env.path("redis"));
    let out = env.run(&["ship", "--ship", &url, "down"]);
    assert_ok(&out);
    assert!(contains(&out.stdout, "down: shipped"), "{out:?}");
    let entries = redis.log("down");
    assert_same(
        &shipped(&entries, "stdout"),
        &env.stdout_log("down"),
        "down stdout",
    );
    assert_same(
        &shipped(&entries, "stderr"),
        &env.stderr_log("down"),
        "down stderr",
    );
    assert_eq!(field(entries.last().unwrap(), "status"), "failed");
    assert_eq!(env.meta("down")["ship"]["complete"], true);
    let out = env.run(&["ship", "--ship", &url, "--all"]);
    assert_ok(&out);
    assert!(contains(&out.stdout, "down: up to date"), "{out:?}");
    assert_eq!(redis.log("down").len(), entries.len());
}

#[test]
fn redis_killed_mid_job_and_restarted_loses_and_repeats_nothing() {
    let env = TestEnv::new();
    let mut redis = RedisServer::start_persistent(&env.path("redis"));
    let (g1, g2) = (Gate::new(&env, "g1"), Gate::new(&env, "g2"));
    let script = format!(
        "seq 1 5000; {}; seq 5001 10000; {}; seq 10001 15000",
        g1.wait(),
        g2.wait()
    );
    let mut job = spawn_shipping(&env, "restart", &redis.url(), &script);
    let len = |env: &TestEnv| env.stdout_log("restart").len() as u64;
    wait_until(LIMIT, "the first lines to be shipped", || {
        len(&env) > 0 && shipped_to(&redis, "restart", "stdout") == len(&env)
    });
    redis.kill();
    g1.open();
    wait_until(LIMIT, "the job to write while Redis is down", || {
        contains(&env.stdout_log("restart"), "10000\n")
    });
    redis.restart();
    wait_until(LIMIT, "shipping to resume", || {
        shipped_to(&redis, "restart", "stdout") == len(&env)
    });
    g2.open();
    assert!(wait_child(&mut job, "the job").success());
    wait_shipped(&env, "restart");
    let entries = redis.log("restart");
    assert_same(
        &shipped(&entries, "stdout"),
        &env.stdout_log("restart"),
        "restart stdout",
    );
    assert_eq!(env.meta("restart")["ship"]["complete"], true);
}

#[test]
fn a_killed_wrappers_job_is_completed_by_logwrap_ship() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let gate = Gate::new(&env, "g");
    let script = format!("seq 1 3000; {}; seq 3001 6000", gate.wait());
    let mut job = spawn_shipping(&env, "killed", &redis.url(), &script);
    wait_until(LIMIT, "the first lines to be shipped", || {
        let n = env.stdout_log("killed").len() as u64;
        n > 0 && shipped_to(&redis, "killed", "stdout") == n
    });
    // While the wrapper runs, its heartbeat says so to readers.
    assert!(redis.exists("logwrap:{killed}:alive"));
    job.kill().unwrap();
    job.wait().unwrap();
    // The job's shell is orphaned; let it finish (its output goes nowhere).
    gate.open();
    let out = env.run(&["ship", "--ship", &redis.url(), "--all"]);
    assert_ok(&out);
    assert!(contains(&out.stdout, "killed: shipped"), "{out:?}");
    let entries = redis.log("killed");
    assert_same(
        &shipped(&entries, "stdout"),
        &env.stdout_log("killed"),
        "killed stdout",
    );
    assert_eq!(field(entries.last().unwrap(), "status"), "abandoned");
    assert!(!redis.exists("logwrap:{killed}:alive"));
    let out = env.run(&["ship", "--ship", &redis.url(), "killed"]);
    assert!(contains(&out.stdout, "killed: up to date"), "{out:?}");
    assert_eq!(redis.log("killed").len(), entries.len());
}

#[test]
fn the_password_is_never_written_down() {
    let env = TestEnv::new();
    let redis = RedisServer::start_tcp_with_password(&env.path("redis"), "s3cret-pw");
    let out = env
        .cmd()
        .args(["--job-run-id", "pw", "--no-pty", "--quiet"])
        .env("DATABUILD_LOG_SHIP", redis.url())
        .args(["--", "sh", "-c", "echo hello"])
        .output()
        .unwrap();
    assert_ok(&out);
    wait_shipped(&env, "pw");
    assert_eq!(shipped(&redis.log("pw"), "stdout"), b"hello\n");
    let meta = env.meta("pw");
    assert_eq!(meta["ship"]["complete"], true, "{meta}");
    for name in ["metadata.json", "ship.json"] {
        let f = env.file("pw", name);
        assert!(!f.is_empty(), "{name}");
        assert!(!contains(&f, "s3cret-pw"), "{name} holds the password");
    }
    assert!(!contains(
        &redis.xrange("logwrap:jobs")[0].1["host"],
        "s3cret-pw"
    ));
    // The password as a query parameter, as the client also takes it on a
    // unix socket: written down masked all the same, messages included.
    let url = format!("redis+unix://{}?pass=s3cret-pw", redis.socket().display());
    let out = env.run_sh(
        "pwq",
        &["--no-pty", "--quiet", "--ship", &url],
        "echo hello",
    );
    assert_ok(&out);
    wait_shipped(&env, "pwq");
    let wrong = format!(
        "redis+unix://{}?pass=s3cret-pw-wrong",
        redis.socket().display()
    );
    let failed = env.run(&["logs", "--source", &wrong, "pwq"]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr_text(&failed));
    for text in [
        env.file("pwq", "metadata.json"),
        env.file("pwq", "ship.json"),
        out.stderr,
        failed.stderr,
    ] {
        assert!(
            !contains(&text, "s3cret-pw"),
            "{}",
            String::from_utf8_lossy(&text)
        );
    }
    assert!(contains(&env.file("pwq", "metadata.json"), "pass=***"));
}

#[test]
fn twenty_wrappers_ship_at_once() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let mut jobs: Vec<_> = (0..20)
        .map(|i| {
            env.cmd()
                .args(["--job-run-id", &format!("many{i}"), "--no-pty", "--quiet"])
                .args(["--ship", &redis.url(), "--", "seq", "1", "20000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for j in &mut jobs {
        assert!(wait_child(j, "a wrapper").success());
    }
    for i in 0..20 {
        let id = format!("many{i}");
        wait_shipped(&env, &id);
        let meta = env.meta(&id);
        assert_eq!(meta["ship"]["complete"], true, "{id}: {meta}");
        assert_same(
            &shipped(&redis.log(&id), "stdout"),
            &env.stdout_log(&id),
            &id,
        );
    }
    // Every job started and finished once (an event may come twice when a
    // wrapper exits between sending it and marking it sent: at least once).
    let mut events: Vec<(String, String)> = redis
        .xrange("logwrap:jobs")
        .iter()
        .map(|e| (field(e, "event"), field(e, "id")))
        .collect();
    events.sort();
    events.dedup();
    assert_eq!(events.len(), 40);
}

#[test]
fn a_later_wrapper_catches_up_a_job_shipped_while_redis_was_down() {
    let env = TestEnv::new();
    let sock = env.path("redis/redis.sock");
    let url = format!("redis+unix://{}", sock.display());
    let out = env.run_sh(
        "early",
        &["--no-pty", "--quiet", "--ship", &url],
        "seq 1 500",
    );
    assert_ok(&out);
    assert_eq!(env.meta("early")["ship"]["complete"], false);
    let redis = RedisServer::start(&env.path("redis"));
    let gate = Gate::new(&env, "g");
    let mut later = spawn_shipping(&env, "later", &url, &gate.wait());
    wait_until(LIMIT, "the earlier job to be caught up", || {
        env.meta("early")["ship"]["complete"] == true
    });
    gate.open();
    assert!(wait_child(&mut later, "the later job").success());
    assert_same(
        &shipped(&redis.log("early"), "stdout"),
        &env.stdout_log("early"),
        "early stdout",
    );
}

#[test]
fn markers_reach_the_jobs_stream_while_the_job_runs() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let gate = Gate::new(&env, "g");
    let script = format!(
        "echo 'DATABUILD_MISSING_DEPS_JSON: {{\"partitions\": [\"a/b\"]}}'; {}",
        gate.wait()
    );
    let mut job = spawn_shipping(&env, "marked", &redis.url(), &script);
    // Seen while the job still waits at the gate.
    wait_until(LIMIT, "the marker event", || {
        redis
            .xrange("logwrap:jobs")
            .iter()
            .any(|e| field(e, "event") == "marker")
    });
    let ev = redis
        .xrange("logwrap:jobs")
        .into_iter()
        .find(|e| field(e, "event") == "marker")
        .unwrap();
    assert_eq!(field(&ev, "id"), "marked");
    assert_eq!(field(&ev, "line"), "1");
    assert_eq!(field(&ev, "value"), r#"{"partitions":["a/b"]}"#);
    gate.open();
    assert!(wait_child(&mut job, "the job").success());
    wait_shipped(&env, "marked");
    let events: Vec<String> = redis
        .xrange("logwrap:jobs")
        .iter()
        .map(|e| field(e, "event"))
        .collect();
    assert_eq!(events, ["started", "marker", "finished"]);
}

#[test]
fn a_slow_redis_at_the_end_does_not_hold_the_wrapper_and_the_rest_ships_in_the_background() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let gate = Gate::new(&env, "g");
    let script = format!("seq 1 1000; {}; seq 1001 2000", gate.wait());
    let mut job = spawn_shipping(&env, "slow", &redis.url(), &script);
    wait_until(LIMIT, "the first lines to be shipped", || {
        let n = env.stdout_log("slow").len() as u64;
        n > 0 && shipped_to(&redis, "slow", "stdout") == n
    });
    // Redis takes writes again only long after the job has ended.
    redis.pause_writes(3000);
    gate.open();
    assert!(wait_child(&mut job, "the job").success());
    // The wrapper did not wait for Redis: the rest was handed over...
    let meta = env.meta("slow");
    assert_eq!(meta["ship"]["complete"], false, "{meta}");
    let why = meta["ship"]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("in the background"), "{meta}");
    // ...and arrives, complete, once Redis takes writes again.
    wait_shipped(&env, "slow");
    let entries = redis.log("slow");
    assert_same(
        &shipped(&entries, "stdout"),
        &env.stdout_log("slow"),
        "slow stdout",
    );
    assert_eq!(field(entries.last().unwrap(), "status"), "succeeded");
    assert_eq!(
        env.meta("slow")["ship"]["last_error"],
        serde_json::Value::Null
    );
}

#[test]
fn ship_wait_zero_leaves_the_rest_to_the_background_ship_without_losing_a_line() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let out = env.run_sh(
        "nowait",
        &[
            "--no-pty",
            "--quiet",
            "--ship",
            &redis.url(),
            "--ship-wait",
            "0",
        ],
        "seq 1 5000",
    );
    assert_ok(&out);
    // The wrapper did not wait for the end entry: its final metadata says so.
    let meta = env.meta("nowait");
    let ship = &meta["ship"];
    let handed = ship["complete"] == false
        && ship["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("in the background"));
    // Or the background `logwrap ship` has already recorded completion.
    assert!(handed || ship["complete"] == true, "{meta}");
    wait_shipped(&env, "nowait");
    assert_same(
        &shipped(&redis.log("nowait"), "stdout"),
        &env.stdout_log("nowait"),
        "nowait stdout",
    );
    let bad = env.run_sh(
        "badwait",
        &["--no-pty", "--ship", &redis.url(), "--ship-wait", "soon"],
        "true",
    );
    // Refused before the job runs, as a bad --ship-ttl is.
    assert_eq!(bad.status.code(), Some(125), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ship-wait"));
}

#[test]
fn a_100_mb_line_ships_byte_for_byte_live_and_by_catch_up() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let line = "head -c 100000000 /dev/zero | tr '\\0' x; echo";
    // Shipped by the wrapper as it runs, and logged without --ship then
    // shipped whole by `logwrap ship` (every piece sent after the job ended).
    assert_ok(&env.run_sh(
        "live",
        &["--no-pty", "--quiet", "--ship", &redis.url()],
        line,
    ));
    assert_ok(&env.run_sh("later", &["--no-pty", "--quiet"], line));
    assert_ok(&env.run(&["ship", "--ship", &redis.url(), "later"]));
    for id in ["live", "later"] {
        wait_shipped(&env, id);
        let log = env.job_dir(id).join("stdout.log");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100_000_001);
        // In pieces of 1 MiB: what one entry holds stays bounded.
        let n = redis.assert_shipped_file(id, "stdout", &log);
        assert_eq!(n, 100_000_001usize.div_ceil(1 << 20));
        let meta = env.meta(id);
        assert_eq!(meta["ship"]["lines"], 1, "{id}: {meta}");
        assert_eq!(meta["ship"]["bytes"], 100_000_001u64, "{id}: {meta}");
    }
}

#[test]
fn a_million_short_lines_ship_byte_for_byte() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let out = env.run_sh(
        "million",
        &["--no-pty", "--quiet", "--ship", &redis.url()],
        "seq 1 1000000",
    );
    assert_ok(&out);
    wait_shipped(&env, "million");
    let log = env.job_dir("million").join("stdout.log");
    redis.assert_shipped_file("million", "stdout", &log);
    let meta = env.meta("million");
    assert_eq!(meta["ship"]["lines"], 1_000_000, "{meta}");
    assert_eq!(meta["stdout"]["lines"], 1_000_000, "{meta}");
}

#[test]
fn rediss_ships_over_tls_checked_against_the_given_ca() {
    let env = TestEnv::new();
    let (redis, url, ca) = RedisServer::start_tls(&env.path("redis"));
    let ca = ca.display().to_string();
    let out = env.run_sh(
        "tls",
        &[
            "--no-pty",
            "--quiet",
            "--ship",
            &url,
            "--redis-ca-file",
            &ca,
        ],
        "seq 1 3000; echo err >&2",
    );
    assert_ok(&out);
    wait_shipped(&env, "tls");
    let entries = redis.log("tls");
    assert_same(
        &shipped(&entries, "stdout"),
        &env.stdout_log("tls"),
        "tls stdout",
    );
    assert_same(&shipped(&entries, "stderr"), b"err\n", "tls stderr");
    // Read back over TLS too.
    let logs = env.run(&["logs", "--source", &url, "--redis-ca-file", &ca, "tls"]);
    assert_ok(&logs);
    assert_eq!(logs.stdout, env.stdout_log("tls"));

    // The system's CAs do not know this server's: shipping fails and says
    // why, the job does not.
    assert_ok(&env.run_sh("untrusted", &["--no-pty", "--quiet"], "echo fine"));
    let out = env.run(&["ship", "--ship", &url, "untrusted"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr_text(&out).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
    assert!(!redis.exists("logwrap:{untrusted}:meta"));
    let out = env.run(&["ship", "--ship", &url, "--redis-ca-file", &ca, "untrusted"]);
    assert_ok(&out);
    assert!(redis.exists("logwrap:{untrusted}:meta"));
    // A CA file that is not one is refused before the job runs.
    let bad = env.run_sh(
        "badca",
        &[
            "--no-pty",
            "--ship",
            &url,
            "--redis-ca-file",
            "/nonexistent/ca.pem",
        ],
        "true",
    );
    assert_eq!(bad.status.code(), Some(125), "{bad:?}");
}

/// The processes whose parent is `ppid`, with their `/proc/PID/cmdline`.
fn children_of(ppid: u32) -> Vec<(u32, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name in parentheses: state, ppid, ...
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        if fields[1].parse::<u32>().ok() == Some(ppid) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push((pid, cmdline));
        }
    }
    found
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`.
fn stat_field(pid: u32, n: usize) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(n - 3).unwrap().to_string()
}

#[test]
fn shipping_runs_in_a_low_priority_process_of_its_own_without_the_password_in_its_arguments() {
    let env = TestEnv::new();
    let redis = RedisServer::start_tcp_with_password(&env.path("redis"), "s3cret-pw");
    let gate = Gate::new(&env, "g");
    let mut job = env
        .cmd()
        .args(["--job-run-id", "proc", "--no-pty", "--quiet"])
        .env("DATABUILD_LOG_SHIP", redis.url())
        .args(["--", "sh", "-c"])
        .arg(format!("seq 1 1000; {}; seq 1001 2000", gate.wait()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(LIMIT, "the first lines to be shipped", || {
        let n = env.stdout_log("proc").len() as u64;
        n > 0 && shipped_to(&redis, "proc", "stdout") == n
    });
    // Not a thread of the wrapper, which would compete with the job at the
    // wrapper's priority and hold up its exit...
    let wrapper = job.id();
    for task in std::fs::read_dir(format!("/proc/{wrapper}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        assert!(
            !comm.starts_with("logwrap-ship"),
            "a shipping thread: {comm}"
        );
    }
    // ...but a child process at the lowest priority, the URL (and its
    // password) in its environment, never its arguments.
    let shippers: Vec<_> = children_of(wrapper)
        .into_iter()
        .filter(|(_, cmd)| contains(cmd, "ship\0--live\0"))
        .collect();
    assert_eq!(shippers.len(), 1, "{shippers:?}");
    let (pid, cmdline) = &shippers[0];
    assert!(!contains(cmdline, "s3cret-pw"), "the password in its argv");
    assert!(contains(cmdline, "proc"), "{cmdline:?}");
    assert_eq!(stat_field(*pid, 19), "19", "its niceness");
    gate.open();
    assert!(wait_child(&mut job, "the job").success());
    wait_shipped(&env, "proc");
    assert_same(
        &shipped(&redis.log("proc"), "stdout"),
        &env.stdout_log("proc"),
        "proc stdout",
    );
}

/// Where each open descriptor of process `pid` points (`pipe:[N]`,
/// `/dev/ptmx`, a path), by `/proc/PID/fd`.
fn fd_targets(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let (Some(fd), Ok(to)) = (
            entry.file_name().to_str().and_then(|s| s.parse().ok()),
            std::fs::read_link(entry.path()),
        ) {
            found.push((fd, to.to_string_lossy().into_owned()));
        }
    }
    found
}

#[test]
fn the_shipping_process_holds_none_of_the_wrappers_descriptors() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let gate = Gate::new(&env, "g");
    // A pipe the wrapper is given as fd 7 without close-on-exec, as a parent
    // that waits for its end of file (or a build tool's jobserver) gives one:
    // a shipping process that finishes after the wrapper must not hold it.
    // Close-on-exec here, and moved well above 7 first, so that the dup2
    // onto 7 in the wrapper's child is a real copy (without the flag) and
    // no other process of this test run holds it.
    let (given_r, low) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let high = nix::fcntl::fcntl(&low, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
    drop(low);
    // SAFETY: a descriptor fcntl just made, owned by nothing else.
    let given_w = unsafe { OwnedFd::from_raw_fd(high) };
    let raw = given_w.as_raw_fd();
    let given = std::fs::read_link(format!("/proc/self/fd/{raw}"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut cmd = env.cmd();
    cmd.args(["--job-run-id", "fds", "--quiet"])
        .env("DATABUILD_LOG_SHIP", redis.url())
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo one; echo two >&2; {}; echo three",
            gate.wait()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 only, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut job = cmd.spawn().unwrap();
    drop(given_w);
    let wrapper = job.id();
    let (mut shipper, mut job_pid) = (None, None);
    wait_until(LIMIT, "the shipping process and the job", || {
        let children = children_of(wrapper);
        shipper = children
            .iter()
            .find(|(_, c)| contains(c, "ship\0--live\0"))
            .map(|c| c.0);
        job_pid = children
            .iter()
            .find(|(_, c)| c.starts_with(b"sh\0"))
            .map(|c| c.0);
        shipper.is_some() && job_pid.is_some()
    });
    let wrapper_fds = fd_targets(wrapper);
    let job_fds = fd_targets(job_pid.unwrap());
    let held = fd_targets(shipper.unwrap());
    // Checked with the job still waiting, the verdict given once it is let
    // go (a failed assertion must not leave it waiting at the gate).
    let mut problems = Vec::new();
    if !wrapper_fds.contains(&(7, given.clone())) {
        problems.push(format!(
            "the wrapper's fd 7 is not {given}: {wrapper_fds:?}"
        ));
    }
    let terminal = |fd: u32| job_fds.iter().find(|t| t.0 == fd).map(|t| t.1.clone());
    let (out, err) = (
        terminal(1).unwrap_or_default(),
        terminal(2).unwrap_or_default(),
    );
    if !(out.starts_with("/dev/pts/") && err.starts_with("/dev/pts/") && out != err) {
        problems.push(format!(
            "the job's output is not two terminals: {job_fds:?}"
        ));
    }
    for (fd, to) in &held {
        // Its own ends of the control and answer pipes are fds 0 and 1; any
        // other pipe or socket it shares with the wrapper came from it.
        let shared = *fd > 1
            && (to.starts_with("pipe:") || to.starts_with("socket:"))
            && wrapper_fds.iter().any(|(_, t)| t == to);
        if *to == given || *to == out || *to == err || to.ends_with("ptmx") || shared {
            problems.push(format!("the shipping process holds {to} as fd {fd}"));
        }
    }
    let own = |fd: u32| held.iter().find(|t| t.0 == fd).map(|t| t.1.as_str());
    if !(own(0).is_some_and(|t| t.starts_with("pipe:"))
        && own(1).is_some_and(|t| t.starts_with("pipe:"))
        && own(2) == Some("/dev/null"))
    {
        problems.push("its 0, 1 and 2 are not the two pipes and /dev/null".into());
    }
    gate.open();
    assert!(wait_child(&mut job, "the job").success());
    assert!(
        problems.is_empty(),
        "{problems:#?}\nshipping process: {held:?}"
    );
    wait_shipped(&env, "fds");
    assert_same(
        &shipped(&redis.log("fds"), "stdout"),
        &env.stdout_log("fds"),
        "fds stdout",
    );
    // The wrapper has exited and its shipping is done: no one holds the
    // given pipe open any more.
    let given_r = std::fs::File::from(given_r);
    nix::fcntl::fcntl(
        &given_r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    wait_until(LIMIT, "the given pipe to reach its end", || {
        matches!(std::io::Read::read(&mut &given_r, &mut [0u8; 16]), Ok(0))
    });
}

#[test]
fn a_shipping_process_handed_the_rest_sends_nothing_until_the_wrapper_has_exited() {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    // Over a MiB: a burst, which the process first waits out (BURST_PACE),
    // so the hand-over below reaches it before it ships any of it.
    let out = env.run_sh("held", &["--no-pty", "--quiet"], "seq 1 300000");
    assert_ok(&out);
    // A wrapper still exiting holds its job directory locked.
    let dir = std::fs::File::open(env.job_dir("held")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut shipper = env
        .cmd()
        .args(["ship", "--live", "held"])
        .env("DATABUILD_LOG_SHIP", redis.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::BufReader::new(shipper.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said, "up\n");
    // The job's end and the hand-over, in one write as the wrapper sends them.
    let mut control = shipper.stdin.take().unwrap();
    control.write_all(b"DM").unwrap();
    // Ten times the burst's pause: nothing of the log is sent meanwhile.
    let until = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < until {
        assert!(
            redis.log("held").is_empty(),
            "shipped before the wrapper exited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The wrapper exits: all of it goes, and the outcome is recorded.
    drop(control);
    drop(dir);
    wait_shipped(&env, "held");
    assert_same(
        &shipped(&redis.log("held"), "stdout"),
        &env.stdout_log("held"),
        "held stdout",
    );
    assert!(wait_child(&mut shipper, "the shipping process").success());
}

#[test]
fn a_running_job_reaches_redis_with_its_heartbeat_never_without_it() {
    let env = TestEnv::new();
    // A server refusing SET, the heartbeat's command: a reader seeing the
    // job's metadata without its heartbeat would take it for abandoned, so
    // the metadata must not get there either.
    let acl = [
        "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-set",
    ];
    let redis = RedisServer::start_with_options(&env.path("redis"), &acl);
    let gate = Gate::new(&env, "g");
    let mut job = spawn_shipping(
        &env,
        "beat",
        &redis.url(),
        &format!("echo x; {}", gate.wait()),
    );
    wait_until(LIMIT, "the shipping process to try Redis", || {
        let state = std::fs::read(env.job_dir("beat").join("ship.json")).unwrap_or_default();
        contains(&state, "shipping to")
    });
    assert!(
        !redis.exists("logwrap:{beat}:meta") || redis.exists("logwrap:{beat}:alive"),
        "the metadata without the heartbeat"
    );
    gate.open();
    assert!(wait_child(&mut job, "the job").success());
}

/// Checks that each stdout entry of job `id` carries, in `ts`, the time its
/// last line was read (as `logs --timestamps` prints it, to the ms).
fn assert_entry_times(env: &TestEnv, redis: &RedisServer, id: &str) -> usize {
    let out = env.run(&["logs", id, "--timestamps"]);
    assert_ok(&out);
    let stamps: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_once(' ').unwrap().0.to_string())
        .collect();
    let entries: Vec<_> = redis
        .log(id)
        .into_iter()
        .filter(|e| field(e, "stream") == "stdout")
        .collect();
    for e in &entries {
        let last: usize = field(e, "line").parse::<usize>().unwrap()
            + field(e, "lines").parse::<usize>().unwrap()
            - 1;
        let ms = field(e, "ts").parse::<i64>().unwrap() / 1000;
        let want = logwrap::timefmt::parse_rfc3339_ms(&stamps[last - 1]).unwrap();
        assert_eq!(ms, want, "{id}: entry {} ending at line {last}", e.0);
    }
    entries.len()
}

#[test]
fn each_entry_carries_the_time_its_last_line_was_read() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    // Lines read at many different times: many index records.
    let script = "for i in $(seq 1 400); do echo \"line $i $(printf '%0200d' 0)\"; \
                  [ $((i % 40)) = 0 ] && sleep 0.02; done";
    // Shipped live (small entries, a record or two apart)...
    let out = env.run_sh(
        "live",
        &["--no-pty", "--quiet", "--ship", &redis.url()],
        script,
    );
    assert_ok(&out);
    wait_shipped(&env, "live");
    assert!(assert_entry_times(&env, &redis, "live") > 1);
    // ...and caught up afterwards (64 KiB entries, many records apart).
    let out = env.run_sh("later", &["--no-pty", "--quiet"], script);
    assert_ok(&out);
    assert_ok(&env.run(&["ship", "--ship", &redis.url(), "later"]));
    assert!(assert_entry_times(&env, &redis, "later") > 1);
}

#[test]
fn shipping_reuses_its_memory_from_round_to_round() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let line =
        "a line of about a hundred bytes, the length of a build log line: compiler flags, paths";
    let script = format!("yes '{line}' | head -c 100000000");
    let out = env.run_sh("faults", &["--no-pty", "--quiet"], &script);
    assert_ok(&out);
    #[allow(clippy::zombie_processes)] // reaped by the wait4 below
    let child = env
        .cmd()
        .args(["ship", "--ship", &redis.url(), "faults"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // wait4 for this child's own resource use (the harness runs others).
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child, writing into the two locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(env.meta("faults")["ship"]["complete"], true);
    // 100 MB in ~100 rounds of 1 MiB: buffers taken afresh from the kernel
    // each round fault their pages in each time (~46,000 faults); reused,
    // only the first round's do (~1,400 with the program's start).
    assert!(
        usage.ru_minflt < 3000,
        "{} page faults shipping 100 MB",
        usage.ru_minflt
    );
}

/// Redis full (`maxmemory` reached, no eviction) is to shipping what a full
/// disk is to the logs: the job runs and ends as ever, its logs are whole,
/// metadata.json says in one line what Redis refused, and once Redis has room
/// `logwrap ship` completes the job byte for byte.
#[test]
fn a_full_redis_leaves_the_job_alone_says_so_plainly_and_ship_completes_it_later() {
    let env = TestEnv::new();
    let redis = RedisServer::start_with_options(
        &env.path("redis"),
        &["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"],
    );
    let url = redis.url();
    let out = env.run_sh(
        "full",
        &["--no-pty", "--quiet", "--ship", &url],
        "seq 1 400000; echo e >&2",
    );
    assert_ok(&out);
    assert_eq!(env.stdout_log("full").len(), 2_688_895);
    let refused = |meta: &serde_json::Value| {
        meta["ship"]["complete"] == false
            && meta["ship"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("Redis is full"))
    };
    wait_until(LIMIT, "the refusal to be recorded", || {
        refused(&env.meta("full"))
    });
    let err = env.meta("full")["ship"]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("maxmemory"), "{err}");
    assert!(
        err.len() < 400,
        "one line, not one per refused command: {err}"
    );
    assert_eq!(err.matches("OOM").count(), 1, "{err}");

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut redis.conn())
        .unwrap();
    let out = env.run(&["ship", "--ship", &url, "full"]);
    assert_ok(&out);
    assert!(contains(&out.stdout, "full: shipped"), "{out:?}");
    let entries = redis.log("full");
    assert_same(
        &shipped(&entries, "stdout"),
        &env.stdout_log("full"),
        "full stdout",
    );
    assert_same(
        &shipped(&entries, "stderr"),
        &env.stderr_log("full"),
        "full stderr",
    );
    assert_eq!(env.meta("full")["ship"]["complete"], true);
}

/// `logs -f --source` outlives a Redis that goes away and comes back: it
/// says so once on stderr, asks again every second, and goes on from where
/// it was, every line once.
#[test]
fn logs_following_a_redis_source_outlive_an_outage() {
    let env = TestEnv::new();
    let mut redis = RedisServer::start_persistent(&env.path("redis"));
    let url = redis.url();
    let mut job = crate::util::serve::LiveJob::start(&env, "outage", &["--ship", &url]);
    let (out_path, err_path) = (env.path("follow.out"), env.path("follow.err"));
    let mut follower = env
        .cmd()
        .args(["logs", "-f", "--source", &url, "outage"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    job.say("before");
    wait_until(LIMIT, "the first line", || read(&out_path) == "before\n");
    redis.kill();
    let deadline = std::time::Instant::now() + LIMIT;
    while !read(&err_path).contains("trying again every second") {
        let ended = follower.try_wait().unwrap();
        assert!(
            ended.is_none() && std::time::Instant::now() < deadline,
            "the follower did not say it waits ({ended:?}): {}",
            read(&err_path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    job.say("during");
    redis.start_again();
    job.say("after");
    // Shipping has caught up before the job ends (a job ending while its
    // shipping process still backs off is left to a catch-up, as documented).
    wait_until(LIMIT, "the lines after the outage", || {
        read(&out_path) == "before\nduring\nafter\n"
    });
    assert!(job.finish().success());
    let status = follower.wait().unwrap();
    let err = read(&err_path);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(read(&out_path), "before\nduring\nafter\n", "{err}");
    assert_eq!(err.matches("trying again").count(), 1, "{err}");
    assert!(!err.contains("deleted") && !err.contains("no job"), "{err}");
}

/// A Redis that loses a running job's keys with the connection still up
/// (FLUSHALL, a key deleted or evicted) gets the whole log again, as one that
/// restarted without its data does, not a log with a hole at its start.
#[test]
fn a_flushall_under_a_running_job_gets_the_whole_log_again() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let mut job = crate::util::serve::LiveJob::start(&env, "flushed", &["--ship", &redis.url()]);
    job.say("one");
    job.say("two");
    wait_until(LIMIT, "the first lines in Redis", || {
        redis.exists("logwrap:{flushed}:stdout")
            && shipped(&redis.log("flushed"), "stdout") == b"one\ntwo\n"
    });
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.conn()).unwrap();
    job.say("three");
    assert!(job.finish().success());
    wait_shipped(&env, "flushed");
    let entries = redis.log("flushed");
    assert_same(
        &shipped(&entries, "stdout"),
        &env.stdout_log("flushed"),
        "flushed stdout",
    );
    assert_eq!(field(entries.last().unwrap(), "status"), "succeeded");
    assert!(redis.meta_field("flushed", "json").is_some());
}
