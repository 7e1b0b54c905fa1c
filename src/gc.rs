//! Retention (SPEC §6, issue 5). The choice is pure — finished jobs past the TTL
//! go, then the oldest finished ones until the root is under its size cap, never
//! a running one — and the collector around it scans `job_runs/` in streaming
//! passes, moves each job out of sight before deleting it so that concurrent
//! wrappers, readers and collectors never see half a job, and serves both
//! `logwrap gc` and the wrapper's hourly background housekeeping.

use crate::exit;
use crate::store::{self, FileStore, JobId, LogStore};
use crate::timefmt;
use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use nix::sys::time::TimeSpec;
use std::collections::BinaryHeap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Time-to-live of a finished job when neither `--ttl-days` nor
/// `DATABUILD_LOG_TTL_DAYS` says otherwise (SPEC §6).
pub const DEFAULT_TTL_DAYS: f64 = 7.0;
/// Size cap of the root in GiB when neither `--max-size` nor
/// `DATABUILD_LOG_MAX_SIZE_GB` says otherwise (SPEC §6).
pub const DEFAULT_MAX_SIZE_GB: f64 = 10.0;
/// The wrapper's housekeeping finishes a collection at most this often per root
/// (issue 5): a scan costs a few syscalls per job, so hourly keeps it negligible
/// beside the jobs while the root overshoots its cap by at most an hour's output.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60 * 60);

const TTL_ENV: &str = "DATABUILD_LOG_TTL_DAYS";
const MAX_SIZE_ENV: &str = "DATABUILD_LOG_MAX_SIZE_GB";

/// A job directory without a readable metadata.json and without a live writer
/// may be one a wrapper is creating right now (mkdir, then lock, then
/// metadata.json): younger than this (by its mtime) it is never touched. The three
/// steps take microseconds; a minute covers a stalled network filesystem too.
const MIN_AGE_OF_UNKNOWN_MS: i64 = 60_000;
/// Warnings printed one by one per run; the rest are only counted, so a root full
/// of stray files cannot flood the terminal.
const MAX_WARNINGS: u64 = 20;
/// Deepest directory nesting measured inside a job directory (a job may write its
/// own files into `DATABUILD_JOB_LOG_DIR`); bounds the recursion, and nothing a
/// job sensibly writes comes near it.
const MAX_WALK_DEPTH: usize = 32;
/// Largest TTL accepted, in days (about 2,700 years): keeps the millisecond
/// arithmetic far from overflow while meaning "never" to any user.
const MAX_TTL_DAYS: f64 = 1_000_000.0;
/// Largest size accepted (1 EiB): beyond any disk, and exactly representable
/// when converted from the f64 the fractional units parse into.
const MAX_SIZE_BYTES: f64 = (1u64 << 60) as f64;
/// Threads `logwrap gc` judges and deletes jobs on, at most: deleting is mostly
/// kernel time spread over many directories, which a few threads overlap well
/// (twice the speed of one on tmpfs); beyond a handful they only queue on the
/// same filesystem.
const MAX_WORKERS: usize = 8;
/// Directory entries queued per worker: enough that a worker never waits for the
/// reader, few enough that a huge root is never held in memory.
const QUEUE_PER_WORKER: usize = 64;
/// `gc` exit status when some jobs could not be deleted (each one warned about).
const SOME_FAILED: i32 = 1;

const GIB: f64 = (1u64 << 30) as f64;
const DAY_MS: f64 = 86_400_000.0;

/// Makes every trash name this process uses unique, even with several
/// collectors in one process (a scheduler embedding the library).
static TRASH_SEQ: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/// What to keep: finished jobs younger than `ttl`, and no more than `max_size`
/// bytes in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub ttl: Duration,
    pub max_size: u64,
}

impl Default for Policy {
    /// 7 days and 10 GiB (SPEC §6).
    fn default() -> Policy {
        Policy {
            ttl: Duration::from_secs_f64(DEFAULT_TTL_DAYS * 86_400.0),
            max_size: (DEFAULT_MAX_SIZE_GB * GIB) as u64,
        }
    }
}

impl Policy {
    /// The policy from `DATABUILD_LOG_TTL_DAYS` and `DATABUILD_LOG_MAX_SIZE_GB`,
    /// each falling back to its default when unset or empty.
    pub fn from_env() -> Result<Policy> {
        Policy::with_overrides(None, None)
    }

