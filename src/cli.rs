//! The command line as clap sees it: flags, environment variables and help text.
//! Nothing past `config.rs` sees these types.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use logwrap::store::JobId;
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
    /// Search the whole log of jobs: ID:LINE:TEXT per matching line
    Grep(GrepArgs),
    /// Delete old finished jobs (TTL and size cap)
    Gc(GcArgs),
    /// Serve every job under the root over HTTP
    Serve(ServeArgs),
    /// Print a shell completion script (job ids too, for logs and show)
    Completions(CompletionsArgs),
    /// Ship jobs to Redis Streams: what their wrapper could not (Redis down,
    /// wrapper killed)
    Ship(ShipCmdArgs),
}

/// Where and how jobs are shipped to Redis Streams (SPEC §9).
#[derive(Debug, Args)]
pub struct ShipArgs {
    /// Ship the job's output to Redis Streams while it runs:
    /// redis://[USER:PASSWORD@]HOST:PORT[/DB], rediss://... (TLS) or
    /// redis+unix:///PATH (the
    /// password is never written down); Redis being slow or down never slows or
    /// fails the job
    #[arg(
        long,
        env = "DATABUILD_LOG_SHIP",
        value_name = "URL",
        hide_env_values = true
    )]
    pub ship: Option<String>,

    /// Entries kept per job stream (XADD MAXLEN ~ N; an entry holds up to
    /// 64 KiB of lines)
    #[arg(long, value_name = "N", default_value_t = logwrap::ship::DEFAULT_MAXLEN)]
    pub ship_maxlen: u64,

    /// A shipped job's keys expire this long after their last write (sliding)
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub ship_ttl: String,

    /// Check a rediss:// (TLS) server against the CA certificates in this PEM
    /// file instead of the system's (a self-signed or private CA)
    #[arg(long, env = "DATABUILD_LOG_REDIS_CA_FILE", value_name = "PATH")]
    pub redis_ca_file: Option<PathBuf>,
}

/// `logwrap ship` (owned by src/ship/).
#[derive(Debug, Args)]
#[command(
    after_help = "Ships what is missing of each finished job from its cursor (kept in the job \
directory and checked against Redis), then its end entry; running it again ships nothing new. \
Running jobs are skipped: their wrapper ships them.\n\nExit status: 0 when every job is \
shipped or up to date; 1 if any could not be; 2 for an invalid id or option.\n\n\
Example: logwrap ship --ship redis://db:6379 --all"
)]
pub struct ShipCmdArgs {
    /// The jobs to ship
    #[arg(value_name = "ID", conflicts_with = "all")]
    pub ids: Vec<String>,

    /// Every job under the root
    #[arg(long)]
    pub all: bool,

    /// First wait for each job's wrapper to exit (how a wrapper hands the end
    /// of its shipping to a background `logwrap ship`)
    #[arg(long, hide = true)]
    pub wait_for_writer: bool,

    /// Ship the one job named while its wrapper runs, told about it through
    /// stdin (how a wrapper ships from a low-priority process of its own)
    #[arg(long, hide = true, conflicts_with_all = ["all", "wait_for_writer"])]
    pub live: bool,

    #[command(flatten)]
    pub ship: ShipArgs,

    #[command(flatten)]
    pub root: RootArgs,
}

/// `logwrap completions` (owned by src/completions.rs).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  logwrap completions bash > ~/.local/share/bash-completion/completions/logwrap\n  \
logwrap completions zsh > ~/.zfunc/_logwrap   # a directory in $fpath\n  \
logwrap completions fish > ~/.config/fish/completions/logwrap.fish"
)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_name = "SHELL", value_parser = clap::builder::PossibleValuesParser::new(["bash", "zsh", "fish"]))]
    pub shell: String,
}

/// Where the reading commands look for jobs.
#[derive(Debug, Args)]
pub struct RootArgs {
    /// Root of the log store [default: as for the wrapper]
    #[arg(long, env = "DATABUILD_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
}

