//! A client of the tail server, for `logwrap logs --server URL` (SPEC §4): reads
//! a job's lines over Server-Sent Events (`format=json`, so the text is exact),
//! and on a dropped connection reconnects with `Last-Event-ID`, as a browser
//! does, so no line is repeated or skipped. HTTP is `ureq`'s, so any framing a
//! proxy in between chooses (chunked, close-delimited, keep-alive) just works.
//!
//! ```no_run
//! use logwrap::serve::client::{self, Query, Target};
//! let target = Target::parse("http://127.0.0.1:8080", None)?;
//! let q = Query { which: "combined", follow: true, ..Query::default() };
//! let end = client::stream(&target, "build-42", &q, &mut |said| {
//!     match said {
//!         client::Said::Line(line) => println!("{}: {}", line.stream, line.text),
//!         client::Said::Notice(n) => eprintln!("{n:?}"),
//!     }
//!     Ok(())
//! })?;
//! println!("ended: {:?}", end.map(|e| e.status));
//! # Ok::<(), anyhow::Error>(())
//! ```

use super::http::percent_encode;
use crate::metadata::MAX_METADATA_BYTES;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

/// Time to connect to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A follow stream hears at least a heartbeat every 15 s; three missed mean the
/// connection is dead even if no error says so.
const READ_TIMEOUT: Duration = Duration::from_secs(45);
/// Reconnections in a row that bring nothing before giving up.
const MAX_RETRIES: u32 = 10;
/// Wait before reconnecting, unless the server's `retry:` says otherwise. This
/// is a rate limit on reconnecting, like EventSource's, not a wait for a
/// condition.
const DEFAULT_RETRY: Duration = Duration::from_millis(1000);
/// Longest event line accepted from the server: an event holds at most a 64 KiB
/// line, JSON-escaped.
const MAX_LINE: usize = 1 << 20;
/// Longest response head accepted: the server's are a few hundred bytes; a
/// proxy in front may add some headers, never this many.
const MAX_HEAD: usize = 64 << 10;
/// Largest JSON document read (metadata, the job list's first row): the server
/// never sends metadata larger than it reads from disk.
const MAX_JSON: u64 = MAX_METADATA_BYTES + (1 << 20);
/// Most of an error page kept for the message.
const MAX_ERROR_BODY: u64 = 4096;

/// Where the server is: `http://host[:port][/prefix]`, and the token to send.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    prefix: String,
    /// `http://host:port` as the request URIs start (IPv6 in brackets).
    origin: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Target {
    /// Parses a server URL (`http://` only; put TLS in a proxy in front).
    pub fn parse(url: &str, token: Option<String>) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--server {url:?}: expected http://HOST[:PORT]"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(port) => (h, port),
                Err(_) => bail!("--server {url:?}: bad port {p:?}"),
            },
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("--server {url:?}: no host");
        }
        let origin = if host.contains(':') {
            format!("http://[{host}]:{port}")
        } else {
            format!("http://{host}:{port}")
        };
        let config = ureq::Agent::config_builder()
            // Statuses are answers to read (401 wants a token, 404 no such job),
            // not transport errors.
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .max_response_header_size(MAX_HEAD)
            // The server is named explicitly; proxy variables meant for the
            // package managers of the machine must not reroute it.
            .proxy(None)
            .user_agent(concat!("logwrap/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Target {
            host: host.to_string(),
            port,
            prefix: path.to_string(),
            origin,
            token: token.filter(|t| !t.is_empty()),
            agent: config.into(),
        })
    }

    /// Sends a GET; the response's body is left to read.
    fn get(
        &self,
        path: &str,
        extra: &[(&str, String)],
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self
            .agent
            .get(format!("{}{}{path}", self.origin, self.prefix));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in extra {
            req = req.header(*k, v);
        }
        req.call()
            .with_context(|| format!("connecting to {}:{}", self.host, self.port))
    }

    /// GETs a JSON document.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let resp = self.get(path, &[])?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .into_with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .with_context(|| format!("reading the server's answer to {path}"))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("the server's answer to {path} is not JSON"))?;
        if status != 200 {
            let msg = v["error"].as_str().unwrap_or("error");
            bail!("{msg} (HTTP {status})");
        }
        Ok(v)
    }
}

/// Reads one line (without its line end); `None` at EOF.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n >= MAX_LINE {
        bail!("the server sent a line longer than {MAX_LINE} bytes");
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// `stdout`, `stderr` or `combined`.
    pub which: &'static str,
    pub follow: bool,
    /// Start at line N (`--since`).
    pub since: Option<u64>,
    /// The last N lines (`--tail`).
    pub tail: Option<u64>,
}

/// One line received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Line {
    pub line: u64,
    pub stream: String,
    /// The exact text (invalid UTF-8 as U+FFFD), without the newline.
    pub text: String,
    /// Whether the line ended with a newline.
    pub newline: bool,
    pub ts: Option<String>,
    pub ts_us: Option<u64>,
}

/// What the server says between lines, right before the line it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A size limit left bytes and lines out (`event: gap` of issue 12);
    /// `message` says how many, in the words local reading uses.
    Omitted { stream: String, message: String },
    /// Lines `from..=to` are no longer held by the server's source (a Redis
    /// stream trimmed by `--ship-maxlen`, issue 10).
    Lost { stream: String, from: u64, to: u64 },
    /// The job emptied its log (`event: truncated`): the lines that follow
    /// are numbered from 1 again.
    Truncated { stream: String, message: String },
}

