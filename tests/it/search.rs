//! Searching whole logs (issue 11, point 1): `logwrap grep` across jobs from a
//! terminal, and the server's search endpoint paging through a log several
//! search blocks long with a cursor.

use crate::util::serve::*;
use crate::util::*;

#[test]
fn grep_prints_id_line_text_for_each_matching_line_of_the_chosen_jobs() {
    let env = TestEnv::new();
    assert_ok(&env.run_sh(
        "a",
        &["--no-pty", "-q"],
        "echo ok; echo 'Error: disk'; echo fine; echo 'error again' >&2",
    ));
    let failed = env.run_sh(
        "b",
        &["--no-pty", "-q"],
        "printf '10%%\\r100%% error\\n'; exit 3",
    );
    assert_fails_with(&failed, 3);

    let grep = |args: &[&str]| {
        let mut all = vec!["grep"];
        all.extend_from_slice(args);
        env.run(&all)
    };
    let o = grep(&["error", "a"]);
    assert_ok(&o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "a:2:Error: disk\na:stderr:1:error again\n"
    );
    // No id: the most recent job; the text is what a terminal showed.
    let o = grep(&["error"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "b:1:100% error\n");
    // Every failed job; regexes with -E; counts with -c.
    let o = grep(&["-E", "^E", "--all", "--status", "failed"]);
    assert_fails_with(&o, 1);
    assert!(o.stdout.is_empty());
    let o = grep(&["-E", "r+or", "--all", "-c", "--stream", "stdout"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "b:1\na:1\n");
    let o = grep(&["-s", "error", "--all", "--since-days", "1"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "b:1:100% error\na:stderr:1:error again\n"
    );
    // A bad pattern is a usage error, found before any job is read.
    let o = grep(&["-E", "(", "a"]);
    assert_fails_with(&o, 2);
    assert!(
        stderr_text(&o).contains("invalid search pattern"),
        "{}",
        stderr_text(&o)
    );
    assert_fails_with(&grep(&["x", "nope"]), 1);
}

#[test]
fn the_search_endpoint_pages_through_a_log_longer_than_many_blocks() {
    let env = TestEnv::new();
    // 60,000 lines of ~100 bytes (6 MB): every 1,000th says "needle".
    let script = "awk 'BEGIN { for (i = 1; i <= 60000; i++) \
        printf \"%s %d %s\\n\", (i % 1000 == 0 ? \"needle\" : \"hay\"), i, \
        \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" }'";
    assert_ok(&env.run_sh("big", &["--no-pty", "-q"], script));
    let srv = Serve::start(&env, &[]);
    let mut lines = Vec::new();
    let mut path = "/api/job_runs/big/search?q=NEEDLE&case=insensitive&limit=25".to_string();
    let mut pages = 0;
    loop {
        let r = get(srv.port, &path, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["total"], 60, "{path}");
        for m in v["matches"].as_array().unwrap() {
            assert_eq!(m["stream"], "stdout");
            assert_eq!(m["ranges"], serde_json::json!([[0, 6]]));
            lines.push(m["line"].as_u64().unwrap());
        }
        pages += 1;
        match v["next"].as_str() {
            Some(c) => {
                path = format!(
                    "/api/job_runs/big/search?q=NEEDLE&case=insensitive&limit=25&cursor={c}"
                )
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(lines, (1..=60).map(|i| i * 1000).collect::<Vec<u64>>());
    let r = get(srv.port, "/api/job_runs/big/search?q=", &[]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("q"));
}