    /// As [`Policy::from_env`], but a value given on the command line wins.
    fn with_overrides(ttl: Option<Duration>, max_size: Option<u64>) -> Result<Policy> {
        let default = Policy::default();
        let ttl = match ttl {
            Some(t) => t,
            None => env_setting(TTL_ENV, parse_ttl_days)?.unwrap_or(default.ttl),
        };
        let max_size = match max_size {
            Some(m) => m,
            None => env_setting(MAX_SIZE_ENV, parse_size_gb)?.unwrap_or(default.max_size),
        };
        Ok(Policy { ttl, max_size })
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

fn env_setting<T>(name: &str, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => parse(&v).map(Some).map_err(|e| anyhow!("{name}: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name} is not valid UTF-8"),
    }
}

/// A plain non-negative decimal (`7`, `0.5`, `.5`): no sign, exponent, inf or NaN.
fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if !t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    t.parse().ok()
}

fn to_bytes(v: f64) -> Option<u64> {
    (v <= MAX_SIZE_BYTES).then_some(v as u64)
}

/// Parses a TTL in days (`--ttl-days`, `DATABUILD_LOG_TTL_DAYS`); fractions
/// allowed, 0 means every finished job has expired.
pub fn parse_ttl_days(s: &str) -> Result<Duration, String> {
    let days = parse_number(s)
        .ok_or_else(|| format!("invalid number of days '{s}': expected e.g. 7, 0.5 or 30"))?;
    if days > MAX_TTL_DAYS {
        return Err(format!("'{s}' days is too many (at most {MAX_TTL_DAYS})"));
    }
    Ok(Duration::from_secs_f64(days * 86_400.0))
}

/// Parses `--max-size`: bytes, or a number (fractions allowed) with `K`, `M`, `G`
/// or `T`, powers of 1024 as with `du` and journald; a trailing `B` or `iB` and
/// any case are accepted (`500M`, `10G`, `0.5g`, `2GiB`, `1048576`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value = parse_number(num).ok_or_else(|| {
        format!("invalid size '{s}': expected bytes or a number with K, M, G or T, e.g. 500M, 10G, 0.5G")
    })?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size unit in '{s}': use K, M, G or T (powers of 1024), or none for bytes"
            ))
        }
    };
    to_bytes(value * (1u64 << shift) as f64).ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parses `DATABUILD_LOG_MAX_SIZE_GB`: a number of GiB, fractions allowed.
pub fn parse_size_gb(s: &str) -> Result<u64, String> {
    let gb = parse_number(s)
        .ok_or_else(|| format!("invalid size '{s}': expected a number of GiB, e.g. 10 or 0.5"))?;
    to_bytes(gb * GIB).ok_or_else(|| format!("size '{s}' GiB is too large"))
}

// ---------------------------------------------------------------------------
// The choice (pure)
// ---------------------------------------------------------------------------

/// Identity of the directory a [`JobEntry`] was judged from: deletion checks it,
/// so a newer job that reused the id in the meantime is never taken instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirIdentity {
    pub ino: u64,
    pub mtime_ns: i64,
}

/// One job as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEntry {
    pub id: JobId,
    /// Nothing will write to it any more: it ended, its writer died (abandoned),
    /// or it is an old damaged directory. Only finished jobs are ever deleted.
    pub finished: bool,
    /// When it ended, in ms since the epoch: `ended_at`, else `started_at`, else
    /// the directory's mtime.
    pub end_ms: i64,
    /// Bytes it takes on disk.
    pub size: u64,
    pub dir: DirIdentity,
}

/// Why a job is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It finished longer ago than the TTL.
    Expired,
    /// It is among the oldest finished jobs while the root is over its cap.
    OverCap,
}

/// True for a finished job that ended more than the TTL before `now_ms`.
pub fn is_expired(job: &JobEntry, now_ms: i64, policy: &Policy) -> bool {
    job.finished && now_ms.saturating_sub(job.end_ms) > policy.ttl_ms()
}

/// Orders jobs oldest first (ties by id, so the choice is deterministic).
#[derive(Debug)]
struct ByAge(JobEntry);

impl ByAge {
    fn key(&self) -> (i64, &JobId) {
        (self.0.end_ms, &self.0.id)
    }
}

impl PartialEq for ByAge {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ByAge {}
impl PartialOrd for ByAge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByAge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Picks, from jobs offered one at a time, the shortest oldest-first run whose
/// sizes add up to at least `need` bytes. It keeps only what it would pick (plus
/// one), so memory follows the number of deletions, not the number of jobs.
#[derive(Debug)]
pub struct OldestCovering {
    need: u64,
    sum: u64,
    heap: BinaryHeap<ByAge>,
}

impl OldestCovering {
    /// Picks jobs worth at least `need` bytes (none when `need` is 0).
    pub fn new(need: u64) -> OldestCovering {
        OldestCovering {
            need,
            sum: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// Considers one more job.
    pub fn offer(&mut self, job: JobEntry) {
        if self.need == 0 {
            return;
        }
        self.sum = self.sum.saturating_add(job.size);
        self.heap.push(ByAge(job));
        // Drop the newest while the older ones still cover the need on their own.
        while let Some(newest) = self.heap.peek() {
            if self.sum - newest.0.size < self.need {
                break;
            }
            self.sum -= newest.0.size;
            self.heap.pop();
        }
    }

    /// The picked jobs, oldest first.
    pub fn into_oldest_first(self) -> Vec<JobEntry> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|j| j.0)
            .collect()
    }
}

/// What the policy deletes from a set of jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// In the order to delete: expired jobs oldest first, then over-cap ones
    /// oldest first.
    pub delete: Vec<(JobEntry, Reason)>,
    /// The jobs that may not be deleted (running) alone hold more than the cap.
    pub running_over_cap: bool,
}

