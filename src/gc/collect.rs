//! The collector: scans `job_runs/` in streaming passes on a few threads, judges
//! each entry into a [`JobEntry`] (metadata, live writer, size), runs the policy
//! of [`select::apply`] over those scans, and has the store remove each chosen
//! job and the trash of interrupted collections.

use super::select::{self, JobEntry, Reason};
use super::{human, human_exact, lock, Policy};
use crate::store::{JobId, Leftover, LogStore, Removed, ScanEntry};
use crate::timefmt;
use anyhow::Result;
use std::io::{self, Write};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::SystemTime;

/// A job directory without a readable metadata.json and without a live writer
/// may be one a wrapper is creating right now (mkdir, then lock, then
/// metadata.json): younger than this (by its mtime) it is never touched. The three
/// steps take microseconds; a minute covers a stalled network filesystem too.
const MIN_AGE_OF_UNKNOWN_MS: i64 = 60_000;
/// Warnings printed one by one per run; the rest are only counted, so a root full
/// of stray files cannot flood the terminal.
const MAX_WARNINGS: u64 = 20;
/// Directory entries queued per worker: enough that a worker never waits for the
/// reader, few enough that a huge root is never held in memory.
const QUEUE_PER_WORKER: usize = 64;

const DAY_MS: f64 = 86_400_000.0;

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
    /// Jobs judged finished whose writer turned out to be alive (a wrapper
    /// still exiting): kept, for a later collection.
    pub writer_alive: u64,
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

/// Collects the store once under `policy`: `select::apply` over scans of
/// `job_runs/`, each choice carried out as it is made.
///
/// Expired jobs are deleted while the directory is being read; only when the
/// rest is over the cap does a second pass pick the oldest finished jobs, keeping
/// just those. Memory is thus bounded by the number of cap deletions, however
/// many jobs the root holds.
pub fn collect(store: &dyn LogStore, policy: &Policy, opts: Options) -> Result<Report> {
    let c = Collector {
        store,
        policy: *policy,
        now_ms: timefmt::unix_ms(SystemTime::now()),
        opts,
        state: Mutex::new(State::default()),
    };
    let mut first = true;
    let tally = select::apply(
        &mut |offer| {
            // Only the first pass warns about odd entries and clears leftovers,
            // so nothing is said twice.
            let r = c.pass(first, offer);
            first = false;
            r
        },
        c.now_ms,
        policy,
        &|job, reason| c.delete(job, reason) != Done::Failed,
    )?;
    let st = c.state.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut report = st.report;
    report.kept = tally.kept;
    report.kept_bytes = tally.kept_bytes;
    if tally.unfinished_bytes > policy.max_size {
        report.running_over_cap = Some(tally.unfinished_bytes);
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
}

struct Collector<'a> {
    store: &'a dyn LogStore,
    policy: Policy,
    now_ms: i64,
    opts: Options,
    state: Mutex<State>,
}

