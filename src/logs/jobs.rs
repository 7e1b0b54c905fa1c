//! Finding jobs for the reading commands: the root to read, every job newest
//! first with its live metadata, the most recent job, the ids closest to one that
//! does not exist, and the exit status a finished job stands for.

use crate::metadata::{Metadata, Status};
use crate::store::{JobId, LogStore, Unlisted};
use anyhow::{anyhow, Result};
use std::str::FromStr;

/// Exit status of `logs -f --exit-status` for an abandoned job: what a shell sees
/// for a wrapper killed by SIGKILL, the usual way a wrapper dies unfinished (a
/// power loss looks the same to a reader).
pub const ABANDONED_EXIT: i32 = 128 + 9;

/// How many close ids an unknown-id error suggests: enough to spot a typo, few
/// enough to stay on one line.
const SUGGESTIONS: usize = 3;

/// The most recent job (see [`LogStore::list_jobs`] for the order, which a
/// job cannot lie its way to the top of), or an error saying there is none.
/// A damaged job is passed over: it has nothing to show but its refusal, and
/// a job that damaged itself must not hide the one started after it.
pub fn most_recent(store: &dyn LogStore) -> Result<JobId> {
    let jobs = store.list_jobs()?;
    let mut damaged = None;
    for job in jobs {
        match &job.meta {
            Err(Unlisted::Damaged(why)) => {
                damaged.get_or_insert((job.id, why.clone()));
            }
            _ => return Ok(job.id),
        }
    }
    Err(match damaged {
        Some((id, why)) => anyhow!(
            "no readable jobs under {}: the most recent, {id}, is damaged ({why}); \
             `logwrap ls` lists the jobs",
            store.location()
        ),
        None => anyhow!(
            "no jobs under {}; run one with `logwrap -- CMD` or pass --log-dir",
            store.location()
        ),
    })
}

/// The error for a job that does not exist, naming the closest ids there are.
pub fn not_found(store: &dyn LogStore, id: &JobId) -> anyhow::Error {
    let ids = store.job_ids().unwrap_or_default();
    let names: Vec<&str> = ids.iter().map(JobId::as_str).collect();
    let close = closest(id.as_str(), &names, SUGGESTIONS);
    let where_ = store.location();
    if close.is_empty() {
        anyhow!("no job {id} under {where_}; `logwrap ls` lists the jobs")
    } else {
        anyhow!("no job {id} under {where_}; closest: {}", close.join(", "))
    }
}

/// Up to `n` of `ids` that look like `want`: by edit distance (a typo or two,
/// more for long ids), or containing it; nearest first.
pub fn closest<'a>(want: &str, ids: &[&'a str], n: usize) -> Vec<&'a str> {
    let limit = (want.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = ids
        .iter()
        .filter_map(|id| {
            let d = strsim::levenshtein(want, id);
            let contains = !want.is_empty() && id.contains(want);
            (d <= limit || contains).then_some((if contains { d.min(limit) } else { d }, *id))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, id)| id).collect()
}

/// The status the job's wrapper exited with (SPEC §1), as `logs -f --exit-status`
/// reports it: [`ABANDONED_EXIT`] when the wrapper died before recording one.
pub fn exit_status(meta: &Metadata) -> i32 {
    if meta.status == Status::Abandoned {
        return ABANDONED_EXIT;
    }
    let from_signal = || {
        let sig = nix::sys::signal::Signal::from_str(meta.signal.as_deref()?).ok()?;
        Some(128 + sig as i32)
    };
    meta.wrapper_exit_code
        .or(meta.exit_code)
        .or_else(from_signal)
        .unwrap_or(ABANDONED_EXIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_ids_are_near_misses_nearest_first() {
        let ids = ["build-41", "build-42", "deploy-7", "nightly-build-42-retry"];
        assert_eq!(closest("build-43", &ids, 3), vec!["build-41", "build-42"]);
        assert_eq!(
            closest("build-42", &ids, 3),
            vec!["build-42", "build-41", "nightly-build-42-retry"]
        );
        assert!(closest("zzzzzz", &ids, 3).is_empty());
        assert_eq!(closest("build-4", &ids, 1), vec!["build-41"]);
    }

    fn meta(status: Status) -> Metadata {
        let mut m: Metadata = serde_json::from_value(serde_json::json!({
            "job_run_id": "j", "command": ["x"], "cwd": "/", "hostname": "h", "pid": 1,
            "child_pid": null, "pty": false, "started_at": "2026-01-01T00:00:00.000Z",
            "ended_at": null, "duration_ms": null, "status": "running", "exit_code": null,
            "signal": null, "stdout": {"bytes": 0, "lines": 0},
            "stderr": {"bytes": 0, "lines": 0}, "missing_deps": [], "marker_errors": [],
            "building_partitions": [], "log_errors": [], "tail_url": null,
            "logwrap_version": "0"
        }))
        .unwrap();
        m.status = status;
        m
    }

    #[test]
    fn exit_status_is_the_wrappers_and_137_when_abandoned() {
        let mut m = meta(Status::Failed);
        m.exit_code = Some(3);
        assert_eq!(exit_status(&m), 3);
        m.wrapper_exit_code = Some(124);
        assert_eq!(exit_status(&m), 124, "a timeout is the wrapper's 124");
        let mut killed = meta(Status::Killed);
        killed.signal = Some("SIGTERM".into());
        assert_eq!(exit_status(&killed), 143, "older metadata: 128 + signal");
        assert_eq!(exit_status(&meta(Status::Abandoned)), ABANDONED_EXIT);
    }
}
