//! HTTP/1.x request parsing and response heads for the tail server, with no I/O:
//! `httparse` does the grammar, this module adds the bounds (SPEC §5 hardening),
//! percent-decoding of path segments and query parameters, `Range`, and the
//! constant-time token check.

use std::fmt::Write as _;

/// Longest request line accepted (414 beyond): far above any URL the API or a
/// browser produces, small enough that a client cannot make us buffer much.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Most bytes of header fields after the request line (431 beyond).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most header fields (431 beyond): browsers send about 15.
pub const MAX_HEADERS: usize = 32;
/// Most bytes a connection buffers while reading one request head.
pub const MAX_HEAD: usize = MAX_REQUEST_LINE + MAX_HEADER_BYTES + 4;

/// The two methods the server answers (SPEC §5: 405 for the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// A parsed, bounded request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Path segments, percent-decoded one by one (so `%2F` never splits one).
    pub segments: Vec<String>,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// The authority the client asked for: the `Host` header, or the host of
    /// an absolute-form target (which wins, RFC 9112 §3.2.2). `None` only for
    /// HTTP/1.0 without `Host`.
    pub host: Option<String>,
}

impl Request {
    /// The first header named `name` (lowercase), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter named `name`, if any.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request head was refused: the status to answer with, then close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: String,
}

fn reject(status: u16, reason: impl Into<String>) -> Reject {
    Reject {
        status,
        reason: reason.into(),
    }
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete yet (and still within bounds).
    Partial,
    /// A complete head, and how many bytes of the buffer it took.
    Done(Request, usize),
    /// Refused: answer with this status and close.
    Rejected(Reject),
}

/// Parses the request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let line_len = match memchr::memchr(b'\n', buf) {
        Some(i) => i,
        None if buf.len() > MAX_REQUEST_LINE => {
            return Parsed::Rejected(reject(414, "request line too long"))
        }
        None => return Parsed::Partial,
    };
    if line_len > MAX_REQUEST_LINE + 1 {
        return Parsed::Rejected(reject(414, "request line too long"));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() - line_len > MAX_HEADER_BYTES {
                return Parsed::Rejected(reject(431, "request headers too large"));
            }
            return Parsed::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Rejected(reject(431, "too many request headers"))
        }
        Err(e) => return Parsed::Rejected(reject(400, format!("bad request: {e}"))),
    };
    if n - line_len > MAX_HEADER_BYTES + 4 {
        return Parsed::Rejected(reject(431, "request headers too large"));
    }
    match build(&req) {
        Ok(r) => Parsed::Done(r, n),
        Err(e) => Parsed::Rejected(e),
    }
}

fn build(req: &httparse::Request) -> Result<Request, Reject> {
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(reject(405, "only GET and HEAD are supported")),
    };
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        if name == "transfer-encoding" {
            return Err(reject(400, "request bodies are not accepted"));
        }
        if name == "content-length" && value != "0" {
            return Err(reject(400, "request bodies are not accepted"));
        }
        headers.push((name, value));
    }
    let connection = headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    let has = |t: &str| connection.split(',').any(|c| c.trim() == t);
    let keep_alive = match req.version {
        Some(1) => !has("close"),
        _ => has("keep-alive"),
    };
    let target = req.path.unwrap_or("");
    let (segments, query) = parse_target(target)?;
    let mut hosts = headers.iter().filter(|(n, _)| n == "host").map(|(_, v)| v);
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(reject(400, "more than one Host header")),
        (None, None) if req.version == Some(1) => {
            return Err(reject(400, "an HTTP/1.1 request needs a Host header"))
        }
        (h, None) => absolute_authority(target).or(h.map(String::as_str)),
    };
    Ok(Request {
        method,
        segments,
        query,
        host: host.map(String::from),
        headers,
        keep_alive,
    })
}

/// The authority of an absolute-form target (`http://host:port/path`).
fn absolute_authority(target: &str) -> Option<&str> {
    let i = target.find("://")?;
    if !target[..i].eq_ignore_ascii_case("http") {
        return None;
    }
    let rest = &target[i + 3..];
    Some(rest.split(['/', '?', '#']).next().unwrap_or(rest))
}

/// The name in a `Host` value, without its port and brackets, lowercase and
/// without a trailing dot: `[::1]:8080` is `::1`, `LocalHost.:80` is `localhost`.
pub fn host_name(value: &str) -> String {
    let v = value.trim();
    let name = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match v.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => v,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a server bound to loopback answers a request for `host` (SPEC §5,
/// DNS rebinding): a page on `evil.example` whose name was re-pointed at
/// 127.0.0.1 reaches the server with `Host: evil.example`, so only names that
/// mean this machine's loopback are accepted, plus those the user allowed
/// (`--allow-host`, compared like [`host_name`]).
pub fn loopback_host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    let loopback = match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => name == "localhost",
    };
    loopback || allowed.iter().any(|a| host_name(a) == name)
}

