//! Waking `logs -f` when something changes: inotify on the job's directory (new
//! log data, a rewritten metadata.json, a closed lock, a deletion), so a new line
//! is printed within milliseconds without polling the files.

use super::say;
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a wake-up found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// Something other than log data changed (metadata.json replaced, a file
    /// closed or created or deleted, events lost): look at the job's status now.
    pub check: bool,
}

/// An inotify instance with the directories it watches.
pub struct Watcher {
    inotify: Inotify,
}

/// Events that matter in a job directory or its parents. Log appends are
/// `IN_MODIFY`; the wrapper replaces metadata.json by rename (`IN_MOVED_TO`); a
/// wrapper that dies, even of SIGKILL, closes its lock and logs
/// (`IN_CLOSE_WRITE`); `gc` or a person removes files or the directory.
fn interesting() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

impl Watcher {
    /// A watcher with nothing watched yet.
    pub fn new() -> Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .context("cannot start inotify to follow the log (too many watchers? see fs.inotify.max_user_instances)")?;
        Ok(Watcher { inotify })
    }

    /// Watches the directory `dir`.
    pub fn watch(&self, dir: &Path) -> Result<()> {
        self.inotify
            .add_watch(dir, interesting())
            .with_context(|| format!("cannot watch {} for new output", dir.display()))?;
        Ok(())
    }

    /// Watches `dir` if it exists; false if it does not (yet).
    fn try_watch(&self, dir: &Path) -> bool {
        self.inotify.add_watch(dir, interesting()).is_ok()
    }

    /// Blocks until something changes in a watched directory or `timeout`
    /// passes, then takes every pending event.
    pub fn wait(&self, timeout: Duration) -> Result<Wake> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for new output"),
        }
        let mut wake = Wake::default();
        loop {
            match self.inotify.read_events() {
                Ok(events) => {
                    for e in events {
                        if e.mask != AddWatchFlags::IN_MODIFY {
                            wake.check = true;
                        }
                    }
                }
                Err(Errno::EAGAIN) => return Ok(wake),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("reading inotify events"),
            }
        }
    }
}

/// Waits up to `limit` for job `id`'s metadata.json to appear (the wrapper writes
/// it right after creating the directory), telling the user once on stderr.
/// Returns false if it did not appear in time.
pub fn wait_for_job(
    metadata: &Path,
    dirs: &[&Path],
    what: &str,
    limit: Duration,
    slice: Duration,
) -> Result<bool> {
    // Its own instance: these watches on the root must not wake the follower.
    let watcher = Watcher::new()?;
    let deadline = Instant::now() + limit;
    let mut told = false;
    loop {
        // Watch first, then look: a directory created between the two is seen
        // either by the look or by an event.
        for dir in dirs {
            watcher.try_watch(dir);
        }
        if metadata.exists() {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        if !told {
            say(&format!(
                "waiting up to {}s for {what} to start...",
                limit.as_secs()
            ));
            told = true;
        }
        // Slices bound the wait when none of the directories exists yet, so
        // there is nothing to watch.
        watcher.wait((deadline - now).min(slice))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_wakes_the_watcher_at_once() {
        let dir = std::env::temp_dir().join(format!("logwrap-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let w = Watcher::new().unwrap();
        w.watch(&dir).unwrap();
        assert_eq!(w.wait(Duration::ZERO).unwrap(), Wake::default());
        std::fs::write(dir.join("metadata.json"), b"{}").unwrap();
        let started = Instant::now();
        let wake = w.wait(Duration::from_secs(10)).unwrap();
        assert!(wake.check);
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
