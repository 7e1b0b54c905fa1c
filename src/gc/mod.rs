//! Retention (SPEC §6, issue 5), in four parts: the policy (TTL and size cap,
//! from flags and environment, [`Policy`]), the pure selection that applies it
//! ([`select()`]), the collector that runs that very selection over the store's
//! jobs and has the store remove what it chose ([`collect()`]), and the
//! wrapper's hourly housekeeping ([`maybe_collect`]). This file holds `logwrap
//! gc` itself.

mod collect;
mod housekeeping;
mod policy;
mod select;

pub use crate::store::DirIdentity;
pub use collect::{collect, Mode, Options, Report};
pub use housekeeping::{
    maybe_collect, maybe_collect_in_background, Housekeeping, HOUSEKEEPING_INTERVAL,
};
pub use policy::{
    parse_size, parse_size_gb, parse_ttl_days, Policy, DEFAULT_MAX_SIZE_GB, DEFAULT_TTL_DAYS,
};
pub use select::{select, JobEntry, Reason, Selection};

use crate::exit;
use crate::store::LogStore;
use anyhow::Result;
use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard};

/// Threads `logwrap gc` judges and deletes jobs on, at most: deleting is mostly
/// kernel time spread over many directories, which a few threads overlap well
/// (twice the speed of one on tmpfs); beyond a handful they only queue on the
/// same filesystem.
const MAX_WORKERS: usize = 8;
/// `gc` exit status when some jobs could not be deleted (each one warned about).
const SOME_FAILED: i32 = 1;

// ---------------------------------------------------------------------------
// `logwrap gc`
// ---------------------------------------------------------------------------

/// What `logwrap gc` was asked for; `None` takes the setting from the
/// environment (SPEC §6), checked by `gc_cmd`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcOptions {
    /// Report what would go and delete nothing.
    pub dry_run: bool,
    /// Override of `DATABUILD_LOG_TTL_DAYS`.
    pub ttl_days: Option<std::time::Duration>,
    /// Override of `DATABUILD_LOG_MAX_SIZE_GB`, in bytes.
    pub max_size: Option<u64>,
}

/// `logwrap gc`: collects the root now and prints what went (or, with
/// `--dry-run`, what would go). Exit status 0, 2 for a bad setting, 1 if some
/// job could not be deleted.
pub fn gc_cmd(store: &dyn LogStore, args: GcOptions) -> Result<i32> {
    let policy = match Policy::with_overrides(args.ttl_days, args.max_size) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(io::stderr(), "logwrap: {e:#}");
            return Ok(exit::USAGE);
        }
    };
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Delete
    };
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, MAX_WORKERS);
    let r = collect(
        store,
        &policy,
        Options {
            mode,
            verbose: true,
            workers,
        },
    )?;
    let mut summary = match mode {
        Mode::DryRun => format!(
            "dry run: would delete {}, freeing {}; {} ({}) would be kept",
            jobs(r.deleted),
            human_exact(r.freed_bytes),
            jobs(r.kept),
            human(r.kept_bytes)
        ),
        Mode::Delete => format!(
            "deleted {}, freed {}; kept {} ({})",
            jobs(r.deleted),
            human_exact(r.freed_bytes),
            jobs(r.kept),
            human(r.kept_bytes)
        ),
    };
    if r.already_gone > 0 {
        summary += &format!(
            "; {} already taken by another collector",
            jobs(r.already_gone)
        );
    }
    if r.writer_alive > 0 {
        summary += &format!(
            "; {} left for later: its wrapper is still exiting",
            jobs(r.writer_alive)
        );
    }
    if r.leftovers_removed > 0 {
        let verb = if mode == Mode::DryRun {
            "would remove"
        } else {
            "removed"
        };
        summary += &format!(
            "; {verb} {} left over by interrupted collections",
            r.leftovers_removed
        );
    }
    let _ = writeln!(io::stdout(), "{summary}");
    if let Some(bytes) = r.running_over_cap {
        let _ = writeln!(
            io::stderr(),
            "logwrap: note: running jobs alone hold {}, more than the {} cap; they are never \
             deleted, so the root stays over the cap until they finish",
            human(bytes),
            human(policy.max_size)
        );
    }
    if r.failed > 0 {
        let _ = writeln!(
            io::stderr(),
            "logwrap: could not delete {}; see the warnings above",
            jobs(r.failed)
        );
        return Ok(SOME_FAILED);
    }
    Ok(0)
}

fn jobs(n: u64) -> String {
    if n == 1 {
        "1 job".to_string()
    } else {
        format!("{n} jobs")
    }
}

/// `1.5 MiB` style, for people.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `1.5 MiB (1572864 bytes)`: for people and for scripts.
fn human_exact(bytes: u64) -> String {
    format!("{} ({bytes} bytes)", human(bytes))
}

/// Locks `m`, recovering it if a thread panicked holding it: every update is a
/// few counter increments, so the data is never left half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_for_people() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10 << 30), "10.0 GiB");
        assert_eq!(jobs(1), "1 job");
        assert_eq!(jobs(2), "2 jobs");
    }
}
