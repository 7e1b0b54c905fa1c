//! The `logwrap` binary: parse, dispatch, print any error once, exit with the
//! right code. All the work is in the library.

use clap::Parser;
use logwrap::cli::Cli;
use logwrap::{config, exit, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::WRAPPER_FAILED
            } else {
                0
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let code = match config::run_config(cli.run) {
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
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
