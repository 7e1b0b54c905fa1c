//! The live job list (issue 11, point 5): sizes and line counts of running
//! jobs in the API, `ls --json` and `show`; the job list's paging and search;
//! the job events stream (`/api/events`). The page itself is tested in
//! `serve_browser.rs`.

use crate::util::serve::*;
use crate::util::*;
use serde_json::Value;

/// The `stdout`/`stderr` counts of a metadata document, as `(bytes, lines)`.
fn counts(m: &Value) -> [(u64, u64); 2] {
    ["stdout", "stderr"].map(|s| {
        (
            m[s]["bytes"].as_u64().unwrap_or(u64::MAX),
            m[s]["lines"].as_u64().unwrap_or(u64::MAX),
        )
    })
}

#[test]
fn a_running_job_shows_its_sizes_and_lines_as_they_are_now() {
    let env = TestEnv::new();
    // Two whole lines and one in progress on stdout, one line on stderr, then
    // the job waits on its stdin.
    let job = LiveJob::start_script(
        &env,
        "live",
        &[],
        "printf 'one\\ntwo\\nthr'; echo oops >&2; read x || true",
    );
    wait_until(LIMIT, "the output to be written", || {
        env.stdout_log("live").len() == 11 && env.stderr_log("live").len() == 5
    });
    let want = [(11, 3), (5, 1)];
    // metadata.json itself only gets the counts when the job ends.
    assert_eq!(counts(&env.meta("live")), [(0, 0), (0, 0)]);

    let srv = Serve::start(&env, &[]);
    let one = get(srv.port, "/api/job_runs/live", &[]).json();
    assert_eq!(one["status"], "running");
    assert_eq!(counts(&one), want, "GET /api/job_runs/live");
    let list = get(srv.port, "/api/job_runs", &[]).json();
    assert_eq!(counts(&list[0]), want, "GET /api/job_runs");

    let ls = env.run(&["ls", "--json"]);
    assert_ok(&ls);
    let ls: Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(counts(&ls[0]), want, "ls --json");

    let show = env.run(&["show", "live", "--json"]);
    assert_ok(&show);
    let show: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(counts(&show), want, "show --json");
    let text = env.run(&["show", "live"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("11 bytes (11B), 3 lines"),
        "show gives the live counts: {text}"
    );

    assert!(job.finish().success());
    let done = get(srv.port, "/api/job_runs/live", &[]).json();
    assert_eq!(counts(&done), want, "the final counts agree");
}
