//! Validated settings: raw flags and environment variables become a
//! [`RunConfig`] and a store root here, and every mistake a user can make gets
//! one clear message.

use crate::cli::RunArgs;
use crate::run::RunConfig;
use crate::store::{FileStore, JobId};
use crate::timefmt::parse_duration;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The root used when neither `--log-dir` nor `DATABUILD_LOG_DIR` is given.
pub const DEFAULT_ROOT: &str = "/var/log/databuild";

/// Picks and checks the store root (SPEC §2): an explicit root must be writable;
/// the default falls back to `${XDG_STATE_HOME:-$HOME/.local/state}/databuild`.
pub fn resolve_root(explicit: Option<PathBuf>) -> Result<FileStore> {
    if let Some(dir) = explicit.filter(|d| !d.as_os_str().is_empty()) {
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let store = FileStore::new(dir);
        store.ensure_writable()?;
        return Ok(store);
    }
    let default = FileStore::new(DEFAULT_ROOT);
    if default.ensure_writable().is_ok() {
        return Ok(default);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .context("cannot write /var/log/databuild and neither XDG_STATE_HOME nor HOME is set; pass --log-dir")?;
    let store = FileStore::new(state.join("databuild"));
    store.ensure_writable()?;
    Ok(store)
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
    let job_run_id = match args.job_run_id.or(env_id) {
        Some(id) => JobId::parse(&id).map_err(anyhow::Error::msg)?,
        None => JobId::generate(),
    };
    let duration =
        |flag: &str, v: &str| parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"));
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
        args.partitions
    };
    let mut cfg = RunConfig {
        job_run_id,
        command: args.command,
        pty: !args.no_pty,
        quiet: args.quiet,
        cols: args.cols,
        rows: args.rows,
        timeout,
        kill_after: duration("kill-after", &args.kill_after)?,
        drain_timeout: duration("drain-timeout", &args.drain_timeout)?,
        partitions,
        reap_orphans: true,
        housekeeping: None,
        listen: args
            .listen
            .as_deref()
            .map(|a| crate::serve::ServeConfig::from_args(a, &args.access))
            .transpose()?,
    };
    let store = resolve_root(args.log_dir)?;
    // Invalid retention variables turn housekeeping off rather than failing the
    // job; `logwrap gc` reports them.
    cfg.housekeeping = crate::gc::Housekeeping::from_env(store.root()).ok();
    Ok((cfg, store))
}
