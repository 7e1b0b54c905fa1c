//! The choice (SPEC §6), with no I/O: finished jobs past the TTL go, then the
//! oldest finished ones until the rest fit under the size cap; a running job
//! never does. [`apply`] is the one place these rules live: [`select`] runs it
//! over a list, and the collector runs it over its scans of the root.

use super::{lock, Policy};
use crate::store::{DirIdentity, JobId};
use std::collections::BinaryHeap;
use std::sync::Mutex;

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

/// What is left once the policy has been applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Jobs kept, and the bytes they hold.
    pub kept: u64,
    pub kept_bytes: u64,
    /// Bytes held by jobs that may not be deleted (running).
    pub unfinished_bytes: u64,
}

/// Offers every job of a set once to the callback, possibly from several
/// threads at once; it is called once per pass of [`apply`].
pub type Scan<'a, E> = dyn FnMut(&(dyn Fn(JobEntry) + Sync)) -> Result<(), E> + 'a;

/// The retention policy over the jobs `scan` offers, streaming: each expired
/// job is handed to `act` as soon as it is seen; then, only if the rest is over
/// the cap, a second scan picks the oldest finished jobs that cover the excess
/// and hands them to `act` oldest first. `act` says whether the job left the
/// root (a failed deletion keeps the job, and its bytes count towards the cap).
/// Memory is bounded by the number of cap deletions, however many jobs there are.
pub fn apply<E>(
    scan: &mut Scan<'_, E>,
    now_ms: i64,
    policy: &Policy,
    act: &(dyn Fn(&JobEntry, Reason) -> bool + Sync),
) -> Result<Tally, E> {
    let tally = Mutex::new(Tally::default());
    scan(&|job| {
        if is_expired(&job, now_ms, policy) && act(&job, Reason::Expired) {
            return;
        }
        let mut t = lock(&tally);
        t.kept += 1;
        t.kept_bytes = t.kept_bytes.saturating_add(job.size);
        if !job.finished {
            t.unfinished_bytes = t.unfinished_bytes.saturating_add(job.size);
        }
    })?;
    let need = excess(lock(&tally).kept_bytes, policy);
    if need > 0 {
        let over = Mutex::new(OldestCovering::new(need));
        scan(&|job| {
            // Expired jobs were dealt with in the first pass; one that failed
            // to go then is not retried here.
            if job.finished && !is_expired(&job, now_ms, policy) {
                lock(&over).offer(job);
            }
        })?;
        let picked = over.into_inner().unwrap_or_else(|e| e.into_inner());
        // One by one, oldest first: if the run is cut short, the oldest went.
        for job in picked.into_oldest_first() {
            if act(&job, Reason::OverCap) {
                let mut t = lock(&tally);
                t.kept = t.kept.saturating_sub(1);
                t.kept_bytes = t.kept_bytes.saturating_sub(job.size);
            }
        }
    }
    Ok(tally.into_inner().unwrap_or_else(|e| e.into_inner()))
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
/// Running jobs are never chosen, whatever their age or size. This is
/// `apply`, the rules the collector runs, with every deletion succeeding.
pub fn select(jobs: Vec<JobEntry>, now_ms: i64, policy: &Policy) -> Selection {
    let chosen = Mutex::new(Vec::new());
    let tally = apply::<std::convert::Infallible>(
        &mut |offer| {
            jobs.iter().cloned().for_each(offer);
            Ok(())
        },
        now_ms,
        policy,
        &|job, reason| {
            lock(&chosen).push((job.clone(), reason));
            true
        },
    );
    let tally = match tally {
        Ok(t) => t,
        Err(never) => match never {},
    };
    let mut delete = chosen.into_inner().unwrap_or_else(|e| e.into_inner());
    // Expired jobs come in scan order; the over-cap ones, after them, already
    // oldest first. A stable sort on (reason, age) orders the expired ones only.
    delete.sort_by(|(a, ra), (b, rb)| {
        let rank = |r: &Reason| matches!(r, Reason::OverCap);
        (rank(ra), a.end_ms, &a.id).cmp(&(rank(rb), b.end_ms, &b.id))
    });
    Selection {
        delete,
        running_over_cap: tally.unfinished_bytes > policy.max_size,
    }
}

/// Bytes to free so that `kept_bytes` fits under the cap.
pub fn excess(kept_bytes: u64, policy: &Policy) -> u64 {
    kept_bytes.saturating_sub(policy.max_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn an_expired_job_that_fails_to_go_counts_towards_the_cap_and_is_not_retried() {
        let jobs = [
            job("stuck", true, 10.0, 100),
            job("old", true, 3.0, 100),
            job("new", true, 1.0, 100),
        ];
        let acted = Mutex::new(Vec::new());
        let tally = apply::<std::convert::Infallible>(
            &mut |offer| {
                jobs.iter().cloned().for_each(offer);
                Ok(())
            },
            NOW,
            &policy(7.0, 200),
            &|job, reason| {
                lock(&acted).push((job.id.to_string(), reason));
                job.id.as_str() != "stuck"
            },
        )
        .unwrap();
        // "stuck" stays (100 bytes) with old and new (200): 100 over the cap,
        // so the oldest non-expired one goes; "stuck" is not offered again.
        assert_eq!(
            acted.into_inner().unwrap(),
            vec![
                ("stuck".to_string(), Reason::Expired),
                ("old".to_string(), Reason::OverCap)
            ]
        );
        assert_eq!(
            tally,
            Tally {
                kept: 2,
                kept_bytes: 200,
                unfinished_bytes: 0
            }
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
}