impl Notice {
    /// The notice an `event: gap` or `event: truncated` with `data` is, if
    /// the data is what the server sends.
    fn parse(kind: &str, data: &str) -> Option<Notice> {
        let v: serde_json::Value = serde_json::from_str(data).ok()?;
        let text = |f: &str| v[f].as_str().map(String::from);
        let stream = text("stream")?;
        match kind {
            "truncated" => Some(Notice::Truncated {
                stream,
                message: text("message")?,
            }),
            "gap" if v.get("omitted_bytes").is_some() => Some(Notice::Omitted {
                stream,
                message: text("message")?,
            }),
            "gap" => Some(Notice::Lost {
                stream,
                from: v["from"].as_u64()?,
                to: v["to"].as_u64()?,
            }),
            _ => None,
        }
    }
}

/// One thing [`stream`] hands on: a line, or what the server said before it.
#[derive(Debug, Clone, Copy)]
pub enum Said<'a> {
    Line(&'a Line),
    Notice(&'a Notice),
}

/// How the job ended (`event: complete`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct End {
    pub status: String,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
}

/// The most recent job on the server.
pub fn latest_job(target: &Target) -> Result<String> {
    let v = target.get_json("/api/job_runs?limit=1")?;
    v.get(0)
        .and_then(|m| m["job_run_id"].as_str())
        .map(String::from)
        .context("the server has no jobs")
}

/// Streams job `id`'s lines, and the notices that come with them (cuts,
/// trimmed lines, a truncated log), to `on` until the stream ends; returns how
/// the job ended if the server said so. With `follow`, a dropped connection is
/// resumed where it broke off.
pub fn stream(
    target: &Target,
    id: &str,
    q: &Query,
    on: &mut dyn FnMut(Said) -> std::io::Result<()>,
) -> Result<Option<End>> {
    let mut path = format!(
        "/api/job_runs/{}/logs/{}?format=json",
        percent_encode(id),
        q.which
    );
    if q.follow {
        path.push_str("&follow=true");
    }
    if let Some(n) = q.since {
        path.push_str(&format!("&since={n}"));
    } else if let Some(n) = q.tail {
        path.push_str(&format!("&lines={n}"));
    }
    let mut last_id: Option<String> = None;
    let mut retry = DEFAULT_RETRY;
    let mut failures = 0;
    loop {
        let extra: Vec<(&str, String)> = last_id
            .iter()
            .map(|i| ("Last-Event-ID", i.clone()))
            .collect();
        let got = target.get(&path, &extra);
        let resp = match got {
            Ok(x) => x,
            Err(_) if q.follow && last_id.is_some() && failures < MAX_RETRIES => {
                failures += 1;
                std::thread::sleep(retry);
                continue;
            }
            Err(e) => return Err(e),
        };
        let status = resp.status().as_u16();
        let mut r = BufReader::new(resp.into_body().into_reader());
        match status {
            200 => {}
            204 => return Ok(None),
            404 => bail!("no job run {id} on the server"),
            401 => bail!("the server wants a token: pass --token or set DATABUILD_LOG_TOKEN"),
            s => {
                let mut body = String::new();
                let _ = r.take(MAX_ERROR_BODY).read_to_string(&mut body);
                bail!("the server answered {s}: {}", body.trim());
            }
        }
        let mut ev = Event::default();
        let mut progressed = false;
        let broke = loop {
            let line = match read_line(&mut r) {
                Ok(Some(l)) => l,
                Ok(None) => break true,
                Err(_) => break true,
            };
            if line.is_empty() {
                let done = std::mem::take(&mut ev);
                if let Some(id) = done.id {
                    last_id = Some(id);
                }
                match done.kind.as_deref() {
                    Some("log") => {
                        let l: Line = serde_json::from_str(&done.data)
                            .context("the server sent an event that is not a log line")?;
                        on(Said::Line(&l)).context("writing a line")?;
                        progressed = true;
                    }
                    Some(kind @ ("gap" | "truncated")) => {
                        if let Some(n) = Notice::parse(kind, &done.data) {
                            on(Said::Notice(&n)).context("writing a notice")?;
                        }
                    }
                    Some("complete") => {
                        let end: End = serde_json::from_str(&done.data)
                            .context("the server sent a bad complete event")?;
                        return Ok(Some(end));
                    }
                    _ => {}
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => ev.kind = Some(value.to_string()),
                "data" => {
                    if !ev.data.is_empty() {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                }
                "id" => ev.id = Some(value.to_string()),
                "retry" => {
                    if let Ok(ms) = value.parse() {
                        retry = Duration::from_millis(ms);
                    }
                }
                _ => {}
            }
        };
        if !q.follow || !broke {
            return Ok(None);
        }
        failures = if progressed { 0 } else { failures + 1 };
        if failures > MAX_RETRIES {
            bail!("lost the connection to the server {MAX_RETRIES} times in a row");
        }
        std::thread::sleep(retry);
    }
}

#[derive(Default)]
struct Event {
    kind: Option<String>,
    data: String,
    id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse() {
        let t = Target::parse("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let t = Target::parse("http://logs.example/tail/", Some(String::new())).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("logs.example", 80, "/tail")
        );
        assert_eq!(t.token, None);
        let t = Target::parse("http://[::1]:9000", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!(t.origin, "http://[::1]:9000", "IPv6 goes back in brackets");
        let t = Target::parse("http://localhost/", None).unwrap();
        assert_eq!(t.origin, "http://localhost:80");
        assert!(Target::parse("https://x", None).is_err());
        assert!(Target::parse("http://x:port", None).is_err());
        assert!(Target::parse("http://", None).is_err());
    }
}
