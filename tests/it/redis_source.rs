//! Reading jobs from Redis (`--source`, issue 10 point 4) against a real
//! `redis-server`: `logs`, `ls`, `show` and `serve` give for a job shipped
//! from another root ("another machine") what they give locally, follow it
//! live, and say when trimming lost lines instead of skipping them silently.

use crate::util::job::Follower;
use crate::util::redis_server::{wait_shipped, RedisServer};
use crate::util::serve::{get, LiveJob, Serve, SseConn, LIMIT};
use crate::util::*;

/// A job with every byte value, CRs, a 2.5 MiB line (pieces), 3,000 short
/// lines, stderr, and a last line without a newline.
const MIXED: &str =
    "printf 'bin:'; awk 'BEGIN{for(i=1;i<256;i++) if (i!=10) printf \"%c\", i; printf \"\\n\"}'; \
    printf 'a\\r\\nprogress 10%%\\rprogress 100%%\\r\\n'; echo e1 >&2; \
    head -c 2621440 /dev/zero | tr '\\0' y; echo; seq 1 3000; echo e2 >&2; printf 'the end'";

#[test]
fn logs_ls_and_show_read_a_shipped_job_as_they_read_it_locally() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let url = redis.url();
    assert_ok(&env.run_sh("mixed", &["--no-pty", "-q", "--ship", &url], MIXED));
    wait_shipped(&env, "mixed");
    for args in [
        &[][..],
        &["--stderr"],
        &["--tail", "3"],
        &["--since", "2990"],
        &["--stderr", "--prefix", "--since", "2"],
    ] {
        let local = env.run(&[&["logs"], args, &["mixed"]].concat());
        let remote = env.run(&[&["logs", "--source", &url], args, &["mixed"]].concat());
        assert_ok(&remote);
        assert!(
            local.stdout == remote.stdout,
            "logs {args:?}: {} bytes locally, {} from Redis; stderr {}",
            local.stdout.len(),
            remote.stdout.len(),
            stderr_text(&remote)
        );
    }
    // Merged, each stream keeps its order; across streams Redis orders by
    // entry time (an entry holds up to 64 KiB of lines), so the same lines
    // come, possibly interleaved differently than the local index says.
    let lines = |o: &std::process::Output| {
        let mut v: Vec<Vec<u8>> = o
            .stdout
            .split(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        v.sort();
        v
    };
    let local = env.run(&["logs", "--all", "--prefix", "mixed"]);
    let remote = env.run(&["logs", "--all", "--prefix", "--source", &url, "mixed"]);
    assert_ok(&remote);
    assert!(
        lines(&local) == lines(&remote),
        "logs --all --prefix: other lines"
    );
    // Another machine (another root) ships a job of its own.
    let other = TestEnv::new();
    assert_fails_with(
        &other.run_sh("elsewhere", &["--no-pty", "-q", "--ship", &url], "exit 5"),
        5,
    );
    wait_shipped(&other, "elsewhere");
    let ls = env.run(&["ls", "--json", "--source", &url]);
    assert_ok(&ls);
    let jobs: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{jobs}");
    assert!(
        ids.contains(&"mixed") && ids.contains(&"elsewhere"),
        "{ids:?}"
    );
    let show = env.run(&["show", "--json", "--source", &url, "elsewhere"]);
    assert_ok(&show);
    let meta: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(meta["exit_code"], 5);
    assert_eq!(meta["status"], "failed");
    // A job Redis does not have is "not found", exit 1, as locally.
    assert_fails_with(&env.run(&["show", "--source", &url, "nosuch"]), 1);
}

#[test]
fn logs_follow_from_redis_sees_a_job_on_another_machine_live() {
    let reader = TestEnv::new();
    let machine = TestEnv::new();
    let redis = RedisServer::start(&reader.path("redis"));
    let url = redis.url();
    let mut job = LiveJob::start(&machine, "live", &["--ship", &url]);
    wait_until(LIMIT, "the job to reach Redis", || {
        redis.meta_field("live", "started").is_some()
    });
    let mut f = Follower::start(&reader, &["-f", "--exit-status", "--source", &url, "live"]);
    job.say("first line");
    f.wait_for("first line\n");
    job.say("second line");
    f.wait_for("second line\n");
    assert!(job.finish().success());
    let (code, out, err) = f.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"first line\nsecond line\n");
}