/// Decoded path segments and query parameters of a request target.
pub type TargetParts = (Vec<String>, Vec<(String, String)>);

/// Splits a request target into decoded path segments and query parameters.
/// Accepts origin-form (`/a/b?x`) and absolute-form (`http://host/a/b?x`).
pub fn parse_target(target: &str) -> Result<TargetParts, Reject> {
    let target = match target.find("://") {
        Some(i) if target[..i].eq_ignore_ascii_case("http") => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        _ => target,
    };
    if !target.starts_with('/') {
        return Err(reject(400, "bad request target"));
    }
    let target = target.split('#').next().unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let mut segments = Vec::new();
    for raw in path[1..].split('/') {
        let seg = percent_decode(raw, false)
            .ok_or_else(|| reject(400, "bad percent-encoding in path"))?;
        if seg == "." || seg == ".." || seg.contains(['/', '\\', '\0']) {
            return Err(reject(
                400,
                "path segments must not be '.', '..' or hold '/'",
            ));
        }
        segments.push(seg);
    }
    if segments.last().is_some_and(|s| s.is_empty()) {
        // `/api/job_runs/` is `/api/job_runs`.
        segments.pop();
    }
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k =
            percent_decode(k, true).ok_or_else(|| reject(400, "bad percent-encoding in query"))?;
        let v =
            percent_decode(v, true).ok_or_else(|| reject(400, "bad percent-encoding in query"))?;
        params.push((k, v));
    }
    Ok((segments, params))
}

/// Decodes `%XX` escapes (and `+` as a space in queries); `None` if an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a query parameter value or path segment.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The reason phrase of the statuses the server uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response head. `length` is the Content-Length (`None` for a body that ends
/// when the connection closes, such as an event stream).
pub fn response_head(
    status: u16,
    headers: &[(&str, &str)],
    length: Option<u64>,
    keep_alive: bool,
) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        let _ = write!(h, "{name}: {value}\r\n");
    }
    if let Some(len) = length {
        let _ = write!(h, "Content-Length: {len}\r\n");
    }
    // Every answer: never sniffed into another type (a log holding HTML stays
    // text), never framed, and a page's `?token=` never sent on as a referrer.
    h.push_str("X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n");
    h.push_str(if keep_alive && length.is_some() {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    h.into_bytes()
}

/// What a `Range` header asks of a body of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No usable range: send everything (200). Syntax errors and multiple ranges
    /// land here too, as RFC 9110 allows.
    Full,
    /// Bytes `start..end` (exclusive end), answered with 206.
    Part(u64, u64),
    /// Starts past the end: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header value against a body of `size` bytes.
pub fn parse_range(value: Option<&str>, size: u64) -> Range {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        return match b.parse::<u64>() {
            Ok(0) => Range::Unsatisfiable,
            Ok(_) if size == 0 => Range::Unsatisfiable,
            Ok(n) => Range::Part(size.saturating_sub(n), size),
            Err(_) => Range::Full,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return Range::Full;
    };
    let end = if b.is_empty() {
        size
    } else {
        match b.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(size),
            _ => return Range::Full,
        }
    };
    if start >= size {
        Range::Unsatisfiable
    } else {
        Range::Part(start, end)
    }
}

/// Compares a presented token with the expected one in time that depends only on
/// their lengths, so the comparison leaks nothing about the expected token's bytes.
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() ^ expected.len()) as u8 | u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= g ^ e;
    }
    diff == 0
}

