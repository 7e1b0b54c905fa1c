//! Validated settings (ripgrep's "hiargs"): each subcommand's clap struct from
//! `cli.rs` becomes one checked [`Action`] here, with its store root resolved,
//! and every mistake a user can make gets one clear message. Library modules
//! (run, logs, gc, serve) never see clap types; this module and `cli.rs` sit
//! above all of them and nothing below imports either.

use crate::cli::{
    Cli, Command, GcArgs, GrepArgs, LogsArgs, LsArgs, RunArgs, ServeArgs, ServerArgs, ShipArgs,
    ShipCmdArgs, ShowArgs, SourceArgs,
};
use anyhow::{bail, Context, Result};
use logwrap::exit::UsageError;
use logwrap::gc::GcOptions;
use logwrap::logs::{GrepOptions, LogsOptions, LsOptions, ShowOptions};
use logwrap::metadata::Status;
use logwrap::run::RunConfig;
use logwrap::search::{Case, Pattern};
use logwrap::serve::ServeConfig;
use logwrap::store::LogStore;
use logwrap::store::{FileStore, JobId, Stream};
use logwrap::timefmt::parse_duration;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The root used when neither `--log-dir` nor `DATABUILD_LOG_DIR` is given.
pub const DEFAULT_ROOT: &str = "/var/log/databuild";

/// The store a reading command reads: a local root, or Redis (`--source`).
pub struct Source(pub Arc<dyn LogStore>);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source({})", self.0.location())
    }
}

/// What one invocation is to do, checked and ready: the only thing `main`
/// dispatches on.
#[derive(Debug)]
pub enum Action {
    /// Wrap a job. Boxed: the wrapper's settings are far larger than any
    /// reading command's.
    Run(Box<RunConfig>, FileStore),
    Logs(Source, LogsOptions),
    Ls(Source, LsOptions),
    Show(Source, ShowOptions),
    Grep(FileStore, GrepOptions),
    Gc(FileStore, GcOptions),
    Serve(Source, ServeConfig),
    /// Print a completion script for this shell.
    Completions(String),
    /// Catch up shipping to Redis.
    Ship(FileStore, logwrap::ship::ShipOptions),
}

/// Turns the parsed command line into an [`Action`]. A mistake in a value clap
/// cannot check (a duration, an address, a token file) is a [`UsageError`].
pub fn action(cli: Cli) -> Result<Action> {
    Ok(match cli.command {
        None => {
            let (cfg, store) = run_config(cli.run)?;
            Action::Run(Box::new(cfg), store)
        }
        Some(Command::Logs(a)) => logs_action(a)?,
        Some(Command::Ls(a)) => ls_action(a)?,
        Some(Command::Show(a)) => show_action(a)?,
        Some(Command::Grep(a)) => grep_action(a)?,
        Some(Command::Gc(a)) => gc_action(a)?,
        Some(Command::Serve(a)) => serve_action(a)?,
        Some(Command::Completions(a)) => Action::Completions(a.shell),
        Some(Command::Ship(a)) => ship_action(a)?,
    })
}

/// The shipping settings, if `--ship` (or `DATABUILD_LOG_SHIP`) names a URL;
/// an empty variable means unset.
fn ship_config(a: &ShipArgs) -> Result<Option<logwrap::ship::ShipConfig>> {
    let Some(url) = a.ship.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let ttl = duration("ship-ttl", &a.ship_ttl)?;
    let ca = ca_file(a.redis_ca_file.as_deref())?;
    logwrap::ship::ShipConfig::new(url, a.ship_maxlen, ttl)
        .map(|c| Some(c.with_ca(ca)))
        .map_err(|e| UsageError(format!("--ship: {e:#}")).into())
}

/// The CA certificates of `--redis-ca-file`, read now so a wrong path fails
/// before anything runs.
fn ca_file(path: Option<&std::path::Path>) -> Result<Option<logwrap::ship::CaFile>> {
    path.map(logwrap::ship::CaFile::read)
        .transpose()
        .map_err(|e| UsageError(format!("--redis-ca-file: {e:#}")).into())
}

fn ship_action(a: ShipCmdArgs) -> Result<Action> {
    let store = resolve_root(a.root.log_dir, RootMode::Read)?;
    let Some(ship) = ship_config(&a.ship)? else {
        return Err(
            UsageError("logwrap ship needs --ship URL or DATABUILD_LOG_SHIP".into()).into(),
        );
    };
    Ok(Action::Ship(
        store,
        logwrap::ship::ShipOptions {
            ship,
            ids: a.ids,
            all: a.all,
            wait_for_writer: a.wait_for_writer,
            live: a.live,
        },
    ))
}

