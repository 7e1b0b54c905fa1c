//! Sections and annotations (issue 11, point 2): the CI dialects a job prints
//! are kept raw in the log, and GitHub-style annotations land in metadata and
//! the job's API document with the line they came from.

use crate::util::serve::*;
use crate::util::*;

#[test]
fn annotations_land_in_metadata_and_the_api_with_their_log_lines() {
    let env = TestEnv::new();
    let script = "echo '::group::Build'; echo compiling; \
        echo '::error file=src/main.rs,line=7::expected one of `;`' >&2; \
        echo '::endgroup::'; echo '::warning::slow disk'; exit 1";
    let o = env.run_sh("ann", &["--no-pty", "-q"], script);
    assert_fails_with(&o, 1);
    // The log keeps the raw lines.
    assert!(contains(
        &env.stderr_log("ann"),
        "::error file=src/main.rs,line=7::"
    ));
    let meta = env.meta("ann");
    let want = serde_json::json!([
        {"level": "error", "message": "expected one of `;`", "file": "src/main.rs",
         "line": 7, "stream": "stderr", "log_line": 1},
        {"level": "warning", "message": "slow disk", "file": null, "line": null,
         "stream": "stdout", "log_line": 4},
    ]);
    // Streams are read in any order: compare as sets by stream.
    let mut got = meta["annotations"].as_array().unwrap().clone();
    got.sort_by_key(|a| a["stream"].as_str().unwrap().to_string());
    let mut want = want.as_array().unwrap().clone();
    want.sort_by_key(|a| a["stream"].as_str().unwrap().to_string());
    assert_eq!(got, want);

    let srv = Serve::start(&env, &[]);
    let doc = get(srv.port, "/api/job_runs/ann", &[]).json();
    assert_eq!(doc["annotations"].as_array().unwrap().len(), 2);
}

#[test]
fn annotations_are_capped_and_the_rest_counted() {
    let env = TestEnv::new();
    let o = env.run_sh(
        "many",
        &["--no-pty", "-q"],
        "i=0; while [ $i -lt 250 ]; do echo \"::notice::n$i\"; i=$((i+1)); done",
    );
    assert_ok(&o);
    let meta = env.meta("many");
    assert_eq!(meta["annotations"].as_array().unwrap().len(), 200);
    assert_eq!(meta["annotations_dropped"], 50);
    assert_eq!(meta["annotations"][199]["log_line"], 200);
}