#[test]
fn serve_from_redis_streams_a_remote_job_live_with_its_end() {
    let reader = TestEnv::new();
    let machine = TestEnv::new();
    let redis = RedisServer::start(&reader.path("redis"));
    let url = redis.url();
    let mut job = LiveJob::start(&machine, "remote", &["--ship", &url]);
    wait_until(LIMIT, "the job to reach Redis", || {
        redis.meta_field("remote", "started").is_some()
    });
    let srv = Serve::start(&reader, &["--source", &url]);
    let list = get(srv.port, "/api/job_runs", &[]).json();
    assert_eq!(list[0]["job_run_id"], "remote", "{list}");
    assert_eq!(list[0]["status"], "running", "{list}");
    let mut sse = SseConn::open(
        srv.port,
        "/api/job_runs/remote/logs/combined?follow=true",
        &[],
    );
    job.say("hello");
    let ev = sse.next().unwrap();
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("log", "hello"));
    job.say("e:on stderr");
    let ev = sse.next().unwrap();
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("log", "on stderr"));
    assert!(job.finish().success());
    let ev = sse.next().unwrap();
    assert_eq!(ev.event, "complete", "{ev:?}");
    assert!(ev.data.contains("\"succeeded\""), "{ev:?}");
    let tail = get(srv.port, "/api/job_runs/remote/log-tail?start=0", &[]).json();
    assert_eq!(tail["content"], "hello\n");
    assert_eq!(tail["is_finished"], true);
    let raw = get(srv.port, "/api/job_runs/remote/logs/stderr/raw", &[]);
    assert_eq!(raw.body, b"on stderr\n");
}

#[test]
fn lines_lost_to_trimming_are_reported_never_skipped_silently() {
    let env = TestEnv::new();
    // One entry per stream node, so MAXLEN ~ trims at once.
    let redis =
        RedisServer::start_with_options(&env.path("redis"), &["--stream-node-max-entries", "1"]);
    let url = redis.url();
    // 100 lines of 20 KB: a few lines per entry, ~35 entries.
    let script = "for i in $(seq 1 100); do printf \"%05d\" $i; head -c 20000 /dev/zero | tr '\\0' z; echo; done";
    assert_ok(&env.run_sh(
        "trimmed",
        &["--no-pty", "-q", "--ship", &url, "--ship-maxlen", "2"],
        script,
    ));
    wait_shipped(&env, "trimmed");
    let entries = redis.log("trimmed");
    assert!(entries.len() < 10, "not trimmed: {} entries", entries.len());
    let out = env.run(&["logs", "--source", &url, "trimmed"]);
    assert_ok(&out);
    let err = stderr_text(&out);
    assert!(err.contains("warning: lines 1-"), "{err}");
    assert!(err.contains("trimmed"), "{err}");
    // What is shown is the log's tail from a line start, byte for byte.
    let log = env.stdout_log("trimmed");
    assert!(!out.stdout.is_empty() && out.stdout.len() < log.len());
    assert!(log.ends_with(&out.stdout));
    assert_eq!(log[log.len() - out.stdout.len() - 1], b'\n');
    let srv = Serve::start(&env, &["--source", &url]);
    let mut sse = SseConn::open(srv.port, "/api/job_runs/trimmed/logs/stdout", &[]);
    let ev = sse.next().unwrap();
    assert_eq!(ev.event, "gap", "{ev:?}");
    let gap: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(gap["from"], 1);
    let first = sse.next().unwrap();
    assert_eq!(first.id, (gap["to"].as_u64().unwrap() + 1).to_string());
}