/// Reading jobs shipped to Redis instead of a local root.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Read the jobs shipped to this Redis (redis://HOST:PORT[/DB],
    /// rediss://HOST:PORT[/DB] for TLS, or redis+unix:///PATH): every job of
    /// every machine shipping there with --ship, instead of the local root
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,

    /// Check a rediss:// (TLS) source against the CA certificates in this
    /// PEM file instead of the system's (a self-signed or private CA)
    #[arg(long, env = "DATABUILD_LOG_REDIS_CA_FILE", value_name = "PATH")]
    pub redis_ca_file: Option<PathBuf>,
}

/// Exit codes of `ls` and `show`, shown in their `--help`.
const READING_EXIT_CODES: &str = "Exit status: 0 on success; 1 if the job is not found or \
cannot be read; 2 for an invalid id or option.";

/// The end of `logs --help`: its exit codes and two examples.
const LOGS_AFTER_HELP: &str = "Exit status: 0 on success; 1 if the job or its log is not \
found, cannot be read, or is deleted while followed; 2 for an invalid id or option. With \
--exit-status: the job's own status (as its wrapper exited), or 137 if the job was abandoned.

Examples:
  logwrap logs -f --tail 10 build-42
  logwrap logs -f build-42 --exit-status >/dev/null   # wait for a job";

/// `logwrap logs` (owned by src/logs.rs).
#[derive(Debug, Args)]
#[command(after_help = LOGS_AFTER_HELP)]
pub struct LogsArgs {
    /// Job run id [default: the most recent job: latest started_at]
    #[arg(value_name = "ID", value_parser = parse_job_id)]
    pub id: Option<JobId>,

    /// Keep printing new output as it is written; stop when the job ends or is
    /// abandoned. A job not started yet is waited for briefly
    #[arg(short, long)]
    pub follow: bool,

    /// Print only the last N lines (with --all: of the merged output)
    #[arg(short = 'n', long = "tail", value_name = "N", conflicts_with = "since")]
    pub tail: Option<u64>,

    /// Start at line N, counting from 1, like `tail -n +N` (with --all: line N of
    /// the merged output)
    #[arg(long, value_name = "N")]
    pub since: Option<u64>,

    /// Print the job's stderr instead of its stdout
    #[arg(long, conflicts_with = "all")]
    pub stderr: bool,

    /// Print stdout and stderr merged in the order their lines arrived
    #[arg(long)]
    pub all: bool,

    /// Prefix each line with its stream: "stdout: " or "stderr: "
    #[arg(long)]
    pub prefix: bool,

    /// Prefix each line with the time the wrapper read it (RFC 3339 UTC, ms)
    #[arg(long)]
    pub timestamps: bool,

    /// With --follow: exit with the job's own exit status once it ends
    #[arg(long, requires = "follow")]
    pub exit_status: bool,

    /// Read through a logwrap HTTP server (`logwrap serve` or a wrapper's
    /// --listen) at URL instead of the local files; text is UTF-8 there
    #[arg(long, env = "DATABUILD_LOG_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Bearer token for --server (else $DATABUILD_LOG_TOKEN, read only with
    /// --server: the variable a `serve` exports must not stop local reading)
    #[arg(long, value_name = "T", requires = "server")]
    pub token: Option<String>,

    #[command(flatten)]
    pub root: RootArgs,

    #[command(flatten)]
    pub source: SourceArgs,
}

/// `logwrap ls` (owned by src/logs.rs).
#[derive(Debug, Args)]
#[command(after_help = READING_EXIT_CODES)]
pub struct LsArgs {
    /// Print a JSON array of the jobs' full metadata (live status) instead of a table
    #[arg(long, conflicts_with = "ids")]
    pub json: bool,

    /// Print only the job ids, one per line, newest first (for scripts and
    /// shell completion)
    #[arg(long)]
    pub ids: bool,

    /// Only jobs with this status (repeatable, or comma-separated)
    #[arg(
        long,
        value_name = "STATUS",
        value_delimiter = ',',
        value_parser = ["running", "succeeded", "failed", "killed", "timed_out", "abandoned", "damaged"]
    )]
    pub status: Vec<String>,

    /// Show at most the N newest jobs (N >= 1)
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub limit: Option<usize>,

    #[command(flatten)]
    pub root: RootArgs,

    #[command(flatten)]
    pub source: SourceArgs,
}