/// The retention policy (SPEC §6) over a list of jobs: every finished job past
/// the TTL, then the oldest finished jobs until the rest fit under the cap.
/// Running jobs are never chosen, whatever their age or size.
///
/// The collector applies exactly these rules while streaming over the root
/// ([`is_expired`], then [`OldestCovering`] with [`excess`]), so it never has to
/// hold the whole list.
pub fn select(jobs: Vec<JobEntry>, now_ms: i64, policy: &Policy) -> Selection {
    let (mut expired, rest): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|j| is_expired(j, now_ms, policy));
    expired.sort_by(|a, b| (a.end_ms, &a.id).cmp(&(b.end_ms, &b.id)));
    let kept_bytes = total_size(rest.iter());
    let unfinished_bytes = total_size(rest.iter().filter(|j| !j.finished));
    let mut over = OldestCovering::new(excess(kept_bytes, policy));
    for job in rest.into_iter().filter(|j| j.finished) {
        over.offer(job);
    }
    let mut delete: Vec<_> = expired.into_iter().map(|j| (j, Reason::Expired)).collect();
    delete.extend(
        over.into_oldest_first()
            .into_iter()
            .map(|j| (j, Reason::OverCap)),
    );
    Selection {
        delete,
        running_over_cap: unfinished_bytes > policy.max_size,
    }
}

fn total_size<'a>(jobs: impl Iterator<Item = &'a JobEntry>) -> u64 {
    jobs.map(|j| j.size).fold(0, u64::saturating_add)
}

/// Bytes to free so that `kept_bytes` fits under the cap.
pub fn excess(kept_bytes: u64, policy: &Policy) -> u64 {
    kept_bytes.saturating_sub(policy.max_size)
}

/// Whether housekeeping that last finished at `last` should run again at `now`.
/// A stamp in the future (the clock went back) counts as old once it is an
/// interval away, so a clock jump cannot stop collection for long.
fn due(last: SystemTime, now: SystemTime) -> bool {
    match now.duration_since(last) {
        Ok(age) => age >= HOUSEKEEPING_INTERVAL,
        Err(ahead) => ahead.duration() >= HOUSEKEEPING_INTERVAL,
    }
}

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
    pub ttl_days: Option<Duration>,
    /// Override of `DATABUILD_LOG_MAX_SIZE_GB`, in bytes.
    pub max_size: Option<u64>,
}

/// `logwrap gc`: collects the root now and prints what went (or, with
/// `--dry-run`, what would go). Exit status 0, 2 for a bad setting, 1 if some
/// job could not be deleted.
pub fn gc_cmd(store: FileStore, args: GcOptions) -> Result<i32> {
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
        &store,
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

// ---------------------------------------------------------------------------
// The collector
// ---------------------------------------------------------------------------

/// Delete, or only say what would be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Delete,
    DryRun,
}

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Jobs deleted (in a dry run: that would be).
    pub deleted: u64,
    /// Bytes those held.
    pub freed_bytes: u64,
    /// Jobs that went away (or changed) between the scan and their deletion:
    /// another collector took them.
    pub already_gone: u64,
    /// Jobs that could not be deleted (each one warned about).
    pub failed: u64,
    /// Jobs kept, and the bytes they hold.
    pub kept: u64,
    pub kept_bytes: u64,
    /// Set when running jobs alone hold more than the cap: what they hold.
    pub running_over_cap: Option<u64>,
    /// Leftovers of interrupted collections removed (in a dry run: that would be).
    pub leftovers_removed: u64,
    /// Entries skipped with a warning: symlinks, stray files, unreadable ones.
    pub skipped: u64,
}

/// How to collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    /// Warnings to stderr and, in a dry run, one line per job on stdout; silent
    /// otherwise (housekeeping).
    pub verbose: bool,
    /// Threads judging and deleting jobs in parallel (1: all on the caller's).
    pub workers: usize,
}

