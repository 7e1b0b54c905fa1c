//! A real `redis-server` for the shipping tests (issue 10): started on a unix
//! socket (or a free TCP port) in a temp dir, stopped by pid on drop, and read
//! back with the `redis` crate. Never a mock.

use super::wait_until;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a server gets to come up: it starts in milliseconds; a loaded CI
/// machine may take a few seconds.
const START_LIMIT: Duration = Duration::from_secs(20);

pub struct RedisServer {
    dir: PathBuf,
    child: Option<Child>,
    /// TCP port, or 0 for the unix socket only.
    port: u16,
    password: Option<String>,
    /// Keep data over restarts (append-only file, fsync always).
    persist: bool,
    /// More `redis-server` options.
    extra: Vec<String>,
}

/// One stream entry: its id and fields.
pub type Entry = (String, HashMap<String, Vec<u8>>);

impl RedisServer {
    /// A server on a unix socket in `dir`, without persistence.
    pub fn start(dir: &Path) -> RedisServer {
        Self::start_with(dir, false, 0, None)
    }

    /// A server whose data survives [`RedisServer::restart`].
    pub fn start_persistent(dir: &Path) -> RedisServer {
        Self::start_with(dir, true, 0, None)
    }

    /// A server on a free TCP port requiring `password`.
    pub fn start_tcp_with_password(dir: &Path, password: &str) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_with(dir, false, port, Some(password.to_string()))
    }

    /// A server on a unix socket that also takes TLS on a free TCP port, with
    /// a certificate for 127.0.0.1 signed by a CA made here with `openssl`.
    /// Returns the server, the `rediss://` URL and the CA file.
    pub fn start_tls(dir: &Path) -> (RedisServer, String, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=logwrap test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = |name: &str| dir.join(name).display().to_string();
        let extra = [
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".to_string(),
            file("server.crt"),
            "--tls-key-file".to_string(),
            file("server.key"),
            "--tls-ca-cert-file".to_string(),
            file("ca.crt"),
            "--tls-auth-clients".to_string(),
            "no".to_string(),
        ];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let server = Self::start_with_options(dir, &extra);
        (
            server,
            format!("rediss://127.0.0.1:{port}"),
            dir.join("ca.crt"),
        )
    }

    /// A server on a unix socket with more options (`--stream-node-max-entries 1`).
    pub fn start_with_options(dir: &Path, extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            dir: dir.to_path_buf(),
            child: None,
            port: 0,
            password: None,
            persist: false,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        std::fs::create_dir_all(dir).unwrap();
        s.launch();
        s
    }

    fn start_with(dir: &Path, persist: bool, port: u16, password: Option<String>) -> RedisServer {
        std::fs::create_dir_all(dir).unwrap();
        let mut s = RedisServer {
            dir: dir.to_path_buf(),
            child: None,
            port,
            password,
            persist,
            extra: Vec::new(),
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let mut c = Command::new("redis-server");
        c.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", ""]);
        if self.persist {
            c.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            c.args(["--appendonly", "no"]);
        }
        if let Some(p) = &self.password {
            c.args(["--requirepass", p]);
        }
        c.args(&self.extra);
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        self.child = Some(child);
        wait_until(START_LIMIT, "redis-server to answer", || {
            self.try_conn().is_some()
        });
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The URL the wrapper ships to.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis+unix://{}", self.socket().display()),
        }
    }

    fn try_conn(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(self.url())
            .ok()?
            .get_connection()
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    pub fn conn(&self) -> redis::Connection {
        self.try_conn()
            .expect("connecting to the test redis-server")
    }

    /// SIGKILLs the server (by pid) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Starts a server killed by [`RedisServer::kill`] again.
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// Every entry of a stream, in order.
    pub fn xrange(&self, key: &str) -> Vec<Entry> {
        self.xrange_page(&mut self.conn(), key, "-", None)
    }

    /// Entries of a stream from id `from` (`(ID` excludes it), at most
    /// `count` of them.
    fn xrange_page(
        &self,
        conn: &mut redis::Connection,
        key: &str,
        from: &str,
        count: Option<usize>,
    ) -> Vec<Entry> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(key).arg(from).arg("+");
        if let Some(n) = count {
            cmd.arg("COUNT").arg(n);
        }
        let v: redis::Value = cmd.query(conn).unwrap();
        let redis::Value::Array(items) = v else {
            return Vec::new();
        };
        items
            .into_iter()
            .map(|item| {
                let redis::Value::Array(mut pair) = item else {
                    panic!("odd entry")
                };
                let fields = pair.pop().unwrap();
                let id: String = redis::from_redis_value(pair.pop().unwrap()).unwrap();
                let redis::Value::Array(kv) = fields else {
                    panic!("odd fields")
                };
                let mut map = HashMap::new();
                for ch in kv.chunks(2) {
                    let k: String = redis::from_redis_value(ch[0].clone()).unwrap();
                    let v: Vec<u8> = redis::from_redis_value(ch[1].clone()).unwrap();
                    map.insert(k, v);
                }
                (id, map)
            })
            .collect()
    }

    /// Checks that the `stream` log entries of job `id` rebuild `log` (a file)
    /// byte for byte, as [`shipped`] does, reading a few entries at a time and
    /// comparing each with the file at its offset, so a log of any size costs
    /// a few MiB of memory; then that the end entry holds its size. Returns
    /// the number of entries.
    pub fn assert_shipped_file(&self, id: &str, stream: &str, log: &Path) -> usize {
        use std::os::unix::fs::FileExt;
        // 16 entries of at most 1 MiB each.
        const PAGE: usize = 16;
        let file = std::fs::File::open(log).unwrap();
        let size = file.metadata().unwrap().len();
        let key = format!("logwrap:{{{id}}}:{stream}");
        let mut conn = self.conn();
        let (mut offset, mut line, mut count) = (0u64, 1u64, 0usize);
        let mut from = "-".to_string();
        let mut buf = Vec::new();
        let mut ended = false;
        loop {
            let page = self.xrange_page(&mut conn, &key, &from, Some(PAGE));
            let Some(last) = page.last() else { break };
            from = format!("({}", last.0);
            for e in &page {
                assert!(!ended, "{id} {stream}: entry {} after the end entry", e.0);
                if e.1.contains_key("end") {
                    assert_eq!(field(e, &format!("{stream}_bytes")), size.to_string());
                    ended = true;
                    continue;
                }
                let at = offset;
                let newlines = check_entry(e, &format!("{id} {stream}"), offset, line);
                let data = &e.1["data"];
                buf.resize(data.len(), 0);
                assert!(
                    at + data.len() as u64 <= size,
                    "{id} {stream}: entry {} past the log's end",
                    e.0
                );
                file.read_exact_at(&mut buf, at).unwrap();
                if buf != *data {
                    let diff = buf.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
                    panic!(
                        "{id} {stream}: entry {} differs from the log at byte {}",
                        e.0,
                        at + diff as u64
                    );
                }
                offset += data.len() as u64;
                line += newlines;
                count += 1;
            }
        }
        assert!(ended, "{id} {stream}: no end entry");
        assert_eq!(
            offset, size,
            "{id} {stream}: shipped {offset} bytes, the log has {size}"
        );
        count
    }

    /// The log entries of job `id`: its stdout stream's, then its stderr
    /// stream's (each ends with the end entry once complete).
    pub fn log(&self, id: &str) -> Vec<Entry> {
        let mut all = self.xrange(&format!("logwrap:{{{id}}}:stdout"));
        all.extend(self.xrange(&format!("logwrap:{{{id}}}:stderr")));
        all
    }

    /// Holds every write for `ms` milliseconds (`CLIENT PAUSE ... WRITE`): a
    /// Redis that answers, slowly.
    pub fn pause_writes(&self, ms: u64) {
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("WRITE")
            .query::<()>(&mut self.conn())
            .unwrap();
    }

    /// True if `key` exists.
    pub fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query::<i64>(&mut self.conn())
            .unwrap()
            == 1
    }

    /// A field of the meta hash of job `id`.
    pub fn meta_field(&self, id: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(format!("logwrap:{{{id}}}:meta"))
            .arg(field)
            .query(&mut self.conn())
            .unwrap()
    }
}

