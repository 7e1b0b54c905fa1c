//! The terminal copy: child stdout to the wrapper's stdout, child stderr to its
//! stderr. Where the copy can block (a terminal, a pipe, a socket), a thread per
//! stream does the writes so a slow or stopped reader never stalls signal
//! handling or the log; a small bounded queue gives back-pressure instead of
//! unbounded buffering, and EPIPE only ends the copy. A regular file or
//! `/dev/null` never blocks, so there the copy is written inline, saving a
//! thread hand-off per chunk.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Chunks queued per stream before the wrapper stops reading that stream. With
/// chunks of at most 64 KiB this bounds the queue at 256 KiB a stream, well inside
/// the 16 MiB RSS target, while riding out a reader's short pauses.
const QUEUE_CHUNKS: usize = 4;

/// One stream's copy: inline, or a thread and its queue.
pub struct Tee {
    /// Set when the destination never blocks and writes are made inline.
    inline_fd: Option<RawFd>,
    tx: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
    dead: Arc<AtomicBool>,
}

impl Tee {
    /// Starts a copy thread writing to `fd`. After each chunk written, if
    /// `want_wake` is set, it clears it and calls `wake` (the event loop's waker).
    pub fn start(fd: RawFd, wake: Arc<dyn Fn() + Send + Sync>, want_wake: Arc<AtomicBool>) -> Tee {
        if never_blocks(fd) {
            let (_, recycled) = sync_channel(0);
            return Tee {
                inline_fd: Some(fd),
                tx: None,
                recycled,
                thread: None,
                dead: Arc::new(AtomicBool::new(false)),
            };
        }
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_CHUNKS);
        let (back_tx, recycled) = sync_channel::<Vec<u8>>(QUEUE_CHUNKS + 1);
        let dead = Arc::new(AtomicBool::new(false));
        let dead_in = dead.clone();
        let thread = std::thread::Builder::new()
            .name(format!("logwrap-tee-{fd}"))
            .spawn(move || {
                for buf in rx {
                    if !dead_in.load(Ordering::Relaxed) && write_all(fd, &buf).is_err() {
                        // EPIPE or any other failure: the copy is best effort and
                        // the log is the source of truth, so just stop copying.
                        dead_in.store(true, Ordering::Relaxed);
                    }
                    let _ = back_tx.try_send(buf);
                    if want_wake.swap(false, Ordering::SeqCst) {
                        wake();
                    }
                }
            })
            .ok();
        Tee {
            inline_fd: None,
            tx: thread.as_ref().map(|_| tx),
            recycled,
            thread,
            dead,
        }
    }

    /// Copies `chunk` at once if the destination never blocks; false means the
    /// caller queues it with [`Tee::buffer_for`] and [`Tee::try_send`].
    pub fn write_inline(&self, chunk: &[u8]) -> bool {
        let Some(fd) = self.inline_fd else {
            return false;
        };
        if !self.is_dead() && write_all(fd, chunk).is_err() {
            self.dead.store(true, Ordering::Relaxed);
        }
        true
    }

    /// A buffer holding a copy of `chunk`, reusing one the thread has finished with.
    pub fn buffer_for(&self, chunk: &[u8]) -> Vec<u8> {
        let mut buf = self.recycled.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(chunk);
        buf
    }

    /// Queues `buf` without blocking; gives it back if the queue is full.
    pub fn try_send(&self, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.is_dead() {
            return Ok(());
        }
        match self.tx.as_ref().map(|tx| tx.try_send(buf)) {
            Some(Err(TrySendError::Full(buf))) => Err(buf),
            _ => Ok(()),
        }
    }

    /// Queues `buf`, waiting for room (used only for the final drain).
    pub fn send_blocking(&self, buf: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(buf);
        }
    }

    /// True once a write to the reader failed (it went away).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed) || (self.tx.is_none() && self.inline_fd.is_none())
    }

    /// Waits until everything queued has been written (or the reader is gone).
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// True for a regular file or `/dev/null`, which a write never waits on.
fn never_blocks(fd: RawFd) -> bool {
    // SAFETY: an all-zero stat is valid, and fstat fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor number; a closed one just fails.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    kind == libc::S_IFREG || (kind == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3))
}

/// Writes all of `buf` to `fd`, retrying on EINTR and waiting on EAGAIN (a
/// descriptor someone else made non-blocking).
fn write_all(fd: RawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writing from a valid slice to a descriptor the process owns.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf = &buf[n as usize..];
            continue;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll on one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, -1) };
            }
            _ => return Err(err),
        }
    }
    Ok(())
}
