//! Helpers for the HTTP server tests: a `logwrap serve` on a free port, plain
//! and raw requests, curl, a strict SSE parser (WHATWG rules) and connection,
//! and live jobs with piped stdin, alone or with their own `--listen` server.

use super::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits on over the network.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A running `logwrap serve` on a free loopback port; killed on drop.
pub struct Serve {
    child: Child,
    _stderr: BufReader<ChildStderr>,
    pub port: u16,
}

impl Serve {
    pub fn start(env: &TestEnv, extra: &[&str]) -> Serve {
        Serve::start_with(env.cmd(), extra)
    }

    pub fn start_with(cmd: Command, extra: &[&str]) -> Serve {
        Serve::start_listening(cmd, 0, extra)
    }

    /// A server on a given port (0: any free one), e.g. to restart one where
    /// its clients expect it.
    pub fn start_listening(mut cmd: Command, port: u16, extra: &[&str]) -> Serve {
        let mut child = cmd
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        // The server prints its address once it listens (or exits on failure,
        // which ends the read with EOF).
        stderr.read_line(&mut line).unwrap();
        let port = line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        assert!(
            line.starts_with("logwrap: serving http://127.0.0.1:"),
            "{line}"
        );
        Serve {
            child,
            _stderr: stderr,
            port,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", self.head, self.text()))
    }
}

/// Sends `raw` bytes and reads the response until the server closes.
pub fn raw_request(port: u16, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(raw).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    parse_response(&all)
}

pub fn parse_response(all: &[u8]) -> Resp {
    let end = memchr::memmem::find(all, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(all)));
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    Resp {
        status,
        head,
        body: all[end + 4..].to_vec(),
    }
}

/// `GET path` with extra headers, `Connection: close`.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(port, req.as_bytes())
}

/// Runs curl with a time bound.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (CI installs it)")
}

/// One dispatched event, as a WHATWG-conforming EventSource sees it, plus the
/// fields it ignores (so tests can read `stream:`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: String,
    pub extra: Vec<(String, String)>,
}

/// An event-stream parser following the WHATWG HTML "parsing an event stream"
/// rules to the letter: lines end in CRLF, LF or CR; a leading BOM is dropped;
/// `:` starts a comment; one space after the colon is removed; `data` lines are
/// joined with LF; an `id` holding NUL is ignored; a blank line dispatches, and
/// an event without data is not dispatched.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    started: bool,
    skip_lf: bool,
    event: String,
    data: String,
    last_id: String,
    extra: Vec<(String, String)>,
    pub comments: Vec<String>,
    pub retry: Option<u64>,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            if self.skip_lf {
                match buf.get(at) {
                    None => break,
                    Some(b'\n') => at += 1,
                    Some(_) => {}
                }
                self.skip_lf = false;
            }
            let Some(i) = buf[at..].iter().position(|&b| b == b'\r' || b == b'\n') else {
                break;
            };
            self.skip_lf = buf[at + i] == b'\r';
            let mut text = String::from_utf8_lossy(&buf[at..at + i]).into_owned();
            at += i + 1;
            if !self.started {
                self.started = true;
                if let Some(t) = text.strip_prefix('\u{feff}') {
                    text = t.to_string();
                }
            }
            self.line(&text, &mut out);
        }
        self.buf = buf[at..].to_vec();
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            let extra = std::mem::take(&mut self.extra);
            if self.data.is_empty() {
                self.event.clear();
                return;
            }
            let mut data = std::mem::take(&mut self.data);
            data.pop();
            let event = std::mem::take(&mut self.event);
            out.push(SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
                id: self.last_id.clone(),
                extra,
            });
            return;
        }
        if let Some(c) = line.strip_prefix(':') {
            self.comments.push(c.to_string());
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_id = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok()
            }
            _ => self.extra.push((field.to_string(), value.to_string())),
        }
    }
}

/// An event-stream connection read incrementally.
pub struct SseConn {
    sock: TcpStream,
    pub resp: Resp,
    pub parser: SseParser,
    queue: std::collections::VecDeque<SseEvent>,
    pub closed: bool,
}

impl SseConn {
    pub fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> SseConn {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        while memchr::memmem::find(&all, b"\r\n\r\n").is_none() {
            let n = sock.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before the response head: {all:?}");
            all.extend_from_slice(&chunk[..n]);
        }
        let resp = parse_response(&all);
        let mut c = SseConn {
            sock,
            parser: SseParser::default(),
            queue: Default::default(),
            closed: false,
            resp: Resp {
                body: Vec::new(),
                ..resp
            },
        };
        let body = parse_response(&all).body;
        let evs = c.parser.feed(&body);
        c.queue.extend(evs);
        c
    }

