//! The terminal copy: child stdout to the wrapper's stdout, child stderr to its
//! stderr. Where the copy can block (a terminal, a pipe, a socket), a thread per
//! stream does the writes so a slow or stopped reader never stalls signal
//! handling or the log; a small bounded queue gives back-pressure instead of
//! unbounded buffering, and EPIPE only ends the copy. A regular file or
//! `/dev/null` never blocks, so there the copy is written inline, saving a
//! thread hand-off per chunk. Once the job has ended, a copy that fell behind
//! is finished from the log file itself, after the final metadata is written,
//! and given up on if its reader stops reading.

use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Chunks queued per stream before the wrapper stops reading that stream. With
/// chunks of at most 64 KiB this bounds the queue at 256 KiB a stream, well inside
/// the 16 MiB RSS target, while riding out a reader's short pauses.
const QUEUE_CHUNKS: usize = 4;

/// Bytes read back from the log per write when catching up: the size of one
/// read from the child, so catching up costs no more memory than copying did.
const CATCH_UP_PIECE: usize = crate::output::index::MAX_CHUNK;

/// The part of a stream's log the terminal copy has not had: `[from, to)`.
pub struct CatchUp {
    pub file: File,
    pub from: u64,
    pub to: u64,
}

/// What the copy thread shares with the event loop.
struct Shared {
    /// Set once a write to the reader failed.
    dead: AtomicBool,
    /// Bytes written so far, so a reader that still reads can be told from one
    /// that has stopped.
    written: AtomicU64,
    /// Read back from the log once the queue is done.
    catch_up: Mutex<Option<CatchUp>>,
}

/// One stream's copy: inline, or a thread and its queue.
pub struct Tee {
    /// Set when the destination never blocks and writes are made inline.
    inline_fd: Option<RawFd>,
    tx: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Closed when the thread ends.
    done: Option<Receiver<()>>,
}

impl Tee {
    /// Starts a copy thread writing to `fd`. After each chunk written, if
    /// `want_wake` is set, it clears it and calls `wake` (the event loop's waker).
    pub fn start(fd: RawFd, wake: Arc<dyn Fn() + Send + Sync>, want_wake: Arc<AtomicBool>) -> Tee {
        let shared = Arc::new(Shared {
            dead: AtomicBool::new(false),
            written: AtomicU64::new(0),
            catch_up: Mutex::new(None),
        });
        if never_blocks(fd) {
            let (_, recycled) = sync_channel(0);
            return Tee {
                inline_fd: Some(fd),
                tx: None,
                recycled,
                thread: None,
                shared,
                done: None,
            };
        }
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_CHUNKS);
        let (back_tx, recycled) = sync_channel::<Vec<u8>>(QUEUE_CHUNKS + 1);
        let (done_tx, done) = sync_channel::<()>(0);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("logwrap-tee-{fd}"))
            .spawn(move || {
                let _done = done_tx;
                for buf in rx {
                    sh.copy(fd, &buf);
                    let _ = back_tx.try_send(buf);
                    if want_wake.swap(false, Ordering::SeqCst) {
                        wake();
                    }
                }
                let catch_up = sh.catch_up.lock().ok().and_then(|mut c| c.take());
                if let Some(c) = catch_up {
                    sh.copy_from_log(fd, &c);
                }
            })
            .ok();
        Tee {
            inline_fd: None,
            tx: thread.as_ref().map(|_| tx),
            recycled,
            thread,
            shared,
            done: Some(done),
        }
    }

    /// Copies `chunk` at once if the destination never blocks; false means the
    /// caller queues it with [`Tee::buffer_for`] and [`Tee::try_send`].
    pub fn write_inline(&self, chunk: &[u8]) -> bool {
        let Some(fd) = self.inline_fd else {
            return false;
        };
        self.shared.copy(fd, chunk);
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

    /// Queues `buf`, waiting for room while the reader takes something at least
    /// every `idle_limit`; a reader that stops is given up on (the copy ends).
    pub fn send_patiently(&self, mut buf: Vec<u8>, idle_limit: Duration) {
        let Some(tx) = &self.tx else {
            return;
        };
        while !self.is_dead() {
            match tx.try_send(buf) {
                Ok(()) => return,
                Err(TrySendError::Full(b)) => buf = b,
                Err(TrySendError::Disconnected(_)) => return,
            }
            // The thread hands back each buffer it has written: a free slot.
            if self.recycled.recv_timeout(idle_limit).is_err() {
                self.shared.dead.store(true, Ordering::Relaxed);
            }
        }
    }

    /// True once a write to the reader failed (it went away).
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Relaxed) || (self.tx.is_none() && self.inline_fd.is_none())
    }

    /// Ends the copy: writes what is queued, then `catch_up` from the log, and
    /// waits for that while the reader keeps reading. A reader that takes
    /// nothing for `idle_limit` is given up on (its thread is left blocked in
    /// its write and ends with the process), so a reader that never reads
    /// cannot keep the wrapper alive.
    pub fn finish(mut self, catch_up: Option<CatchUp>, idle_limit: Duration) {
        if let (Some(c), Ok(mut slot)) = (catch_up, self.shared.catch_up.lock()) {
            *slot = Some(c);
        }
        self.tx = None;
        let Some(done) = self.done.take() else {
            return;
        };
        let mut seen = self.shared.written.load(Ordering::Relaxed);
        // Any other answer means the thread has ended: join it (at once).
        while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(idle_limit) {
            let now = self.shared.written.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// Writes `buf` unless the reader is gone; a failure (EPIPE or any other)
    /// only ends the copy: it is best effort and the log is the source of truth.
    fn copy(&self, fd: RawFd, buf: &[u8]) {
        if !self.dead.load(Ordering::Relaxed) && write_all(fd, buf, &self.written).is_err() {
            self.dead.store(true, Ordering::Relaxed);
        }
    }

    /// Copies `[from, to)` of the log to `fd`, a piece at a time.
    fn copy_from_log(&self, fd: RawFd, c: &CatchUp) {
        let mut buf = vec![0u8; CATCH_UP_PIECE];
        let mut at = c.from;
        while at < c.to && !self.dead.load(Ordering::Relaxed) {
            let want = (c.to - at).min(buf.len() as u64) as usize;
            match c.file.read_at(&mut buf[..want], at) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    self.copy(fd, &buf[..n]);
                    at += n as u64;
                }
            }
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
/// descriptor someone else made non-blocking); counts what is written.
fn write_all(fd: RawFd, mut buf: &[u8], written: &AtomicU64) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writing from a valid slice to a descriptor the process owns.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf = &buf[n as usize..];
            written.fetch_add(n as u64, Ordering::Relaxed);
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
