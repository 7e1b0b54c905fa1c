//! Secret redaction (issue 12): values from secret-looking environment
//! variables, `--redact-file` and `DATABUILD_REDACT:` markers become
//! `[REDACTED]` in every sink (logs, index, metadata, terminal copy), across
//! reads and encodings, and output stays byte-exact when there is nothing to hide.

use crate::util::job::{wait_child, Gate};
use crate::util::*;
use std::process::{Output, Stdio};
use std::time::Duration;

/// Both output modes, as extra wrapper options.
const MODES: [&[&str]; 2] = [&[], &["--no-pty"]];

/// A secret in the job's environment, under a name the defaults match.
const TOKEN: &str = "ghp_Zx9kQ2vLmN4pR7sT";

/// Runs `sh -c script` as job `id` with `GITHUB_TOKEN` set to [`TOKEN`].
fn run_with_token(env: &TestEnv, id: &str, extra: &[&str], script: &str) -> Output {
    let mut args = vec!["--job-run-id", id];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    env.cmd()
        .env("GITHUB_TOKEN", TOKEN)
        .args(&args)
        .output()
        .unwrap()
}

/// Every file of the job's directory, concatenated (logs, index, metadata).
fn all_job_files(env: &TestEnv, id: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(env.job_dir(id)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}

#[test]
fn an_environment_secret_is_hidden_in_every_sink() {
    for (n, mode) in MODES.iter().enumerate() {
        let env = TestEnv::new();
        let id = format!("env-secret-{n}");
        let script = r#"echo "token is $GITHUB_TOKEN"; echo "err $GITHUB_TOKEN" >&2;
            echo "DATABUILD_MISSING_DEPS_JSON: {\"t\": \"$GITHUB_TOKEN\"}"; echo "$1""#;
        let mut args: Vec<&str> = mode.to_vec();
        args.extend_from_slice(&["--job-run-id", &id, "--", "sh", "-c", script, "sh", TOKEN]);
        let o = env
            .cmd()
            .env("GITHUB_TOKEN", TOKEN)
            .args(&args)
            .output()
            .unwrap();
        assert_ok(&o);
        let out = env.stdout_log(&id);
        assert!(
            contains(&out, "token is [REDACTED]\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(contains(&env.stderr_log(&id), "err [REDACTED]\n"));
        // The terminal copy, the index, metadata.json (command line, markers).
        assert!(
            !contains(&o.stdout, TOKEN),
            "terminal copy: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(
            !contains(&o.stderr, TOKEN),
            "terminal copy: {}",
            stderr_text(&o)
        );
        assert!(!contains(&all_job_files(&env, &id), TOKEN));
        let meta = env.meta(&id);
        assert_eq!(meta["command"][4], "[REDACTED]", "{meta}");
        assert_eq!(
            meta["missing_deps"][0]["value"]["t"], "[REDACTED]",
            "{meta}"
        );
        assert!(meta["redactions"].as_u64().unwrap() >= 5, "{meta}");
        // Lines keep their numbers.
        assert_eq!(meta["stdout"]["lines"], 3);
    }
}

#[test]
fn a_secret_split_across_reads_or_encoded_is_caught() {
    let env = TestEnv::new();
    // The halves are separate writes, so separate reads; base64 at every
    // alignment; URL-encoded; at the very end of the output without a newline.
    let half = TOKEN.len() / 2;
    let script = format!(
        "printf '%s' '{a}'; sleep 0.02; printf '%s\\n' '{b}';
         for p in '' x xy; do printf '%s' \"user$p:$GITHUB_TOKEN@h\" | base64; done;
         printf '%s\\n' 'q=pa%2Fss%2Bw%22rd' '{{\"p\": \"pa/ss+w\\\"rd\"}}';
         printf 'last %s' \"$GITHUB_TOKEN\"",
        a = &TOKEN[..half],
        b = &TOKEN[half..]
    );
    // A value with characters URLs and JSON escape, from a file.
    std::fs::write(env.path("values"), "pa/ss+w\"rd\n").unwrap();
    let o = run_with_token(
        &env,
        "split",
        &["--no-pty", "--redact-file", "values"],
        &script,
    );
    assert_ok(&o);
    let out = env.stdout_log("split");
    let text = String::from_utf8_lossy(&out);
    assert!(!contains(&out, TOKEN), "{text}");
    assert!(!contains(&out, &TOKEN[1..TOKEN.len() - 1]), "{text}");
    assert!(text.starts_with("[REDACTED]\n"), "{text}");
    assert!(text.ends_with("last [REDACTED]"), "{text}");
    assert!(
        text.contains("q=[REDACTED]\n{\"p\": \"[REDACTED]\"}\n"),
        "{text}"
    );
    assert_eq!(text.matches("[REDACTED]").count(), 7, "{text}");
}

#[test]
fn a_busy_stream_full_of_partial_matches_is_logged_exactly_redacted() {
    // Reads of a whole 64 KiB that end inside a possible match are cut at a
    // page boundary instead, and what is held goes out with the next read:
    // the log is still exactly the output with each value replaced, and its
    // line numbers and index agree.
    let env = TestEnv::new();
    let mut input = String::new();
    let mut n = 0;
    while input.len() < 3 << 20 {
        n += 1;
        // Prefixes of the value everywhere, so most reads end inside one.
        input.push_str(&format!("line {n} ghp_ gh g ghp_Zx9 "));
        // The value itself now and then (a chunk with a match is redacted
        // by copying, and shifts the log against the reads).
        if n % 20_011 == 0 {
            input.push_str(TOKEN);
        }
        input.push_str(&TOKEN[..n % TOKEN.len()]);
        input.push('\n');
    }
    std::fs::write(env.path("big"), &input).unwrap();
    let o = run_with_token(&env, "busy", &["--no-pty"], "cat big");
    assert_ok(&o);
    let want = input.replace(TOKEN, "[REDACTED]");
    let log = env.stdout_log("busy");
    assert!(
        log == want.as_bytes(),
        "the log differs from the redacted output"
    );
    assert!(o.stdout == want.as_bytes(), "the terminal copy differs");
    let meta = env.meta("busy");
    assert_eq!(meta["redactions"], n / 20_011, "{meta}");
    assert_eq!(meta["stdout"]["lines"], n, "{meta}");
    // The index finds lines anywhere in the log.
    for k in [2, n / 3, n - 1] {
        let o = env.run(&["logs", "busy", "--since", &k.to_string()]);
        assert_ok(&o);
        let from = want.match_indices('\n').nth(k - 2).unwrap().0 + 1;
        assert!(o.stdout == want.as_bytes()[from..], "logs --since {k}");
    }
}

#[test]
fn a_held_partial_match_goes_out_unchanged_after_a_short_silence() {
    let env = TestEnv::new();
    let gate = Gate::new(&env, "gate");
    let prefix = &TOKEN[..8];
    let script = format!("printf 'prompt {prefix}'; {}; echo ' done'", gate.wait());
    let mut child = env
        .cmd()
        .env("GITHUB_TOKEN", TOKEN)
        .args([
            "--job-run-id",
            "held",
            "--no-pty",
            "--quiet",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // While the job waits, the start of a possible secret reaches the log.
    wait_until(Duration::from_secs(20), "the held bytes in the log", || {
        contains(&env.stdout_log("held"), &format!("prompt {prefix}"))
    });
    gate.open();
    assert!(wait_child(&mut child, "the job").success());
    assert_eq!(
        env.stdout_log("held"),
        format!("prompt {prefix} done\n").as_bytes()
    );
}

#[test]
fn marker_lines_add_secrets_at_run_time() {
    for (n, mode) in MODES.iter().enumerate() {
        let env = TestEnv::new();
        let id = format!("marker-{n}");
        let o = env.run_sh(
            &id,
            mode,
            "echo 'DATABUILD_REDACT: db-pass-0451'; echo 'using db-pass-0451'; \
             echo 'also db-pass-0451' >&2",
        );
        assert_ok(&o);
        assert_eq!(
            env.stdout_log(&id),
            b"DATABUILD_REDACT: [REDACTED]\nusing [REDACTED]\n"
        );
        assert_eq!(env.stderr_log(&id), b"also [REDACTED]\n");
        assert!(!contains(&o.stdout, "db-pass-0451"));
        assert_eq!(env.meta(&id)["redactions"], 3);
    }
}

#[test]
fn short_values_are_named_in_metadata_not_redacted() {
    let env = TestEnv::new();
    let o = env
        .cmd()
        .env("DB_PASSWORD", "test")
        .args(["--job-run-id", "short", "--", "sh", "-c", "echo test run"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(env.stdout_log("short"), b"test run\n");
    let meta = env.meta("short");
    let skipped = meta["redact_skipped"].to_string();
    assert!(skipped.contains("DB_PASSWORD"), "{meta}");
    assert!(!skipped.contains("test"), "{meta}");
    assert_eq!(meta["redactions"], 0);
}

#[test]
fn flags_choose_the_values_and_redact_off_keeps_everything() {
    let env = TestEnv::new();
    std::fs::write(env.path("secrets.txt"), "file-secret-1\n\nfile-secret-2\n").unwrap();
    let script = "echo \"$GITHUB_TOKEN $MY_VAR file-secret-1 file-secret-2\"";
    let o = run_with_token(
        &env,
        "flags",
        &[
            "--no-default-redact",
            "--redact-env",
            "my_*",
            "--redact-file",
            "secrets.txt",
        ],
        &format!("MY_VAR=var-secret-9 exec sh -c '{script}'"),
    );
    assert_ok(&o);
    // MY_VAR is set inside the job, after the wrapper read its environment.
    assert_eq!(
        String::from_utf8_lossy(&env.stdout_log("flags")),
        format!("{TOKEN} var-secret-9 [REDACTED] [REDACTED]\n")
    );
    let o = env
        .cmd()
        .env("GITHUB_TOKEN", TOKEN)
        .env("MY_VAR", "var-secret-9")
        .args([
            "--job-run-id",
            "glob",
            "--no-default-redact",
            "--redact-env",
            "MY_*",
        ])
        .args(["--", "sh", "-c", "echo $GITHUB_TOKEN $MY_VAR"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(
        String::from_utf8_lossy(&env.stdout_log("glob")),
        format!("{TOKEN} [REDACTED]\n")
    );
    let o = run_with_token(
        &env,
        "off",
        &["--redact", "off"],
        "echo $GITHUB_TOKEN; echo 'DATABUILD_REDACT: abcdefgh'; echo abcdefgh",
    );
    assert_ok(&o);
    assert_eq!(
        String::from_utf8_lossy(&env.stdout_log("off")),
        format!("{TOKEN}\nDATABUILD_REDACT: abcdefgh\nabcdefgh\n")
    );
    assert_eq!(env.meta("off")["redactions"], 0);
}

#[test]
fn an_unreadable_redact_file_stops_the_job_before_it_runs() {
    let env = TestEnv::new();
    let o = env.run(&["--redact-file", "missing.txt", "--", "sh", "-c", "echo ran"]);
    assert_fails_with(&o, 125);
    assert!(
        stderr_text(&o).contains("missing.txt"),
        "{}",
        stderr_text(&o)
    );
    assert!(!contains(&o.stdout, "ran"));
}