/// Collects the store once under `policy`.
///
/// Expired jobs are deleted while the directory is being read; only when the
/// rest is over the cap does a second pass pick the oldest finished jobs, keeping
/// just those. Memory is thus bounded by the number of cap deletions, however
/// many jobs the root holds.
pub fn collect(store: &FileStore, policy: &Policy, opts: Options) -> Result<Report> {
    let jobs_dir = store.jobs_dir();
    match fs::symlink_metadata(&jobs_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Report::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", jobs_dir.display())),
        Ok(md) if md.file_type().is_symlink() => bail!(
            "{} is a symlink; gc never follows symlinks: point --log-dir at the real root",
            jobs_dir.display()
        ),
        Ok(md) if !md.is_dir() => bail!("{} is not a directory", jobs_dir.display()),
        Ok(_) => {}
    }
    let c = Collector {
        store,
        policy: *policy,
        now_ms: timefmt::unix_ms(SystemTime::now()),
        opts,
        state: Mutex::new(State::default()),
    };
    c.pass(&jobs_dir, true, &|job| {
        if is_expired(&job, c.now_ms, &c.policy) && c.delete(&job, Reason::Expired) != Done::Failed
        {
            return;
        }
        let mut st = c.state();
        st.kept += 1;
        st.kept_bytes = st.kept_bytes.saturating_add(job.size);
        if !job.finished {
            st.unfinished_bytes = st.unfinished_bytes.saturating_add(job.size);
        }
    })?;
    let need = excess(c.state().kept_bytes, policy);
    if need > 0 {
        let over = Mutex::new(OldestCovering::new(need));
        c.pass(&jobs_dir, false, &|job| {
            // Expired jobs were dealt with in the first pass (a dry run lists them
            // there); one that failed to go then is not retried here.
            if job.finished && !is_expired(&job, c.now_ms, &c.policy) {
                lock(&over).offer(job);
            }
        })?;
        let picked = over.into_inner().unwrap_or_else(|e| e.into_inner());
        // One by one, oldest first: if the run is cut short, the oldest went.
        for job in picked.into_oldest_first() {
            if c.delete(&job, Reason::OverCap) != Done::Failed {
                let mut st = c.state();
                st.kept = st.kept.saturating_sub(1);
                st.kept_bytes = st.kept_bytes.saturating_sub(job.size);
            }
        }
    }
    let st = c.state.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut report = st.report;
    report.kept = st.kept;
    report.kept_bytes = st.kept_bytes;
    if st.unfinished_bytes > policy.max_size {
        report.running_over_cap = Some(st.unfinished_bytes);
    }
    if opts.verbose && st.warnings > MAX_WARNINGS {
        let _ = writeln!(
            io::stderr(),
            "logwrap: warning: {} more warnings not shown",
            st.warnings - MAX_WARNINGS
        );
    }
    Ok(report)
}

/// Locks `m`, recovering it if a thread panicked holding it: every update is a
/// few counter increments, so the data is never left half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What became of one deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Deleted,
    Gone,
    Failed,
}

/// The collector's running totals, shared by its workers.
#[derive(Debug, Default)]
struct State {
    report: Report,
    warnings: u64,
    kept: u64,
    kept_bytes: u64,
    unfinished_bytes: u64,
}

struct Collector<'a> {
    store: &'a FileStore,
    policy: Policy,
    now_ms: i64,
    opts: Options,
    state: Mutex<State>,
}