/// `logwrap show` (owned by src/logs.rs).
#[derive(Debug, Args)]
#[command(after_help = READING_EXIT_CODES)]
pub struct ShowArgs {
    /// Job run id
    #[arg(value_name = "ID", value_parser = parse_job_id)]
    pub id: JobId,

    /// Print the metadata.json document (with the live status) instead of a summary
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub root: RootArgs,

    #[command(flatten)]
    pub source: SourceArgs,
}

/// `logwrap grep` (owned by src/logs/grep.rs).
#[derive(Debug, Args)]
#[command(
    after_help = "Prints ID:LINE:TEXT for each matching stdout line and ID:stderr:LINE:TEXT for \
stderr, the text as a terminal shows it (progress redrawn with \\r resolved, colours removed); \
matches are coloured on a terminal. Lines are searched in their first MiB.\n\nExit status: 0 if \
a line matched; 1 if none did, or on an error; 2 for an invalid pattern, id or option.\n\n\
Examples:\n  logwrap grep 'connection refused' build-42\n  logwrap grep -E 'error\\[E[0-9]+\\]' --all \
--status failed --since-days 2"
)]
pub struct GrepArgs {
    /// What to look for: literal text, or a regular expression with --regex
    #[arg(value_name = "PATTERN")]
    pub pattern: String,

    /// Jobs to search [default: the most recent job]
    #[arg(value_name = "ID", value_parser = parse_job_id, conflicts_with = "all")]
    pub ids: Vec<JobId>,

    /// Search every job, newest first (see --status, --since-days)
    #[arg(long)]
    pub all: bool,

    /// Treat PATTERN as a regular expression (Rust regex syntax)
    #[arg(short = 'E', long)]
    pub regex: bool,

    /// Match case exactly [default: smart: insensitive unless PATTERN has an
    /// upper-case letter]
    #[arg(short = 's', long, conflicts_with = "ignore_case")]
    pub case_sensitive: bool,

    /// Ignore case
    #[arg(short = 'i', long)]
    pub ignore_case: bool,

    /// Search only this stream [default: both, stdout first]
    #[arg(long, value_name = "STREAM", value_parser = ["stdout", "stderr"])]
    pub stream: Option<String>,

    /// With --all: only jobs with this status (repeatable, or comma-separated)
    #[arg(
        long,
        value_name = "STATUS",
        value_delimiter = ',',
        requires = "all",
        value_parser = ["running", "succeeded", "failed", "killed", "timed_out", "abandoned"]
    )]
    pub status: Vec<String>,

    /// With --all: only jobs started within the last N days (fractions allowed)
    #[arg(long, value_name = "N", requires = "all")]
    pub since_days: Option<f64>,

    /// Print only the number of matching lines of each job, as ID:COUNT
    #[arg(short = 'c', long)]
    pub count: bool,

    #[command(flatten)]
    pub root: RootArgs,
}

/// Job ids are checked while parsing, so a bad one is a usage error (exit 2).
fn parse_job_id(s: &str) -> Result<JobId, String> {
    JobId::parse(s)
}

/// `logwrap gc` (owned by src/gc.rs): the retention policy of SPEC §6.
#[derive(Debug, Args)]
#[command(
    after_help = "Finished jobs past the TTL go first, then the oldest finished jobs until the \
rest fit under the size cap; a running job is never deleted. Wrappers run the same collection \
in the background at most once an hour.\n\nExample: logwrap gc --dry-run --ttl-days 2 --max-size 500M"
)]
pub struct GcArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// List what would be deleted, with size and reason, and delete nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Delete finished jobs that ended more than DAYS ago; fractions allowed, 0
    /// means every finished job [default: $DATABUILD_LOG_TTL_DAYS, else 7]
    #[arg(
        long,
        value_name = "DAYS",
        value_parser = logwrap::gc::parse_ttl_days,
        allow_negative_numbers = true
    )]
    pub ttl_days: Option<std::time::Duration>,

    /// Then delete the oldest finished jobs until all jobs together take at most
    /// SIZE: bytes, or K, M, G, T (powers of 1024), e.g. 500M, 10G, 0.5G
    /// [default: $DATABUILD_LOG_MAX_SIZE_GB GiB, else 10G]
    #[arg(long, value_name = "SIZE", value_parser = logwrap::gc::parse_size)]
    pub max_size: Option<u64>,
}