fn logs_action(a: LogsArgs) -> Result<Action> {
    if let Some(url) = &a.server {
        // A malformed URL is a usage error (2), like any bad option.
        logwrap::serve::client::Target::parse(url, None)
            .map_err(|e| UsageError(format!("{e:#}")))?;
    }
    let store = reading_store(a.root.log_dir, a.source)?;
    Ok(Action::Logs(
        store,
        LogsOptions {
            id: a.id,
            follow: a.follow,
            tail: a.tail,
            since: a.since,
            stderr: a.stderr,
            all: a.all,
            prefix: a.prefix,
            timestamps: a.timestamps,
            exit_status: a.exit_status,
            token: a.token.or_else(|| {
                a.server.as_ref()?;
                std::env::var("DATABUILD_LOG_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
            }),
            server: a.server,
        },
    ))
}

fn ls_action(a: LsArgs) -> Result<Action> {
    let store = reading_store(a.root.log_dir, a.source)?;
    Ok(Action::Ls(
        store,
        LsOptions {
            json: a.json,
            status: a.status,
            limit: a.limit,
            ids: a.ids,
        },
    ))
}

fn show_action(a: ShowArgs) -> Result<Action> {
    let store = reading_store(a.root.log_dir, a.source)?;
    Ok(Action::Show(
        store,
        ShowOptions {
            id: a.id,
            json: a.json,
        },
    ))
}

fn grep_action(a: GrepArgs) -> Result<Action> {
    let case = if a.ignore_case {
        Case::Insensitive
    } else if a.case_sensitive {
        Case::Sensitive
    } else {
        Case::Smart
    };
    let pattern = Pattern::new(&a.pattern, a.regex, case).map_err(usage)?;
    if a.since_days.is_some_and(|d| !(d.is_finite() && d >= 0.0)) {
        return Err(usage(anyhow::anyhow!(
            "--since-days must be a non-negative number of days"
        )));
    }
    let store = resolve_root(a.root.log_dir, RootMode::Read)?;
    Ok(Action::Grep(
        store,
        GrepOptions {
            pattern,
            ids: a.ids,
            all: a.all,
            // clap allowed only known names.
            status: a.status.iter().filter_map(|s| Status::parse(s)).collect(),
            since_days: a.since_days,
            stream: a.stream.as_deref().map(|s| {
                if s == "stderr" {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                }
            }),
            count: a.count,
        },
    ))
}

fn gc_action(a: GcArgs) -> Result<Action> {
    // gc deletes, but a root that does not exist has nothing to delete: it is
    // resolved like any reader's, so `logwrap gc` never creates a root either.
    let store = resolve_root(a.root.log_dir, RootMode::Read)?;
    Ok(Action::Gc(
        store,
        GcOptions {
            dry_run: a.dry_run,
            ttl_days: a.ttl_days,
            max_size: a.max_size,
        },
    ))
}

fn serve_action(a: ServeArgs) -> Result<Action> {
    let mut cfg = server_config(&a.listen, &a.access).map_err(usage)?;
    cfg.max_connections = a.max_connections;
    cfg.header_timeout = positive("header-timeout", &a.header_timeout).map_err(usage)?;
    cfg.idle_timeout = positive("idle-timeout", &a.idle_timeout).map_err(usage)?;
    let store = reading_store(a.root.log_dir, a.source)?;
    Ok(Action::Serve(store, cfg))
}

/// Where a reading command reads: the jobs shipped to Redis with `--source`,
/// else the local root.
fn reading_store(log_dir: Option<PathBuf>, source: SourceArgs) -> Result<Source> {
    Ok(Source(match source.source {
        Some(url) => Arc::new(
            logwrap::ship::RedisStore::with_ca(
                &url,
                ca_file(source.redis_ca_file.as_deref())?.as_ref(),
            )
            .map_err(|e| UsageError(format!("--source: {e:#}")))?,
        ),
        None => Arc::new(resolve_root(log_dir, RootMode::Read)?),
    }))
}

/// Marks `e` as a mistake on the command line (exit 2 for a subcommand).
fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(UsageError(format!("{e:#}")))
}