#[test]
fn raw_and_log_tail_answer_trimmed_bytes_with_a_notice_pointing_at_the_origin() {
    let env = TestEnv::new();
    let redis =
        RedisServer::start_with_options(&env.path("redis"), &["--stream-node-max-entries", "1"]);
    let url = redis.url();
    let script = "for i in $(seq 1 100); do printf \"%05d\" $i; head -c 20000 /dev/zero | tr '\\0' z; echo; done";
    // --listen gives the job a tail_url: where its full log is.
    assert_ok(&env.run_sh(
        "cut",
        &[
            "--no-pty",
            "-q",
            "--listen",
            "127.0.0.1:0",
            "--ship",
            &url,
            "--ship-maxlen",
            "2",
        ],
        script,
    ));
    wait_shipped(&env, "cut");
    let tail_url = env.meta("cut")["tail_url"].as_str().unwrap().to_string();
    let log = env.stdout_log("cut");
    let srv = Serve::start(&env, &["--source", &url]);

    // The whole raw log: the notice in place of the trimmed bytes, then the
    // bytes still held, exactly.
    let raw = get(srv.port, "/api/job_runs/cut/logs/stdout/raw", &[]);
    assert_eq!(raw.status, 200, "{}", raw.head);
    let nl = raw.body.iter().position(|b| *b == b'\n').unwrap();
    let notice = String::from_utf8_lossy(&raw.body[..nl]).into_owned();
    let kept = &raw.body[nl + 1..];
    assert!(!kept.is_empty() && kept.len() < log.len(), "{notice}");
    assert!(log.ends_with(kept));
    let first = log.len() - kept.len();
    assert!(
        notice.starts_with(&format!("[logwrap: bytes 0-{} (", first - 1)),
        "{notice}"
    );
    assert!(notice.contains("trimmed by --ship-maxlen"), "{notice}");
    assert!(notice.contains(&tail_url), "{notice} lacks {tail_url}");

    // A range starting in the trimmed bytes cannot be served: 416 and the
    // notice; one from the first byte held is served as asked.
    let part = get(
        srv.port,
        "/api/job_runs/cut/logs/stdout/raw",
        &[("Range", "bytes=0-99")],
    );
    assert_eq!(part.status, 416, "{}", part.head);
    assert!(String::from_utf8_lossy(&part.body).contains(&tail_url));
    let from = format!("bytes={first}-");
    let part = get(
        srv.port,
        "/api/job_runs/cut/logs/stdout/raw",
        &[("Range", &from)],
    );
    assert_eq!(part.status, 206, "{}", part.head);
    assert_eq!(part.body, kept);

    // Polling from 0: the notice as content and the first byte held next.
    let tail = get(srv.port, "/api/job_runs/cut/log-tail?start=0", &[]);
    assert_eq!(tail.status, 200, "{}", tail.head);
    let v: serde_json::Value = serde_json::from_slice(&tail.body).unwrap();
    assert_eq!(v["new_size"], first as u64, "{v}");
    assert_eq!(v["content"].as_str().unwrap(), format!("{notice}\n"));
    let next = get(
        srv.port,
        &format!("/api/job_runs/cut/log-tail?start={first}"),
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&next.body).unwrap();
    let content = v["content"].as_str().unwrap().as_bytes();
    assert!(!content.is_empty() && kept.starts_with(content), "{v}");
}

/// Sets `field` of job `id`'s meta hash, as a buggy or hostile machine of the
/// fleet could.
fn forge_meta(redis: &RedisServer, id: &str, field: &str, value: &[u8]) {
    redis::cmd("HSET")
        .arg(format!("logwrap:{{{id}}}:meta"))
        .arg(field)
        .arg(value)
        .query::<()>(&mut redis.conn())
        .unwrap();
}

