//! Reading a log by range for a tail-first page (issue 11, points 3 and 4):
//! `after=`, `count=`, `before=`, `at=` on the event streams, the `partial`
//! event of a line in progress, and the signal in `complete`, through the
//! real `logwrap serve` over a file store.

use crate::util::serve::*;
use crate::util::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// The status and events of `GET path` (read to the end).
fn events(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<SseEvent>) {
    let resp = get(port, path, headers);
    let evs = SseParser::default().feed(&resp.body);
    (resp.status, evs)
}

/// `(id, data)` of the log events.
fn logs(evs: &[SseEvent]) -> Vec<(String, String)> {
    evs.iter()
        .filter(|e| e.event == "log")
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect()
}

fn ends_with_complete(evs: &[SseEvent]) -> bool {
    evs.last().is_some_and(|e| e.event == "complete")
}

/// A finished job of 30 stdout and 30 stderr lines, interleaved as the
/// wrapper happened to read them, and its combined log as the reference.
fn thirty(env: &TestEnv, port: u16) -> Vec<(String, String)> {
    let out = env.run_sh(
        "r",
        &["--no-pty", "-q"],
        "i=1; while [ $i -le 30 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done",
    );
    assert_ok(&out);
    let (status, evs) = events(port, "/api/job_runs/r/logs/combined", &[]);
    assert_eq!(status, 200);
    assert!(ends_with_complete(&evs));
    let all = logs(&evs);
    assert_eq!(all.len(), 60);
    all
}

/// The combined number of an event id `O.E`: O+E.
fn combined_number(id: &str) -> usize {
    let (o, e) = id.split_once('.').unwrap();
    o.parse::<usize>().unwrap() + e.parse::<usize>().unwrap()
}

#[test]
fn after_resumes_like_last_event_id_and_the_header_wins() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let all = thirty(&env, srv.port);
    let path = |q: &str| format!("/api/job_runs/r/logs/combined?{q}");

    let (_, evs) = events(srv.port, &path(&format!("after={}", all[9].0)), &[]);
    assert_eq!(logs(&evs), all[10..]);
    assert!(ends_with_complete(&evs));
    // `after` wins over `since` and `lines`, the header over `after`.
    let q = format!("after={}&since=1&lines=2", all[49].0);
    assert_eq!(logs(&events(srv.port, &path(&q), &[]).1), all[50..]);
    let q = format!("after={}", all[9].0);
    let header = [("Last-Event-ID", all[4].0.as_str())];
    assert_eq!(logs(&events(srv.port, &path(&q), &header).1), all[5..]);
    // Nothing left of an ended job: 204, as for the header.
    let (status, evs) = events(srv.port, &path(&format!("after={}", all[59].0)), &[]);
    assert_eq!((status, evs.len()), (204, 0));
    assert_eq!(events(srv.port, &path("after=7"), &[]).0, 400);

    let (_, evs) = events(srv.port, "/api/job_runs/r/logs/stderr?after=27", &[]);
    let ids: Vec<_> = logs(&evs).into_iter().map(|l| l.0).collect();
    assert_eq!(ids, ["28", "29", "30"]);
    assert_eq!(
        events(srv.port, "/api/job_runs/r/logs/stderr?after=30", &[]).0,
        204
    );
}

