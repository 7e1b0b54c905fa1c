//! A job owns its directory and can plant anything there (issue 8): links to
//! secrets, FIFOs, devices, directories, huge files. Every reader — `logs`,
//! `ls`, `show`, `gc`, `serve` and `--listen` — refuses them per job with a
//! clear error and never follows, blocks or balloons; and liveness cannot be
//! faked away by deleting the `lock` file.

use crate::util::serve::{
    datas, get, listening_job, parse_response, port_of, LiveJob, Serve, SseConn, SseEvent,
    SseParser, LIMIT,
};
use crate::util::*;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A file outside the root that a planted link points at; its text must never
/// come out of any reader.
const SECRET: &str = "TOP-SECRET-CONTENT";

/// Runs `cmd` to the end, failing the test (not hanging it) if it blocks.
fn run_bounded(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill on the child this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} blocked for {LIMIT:?}");
        }
    }
}

fn logwrap(env: &TestEnv, args: &[&str]) -> Output {
    let mut c = env.cmd();
    c.args(args);
    run_bounded(c)
}

/// The kinds of file a job can plant in place of one of its files.
#[derive(Debug, Clone, Copy)]
enum Plant {
    LinkToSecret,
    LinkToDevZero,
    Fifo,
    Directory,
    /// A Unix socket: it cannot even be opened (ENXIO).
    Socket,
}

const PLANTS: [Plant; 5] = [
    Plant::LinkToSecret,
    Plant::LinkToDevZero,
    Plant::Fifo,
    Plant::Directory,
    Plant::Socket,
];

fn plant(env: &TestEnv, path: &Path, kind: Plant) {
    let secret = env.path("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let _ = std::fs::remove_file(path);
    match kind {
        Plant::LinkToSecret => std::os::unix::fs::symlink(&secret, path).unwrap(),
        Plant::LinkToDevZero => std::os::unix::fs::symlink("/dev/zero", path).unwrap(),
        Plant::Fifo => {
            nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
        }
        Plant::Directory => std::fs::create_dir(path).unwrap(),
        // The socket file stays once its listener is closed.
        Plant::Socket => drop(std::os::unix::net::UnixListener::bind(path).unwrap()),
    }
}

fn finished_job(env: &TestEnv, id: &str) {
    let o = env.run_sh(id, &["--no-pty", "-q"], "echo out; echo err >&2");
    assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
}

fn assert_refused(o: &Output, what: &str) {
    let err = stderr_text(o);
    assert_eq!(o.status.code(), Some(1), "{what}: {err}");
    assert!(
        err.contains("logwrap reads only regular files"),
        "{what}: {err}"
    );
    assert!(!contains(&o.stdout, SECRET), "{what} leaked the secret");
}

#[test]
fn logs_refuses_planted_logs_and_metadata_and_never_blocks() {
    let env = TestEnv::new();
    for file in ["stdout.log", "metadata.json"] {
        for kind in PLANTS {
            let id = format!("j-{}-{kind:?}", file.replace('.', "-"));
            finished_job(&env, &id);
            plant(&env, &env.job_dir(&id).join(file), kind);
            for args in [vec!["logs", &id], vec!["logs", "--all", &id]] {
                let o = logwrap(&env, &args);
                assert_refused(&o, &format!("{args:?} with {file} as {kind:?}"));
            }
        }
    }
}

#[test]
fn a_planted_index_is_ignored_and_the_log_is_scanned() {
    let env = TestEnv::new();
    for kind in PLANTS {
        let id = format!("idx-{kind:?}");
        finished_job(&env, &id);
        plant(&env, &env.job_dir(&id).join("stdout.idx"), kind);
        let o = logwrap(&env, &["logs", "--tail", "1", &id]);
        assert_eq!(o.status.code(), Some(0), "{kind:?}: {}", stderr_text(&o));
        assert_eq!(o.stdout, b"out\n", "{kind:?}");
        assert!(stderr_text(&o).contains("index"), "{kind:?}");
    }
}

#[test]
fn ls_shows_a_job_with_planted_metadata_as_damaged_and_show_refuses_it() {
    let env = TestEnv::new();
    finished_job(&env, "good");
    for kind in PLANTS {
        let id = format!("bad-{kind:?}");
        finished_job(&env, &id);
        plant(&env, &env.job_dir(&id).join("metadata.json"), kind);
        let o = logwrap(&env, &["show", &id]);
        assert_refused(&o, &format!("show with metadata as {kind:?}"));
    }
    let o = logwrap(&env, &["ls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!table.contains(SECRET));
    for kind in PLANTS {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("bad-{kind:?} ")))
            .unwrap_or_else(|| panic!("no row for {kind:?} in\n{table}"));
        assert!(row.contains(" damaged "), "{row}");
    }
    assert!(table
        .lines()
        .any(|l| l.starts_with("good ") && l.contains("succeeded")));
    let o = logwrap(&env, &["ls", "--json", "--status", "damaged"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), PLANTS.len(), "{v}");
    assert!(
        v[0]["error"].as_str().unwrap().contains("metadata.json"),
        "{v}"
    );
}

#[test]
fn an_oversized_metadata_file_is_damaged_not_read_into_memory() {
    let env = TestEnv::new();
    finished_job(&env, "huge");
    // Sparse: 1 GiB of zeros on no disk at all.
    let f = std::fs::File::create(env.job_dir("huge").join("metadata.json")).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    for args in [&["show", "huge"][..], &["ls"], &["gc", "--dry-run"]] {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "maxrss=%M", BIN])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABUILD_LOG_DIR", &env.root)
            .stdin(Stdio::null());
        let o = run_bounded(c);
        let err = stderr_text(&o);
        let rss: u64 = err
            .lines()
            .find_map(|l| l.strip_prefix("maxrss="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{args:?}: {err}"));
        assert!(rss < 32 * 1024, "{args:?} peaked at {rss} KiB");
        if args[0] == "show" {
            assert!(err.contains("over the"), "{err}");
        }
    }
    let server = Serve::start(&env, &[]);
    let r = get(server.port, "/api/job_runs/huge", &[]);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("over the"), "{}", r.text());
    assert_eq!(get(server.port, "/api/job_runs", &[]).status, 200);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let hwm: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(hwm < 32 * 1024, "serve peaked at {hwm} KiB");
}

