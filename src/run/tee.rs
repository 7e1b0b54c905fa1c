//! The terminal copy: child stdout to the wrapper's stdout, child stderr to its
//! stderr. Where the copy can block (a terminal, a pipe, a socket), a thread per
//! stream does the writes so a slow or stopped reader never stalls signal
//! handling or the log; a small bounded queue gives back-pressure instead of
//! unbounded buffering, and EPIPE only ends the copy. A regular file or
//! `/dev/null` never blocks, so there the copy is written inline, saving a
//! thread hand-off per chunk. When stdout and stderr are the same file (`2>&1`),
//! one thread writes both, whole lines in arrival order. Once the job has ended,
//! a copy that fell behind is finished from the log file itself, after the
//! final metadata is written, and given up on if its reader stops reading.

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Chunks queued per stream before the wrapper stops reading that stream. With
/// chunks of at most one read (256 KiB) this bounds the queue at 256 KiB a
/// stream (plus the one chunk being written and one waiting to be queued),
/// well inside the 16 MiB RSS target, while riding out a reader's short
/// pauses.
const QUEUE_CHUNKS: usize = 1;

/// Bytes read back from the log per write when catching up: one index
/// record's worth (a quarter of a read from the child), so catching up costs
/// no more memory than copying did.
const CATCH_UP_PIECE: usize = crate::output::index::MAX_CHUNK;

/// The part of a stream's log the terminal copy has not had: `[from, to)`.
pub struct CatchUp {
    pub file: File,
    pub from: u64,
    pub to: u64,
}

impl CatchUp {
    /// Reads `[from, to)` back from the log a piece at a time, handing each
    /// to `take`, while `go_on` holds (the copy's reader is still there).
    fn read_back(&self, go_on: impl Fn() -> bool, mut take: impl FnMut(&[u8])) {
        let mut buf = vec![0u8; CATCH_UP_PIECE];
        let mut at = self.from;
        while at < self.to && go_on() {
            let want = (self.to - at).min(buf.len() as u64) as usize;
            match self.file.read_at(&mut buf[..want], at) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    take(&buf[..n]);
                    at += n as u64;
                }
            }
        }
    }
}

/// Most bytes of an unfinished line held back per stream when both streams are
/// copied to one file (see [`Tee::start_shared`]): a longer line is written in
/// pieces rather than buffered without bound. A chunk's worth, so holding costs
/// no more than one queued chunk.
const MAX_HELD_LINE: usize = crate::output::index::MAX_CHUNK;

/// Longest an unfinished line is held back when both streams share one file
/// while nothing else arrives: a prompt or a progress bar without a newline
/// still shows this soon, and a long line the child wrote at once, split only
/// by the pty's reads, is not cut by a loaded machine pausing the wrapper
/// between two of them (50 ms was seen to be too short on a busy 2-core host).
const HOLD_PARTIAL_LINE: Duration = Duration::from_millis(200);

/// A chunk for the copy thread: which stream (0 stdout, 1 stderr) and its bytes.
type Msg = (usize, Vec<u8>);

/// What the copy thread shares with the event loop.
struct Shared {
    /// Set once a write to the reader failed.
    dead: AtomicBool,
    /// Bytes written so far, so a reader that still reads can be told from one
    /// that has stopped.
    written: AtomicU64,
    /// Read back from the log once the queue is done, in order.
    catch_up: Mutex<Vec<CatchUp>>,
}

/// A descriptor the copy writes to: the wrapper's own stdout or stderr.
pub type Fd = BorrowedFd<'static>;

/// The wrapper's stdout.
// SAFETY: fds 1 and 2 belong to the process for its whole life; logwrap never
// closes them, so a borrow of them never outlives the descriptor.
pub const STDOUT: Fd = unsafe { BorrowedFd::borrow_raw(1) };
/// The wrapper's stderr.
// SAFETY: as for STDOUT.
pub const STDERR: Fd = unsafe { BorrowedFd::borrow_raw(2) };

