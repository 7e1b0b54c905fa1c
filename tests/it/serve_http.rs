//! The tail server's other endpoints and its hardening (issue 4): Jenkins/LAVA
//! polling, raw logs with Range, the job list and metadata, health, the pages,
//! and every limit of SPEC §5 hit by a real client (raw sockets and curl).

use crate::util::serve::*;
use crate::util::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn log_tail_pieces_rebuild_the_file_exactly() {
    let env = TestEnv::new();
    // 'é' (2 bytes) and '€' (3 bytes) straddle the 512 KiB bound of one piece.
    let script = "head -c 524287 /dev/zero | tr '\\0' a; printf 'é€\\n'; printf 'tail ü\\n' >&2";
    env.run_sh("poll", &["--no-pty", "-q"], script);
    let srv = Serve::start(&env, &[]);
    let mut start = 0u64;
    let mut rebuilt = String::new();
    let mut pieces = 0;
    loop {
        let r = get(
            srv.port,
            &format!("/api/job_runs/poll/log-tail?start={start}"),
            &[],
        );
        assert_eq!(r.status, 200);
        let v = r.json();
        let content = v["content"].as_str().unwrap();
        assert!(content.len() <= 512 * 1024);
        assert!(
            !content.contains('\u{fffd}'),
            "a piece was cut inside a character"
        );
        rebuilt.push_str(content);
        pieces += 1;
        start = v["new_size"].as_u64().unwrap();
        if v["is_finished"] == true {
            break;
        }
        assert!(pieces < 10);
    }
    assert_eq!(pieces, 2);
    assert_eq!(rebuilt.into_bytes(), env.stdout_log("poll"));
    let err = get(
        srv.port,
        "/api/job_runs/poll/log-tail?start=0&stream=stderr",
        &[],
    )
    .json();
    assert_eq!(err["content"], "tail ü\n");
    // A start past the end: nothing, the real end to ask for next, no error page.
    let past = get(srv.port, "/api/job_runs/poll/log-tail?start=99999999", &[]);
    assert_eq!(past.status, 200);
    let v = past.json();
    assert_eq!(v["content"], "");
    assert_eq!(v["new_size"], env.stdout_log("poll").len());
    assert_eq!(v["is_finished"], true);
    assert_eq!(
        get(srv.port, "/api/job_runs/poll/log-tail?start=-1", &[]).status,
        400
    );
}

#[test]
fn polling_a_running_job_says_it_is_not_finished() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start(&env, "running", &[]);
    job.say("first");
    wait_until(LIMIT, "the line", || !env.stdout_log("running").is_empty());
    let v = get(srv.port, "/api/job_runs/running/log-tail?start=0", &[]).json();
    assert_eq!(
        (v["content"].as_str(), v["is_finished"].as_bool()),
        (Some("first\n"), Some(false))
    );
    let r = get(
        srv.port,
        "/api/job_runs/running/logs/stdout/progressiveText?start=0",
        &[],
    );
    assert_eq!(r.header("x-more-data").as_deref(), Some("true"));
    assert!(job.finish().success());
    let v = get(srv.port, "/api/job_runs/running/log-tail?start=6", &[]).json();
    assert_eq!(
        (v["content"].as_str(), v["is_finished"].as_bool()),
        (Some(""), Some(true))
    );
}

#[test]
fn progressive_text_follows_jenkins() {
    let env = TestEnv::new();
    env.run_sh(
        "jk",
        &["--no-pty", "-q"],
        "printf 'hello\\nworld\\n'; echo oops >&2",
    );
    let srv = Serve::start(&env, &[]);
    let r = get(
        srv.port,
        "/api/job_runs/jk/logs/stdout/progressiveText?start=6",
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"world\n");
    assert_eq!(r.header("x-text-size").as_deref(), Some("12"));
    assert_eq!(r.header("x-more-data").as_deref(), Some("false"));
    let r = get(
        srv.port,
        "/api/job_runs/jk/logs/stderr/progressiveText",
        &[],
    );
    assert_eq!(r.body, b"oops\n");
}