/// A duration flag's value, with the flag named in the error.
fn duration(flag: &str, v: &str) -> Result<std::time::Duration> {
    parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

/// A duration flag that cannot be zero (a zero timeout would end every
/// connection at once).
fn positive(flag: &str, v: &str) -> Result<std::time::Duration> {
    let d = duration(flag, v)?;
    if d.is_zero() {
        bail!("--{flag}: must be more than zero");
    }
    Ok(d)
}

/// Settings of the HTTP server from the options shared by `serve` and the
/// wrapper's `--listen`, with the other bounds at their defaults.
pub fn server_config(listen: &str, args: &ServerArgs) -> Result<ServeConfig> {
    let token = match (&args.token_file, &args.token) {
        // Checked here rather than by clap so that the message also names the
        // environment variable, which clap counts as --token.
        (Some(_), Some(_)) => bail!(
            "give the token one way: --token-file, or --token / {}, not both",
            logwrap::serve::TOKEN_ENV
        ),
        (Some(path), None) => Some(logwrap::serve::read_token_file(path)?),
        (None, Some(t)) if t.is_empty() => {
            bail!("--token: must not be empty (leave it out to serve without a token)")
        }
        (None, t) => t.clone(),
    };
    let mut cfg = ServeConfig::new(listen, token)?;
    cfg.heartbeat = positive("heartbeat", &args.heartbeat)?;
    if let Some(bad) = args
        .allow_hosts
        .iter()
        .find(|h| logwrap::serve::host_name(h).is_empty())
    {
        bail!("--allow-host {bad:?}: expected a host name such as build.example");
    }
    cfg.allow_hosts = args.allow_hosts.clone();
    Ok(cfg)
}

/// Whether the caller is about to write under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootMode {
    /// Reading (`logs`, `ls`, `show`, `serve`, `gc`): nothing is created, and
    /// the root is the one a wrapper started now would write to.
    Read,
    /// The wrapper: the root is created if needed and must be writable.
    Write,
}

/// The store root (SPEC §2) for `explicit` (`--log-dir` / `DATABUILD_LOG_DIR`)
/// or the default, the one resolver every command goes through so that they
/// all agree. Read mode never fails: a root that is not there simply has no
/// jobs, and messages name it.
pub fn resolve_root(explicit: Option<PathBuf>, mode: RootMode) -> Result<FileStore> {
    Defaults::from_env().resolve(explicit, mode)
}

/// Where the root is when none is given: the system default and the per-user
/// fallback `${XDG_STATE_HOME:-$HOME/.local/state}/databuild`. A value, so
/// tests can point both at temp dirs.
#[derive(Debug, Clone)]
struct Defaults {
    system: PathBuf,
    user: Option<PathBuf>,
}

impl Defaults {
    fn from_env() -> Defaults {
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
        Defaults {
            system: PathBuf::from(DEFAULT_ROOT),
            user: state.map(|s| s.join("databuild")),
        }
    }

    fn resolve(&self, explicit: Option<PathBuf>, mode: RootMode) -> Result<FileStore> {
        if let Some(dir) = explicit.filter(|d| !d.as_os_str().is_empty()) {
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let store = FileStore::new(dir);
            if mode == RootMode::Write {
                store.ensure_writable()?;
            }
            return Ok(store);
        }
        let system = FileStore::new(&self.system);
        match mode {
            // The same choice as Write below, predicted without creating:
            // the system root if it could be written, else the user's.
            RootMode::Read => Ok(match &self.user {
                Some(user) if !could_write(&system.jobs_dir()) => FileStore::new(user),
                _ => system,
            }),
            RootMode::Write => {
                if system.ensure_writable().is_ok() {
                    return Ok(system);
                }
                let user = self.user.as_ref().context(
                    "cannot write /var/log/databuild and neither XDG_STATE_HOME nor HOME is set; pass --log-dir",
                )?;
                let store = FileStore::new(user);
                store.ensure_writable()?;
                Ok(store)
            }
        }
    }
}

/// Whether `dir` is, or could be created as, a directory this process can
/// write: the check of [`FileStore::ensure_writable`] without creating
/// anything. The nearest existing ancestor decides for what is missing.
fn could_write(dir: &Path) -> bool {
    let writable = |d: &Path| {
        nix::unistd::access(
            d,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok()
    };
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) => return m.is_dir() && writable(at),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) => at = parent,
                None => return false,
            },
            Err(_) => return false,
        }
    }
}