#[test]
fn forged_shipped_marks_neither_hang_nor_crash_nor_read_as_an_empty_log() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let url = redis.url();
    assert_ok(&env.run_sh("forged", &["--no-pty", "-q", "--ship", &url], "seq 1 5"));
    wait_shipped(&env, "forged");

    // A mark of 2^64-1 bytes and lines: the search for a byte ends, the
    // bytes held are printed and the rest is said to be missing.
    let max = "18446744073709551615 18446744073709551615";
    forge_meta(&redis, "forged", "stdout_end", max.as_bytes());
    let out = env.run_within(LIMIT, &["logs", "--source", &url, "forged"]);
    assert!(out.stdout.starts_with(b"1\n2\n3\n4\n5\n"), "{out:?}");
    // The server answers, and goes on answering others.
    let srv = Serve::start(&env, &["--source", &url]);
    for path in [
        "/api/job_runs/forged/logs/stdout/raw",
        "/api/job_runs/forged/log-tail?start=0",
    ] {
        let r = get(srv.port, path, &[]);
        assert!(r.status > 0, "{path}: {}", r.head);
    }
    let list = get(srv.port, "/api/job_runs", &[]).json();
    assert_eq!(list[0]["job_run_id"], "forged", "{list}");

    // A mark of the right size whose next line is 0: no line count below
    // zero.
    forge_meta(&redis, "forged", "stdout_end", b"10 0");
    let out = env.run_within(LIMIT, &["logs", "--tail", "2", "--source", &url, "forged"]);
    assert_ok(&out);
    assert_eq!(out.stdout, b"4\n5\n");

    // A mark that is not two numbers is an error naming the job and the
    // field, not an empty log.
    forge_meta(&redis, "forged", "stdout_end", b"-1 -1");
    let out = env.run_within(LIMIT, &["logs", "--source", &url, "forged"]);
    assert_fails_with(&out, 1);
    let err = stderr_text(&out);
    assert!(
        err.contains("forged") && err.contains("stdout_end") && err.contains("-1 -1"),
        "{err}"
    );
}

