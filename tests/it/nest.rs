//! Nested jobs (issue 13): a logwrap inside a logwrapped job writing to the
//! same root runs as a child `<parent>.<n>`, recorded in its metadata, shown
//! under its parent by `ls`, listed by `show` and by the API.

use crate::util::serve::{get, Serve};
use crate::util::*;

/// Wrappers started at once at each level below the top.
const FAN_OUT: usize = 3;

/// Runs three levels of jobs under `top`: the top job starts [`FAN_OUT`]
/// wrappers at once, each of which starts [`FAN_OUT`] more at once; every
/// inner wrapper inherits the id and directory of the job it runs in.
fn run_three_levels(env: &TestEnv, top: &str, mode: &[&str]) {
    let mode = mode.join(" ");
    // Each level's script is handed down in a variable, so no quoting nests.
    let spawn_all = |var: &str| {
        format!("for i in $(seq {FAN_OUT}); do \"$LW\" {mode} -- sh -c \"${var}\" & done; wait")
    };
    let o = env
        .cmd()
        .env("LW", BIN)
        .env("LEAF", "echo \"leaf $DATABUILD_JOB_RUN_ID\"")
        .env(
            "MID",
            format!("{}; echo \"mid $DATABUILD_JOB_RUN_ID\"", spawn_all("LEAF")),
        )
        .args(["--job-run-id", top])
        .args(mode.split_whitespace())
        .args(["--", "sh", "-c", &spawn_all("MID")])
        .output()
        .unwrap();
    assert_ok(&o);
}

/// The ids `run_three_levels` makes under `top`, parents before children.
fn expected_ids(top: &str) -> Vec<(String, Option<String>)> {
    let mut ids = vec![(top.to_string(), None)];
    for i in 1..=FAN_OUT {
        let mid = format!("{top}.{i}");
        ids.push((mid.clone(), Some(top.to_string())));
        for j in 1..=FAN_OUT {
            ids.push((format!("{mid}.{j}"), Some(mid.clone())));
        }
    }
    ids
}

