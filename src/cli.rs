//! The command line as clap sees it: flags, environment variables and help text.
//! Nothing past `config.rs` sees these types.

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// Wrap a job so its stdout and stderr are kept, line by line and live, in a
/// per-job log directory, while the terminal still sees everything.
#[derive(Debug, Parser)]
#[command(
    name = "logwrap",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Exit status: the job's own code; 128+N if it died of signal N; 124 if --timeout \
fired; 125 if logwrap failed before the job ran; 126 if the command is not executable; 127 if it \
is not found.\n\nExample: logwrap --job-run-id build-42 -- make -j8 all"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// The reading and housekeeping commands; without one, logwrap wraps a job.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a job's output (the most recent job without an id)
    Logs(LogsArgs),
    /// List jobs, newest first
    Ls(LsArgs),
    /// Print a job's metadata with its live status
    Show(ShowArgs),
    /// Delete old finished jobs (TTL and size cap)
    Gc(GcArgs),
    /// Serve every job under the root over HTTP
    Serve(ServeArgs),
}

/// Where the reading commands look for jobs.
#[derive(Debug, Args)]
pub struct RootArgs {
    /// Root of the log store [default: as for the wrapper]
    #[arg(long, env = "DATABUILD_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
}

/// `logwrap logs` (owned by src/logs.rs).
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub root: RootArgs,
}

/// `logwrap ls` (owned by src/logs.rs).
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub root: RootArgs,
}

/// `logwrap show` (owned by src/logs.rs).
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub root: RootArgs,
}

/// `logwrap gc` (owned by src/gc.rs).
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub root: RootArgs,
}

/// `logwrap serve` (owned by src/serve/).
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub root: RootArgs,
}

/// Options of the wrapper itself.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Root of the log store [default: /var/log/databuild, or
    /// $XDG_STATE_HOME/databuild when that is not writable]
    #[arg(long, env = "DATABUILD_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Job run id: 1-128 of [A-Za-z0-9._-], not starting with '.' [default: a new time-sortable id]
    #[arg(long, env = "DATABUILD_JOB_RUN_ID", value_name = "ID")]
    pub job_run_id: Option<String>,

    /// A partition this job builds (repeatable); replaces the comma-separated
    /// DATABUILD_BUILDING_PARTITIONS
    #[arg(long = "partition", value_name = "P")]
    pub partitions: Vec<String>,

    /// Use plain pipes instead of two pseudo-terminals for the child's stdout and stderr
    #[arg(long)]
    pub no_pty: bool,

    /// Do not copy the child's output to logwrap's own stdout and stderr
    #[arg(short, long)]
    pub quiet: bool,

    /// Terminal width given to the child [default: logwrap's terminal, else 160]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub cols: Option<u16>,

    /// Terminal height given to the child [default: logwrap's terminal, else 50]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub rows: Option<u16>,

    /// End the job after DURATION (e.g. 90, 30s, 5m, 2h): SIGTERM to its process
    /// group, SIGKILL after --kill-after; logwrap then exits 124
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// After a terminating signal or --timeout, SIGKILL the job's process group
    /// if it is still running after DURATION
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub kill_after: String,

    /// After the job exits, wait at most DURATION for output still held open by
    /// background processes it left behind
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub drain_timeout: String,

    /// The command to run, after `--`
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}