impl Collector<'_> {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Reads `job_runs/` once, handing each job to `f`, on `opts.workers`
    /// threads. Only the first pass warns about odd entries and clears
    /// leftovers, so nothing is said twice.
    fn pass(&self, jobs_dir: &Path, first: bool, f: &(dyn Fn(JobEntry) + Sync)) -> Result<()> {
        let entries = fs::read_dir(jobs_dir)
            .with_context(|| format!("cannot list {}", jobs_dir.display()))?;
        let handle = |entry: io::Result<fs::DirEntry>| match entry {
            Ok(entry) => {
                if let Some(job) = self.judge(&entry, first) {
                    f(job);
                }
            }
            Err(e) if first => self.warn(format_args!(
                "cannot read an entry of {}: {e}",
                jobs_dir.display()
            )),
            Err(_) => {}
        };
        if self.opts.workers <= 1 {
            entries.for_each(handle);
            return Ok(());
        }
        let (tx, rx) = mpsc::sync_channel(self.opts.workers * QUEUE_PER_WORKER);
        let rx = Mutex::new(rx);
        std::thread::scope(|scope| {
            let worker = || loop {
                // Take the next entry and let go of the receiver before working
                // on it, so the others can take theirs.
                let next = lock(&rx).recv();
                match next {
                    Ok(entry) => handle(entry),
                    Err(_) => break,
                }
            };
            let spawned = (0..self.opts.workers)
                .map_while(|_| std::thread::Builder::new().spawn_scoped(scope, worker).ok())
                .count();
            if spawned == 0 {
                // No thread to be had (a process limit): do it all here.
                drop(tx);
                entries.for_each(handle);
                return;
            }
            for entry in entries {
                if tx.send(entry).is_err() {
                    break;
                }
            }
            // Hanging up lets the workers drain the queue and stop.
            drop(tx);
        });
        Ok(())
    }

    /// Turns one entry of `job_runs/` into a job, or skips it (with a warning in
    /// the first pass) without ever following a symlink.
    fn judge(&self, entry: &fs::DirEntry, first: bool) -> Option<JobEntry> {
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            if first {
                self.skip(&path, "its name is not a job id");
            }
            return None;
        };
        if name.starts_with('.') {
            // Temp files and collectors' trash: never jobs (ids never start with '.').
            if first {
                if let Some(pid) = FileStore::trash_owner(name) {
                    self.leftover(&path, pid);
                }
            }
            return None;
        }
        let Ok(id) = JobId::parse(name) else {
            if first {
                self.skip(&path, "its name is not a job id");
            }
            return None;
        };
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            // Deleted since the directory was read: another collector's work.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                if first {
                    self.skip(&path, &e.to_string());
                }
                return None;
            }
        };
        if !md.is_dir() {
            if first {
                let why = if md.file_type().is_symlink() {
                    "it is a symlink (gc never follows symlinks)"
                } else {
                    "it is not a directory"
                };
                self.skip(&path, why);
            }
            return None;
        }
        let size = match dir_usage(&path, 0) {
            Ok(n) => n.saturating_add(disk_usage(&md)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                if first {
                    self.skip(&path, &format!("cannot measure it: {e}"));
                }
                return None;
            }
        };
        let dir_ms = md.mtime() * 1000 + md.mtime_nsec() / 1_000_000;
        let (finished, end_ms) = match self.store.live_metadata(&id) {
            Ok(meta) => {
                let end = meta
                    .ended_at
                    .as_deref()
                    .and_then(timefmt::parse_rfc3339_ms)
                    .or_else(|| timefmt::parse_rfc3339_ms(&meta.started_at))
                    .unwrap_or(dir_ms);
                (meta.status.is_finished(), end)
            }
            Err(e) if is_permission_denied(&e) => {
                // Not ours to judge (another user's job): never guess at it.
                if first {
                    self.skip(&path, &format!("{e:#}"));
                }
                return None;
            }
            Err(_) if self.store.writer_alive(&id) => (false, dir_ms),
            // No readable metadata.json and no live writer: damaged or abandoned,
            // unless it is young enough to be a job being created right now.
            Err(_) => (
                self.now_ms.saturating_sub(dir_ms) >= MIN_AGE_OF_UNKNOWN_MS,
                dir_ms,
            ),
        };
        Some(JobEntry {
            id,
            finished,
            end_ms,
            size,
            dir: identity(&md),
        })
    }

    /// Deletes one job (or, in a dry run, lists it).
    fn delete(&self, job: &JobEntry, reason: Reason) -> Done {
        if self.opts.mode == Mode::DryRun {
            let why = match reason {
                Reason::Expired => format!(
                    "ended {} ago, past the {} TTL",
                    days(self.now_ms.saturating_sub(job.end_ms)),
                    days(self.policy.ttl_ms())
                ),
                Reason::OverCap => format!(
                    "oldest finished (ended {} ago) while the jobs hold more than {}",
                    days(self.now_ms.saturating_sub(job.end_ms)),
                    human(self.policy.max_size)
                ),
            };
            if self.opts.verbose {
                let _ = writeln!(
                    io::stdout(),
                    "would delete {}  {}  {why}",
                    job.id,
                    human_exact(job.size)
                );
            }
            self.count_deleted(job.size);
            return Done::Deleted;
        }
        match remove_job(self.store, job) {
            Ok(true) => {
                self.count_deleted(job.size);
                Done::Deleted
            }
            Ok(false) => {
                self.state().report.already_gone += 1;
                Done::Gone
            }
            Err(e) => {
                self.state().report.failed += 1;
                self.warn(format_args!("cannot delete job {}: {e:#}", job.id));
                Done::Failed
            }
        }
    }

    /// Clears what a collector that died mid-deletion left behind. One still
    /// alive is left to finish its own work.
    fn leftover(&self, path: &Path, pid: u32) {
        if pid_alive(pid) {
            return;
        }
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return self.skip(path, "it is not a directory"),
            Err(_) => return,
        }
        if self.opts.mode == Mode::DryRun {
            if self.opts.verbose {
                let _ = writeln!(
                    io::stdout(),
                    "would remove {}  left over by an interrupted collection",
                    path.display()
                );
            }
            self.state().report.leftovers_removed += 1;
            return;
        }
        match fs::remove_dir_all(path) {
            Ok(()) => self.state().report.leftovers_removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => self.warn(format_args!("cannot remove {}: {e}", path.display())),
        }
    }

    fn count_deleted(&self, size: u64) {
        let report = &mut self.state().report;
        report.deleted += 1;
        report.freed_bytes = report.freed_bytes.saturating_add(size);
    }

    fn skip(&self, path: &Path, why: &str) {
        self.state().report.skipped += 1;
        self.warn(format_args!("skipping {}: {why}", path.display()));
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        let n = {
            let mut st = self.state();
            st.warnings += 1;
            st.warnings
        };
        if self.opts.verbose && n <= MAX_WARNINGS {
            let _ = writeln!(io::stderr(), "logwrap: warning: {msg}");
        }
    }
}

