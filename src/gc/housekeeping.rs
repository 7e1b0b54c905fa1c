//! The wrapper's own retention housekeeping (SPEC §6, issue 5): at most one
//! collection per root per [`HOUSEKEEPING_INTERVAL`], on a thread of its own,
//! never in the way of the job it runs beside.

use super::collect::{collect, Mode, Options, Report};
use super::Policy;
use crate::store::FileStore;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::time::TimeSpec;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The wrapper's housekeeping finishes a collection at most this often per root
/// (issue 5): a scan costs a few syscalls per job, so hourly keeps it negligible
/// beside the jobs while the root overshoots its cap by at most an hour's output.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60 * 60);

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

/// Whether housekeeping that last finished at `last` should run again at `now`.
/// A stamp in the future (the clock went back) counts as old once it is an
/// interval away, so a clock jump cannot stop collection for long.
fn due(last: SystemTime, now: SystemTime) -> bool {
    match now.duration_since(last) {
        Ok(age) => age >= HOUSEKEEPING_INTERVAL,
        Err(ahead) => ahead.duration() >= HOUSEKEEPING_INTERVAL,
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
    let stamp = match Flock::lock(stamp, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        // Another process is collecting right now.
        Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => {
            return Err(io::Error::from(e))
                .with_context(|| format!("cannot lock {}", path.display()))
        }
    };
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
    nix::sys::stat::futimens(&*stamp, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW)
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
}