/// Connections the Redis server has accepted since it started.
fn connections_received(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
fn a_watched_key_that_is_not_a_stream_neither_storms_redis_nor_blinds_the_other_jobs() {
    let reader = TestEnv::new();
    let machine = TestEnv::new();
    let redis = RedisServer::start(&reader.path("redis"));
    let url = redis.url();
    let mut good = LiveJob::start(&machine, "good", &["--ship", &url]);
    let bad = LiveJob::start(&machine, "bad", &["--ship", &url]);
    wait_until(LIMIT, "the jobs to reach Redis", || {
        redis.meta_field("good", "started").is_some()
            && redis.meta_field("bad", "started").is_some()
    });
    let srv = Serve::start(&reader, &["--source", &url]);
    // The server's one watcher reads the streams of both jobs.
    let _bad_follower = SseConn::open(srv.port, "/api/job_runs/bad/logs/stdout?follow=true", &[]);
    let mut sse = SseConn::open(srv.port, "/api/job_runs/good/logs/stdout?follow=true", &[]);
    good.say("before");
    assert_eq!(sse.next().unwrap().data, "before");

    // A machine of the fleet replaces a stream of the other job by a string.
    let mut c = redis.conn();
    redis::cmd("DEL")
        .arg("logwrap:{bad}:stderr")
        .query::<()>(&mut c)
        .unwrap();
    redis::cmd("SET")
        .arg("logwrap:{bad}:stderr")
        .arg("x")
        .query::<()>(&mut c)
        .unwrap();
    let before = connections_received(&redis);
    let start = std::time::Instant::now();
    // For a second, lines of the good job still come as they are written
    // (the watcher, not the server's once-a-second re-check, says so).
    let mut n = 0;
    while start.elapsed() < std::time::Duration::from_secs(1) {
        n += 1;
        let line = format!("line {n}");
        let sent = std::time::Instant::now();
        good.say(&line);
        assert_eq!(sse.next().unwrap().data, line);
        let late = sent.elapsed();
        assert!(
            late < std::time::Duration::from_millis(700),
            "{line} came {late:?} late"
        );
    }
    // Reading the broken key is retried now and then, not in a hot loop.
    let made = connections_received(&redis) - before;
    assert!(
        made < 10,
        "{made} connections to Redis in {:?}",
        start.elapsed()
    );
    assert!(good.finish().success());
    assert!(bad.finish().success());
}

#[test]
fn a_key_name_not_utf8_or_a_meta_key_not_a_hash_spoils_only_itself_in_the_list() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let url = redis.url();
    assert_ok(&env.run_sh("fine", &["--no-pty", "-q", "--ship", &url], "echo fine"));
    wait_shipped(&env, "fine");
    let mut c = redis.conn();
    redis::cmd("HSET")
        .arg(&b"logwrap:{bad\xff}:meta"[..])
        .arg("json")
        .arg("{}")
        .query::<()>(&mut c)
        .unwrap();
    redis::cmd("SET")
        .arg("logwrap:{x}:meta")
        .arg("hello")
        .query::<()>(&mut c)
        .unwrap();

    let ls = env.run_within(LIMIT, &["ls", "--json", "--source", &url]);
    assert_ok(&ls);
    let jobs: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let status = |id: &str| {
        jobs.as_array()
            .unwrap()
            .iter()
            .find(|j| j["job_run_id"] == id)
            .map(|j| j["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("fine").as_deref(), Some("succeeded"), "{jobs}");
    assert_eq!(status("x").as_deref(), Some("damaged"), "{jobs}");
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");
    assert!(
        stderr_text(&ls).contains("job x is damaged"),
        "{}",
        stderr_text(&ls)
    );

    // `logs` without an id takes the newest job it can read.
    let logs = env.run_within(LIMIT, &["logs", "--source", &url]);
    assert_ok(&logs);
    assert_eq!(logs.stdout, b"fine\n");

    let srv = Serve::start(&env, &["--source", &url]);
    let list = get(srv.port, "/api/job_runs", &[]);
    assert_eq!(list.status, 200, "{}", list.head);
    assert!(list.text().contains("\"fine\""), "{}", list.text());
}

/// How many times `logs` said lines or bytes were trimmed away.
fn trim_warnings(err: &str) -> usize {
    err.matches("are no longer in the source (trimmed by --ship-maxlen)")
        .count()
}

#[test]
fn merged_output_of_a_trimmed_job_says_what_is_missing() {
    let env = TestEnv::new();
    let redis =
        RedisServer::start_with_options(&env.path("redis"), &["--stream-node-max-entries", "4"]);
    let url = redis.url();
    assert_ok(&env.run_sh(
        "big",
        &["--no-pty", "-q", "--ship", &url, "--ship-maxlen", "10"],
        "seq 1 300000",
    ));
    wait_shipped(&env, "big");
    let first = redis.xrange("logwrap:{big}:stdout")[0].0.clone();
    assert!(!first.starts_with("1-"), "not trimmed: first entry {first}");
    for mode in [
        &["--all"][..],
        &["--all", "--prefix"],
        &["--all", "--timestamps"],
    ] {
        let out = env.run_within(
            LIMIT,
            &[&["logs", "--source", &url], mode, &["big"]].concat(),
        );
        assert_ok(&out);
        let err = stderr_text(&out);
        assert!(err.contains("warning: lines 1-"), "{mode:?}: {err}");
        assert_eq!(trim_warnings(&err), 1, "{mode:?}: {err}");
    }
}

#[test]
fn a_follow_that_falls_behind_trimming_says_what_it_missed_once_and_goes_on() {
    let reader = TestEnv::new();
    let machine = TestEnv::new();
    let redis =
        RedisServer::start_with_options(&reader.path("redis"), &["--stream-node-max-entries", "4"]);
    let url = redis.url();
    let script = r#"while IFS= read -r l; do case "$l" in burst) seq 1 300000;; *) printf '%s\n' "$l";; esac; done"#;
    let mut job = LiveJob::start_script(
        &machine,
        "far",
        &["--ship", &url, "--ship-maxlen", "10"],
        script,
    );
    wait_until(LIMIT, "the job to reach Redis", || {
        redis.meta_field("far", "started").is_some()
    });
    let modes: [&[&str]; 3] = [&[], &["--all"], &["--prefix"]];
    let mut followers: Vec<Follower> = modes
        .iter()
        .map(|m| Follower::start(&reader, &[&["-f", "--source", &url], *m, &["far"]].concat()))
        .collect();
    job.say("first");
    for f in &mut followers {
        f.wait_for("first\n");
    }
    // The followers stand still while the job writes far more than Redis
    // keeps; when they go on, the lines after "first" are gone.
    let pids: Vec<_> = followers
        .iter()
        .map(|f| nix::unistd::Pid::from_raw(f.child.id() as i32))
        .collect();
    for p in &pids {
        nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGSTOP).unwrap();
    }
    job.say("burst");
    job.say("last");
    wait_until(LIMIT, "the burst to be shipped and trimmed", || {
        redis
            .meta_field("far", "stdout_end")
            .is_some_and(|m| m.ends_with(" 300003"))
    });
    let first = redis.xrange("logwrap:{far}:stdout")[0].0.clone();
    assert!(!first.starts_with("1-"), "not trimmed: first entry {first}");
    for p in &pids {
        nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGCONT).unwrap();
    }
    assert!(job.finish().success());
    for (mode, f) in modes.iter().zip(followers) {
        let (code, out, err) = f.finish();
        assert_eq!(code, 0, "{mode:?}: {err}");
        assert!(out.ends_with(b"last\n"), "{mode:?}: {err}");
        // Plain output copies bytes: it says which bytes it missed.
        let what = if mode.is_empty() {
            "bytes 6-"
        } else {
            "lines 2-"
        };
        assert!(err.contains(&format!("warning: {what}")), "{mode:?}: {err}");
        assert_eq!(trim_warnings(&err), 1, "{mode:?}: {err}");
    }
}

#[test]
fn a_follower_stopped_and_continued_goes_on_following() {
    let reader = TestEnv::new();
    let machine = TestEnv::new();
    let redis = RedisServer::start(&reader.path("redis"));
    let url = redis.url();
    let mut job = LiveJob::start(&machine, "paused", &["--ship", &url]);
    wait_until(LIMIT, "the job to reach Redis", || {
        redis.meta_field("paused", "started").is_some()
    });
    let mut f = Follower::start(&reader, &["-f", "--source", &url, "paused"]);
    let pid = nix::unistd::Pid::from_raw(f.child.id() as i32);
    // Ctrl-Z and `fg`, again and again: a read of Redis in progress then
    // fails with EINTR, which is not the job being deleted.
    for i in 0..20 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        job.say(&format!("line {i}"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        f.wait_for(&format!("line {i}\n"));
    }
    assert!(job.finish().success());
    let (code, _, err) = f.finish();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_job_deleted_from_redis_ends_its_followers_on_the_server() {
    let reader = TestEnv::new();
    let machine = TestEnv::new();
    let redis = RedisServer::start(&reader.path("redis"));
    let url = redis.url();
    let mut job = LiveJob::start(&machine, "doomed", &["--ship", &url]);
    wait_until(LIMIT, "the job to reach Redis", || {
        redis.meta_field("doomed", "started").is_some()
    });
    let srv = Serve::start(&reader, &["--source", &url]);
    let path = "/api/job_runs/doomed/logs/stdout?follow=true";
    let mut sse = SseConn::open(srv.port, path, &[]);
    job.say("hello");
    assert_eq!(sse.next().unwrap().data, "hello");
    redis::cmd("DEL")
        .arg("logwrap:{doomed}:meta")
        .arg("logwrap:{doomed}:alive")
        .arg("logwrap:{doomed}:stdout")
        .arg("logwrap:{doomed}:stderr")
        .query::<()>(&mut redis.conn())
        .unwrap();
    // The stream ends (no more heartbeats for ever); a reconnect is told the
    // job is not there.
    assert_eq!(sse.next(), None);
    assert_eq!(get(srv.port, path, &[]).status, 404);
    assert!(job.finish().success());
}

#[test]
fn metadata_that_names_another_job_or_is_oversized_lists_as_damaged() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let url = redis.url();
    assert_ok(&env.run_sh("j1", &["--no-pty", "-q", "--ship", &url], "echo real"));
    wait_shipped(&env, "j1");
    let real = redis.meta_field("j1", "json").unwrap();
    // Another key claims to be j1.
    forge_meta(&redis, "esc", "json", real.as_bytes());
    // A valid document over the 16 MiB cap of local metadata.
    let mut big: serde_json::Value = serde_json::from_str(&real).unwrap();
    big["job_run_id"] = "huge".into();
    big["command"] = serde_json::json!(["x".repeat(17 << 20)]);
    forge_meta(&redis, "huge", "json", big.to_string().as_bytes());

    let ls = env.run_within(LIMIT, &["ls", "--json", "--source", &url]);
    assert_ok(&ls);
    let jobs: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let jobs = jobs.as_array().unwrap();
    // Ids and statuses only: the huge document is no message.
    let listed: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| {
            (
                j["job_run_id"].as_str().unwrap_or(""),
                j["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let find = |id: &str| -> Vec<&serde_json::Value> {
        jobs.iter().filter(|j| j["job_run_id"] == id).collect()
    };
    assert_eq!(find("j1").len(), 1, "{listed:?}");
    assert_eq!(find("j1")[0]["status"], "succeeded");
    assert_eq!(find("esc").len(), 1, "{listed:?}");
    assert_eq!(find("esc")[0]["status"], "damaged", "{listed:?}");
    assert!(find("esc")[0]["error"].as_str().unwrap().contains("\"j1\""));
    assert_eq!(find("huge").len(), 1, "{listed:?}");
    assert_eq!(find("huge")[0]["status"], "damaged", "{listed:?}");
    assert!(find("huge")[0]["error"].as_str().unwrap().contains("bytes"));

    for id in ["esc", "huge"] {
        let show = env.run_within(LIMIT, &["show", "--source", &url, id]);
        assert_fails_with(&show, 1);
        assert!(
            stderr_text(&show).contains("damaged"),
            "{}",
            stderr_text(&show)
        );
    }
    let srv = Serve::start(&env, &["--source", &url]);
    let page = get(srv.port, "/api/job_runs/esc", &[]);
    assert!(
        !page.text().contains("\"job_run_id\":\"j1\""),
        "{}",
        page.head
    );
}

#[test]
fn a_fleet_over_the_listing_cap_lists_its_newest_jobs_and_says_so() {
    let env = TestEnv::new();
    let redis = RedisServer::start(&env.path("redis"));
    let url = redis.url();
    // 100,001 older jobs (ids that sort first) still being created...
    let mut c = redis.conn();
    for chunk in 0..11 {
        let mut p = redis::pipe();
        for n in chunk * 10_000..((chunk + 1) * 10_000).min(100_001) {
            p.cmd("HSET")
                .arg(format!("logwrap:{{a{n:06}}}:meta"))
                .arg("host")
                .arg("x")
                .ignore();
        }
        p.query::<()>(&mut c).unwrap();
    }
    // ...and the newest.
    assert_ok(&env.run_sh("zz-new", &["--no-pty", "-q", "--ship", &url], "true"));
    wait_shipped(&env, "zz-new");
    let ls = env.run_within(LIMIT, &["ls", "--ids", "--source", &url]);
    assert_ok(&ls);
    assert_eq!(ls.stdout, b"zz-new\n");
    let err = stderr_text(&ls);
    assert!(err.contains("more than 100000 jobs"), "{err}");
    // The server's list says it too.
    let srv = Serve::start(&env, &["--source", &url]);
    let list = get(srv.port, "/api/job_runs?limit=1", &[]);
    assert_eq!(list.status, 200, "{}", list.head);
    let cut = list.header("x-list-cut").unwrap_or_default();
    assert!(cut.contains("more than 100000 jobs"), "{}", list.head);
}