fn is_permission_denied(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::PermissionDenied)
}

fn days(ms: i64) -> String {
    format!("{:.1} days", ms as f64 / DAY_MS)
}

fn identity(md: &fs::Metadata) -> DirIdentity {
    DirIdentity {
        ino: md.ino(),
        mtime_ns: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
    }
}

/// Space a file takes on disk, as `du` counts it.
fn disk_usage(md: &fs::Metadata) -> u64 {
    md.blocks().saturating_mul(512)
}

/// Disk usage of everything inside `dir`, never following symlinks. Entries that
/// vanish meanwhile are not an error; `dir` itself vanishing is (NotFound).
fn dir_usage(dir: &Path, depth: usize) -> io::Result<u64> {
    if depth > MAX_WALK_DEPTH {
        return Err(io::Error::other(format!(
            "nested more than {MAX_WALK_DEPTH} directories deep"
        )));
    }
    let mut total = 0u64;
    for entry in fs::read_dir(dir)? {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // DirEntry::metadata is an lstat: a symlink counts as itself.
        let md = match entry.metadata() {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        total = total.saturating_add(disk_usage(&md));
        if md.is_dir() {
            match dir_usage(&entry.path(), depth + 1) {
                Ok(n) => total = total.saturating_add(n),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

/// Deletes a job judged finished: first renamed to a unique dot-name in
/// `job_runs/` (atomic, so readers see the whole job or nothing and two
/// collectors can never both take it), then checked to be the very directory
/// that was judged, then removed. `Ok(false)`: it was gone or had changed.
fn remove_job(store: &FileStore, job: &JobEntry) -> Result<bool> {
    let dir = store.job_dir(&job.id);
    let seq = TRASH_SEQ.fetch_add(1, Ordering::Relaxed);
    let trash = store.trash_path(&job.id, std::process::id(), seq);
    match rename_noreplace(&dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot move {} aside", dir.display())),
    }
    let md = fs::symlink_metadata(&trash)
        .with_context(|| format!("cannot inspect {}", trash.display()))?;
    // The job was judged finished a moment ago from its metadata; its writer's
    // lock on the directory (which moved with it) is the last word, right
    // before anything is deleted (issue 8).
    if identity(&md) != job.dir || store::dir_writer_alive(&trash) {
        // Another collector took the job we judged and a new job reused its id
        // since, or its writer is alive after all: give it back untouched.
        rename_noreplace(&trash, &dir).with_context(|| {
            format!(
                "a new job took id {} while it was being deleted and could not be put back; it is at {}",
                job.id,
                trash.display()
            )
        })?;
        return Ok(false);
    }
    // std's remove_dir_all never follows symlinks (it unlinks them) and
    // tolerates entries vanishing under it.
    match fs::remove_dir_all(&trash) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", trash.display())),
    }
}

/// rename(2) that fails instead of replacing `to` (an empty directory would
/// otherwise be silently replaced). Falls back to a plain rename on filesystems
/// without RENAME_NOREPLACE; the names used are unique anyway.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL | Errno::ENOSYS) => fs::rename(from, to),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// True unless `pid` certainly does not exist (EPERM means it does).
fn pid_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None),
            Err(Errno::ESRCH)
        ),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Housekeeping in the wrapper
// ---------------------------------------------------------------------------

/// The wrapper's own retention housekeeping (SPEC §6): which root, which policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Housekeeping {
    pub root: PathBuf,
    pub policy: Policy,
}

impl Housekeeping {
    /// Housekeeping of `root` with the policy from the environment.
    pub fn from_env(root: impl Into<PathBuf>) -> Result<Housekeeping> {
        Ok(Housekeeping {
            root: root.into(),
            policy: Policy::from_env()?,
        })
    }
}

/// Collects the root if no collection finished there within
/// [`HOUSEKEEPING_INTERVAL`] and no other process is collecting it now;
/// `Ok(None)` when it was not due. The stamp `<root>/.gc-stamp` is flocked while
/// a collection runs and touched when one finishes, so a collection cut short
/// (its wrapper exited first) is taken up by the next wrapper.
pub fn maybe_collect(hk: &Housekeeping) -> Result<Option<Report>> {
    let store = FileStore::new(&hk.root);
    let path = store.gc_stamp_path();
    // O_NONBLOCK: a FIFO planted there must not hang us; O_NOFOLLOW: nor a symlink
    // lead us out of the root.
    let open = |create: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
    };
    let (stamp, created) = match open(true) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
            open(false).with_context(|| format!("cannot open {}", path.display()))?,
            false,
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    let is_file = stamp
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .is_file();
    if !is_file {
        bail!("{} is not a regular file", path.display());
    }
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(stamp.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(None); // another process is collecting right now
        }
        return Err(err).with_context(|| format!("cannot lock {}", path.display()));
    }
    // Read the time only under the lock: a collection may just have finished.
    let last = stamp
        .metadata()
        .and_then(|m| m.modified())
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !created && !due(last, SystemTime::now()) {
        return Ok(None);
    }
    // One thread: housekeeping shares the machine with the job it runs beside.
    let opts = Options {
        mode: Mode::Delete,
        verbose: false,
        workers: 1,
    };
    let report = collect(&store, &hk.policy, opts)?;
    // UTIME_NOW needs only write access, so wrappers run by different users of
    // one root can all refresh a stamp one of them created.
    nix::sys::stat::futimens(&stamp, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW)
        .with_context(|| format!("cannot update {}", path.display()))?;
    Ok(Some(report))
}

