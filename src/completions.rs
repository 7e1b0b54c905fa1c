//! `logwrap completions SHELL` (issue 13): bash, zsh and fish scripts generated
//! by clap_complete from the same clap definitions as `--help`, each followed
//! by a small hook that completes job ids for `logs` and `show` from
//! `logwrap ls --ids` (so from the root `--log-dir` / `DATABUILD_LOG_DIR` name).

use crate::cli::Cli;
use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// The subcommands whose `ID` argument is a job run id.
const ID_SUBCOMMANDS: [&str; 2] = ["logs", "show"];

/// The completion script for `shell` (`bash`, `zsh` or `fish`).
///
/// clap_complete's static scripts are its stable, well-kept interface; its
/// dynamic engine (values computed by the binary at completion time) is behind
/// an `unstable-dynamic` feature. So the static script is used, and job ids,
/// which only exist at completion time, come from a hook that runs
/// `logwrap ls --ids`, wired into the script where it completes the id:
/// - bash: the word list of `logs` and `show` also holds the ids;
/// - zsh: their `id` argument calls `_logwrap_job_ids` instead of `_default`;
/// - fish: one more `complete` rule for `logs` and `show`.
pub fn script(shell: &str) -> Result<String> {
    let kind = match shell {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => bail!("no completions for shell {other:?}; choose bash, zsh or fish"),
    };
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(kind, &mut cmd, "logwrap", &mut out);
    let generated = String::from_utf8(out).context("clap_complete wrote invalid UTF-8")?;
    let wired = match kind {
        Shell::Bash => format!("{BASH_HOOK}\n{}", wire_bash(&generated)?),
        Shell::Zsh => wire_zsh(&generated)?,
        _ => format!("{generated}\n{FISH_HOOK}"),
    };
    Ok(wired)
}

