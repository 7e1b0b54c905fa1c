//! A temp directory for unit tests that is removed when dropped, so a test
//! that fails half-way (a panic unwinds through it) leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Tells apart the dirs of one test process; the pid tells apart processes.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory under the system temp dir.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates `logwrap-<tag>-<pid>-<n>`; panics if it cannot (a test setup
    /// failure, not a behaviour under test).
    pub(crate) fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("logwrap-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub(crate) fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dir_is_removed_on_drop_even_when_the_test_panics() {
        let kept = std::panic::catch_unwind(|| {
            let dir = TempDir::new("testdir");
            std::fs::write(dir.join("f"), b"x").unwrap();
            let path = dir.path().to_path_buf();
            std::panic::panic_any(path);
        });
        let payload = kept.unwrap_err();
        let path = payload.downcast_ref::<PathBuf>().unwrap();
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