/// Turns the wrapper's flags into a [`RunConfig`] and its store.
pub fn run_config(args: RunArgs) -> Result<(RunConfig, FileStore)> {
    if args.command.is_empty() {
        bail!("no command given; usage: logwrap [OPTIONS] -- <cmd> [args...]");
    }
    // clap hands an unknown option to the trailing command; no real command
    // starts with '-', so this is a mistyped option.
    if let Some(flag) = args.command[0].to_str().filter(|a| a.starts_with('-')) {
        bail!("unknown option '{flag}'; see logwrap --help (the command goes after --)");
    }
    // An empty DATABUILD_JOB_RUN_ID means unset (as `VAR= cmd` is commonly
    // used to clear a variable); an empty --job-run-id is refused like any
    // other invalid id.
    let env_id = std::env::var("DATABUILD_JOB_RUN_ID")
        .ok()
        .filter(|s| !s.is_empty());
    let from_env = args.job_run_id.is_none() && env_id.is_some();
    let job_run_id = match args.job_run_id.or(env_id) {
        Some(id) => JobId::parse(&id).map_err(anyhow::Error::msg)?,
        None => JobId::generate(),
    };
    let timeout = args
        .timeout
        .as_deref()
        .map(|t| duration("timeout", t))
        .transpose()?;
    // `--timeout 0` means no timeout, as with timeout(1).
    let timeout = timeout.filter(|t| !t.is_zero());
    let partitions = if args.partitions.is_empty() {
        std::env::var("DATABUILD_BUILDING_PARTITIONS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    } else {
        // As from the variable: trimmed, and a blank one is no partition.
        args.partitions
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    };
    let listen = args
        .listen
        .as_deref()
        .map(|a| server_config(a, &args.access))
        .transpose()?;
    let mut cfg = RunConfig::new(job_run_id, args.command)
        .pty(!args.no_pty)
        .quiet(args.quiet)
        .window(args.cols, args.rows)
        .timeout(timeout)
        .kill_after(duration("kill-after", &args.kill_after)?)
        .drain_timeout(duration("drain-timeout", &args.drain_timeout)?)
        .partitions(partitions)
        .reap_orphans(true)
        .listen(listen)
        .redact(redaction(
            &args.redact,
            &args.redact_env,
            args.no_default_redact,
            &args.redact_files,
        )?)
        .max_log_size(args.max_log_size)
        .ship(match ship_config(&args.ship)? {
            Some(mut sc) => {
                // Shipping runs as a low-priority `logwrap ship --live` beside
                // the job, which also ships the end of a burst after the wrapper
                // has exited with its job (issue 10: --ship costs <= 1.1x).
                sc.handoff = std::env::current_exe().ok();
                sc.finish_wait = duration("ship-wait", &args.ship_wait)
                    .map_err(|e| UsageError(format!("{e:#}")))?;
                Some(sc)
            }
            None => None,
        });

    let store = resolve_root(args.log_dir, RootMode::Write)?;
    // Only an inherited id can name the job we run inside: one given with
    // --job-run-id keeps its meaning (a used one is refused).
    if from_env {
        let log_dir = std::env::var_os("DATABUILD_JOB_LOG_DIR").map(PathBuf::from);
        cfg.parent = enclosing_job(&store, &cfg.job_run_id, log_dir.as_deref());
    }
    // Invalid retention variables turn housekeeping off rather than failing the
    // job; `logwrap gc` reports them.
    cfg.housekeeping = logwrap::gc::Housekeeping::from_env(store.root()).ok();
    Ok((cfg, store))
}

/// The values the wrapper hides (issue 12): the environment variables whose
/// names match the globs and the lines of the `--redact-file`s; `None` with
/// `--redact off`. A file that cannot be read stops the job before it runs: a
/// secret that was meant to be hidden must not be printed.
fn redaction(
    mode: &str,
    globs: &[String],
    no_default: bool,
    files: &[PathBuf],
) -> Result<Option<logwrap::redact::Secrets>> {
    if mode == "off" {
        return Ok(None);
    }
    let mut all: Vec<String> = if no_default {
        Vec::new()
    } else {
        logwrap::redact::DEFAULT_ENV_GLOBS
            .iter()
            .map(|g| g.to_string())
            .collect()
    };
    all.extend(globs.iter().cloned());
    let mut secrets = logwrap::redact::Secrets::new();
    secrets.add_env(&all, std::env::vars_os());
    for path in files {
        let text = std::fs::read(path).with_context(|| {
            format!(
                "cannot read --redact-file {}; fix the path or drop the option",
                path.display()
            )
        })?;
        secrets.add_lines(&format!("--redact-file {}", path.display()), &text);
    }
    Ok(Some(secrets))
}

/// The job this wrapper runs inside (issue 13), if the inherited
/// `DATABUILD_JOB_RUN_ID` (`inherited`) and `DATABUILD_JOB_LOG_DIR`
/// (`log_dir`) say so: the directory is named after the id, it is that job's
/// directory in the root we write (not merely a job of the same name
/// elsewhere), and the job's writer is alive. Anything else (a scheduler's id
/// for a job not created yet, a job that has ended) keeps the id's plain
/// meaning.
fn enclosing_job(store: &FileStore, inherited: &JobId, log_dir: Option<&Path>) -> Option<JobId> {
    use logwrap::store::LogStore;
    use std::os::unix::fs::MetadataExt;
    let log_dir = log_dir?;
    if log_dir.file_name()? != inherited.as_str() {
        return None;
    }
    let (a, b) = (
        std::fs::metadata(log_dir).ok()?,
        std::fs::metadata(store.job_dir(inherited)).ok()?,
    );
    let same_dir = a.is_dir() && (a.dev(), a.ino()) == (b.dev(), b.ino());
    (same_dir && store.writer_alive(inherited)).then(|| inherited.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;

    #[test]
    fn read_mode_on_a_missing_root_creates_nothing() {
        let tmp = TempDir::new("root-read");
        let defaults = Defaults {
            system: tmp.join("var/log/databuild"),
            user: Some(tmp.join("state/databuild")),
        };
        let explicit = tmp.join("explicit");
        let store = defaults
            .resolve(Some(explicit.clone()), RootMode::Read)
            .unwrap();
        assert_eq!(store.root(), explicit);
        let store = defaults.resolve(None, RootMode::Read).unwrap();
        assert_eq!(
            store.root(),
            defaults.system,
            "the system root could be created"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "read mode created {left:?}");
    }

    #[test]
    fn read_mode_predicts_the_root_write_mode_creates() {
        let tmp = TempDir::new("root-agree");
        // A file where the system root's parent should be: nobody can create
        // it, not even root, so both modes must fall back to the user's.
        std::fs::write(tmp.join("var"), b"").unwrap();
        let fallback = Defaults {
            system: tmp.join("var/log/databuild"),
            user: Some(tmp.join("state/databuild")),
        };
        let writable = Defaults {
            system: tmp.join("sys/databuild"),
            user: Some(tmp.join("state2/databuild")),
        };
        for defaults in [fallback, writable] {
            let read = defaults.resolve(None, RootMode::Read).unwrap();
            let write = defaults.resolve(None, RootMode::Write).unwrap();
            assert_eq!(read.root(), write.root());
            assert!(write.jobs_dir().is_dir(), "write mode creates the root");
        }
    }

    #[test]
    fn write_mode_without_any_usable_root_says_to_pass_log_dir() {
        let tmp = TempDir::new("root-none");
        std::fs::write(tmp.join("var"), b"").unwrap();
        let defaults = Defaults {
            system: tmp.join("var/log/databuild"),
            user: None,
        };
        let err = defaults.resolve(None, RootMode::Write).unwrap_err();
        assert!(format!("{err:#}").contains("--log-dir"), "{err:#}");
        // Reading still names a root (it has no jobs) rather than failing.
        let read = defaults.resolve(None, RootMode::Read).unwrap();
        assert_eq!(read.root(), defaults.system);
    }

    #[test]
    fn only_the_live_job_whose_directory_is_inherited_encloses_us() {
        use logwrap::store::LogStore;
        let tmp = TempDir::new("enclosing");
        let store = FileStore::new(tmp.join("root"));
        store.ensure_writable().unwrap();
        let other = FileStore::new(tmp.join("other"));
        other.ensure_writable().unwrap();
        let id = JobId::parse("outer").unwrap();
        let dir = store.job_dir(&id);
        // Not created yet: a scheduler's id keeps its meaning.
        assert_eq!(enclosing_job(&store, &id, Some(&dir)), None);
        let sink = store.create_job(&id).unwrap();
        assert_eq!(enclosing_job(&store, &id, Some(&dir)), Some(id.clone()));
        assert_eq!(enclosing_job(&store, &id, None), None);
        // The same id in another root, or a directory named otherwise.
        let elsewhere = other.job_dir(&id);
        let _other_sink = other.create_job(&id).unwrap();
        assert_eq!(enclosing_job(&store, &id, Some(&elsewhere)), None);
        let renamed = JobId::parse("renamed").unwrap();
        assert_eq!(enclosing_job(&store, &renamed, Some(&dir)), None);
        // Its writer has ended: the id is simply in use.
        drop(sink);
        assert_eq!(enclosing_job(&store, &id, Some(&dir)), None);
    }

    #[test]
    fn bad_server_values_are_usage_errors() {
        let cli = <Cli as clap::Parser>::try_parse_from(["logwrap", "serve", "--heartbeat", "abc"])
            .unwrap();
        let err = action(cli).unwrap_err();
        assert!(logwrap::exit::is_usage(&err), "{err:#}");
        let cli =
            <Cli as clap::Parser>::try_parse_from(["logwrap", "serve", "--listen", "nonsense"])
                .unwrap();
        assert!(logwrap::exit::is_usage(&action(cli).unwrap_err()));
    }
}