/// `logwrap serve` (owned by src/serve/).
#[derive(Debug, Args)]
#[command(
    after_help = "Endpoints: GET / (job list page), /job_runs/ID (live page), \
/api/job_runs[?status=S&limit=N], /api/job_runs/ID, /api/job_runs/ID/logs/{stdout|stderr|combined} \
(Server-Sent Events: ?follow=true&since=N&lines=N&format=json), \
/api/job_runs/ID/logs/{stdout|stderr}/raw (Range), /api/job_runs/ID/log-tail?start=N[&stream=stderr], \
/api/job_runs/ID/logs/{stdout|stderr}/progressiveText?start=N, /healthz.\n\n\
Example: logwrap serve --listen 127.0.0.1:8080 & curl -N 'http://127.0.0.1:8080/api/job_runs/build-42/logs/combined?follow=true'"
)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free port). Binding beyond
    /// loopback exposes every job's logs to the network: pair it with --token
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,

    #[command(flatten)]
    pub access: ServerArgs,

    /// Most simultaneous connections; more are answered 503
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = at_least_one)]
    pub max_connections: usize,

    /// Time a client has to send its request head before a 408
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub header_timeout: String,

    /// Close a kept-alive connection idle this long, or a client that leaves what
    /// it asked for unread this long
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub idle_timeout: String,

    #[command(flatten)]
    pub root: RootArgs,

    #[command(flatten)]
    pub source: SourceArgs,
}

/// Options of the HTTP server shared by `logwrap serve` and the wrapper's
/// `--listen` (owned by src/serve/).
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Require this token on every request, as `Authorization: Bearer TOKEN` or
    /// `?token=TOKEN` (with the wrapper: only with --listen)
    #[arg(
        long,
        env = "DATABUILD_LOG_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Read the token from this file (its first line; a trailing newline is
    /// dropped). Preferred over --token, which any local user can read in the
    /// process list
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Send a heartbeat comment on an event stream silent for this long
    #[arg(long, value_name = "DURATION", default_value = "15s")]
    pub heartbeat: String,

    /// On a loopback address, also answer requests for this Host name
    /// (repeatable); otherwise only localhost, 127.0.0.1 and `[::1]` are
    /// answered, against DNS rebinding
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
}