fn check_three_levels(mode: &[&str]) {
    let env = TestEnv::new();
    run_three_levels(&env, "top", mode);
    let want = expected_ids("top");

    let o = env.run(&["ls", "--ids"]);
    assert_ok(&o);
    let mut listed: Vec<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    listed.sort();
    let mut all: Vec<String> = want.iter().map(|(id, _)| id.clone()).collect();
    all.sort();
    assert_eq!(listed, all, "every wrapper got its own id, none failed");

    for (id, parent) in &want {
        let meta = env.meta(id);
        assert_eq!(meta["status"], "succeeded", "{id}: {meta}");
        assert_eq!(meta["pty"], mode.is_empty(), "{id}");
        match parent {
            Some(p) => assert_eq!(meta["parent_job_run_id"], p.as_str(), "{id}"),
            None => assert!(meta["parent_job_run_id"].is_null(), "{id}"),
        }
        let depth = id.matches('.').count();
        if depth == 2 {
            // The leaf saw its own id, not its parent's.
            assert_eq!(env.stdout_log(id), format!("leaf {id}\n").into_bytes());
        }
        if depth == 1 {
            assert!(
                contains(&env.stdout_log(id), &format!("mid {id}\n")),
                "{id}"
            );
        }
    }

    // `ls`: each child below its parent, indented one step per level.
    let o = env.run(&["ls"]);
    assert_ok(&o);
    let table = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<&str> = table.lines().skip(1).collect();
    let row_of = |id: &str| {
        rows.iter()
            .position(|r| r.trim_start().split(' ').next() == Some(id))
            .unwrap_or_else(|| panic!("{id} not in\n{table}"))
    };
    for (id, parent) in &want {
        let row = rows[row_of(id)];
        let indent = row.len() - row.trim_start().len();
        assert_eq!(indent, 2 * id.matches('.').count(), "{id} in\n{table}");
        if let Some(p) = parent {
            let (at, parent_at) = (row_of(id), row_of(p));
            assert!(at > parent_at, "{id} below {p}:\n{table}");
            // Nothing less deep than the child between it and its parent.
            for between in &rows[parent_at + 1..at] {
                let depth = between.len() - between.trim_start().len();
                assert!(depth > 2 * p.matches('.').count(), "{table}");
            }
        }
    }

    // `show` lists a job's children in the order they started.
    let o = env.run(&["show", "top"]);
    assert_ok(&o);
    let shown = String::from_utf8(o.stdout).unwrap();
    assert!(
        shown.contains("children (3):\n  top.1\n  top.2\n  top.3\n"),
        "{shown}"
    );
    let o = env.run(&["show", "top.2"]);
    let shown = String::from_utf8(o.stdout).unwrap();
    assert!(shown.contains("parent:"), "{shown}");
    assert!(shown.contains("  top.2.3\n"), "{shown}");

    // The API: a job's metadata names its children.
    let srv = Serve::start(&env, &[]);
    for (id, _) in &want {
        let doc = get(srv.port, &format!("/api/job_runs/{id}"), &[]).json();
        let kids: Vec<String> = want
            .iter()
            .filter(|(_, p)| p.as_deref() == Some(id.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(doc["children"], serde_json::json!(kids), "{id}");
        assert_eq!(doc["job_run_id"], id.as_str());
    }
}

#[test]
fn three_levels_of_parallel_nested_wrappers_in_pty_mode() {
    check_three_levels(&[]);
}

#[test]
fn three_levels_of_parallel_nested_wrappers_in_pipe_mode() {
    check_three_levels(&["--no-pty"]);
}

#[test]
fn an_explicit_id_inside_a_job_keeps_its_meaning() {
    let env = TestEnv::new();
    // Inside job `outer`, asking for `outer` by name is still refused, and a
    // new name is used as given, with no parent.
    let o = env
        .cmd()
        .env("LW", BIN)
        .args(["--job-run-id", "outer", "--no-pty", "--", "sh", "-c"])
        .arg(
            "\"$LW\" --job-run-id outer -- true; echo \"same: $?\"; \
             \"$LW\" --job-run-id named -- true; echo \"named: $?\"",
        )
        .output()
        .unwrap();
    assert_ok(&o);
    let out = env.stdout_log("outer");
    assert!(
        contains(&out, "same: 125\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(contains(&out, "named: 0\n"));
    assert!(env.meta("named")["parent_job_run_id"].is_null());
    assert!(!env.job_dir("outer.1").exists());
}

#[test]
fn an_inherited_id_of_a_finished_job_is_refused_as_before() {
    let env = TestEnv::new();
    let o = env.run_sh("done", &[], "true");
    assert_ok(&o);
    // The same variables a job had, replayed after it ended: not "inside" it.
    let o = env
        .cmd()
        .env("DATABUILD_JOB_RUN_ID", "done")
        .env("DATABUILD_JOB_LOG_DIR", env.job_dir("done"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_fails_with(&o, 125);
    assert!(
        stderr_text(&o).contains("already used"),
        "{}",
        stderr_text(&o)
    );
    assert!(!env.job_dir("done.1").exists());
}

#[test]
fn a_child_id_too_long_is_refused_with_a_clear_message() {
    let env = TestEnv::new();
    let long = "x".repeat(127);
    let o = env
        .cmd()
        .env("LW", BIN)
        .args(["--job-run-id", &long, "--no-pty", "--", "sh", "-c"])
        .arg("\"$LW\" -- true; echo \"inner: $?\"")
        .output()
        .unwrap();
    assert_ok(&o);
    let out = env.stdout_log(&long);
    assert!(contains(&out, "inner: 125\n"));
    assert!(
        contains(&env.stderr_log(&long), "--job-run-id"),
        "{}",
        String::from_utf8_lossy(&env.stderr_log(&long))
    );
}

/// A child's id is never handed out again inside the same parent, also after
/// gc (or the wrapper's own housekeeping) deleted that child.
#[test]
fn a_child_id_is_not_reused_after_gc_deleted_the_child() {
    let env = TestEnv::new();
    let o = env
        .cmd()
        .env("LW", BIN)
        .args(["--job-run-id", "P", "--no-pty", "--", "sh", "-c"])
        .arg(
            "\"$LW\" -q -- echo step-one; \"$LW\" gc --ttl-days 0 >/dev/null; \
             \"$LW\" -q -- echo step-two",
        )
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(!env.job_dir("P.1").exists(), "step one was collected");
    assert_eq!(env.stdout_log("P.2"), b"step-two\n");
    assert_eq!(env.meta("P.2")["parent_job_run_id"], "P");
}