#[test]
fn serve_answers_409_for_planted_files_and_keeps_serving_others() {
    let env = TestEnv::new();
    finished_job(&env, "good");
    finished_job(&env, "fifo");
    finished_job(&env, "link");
    finished_job(&env, "sock");
    plant(&env, &env.job_dir("fifo").join("stdout.log"), Plant::Fifo);
    for file in ["stdout.log", "metadata.json"] {
        plant(&env, &env.job_dir("sock").join(file), Plant::Socket);
    }
    plant(
        &env,
        &env.job_dir("fifo").join("metadata.json"),
        Plant::Fifo,
    );
    plant(
        &env,
        &env.job_dir("link").join("stdout.log"),
        Plant::LinkToSecret,
    );
    let server = Serve::start(&env, &[]);
    for id in ["fifo", "link", "sock"] {
        for path in [
            format!("/api/job_runs/{id}/logs/stdout/raw"),
            format!("/api/job_runs/{id}/logs/stdout"),
            format!("/api/job_runs/{id}/log-tail?start=0"),
            format!("/api/job_runs/{id}/logs/stdout/progressiveText?start=0"),
        ] {
            let r = get(server.port, &path, &[]);
            assert!(!contains(&r.body, SECRET), "{path} leaked the secret");
            assert_eq!(r.status, 409, "{path}: {}", r.text());
            let reason = r.json()["error"].as_str().unwrap().to_string();
            assert!(
                reason.contains("stdout.log") || reason.contains("metadata.json"),
                "{reason}"
            );
        }
    }
    let r = get(server.port, "/api/job_runs/fifo", &[]);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("FIFO"),
        "{}",
        r.text()
    );
    let r = get(server.port, "/api/job_runs/sock", &[]);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("socket"),
        "{}",
        r.text()
    );
    assert_eq!(get(server.port, "/healthz", &[]).status, 200);
    let r = get(server.port, "/api/job_runs/good/logs/stdout/raw", &[]);
    assert_eq!((r.status, r.body), (200, b"out\n".to_vec()));
}