/// One stream's copy: inline, or a thread and its queue (one thread for both
/// streams when they go to the same file).
pub struct Tee {
    /// Set when the destination never blocks and writes are made inline.
    inline_fd: Option<Fd>,
    /// This stream's number in the messages (0 stdout, 1 stderr).
    tag: usize,
    tx: Option<SyncSender<Msg>>,
    /// Buffers the thread has finished with (shared by both streams' handles).
    recycled: Arc<Mutex<Receiver<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Closed when the thread ends; held by one handle of a shared copy.
    done: Option<Receiver<()>>,
}

impl Tee {
    /// Starts the copy of stream `tag` to `fd`: inline when `fd` never blocks,
    /// else on a thread. After each chunk written, if `want_wake` is set, the
    /// thread clears it and calls `wake` (the event loop's waker).
    pub fn start(
        fd: Fd,
        tag: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
        want_wake: Arc<AtomicBool>,
    ) -> Tee {
        if never_blocks(fd) {
            let (_, recycled) = sync_channel(0);
            return Tee {
                inline_fd: Some(fd),
                tag,
                tx: None,
                recycled: Arc::new(Mutex::new(recycled)),
                thread: None,
                shared: Arc::new(Shared::default()),
                done: None,
            };
        }
        Tee::threaded(fd, false, wake, want_wake).0
    }

    /// Starts one copy for both streams when the wrapper's stdout and stderr are
    /// the same file (`2>&1`): one thread writes both in arrival order, and
    /// writes whole lines, holding a stream's unfinished line back (up to
    /// [`MAX_HELD_LINE`], for at most [`HOLD_PARTIAL_LINE`]) so the other
    /// stream's lines cannot cut into it. Returns the stdout and stderr handles.
    pub fn start_shared(
        fd: Fd,
        wake: Arc<dyn Fn() + Send + Sync>,
        want_wake: Arc<AtomicBool>,
    ) -> (Tee, Tee) {
        if is_dev_null(fd) {
            // Nothing to keep whole: the cheap inline writes will do.
            let out = Tee::start(fd, 0, wake.clone(), want_wake.clone());
            return (out, Tee::start(fd, 1, wake, want_wake));
        }
        let (out, err) = Tee::threaded(fd, true, wake, want_wake);
        (out, err.expect("a shared copy has two handles"))
    }

    fn threaded(
        fd: Fd,
        by_line: bool,
        wake: Arc<dyn Fn() + Send + Sync>,
        want_wake: Arc<AtomicBool>,
    ) -> (Tee, Option<Tee>) {
        // Both streams' chunks share one queue when shared: the bound per
        // stream stays as documented for QUEUE_CHUNKS.
        let depth = if by_line {
            2 * QUEUE_CHUNKS
        } else {
            QUEUE_CHUNKS
        };
        let (tx, rx) = sync_channel::<Msg>(depth);
        let (back_tx, recycled) = sync_channel::<Vec<u8>>(depth + 1);
        let (done_tx, done) = sync_channel::<()>(0);
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("logwrap-tee-{}", fd.as_raw_fd()))
            .spawn(move || {
                let _done = done_tx;
                let mut lines = LineMerge::default();
                loop {
                    let msg = if lines.holding() {
                        match rx.recv_timeout(HOLD_PARTIAL_LINE) {
                            Ok(m) => Some(m),
                            Err(RecvTimeoutError::Timeout) => {
                                lines.flush(|b| sh.copy(fd, b));
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => None,
                        }
                    } else {
                        rx.recv().ok()
                    };
                    let Some((tag, buf)) = msg else {
                        break;
                    };
                    if by_line {
                        lines.push(tag, &buf, |b| sh.copy(fd, b));
                    } else {
                        sh.copy(fd, &buf);
                    }
                    let _ = back_tx.try_send(buf);
                    if want_wake.swap(false, Ordering::SeqCst) {
                        wake();
                    }
                }
                lines.flush(|b| sh.copy(fd, b));
                let catch_up = sh
                    .catch_up
                    .lock()
                    .map(|mut c| std::mem::take(&mut *c))
                    .unwrap_or_default();
                for c in &catch_up {
                    sh.copy_from_log(fd, c);
                }
            })
            .ok();
        let tx = thread.as_ref().map(|_| tx);
        let recycled = Arc::new(Mutex::new(recycled));
        let second = by_line.then(|| Tee {
            inline_fd: None,
            tag: 1,
            tx: tx.clone(),
            recycled: recycled.clone(),
            thread: None,
            shared: shared.clone(),
            done: None,
        });
        let first = Tee {
            inline_fd: None,
            tag: 0,
            tx,
            recycled,
            thread,
            shared,
            done: Some(done),
        };
        (first, second)
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
        let reused = self.recycled.lock().ok().and_then(|r| r.try_recv().ok());
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(chunk);
        buf
    }