#[test]
fn raw_logs_support_range_and_head() {
    let env = TestEnv::new();
    env.run_sh(
        "raw",
        &["--no-pty", "-q"],
        "printf '0123456789'; printf 'E' >&2",
    );
    let srv = Serve::start(&env, &[]);
    let url = format!(
        "http://127.0.0.1:{}/api/job_runs/raw/logs/stdout/raw",
        srv.port
    );
    let full = curl(&["-i", &url]);
    let r = parse_response(&full.stdout);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"0123456789"[..]));
    assert_eq!(r.header("accept-ranges").as_deref(), Some("bytes"));
    let part = parse_response(&curl(&["-i", "-H", "Range: bytes=4-", &url]).stdout);
    assert_eq!((part.status, part.body.as_slice()), (206, &b"456789"[..]));
    assert_eq!(
        part.header("content-range").as_deref(),
        Some("bytes 4-9/10")
    );
    let mid = curl(&["-r", "2-3", &url]);
    assert_eq!(mid.stdout, b"23");
    let head = parse_response(&curl(&["-I", &url]).stdout);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").as_deref(), Some("10"));
    assert!(head.body.is_empty());
    let beyond = get(
        srv.port,
        "/api/job_runs/raw/logs/stdout/raw",
        &[("Range", "bytes=10-")],
    );
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range").as_deref(),
        Some("bytes */10")
    );
    assert_eq!(
        get(srv.port, "/api/job_runs/raw/logs/stderr/raw", &[]).body,
        b"E"
    );
    // A big log is streamed in pieces, byte for byte.
    env.run_sh("big", &["--no-pty", "-q"], "seq 1 300000");
    let big = curl(&[&format!(
        "http://127.0.0.1:{}/api/job_runs/big/logs/stdout/raw",
        srv.port
    )]);
    assert_eq!(big.stdout, env.stdout_log("big"));
}