#[test]
fn count_cuts_the_stream_without_complete_unless_the_log_ends_first() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let all = thirty(&env, srv.port);
    let (_, evs) = events(srv.port, "/api/job_runs/r/logs/combined?count=4", &[]);
    assert_eq!(logs(&evs), all[..4]);
    assert!(!ends_with_complete(&evs), "cut by count: {evs:?}");
    let (_, evs) = events(srv.port, "/api/job_runs/r/logs/stdout?lines=2&count=5", &[]);
    assert_eq!(
        logs(&evs),
        [("29".into(), "o29".into()), ("30".into(), "o30".into())]
    );
    assert!(ends_with_complete(&evs));
    let (_, evs) = events(
        srv.port,
        &format!("/api/job_runs/r/logs/combined?after={}&count=2", all[19].0),
        &[],
    );
    assert_eq!(logs(&evs), all[20..22]);
    // A following stream cut by count ends too.
    let (_, evs) = events(
        srv.port,
        "/api/job_runs/r/logs/stdout?follow=true&count=1",
        &[],
    );
    assert_eq!(logs(&evs), [("1".into(), "o1".into())]);
    // At most 10,000 events, whatever count asks for.
    assert_ok(&env.run_sh("many", &["--no-pty", "-q"], "seq 1 10005"));
    let (_, evs) = events(srv.port, "/api/job_runs/many/logs/stdout?count=20000", &[]);
    assert_eq!(logs(&evs).len(), 10_000);
    assert_eq!(evs.last().unwrap().id, "10000");
    for bad in ["count=0", "count=x", "count=-1"] {
        let q = format!("/api/job_runs/r/logs/stdout?{bad}");
        assert_eq!(events(srv.port, &q, &[]).0, 400, "{bad}");
    }
}

#[test]
fn before_gives_the_lines_that_end_at_a_cursor() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let all = thirty(&env, srv.port);

    let (status, evs) = events(
        srv.port,
        "/api/job_runs/r/logs/stdout?before=10&count=3",
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(
        logs(&evs),
        [("8", "o8"), ("9", "o9"), ("10", "o10")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(!ends_with_complete(&evs), "a range is not the end: {evs:?}");
    let (_, evs) = events(
        srv.port,
        "/api/job_runs/r/logs/stderr?before=2&count=3",
        &[],
    );
    assert_eq!(logs(&evs).len(), 2);

    for end in [0, 7, 30, 59] {
        let q = format!(
            "/api/job_runs/r/logs/combined?before={}&count=5",
            all[end].0
        );
        let (_, evs) = events(srv.port, &q, &[]);
        assert_eq!(logs(&evs), all[(end + 1).saturating_sub(5)..=end], "{q}");
    }
    // Numbers past the end count as the end, however large.
    let max = u64::MAX;
    let q = format!("/api/job_runs/r/logs/stdout?before={max}&count=2");
    let ids: Vec<_> = logs(&events(srv.port, &q, &[]).1)
        .into_iter()
        .map(|l| l.0)
        .collect();
    assert_eq!(ids, ["29", "30"]);
    let q = format!("/api/job_runs/r/logs/combined?before={max}.{max}&count=3");
    assert_eq!(logs(&events(srv.port, &q, &[]).1), all[57..]);
    // Without count: up to 1,000 lines, here all of them to the cursor.
    let q = format!("/api/job_runs/r/logs/combined?before={}", all[40].0);
    assert_eq!(logs(&events(srv.port, &q, &[]).1), all[..=40]);
    // The raw framing of one event, byte for byte.
    let raw = get(
        srv.port,
        "/api/job_runs/r/logs/stdout?before=3&count=1",
        &[],
    );
    assert!(
        contains(&raw.body, "event: log\nid: 3\ndata: o3\n\n"),
        "{}",
        raw.text()
    );

    for bad in ["before=3&follow=true", "before=x", "before=1.2"] {
        let q = format!("/api/job_runs/r/logs/stdout?{bad}");
        assert_eq!(events(srv.port, &q, &[]).0, 400, "{bad}");
    }
    assert_eq!(
        events(srv.port, "/api/job_runs/r/logs/combined?before=3", &[]).0,
        400
    );
}

#[test]
fn at_starts_at_a_combined_line_or_a_line_of_one_stream() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let all = thirty(&env, srv.port);
    for (i, (id, _)) in all.iter().enumerate() {
        assert_eq!(
            combined_number(id),
            i + 1,
            "the combined number of {id} is O+E"
        );
    }
    let combined = |q: &str| events(srv.port, &format!("/api/job_runs/r/logs/combined?{q}"), &[]);

    for n in [1, 2, 17, 60] {
        let (_, evs) = combined(&format!("at=L{n}"));
        assert_eq!(logs(&evs), all[n - 1..], "at=L{n}");
        assert!(ends_with_complete(&evs));
    }
    for (letter, name) in [("O", "o"), ("E", "e")] {
        for n in [1, 13, 30] {
            let (_, evs) = combined(&format!("at={letter}{n}&count=3"));
            let from = all
                .iter()
                .position(|l| l.1 == format!("{name}{n}"))
                .unwrap();
            assert_eq!(logs(&evs), all[from..(from + 3).min(60)], "at={letter}{n}");
        }
    }
    // Past the end: nothing but the end.
    for q in ["at=L61", "at=O31", "at=E99", "at=L18446744073709551615"] {
        let (status, evs) = combined(q);
        assert_eq!(status, 200, "{q}");
        assert!(logs(&evs).is_empty(), "{q}");
        assert!(ends_with_complete(&evs), "{q}");
    }
    let one = |s: &str, q: &str| events(srv.port, &format!("/api/job_runs/r/logs/{s}?{q}"), &[]);
    let ids = |evs: &[SseEvent]| logs(evs).into_iter().map(|l| l.0).collect::<Vec<_>>();
    assert_eq!(ids(&one("stdout", "at=O28").1), ["28", "29", "30"]);
    assert_eq!(ids(&one("stdout", "at=L29").1), ["29", "30"]);
    assert_eq!(ids(&one("stderr", "at=E30").1), ["30"]);
    assert_eq!(one("stdout", "at=E3").0, 400);
    assert_eq!(one("stderr", "at=O3").0, 400);
    for bad in ["at=L0", "at=X3", "at=L", "at=3", "at=L-1", "at=%C3%A93"] {
        assert_eq!(combined(bad).0, 400, "{bad}");
    }
}

#[test]
fn complete_names_the_signal_that_killed_the_job() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    for (id, sig, name) in [("k9", "KILL", "SIGKILL"), ("k15", "TERM", "SIGTERM")] {
        env.run_sh(
            id,
            &["--no-pty", "-q"],
            &format!("echo bye; kill -{sig} $$"),
        );
        let (_, evs) = events(srv.port, &format!("/api/job_runs/{id}/logs/stdout"), &[]);
        let last = evs.last().unwrap();
        assert_eq!(last.event, "complete");
        let data: Value = serde_json::from_str(&last.data).unwrap();
        assert_eq!(data["signal"], name, "{data}");
        assert_eq!(data["status"], "killed", "{data}");
        assert!(data.get("exit_code").is_some() && data["duration_ms"].is_u64());
    }
    env.run_sh("fine", &["--no-pty", "-q"], "true");
    let (_, evs) = events(srv.port, "/api/job_runs/fine/logs/stdout", &[]);
    let data: Value = serde_json::from_str(&evs.last().unwrap().data).unwrap();
    assert!(data.get("signal").is_none(), "{data}");
}

