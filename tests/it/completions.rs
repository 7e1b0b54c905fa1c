//! Shell completions (issue 13): the generated bash script, run by a real
//! bash, completes job ids for `logs` and `show` from the root the command
//! line names. (zsh and fish scripts are checked as text in the unit tests;
//! neither shell is assumed to be installed.)

use crate::util::*;
use std::path::Path;
use std::process::Command;

/// What bash offers for the last of `words` (`logwrap ...`, the last word
/// being completed), with the generated script loaded and `logwrap` on PATH.
fn bash_complete(env: &TestEnv, script: &Path, words: &[&str]) -> Vec<String> {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .env_clear()
        .env("PATH", path)
        .env("HOME", &env.dir)
        .env("DATABUILD_LOG_DIR", &env.root)
        .arg("-c")
        .arg(
            r#"source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_logwrap logwrap "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(script)
        .args(words)
        .output()
        .unwrap();
    assert_ok(&o);
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_job_ids_for_logs_and_show_from_the_root() {
    let env = TestEnv::new();
    assert_ok(&env.run_sh("build-1", &[], "true"));
    assert_ok(&env.run_sh("build-2", &[], "true"));
    let other = env.dir.join("other");
    let o = env
        .cmd()
        .arg("--log-dir")
        .arg(&other)
        .args(["--job-run-id", "elsewhere", "--", "true"])
        .output()
        .unwrap();
    assert_ok(&o);
    let o = env.run(&["completions", "bash"]);
    assert_ok(&o);
    let script = env.path("logwrap.bash");
    std::fs::write(&script, &o.stdout).unwrap();

    let offered = bash_complete(&env, &script, &["logwrap", "show", ""]);
    assert!(offered.contains(&"build-1".to_string()), "{offered:?}");
    assert!(offered.contains(&"build-2".to_string()), "{offered:?}");
    assert!(!offered.contains(&"elsewhere".to_string()), "{offered:?}");

    let mut offered = bash_complete(&env, &script, &["logwrap", "logs", "-f", "build-"]);
    offered.sort();
    assert_eq!(offered, ["build-1", "build-2"].map(String::from));

    let other = other.to_string_lossy().into_owned();
    let offered = bash_complete(&env, &script, &["logwrap", "show", "--log-dir", &other, ""]);
    assert!(offered.contains(&"elsewhere".to_string()), "{offered:?}");
    assert!(!offered.contains(&"build-1".to_string()), "{offered:?}");

    // Subcommands and flags come from the same definitions; no ids for ls.
    let offered = bash_complete(&env, &script, &["logwrap", "l"]);
    assert!(offered.contains(&"logs".to_string()) && offered.contains(&"ls".to_string()));
    let offered = bash_complete(&env, &script, &["logwrap", "ls", ""]);
    assert!(offered.contains(&"--ids".to_string()), "{offered:?}");
    assert!(!offered.contains(&"build-1".to_string()), "{offered:?}");
}

#[test]
fn completions_for_an_unknown_shell_are_a_usage_error() {
    let env = TestEnv::new();
    let o = env.run(&["completions", "tcsh"]);
    assert_fails_with(&o, 2);
    assert!(stderr_text(&o).contains("'tcsh'"), "{}", stderr_text(&o));
}

#[test]
fn make_installs_the_completions_under_destdir_and_prefix() {
    let env = TestEnv::new();
    let stage = env.dir.join("stage");
    let o = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--no-print-directory")
        .arg("install-completions")
        .arg(format!("DESTDIR={}", stage.display()))
        .arg("PREFIX=/opt/lw")
        .arg(format!("LOGWRAP={BIN}"))
        .output()
        .unwrap();
    assert_ok(&o);
    for (shell, path) in [
        ("bash", "share/bash-completion/completions/logwrap"),
        ("zsh", "share/zsh/site-functions/_logwrap"),
        ("fish", "share/fish/vendor_completions.d/logwrap.fish"),
    ] {
        let installed = std::fs::read(stage.join("opt/lw").join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(installed, env.run(&["completions", shell]).stdout, "{path}");
    }
}
