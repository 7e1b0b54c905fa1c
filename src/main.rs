//! The `logwrap` binary: parse, dispatch, print any error once, exit with the
//! right code. All the work is in the library.

use clap::Parser;
use logwrap::cli::{Cli, Command};
use logwrap::{config, exit, gc, logs, run, serve};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Usage errors of the reading commands exit 2 (like most CLIs); the wrapper's
    // exit 125, so a scheduler can tell them from the job's own codes.
    let reading = std::env::args()
        .nth(1)
        .is_some_and(|a| matches!(a.as_str(), "logs" | "ls" | "show" | "gc" | "serve"));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other logwrap error: clap's first line without
            // its "error: " prefix, plus where to look.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "logwrap: {}; see logwrap --help",
                first.trim_start_matches("error: ")
            );
            let code = if reading {
                exit::USAGE
            } else {
                exit::WRAPPER_FAILED
            };
            return ExitCode::from(code as u8);
        }
    };
    let code = match cli.command {
        Some(command) => {
            let result = match command {
                Command::Logs(a) => logs::logs_cmd(a),
                Command::Ls(a) => logs::ls_cmd(a),
                Command::Show(a) => logs::show_cmd(a),
                Command::Gc(a) => gc::gc_cmd(a),
                Command::Serve(a) => serve::serve_cmd(a),
            };
            result.unwrap_or_else(|e| {
                eprintln!("logwrap: {e:#}");
                exit::NOT_FOUND_READ
            })
        }
        None => run_job(cli.run),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn run_job(args: logwrap::cli::RunArgs) -> i32 {
    match config::run_config(args) {
        Err(e) => {
            eprintln!("logwrap: {e:#}");
            exit::WRAPPER_FAILED
        }
        Ok((cfg, store)) => match run::run(&cfg, &store) {
            Err(e) => {
                eprintln!("logwrap: {e}");
                exit::WRAPPER_FAILED
            }
            Ok(outcome) => {
                if let Some(msg) = &outcome.error {
                    eprintln!("logwrap: {msg}");
                }
                outcome.exit_code
            }
        },
    }
}