#[test]
fn job_list_is_newest_first_with_status_and_limit_and_metadata_is_live() {
    let env = TestEnv::new();
    env.run_sh("j1-ok", &["--no-pty", "-q"], "true");
    env.run_sh("j2-fail", &["--no-pty", "-q"], "exit 4");
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start(&env, "j3-run", &[]);
    let ids = |q: &str| -> Vec<String> {
        get(srv.port, &format!("/api/job_runs{q}"), &[])
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["job_run_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(""), ["j3-run", "j2-fail", "j1-ok"]);
    assert_eq!(ids("?limit=2"), ["j3-run", "j2-fail"]);
    assert_eq!(ids("?status=failed"), ["j2-fail"]);
    assert_eq!(ids("?status=running"), ["j3-run"]);
    assert_eq!(get(srv.port, "/api/job_runs?status=bogus", &[]).status, 400);
    let m = get(srv.port, "/api/job_runs/j2-fail", &[]).json();
    assert_eq!(
        (m["status"].as_str(), m["exit_code"].as_i64()),
        (Some("failed"), Some(4))
    );
    assert_eq!(get(srv.port, "/api/job_runs/nope", &[]).status, 404);
    job.child.kill().unwrap();
    job.child.wait().unwrap();
    // The kernel drops a dead writer's lock as it reaps it; a loaded machine
    // may let the server's look come a moment before that.
    wait_until(LIMIT, "the killed job to read as abandoned", || {
        ids("?status=abandoned") == ["j3-run"]
    });
    let h = get(srv.port, "/healthz", &[]);
    assert_eq!((h.status, h.body.as_slice()), (200, &b"ok\n"[..]));
}

#[test]
fn pages_are_self_contained_and_list_the_jobs() {
    let env = TestEnv::new();
    env.run_sh("page-job", &["--no-pty", "-q"], "echo hi");
    let srv = Serve::start(&env, &[]);
    let index = get(srv.port, "/", &[]);
    assert_eq!(index.status, 200);
    assert!(index
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    // The list page loads its jobs from the API, which lists the job.
    assert!(index.text().contains("api/job_runs?"), "{}", index.text());
    let list = get(srv.port, "/api/job_runs", &[]).json();
    assert_eq!(list[0]["job_run_id"], "page-job");
    let page = get(srv.port, "/job_runs/page-job", &[]);
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("<script>") && html.contains("<style>"));
    assert!(html.contains("EventSource"));
    for external in [
        "src=\"http",
        "href=\"http",
        "@import",
        "src=\"//",
        "href=\"//",
    ] {
        assert!(!html.contains(external), "the page loads {external}");
    }
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    assert_eq!(get(srv.port, "/job_runs/missing", &[]).status, 404);
}

#[test]
fn only_get_and_head_are_allowed() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"] {
        let r = raw_request(
            srv.port,
            format!("{m} /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
    }
    let r = raw_request(
        srv.port,
        b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn oversized_request_lines_and_headers_are_refused() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(raw_request(srv.port, long.as_bytes()).status, 414);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    assert_eq!(raw_request(srv.port, big.as_bytes()).status, 431);
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: localhost\r\n{many}\r\n");
    assert_eq!(raw_request(srv.port, req.as_bytes()).status, 431);
    // Within the bounds is fine.
    let ok: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{ok}\r\n");
    assert_eq!(raw_request(srv.port, req.as_bytes()).status, 200);
    let garbage = raw_request(srv.port, b"\x16\x03\x01 not http\r\n\r\n");
    assert_eq!(garbage.status, 400);
}

#[test]
fn request_bodies_are_refused_and_the_connection_closed() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    // The body that follows must not be read as a second request: the answer is
    // one 400 and the connection closes.
    let smuggle = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 31\r\n\r\nGET /healthz HTTP/1.1\r\nX: y\r\n\r\n";
    let r = raw_request(srv.port, smuggle);
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(!r.text().contains("HTTP/1.1"), "{}", r.text());
    let te =
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(raw_request(srv.port, te).status, 400);
}

#[test]
fn path_traversal_never_reaches_outside_the_root() {
    let env = TestEnv::new();
    env.run_sh("safe", &["--no-pty", "-q"], "echo inside");
    std::fs::write(env.path("secret.log"), "TOP SECRET\n").unwrap();
    std::fs::create_dir_all(env.root.join("job_runs/x/logs/stdout")).unwrap();
    let srv = Serve::start(&env, &[]);
    for path in [
        "/api/job_runs/../../secret.log",
        "/api/job_runs/..%2F..%2Fsecret.log/logs/stdout/raw",
        "/api/job_runs/%2e%2e/logs/stdout/raw",
        "/api/job_runs/%2E%2E%2F%2E%2E/logs/stdout/raw",
        "/api/job_runs/..%5c../logs/stdout/raw",
        "/api/job_runs/%2fetc%2fpasswd/logs/stdout/raw",
        "/api/job_runs//etc/passwd",
        "/job_runs/..",
        "/api/job_runs/.%2e/log-tail",
        "/api/job_runs/safe%00/logs/stdout/raw",
        "http://127.0.0.1/api/job_runs/%2e%2e/logs/stdout/raw",
        "/../../../../etc/passwd",
        "/api/job_runs/safe/logs/..%2f..%2f..%2fsecret.log/raw",
    ] {
        let r = get(srv.port, path, &[]);
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
        assert!(
            !r.text().contains("TOP SECRET") && !r.text().contains("root:"),
            "{path}"
        );
    }
    let raw = raw_request(
        srv.port,
        b"GET ../../secret.log HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(raw.status, 400);
    assert_eq!(
        get(srv.port, "/api/job_runs/safe/logs/stdout/raw", &[]).body,
        b"inside\n"
    );
}

#[test]
fn slow_request_heads_get_408() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &["--header-timeout", "1s"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let t = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap(); // never finished
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(parse_response(&all).status, 408);
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_kept_alive_connection_idle_past_the_header_timeout_still_gets_its_next_request_answered() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &["--header-timeout", "1s", "--idle-timeout", "30s"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(parse_response(&buf[..n]).status, 200);
    // The idle time is what is tested: longer than the header timeout,
    // well within the idle timeout.
    std::thread::sleep(Duration::from_millis(1500));
    // The next head, in two pieces: the first must not start a clock that
    // has already run out.
    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    match s.read(&mut buf) {
        Ok(n) => panic!(
            "answered half a head: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"Host: localhost\r\n\r\n").unwrap();
    let n = s.read(&mut buf).unwrap();
    assert_eq!(parse_response(&buf[..n]).status, 200);
}

#[test]
fn pipelined_requests_sent_before_a_half_close_are_all_answered() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let one = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let meta = "GET /api/job_runs/nosuch HTTP/1.1\r\nHost: localhost\r\n\r\n";
    s.write_all(format!("{one}{meta}{one}").as_bytes()).unwrap();
    // What `printf ... | nc -N` does once its input ends.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(text.matches("HTTP/1.1 404 Not Found").count(), 1, "{text}");
    // The last answer says `close` when the half-close had arrived by the
    // time it was made; if the requests were read before it, `keep-alive`,
    // and the connection is closed when the end is read. Either way every
    // request was answered and the connection ended (`read_to_end` returned).
    assert!(text.matches("Connection: close").count() <= 1, "{text}");
    assert!(text.trim_end().ends_with("ok"), "{text}");
}

/// A job of `mib` MiB of lines that all match `xyz`: a search listing one
/// of them spends seconds (more than a turn a MiB) counting the rest with
/// nothing to send.
fn matching_job(env: &TestEnv, mib: u32) -> u64 {
    let script = format!("yes xyz | head -c {}", mib << 20);
    assert_ok(&env.run_sh("many", &["-q", "--no-pty"], &script));
    u64::from(mib << 18)
}

/// CPU time (user + system, in clock ticks) of process `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_long_search_is_not_cut_by_the_idle_timeout_while_it_counts() {
    let env = TestEnv::new();
    let lines = matching_job(&env, 3);
    let srv = Serve::start(&env, &["--idle-timeout", "1s"]);
    let r = get(srv.port, "/api/job_runs/many/search?q=xyz&limit=1", &[]);
    assert_eq!(r.status, 200, "{}", r.head);
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "{e}: cut short: {:?}",
            String::from_utf8_lossy(&r.body[r.body.len().saturating_sub(80)..])
        )
    });
    assert_eq!(v["total"], lines);
}

#[test]
fn a_search_whose_client_left_stops_searching() {
    let env = TestEnv::new();
    matching_job(&env, 8);
    let srv = Serve::start(&env, &[]);
    let read_so_far = || {
        let io = std::fs::read_to_string(format!("/proc/{}/io", srv.pid())).unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = read_so_far();
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET /api/job_runs/many/search?q=xyz&limit=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    // Once the server is idle (its CPU time and bytes read stand still over
    // a window), it has read only the blocks of the turns under way when
    // the client left, not the whole 8 MiB log.
    wait_until(Duration::from_secs(120), "the server to go idle", || {
        let (ticks, read) = (cpu_ticks(srv.pid()), read_so_far());
        std::thread::sleep(Duration::from_millis(300));
        cpu_ticks(srv.pid()) == ticks && read_so_far() == read
    });
    let read = read_so_far() - before;
    assert!(
        read < 4 << 20,
        "searched {read} bytes for a client that had left"
    );
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &["--idle-timeout", "1s"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    for _ in 0..2 {
        // Two requests on one kept-alive connection.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let r = parse_response(&buf[..n]);
        assert_eq!(
            (r.status, r.header("connection").as_deref()),
            (200, Some("keep-alive"))
        );
    }
    let t = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed without a response");
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(10));
}

#[test]
fn connections_over_the_cap_get_503() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &["--max-connections", "2"]);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
            // Prove each is accepted and counted: one answered request each.
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(LIMIT)).unwrap();
            let mut buf = [0u8; 512];
            assert!(s.read(&mut buf).unwrap() > 0);
            s
        })
        .collect();
    let r = get(srv.port, "/healthz", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    drop(held);
    wait_until(LIMIT, "a slot to free up", || {
        get(srv.port, "/healthz", &[]).status == 200
    });
}