/// The token a request presents: `Authorization: Bearer T`, else `?token=T`.
pub fn presented_token(req: &Request) -> Option<&str> {
    req.header("authorization")
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .or_else(|| req.param("token"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_status_the_server_sends_has_its_reason_phrase() {
        for status in [
            200, 204, 206, 304, 400, 401, 404, 405, 408, 409, 414, 416, 421, 431, 500, 503,
        ] {
            assert_ne!(reason(status), "Unknown", "{status}");
        }
        assert_eq!(reason(409), "Conflict");
    }

    use super::*;

    fn done(raw: &str) -> Request {
        match parse_request(raw.as_bytes()) {
            Parsed::Done(r, n) => {
                assert_eq!(n, raw.len());
                r
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn status(raw: &[u8]) -> Option<u16> {
        match parse_request(raw) {
            Parsed::Rejected(r) => Some(r.status),
            Parsed::Partial => None,
            Parsed::Done(..) => Some(0),
        }
    }

    #[test]
    fn parses_a_get_with_decoded_segments_and_query() {
        let r = done(
            "GET /api/job_runs/a%2Eb/logs/stdout?follow=true&x=a+b%21 HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.segments, ["api", "job_runs", "a.b", "logs", "stdout"]);
        assert_eq!(r.param("follow"), Some("true"));
        assert_eq!(r.param("x"), Some("a b!"));
        assert_eq!(r.header("host"), Some("h"));
        assert!(r.keep_alive);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(!done("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!done("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(done("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert_eq!(status(b"GET / HT"), None);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn only_get_and_head_are_accepted() {
        assert_eq!(status(b"POST / HTTP/1.1\r\n\r\n"), Some(405));
        assert_eq!(status(b"DELETE / HTTP/1.1\r\n\r\n"), Some(405));
        assert_eq!(
            done("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n").method,
            Method::Head
        );
    }

    #[test]
    fn oversized_heads_are_refused_with_the_right_status() {
        let long = format!(
            "GET /{} HTTP/1.1\r\n\r\n",
            "a".repeat(MAX_REQUEST_LINE + 10)
        );
        assert_eq!(status(long.as_bytes()), Some(414));
        // Even before the line ends.
        assert_eq!(
            status("G".repeat(MAX_REQUEST_LINE + 2).as_bytes()),
            Some(414)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "v".repeat(MAX_HEADER_BYTES + 1)
        );
        assert_eq!(status(big.as_bytes()), Some(431));
        let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(MAX_HEADER_BYTES + 1));
        assert_eq!(status(unfinished.as_bytes()), Some(431));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Some(431)
        );
    }

    #[test]
    fn request_bodies_are_refused() {
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"),
            Some(0)
        );
    }

    #[test]
    fn traversal_in_any_encoding_is_refused() {
        for t in [
            "/api/../x",
            "/a/%2e%2e/b",
            "/a/%2E%2e",
            "/a/b%2Fc",
            "/a/%00",
            "/a/.",
            "/x/%5c",
        ] {
            assert_eq!(parse_target(t).map_err(|e| e.status), Err(400), "{t}");
        }
        assert_eq!(parse_target("etc/passwd").map_err(|e| e.status), Err(400));
        assert_eq!(parse_target("/a/%zz").map_err(|e| e.status), Err(400));
        // `//etc` is an empty segment then `etc`: it can only miss every route.
        assert_eq!(parse_target("//etc").unwrap().0, ["", "etc"]);
    }

    #[test]
    fn absolute_form_targets_are_reduced_to_their_path() {
        let (segs, q) = parse_target("http://example:8080/healthz?a=1").unwrap();
        assert_eq!(segs, ["healthz"]);
        assert_eq!(q, [("a".to_string(), "1".to_string())]);
        assert_eq!(parse_target("http://host").unwrap().0, Vec::<String>::new());
    }

    #[test]
    fn http_1_1_needs_exactly_one_host() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Some(400)
        );
        assert_eq!(done("GET / HTTP/1.0\r\n\r\n").host, None);
        assert_eq!(
            done("GET / HTTP/1.1\r\nHost: localhost:80\r\n\r\n").host,
            Some("localhost:80".into())
        );
        // An absolute-form target names the host itself, whatever Host says.
        assert_eq!(
            done("GET http://evil.example:80/x HTTP/1.1\r\nHost: localhost\r\n\r\n").host,
            Some("evil.example:80".into())
        );
    }

    #[test]
    fn only_loopback_names_and_allowed_hosts_pass_on_loopback() {
        let none: &[String] = &[];
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(loopback_host_allowed(ok, none), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]:80",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!loopback_host_allowed(bad, none), "{bad}");
        }
        let allowed = vec!["Build.Example".to_string()];
        assert!(loopback_host_allowed("build.example:8080", &allowed));
        assert!(!loopback_host_allowed("other.example", &allowed));
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=3-"), 10), Range::Part(3, 10));
        assert_eq!(parse_range(Some("bytes=3-4"), 10), Range::Part(3, 5));
        assert_eq!(parse_range(Some("bytes=3-400"), 10), Range::Part(3, 10));
        assert_eq!(parse_range(Some("bytes=-4"), 10), Range::Part(6, 10));
        assert_eq!(parse_range(Some("bytes=-40"), 10), Range::Part(0, 10));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=1-2,4-5"), 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=x-"), 10), Range::Full);
        assert_eq!(parse_range(Some("items=1-"), 10), Range::Full);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secreT", b"secret"));
        assert!(!token_matches(b"secret2", b"secret"));
        assert!(!token_matches(b"secre", b"secret"));
        assert!(!token_matches(b"", b"secret"));
        let r = done("GET /?token=q HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer  h \r\n\r\n");
        assert_eq!(presented_token(&r), Some("h"));
        let r = done("GET /?token=q%20 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(presented_token(&r), Some("q "));
    }

    #[test]
    fn response_heads_carry_length_and_connection() {
        let h = String::from_utf8(response_head(
            200,
            &[("Content-Type", "text/plain")],
            Some(3),
            true,
        ))
        .unwrap();
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(h.contains("Content-Length: 3\r\n"));
        assert!(h.ends_with("Connection: keep-alive\r\n\r\n"));
        let h = String::from_utf8(response_head(200, &[], None, true)).unwrap();
        assert!(h.ends_with("Connection: close\r\n\r\n"));
    }
}
