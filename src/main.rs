//! The `logwrap` binary: lower the raw arguments, parse, validate, dispatch,
//! print any error once, and map the outcome to an exit code in one place.
//! All the work is in the library.

mod cli;
mod completions;
mod config;
#[cfg(test)]
mod testdir;

use anyhow::Context;
use config::Action;
use logwrap::exit::{self, ExitCode};
use logwrap::{gc, logs, run, serve};

fn main() -> std::process::ExitCode {
    real_main().into()
}

fn real_main() -> ExitCode {
    let argv = match cli::lower(std::env::args_os().collect(), cli::on_path) {
        Ok(argv) => argv,
        Err(hint) => {
            eprintln!("logwrap: {hint}");
            return ExitCode::Usage;
        }
    };
    // Usage errors of the subcommands exit 2 (like most CLIs); the wrapper's
    // 125, so a scheduler can tell them from the job's own codes (SPEC §1).
    let wrapper = !cli::names_subcommand(&argv);
    let mistake = if wrapper {
        ExitCode::WrapperFailed
    } else {
        ExitCode::Usage
    };
    let cli = match cli::parse(&argv) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version; a closed stdout is not worth a message.
            let _ = e.print();
            return ExitCode::Success;
        }
        Err(e) => {
            eprintln!("logwrap: {}", cli::error_message(&e, &argv));
            return mistake;
        }
    };
    let result = config::action(cli).and_then(|action| match action {
        Action::Run(cfg, store) => Ok(run_job(&cfg, &store)),
        Action::Logs(store, o) => logs::logs_cmd(store.0.as_ref(), o).map(ExitCode::Status),
        Action::Ls(store, o) => logs::ls_cmd(store.0.as_ref(), o).map(ExitCode::Status),
        Action::Show(store, o) => logs::show_cmd(store.0.as_ref(), o).map(ExitCode::Status),
        Action::Grep(store, o) => logs::grep_cmd(&store, o).map(ExitCode::Status),
        Action::Gc(store, o) => gc::gc_cmd(&store, o).map(ExitCode::Status),
        Action::Serve(store, cfg) => serve::serve_cmd(store.0, cfg).map(ExitCode::Status),
        Action::Ship(store, o) => logwrap::ship::ship_cmd(&store, o).map(ExitCode::Status),
        Action::Completions(shell) => completions::script(&shell).and_then(|s| {
            use std::io::Write;
            std::io::stdout()
                .write_all(s.as_bytes())
                .context("writing the completion script")?;
            Ok(ExitCode::Success)
        }),
    });
    match result {
        Ok(code) => code,
        // The reader of our output went away (`logwrap ls --json | head -1`):
        // the output simply ends there, as with any Unix filter.
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::Success,
        Err(e) => {
            eprintln!("logwrap: {e:#}");
            if wrapper {
                ExitCode::WrapperFailed
            } else if exit::is_usage(&e) {
                ExitCode::Usage
            } else {
                ExitCode::Failure
            }
        }
    }
}

/// Runs the job; its own status, or 125 with one message if logwrap failed.
fn run_job(cfg: &run::RunConfig, store: &logwrap::store::FileStore) -> ExitCode {
    match run::run(cfg, store) {
        Err(e) => {
            eprintln!("logwrap: {e}");
            ExitCode::WrapperFailed
        }
        Ok(outcome) => {
            if let Some(msg) = &outcome.error {
                eprintln!("logwrap: {msg}");
            }
            ExitCode::Status(outcome.exit_code)
        }
    }
}