#[test]
fn the_token_is_required_on_every_endpoint() {
    let env = TestEnv::new();
    env.run_sh("tk", &["--no-pty", "-q"], "echo x");
    let mut cmd = env.cmd();
    cmd.env("DATABUILD_LOG_TOKEN", "s3cr3t");
    let srv = Serve::start_with(cmd, &[]);
    for path in [
        "/",
        "/healthz",
        "/job_runs/tk",
        "/api/job_runs",
        "/api/job_runs/tk",
        "/api/job_runs/tk/logs/stdout",
        "/api/job_runs/tk/logs/stdout/raw",
        "/api/job_runs/tk/log-tail",
        "/api/job_runs/tk/logs/stdout/progressiveText",
    ] {
        let r = get(srv.port, path, &[]);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
        assert_eq!(
            get(srv.port, path, &[("Authorization", "Bearer s3cr3X")]).status,
            401
        );
        assert_eq!(
            get(srv.port, path, &[("Authorization", "Bearer s3cr3t")]).status,
            200,
            "{path}"
        );
        let q = if path.contains('?') { "&" } else { "?" };
        assert_eq!(
            get(srv.port, &format!("{path}{q}token=s3cr3t"), &[]).status,
            200,
            "{path}"
        );
        assert_eq!(
            get(srv.port, &format!("{path}{q}token=s3cr3"), &[]).status,
            401
        );
    }
}

