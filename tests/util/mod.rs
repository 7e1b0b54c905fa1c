//! Test helpers: a `TestEnv` with its own temp dir, log root and clean
//! environment for driving the real binary, and `wait_until` for polling a
//! condition with a deadline instead of sleeping.

#![allow(dead_code)] // each test module uses its own subset

pub mod job;
pub mod redis_server;
pub mod serve;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_logwrap");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temp directory (removed on drop) holding a log root at `root`.
pub struct TestEnv {
    pub dir: PathBuf,
    pub root: PathBuf,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("logwrap-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("logs");
        TestEnv { dir, root }
    }

    /// `logwrap` with a clean environment: PATH, HOME in the temp dir, the log
    /// root in `DATABUILD_LOG_DIR`, the temp dir as cwd, stdin from /dev/null.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("DATABUILD_LOG_DIR", &self.root)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        c
    }

    /// Runs `logwrap <args>` to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs `logwrap <args>` to the end, killing it (by its pid) and failing
    /// the test if it takes longer than `limit`: a reader that hangs fails
    /// instead of hanging the test.
    pub fn run_within(&self, limit: Duration, args: &[&str]) -> Output {
        use std::io::Read;
        let mut child = self
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("logwrap {args:?} still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }

    /// Runs a job under `id` with `extra` options and `sh -c script`.
    pub fn run_sh(&self, id: &str, extra: &[&str], script: &str) -> Output {
        let mut args = vec!["--job-run-id", id];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        self.run(&args)
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.root.join("job_runs").join(id)
    }

    pub fn file(&self, id: &str, name: &str) -> Vec<u8> {
        std::fs::read(self.job_dir(id).join(name)).unwrap_or_default()
    }

    pub fn stdout_log(&self, id: &str) -> Vec<u8> {
        self.file(id, "stdout.log")
    }

    pub fn stderr_log(&self, id: &str) -> Vec<u8> {
        self.file(id, "stderr.log")
    }

    /// metadata.json parsed (panics if missing or torn).
    pub fn meta(&self, id: &str) -> serde_json::Value {
        let path = self.job_dir(id).join("metadata.json");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A path inside the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 5 ms until it holds; panics naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True if `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    memchr::memmem::find(haystack, needle.as_bytes()).is_some()
}

/// stderr of an output as text.
pub fn stderr_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the command exited 0, showing its stderr if not (fd's `assert_ok`).
#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "expected success, got {:?}; stderr: {}",
        o.status,
        stderr_text(o)
    );
}

/// Asserts the command exited with `code`, showing its stderr if not.
#[track_caller]
pub fn assert_fails_with(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}; stderr: {}",
        stderr_text(o)
    );
}

/// Resident set size of a process, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Has `cmd` start with `resource` (`libc::RLIMIT_*`) limited to `soft` and
/// `hard`: a file size limit, a descriptor limit.
pub fn with_rlimit(cmd: &mut Command, resource: libc::__rlimit_resource_t, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit between fork and exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            libc::setrlimit(resource, &lim);
            Ok(())
        });
    }
}