    /// Queues `buf` without blocking; gives it back if the queue is full.
    pub fn try_send(&self, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.is_dead() {
            return Ok(());
        }
        match self.tx.as_ref().map(|tx| tx.try_send((self.tag, buf))) {
            Some(Err(TrySendError::Full((_, buf)))) => Err(buf),
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
            match tx.try_send((self.tag, buf)) {
                Ok(()) => return,
                Err(TrySendError::Full((_, b))) => buf = b,
                Err(TrySendError::Disconnected(_)) => return,
            }
            // The thread hands back each buffer it has written: a free slot.
            let freed = self
                .recycled
                .lock()
                .map(|r| r.recv_timeout(idle_limit).is_ok())
                .unwrap_or(false);
            if !freed {
                self.shared.dead.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Sends `c` of the log to the copy now, through the queue, waiting for
    /// the reader as [`Tee::send_patiently`] does: once the log stops taking
    /// writes, what it holds of the lag must go before what only the copy
    /// will get.
    pub fn send_from_log(&self, c: &CatchUp, idle_limit: Duration) {
        c.read_back(
            || !self.is_dead(),
            |piece| self.send_patiently(self.buffer_for(piece), idle_limit),
        );
    }

    /// True once a write to the reader failed (it went away).
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Relaxed) || (self.tx.is_none() && self.inline_fd.is_none())
    }

    /// No more chunks: the thread writes what is queued, then `catch_up` from
    /// the log. Close every handle before [`Tee::wait`]ing on any.
    pub fn close(&mut self, catch_up: Option<CatchUp>) {
        if let (Some(c), Ok(mut slot)) = (catch_up, self.shared.catch_up.lock()) {
            slot.push(c);
        }
        self.tx = None;
    }

    /// Waits for the copy to finish while the reader keeps reading. A reader
    /// that takes nothing for `idle_limit` is given up on (its thread is left
    /// blocked in its write and ends with the process), so a reader that never
    /// reads cannot keep the wrapper alive.
    pub fn wait(mut self, idle_limit: Duration) {
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

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            dead: AtomicBool::new(false),
            written: AtomicU64::new(0),
            catch_up: Mutex::new(Vec::new()),
        }
    }
}

impl Shared {
    /// Writes `buf` unless the reader is gone; a failure (EPIPE or any other)
    /// only ends the copy: it is best effort and the log is the source of truth.
    fn copy(&self, fd: Fd, buf: &[u8]) {
        if !self.dead.load(Ordering::Relaxed) && write_all(fd, buf, &self.written).is_err() {
            self.dead.store(true, Ordering::Relaxed);
        }
    }

    /// Copies `[from, to)` of the log to `fd`, a piece at a time.
    fn copy_from_log(&self, fd: Fd, c: &CatchUp) {
        c.read_back(
            || !self.dead.load(Ordering::Relaxed),
            |piece| self.copy(fd, piece),
        );
    }
}