/// Options of the wrapper itself.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Root of the log store [default: /var/log/databuild, or
    /// $XDG_STATE_HOME/databuild when that is not writable]
    #[arg(long, env = "DATABUILD_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Job run id: 1-128 of [A-Za-z0-9._-], not starting with '.' [default:
    /// $DATABUILD_JOB_RUN_ID if set and not empty, else a new time-sortable id]
    // The variable is read in config.rs, not by clap: clap cannot tell an
    // empty variable (unset, as shells treat it) from an empty `--job-run-id ''`
    // (a mistake, refused).
    #[arg(long, value_name = "ID")]
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

    /// Serve this job's logs over HTTP at ADDR (HOST:PORT; port 0 picks a free
    /// port) while it runs, as `logwrap serve` does; the URL is printed on stderr
    /// and recorded as tail_url
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    #[command(flatten)]
    pub access: ServerArgs,

    /// Also hide the values of environment variables whose names match GLOB
    /// (`*` and `?`, any case; repeatable), besides the defaults *_TOKEN,
    /// *_SECRET, *_SECRET_*, *_PASSWORD, *_PASSWD, *_PRIVATE_KEY, *_ACCESS_KEY,
    /// *_API_KEY, *_CREDENTIALS
    #[arg(long = "redact-env", value_name = "GLOB")]
    pub redact_env: Vec<String>,

    /// Do not use the default name globs (only --redact-env ones)
    #[arg(long)]
    pub no_default_redact: bool,

    /// Also hide each non-empty line of PATH (repeatable)
    #[arg(long = "redact-file", value_name = "PATH")]
    pub redact_files: Vec<PathBuf>,

    /// `off` turns redaction off entirely: no values, no DATABUILD_REDACT:
    /// markers, output always byte for byte what the job wrote
    #[arg(long, value_name = "MODE", value_parser = ["on", "off"], default_value = "on")]
    pub redact: String,

    /// Keep at most about SIZE bytes of each stream (e.g. 100M): the first half
    /// and a rolling last part, the middle replaced by an explicit gap that
    /// every reader reports ("N bytes (M lines) omitted"); the terminal copy
    /// and the job are unaffected. Default: keep everything
    #[arg(long, env = "DATABUILD_LOG_MAX_JOB_SIZE", value_name = "SIZE", value_parser = parse_max_log_size)]
    pub max_log_size: Option<u64>,
    #[command(flatten)]
    pub ship: ShipArgs,

    /// With --ship: longest the wrapper waits at the job's end for the rest of
    /// the output to reach Redis (it waits a twentieth of the job's duration, and
    /// only when the rest gets there in that time); what is left the shipping
    /// process finishes in the background. 0 = never wait
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub ship_wait: String,

    /// The command to run, after `--`
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

// ---------------------------------------------------------------------------
// Before clap: the newcomer's mistakes (issue 9 point 5)
// ---------------------------------------------------------------------------

/// Farthest a mistyped subcommand may be from a real one (transpositions count
/// once): `lgos`, `lss`, `serv` are caught, while real command names a few
/// letters off (`less`, `top`) are on PATH and run as before.
const MAX_TYPO_DISTANCE: usize = 2;

/// The subcommand names, from clap's own table.
fn subcommands() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

/// Whether `argv` (as returned by [`lower`]) runs a subcommand rather than
/// the wrapper: its first argument is a subcommand name.
pub fn names_subcommand(argv: &[OsString]) -> bool {
    argv.get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| subcommands().iter().any(|s| s == a))
}

/// The raw arguments made ready for clap ("lowargs"), or a hint for a
/// mistake that would otherwise run a junk job:
/// - `logwrap --log-dir D ls`: the wrapper's `--log-dir` moves after the
///   subcommand, which takes it too;
/// - any other wrapper option before a subcommand name is refused, saying how
///   to write either meaning;
/// - a first word that is not a subcommand but is a near miss of one, and is
///   not a command on PATH (`is_command`), gets "did you mean".
///
/// Everything after a `--` is the job's and is never looked at.
/// A count that must be at least 1 (`--limit 0` would show nothing, or with
/// a silent clamp one; neither is what was asked).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses `argv` (as [`lower`] left it) into a [`Cli`]. An environment
/// variable that is set but empty counts as unset, for every option that
/// reads one (as `DATABUILD_LOG_DIR=` always did): `DATABUILD_LOG_MAX_JOB_SIZE=`
/// in a CI environment must not fail every job.
pub fn parse(argv: &[OsString]) -> Result<Cli, clap::Error> {
    let matches = unset_empty_env(Cli::command()).try_get_matches_from(argv)?;
    Cli::from_arg_matches(&matches)
}

/// `cmd` and its subcommands with the environment variables of their
/// options that are set but empty left unread.
fn unset_empty_env(cmd: clap::Command) -> clap::Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd.mut_args(|a| {
        let empty = a
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some_and(|v| v.is_empty()));
        if empty {
            a.env(None)
        } else {
            a
        }
    });
    for name in subs {
        cmd = cmd.mut_subcommand(name, unset_empty_env);
    }
    cmd
}