/// An event stream read as raw bytes, so fields EventSource would fold away
/// (an `id:` on a partial event) can be checked.
struct RawEvents {
    sock: TcpStream,
    body: Vec<u8>,
}

impl RawEvents {
    fn open(port: u16, path: &str) -> RawEvents {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        sock.write_all(req.as_bytes()).unwrap();
        RawEvents {
            sock,
            body: Vec::new(),
        }
    }

    /// The events so far, each as its `(field, value)` lines.
    fn events(&self) -> Vec<Vec<(String, String)>> {
        let text = String::from_utf8_lossy(&self.body);
        let Some((_, body)) = text.split_once("\r\n\r\n") else {
            return Vec::new();
        };
        body.split("\n\n")
            .filter(|b| b.starts_with("event: "))
            .map(|b| {
                b.lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(f, v)| (f.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// Reads until `cond` holds for the events (or the stream ends).
    fn wait(&mut self, what: &str, cond: impl Fn(&[Vec<(String, String)>]) -> bool) {
        let deadline = Instant::now() + LIMIT;
        let mut chunk = [0u8; 65536];
        while !cond(&self.events()) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {LIMIT:?}: {:?}",
                self.events()
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut chunk) {
                Ok(0) => panic!("closed before {what}: {:?}", self.events()),
                Ok(n) => self.body.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading events: {e}"),
            }
        }
    }
}

fn field<'a>(ev: &'a [(String, String)], name: &str) -> Option<&'a str> {
    ev.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str())
}