/// Adds the job ids to the words bash offers for `logs` and `show`: in the
/// generated `case` branch of each, the `opts=` line (evaluated at each
/// completion) gains `$(_logwrap_job_ids)`.
fn wire_bash(script: &str) -> Result<String> {
    let mut out = String::with_capacity(script.len() + 128);
    let mut branch: Option<&str> = None;
    let mut wired = 0;
    for line in script.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("logwrap__subcmd__")
            .and_then(|r| r.strip_suffix(')'))
        {
            branch = ID_SUBCOMMANDS.iter().copied().find(|s| *s == name);
        }
        match (branch, trimmed.strip_prefix("opts=\"")) {
            (Some(_), Some(_)) if line.ends_with('"') => {
                out.push_str(&line[..line.len() - 1]);
                out.push_str(" $(_logwrap_job_ids)\"\n");
                wired += 1;
                branch = None;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    expect_wired(wired, "bash")?;
    Ok(out)
}

/// Makes zsh complete the `id` argument of `logs` and `show` with
/// `_logwrap_job_ids` (clap_complete writes `:_default` for it), and adds
/// that function.
fn wire_zsh(script: &str) -> Result<String> {
    let mut out = String::with_capacity(script.len() + 512);
    let mut wired = 0;
    for line in script.lines() {
        // The wrapper's optional CMD argument: with it, zsh takes the first
        // word for CMD and the second for the subcommand, so `logwrap show
        // <TAB>` offered subcommands again. (bash and fish look subcommands
        // up by name.)
        if line.starts_with("'::command -- ") {
            continue;
        }
        let is_id = line.starts_with("':id -- ") || line.starts_with("'::id -- ");
        match line.strip_suffix(":_default' \\") {
            Some(head) if is_id => {
                out.push_str(head);
                out.push_str(":_logwrap_job_ids' \\\n");
                wired += 1;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    expect_wired(wired, "zsh")?;
    // After the `#compdef` line, which must stay first for zsh to autoload
    // the file from $fpath; before the script's end, which runs `_logwrap`.
    let (first, rest) = out.split_once('\n').unwrap_or((&out, ""));
    Ok(format!("{first}\n\n{ZSH_HOOK}{rest}"))
}

/// Fails if the hook was not wired into both id arguments: a new
/// clap_complete that writes its scripts differently must be noticed here,
/// not by a user whose ids no longer complete.
fn expect_wired(wired: usize, shell: &str) -> Result<()> {
    if wired != ID_SUBCOMMANDS.len() {
        bail!(
            "the {shell} script from clap_complete has {wired} job id arguments where {} \
             were expected; completions.rs must learn its new form",
            ID_SUBCOMMANDS.len()
        );
    }
    Ok(())
}

/// Prints the job ids of the root the command line names (its `--log-dir`,
/// else `DATABUILD_LOG_DIR` or the default, as `logwrap ls` finds it).
const BASH_HOOK: &str = r#"# Job ids for `logwrap logs` and `logwrap show`, from `logwrap ls --ids`.
_logwrap_job_ids() {
    local i dir=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} == --log-dir ]]; then
            # bash splits `--log-dir=D` at the `=`.
            if [[ ${COMP_WORDS[i+1]} == = ]]; then
                dir=(--log-dir "${COMP_WORDS[i+2]}")
            else
                dir=(--log-dir "${COMP_WORDS[i+1]}")
            fi
        fi
    done
    command logwrap ls --ids "${dir[@]}" 2>/dev/null
}
"#;

/// See [`BASH_HOOK`].
const ZSH_HOOK: &str = r#"# Job ids for `logwrap logs` and `logwrap show`, from `logwrap ls --ids`.
_logwrap_job_ids() {
    local -a ids dir expl
    local i=${words[(I)--log-dir]}
    (( i )) && dir=(--log-dir "${(Q)words[i+1]}")
    i=${words[(I)--log-dir=*]}
    (( i )) && dir=(--log-dir "${(Q)${words[i]#--log-dir=}}")
    ids=(${(f)"$(command logwrap ls --ids $dir 2>/dev/null)"})
    _wanted job-ids expl 'job run id' compadd -a ids
}
"#;

/// See [`BASH_HOOK`].
const FISH_HOOK: &str = r#"# Job ids for `logwrap logs` and `logwrap show`, from `logwrap ls --ids`.
function __fish_logwrap_job_ids
    set -l tokens (commandline -opc)
    set -l dir
    for i in (seq (count $tokens))
        switch $tokens[$i]
            case --log-dir
                if test $i -lt (count $tokens)
                    set dir --log-dir $tokens[(math $i + 1)]
                end
            case '--log-dir=*'
                set dir $tokens[$i]
        end
    end
    command logwrap ls --ids $dir 2>/dev/null
end
complete -c logwrap -n "__fish_seen_subcommand_from logs show" -f -a "(__fish_logwrap_job_ids)" -d 'job run id'
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand name and every long flag, of the wrapper and of each
    /// subcommand, as clap defines them.
    fn names_and_flags() -> (Vec<String>, Vec<String>) {
        let cmd = Cli::command();
        let mut names = Vec::new();
        let mut flags = Vec::new();
        let mut add_flags = |c: &clap::Command| {
            for a in c.get_arguments() {
                if let Some(long) = a.get_long() {
                    flags.push(long.to_string());
                }
            }
        };
        add_flags(&cmd);
        for sub in cmd.get_subcommands() {
            names.push(sub.get_name().to_string());
            add_flags(sub);
        }
        assert!(names.len() >= 6 && flags.len() > 30, "{names:?} {flags:?}");
        (names, flags)
    }

    #[test]
    fn every_script_names_every_subcommand_and_flag() {
        let (names, flags) = names_and_flags();
        for shell in ["bash", "zsh", "fish"] {
            let text = script(shell).unwrap();
            for name in &names {
                assert!(text.contains(name.as_str()), "{shell}: subcommand {name}");
            }
            for flag in &flags {
                let spelled = match shell {
                    "fish" => format!("-l {flag}"),
                    _ => format!("--{flag}"),
                };
                assert!(text.contains(&spelled), "{shell}: flag {spelled}");
            }
            assert!(text.contains("logwrap ls --ids"), "{shell}: the id hook");
        }
        assert!(script("tcsh").is_err());
    }

    #[test]
    fn the_id_hook_is_wired_into_logs_and_show_only() {
        let zsh = script("zsh").unwrap();
        assert!(zsh.starts_with("#compdef logwrap\n"), "zsh autoloads by it");
        assert_eq!(zsh.matches(":_logwrap_job_ids' \\").count(), 2);
        assert!(
            !zsh.contains("'::command -- "),
            "the first word is the subcommand"
        );
        let bash = script("bash").unwrap();
        assert_eq!(bash.matches(" $(_logwrap_job_ids)\"").count(), 2);
        let fish = script("fish").unwrap();
        assert!(fish.contains("__fish_seen_subcommand_from logs show"));
        // A script of an unexpected form is an error, not a silent loss.
        assert!(wire_bash("opts=\"-h\"\n").is_err());
        assert!(wire_zsh("#compdef logwrap\n").is_err());
    }
}