pub fn lower(
    argv: Vec<OsString>,
    is_command: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, String> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let names = subcommands();
    let mut i = 1;
    // Indices of the wrapper options (and their values) before the first word.
    let mut options: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    let word = loop {
        let Some(arg) = argv.get(i).and_then(|a| a.to_str()) else {
            return Ok(argv);
        };
        if arg == "--" || !arg.starts_with('-') || arg == "-" {
            if arg == "--" {
                return Ok(argv);
            }
            break arg.to_string();
        }
        let (flag, inline_value) = match arg.split_once('=') {
            Some((f, _)) => (f, true),
            None => (arg, false),
        };
        let known = cmd.get_arguments().find(|a| {
            flag.strip_prefix("--")
                .is_some_and(|l| a.get_long() == Some(l))
                || (flag.len() == 2
                    && !flag.starts_with("--")
                    && a.get_short() == flag.chars().nth(1))
        });
        // An unknown option is clap's to report.
        let Some(known) = known else {
            return Ok(argv);
        };
        let takes_value = known.get_action().takes_values() && !inline_value;
        let end = if takes_value { i + 2 } else { i + 1 };
        options.push((known.get_id().to_string(), i..end.min(argv.len())));
        i = end;
    };
    if names.contains(&word) {
        if options.is_empty() {
            return Ok(argv);
        }
        if let Some((_, range)) = options.iter().find(|(id, _)| id != "log_dir") {
            let shown: Vec<String> = argv[range.clone()]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let shown = shown.join(" ");
            return Err(format!(
                "`{shown}` is an option of the wrapper, not of `logwrap {word}`; put \
                 subcommand options after the subcommand (`logwrap {word} ...`), or to run \
                 a command named {word} as a job, write `logwrap {shown} -- {word} ...`"
            ));
        }
        // Only --log-dir: every subcommand takes it, so it moves after the name.
        let mut lowered = vec![argv[0].clone(), argv[i].clone()];
        lowered.extend_from_slice(&argv[1..i]);
        lowered.extend_from_slice(&argv[i + 1..]);
        return Ok(lowered);
    }
    if !word.contains('/') && !is_command(&word) {
        let near = names
            .iter()
            .map(|n| (strsim::osa_distance(&word, n), n))
            // A word that shares nothing with a short name (`xy` for `ls`) is
            // no typo of it.
            .filter(|(d, n)| *d <= MAX_TYPO_DISTANCE && *d < n.len())
            .min();
        if let Some((_, name)) = near {
            return Err(format!(
                "no subcommand `{word}`: did you mean `{name}`? (to run a command named \
                 {word}, write `logwrap -- {word}`)"
            ));
        }
    }
    Ok(argv)
}

/// Whether `name` is an executable file in a directory of `PATH`, as the
/// wrapper's exec would find it.
pub fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The first line of the help of the argument clap shows as `shown` (`<ID>`)
/// in the subcommand `argv` names, so a missing argument is explained.
fn argument_help(argv: &[OsString], shown: &str) -> Option<String> {
    use clap::CommandFactory;
    let name = shown.trim_start_matches('<').trim_end_matches('>');
    let sub = argv.get(1)?.to_str()?;
    let cmd = Cli::command();
    let arg = cmd.find_subcommand(sub)?.get_positionals().find(|a| {
        a.get_value_names()
            .is_some_and(|v| v.iter().any(|n| n == name))
    })?;
    let help = arg.get_help()?.to_string();
    Some(help.lines().next()?.trim().to_string())
}