/// Two streams merged into one output a whole line at a time: each stream's
/// bytes after its last newline are held until the line ends (or grows past
/// [`MAX_HELD_LINE`], or [`LineMerge::flush`] is called), so lines of the two
/// streams never cut into each other. Pure: the writes go to `out`.
#[derive(Default)]
struct LineMerge {
    held: [Vec<u8>; 2],
}

impl LineMerge {
    /// True while an unfinished line is held.
    fn holding(&self) -> bool {
        self.held.iter().any(|h| !h.is_empty())
    }

    /// Takes a chunk of stream `tag`, writing every line it completes.
    fn push(&mut self, tag: usize, chunk: &[u8], mut out: impl FnMut(&[u8])) {
        let held = &mut self.held[tag];
        let rest = match memchr::memrchr(b'\n', chunk) {
            Some(i) => {
                if !held.is_empty() {
                    out(held);
                    held.clear();
                }
                out(&chunk[..=i]);
                &chunk[i + 1..]
            }
            None => chunk,
        };
        held.extend_from_slice(rest);
        if held.len() > MAX_HELD_LINE {
            out(held);
            held.clear();
        }
    }

    /// Writes every held unfinished line (stdout's first).
    fn flush(&mut self, mut out: impl FnMut(&[u8])) {
        for held in &mut self.held {
            if !held.is_empty() {
                out(held);
                held.clear();
            }
        }
    }
}

/// True for a regular file or `/dev/null`, which a write never waits on.
fn never_blocks(fd: Fd) -> bool {
    fstat_kind(fd).is_some_and(|(kind, _)| kind == libc::S_IFREG) || is_dev_null(fd)
}

/// True for `/dev/null`.
fn is_dev_null(fd: Fd) -> bool {
    fstat_kind(fd)
        .is_some_and(|(kind, rdev)| kind == libc::S_IFCHR && rdev == nix::sys::stat::makedev(1, 3))
}

/// The file type bits and device number of `fd`, if it is open.
fn fstat_kind(fd: Fd) -> Option<(libc::mode_t, libc::dev_t)> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    Some((st.st_mode & libc::S_IFMT, st.st_rdev))
}

/// Writes all of `buf` to `fd`, retrying on EINTR and waiting on EAGAIN (a
/// descriptor someone else made non-blocking); counts what is written.
fn write_all(fd: Fd, mut buf: &[u8], written: &AtomicU64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => {
                buf = &buf[n..];
                written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                // Whatever poll says, the write is simply tried again.
                let _ = nix::poll::poll(
                    &mut [PollFd::new(fd, PollFlags::POLLOUT)],
                    PollTimeout::NONE,
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(chunks: &[(usize, &[u8])]) -> Vec<Vec<u8>> {
        let mut m = LineMerge::default();
        let mut out = Vec::new();
        for (tag, c) in chunks {
            m.push(*tag, c, |b| out.push(b.to_vec()));
        }
        m.flush(|b| out.push(b.to_vec()));
        out
    }

    #[test]
    fn merged_streams_never_cut_into_each_others_lines() {
        let out = merge(&[
            (0, b"out-a"),
            (1, b"err-1\nerr-"),
            (0, b"a\nout-b"),
            (1, b"2\n"),
            (0, b"\n"),
        ]);
        let text: Vec<u8> = out.concat();
        assert_eq!(text, b"err-1\nout-aa\nerr-2\nout-b\n".to_vec());
    }

    #[test]
    fn an_unfinished_line_is_held_only_up_to_its_bound() {
        let long = vec![b'x'; MAX_HELD_LINE + 1];
        let out = merge(&[(0, &long), (1, b"err\n")]);
        assert_eq!(out, vec![long.clone(), b"err\n".to_vec()]);
        let out = merge(&[(0, b"prompt: ")]);
        assert_eq!(out, vec![b"prompt: ".to_vec()]);
    }
}