/// Runs [`maybe_collect`] on a thread of its own and returns at once. Errors are
/// dropped on purpose: housekeeping must never delay, fail or add noise to the
/// job it runs beside (issue 5); `logwrap gc` reports them.
pub fn maybe_collect_in_background(hk: Housekeeping) {
    let _ = std::thread::Builder::new()
        .name("logwrap-gc".into())
        .spawn(move || {
            let _ = maybe_collect(&hk);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_800_000_000_000;

    fn job(id: &str, finished: bool, age_days: f64, size: u64) -> JobEntry {
        JobEntry {
            id: JobId::parse(id).unwrap(),
            finished,
            end_ms: NOW - (age_days * DAY as f64) as i64,
            size,
            dir: DirIdentity::default(),
        }
    }

    fn policy(ttl_days: f64, max_size: u64) -> Policy {
        Policy {
            ttl: Duration::from_secs_f64(ttl_days * 86_400.0),
            max_size,
        }
    }

    fn chosen(s: &Selection) -> Vec<(&str, Reason)> {
        s.delete.iter().map(|(j, r)| (j.id.as_str(), *r)).collect()
    }

    #[test]
    fn sizes_take_binary_units_fractions_and_plain_bytes() {
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("0.5G"), Ok(512 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        assert_eq!(parse_size(" 3 KB "), Ok(3 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("12b"), Ok(12));
        for bad in [
            "",
            "M",
            "-1G",
            "1.2.3M",
            "10X",
            "1e3",
            "inf",
            "nan",
            "99999999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttl_days_and_the_gb_variable_take_fractions() {
        assert_eq!(parse_ttl_days("7"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl_days("0.5"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl_days("0"), Ok(Duration::ZERO));
        assert_eq!(parse_size_gb("0.5"), Ok(512 << 20));
        assert_eq!(parse_size_gb("10"), Ok(10 << 30));
        for bad in ["", "-1", "7d", "abc", "1e9", "2000000"] {
            assert!(parse_ttl_days(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size_gb("10G").is_err());
    }

    #[test]
    fn the_default_policy_is_seven_days_and_ten_gib() {
        let p = Policy::default();
        assert_eq!(p.ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(p.max_size, 10 << 30);
    }

    #[test]
    fn expired_finished_jobs_go_oldest_first_and_running_ones_never() {
        let jobs = vec![
            job("recent", true, 1.0, 10),
            job("old-b", true, 9.0, 10),
            job("old-a", true, 30.0, 10),
            job("old-running", false, 400.0, 10),
            job("abandoned", true, 8.0, 10),
        ];
        let s = select(jobs, NOW, &policy(7.0, u64::MAX));
        assert_eq!(
            chosen(&s),
            vec![
                ("old-a", Reason::Expired),
                ("old-b", Reason::Expired),
                ("abandoned", Reason::Expired)
            ]
        );
        assert!(!s.running_over_cap);
    }

    #[test]
    fn the_ttl_boundary_keeps_a_job_exactly_at_the_ttl() {
        let s = select(vec![job("edge", true, 7.0, 1)], NOW, &policy(7.0, u64::MAX));
        assert!(s.delete.is_empty());
        let s = select(
            vec![job("edge", true, 7.0, 1)],
            NOW + 1,
            &policy(7.0, u64::MAX),
        );
        assert_eq!(chosen(&s), vec![("edge", Reason::Expired)]);
    }

    #[test]
    fn over_the_cap_the_oldest_finished_go_until_the_rest_fits() {
        let jobs = vec![
            job("d", true, 1.0, 100),
            job("running", false, 6.0, 100),
            job("a", true, 4.0, 100),
            job("c", true, 2.0, 100),
            job("b", true, 3.0, 100),
        ];
        // 500 bytes, cap 250: a (oldest) and b go, leaving 300 > 250, so c too.
        let s = select(jobs, NOW, &policy(7.0, 250));
        assert_eq!(
            chosen(&s),
            vec![
                ("a", Reason::OverCap),
                ("b", Reason::OverCap),
                ("c", Reason::OverCap)
            ]
        );
        assert!(!s.running_over_cap);
    }

    #[test]
    fn the_cap_applies_after_the_ttl() {
        let jobs = vec![
            job("expired", true, 10.0, 1000),
            job("old", true, 5.0, 100),
            job("new", true, 1.0, 100),
        ];
        // Once the expired job is gone 200 bytes remain: only "old" must go.
        let s = select(jobs, NOW, &policy(7.0, 150));
        assert_eq!(
            chosen(&s),
            vec![("expired", Reason::Expired), ("old", Reason::OverCap)]
        );
        let s = select(
            vec![job("a", true, 1.0, 100), job("b", true, 2.0, 100)],
            NOW,
            &policy(7.0, 200),
        );
        assert!(s.delete.is_empty(), "exactly at the cap is within it");
    }

    #[test]
    fn running_jobs_alone_over_the_cap_are_flagged_not_deleted() {
        let jobs = vec![
            job("big-running", false, 20.0, 1000),
            job("small-done", true, 1.0, 10),
        ];
        let s = select(jobs, NOW, &policy(7.0, 500));
        assert_eq!(chosen(&s), vec![("small-done", Reason::OverCap)]);
        assert!(s.running_over_cap);
    }

    #[test]
    fn ties_in_age_are_broken_by_id() {
        let jobs = vec![job("b", true, 2.0, 10), job("a", true, 2.0, 10)];
        let s = select(jobs, NOW, &policy(1.0, u64::MAX));
        assert_eq!(
            chosen(&s),
            vec![("a", Reason::Expired), ("b", Reason::Expired)]
        );
    }

    #[test]
    fn oldest_covering_keeps_only_what_it_picks_in_any_offer_order() {
        let sizes = [30u64, 5, 50, 20, 10, 40, 25];
        let all: Vec<JobEntry> = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| job(&format!("j{i}"), true, i as f64, *s))
            .collect();
        // Oldest first: j6 (25 bytes), j5 (40), j4 (10), ...; 70 bytes need all three.
        for rotate in 0..all.len() {
            let mut order = all.clone();
            order.rotate_left(rotate);
            order.reverse();
            let mut p = OldestCovering::new(70);
            for j in order {
                p.offer(j);
                assert!(p.heap.len() <= 4, "holds at most the picks plus one");
            }
            let ids: Vec<_> = p.into_oldest_first().into_iter().map(|j| j.id).collect();
            let want: Vec<_> = ["j6", "j5", "j4"]
                .iter()
                .map(|s| JobId::parse(s).unwrap())
                .collect();
            assert_eq!(ids, want);
        }
        let mut none = OldestCovering::new(0);
        none.offer(job("x", true, 1.0, 5));
        assert!(none.into_oldest_first().is_empty());
    }

    #[test]
    fn housekeeping_is_due_after_an_interval_or_a_clock_jump() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(!due(t, t));
        assert!(!due(t, t + HOUSEKEEPING_INTERVAL - Duration::from_secs(1)));
        assert!(due(t, t + HOUSEKEEPING_INTERVAL));
        assert!(
            !due(t + Duration::from_secs(5), t),
            "slightly ahead: not yet"
        );
        assert!(
            due(t + 2 * HOUSEKEEPING_INTERVAL, t),
            "far ahead: clock went back"
        );
    }

    #[test]
    fn trash_names_round_trip_to_their_collector_pid() {
        let store = FileStore::new("/r");
        let id = JobId::parse("build-42-x").unwrap();
        let trash = store.trash_path(&id, 4242, 7);
        let name = trash.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with('.'), "{name}");
        assert_eq!(trash.parent(), Some(store.jobs_dir().as_path()));
        assert_eq!(FileStore::trash_owner(name), Some(4242));
        for not_trash in [
            ".deleting-",
            ".deleting-x",
            ".metadata.json.tmp",
            "job-1-2-3",
        ] {
            assert_eq!(FileStore::trash_owner(not_trash), None, "{not_trash}");
        }
    }

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