#[test]
fn a_follower_that_stops_reading_gets_back_pressure() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    // On "go", 30 MB of 1000-byte lines at full speed; then it waits for EOF.
    let flood =
        "read go; yes \"$(head -c 999 /dev/zero | tr '\\0' y)\" | head -n 30000; read end || true";
    let mut job = LiveJob::start_script(&env, "flood", &[], flood);
    // A follower that never reads, with a tiny receive buffer.
    let mut stalled = socket_with_small_rcvbuf(srv.port);
    stalled
        .write_all(
            b"GET /api/job_runs/flood/logs/stdout?follow=true HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .unwrap();
    let mut reader = SseConn::open(srv.port, "/api/job_runs/flood/logs/stdout?follow=true", &[]);
    let before = rss_kib(srv.pid());
    job.say("go");
    // Without back-pressure the stalled follower would need all 30 MB buffered.
    for _ in 0..30_000 {
        let ev = reader.next().unwrap();
        assert_eq!(ev.data.len(), 999);
    }
    let after = rss_kib(srv.pid());
    assert!(
        after < before + 8 * 1024,
        "server RSS grew from {before} KiB to {after} KiB with a stalled follower"
    );
    drop(stalled); // a vanished follower costs nothing and hurts nobody
    assert!(job.finish().success());
    assert_eq!(reader.next().unwrap().event, "complete");
    assert_eq!(get(srv.port, "/healthz", &[]).status, 200);
}

/// A connected socket whose receive buffer is as small as the kernel allows.
fn socket_with_small_rcvbuf(port: u16) -> TcpStream {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain socket calls on a descriptor we create and then own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(r, 0);
        let s = TcpStream::from_raw_fd(fd);
        assert!(s.as_raw_fd() >= 0);
        s
    }
}