/// Waits until job `id`'s metadata says its shipping is complete: at once
/// for an ordinary job, a moment later when the wrapper handed the end of a
/// burst to a background `logwrap ship`.
pub fn wait_shipped(env: &super::TestEnv, id: &str) {
    wait_until(START_LIMIT, "shipping to complete", || {
        env.meta(id)["ship"]["complete"] == true
    });
}

/// A text field of an entry.
pub fn field(e: &Entry, name: &str) -> String {
    String::from_utf8_lossy(e.1.get(name).map(Vec::as_slice).unwrap_or_default()).into_owned()
}

/// The bytes of `stream` as shipped: the entries' data in order, checking on
/// the way that each starts exactly where the previous one ended (nothing
/// missing, nothing twice) and that line numbers add up.
pub fn shipped(entries: &[Entry], stream: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = 1u64;
    for e in entries.iter().filter(|e| field(e, "stream") == stream) {
        line += check_entry(e, stream, out.len() as u64, line);
        out.extend_from_slice(&e.1["data"]);
    }
    out
}

/// Checks one log entry of `what` (a stream, for messages) against where the
/// entries before it ended: its id is `<line>-<offset>`, it starts at byte
/// `offset` and line `line`, and its `lines` counts its newlines. Returns
/// that count.
fn check_entry(e: &Entry, what: &str, offset: u64, line: u64) -> u64 {
    let at: u64 = field(e, "offset").parse().unwrap();
    assert_eq!(e.0, format!("{}-{at}", field(e, "line")), "entry id");
    assert_eq!(
        at, offset,
        "{what}: entry {} is not where the last ended",
        e.0
    );
    assert_eq!(
        field(e, "line").parse::<u64>().unwrap(),
        line,
        "entry {} line",
        e.0
    );
    let newlines = e.1["data"].iter().filter(|b| **b == b'\n').count() as u64;
    assert_eq!(field(e, "lines").parse::<u64>().unwrap(), newlines);
    newlines
}

/// Asserts `shipped` equals `log`, saying where they differ rather than
/// printing megabytes.
#[track_caller]
pub fn assert_same(shipped: &[u8], log: &[u8], what: &str) {
    if shipped != log {
        let at = shipped
            .iter()
            .zip(log)
            .position(|(a, b)| a != b)
            .unwrap_or(shipped.len().min(log.len()));
        panic!(
            "{what}: shipped {} bytes, log has {}; first difference at byte {at}",
            shipped.len(),
            log.len()
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
