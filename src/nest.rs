//! Nested jobs (issue 13): a logwrap started inside a logwrapped job that writes
//! to the same root runs as a child of it, under the id `<parent>.<n>`, and
//! records `parent_job_run_id`. The id scheme lives here, with the one way to
//! find a job's children; the wrapper claims the ids, readers list them.

use crate::store::{JobId, LogStore, MAX_ID_LEN};
use anyhow::Result;

/// The id of child number `n` of `parent`, or why there is none: an id longer
/// than [`MAX_ID_LEN`] is refused, not cut, since a cut id would no longer
/// name its parent (deep nesting of long ids is the caller's to shorten by
/// passing `--job-run-id`).
pub fn child_id(parent: &JobId, n: u64) -> Result<JobId, String> {
    let id = format!("{parent}.{n}");
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "cannot run as a child of job {parent}: the child's id {id} would be longer \
             than {MAX_ID_LEN} characters; pass --job-run-id to choose one"
        ));
    }
    JobId::parse(&id)
}

/// The `n` of `id` if it has the form of a child id of `parent`
/// (`<parent>.<n>`, `n` a positive decimal number without leading zeros).
pub fn child_number(parent: &JobId, id: &JobId) -> Option<u64> {
    let n = id
        .as_str()
        .strip_prefix(parent.as_str())?
        .strip_prefix('.')?;
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The number to try first for a new child of `parent`: one more than the
/// highest child id among `ids`, so children are numbered in the order they
/// started and a new one costs one claim, not one per earlier sibling.
pub fn next_child_number(parent: &JobId, ids: &[JobId]) -> u64 {
    ids.iter()
        .filter_map(|id| child_number(parent, id))
        .max()
        .map_or(1, |n| n.saturating_add(1))
}

/// The jobs that ran inside job `id`, in the order they started (by `n`): the
/// jobs with a child id of `id` whose metadata names `id` as their parent (an
/// id chosen by hand with `--job-run-id` that merely looks like a child's is
/// not one).
pub fn children(store: &dyn LogStore, id: &JobId) -> Result<Vec<JobId>> {
    let mut found: Vec<(u64, JobId)> = store
        .job_ids()?
        .into_iter()
        .filter_map(|c| child_number(id, &c).map(|n| (n, c)))
        .filter(|(_, c)| {
            store
                .metadata(c)
                .is_ok_and(|m| m.parent_job_run_id.as_deref() == Some(id.as_str()))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, c)| c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    #[test]
    fn child_ids_are_parent_dot_number_and_never_too_long() {
        assert_eq!(child_id(&id("build"), 3).unwrap(), id("build.3"));
        assert_eq!(child_id(&id("b.1"), 12).unwrap(), id("b.1.12"));
        let long = id(&"x".repeat(MAX_ID_LEN - 2));
        assert_eq!(child_id(&long, 9).unwrap().as_str().len(), MAX_ID_LEN);
        let err = child_id(&long, 10).unwrap_err();
        assert!(err.contains("--job-run-id"), "{err}");
    }

    #[test]
    fn only_direct_child_ids_have_a_number() {
        let p = id("p");
        assert_eq!(child_number(&p, &id("p.7")), Some(7));
        for other in ["p", "p.", "p.1.2", "p.x", "p.01", "p.0", "pp.1", "q.1"] {
            assert_eq!(child_number(&p, &id(other)), None, "{other}");
        }
    }

    #[test]
    fn the_next_child_number_follows_the_highest() {
        let p = id("p");
        assert_eq!(next_child_number(&p, &[]), 1);
        let ids = [id("p.2"), id("p.10"), id("p.10.1"), id("p.99x"), id("q.50")];
        assert_eq!(next_child_number(&p, &ids), 11);
    }
}
