//! `logs --server` behind a reverse proxy (issue 9, point 8): a proxy such as
//! nginx re-frames every response with `Transfer-Encoding: chunked`, and the
//! client must read one-shot answers, JSON documents and live SSE streams
//! through it exactly as it reads them from the server itself.

use crate::util::serve::{LiveJob, Serve, LIMIT};
use crate::util::*;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// A reverse proxy in a few lines of Python: forwards each GET to the logwrap
/// server and sends the body back chunked, in pieces of 7 bytes, so chunk
/// boundaries fall inside lines, events and UTF-8 sequences; streams as the
/// server sends (SSE), and logs `<status> <path>` per request to a file.
const CHUNKING_PROXY: &str = r#"
import http.client, http.server, sys
BACKEND, LOG = int(sys.argv[1]), sys.argv[2]
PIECE = 7
FORWARDED = ("authorization", "last-event-id", "range")

class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        up = http.client.HTTPConnection("127.0.0.1", BACKEND, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
        headers["Host"] = "127.0.0.1:%d" % BACKEND
        up.request("GET", self.path, headers=headers)
        r = up.getresponse()
        with open(LOG, "a") as f:
            f.write("%d %s\n" % (r.status, self.path))
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        bodyless = r.status in (204, 304)
        if not bodyless:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if bodyless:
            return
        while True:
            data = r.read1(65536)
            if not data:
                break
            for i in range(0, len(data), PIECE):
                piece = data[i:i + PIECE]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
srv.daemon_threads = True
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// The chunking proxy in front of a server; killed on drop.
struct Proxy {
    child: Child,
    port: u16,
}

impl Proxy {
    fn start(backend: u16, log: &Path) -> Proxy {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(CHUNKING_PROXY)
            .arg(backend.to_string())
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the test proxy");
        let mut line = String::new();
        // The proxy prints its port once it listens (or exits, ending the read).
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the proxy did not start: {line:?}"));
        Proxy { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The requests the proxy forwarded, as `<status> <path>` lines.
fn forwarded(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn logs_with_server_reads_through_a_proxy_that_chunks_every_response() {
    let env = TestEnv::new();
    let out = env.run_sh(
        "proxied",
        &["--no-pty", "-q"],
        "seq 1 30; echo 'é über ünïcödé'; echo oops >&2; head -c 3000 /dev/zero | tr '\\0' x; echo; printf 'no newline'; exit 4",
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr_text(&out));
    let srv = Serve::start(&env, &["--token", "sekrit"]);
    let log = env.path("proxy.log");
    let proxy = Proxy::start(srv.port, &log);
    let cases: [&[&str]; 5] = [
        &["proxied"],
        &["proxied", "--all", "--prefix"],
        &["proxied", "--tail", "3"],
        &["--timestamps", "proxied", "--stderr"],
        // No id: the most recent job, found through the (chunked) job list.
        &[],
    ];
    for args in cases {
        let local = env.cmd().arg("logs").args(args).output().unwrap();
        assert_eq!(local.status.code(), Some(0), "{}", stderr_text(&local));
        let remote = env
            .cmd()
            .args(["logs", "--token", "sekrit", "--server", &proxy.url()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            remote.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr_text(&remote)
        );
        assert_eq!(
            String::from_utf8_lossy(&remote.stdout),
            String::from_utf8_lossy(&local.stdout),
            "{args:?}"
        );
    }
    // The job's status comes from its metadata, a chunked JSON document.
    let o = env
        .cmd()
        .args([
            "logs",
            "proxied",
            "-f",
            "--exit-status",
            "--token",
            "sekrit",
        ])
        .args(["--server", &proxy.url()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr_text(&o));
    // Errors the server answers come through the proxy as clearly.
    let o = env
        .cmd()
        .args(["logs", "proxied", "--server", &proxy.url()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_text(&o).contains("token"), "{}", stderr_text(&o));
    let seen = forwarded(&log);
    for path in [
        "200 /api/job_runs/proxied/logs/stdout?format=json",
        "200 /api/job_runs/proxied/logs/combined?format=json",
        "200 /api/job_runs?limit=1",
        "200 /api/job_runs/proxied",
        "401 /api/job_runs/proxied/logs/stdout?format=json",
    ] {
        assert!(
            seen.lines().any(|l| l.starts_with(path)),
            "{path} not through the proxy: {seen}"
        );
    }
}

#[test]
fn logs_follow_through_a_chunking_proxy_gets_each_line_live() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let log = env.path("proxy.log");
    let proxy = Proxy::start(srv.port, &log);
    let mut job = LiveJob::start(&env, "live", &[]);
    let mut follower = env
        .cmd()
        .args([
            "logs",
            "-f",
            "--all",
            "--prefix",
            "live",
            "--server",
            &proxy.url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Each line reaches the follower while the job still runs: the proxy's
    // chunks are decoded as they come, not only once the stream ends.
    for (say, want) in [
        ("first", "stdout: first"),
        ("e:second ü", "stderr: second ü"),
        ("third", "stdout: third"),
    ] {
        job.say(say);
        let got = rx
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("{want:?} did not come through the proxy"));
        assert_eq!(got, want);
    }
    assert!(job.finish().success());
    wait_until(LIMIT, "the follower to end with the job", || {
        matches!(follower.try_wait(), Ok(Some(_)))
    });
    let status = follower.wait().unwrap();
    let mut err = String::new();
    let _ = follower.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "{err}");
    assert!(rx.try_recv().is_err(), "nothing more after the job ended");
    assert!(
        forwarded(&log).contains("/api/job_runs/live/logs/combined?format=json&follow=true"),
        "{}",
        forwarded(&log)
    );
}
