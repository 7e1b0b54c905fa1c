//! Helpers for tests of jobs in the background: spawning one, waiting for it
//! with a deadline, a named-pipe gate the job waits at, and a `logs -f`
//! follower whose output is collected as it arrives.

use super::*;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound for anything these helpers wait on.
const LIMIT: Duration = Duration::from_secs(20);

/// A job in the background (pipe mode, quiet).
pub fn spawn_job(env: &TestEnv, id: &str, script: &str) -> Child {
    env.cmd()
        .args([
            "--job-run-id",
            id,
            "--no-pty",
            "--quiet",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub fn wait_child(child: &mut Child, what: &str) -> ExitStatus {
    let mut status = None;
    wait_until(LIMIT, what, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

/// A named pipe the job waits at ([`Gate::wait`]), so the test decides when the
/// job goes on, without sleeping.
pub struct Gate(PathBuf);

impl Gate {
    pub fn new(env: &TestEnv, name: &str) -> Gate {
        let path = env.path(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        Gate(path)
    }

    /// Shell code that waits until the test opens the gate. A read that ends
    /// empty is retried: our writer (or a copy a concurrent fork briefly holds)
    /// may still be open when the job comes back to the gate, which then opens at
    /// once and reads EOF once that writer closes. Once the gate is gone (the
    /// test ended, or failed, and removed its directory) the job exits rather
    /// than spin on a failing open for ever.
    pub fn wait(&self) -> String {
        let gate = self.0.to_str().unwrap();
        format!("until read x < {gate}; do [ -p {gate} ] || exit 1; done")
    }

    /// Lets the job past one [`Gate::wait`], once it is waiting there.
    pub fn open(&self) {
        let mut f = None;
        wait_until(LIMIT, "the job to wait at the gate", || {
            f = self.writer().ok();
            f.is_some()
        });
        f.unwrap().write_all(b"go\n").unwrap();
    }

    /// The gate's write end, opened without waiting: it fails unless a job
    /// is at the gate (has its read end open).
    fn writer(&self) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0)
    }
}

impl Drop for Gate {
    /// A job still waiting at the gate (its test failed before opening it)
    /// is let go: the gate is removed while a writer holds it open, so the
    /// job's read ends empty and its loop finds no gate to wait at. (Left
    /// alone, it would wait for ever: an open of a FIFO blocks even once
    /// the test's directory is gone.)
    fn drop(&mut self) {
        let writer = self.writer();
        let _ = std::fs::remove_file(&self.0);
        drop(writer);
    }
}

/// A `logwrap logs -f ...` running in the background, its output collected as
/// it arrives.
pub struct Follower {
    pub child: Child,
    chunks: mpsc::Receiver<(Instant, Vec<u8>)>,
    out: Vec<u8>,
}

impl Follower {
    pub fn start(env: &TestEnv, args: &[&str]) -> Follower {
        let mut child = env
            .cmd()
            .arg("logs")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            chunks,
            out: Vec::new(),
        }
    }

    /// Waits until the output contains `want`; returns when the chunk that
    /// completed it arrived.
    pub fn wait_for(&mut self, want: &str) -> Instant {
        let deadline = Instant::now() + LIMIT;
        loop {
            if contains(&self.out, want) {
                return Instant::now();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok((at, chunk)) => {
                    self.out.extend_from_slice(&chunk);
                    if contains(&self.out, want) {
                        return at;
                    }
                }
                Err(_) => panic!(
                    "no {want:?} from the follower; got {:?}",
                    String::from_utf8_lossy(&self.out)
                ),
            }
        }
    }

    /// Waits for the follower to exit by itself; its status, all its stdout
    /// and its stderr.
    pub fn finish(mut self) -> (i32, Vec<u8>, String) {
        let status = wait_child(&mut self.child, "the follower to exit by itself");
        while let Ok((_, chunk)) = self.chunks.recv_timeout(LIMIT) {
            self.out.extend_from_slice(&chunk);
        }
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code().unwrap_or(-1), self.out, err)
    }
}