impl Collector<'_> {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Walks the store's jobs once, handing each job to `f`, on `opts.workers`
    /// threads. Only the first pass warns about odd entries and clears
    /// leftovers.
    fn pass(&self, first: bool, f: &(dyn Fn(JobEntry) + Sync)) -> Result<()> {
        let handle = |entry: ScanEntry| match entry {
            ScanEntry::Job(id) => {
                if let Some(job) = self.judge(id, first) {
                    f(job);
                }
            }
            ScanEntry::Leftover(leftover) if first => self.leftover(&leftover),
            ScanEntry::Stray { name, why } if first => self.skip(&name, &why),
            _ => {}
        };
        if self.opts.workers <= 1 {
            return self.store.scan(&mut |e| handle(e));
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
                return self.store.scan(&mut |e| handle(e));
            }
            let scanned = self.store.scan(&mut |e| {
                let _ = tx.send(e);
            });
            // Hanging up lets the workers drain the queue and stop.
            drop(tx);
            scanned
        })
    }

    /// Judges one job: finished or not, when it ended, its size.
    fn judge(&self, id: JobId, first: bool) -> Option<JobEntry> {
        let usage = match self.store.job_usage(&id) {
            Ok(u) => u,
            // Deleted since the walk saw it: another collector's work.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                if first {
                    self.skip(id.as_str(), &e.to_string());
                }
                return None;
            }
        };
        if usage.deep && first {
            self.warn(format_args!(
                "job {id} has files that could not be measured (nested more than {} \
                 directories deep, or in a directory it made unreadable): its size counts \
                 only the rest (it is removed whole)",
                crate::store::MAX_WALK_DEPTH
            ));
        }
        let (finished, end_ms) = match self.store.live_metadata(&id) {
            Ok(meta) => {
                let end = meta
                    .ended_at
                    .as_deref()
                    .and_then(timefmt::parse_rfc3339_ms)
                    .or_else(|| timefmt::parse_rfc3339_ms(&meta.started_at))
                    .unwrap_or(usage.mtime_ms);
                (meta.status.is_finished(), end)
            }
            Err(e) if is_permission_denied(&e) => {
                // Not ours to judge (another user's job): never guess at it.
                if first {
                    self.skip(id.as_str(), &format!("{e:#}"));
                }
                return None;
            }
            Err(_) if self.store.writer_alive(&id) => (false, usage.mtime_ms),
            // No readable metadata.json and no live writer: damaged or abandoned,
            // unless it is young enough to be a job being created right now.
            Err(_) => (
                self.now_ms.saturating_sub(usage.mtime_ms) >= MIN_AGE_OF_UNKNOWN_MS,
                usage.mtime_ms,
            ),
        };
        Some(JobEntry {
            id,
            finished,
            end_ms,
            size: usage.size,
            dir: usage.dir,
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
        match self.store.remove_job(&job.id, job.dir) {
            Ok(Removed::Deleted) => {
                self.count_deleted(job.size);
                Done::Deleted
            }
            Ok(Removed::Untouched) => {
                self.state().report.already_gone += 1;
                Done::Gone
            }
            Ok(Removed::WriterAlive) => {
                self.state().report.writer_alive += 1;
                Done::Gone
            }
            Err(e) => {
                self.state().report.failed += 1;
                self.warn(format_args!("cannot delete job {}: {e:#}", job.id));
                Done::Failed
            }
        }
    }

    /// Clears what a collector that died mid-deletion left behind.
    fn leftover(&self, leftover: &Leftover) {
        if self.opts.mode == Mode::DryRun {
            if self.opts.verbose {
                let _ = writeln!(
                    io::stdout(),
                    "would remove {}  left over by an interrupted collection",
                    leftover.path().display()
                );
            }
            self.state().report.leftovers_removed += 1;
            return;
        }
        match self.store.clear_leftover(leftover) {
            Ok(true) => self.state().report.leftovers_removed += 1,
            Ok(false) => {}
            Err(e) => self.warn(format_args!(
                "cannot remove {}: {e}",
                leftover.path().display()
            )),
        }
    }

    fn count_deleted(&self, size: u64) {
        let report = &mut self.state().report;
        report.deleted += 1;
        report.freed_bytes = report.freed_bytes.saturating_add(size);
    }

    /// Skips the entry `name` where the store keeps jobs, saying why.
    fn skip(&self, name: &str, why: &str) {
        self.state().report.skipped += 1;
        let location = self.store.location();
        self.warn(format_args!("skipping {location}/{name}: {why}"));
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        let n = {
            let mut st = self.state();
            st.warnings += 1;
            st.warnings
        };
        if self.opts.verbose && n <= MAX_WARNINGS {
            // Names and errors in it come from entries jobs made.
            let msg = crate::logs::escape_controls(&msg.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Chunk, FileStore, Stream, TempRoot};
    use std::collections::BTreeSet;
    use std::fs;
    use std::time::Duration;

    const DAY_MS: i64 = 86_400_000;

    /// A job directory as a wrapper leaves it: metadata.json with `status`,
    /// started a minute before `ended_days_ago`, and `payload` bytes of stdout.
    fn fake_job(store: &FileStore, id: &str, status: &str, ended_days_ago: f64, payload: usize) {
        let id = JobId::parse(id).unwrap();
        let dir = store.job_dir(&id);
        fs::create_dir_all(&dir).unwrap();
        let end = timefmt::unix_ms(SystemTime::now()) - (ended_days_ago * DAY_MS as f64) as i64;
        let running = status == "running";
        let meta = serde_json::json!({
            "job_run_id": id.as_str(), "command": ["true"], "cwd": "/", "hostname": "test",
            "pid": 1, "child_pid": null, "pty": false,
            "started_at": timefmt::rfc3339_ms(end - 60_000),
            "ended_at": (!running).then(|| timefmt::rfc3339_ms(end)),
            "duration_ms": (!running).then_some(60_000), "status": status,
            "exit_code": (!running).then_some(0),
            "signal": null, "stdout": {"bytes": payload, "lines": 0},
            "stderr": {"bytes": 0, "lines": 0}, "missing_deps": [], "marker_errors": [],
            "building_partitions": [], "log_errors": [], "tail_url": null,
            "logwrap_version": "test"
        });
        fs::write(
            dir.join("metadata.json"),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        store
            .read_metadata(&id)
            .expect("the fixture's metadata must parse, or it is judged by mtime");
        fs::write(dir.join("stdout.log"), vec![b'x'; payload]).unwrap();
    }

    /// Every job of the root as one pass of the collector judges it.
    fn scan(store: &FileStore) -> Vec<JobEntry> {
        let c = Collector {
            store,
            policy: Policy::default(),
            now_ms: timefmt::unix_ms(SystemTime::now()),
            opts: Options {
                mode: Mode::DryRun,
                verbose: false,
                workers: 1,
            },
            state: Mutex::new(State::default()),
        };
        let seen = Mutex::new(Vec::new());
        c.pass(false, &|job| lock(&seen).push(job)).unwrap();
        seen.into_inner().unwrap()
    }

    fn job_ids(store: &FileStore) -> BTreeSet<String> {
        fs::read_dir(store.jobs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn collect_deletes_exactly_what_select_chooses_from_the_same_root() {
        let t = TempRoot::new("gc-collect");
        let store = &t.0;
        fake_job(store, "expired-a", "succeeded", 10.0, 5_000);
        fake_job(store, "expired-b", "failed", 8.0, 3_000);
        // Its metadata says running, but no writer holds it: abandoned, finished.
        fake_job(store, "abandoned", "running", 9.0, 1_000);
        fake_job(store, "old", "succeeded", 5.0, 40_000);
        fake_job(store, "mid", "succeeded", 3.0, 40_000);
        fake_job(store, "new", "succeeded", 1.0, 40_000);
        // A live job, bigger than any other: never a candidate.
        let running = JobId::parse("running").unwrap();
        let mut sink = store.create_job(&running).unwrap();
        sink.append(Stream::Stdout, &Chunk::new(&[b'y'; 60_000], 1))
            .unwrap();
        // No metadata yet and a fresh mtime: a job being created, kept.
        fs::create_dir_all(store.jobs_dir().join("young-unknown")).unwrap();

        let entries = scan(store);
        assert_eq!(entries.len(), 8, "{entries:?}");
        let size = |id: &str| entries.iter().find(|j| j.id.as_str() == id).unwrap().size;
        let ttl = Duration::from_secs(7 * 86_400);
        let now = timefmt::unix_ms(SystemTime::now());
        let kept_after_ttl: u64 = entries
            .iter()
            .filter(|j| !is_expired_at(j, now, ttl))
            .map(|j| j.size)
            .sum();
        // One byte more must go than "old" holds: "old" and then "mid".
        let policy = Policy {
            ttl,
            max_size: kept_after_ttl - size("old") - 1,
        };
        let chosen = select::select(entries.clone(), now, &policy);
        let chosen_ids: BTreeSet<String> = chosen
            .delete
            .iter()
            .map(|(j, _)| j.id.to_string())
            .collect();
        let want: BTreeSet<String> = ["expired-a", "expired-b", "abandoned", "old", "mid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(chosen_ids, want, "the fixture exercises both rules");

        let before = job_ids(store);
        let report = collect(
            store,
            &policy,
            Options {
                mode: Mode::Delete,
                verbose: false,
                workers: 3,
            },
        )
        .unwrap();
        let deleted: BTreeSet<String> = before.difference(&job_ids(store)).cloned().collect();
        assert_eq!(deleted, chosen_ids);
        assert_eq!(report.deleted, chosen.delete.len() as u64);
        let freed: u64 = chosen.delete.iter().map(|(j, _)| j.size).sum();
        assert_eq!(report.freed_bytes, freed);
        let total: u64 = entries.iter().map(|j| j.size).sum();
        assert_eq!(report.kept_bytes, total - freed);
        assert_eq!(report.kept, 3);
        assert_eq!(report.running_over_cap.is_some(), chosen.running_over_cap);
        assert_eq!((report.failed, report.already_gone), (0, 0));
        drop(sink);
    }

    fn is_expired_at(job: &JobEntry, now: i64, ttl: Duration) -> bool {
        select::is_expired(
            job,
            now,
            &Policy {
                ttl,
                max_size: u64::MAX,
            },
        )
    }
}

/// The collector works on any store through the trait: an in-memory one here.
#[cfg(test)]
mod any_store {
    use super::*;
    use crate::metadata::Status;
    use crate::store::{mem_metadata, MemStore};
    use std::time::Duration;

    #[test]
    fn collect_removes_expired_finished_jobs_of_a_memory_store_and_keeps_running_ones() {
        let store = MemStore::new();
        let job = |id: &str, status: Status, ended: Option<&str>| {
            let id = JobId::parse(id).unwrap();
            let mut sink = store.create_job(&id).unwrap();
            let mut meta = mem_metadata(id.as_str(), status, "2000-01-01T00:00:00.000Z");
            meta.ended_at = ended.map(str::to_string);
            sink.write_metadata(&meta, ended.is_some()).unwrap();
            sink
        };
        drop(job(
            "old",
            Status::Succeeded,
            Some("2000-01-01T00:01:00.000Z"),
        ));
        let _running = job("live", Status::Running, None);
        // A job that claims to be done while its writer lives is kept too.
        let _liar = job("liar", Status::Succeeded, Some("2000-01-01T00:01:00.000Z"));
        let policy = Policy {
            ttl: Duration::from_secs(86_400),
            max_size: u64::MAX,
        };
        let opts = Options {
            mode: Mode::Delete,
            verbose: false,
            workers: 2,
        };
        let report = collect(&store, &policy, opts).unwrap();
        assert_eq!(report.deleted, 1, "{report:?}");
        let ids: Vec<String> = store
            .job_ids()
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ids, ["liar", "live"]);
    }
}