    /// The next event; `None` once the server has closed the stream. The
    /// line in progress (`event: partial`, sent whenever a follower catches up
    /// inside a line) is skipped: the tests of it read the raw events.
    pub fn next(&mut self) -> Option<SseEvent> {
        loop {
            let ev = self.next_any()?;
            if ev.event != "partial" {
                return Some(ev);
            }
        }
    }

    /// The next event of any kind.
    pub fn next_any(&mut self) -> Option<SseEvent> {
        let deadline = Instant::now() + LIMIT;
        let mut chunk = [0u8; 65536];
        while self.queue.is_empty() && !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event within {LIMIT:?}");
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    let evs = self.parser.feed(&chunk[..n]);
                    self.queue.extend(evs);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading events: {e}"),
            }
        }
        self.queue.pop_front()
    }

    /// Reads until `cond` holds for the parser (comments, retry).
    pub fn wait_parser(&mut self, what: &str, cond: impl Fn(&SseParser) -> bool) {
        let deadline = Instant::now() + LIMIT;
        let mut chunk = [0u8; 4096];
        while !cond(&self.parser) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !self.closed,
                "no {what} within {LIMIT:?}"
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    let evs = self.parser.feed(&chunk[..n]);
                    self.queue.extend(evs);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading events: {e}"),
            }
        }
    }

    /// True when no event (but the line in progress) has been received and
    /// not yet taken.
    pub fn queue_is_empty(&self) -> bool {
        self.queue.iter().all(|e| e.event == "partial")
    }

    /// Every event until the server closes the stream.
    pub fn rest(&mut self) -> Vec<SseEvent> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

/// The data of the log events.
pub fn datas(evs: &[SseEvent]) -> Vec<String> {
    evs.iter()
        .filter(|e| e.event == "log")
        .map(|e| e.data.clone())
        .collect()
}

/// A running job fed line by line through the wrapper's stdin: `text` goes to
/// its stdout, `e:text` to its stderr; closing stdin ends it with status 0.
pub struct LiveJob {
    pub child: Child,
    stdin: Option<ChildStdin>,
}

pub const ECHO_JOB: &str = r#"while IFS= read -r l; do case "$l" in e:*) printf '%s\n' "${l#e:}" >&2;; *) printf '%s\n' "$l";; esac; done"#;

impl LiveJob {
    pub fn start(env: &TestEnv, id: &str, extra: &[&str]) -> LiveJob {
        LiveJob::start_script(env, id, extra, ECHO_JOB)
    }

    /// A job running `sh -c script` with its stdin fed by [`LiveJob::say`].
    pub fn start_script(env: &TestEnv, id: &str, extra: &[&str], script: &str) -> LiveJob {
        let child = env
            .cmd()
            .args(["--job-run-id", id, "--no-pty", "-q"])
            .args(extra)
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        LiveJob::adopt(env, id, child)
    }

    pub fn adopt(env: &TestEnv, id: &str, mut child: Child) -> LiveJob {
        let stdin = child.stdin.take();
        let meta = env.job_dir(id).join("metadata.json");
        wait_until(LIMIT, "the job to start", || meta.exists());
        LiveJob { child, stdin }
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Ends the job (EOF on its stdin) and waits for the wrapper.
    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().unwrap()
    }
}

/// `logwrap --listen`: the wrapper with piped stdin (ECHO_JOB) and its URL.
pub fn listening_job(env: &TestEnv, id: &str, extra: &[&str]) -> (LiveJob, String) {
    listening_script(env, id, extra, ECHO_JOB)
}

/// `logwrap --listen` running `sh -c script` with piped stdin, and its URL.
pub fn listening_script(
    env: &TestEnv,
    id: &str,
    extra: &[&str],
    script: &str,
) -> (LiveJob, String) {
    let mut child = env
        .cmd()
        .args([
            "--job-run-id",
            id,
            "--no-pty",
            "-q",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .strip_prefix("logwrap: serving ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .trim()
        .to_string();
    (LiveJob::adopt(env, id, child), url)
}

pub fn port_of(url: &str) -> u16 {
    url.trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A field of /proc/PID/status in KiB (`VmHWM` is the peak resident size).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
