//! Waiting for a job that has not started yet: `logs -f` launched by a
//! scheduler together with the job may look a few milliseconds too early.

use super::say;
use crate::store::{self, JobId, LogStore};
use anyhow::Result;
use std::time::{Duration, Instant};

/// Waits up to `limit` for job `id`'s metadata to appear (the wrapper writes it
/// right after creating the job), telling the user once on stderr. Returns
/// false if it did not appear in time.
pub fn wait_for_job(
    store: &dyn LogStore,
    id: &JobId,
    limit: Duration,
    slice: Duration,
) -> Result<bool> {
    // Its own watcher: these watches must not wake the follower later.
    let mut watcher = store.watcher()?;
    let deadline = Instant::now() + limit;
    let mut told = false;
    loop {
        // Watch first, then look: a job created between the two is seen either
        // by the look or by an event. Neither may exist yet (no root, no job).
        let _ = watcher.watch_list();
        let _ = watcher.watch_job(id);
        match store.metadata(id) {
            Err(e) if store::is_not_found(&e) => {}
            _ => return Ok(true),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        if !told {
            say(&format!(
                "waiting up to {}s for job {id} to start...",
                limit.as_secs()
            ));
            told = true;
        }
        // Slices bound the wait when nothing could be watched yet.
        watcher.wait((deadline - now).min(slice))?;
    }
}