/// One line for a clap error, like every other logwrap error: what is wrong,
/// what to write instead, where to look. `argv` is what clap was given.
pub fn error_message(e: &clap::Error, argv: &[OsString]) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        Some(ContextValue::StyledStr(s)) => Some(s.to_string()),
        _ => None,
    };
    let usage =
        context(ContextKind::Usage).map(|u| u.trim_start_matches("Usage:").trim().to_string());
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    let mut msg = match (e.kind(), context(ContextKind::InvalidArg)) {
        (ErrorKind::MissingRequiredArgument, Some(missing)) => {
            match argument_help(argv, &missing) {
                Some(help) => format!("missing {missing} ({help})"),
                None => format!("missing {missing}"),
            }
        }
        _ => first.to_string(),
    };
    if let Some(usage) = usage {
        msg += &format!("; usage: {usage}");
    }
    // `logwrap ls -l`: a command that is also a subcommand, run without `--`.
    let sub = argv.get(1).and_then(|a| a.to_str());
    if let (ErrorKind::UnknownArgument, Some(sub)) = (e.kind(), sub) {
        if names_subcommand(argv) && on_path(sub) {
            let job: Vec<String> = argv[1..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let job = job.join(" ");
            msg += &format!("; to run `{job}` as a job, write `logwrap -- {job}`");
        }
    }
    msg + "; see logwrap --help"
}

/// Smallest `--max-log-size`: below a few 64 KiB segments (see
/// `store::limit`) the head and tail would be too small to be of use.
const MIN_MAX_LOG_SIZE: u64 = 256 << 10;

/// Parses `--max-log-size` like `gc --max-size` (`100M`, `1G`), refusing sizes
/// too small to keep a useful head and tail.
fn parse_max_log_size(s: &str) -> Result<u64, String> {
    let n = logwrap::gc::parse_size(s)?;
    if n < MIN_MAX_LOG_SIZE {
        return Err(format!(
            "--max-log-size {s} is too small: use at least 256K (it keeps a head and a tail of each stream)"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lowered(args: &[&str]) -> Result<Vec<String>, String> {
        let argv = std::iter::once("logwrap")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        // Only `ls` and `sh` are "on PATH" here, whatever the machine has.
        let on_path = |name: &str| matches!(name, "ls" | "sh");
        lower(argv, on_path).map(|v| {
            v[1..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn log_dir_before_a_subcommand_moves_after_it() {
        assert_eq!(
            lowered(&["--log-dir", "D", "ls", "--json"]).unwrap(),
            ["ls", "--log-dir", "D", "--json"]
        );
        assert_eq!(
            lowered(&["--log-dir=D", "show", "x"]).unwrap(),
            ["show", "--log-dir=D", "x"]
        );
    }

    #[test]
    fn other_wrapper_options_before_a_subcommand_are_refused_with_both_meanings() {
        let hint = lowered(&["--quiet", "ls"]).unwrap_err();
        assert!(hint.contains("logwrap --quiet -- ls"), "{hint}");
        assert!(hint.contains("logwrap ls ..."), "{hint}");
        let hint = lowered(&["--log-dir", "D", "--job-run-id", "x", "gc"]).unwrap_err();
        assert!(hint.contains("--job-run-id x"), "{hint}");
    }

    #[test]
    fn near_misses_of_subcommands_get_did_you_mean() {
        let hint = lowered(&["lgos"]).unwrap_err();
        assert!(hint.contains("did you mean `logs`?"), "{hint}");
        assert!(hint.contains("write `logwrap -- lgos`"), "{hint}");
        assert!(lowered(&["--quiet", "serv"])
            .unwrap_err()
            .contains("`serve`"));
        assert!(lowered(&["shwo", "x"]).unwrap_err().contains("`show`"));
    }

    #[test]
    fn commands_are_left_alone() {
        for args in [
            &["sh", "-c", "true"][..],
            &["--", "lgos"],
            &["--quiet", "--", "ls"],
            &["make", "all"],
            &["./lgos"],
            // Shares no letter with `ls` or `gc`: not a typo of either.
            &["xy"],
            &["ls", "--json"],
            &["--bogus", "ls"],
        ] {
            let want: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            assert_eq!(lowered(args).unwrap(), want, "{args:?}");
        }
    }

    #[test]
    fn missing_arguments_are_named_and_explained() {
        let argv: Vec<OsString> = ["logwrap", "show"].map(OsString::from).to_vec();
        let e = <Cli as clap::Parser>::try_parse_from(&argv).unwrap_err();
        let msg = error_message(&e, &argv);
        assert!(msg.contains("missing <ID> (Job run id)"), "{msg}");
        assert!(!msg.contains("provided:;"), "{msg}");
    }
}