/// The JSON data of the partial events, in order.
fn partials(evs: &[Vec<(String, String)>]) -> Vec<Value> {
    evs.iter()
        .filter(|e| field(e, "event") == Some("partial"))
        .map(|e| serde_json::from_str(field(e, "data").unwrap()).unwrap())
        .collect()
}

fn has_partial(evs: &[Vec<(String, String)>], line: u64, display: &str) -> bool {
    partials(evs)
        .iter()
        .any(|p| p["line"] == line && p["display"] == display)
}

#[test]
fn a_line_in_progress_is_sent_as_partial_events_without_an_id() {
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    // Each line read from stdin becomes a progress frame (`\r` and the
    // text, no newline); `nl` ends the line.
    let script = r#"while IFS= read -r l; do case "$l" in nl) printf '\n';; *) printf '\r%s' "$l";; esac; done"#;
    let mut job = LiveJob::start_script(&env, "bar", &[], script);
    let base = "/api/job_runs/bar/logs";
    // Served from the job's shared events, from the follower's own readers
    // (a count keeps them), and merged.
    let mut conns = [
        RawEvents::open(srv.port, &format!("{base}/stdout?follow=true&format=json")),
        RawEvents::open(
            srv.port,
            &format!("{base}/stdout?follow=true&format=json&count=100"),
        ),
        RawEvents::open(
            srv.port,
            &format!("{base}/combined?follow=true&format=json"),
        ),
    ];
    job.say("10%");
    for c in &mut conns {
        c.wait("the first frame", |e| has_partial(e, 1, "10%"));
    }
    // Frames faster than partial events go out: the last one still comes.
    for f in ["20%", "30%", "40%"] {
        job.say(f);
    }
    for c in &mut conns {
        c.wait("the last frame", |e| has_partial(e, 1, "40%"));
    }
    job.say("nl");
    job.say("50%");
    for c in &mut conns {
        c.wait("the next line's frame", |e| has_partial(e, 2, "50%"));
    }
    job.finish();
    for (i, c) in conns.iter_mut().enumerate() {
        c.wait("the end", |e| {
            e.iter().any(|e| field(e, "event") == Some("complete"))
        });
        let evs = c.events();
        for e in &evs {
            if field(e, "event") == Some("partial") {
                assert_eq!(field(e, "id"), None, "a partial never takes an id: {e:?}");
                assert_eq!(field(e, "stream").is_some(), i == 2, "{e:?}");
            }
        }
        let ps = partials(&evs);
        let lens: Vec<u64> = ps.iter().map(|p| p["len"].as_u64().unwrap()).collect();
        // Sent only when it grew; line 1's frames, then line 2's.
        let line1: Vec<_> = ps.iter().filter(|p| p["line"] == 1).collect();
        assert!(
            line1
                .windows(2)
                .all(|w| w[0]["len"].as_u64() < w[1]["len"].as_u64()),
            "{lens:?}"
        );
        assert_eq!(line1.last().unwrap()["text"], "\r10%\r20%\r30%\r40%");
        assert_eq!(line1.last().unwrap()["truncated"], false);
        // The whole line follows as a log event after its partials, then
        // the unfinished last line when the job ends.
        let order: Vec<String> = evs
            .iter()
            .map(|e| match field(e, "event") {
                Some("partial") => {
                    let p: Value = serde_json::from_str(field(e, "data").unwrap()).unwrap();
                    format!("p{}", p["line"])
                }
                Some("log") => {
                    let l: Value = serde_json::from_str(field(e, "data").unwrap()).unwrap();
                    format!("l{}:{}", l["line"], l["display"].as_str().unwrap_or(""))
                }
                other => other.unwrap_or("").to_string(),
            })
            .collect();
        let first_log = order.iter().position(|o| o.starts_with("l1")).unwrap();
        assert_eq!(order[first_log], "l1:40%", "{order:?}");
        assert!(order[..first_log].iter().all(|o| o == "p1"), "{order:?}");
        assert!(
            order[first_log + 1..].starts_with(&["p2".to_string()]),
            "{order:?}"
        );
        assert_eq!(
            order[order.len() - 2..],
            ["l2:50%", "complete"],
            "{order:?}"
        );
    }
}
