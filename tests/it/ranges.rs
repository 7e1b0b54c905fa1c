//! Reading a log by range for a tail-first page (issue 11, points 3 and 4):
//! `after=`, `count=`, `before=`, `at=` on the event streams, the `partial`
//! event of a line in progress, and the signal in `complete`, through the
//! real `logwrap serve` over a file store.

use crate::util::serve::*;
use crate::util::*;
use serde_json::Value;

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
    for q in ["at=L61", "at=O31", "at=E99"] {
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
