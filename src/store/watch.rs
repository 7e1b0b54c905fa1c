//! The file store's change notification: one inotify instance watching the
//! directories of the jobs being read (new log data, a rewritten metadata.json,
//! a writer's files closing when it exits or dies, deletion) and, on request,
//! the jobs directory (jobs created or removed). `logs -f` waits on it; the
//! server registers its descriptor in its event loop.

use super::{ChangeWatcher, Changes, FileStore, JobId};
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};

/// Events that matter in a job directory. Log appends are `IN_MODIFY`; the
/// wrapper replaces metadata.json by rename (`IN_MOVED_TO`); a wrapper that
/// dies, even of SIGKILL, closes its lock and logs (`IN_CLOSE_WRITE`); gc or a
/// person removes files or the directory.
fn job_events() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// Events in the jobs directory (or the root, before it exists) that mean a job
/// appeared or went away.
fn list_events() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ONLYDIR
}

/// What a watch descriptor stands for.
#[derive(Debug, Clone)]
enum Watched {
    Job(JobId),
    List,
}

/// inotify over a [`FileStore`].
pub struct FileWatcher {
    store: FileStore,
    inotify: Inotify,
    watches: HashMap<WatchDescriptor, Watched>,
    jobs: HashMap<JobId, WatchDescriptor>,
}

impl FileWatcher {
    pub(super) fn new(store: FileStore) -> Result<FileWatcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context(
            "cannot start inotify to follow logs (too many watchers? see fs.inotify.max_user_instances)",
        )?;
        Ok(FileWatcher {
            store,
            inotify,
            watches: HashMap::new(),
            jobs: HashMap::new(),
        })
    }
}

impl ChangeWatcher for FileWatcher {
    fn watch_job(&mut self, id: &JobId) -> Result<()> {
        if self.jobs.contains_key(id) {
            return Ok(());
        }
        let dir = self.store.job_dir(id);
        let wd = self
            .inotify
            .add_watch(&dir, job_events())
            .with_context(|| format!("cannot watch {} for new output", dir.display()))?;
        self.watches.insert(wd, Watched::Job(id.clone()));
        self.jobs.insert(id.clone(), wd);
        Ok(())
    }

    fn unwatch_job(&mut self, id: &JobId) {
        if let Some(wd) = self.jobs.remove(id) {
            self.watches.remove(&wd);
            let _ = self.inotify.rm_watch(wd);
        }
    }

    fn watch_list(&mut self) -> Result<()> {
        // The jobs directory once it exists; until then the root (and, failing
        // that, nothing yet: the caller asks again).
        let dirs = [self.store.jobs_dir(), self.store.root().to_path_buf()];
        let mut last = None;
        for dir in dirs {
            match self.inotify.add_watch(&dir, list_events()) {
                Ok(wd) => {
                    self.watches.insert(wd, Watched::List);
                    return Ok(());
                }
                Err(e) => last = Some((dir, e)),
            }
        }
        let (dir, e) = last.expect("two directories were tried");
        Err(e).with_context(|| format!("cannot watch {} for new jobs", dir.display()))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    fn take_changes(&mut self) -> Result<Changes> {
        let mut changes = Changes::default();
        let mut dirty: HashMap<JobId, bool> = HashMap::new();
        loop {
            match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => {
                    for ev in events {
                        if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                            changes.overflow = true;
                            continue;
                        }
                        match self.watches.get(&ev.wd) {
                            Some(Watched::Job(id)) => {
                                // Anything but data appended may change the status.
                                let status = ev.mask != AddWatchFlags::IN_MODIFY;
                                *dirty.entry(id.clone()).or_default() |= status;
                            }
                            Some(Watched::List) => changes.list = true,
                            None => {}
                        }
                        if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                            // The directory is gone: its watch with it.
                            if let Some(Watched::Job(id)) = self.watches.remove(&ev.wd) {
                                self.jobs.remove(&id);
                            }
                        }
                    }
                }
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("reading inotify events"),
            }
        }
        changes.jobs = dirty.into_iter().collect();
        changes.jobs.sort();
        Ok(changes)
    }
}