#[test]
fn listen_refuses_a_log_the_job_replaced_with_a_link() {
    let env = TestEnv::new();
    let (job, url) = listening_job(&env, "self", &[]);
    plant(
        &env,
        &env.job_dir("self").join("stdout.log"),
        Plant::LinkToSecret,
    );
    let port = port_of(&url);
    let r = get(port, "/api/job_runs/self/logs/stdout/raw", &[]);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(!contains(&r.body, SECRET));
    assert_eq!(get(port, "/healthz", &[]).status, 200);
    job.finish();
}

// ---- liveness ------------------------------------------------------------------

use crate::util::job::{spawn_job, wait_child, Follower, Gate};

fn status_of(env: &TestEnv, id: &str) -> String {
    let o = logwrap(env, &["show", "--json", id]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr_text(&o)));
    v["status"].as_str().unwrap().to_string()
}

#[test]
fn deleting_the_lock_file_neither_abandons_nor_exposes_a_running_job() {
    let env = TestEnv::new();
    let gate = Gate::new(&env, "gate");
    let script = format!(
        "echo started; rm -f \"$DATABUILD_JOB_LOG_DIR/lock\"; echo unlocked; {}",
        gate.wait()
    );
    let mut job = spawn_job(&env, "live", &script);
    wait_until(LIMIT, "the job to delete its lock", || {
        contains(&env.stdout_log("live"), "unlocked")
    });
    assert!(!env.job_dir("live").join("lock").exists());
    assert_eq!(status_of(&env, "live"), "running");
    let o = logwrap(&env, &["gc", "--ttl-days", "0", "--max-size", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
    assert!(
        env.job_dir("live").join("stdout.log").exists(),
        "gc deleted a running job"
    );
    gate.open();
    assert_eq!(wait_child(&mut job, "the job").code(), Some(0));
    assert_eq!(status_of(&env, "live"), "succeeded");
}

#[test]
fn gc_rechecks_the_writer_before_deleting_a_job_that_claims_to_be_done() {
    let env = TestEnv::new();
    let gate = Gate::new(&env, "gate");
    // The job rewrites its own metadata to look finished long ago, once the
    // wrapper has written it with the job's pid (else that write could undo
    // the fake).
    let script = format!(
        "m=\"$DATABUILD_JOB_LOG_DIR/metadata.json\"; \
         until grep -q '\"child_pid\": [0-9]' \"$m\"; do sleep 0.01; done; \
         sed -e 's/\"status\": \"running\"/\"status\": \"succeeded\"/' \
             -e 's/\"ended_at\": null/\"ended_at\": \"2000-01-01T00:00:00.000Z\"/' \
             -e 's/\"started_at\": \"[^\"]*\"/\"started_at\": \"2000-01-01T00:00:00.000Z\"/' \
             \"$m\" > \"$m.x\" && mv \"$m.x\" \"$m\"; echo faked; {}",
        gate.wait()
    );
    let mut job = spawn_job(&env, "liar", &script);
    wait_until(LIMIT, "the job to fake its metadata", || {
        contains(&env.stdout_log("liar"), "faked")
    });
    assert_eq!(status_of(&env, "liar"), "succeeded", "the fake took");
    let o = logwrap(&env, &["gc", "--ttl-days", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
    assert!(
        env.job_dir("liar").join("stdout.log").exists(),
        "gc deleted a running job"
    );
    gate.open();
    wait_child(&mut job, "the job");
}

#[test]
fn removing_a_followed_job_ends_follow_with_exit_1_and_a_clear_message() {
    let env = TestEnv::new();
    let gate = Gate::new(&env, "gate");
    let mut job = spawn_job(&env, "gone", &format!("echo before; {}", gate.wait()));
    wait_until(LIMIT, "the job's output", || {
        env.stdout_log("gone") == b"before\n"
    });
    let mut f = Follower::start(&env, &["-f", "gone"]);
    f.wait_for("before\n");
    std::fs::remove_dir_all(env.job_dir("gone")).unwrap();
    let (status, out, err) = f.finish();
    assert_eq!((status, out), (1, b"before\n".to_vec()), "{err}");
    assert!(err.contains("deleted"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    gate.open();
    wait_child(&mut job, "the job");
}

// ---- sparse logs ---------------------------------------------------------------

/// Size of the hole the job makes in its own log: reading it as zeros takes
/// minutes, so a reader that does is caught by any bound below.
const HOLE: &str = "50G";

#[test]
fn a_sparse_log_costs_only_its_data_and_never_freezes_the_server() {
    let env = TestEnv::new();
    // The hole goes after the first line once the wrapper has written it,
    // so the last line runs across the hole.
    let gate = Gate::new(&env, "gate");
    let script = format!(
        "echo first; {}; truncate -s {HOLE} \"$DATABUILD_JOB_LOG_DIR/stdout.log\"; echo last",
        gate.wait()
    );
    let mut job = spawn_job(&env, "big", &script);
    wait_until(LIMIT, "the first line", || {
        env.stdout_log("big") == b"first\n"
    });
    gate.open();
    assert_eq!(wait_child(&mut job, "the job").code(), Some(0));
    let bound = std::time::Duration::from_secs(10);
    let server = Serve::start(&env, &[]);
    let port = server.port;
    // The request is sent before any other, so the server takes it first.
    let mut big = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    big.set_read_timeout(Some(LIMIT)).unwrap();
    big.write_all(
        b"GET /api/job_runs/big/logs/stdout?lines=1 HTTP/1.1\r\nHost: localhost\r\n\
          Connection: close\r\n\r\n",
    )
    .unwrap();
    let big = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = big.read_to_end(&mut all);
        parse_response(&all)
    });
    // The server has one event loop: it must go on answering everyone while
    // (or after) it serves the sparse log.
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = get(port, "/healthz", &[]);
        let took = started.elapsed();
        assert_eq!(r.status, 200);
        assert!(took < bound, "/healthz took {took:?}");
    }
    let r = big.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Line 2 runs across the hole: its head is sent, cut like any long line.
    assert!(r.text().contains("id: 2\n"), "{}", r.text());
    assert!(r.text().contains("more bytes not shown"), "{}", r.text());
    for args in [
        &["logs", "--tail", "1", "big"][..],
        &["logs", "--all", "--tail", "1", "big"],
    ] {
        let started = std::time::Instant::now();
        let o = logwrap(&env, args);
        let took = started.elapsed();
        assert!(took < bound, "{args:?} took {took:?}");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr_text(&o));
        // The last line runs across the hole: its data is printed, and the
        // hole is left out with a word on stderr.
        assert!(o.stdout.ends_with(b"last\n"), "{args:?}");
        assert!(
            o.stdout.len() < 1 << 20,
            "{args:?}: {} bytes",
            o.stdout.len()
        );
        assert!(stderr_text(&o).contains("hole"), "{}", stderr_text(&o));
    }
    // A line is searched in its first MiB: the rest of the hole is skipped.
    let started = std::time::Instant::now();
    let o = logwrap(&env, &["grep", "first", "big"]);
    let took = started.elapsed();
    assert!(took < bound, "grep took {took:?}");
    assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "big:1:first\n");
}

#[test]
fn grep_all_warns_about_a_damaged_job_and_searches_the_others() {
    let env = TestEnv::new();
    // Newest first: "c", then the damaged one, then "a". Its stdout is
    // searched; its stderr, a link, is refused.
    for id in ["a", "bad", "c"] {
        let o = env.run_sh(id, &["--no-pty", "-q"], "echo needle; echo needle >&2");
        assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
    }
    plant(
        &env,
        &env.job_dir("bad").join("stderr.log"),
        Plant::LinkToSecret,
    );
    let o = logwrap(&env, &["grep", "--all", "needle"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr_text(&o));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        out, "c:1:needle\nc:stderr:1:needle\nbad:1:needle\na:1:needle\na:stderr:1:needle\n",
        "{err}"
    );
    assert!(!out.contains(SECRET) && !err.contains(SECRET));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("job bad not searched"), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    // Nothing matched elsewhere: no match, with the same warning.
    let o = logwrap(&env, &["grep", "--all", "-c", "absent"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "c:0\na:0\n",
        "bad has no count"
    );
    assert!(stderr_text(&o).contains("job bad not searched"));
}

#[test]
fn follow_says_when_the_job_empties_its_log_and_goes_on_from_its_start() {
    let env = TestEnv::new();
    for (id, args, want) in [
        ("raw", &["-f"][..], "one\ntwo\nthree\n"),
        (
            "prefix",
            &["-f", "--prefix"],
            "stdout: one\nstdout: two\nstdout: three\n",
        ),
        ("all", &["-f", "--all"], "one\ntwo\nthree\n"),
        // `--since 2` counted lines of the log before it was emptied.
        (
            "since",
            &["-f", "--prefix", "--since", "2"],
            "stdout: two\nstdout: three\n",
        ),
    ] {
        let gate = Gate::new(&env, &format!("gate-{id}"));
        let script = format!(
            "echo one; echo two; {}; : > \"$DATABUILD_JOB_LOG_DIR/stdout.log\"; echo three",
            gate.wait()
        );
        let mut job = spawn_job(&env, id, &script);
        wait_until(LIMIT, "the first lines", || {
            env.stdout_log(id) == b"one\ntwo\n"
        });
        let mut f = Follower::start(&env, &[args, &[id]].concat());
        f.wait_for("two\n");
        gate.open();
        assert_eq!(wait_child(&mut job, "the job").code(), Some(0));
        let (status, out, err) = f.finish();
        assert_eq!(
            (status, String::from_utf8_lossy(&out).as_ref()),
            (0, want),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("log was truncated"), "{args:?}: {err}");
    }
}

#[test]
fn the_job_list_api_lists_damaged_jobs_as_ls_does() {
    let env = TestEnv::new();
    finished_job(&env, "good-1");
    for (id, kind) in [
        ("bad-fifo", Plant::Fifo),
        ("bad-dir", Plant::Directory),
        ("bad-sock", Plant::Socket),
    ] {
        finished_job(&env, id);
        plant(&env, &env.job_dir(id).join("metadata.json"), kind);
    }
    finished_job(&env, "good-2");
    let o = logwrap(&env, &["ls", "--json"]);
    let ls: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_run_id"].as_str().unwrap().to_string())
            .collect()
    };
    let server = Serve::start(&env, &[]);
    let r = get(server.port, "/api/job_runs", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    assert_eq!(ids(&list), ids(&ls), "the same jobs in the same order");
    assert_eq!(r.header("X-Total-Count").as_deref(), Some("5"));
    for job in list.as_array().unwrap() {
        let id = job["job_run_id"].as_str().unwrap();
        if id.starts_with("bad-") {
            assert_eq!(job["status"], "damaged", "{job}");
            let why = job["error"].as_str().unwrap();
            assert!(why.starts_with("metadata.json is a"), "{job}");
            assert!(!why.contains(env.root.to_str().unwrap()), "{job}");
        } else {
            assert_eq!(job["status"], "succeeded", "{job}");
        }
    }
    let r = get(server.port, "/api/job_runs?status=damaged", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut damaged = ids(&r.json());
    damaged.sort();
    assert_eq!(damaged, ["bad-dir", "bad-fifo", "bad-sock"]);
    let r = get(server.port, "/api/job_runs?q=fifo", &[]);
    assert_eq!(ids(&r.json()), ["bad-fifo"]);
    // A page of two, past the first: the order holds the damaged jobs too.
    let r = get(server.port, "/api/job_runs?limit=2&offset=2", &[]);
    assert_eq!(ids(&r.json()), ids(&ls)[2..4]);
}

#[test]
fn a_job_cannot_make_itself_the_most_recent() {
    let env = TestEnv::new();
    let job = |id: &str| {
        let o = env.run_sh(id, &["--no-pty", "-q"], &format!("echo {id}-out"));
        assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
    };
    // One job claims to have started in 9999 (as a process it left behind
    // can write once its wrapper is gone), another damaged itself and
    // touched its directory into 2099; both before the real last job.
    job("liar");
    let path = env.job_dir("liar").join("metadata.json");
    let mut meta = env.meta("liar");
    meta["started_at"] = "9999-01-01T00:00:00.000Z".into();
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    job("broken");
    plant(
        &env,
        &env.job_dir("broken").join("metadata.json"),
        Plant::Fifo,
    );
    let mut touch = Command::new("touch");
    touch.args(["-d", "2099-01-01"]).arg(env.job_dir("broken"));
    assert!(run_bounded(touch).status.success());
    job("real");
    for args in [&["logs"][..], &["logs", "-f"]] {
        let o = logwrap(&env, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr_text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "real-out\n", "{args:?}");
    }
    let o = logwrap(&env, &["grep", "out"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "real:1:real-out\n");
    let o = logwrap(&env, &["ls", "--ids"]);
    let ids = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(ids.lines().next(), Some("real"), "{ids}");
    let server = Serve::start(&env, &[]);
    let list = get(server.port, "/api/job_runs", &[]).json();
    assert_eq!(list[0]["job_run_id"], "real", "{list}");
    // With only damaged jobs left there is no most recent to read, and the
    // error says why.
    for id in ["liar", "real"] {
        std::fs::remove_dir_all(env.job_dir(id)).unwrap();
    }
    let o = logwrap(&env, &["logs"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_text(&o));
    assert!(
        stderr_text(&o).contains("broken, is damaged"),
        "{}",
        stderr_text(&o)
    );
}

#[test]
fn an_index_with_a_record_moved_in_its_middle_is_not_trusted() {
    let env = TestEnv::new();
    let o = env.run_sh(
        "liar",
        &["--no-pty", "-q"],
        "printf '1\\n2\\n3\\n4\\n5\\n6\\n7\\n8\\n'",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
    // Four chunks of two lines, plausible first and last records, and the
    // third chunk's start (the second record's end) moved back a line.
    let mut idx = env.file("liar", "stdout.idx")[..16].to_vec();
    for (seq, end, lines_end) in [(0u64, 4u64, 2u64), (1, 6, 4), (2, 12, 6), (3, 16, 8)] {
        for field in [seq, 1_000_000 + seq, end, lines_end] {
            idx.extend_from_slice(&field.to_le_bytes());
        }
    }
    std::fs::write(env.job_dir("liar").join("stdout.idx"), idx).unwrap();
    for (args, want) in [
        (&["logs", "--since", "6", "liar"][..], "6\n7\n8\n"),
        (&["logs", "--tail", "2", "liar"], "7\n8\n"),
        (
            &["logs", "--tail", "2", "--prefix", "liar"],
            "stdout: 7\nstdout: 8\n",
        ),
    ] {
        let o = logwrap(&env, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr_text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{args:?}");
        assert!(
            stderr_text(&o).contains("index of job liar is missing or damaged"),
            "{args:?}: {}",
            stderr_text(&o)
        );
    }
}

/// [`ECHO_JOB`] that also empties its stdout log on the line `T`.
const TRUNCATING_JOB: &str = r#"while IFS= read -r l; do case "$l" in T) : > "$DATABUILD_JOB_LOG_DIR/stdout.log";; e:*) printf '%s\n' "${l#e:}" >&2;; *) printf '%s\n' "$l";; esac; done"#;

/// The log events and truncation notices of `evs` as `(event, id, data or stream)`.
fn told(evs: &[SseEvent]) -> Vec<(String, String, String)> {
    evs.iter()
        .filter(|e| e.event == "log" || e.event == "truncated")
        .map(|e| {
            let what = if e.event == "truncated" {
                let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                assert!(
                    v["message"].as_str().unwrap().contains("was truncated"),
                    "{v}"
                );
                v["stream"].as_str().unwrap().to_string()
            } else {
                e.data.clone()
            };
            (e.event.clone(), e.id.clone(), what)
        })
        .collect()
}

fn ev(event: &str, id: &str, what: &str) -> (String, String, String) {
    (event.into(), id.into(), what.into())
}

#[test]
fn sse_followers_are_told_when_the_job_empties_its_log_and_get_every_new_line() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start_script(&env, "trunc", &[], TRUNCATING_JOB);
    let path = |which: &str| format!("/api/job_runs/trunc/logs/{which}?follow=true");
    // Two followers of each kind: the second of a kind is served from the
    // job's shared events, the first may be too.
    let mut out = [
        SseConn::open(srv.port, &path("stdout"), &[]),
        SseConn::open(srv.port, &path("stdout"), &[]),
    ];
    let mut both = [
        SseConn::open(srv.port, &path("combined"), &[]),
        SseConn::open(srv.port, &path("combined"), &[]),
    ];
    let mut slow = SseConn::open(srv.port, &path("combined"), &[]);
    let mut seen_out: [Vec<SseEvent>; 2] = Default::default();
    let mut seen_both: [Vec<SseEvent>; 2] = Default::default();
    // Says `line` and reads the events it brings: `n_out` on stdout, `n_both`
    // on combined.
    let mut step = |job: &mut LiveJob, line: &str, n_out: usize, n_both: usize| {
        job.say(line);
        for (conns, seen, n) in [
            (&mut out, &mut seen_out, n_out),
            (&mut both, &mut seen_both, n_both),
        ] {
            for (c, seen) in conns.iter_mut().zip(seen.iter_mut()) {
                for _ in 0..n {
                    seen.push(c.next().unwrap());
                }
            }
        }
    };
    step(&mut job, "one", 1, 1);
    step(&mut job, "two", 1, 1);
    step(&mut job, "e:err", 0, 1);
    step(&mut job, "T", 0, 0);
    wait_until(LIMIT, "the log to be emptied", || {
        env.stdout_log("trunc").is_empty()
    });
    step(&mut job, "three", 2, 2);
    step(&mut job, "four", 1, 1);
    assert!(job.finish().success());
    let want_out = vec![
        ev("log", "1", "one"),
        ev("log", "2", "two"),
        ev("truncated", "0", "stdout"),
        ev("log", "1", "three"),
        ev("log", "2", "four"),
    ];
    let want_both = vec![
        ev("log", "1.0", "one"),
        ev("log", "2.0", "two"),
        ev("log", "2.1", "err"),
        ev("truncated", "0.1", "stdout"),
        ev("log", "1.1", "three"),
        ev("log", "2.1", "four"),
    ];
    for seen in &seen_out {
        assert_eq!(told(seen), want_out);
    }
    for seen in &seen_both {
        assert_eq!(told(seen), want_both);
    }
    for c in out.iter_mut().chain(&mut both) {
        assert_eq!(c.next().unwrap().event, "complete");
    }
    // One that read nothing until the end gets the same.
    let rest = slow.rest();
    assert_eq!(rest.last().unwrap().event, "complete");
    assert_eq!(told(&rest), want_both);
    // A new reader sees the log as it is now, numbered from 1.
    let now = get(srv.port, "/api/job_runs/trunc/logs/stdout", &[]).text();
    assert_eq!(
        datas(&SseParser::default().feed(now.as_bytes())),
        ["three", "four"]
    );
}

#[test]
fn logs_following_a_server_say_when_the_job_empties_its_log() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let url = format!("http://127.0.0.1:{}", srv.port);
    let mut job = LiveJob::start_script(&env, "rtrunc", &[], TRUNCATING_JOB);
    let mut f = Follower::start(&env, &["-f", "--prefix", "--server", &url, "rtrunc"]);
    job.say("one");
    job.say("two");
    f.wait_for("stdout: two\n");
    job.say("T");
    wait_until(LIMIT, "the log to be emptied", || {
        env.stdout_log("rtrunc").is_empty()
    });
    job.say("three");
    assert!(job.finish().success());
    let (status, out, err) = f.finish();
    assert_eq!(
        (status, String::from_utf8_lossy(&out).as_ref()),
        (0, "stdout: one\nstdout: two\nstdout: three\n"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("log was truncated"), "{err}");
}

/// A marker payload nested close to JSON parsers' limits is refused into
/// `marker_errors`: kept, it made the job's own metadata.json unreadable,
/// so every reader (and gc) took the job for a damaged one.
#[test]
fn a_marker_nested_too_deep_is_an_error_and_the_job_stays_readable() {
    let env = TestEnv::new();
    let n = 125;
    let script = format!(
        "echo 'DATABUILD_MISSING_DEPS_JSON:{}{}'; echo done",
        "[".repeat(n),
        "]".repeat(n)
    );
    assert_ok(&env.run_sh("deepjson", &["--no-pty", "-q"], &script));
    let o = logwrap(&env, &["show", "deepjson"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_text(&o));
    let m = env.meta("deepjson");
    assert_eq!(m["status"], "succeeded");
    assert_eq!(m["missing_deps"], serde_json::json!([]));
    let why = m["marker_errors"][0]["error"].as_str().unwrap();
    assert!(why.contains("deeper than 64 levels"), "{m}");
    let o = logwrap(&env, &["ls"]);
    assert!(!stderr_text(&o).contains("damaged"), "{}", stderr_text(&o));
}

/// gc deletes a finished job under a follower that has not read all of it,
/// and a new job takes the id: the old follower ends without a line of the
/// new job (its own job is gone), and a new follower gets the new job.
#[test]
fn an_sse_follower_of_a_deleted_job_never_gets_the_lines_of_a_new_job_with_its_id() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    assert_ok(&env.run_sh("reuse", &["--no-pty", "-q"], "seq -f 'old%g' 1 200000"));
    // Reads nothing yet: the server stops at what the socket holds.
    let mut old = SseConn::open(
        srv.port,
        "/api/job_runs/reuse/logs/combined?follow=true",
        &[],
    );
    assert_eq!(old.next().unwrap().data, "old1");
    // The server is stopped while the job is deleted and the new one starts,
    // so it sees both at once (as a busy server may): the id's state then
    // reads as the new job's.
    let pid = srv.pid() as i32;
    // SAFETY: signals to the server this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let o = env.run(&["gc", "--ttl-days", "0"]);
    let mut job = LiveJob::start(&env, "reuse", &[]);
    job.say("new1");
    wait_until(LIMIT, "the new job's line", || {
        env.stdout_log("reuse") == b"new1\n"
    });
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(stdout_text_of(&o).starts_with("deleted 1 job"), "{o:?}");
    let mut new = SseConn::open(
        srv.port,
        "/api/job_runs/reuse/logs/combined?follow=true",
        &[],
    );
    assert_eq!(new.next().unwrap().data, "new1");
    let rest = old.rest();
    assert!(!rest.is_empty());
    assert!(
        rest.iter()
            .all(|e| e.event != "log" || e.data.starts_with("old")),
        "a line of the new job reached a follower of the old one"
    );
    assert!(rest.iter().all(|e| e.event != "complete"));
    job.say("new2");
    assert_eq!(new.next().unwrap().data, "new2");
    assert!(job.finish().success());
    assert_eq!(new.next().unwrap().event, "complete");
}

fn stdout_text_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