#[test]
fn many_followers_all_receive_every_line() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start(&env, "fan", &[]);
    const FOLLOWERS: usize = 100;
    const LINES: usize = 200;
    let mut conns: Vec<SseConn> = (0..FOLLOWERS)
        .map(|_| SseConn::open(srv.port, "/api/job_runs/fan/logs/combined?follow=true", &[]))
        .collect();
    for i in 0..LINES {
        job.say(&format!("{}{i}", if i % 2 == 0 { "" } else { "e:" }));
    }
    assert!(job.finish().success());
    for (n, c) in conns.iter_mut().enumerate() {
        let evs = c.rest();
        let lines = datas(&evs);
        assert_eq!(lines.len(), LINES, "follower {n}");
        let mut sorted: Vec<usize> = lines.iter().map(|l| l.parse().unwrap()).collect();
        sorted.sort();
        assert_eq!(sorted, (0..LINES).collect::<Vec<_>>(), "follower {n}");
        assert_eq!(evs.last().unwrap().event, "complete");
    }
    let v: Value = get(srv.port, "/api/job_runs/fan", &[]).json();
    assert_eq!(v["status"], "succeeded");
}

/// A request for `path` naming `host` (no Host header at all when `None`).
fn get_for_host(port: u16, path: &str, host: Option<&str>) -> Resp {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    raw_request(
        port,
        format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn on_loopback_only_loopback_host_names_are_answered() {
    let env = TestEnv::new();
    env.run_sh("dns", &["--no-pty", "-q"], "echo secret-line");
    let raw = "/api/job_runs/dns/logs/stdout/raw";
    let srv = Serve::start(&env, &[]);
    let port = srv.port;
    for host in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{port}"),
        "[::1]".to_string(),
        format!("[::1]:{port}"),
    ] {
        let r = get_for_host(port, raw, Some(&host));
        assert_eq!(
            (r.status, r.text()),
            (200, "secret-line\n".into()),
            "{host}"
        );
    }
    // A rebound name: refused with a body saying why and what to do.
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
    ] {
        let r = get_for_host(port, raw, Some(host));
        assert_eq!(r.status, 421, "{host}");
        assert!(!r.text().contains("secret-line"));
        assert!(r.text().contains("--allow-host"), "{}", r.text());
    }
    // The absolute form names the host too.
    let r = raw_request(
        port,
        format!(
            "GET http://evil.example{raw} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 421);
    // HTTP/1.1 without Host is malformed.
    assert_eq!(get_for_host(port, raw, None).status, 400);
    // curl names the address it connects to: allowed.
    let out = curl(&[&format!("http://127.0.0.1:{port}{raw}")]);
    assert_eq!(out.stdout, b"secret-line\n");

    let allowing = Serve::start(
        &env,
        &["--allow-host", "logs.example", "--allow-host", "ci.example"],
    );
    for host in ["logs.example", "LOGS.example:80", "ci.example", "localhost"] {
        assert_eq!(
            get_for_host(allowing.port, raw, Some(host)).status,
            200,
            "{host}"
        );
    }
    assert_eq!(
        get_for_host(allowing.port, raw, Some("evil.example")).status,
        421
    );
}

#[test]
fn the_wrappers_listen_server_checks_host_names_too() {
    let env = TestEnv::new();
    let script = "echo listen-line; read x || true";
    let (job, url) =
        crate::util::serve::listening_script(&env, "dnsl", &["--allow-host", "ok.example"], script);
    let port = crate::util::serve::port_of(&url);
    let raw = "/api/job_runs/dnsl/logs/stdout/raw";
    wait_until(LIMIT, "the line", || {
        get_for_host(port, raw, Some("localhost")).body == b"listen-line\n"
    });
    assert_eq!(get_for_host(port, raw, Some("ok.example")).status, 200);
    assert_eq!(get_for_host(port, raw, Some("evil.example")).status, 421);
    assert!(job.finish().success());
}

#[test]
fn the_token_never_reaches_the_jobs_environment() {
    let env = TestEnv::new();
    let out = env
        .cmd()
        .env("DATABUILD_LOG_TOKEN", "env-s3cret")
        .args(["--job-run-id", "envtok", "--no-pty", "-q"])
        .args(["--listen", "127.0.0.1:0", "--", "env"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_text(&out));
    let log = env.stdout_log("envtok");
    assert!(contains(&log, "DATABUILD_JOB_RUN_ID=envtok"), "env ran");
    assert!(
        !contains(&log, "env-s3cret"),
        "the token leaked into the log"
    );
    assert!(!contains(&log, "DATABUILD_LOG_TOKEN"));
}

#[test]
fn a_token_file_guards_serve_and_listen() {
    let env = TestEnv::new();
    env.run_sh("tf", &["--no-pty", "-q"], "echo x");
    let file = env.path("token");
    std::fs::write(&file, "f1le-t0ken\n").unwrap();
    let file = file.to_str().unwrap();
    let srv = Serve::start(&env, &["--token-file", file]);
    let path = "/api/job_runs/tf";
    assert_eq!(get(srv.port, path, &[]).status, 401);
    let bearer = [("Authorization", "Bearer f1le-t0ken")];
    assert_eq!(get(srv.port, path, &bearer).status, 200);
    let wrong = [("Authorization", "Bearer f1le-t0ke")];
    assert_eq!(get(srv.port, path, &wrong).status, 401);

    let (job, url) = crate::util::serve::listening_script(
        &env,
        "tfl",
        &["--token-file", file],
        "read x || true",
    );
    let port = crate::util::serve::port_of(&url);
    assert_eq!(get(port, "/api/job_runs/tfl", &[]).status, 401);
    assert_eq!(get(port, "/api/job_runs/tfl", &bearer).status, 200);
    assert!(job.finish().success());
}

#[test]
fn token_and_token_file_together_or_an_empty_token_file_are_refused() {
    let env = TestEnv::new();
    let good = env.path("good");
    std::fs::write(&good, "t\n").unwrap();
    let empty = env.path("empty");
    std::fs::write(&empty, "\n").unwrap();
    let (good, empty) = (good.to_str().unwrap(), empty.to_str().unwrap());
    let serve = |extra: &[&str], token_env: Option<&str>| {
        let mut cmd = env.cmd();
        if let Some(t) = token_env {
            cmd.env("DATABUILD_LOG_TOKEN", t);
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap()
    };
    let wrap = |extra: &[&str], token_env: Option<&str>| {
        let mut cmd = env.cmd();
        if let Some(t) = token_env {
            cmd.env("DATABUILD_LOG_TOKEN", t);
        }
        cmd.args(["--no-pty", "-q", "--listen", "127.0.0.1:0"])
            .args(extra)
            .args(["--", "sh", "-c", "echo ran"])
            .output()
            .unwrap()
    };
    for (extra, token_env, says) in [
        (
            &["--token", "t", "--token-file", good][..],
            None,
            "not both",
        ),
        (&["--token-file", good][..], Some("t"), "not both"),
        (&["--token-file", empty][..], None, "empty"),
    ] {
        let out = serve(extra, token_env);
        assert_eq!(out.status.code(), Some(2), "serve {extra:?}");
        assert!(stderr_text(&out).contains(says), "{}", stderr_text(&out));
        let out = wrap(extra, token_env);
        assert_eq!(out.status.code(), Some(125), "wrapper {extra:?}");
        assert!(stderr_text(&out).contains(says), "{}", stderr_text(&out));
        assert!(!contains(&out.stdout, "ran"), "refused before the job runs");
    }
}

/// Fills the root with `count` finished jobs by copying the metadata of one
/// real job under new ids (running the wrapper 10,000 times would take long).
fn many_finished_jobs(env: &TestEnv, count: usize) {
    let parts: Vec<String> = (0..20)
        .map(|i| format!("--partition=part/{i:04}"))
        .collect();
    let mut args: Vec<&str> = vec!["--no-pty", "-q"];
    args.extend(parts.iter().map(String::as_str));
    env.run_sh("seed", &args, "echo seed");
    let seed = env.meta("seed");
    for i in 0..count {
        let id = format!("bulk-{i:05}");
        let mut m = seed.clone();
        m["job_run_id"] = Value::from(id.as_str());
        let dir = env.job_dir(&id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metadata.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        for f in ["stdout.log", "stderr.log", "stdout.idx", "stderr.idx"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
    }
}

#[test]
fn clients_that_never_read_the_job_list_cannot_pin_server_memory() {
    let env = TestEnv::new();
    const JOBS: usize = 9_999; // and the seed: 10,000, the most one list holds
    const CLIENTS: usize = 200;
    many_finished_jobs(&env, JOBS);
    let srv = Serve::start(&env, &["--max-connections", "1000"]);
    // One client that reads: the list is whole and newest first.
    let list = get(srv.port, "/api/job_runs", &[]).json();
    assert_eq!(list.as_array().unwrap().len(), JOBS + 1);
    assert_eq!(
        get(srv.port, "/api/job_runs?limit=3", &[])
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let full_list_bytes = serde_json::to_vec(&list).unwrap().len();
    // The list page is a shell that pages through the API.
    let page = get(srv.port, "/", &[]).text();
    assert!(page.ends_with("</html>\n"));
    // Clients that ask for it (and for a big log-tail) and never read.
    let mut idle = Vec::new();
    for i in 0..CLIENTS {
        let mut s = socket_with_small_rcvbuf(srv.port);
        let path = match i % 10 {
            0 => "/api/job_runs/seed/log-tail",
            1 => "/",
            _ => "/api/job_runs",
        };
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .unwrap();
        idle.push(s);
    }
    // Each has been answered (bytes are waiting for it) ... A loaded 2-core
    // machine running the whole suite can take a while over 200 of them.
    for s in &idle {
        s.set_read_timeout(Some(6 * LIMIT)).unwrap();
        assert_eq!(s.peek(&mut [0u8; 1]).unwrap(), 1);
    }
    // ... and the server is still answering others.
    assert_eq!(get(srv.port, "/healthz", &[]).status, 200);
    let peak = proc_status_kib(srv.pid(), "VmHWM");
    assert!(
        peak < 64 * 1024,
        "server peaked at {peak} KiB with {CLIENTS} clients leaving a {full_list_bytes}-byte list unread"
    );
}

/// Every answer forbids sniffing, framing and referrers (a page's `?token=`
/// must not travel on); pages also forbid framing, `<base>` and forms in
/// their Content-Security-Policy.
#[test]
fn answers_forbid_sniffing_framing_and_referrers() {
    let env = TestEnv::new();
    assert_ok(&env.run_sh("hdr", &["--no-pty", "-q"], "echo '<b>x</b>'"));
    let srv = Serve::start(&env, &[]);
    for path in [
        "/",
        "/job_runs/hdr",
        "/api/job_runs",
        "/api/job_runs/hdr/logs/stdout/raw",
        "/api/job_runs/nope",
    ] {
        let r = get(srv.port, path, &[]);
        assert_eq!(
            r.header("X-Content-Type-Options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            r.header("X-Frame-Options").as_deref(),
            Some("DENY"),
            "{path}"
        );
        assert_eq!(
            r.header("Referrer-Policy").as_deref(),
            Some("no-referrer"),
            "{path}"
        );
    }
    for path in ["/", "/job_runs/hdr"] {
        let csp = get(srv.port, path, &[])
            .header("Content-Security-Policy")
            .unwrap();
        for want in [
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(want), "{path}: {csp}");
        }
    }
}

/// Errors under /api are JSON, also for a target that cannot be parsed;
/// elsewhere they are plain text.
#[test]
fn api_errors_are_json_even_for_unparsable_targets() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    for path in [
        "/api/job_runs/%2e%2e/logs/stdout",
        "/api/job_runs/a%2Fb/logs/stdout",
        "/api/job_runs/%zz",
        "/api/job_runs/.bad",
    ] {
        let r = get(srv.port, path, &[]);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(
            r.header("Content-Type").as_deref(),
            Some("application/json"),
            "{path}"
        );
        assert!(r.json()["error"].is_string(), "{path}");
    }
    let r = get(srv.port, "/job_runs/%zz", &[]);
    assert_eq!(r.status, 400);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
}
