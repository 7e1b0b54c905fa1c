//! The log store: the one place that knows the on-disk layout of a job
//! (`<root>/job_runs/<id>/{stdout.log,stderr.log,*.idx,metadata.json,lock}`), what
//! a valid job id is, and how a reader tells a live writer from a dead one.
//!
//! The wrapper writes through [`JobSink`] and readers go through [`LogStore`], so a
//! store other than files (a central log service, several stores at once) can be
//! plugged in without touching either (SPEC §8).

use crate::metadata::{self, Metadata, Omitted, Status, StreamStats};
use crate::output::count_newlines;
use crate::output::index::{self, Record, Records, HEADER, RECORD_LEN};
use crate::reader::{Anchor, LineSource, Start, StreamReader};
use crate::timefmt;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, open, openat, AtFlags, FcntlArg, Flock, FlockArg, Flockable, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub(crate) mod limit;
mod mem;
mod merged;
mod tree;
mod watch;

pub use crate::output::lines::{LineSplitter, Piece, Pieces};
#[cfg(test)]
pub(crate) use mem::both;
#[cfg(test)]
pub(crate) use mem::both::metadata as mem_metadata;
pub use mem::MemStore;

/// Longest job run id (SPEC §2): long enough for a scheduler's composite ids,
/// short enough to stay far below `NAME_MAX`.
pub const MAX_ID_LEN: usize = 128;

/// The two streams of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// Both streams, stdout first.
    pub const BOTH: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    /// `"stdout"` or `"stderr"`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// The stream named `"stdout"` or `"stderr"` ([`Stream::name`]).
    pub fn from_name(s: &str) -> Option<Stream> {
        Stream::BOTH.into_iter().find(|st| st.name() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A validated job run id: 1–128 of `[A-Za-z0-9._-]`, not starting with `.`, so it
/// is always a single plain path component inside the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(String);

impl JobId {
    /// Validates `s` as a job id.
    pub fn parse(s: &str) -> std::result::Result<JobId, String> {
        if s.is_empty() || s.len() > MAX_ID_LEN {
            return Err(format!(
                "invalid job run id {s:?}: it must be 1 to {MAX_ID_LEN} characters long"
            ));
        }
        if s.starts_with('.') {
            return Err(format!(
                "invalid job run id {s:?}: it must not start with '.'"
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "invalid job run id {s:?}: {c:?} is not allowed (use only A-Z a-z 0-9 . _ -)"
            ));
        }
        Ok(JobId(s.to_string()))
    }

    /// A new id that sorts by start time: `20261121T153549.123Z-<pid>-<random>`.
    pub fn generate() -> JobId {
        let now_ms = timefmt::unix_ms(std::time::SystemTime::now());
        let stamp: String = timefmt::rfc3339_ms(now_ms)
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        JobId(format!(
            "{stamp}-{:x}-{:06x}",
            std::process::id(),
            random_u32() & 0xff_ffff
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // No urandom (odd chroot): the clock's nanoseconds still separate ids,
        // and create_dir refuses a collision anyway.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return nanos;
    }
    u32::from_le_bytes(b)
}

/// A job file a reader refuses: not a regular file (a link, a FIFO, a socket, a
/// device, a directory), or too big to be what it claims (SPEC §5 "Job files are
/// opened without following links and only when they are regular files"). A
/// job owns its directory and can plant anything there; readers report the job
/// as damaged rather than follow, block or allocate.
#[derive(Debug)]
pub struct Damaged {
    /// The file refused.
    pub path: PathBuf,
    /// Why, for people: "is a symbolic link", ...
    pub reason: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (the job's directory is damaged or tampered with; logwrap reads only regular files there)",
            self.path.display(),
            self.reason
        )
    }
}

impl std::error::Error for Damaged {}

impl Damaged {
    /// The file's name and why, without the full path: for job listings and
    /// HTTP answers.
    pub fn short(&self) -> String {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        format!("{name} {}", self.reason)
    }

    fn io(path: &Path, reason: impl Into<String>) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            Damaged {
                path: path.to_path_buf(),
                reason: reason.into(),
            },
        )
    }
}

/// True when `e` comes from a job file refused as [`Damaged`].
pub fn is_damaged(e: &anyhow::Error) -> bool {
    damaged_reason(e).is_some()
}

/// The [`Damaged`] refusal behind `e`, if that is what it is.
pub fn damaged_reason(e: &anyhow::Error) -> Option<&Damaged> {
    cause_of::<Damaged>(e)
}

/// The `T` in `e`'s chain, also one an `io::Error` carries (as the
/// `io::Result` methods of readers must pass them on).
fn cause_of<T: std::error::Error + 'static>(e: &anyhow::Error) -> Option<&T> {
    e.chain().find_map(|c| {
        c.downcast_ref::<T>().or_else(|| {
            c.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<T>())
        })
    })
}

/// A store that cannot be reached for now (a Redis source down, restarting or
/// paused): not an answer about any job, and worth asking again. Its message
/// is whole (no source chain), so nothing in it reads as "not found".
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// True when `e` says the store could not be reached ([`Unavailable`]).
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    cause_of::<Unavailable>(e).is_some()
}

/// True when `e` says a file or directory does not exist.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::NotFound)
}

/// Opens the job file `path` for reading, safely against whatever the job put
/// there: neither the file nor its directory is followed if it is a symlink,
/// the open never blocks (a FIFO with no writer would freeze the reader, and
/// with it a whole server), and anything but a regular file is refused as
/// [`Damaged`]. The descriptor is blocking again when returned.
pub(crate) fn open_job_file(path: &Path) -> io::Result<File> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        ));
    };
    let dir_fd = open_dir_nofollow(dir)?;
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(&dir_fd, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => return Err(Damaged::io(path, "is a symbolic link")),
        // Some kinds cannot even be opened (a socket gives ENXIO, a device
        // without a driver ENXIO or ENODEV): whatever is there decides, so
        // those are refused like a FIFO rather than reported as an I/O error.
        Err(e) => {
            return Err(match fstatat(&dir_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => not_regular(st.st_mode).map(|what| Damaged::io(path, what)),
                Err(_) => None,
            }
            .unwrap_or_else(|| io::Error::from(e)))
        }
    };
    check_regular(&fd, path)?;
    let fl = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let fl = OFlag::from_bits_truncate(fl) - OFlag::O_NONBLOCK;
    fcntl(&fd, FcntlArg::F_SETFL(fl)).map_err(io::Error::from)?;
    Ok(File::from(fd))
}

/// Opens a job's directory (for `openat` and for its lock) without following a
/// symlink in its place.
fn open_dir_nofollow(dir: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match open(dir, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP) => Err(Damaged::io(dir, "is a symbolic link, not a job directory")),
        Err(Errno::ENOTDIR) => match fs::symlink_metadata(dir) {
            Ok(md) if md.file_type().is_symlink() => {
                Err(Damaged::io(dir, "is a symbolic link, not a job directory"))
            }
            _ => Err(Damaged::io(dir, "is not a directory")),
        },
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Refuses anything but a regular file, naming what it is instead.
fn check_regular(fd: &impl AsFd, path: &Path) -> io::Result<()> {
    let st = fstat(fd).map_err(io::Error::from)?;
    match not_regular(st.st_mode) {
        None => Ok(()),
        Some(what) => Err(Damaged::io(path, what)),
    }
}

/// What a file of mode `mode` is, for people, unless it is a regular file.
fn not_regular(mode: libc::mode_t) -> Option<&'static str> {
    let kind = SFlag::from_bits_truncate(mode) & SFlag::S_IFMT;
    Some(match kind {
        SFlag::S_IFREG => return None,
        SFlag::S_IFIFO => "is a FIFO",
        SFlag::S_IFSOCK => "is a socket",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "is a device",
        SFlag::S_IFDIR => "is a directory",
        SFlag::S_IFLNK => "is a symbolic link",
        _ => "is not a regular file",
    })
}

/// Reads the whole job file `path`, refusing one over `cap` bytes as
/// [`Damaged`] rather than allocating for it (the size is checked before the
/// read, and the read itself stops past `cap` for a file still growing).
pub(crate) fn read_job_file(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let f = open_job_file(path)?;
    let len = f.metadata()?.len();
    let too_big = |n: u64| {
        Damaged::io(
            path,
            format!("is {n} bytes, over the {cap} bytes it can be"),
        )
    };
    if len > cap {
        return Err(too_big(len));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// Size of the job file `path` if it is a regular file (never following a
/// link); `None` when missing or anything else.
pub(crate) fn job_file_len(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_file())
        .map(|m| m.len())
}

/// Why a job could not be created.
#[derive(Debug)]
pub enum CreateError {
    /// A job with this id already exists.
    IdInUse(PathBuf),
    /// Anything else: the root is not writable, the disk is full, ...
    Io(anyhow::Error),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::IdInUse(dir) => write!(
                f,
                "job run id is already used ({} exists); pass a new --job-run-id or unset DATABUILD_JOB_RUN_ID",
                dir.display()
            ),
            CreateError::Io(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for CreateError {}

/// One chunk read from the child: its bytes, when it was read, and how many
/// newlines it holds (counted once, here, for every consumer of the chunk:
/// the log's index, the line counts and the scanners).
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    data: &'a [u8],
    ts_us: u64,
    newlines: u64,
    /// The newlines of each [`index::MAX_CHUNK`] piece, in which a file store
    /// records the chunk, if it has at most [`COUNTED_PIECES`] (a whole read
    /// has four, or five after bytes a redactor held back).
    pieces: [u32; COUNTED_PIECES],
}

/// Most pieces of a [`Chunk`] whose newlines are counted piece by piece.
const COUNTED_PIECES: usize = 8;

impl<'a> Chunk<'a> {
    /// A chunk of `data` read at `ts_us` (µs since the epoch).
    pub fn new(data: &'a [u8], ts_us: u64) -> Chunk<'a> {
        let mut pieces = [0u32; COUNTED_PIECES];
        let newlines = if data.len() <= COUNTED_PIECES * index::MAX_CHUNK {
            let mut total = 0;
            for (n, piece) in pieces.iter_mut().zip(data.chunks(index::MAX_CHUNK)) {
                // At most MAX_CHUNK (64 KiB) newlines: fits.
                *n = count_newlines(piece) as u32;
                total += u64::from(*n);
            }
            total
        } else {
            count_newlines(data)
        };
        Chunk {
            data,
            ts_us,
            newlines,
            pieces,
        }
    }

    /// The newlines of piece `i` of [`index::MAX_CHUNK`] bytes.
    fn piece_newlines(&self, i: usize, piece: &[u8]) -> u64 {
        if self.data.len() <= COUNTED_PIECES * index::MAX_CHUNK {
            u64::from(self.pieces[i])
        } else {
            count_newlines(piece)
        }
    }

    /// The bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// When the chunk was read, µs since the epoch.
    pub fn ts_us(&self) -> u64 {
        self.ts_us
    }

    /// Number of `\n` bytes in the chunk.
    pub fn newlines(&self) -> u64 {
        self.newlines
    }
}

/// Where the wrapper puts a job's output: append chunks, write metadata.
pub trait JobSink {
    /// The job's directory, handed to the child as `DATABUILD_JOB_LOG_DIR`.
    fn dir(&self) -> &Path;
    /// Appends one chunk read from the child. The data is in the store
    /// (readable by others) when this returns.
    fn append(&mut self, stream: Stream, chunk: &Chunk) -> io::Result<()>;
    /// Replaces the metadata document atomically; `last` also makes it durable
    /// (and may use room the store set aside for it, see `FileJobSink`).
    fn write_metadata(&mut self, meta: &Metadata, last: bool) -> Result<()>;
    /// The job's output is complete: writes what the store still owes for it
    /// (bookkeeping of an unfinished last line, ...). Called before the final
    /// metadata, so its error can be recorded there.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Removes the job again: it could not be started (its first metadata could
    /// not be written), so the same id can be retried.
    fn discard(self: Box<Self>) {}
    /// A descriptor for reading back what was appended to `stream` from byte
    /// `from` on, for a terminal copy that fell behind the log; `None` if this
    /// store cannot (or a size limit already left those bytes out).
    fn log_reader(&self, _stream: Stream, _from: u64) -> Option<File> {
        None
    }
    /// Keeps at most about `max` bytes of each stream: its head and a rolling
    /// tail, with the middle omitted (issue 12). `Ok(false)` if this store
    /// cannot, and keeps everything.
    fn limit_size(&mut self, _max: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// What the size limit left out of `stream` so far.
    fn omitted(&self, _stream: Stream) -> Option<Omitted> {
        None
    }
    /// Why the size limit stopped cutting `stream`, if it did (for
    /// `log_errors`).
    fn limit_error(&self, _stream: Stream) -> Option<String> {
        None
    }
}

/// Where jobs live (SPEC §8): the wrapper creates them; readers (`logs`, `ls`,
/// `show`, the server, gc) list them, read their lines and bytes, wait for
/// changes and remove finished ones, all through this trait, so a store other
/// than files serves the same commands and API unchanged.
pub trait LogStore: Send + Sync {
    /// Creates a new job; fails with [`CreateError::IdInUse`] if the id exists.
    fn create_job(&self, id: &JobId) -> std::result::Result<Box<dyn JobSink>, CreateError>;
    /// The job's metadata as its writer last wrote it.
    fn metadata(&self, id: &JobId) -> Result<Metadata>;
    /// True while the job's writer is alive.
    fn writer_alive(&self, id: &JobId) -> bool;
    /// The job's metadata with `running` turned into `abandoned` when its writer
    /// has died.
    fn live_metadata(&self, id: &JobId) -> Result<Metadata> {
        let mut meta = self.metadata(id)?;
        if meta.status == Status::Running && !self.writer_alive(id) {
            // The writer may have finished between our read and the liveness
            // check: its final document is written before it lets go.
            meta = self.metadata(id)?;
            if meta.status == Status::Running {
                meta.status = Status::Abandoned;
            }
        }
        Ok(meta)
    }
    /// What `stream` of job `id` holds now (bytes, lines counting a final line
    /// without a newline), read at a bounded cost; `None` when the store cannot
    /// tell. The metadata's counts are written when the job ends, so this is
    /// what readers show for a job that is running or was abandoned.
    fn live_stats(&self, _id: &JobId, _stream: Stream) -> Option<StreamStats> {
        None
    }
    /// [`LogStore::live_metadata`] with, for a job whose final counts are not
    /// written (running or abandoned), the streams' sizes as they are now
    /// ([`LogStore::live_stats`]; issue 11, point 5).
    fn current_metadata(&self, id: &JobId) -> Result<Metadata> {
        let mut meta = self.live_metadata(id)?;
        add_live_stats(self, id, &mut meta);
        Ok(meta)
    }
    /// True if a job with this id exists (possibly still being created).
    fn job_exists(&self, id: &JobId) -> bool;
    /// Ids of every job, in id order.
    fn job_ids(&self) -> Result<Vec<JobId>>;
    /// Reserves the number of a new child of the running job `parent`: at
    /// least `at_least`, and more than any number reserved before, so a
    /// child's id is never handed out again after gc deleted that child.
    /// `None` where the store keeps no such count (the caller then numbers
    /// from the jobs there are).
    fn reserve_child(&self, _parent: &JobId, _at_least: u64) -> Option<u64> {
        None
    }
    /// Why the last [`LogStore::job_ids`] left jobs out, if it did (a store
    /// that lists at most so many): for `ls` to say so rather than drop
    /// them silently.
    fn list_cut(&self) -> Option<String> {
        None
    }
    /// Every job with its live metadata (or why it has none), newest first: by
    /// start time, then by id.
    fn list_jobs(&self) -> Result<Vec<JobListing>> {
        let mut jobs: Vec<JobListing> = self
            .job_ids()?
            .into_iter()
            .map(|id| {
                let meta = match self.live_metadata(&id) {
                    Ok(m) => Ok(m),
                    Err(e) if is_not_found(&e) => Err(Unlisted::Creating),
                    Err(e) => Err(Unlisted::Damaged(match damaged_reason(&e) {
                        Some(d) => d.short(),
                        None => format!("{e:#}"),
                    })),
                };
                let started_ms =
                    self.rank_ms(&id, meta.as_ref().ok().map(|m| m.started_at.as_str()));
                JobListing {
                    id,
                    meta,
                    started_ms,
                }
            })
            .collect();
        jobs.sort_by(|a, b| (b.started_ms, &b.id).cmp(&(a.started_ms, &a.id)));
        Ok(jobs)
    }
    /// When the job was created (ms since the epoch), as the store saw it
    /// rather than as the job says: for a job without metadata yet, and to
    /// bound the start time a job claims ([`LogStore::rank_ms`]).
    fn created_ms(&self, id: &JobId) -> Option<i64>;
    /// Where job `id` ranks in the newest-first order (ms since the epoch):
    /// its `started_at`, but never later than its creation as the store saw
    /// it, nor than now. A job writes its own metadata and owns its
    /// directory, and a `started_at` of 9999 (or a directory touched to
    /// 2099) must not make it the most recent job for ever. A job without
    /// metadata ranks by its creation.
    fn rank_ms(&self, id: &JobId, started_at: Option<&str>) -> i64 {
        let started = started_at.and_then(timefmt::parse_rfc3339_ms);
        let bound = self
            .created_ms(id)
            .unwrap_or_else(|| timefmt::unix_ms(std::time::SystemTime::now()));
        started.map_or(bound, |s| s.min(bound))
    }
    /// A value that changes whenever a job is created or removed (`None` if the
    /// store cannot tell): lets a reader keep a list until it does.
    fn list_version(&self) -> Option<u64>;
    /// Reads `stream` of job `id` line by line from `start`; lines longer than
    /// `max_keep` bytes are cut in [`LogLine::data`](crate::reader::LogLine)
    /// (their length stays exact).
    fn open_lines(
        &self,
        id: &JobId,
        stream: Stream,
        start: Start,
        max_keep: usize,
    ) -> Result<Box<dyn LineSource>>;
    /// The cursor `[o, e]` of the lines merged before `at` in arrival order:
    /// how far stdout and stderr have come just before that line (the end
    /// cursor when it is past the end). With `writer_done`, a final line
    /// without a newline counts. The default walks both streams up to `at`;
    /// the file store finds it in its index (issue 11: `at=L5000000` on a
    /// 1 GB log without a scan).
    fn merged_before(&self, id: &JobId, at: Anchor, writer_done: bool) -> Result<[u64; 2]> {
        crate::reader::walk_merged_before(self, id, at, writer_done)
    }
    /// The raw bytes of `stream` of job `id`.
    fn open_raw(&self, id: &JobId, stream: Stream) -> Result<Box<dyn RawLog>>;
    /// How far the job's output has come: changes whenever anything is
    /// appended (a reader compares it to know whether to look again).
    fn progress(&self, id: &JobId) -> Progress;
    /// A watcher for changes to jobs of this store.
    fn watcher(&self) -> Result<Box<dyn ChangeWatcher>>;
    /// Where the jobs are, for messages: a directory, a URL.
    fn location(&self) -> String;

    // Retention (gc): walk, measure, remove.

    /// Hands every entry where jobs live to `f` as it is found: jobs, the
    /// leftovers of an interrupted removal, and strays (with why they are not
    /// jobs). Streams, so memory does not grow with the number of jobs.
    fn scan(&self, f: &mut dyn FnMut(ScanEntry)) -> Result<()>;
    /// Space, identity and age of job `id`. `NotFound` when it is gone; any
    /// other error says, in words fit for a warning, why it cannot be measured.
    fn job_usage(&self, id: &JobId) -> io::Result<JobUsage>;
    /// Removes finished job `id` if it is still the one measured (`expected`,
    /// from [`LogStore::job_usage`]) and its writer is not alive: never a
    /// running job, never a newer job that reused the id.
    fn remove_job(&self, id: &JobId, expected: DirIdentity) -> Result<Removed>;
    /// Clears a leftover found by [`LogStore::scan`]; `Ok(false)` if someone
    /// else already had.
    fn clear_leftover(&self, leftover: &Leftover) -> io::Result<bool>;
}

/// Puts the streams' sizes as they are now into `meta` of job `id` when its
/// writer has not written the final counts (see [`LogStore::live_stats`]).
pub fn add_live_stats<S: LogStore + ?Sized>(store: &S, id: &JobId, meta: &mut Metadata) {
    if !matches!(meta.status, Status::Running | Status::Abandoned) {
        return;
    }
    for stream in Stream::BOTH {
        if let Some(stats) = store.live_stats(id, stream) {
            match stream {
                Stream::Stdout => meta.stdout = stats,
                Stream::Stderr => meta.stderr = stats,
            }
        }
    }
}

/// An entry where a store keeps jobs, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEntry {
    /// A job.
    Job(JobId),
    /// What an interrupted removal left behind, to be cleared.
    Leftover(Leftover),
    /// Something that is not a job: its name and why it is skipped.
    Stray { name: String, why: String },
}

/// A job as [`LogStore::list_jobs`] lists it.
#[derive(Debug, Clone)]
pub struct JobListing {
    pub id: JobId,
    /// Live metadata, or why there is none.
    pub meta: std::result::Result<Metadata, Unlisted>,
    /// Start time (ms since the epoch) as it ranks ([`LogStore::rank_ms`]):
    /// `started_at`, or when the job was created while it has no metadata.
    pub started_ms: i64,
}

/// Why a listed job has no metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlisted {
    /// The wrapper is still creating it.
    Creating,
    /// Its metadata is unreadable or refused; why.
    Damaged(String),
}

/// Sizes of what a job has written so far (stdout, stderr, and the store's
/// bookkeeping for each): equal values mean nothing new to read.
pub type Progress = [u64; 4];

/// The raw bytes of one stream of a job, read at offsets.
pub trait RawLog: Send {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when nothing has been written yet.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// True once the log was removed while being read.
    fn removed(&self) -> io::Result<bool>;
    /// The log as a file, when it is one: lets a reader hand copies to the
    /// kernel.
    fn as_file(&self) -> Option<&File> {
        None
    }
    /// The bytes a size limit omitted (`--max-log-size`): they read as zeros
    /// and a reader must say so instead. `None` when nothing is omitted.
    fn omitted_range(&self) -> io::Result<Option<OmittedRange>> {
        Ok(None)
    }
}

/// Bytes `[start, end)` of a stream that are not there to read, how much that
/// is in bytes and lines, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OmittedRange {
    pub start: u64,
    pub end: u64,
    pub omitted: Omitted,
    pub cause: OmitCause,
}

/// Why a stream's bytes are missing from a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OmitCause {
    /// The job's `--max-log-size` cut them (issue 12): they read as zeros.
    SizeLimit,
    /// A Redis source trimmed them (`--ship-maxlen`, issue 10): they cannot
    /// be read at all; the job's own machine still has them.
    Trimmed,
}

/// The file store's raw log of a stream with a size limit: the log and its gap
/// sidecar.
struct LimitedLog {
    log: File,
    gap: File,
}

impl RawLog for LimitedLog {
    fn len(&self) -> io::Result<u64> {
        RawLog::len(&self.log)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.log, buf, offset)
    }
    fn removed(&self) -> io::Result<bool> {
        self.log.removed()
    }
    fn as_file(&self) -> Option<&File> {
        Some(&self.log)
    }
    fn omitted_range(&self) -> io::Result<Option<OmittedRange>> {
        let g = read_gap(&self.gap)?;
        Ok(g.is_gap().then(|| OmittedRange {
            start: g.start,
            end: g.end,
            omitted: Omitted {
                omitted_bytes: g.omitted_bytes(),
                omitted_lines: g.omitted_lines(),
            },
            cause: OmitCause::SizeLimit,
        }))
    }
}

impl RawLog for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn removed(&self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.metadata()?.nlink() == 0)
    }
    fn as_file(&self) -> Option<&File> {
        Some(self)
    }
}

/// What changed since a [`ChangeWatcher`] was last asked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Watched jobs with something new, and for each whether more than output
    /// changed (metadata rewritten, writer gone, job removed): look at its
    /// status again.
    pub jobs: Vec<(JobId, bool)>,
    /// Jobs were created or removed (with [`ChangeWatcher::watch_list`]).
    pub list: bool,
    /// Events were lost: look at everything watched again.
    pub overflow: bool,
}

impl Changes {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && !self.list && !self.overflow
    }
}

/// Tells a reader when a job's output or status changes, so it never polls
/// files: wait on it ([`ChangeWatcher::wait`]), or register its descriptor in a
/// poller and take the changes when it is readable.
pub trait ChangeWatcher: Send {
    /// Watches job `id`; an error if it does not exist (yet).
    fn watch_job(&mut self, id: &JobId) -> Result<()>;
    /// Stops watching job `id`.
    fn unwatch_job(&mut self, id: &JobId);
    /// Also reports jobs being created or removed ([`Changes::list`]).
    fn watch_list(&mut self) -> Result<()>;
    /// A descriptor that is readable while changes wait to be taken.
    fn fd(&self) -> std::os::fd::BorrowedFd<'_>;
    /// Takes the changes waiting, without blocking.
    fn take_changes(&mut self) -> Result<Changes>;
    /// Waits up to `timeout` for a change, then takes what is waiting.
    fn wait(&mut self, timeout: std::time::Duration) -> Result<Changes> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for changes"),
        }
        self.take_changes()
    }
}

/// The file store: one directory per job under `<root>/job_runs/`.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

const JOBS_DIR: &str = "job_runs";
const LOCK_FILE: &str = "lock";
/// Room set aside for the final metadata.json (SPEC §1 "Log writes that fail"):
/// a file of [`RESERVE_BYTES`] made at creation and unlinked just before the
/// final write, so a full disk cannot cost the job its final status.
const RESERVE_FILE: &str = ".reserve";
/// Size of the reserve. The final metadata of a job is a few KiB; 256 KiB also
/// covers a few thousand markers, while costing little per running job (it is
/// released when the job ends). A job whose markers fill the whole marker cap
/// needs more than this on a full disk; then the final write is reported.
pub(crate) const RESERVE_BYTES: usize = 256 << 10;
const METADATA_FILE: &str = "metadata.json";
/// Housekeeping's stamp in the root (issue 5): its mtime is when the last
/// collection finished, its flock is held while one runs.
const GC_STAMP_FILE: &str = ".gc-stamp";
/// Prefix of a job directory a collector has taken out of `job_runs` and is
/// deleting. A dot-name is never a valid id, so no reader lists it.
const TRASH_PREFIX: &str = ".deleting-";

impl FileStore {
    /// A store rooted at `root` (the `DATABUILD_LOG_DIR`).
    pub fn new(root: impl Into<PathBuf>) -> FileStore {
        FileStore { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/job_runs`.
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join(JOBS_DIR)
    }

    /// The directory of job `id`.
    pub fn job_dir(&self, id: &JobId) -> PathBuf {
        self.jobs_dir().join(id.as_str())
    }

    /// Path of a stream's log file.
    pub(crate) fn log_path(&self, id: &JobId, stream: Stream) -> PathBuf {
        self.job_dir(id).join(log_name(stream))
    }

    /// Path of a stream's index file.
    pub(crate) fn index_path(&self, id: &JobId, stream: Stream) -> PathBuf {
        self.job_dir(id).join(index_name(stream))
    }

    /// Path of a stream's gap sidecar (present only under a size limit).
    pub(crate) fn gap_path(&self, id: &JobId, stream: Stream) -> PathBuf {
        self.job_dir(id).join(gap_name(stream))
    }

    /// Path of the job's metadata.json.
    pub(crate) fn metadata_path(&self, id: &JobId) -> PathBuf {
        self.job_dir(id).join(METADATA_FILE)
    }

    /// Makes sure `<root>/job_runs` exists and can be written: the check behind
    /// exit 125 for an unusable root.
    pub fn ensure_writable(&self) -> Result<()> {
        let dir = self.jobs_dir();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create log directory {}", dir.display()))?;
        nix::unistd::access(
            &dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .with_context(|| format!("log directory {} is not writable", dir.display()))?;
        Ok(())
    }

    /// The metadata as written, without the live-status check.
    pub(crate) fn read_metadata(&self, id: &JobId) -> Result<Metadata> {
        metadata::read(&self.metadata_path(id))
    }

    /// `<root>/.gc-stamp`: when housekeeping last finished a collection.
    pub(crate) fn gc_stamp_path(&self) -> PathBuf {
        self.root.join(GC_STAMP_FILE)
    }

    /// Where a collector running as `pid` moves job `id` before deleting it:
    /// `<root>/job_runs/.deleting-<id>-<pid>-<seq>`, unique per collector call.
    pub(crate) fn trash_path(&self, id: &JobId, pid: u32, seq: u64) -> PathBuf {
        self.jobs_dir()
            .join(format!("{TRASH_PREFIX}{}-{pid}-{seq}", id.as_str()))
    }

    /// For an entry name in `job_runs`: the pid of the collector that was
    /// deleting it, if it is such a leftover (see [`FileStore::trash_path`]).
    pub(crate) fn trash_owner(name: &str) -> Option<u32> {
        let rest = name.strip_prefix(TRASH_PREFIX)?;
        let mut parts = rest.rsplitn(3, '-');
        let _seq = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        parts.next()?;
        Some(pid)
    }

    /// Ids of the job directories under the root, sorted. Entries that are not
    /// valid ids (temp and trash names, strays) or not directories are skipped;
    /// a root without `job_runs` has no jobs.
    pub(crate) fn list_job_ids(&self) -> Result<Vec<JobId>> {
        let dir = self.jobs_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("listing {}", dir.display())))
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                if let Ok(id) = JobId::parse(name) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// True while a wrapper writes the job whose directory is `dir` (wherever it
/// has been moved to). Liveness is a `flock` on the job directory itself, held
/// by the wrapper for the job's whole life and released by the kernel when the
/// wrapper dies, however it dies: nothing the job's processes can delete
/// (issue 8: removing the `lock` file made a running job look abandoned and
/// let gc delete it). The `lock` file inside is still locked too, and honoured,
/// so jobs written by older wrappers read right.
pub(crate) fn dir_writer_alive(dir: &Path) -> bool {
    if let Ok(fd) = open_dir_nofollow(dir) {
        if is_locked(fd) {
            return true;
        }
    }
    match open_job_file(&dir.join(LOCK_FILE)) {
        Ok(f) => is_locked(f),
        Err(_) => false,
    }
}

/// True when someone holds an exclusive `flock` on `fd`'s file. Taking a shared
/// lock means nobody does; dropping it (and the descriptor) releases it again.
fn is_locked<T: Flockable>(fd: T) -> bool {
    Flock::lock(fd, FlockArg::LockSharedNonblock).is_err()
}

fn log_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout.log",
        Stream::Stderr => "stderr.log",
    }
}

fn gap_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout.gap",
        Stream::Stderr => "stderr.gap",
    }
}

fn index_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout.idx",
        Stream::Stderr => "stderr.idx",
    }
}

/// The file in a running job's directory that counts the numbers its nested
/// jobs took (see [`LogStore::reserve_child`]).
const CHILDREN_FILE: &str = ".children";

impl LogStore for FileStore {
    /// The count is a number in `.children` in the parent's directory,
    /// updated under an exclusive lock, so siblings starting at once each
    /// get their own (the job's files are hostile: a link or FIFO planted
    /// there is not followed or waited on, and the count is then not kept).
    fn reserve_child(&self, parent: &JobId, at_least: u64) -> Option<u64> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.job_dir(parent).join(CHILDREN_FILE);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut file = Flock::lock(file, FlockArg::LockExclusive).ok()?;
        let mut text = String::new();
        (&*file).take(32).read_to_string(&mut text).ok()?;
        let last: u64 = text.trim().parse().unwrap_or(0);
        let n = at_least.max(last.saturating_add(1));
        file.set_len(0).ok()?;
        file.rewind().ok()?;
        file.write_all(format!("{n}\n").as_bytes()).ok()?;
        Some(n)
    }

    fn create_job(&self, id: &JobId) -> std::result::Result<Box<dyn JobSink>, CreateError> {
        Ok(Box::new(FileJobSink::create(self, id)?))
    }

    fn metadata(&self, id: &JobId) -> Result<Metadata> {
        self.read_metadata(id)
    }

    fn writer_alive(&self, id: &JobId) -> bool {
        dir_writer_alive(&self.job_dir(id))
    }

    fn job_exists(&self, id: &JobId) -> bool {
        fs::symlink_metadata(self.job_dir(id)).is_ok_and(|m| m.is_dir())
    }

    fn job_ids(&self) -> Result<Vec<JobId>> {
        self.list_job_ids()
    }

    /// The directory's birth time where the filesystem keeps one (ext4,
    /// XFS, Btrfs, tmpfs); else its mtime, which the job can set (`touch -d
    /// 2099-01-01`) but not past its ctime, which only the kernel sets.
    fn created_ms(&self, id: &JobId) -> Option<i64> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(self.job_dir(id)).ok()?;
        if let Ok(born) = m.created() {
            return Some(timefmt::unix_ms(born));
        }
        let changed = m.ctime() * 1000 + m.ctime_nsec() / 1_000_000;
        let modified = m.modified().map_or(changed, timefmt::unix_ms);
        Some(modified.min(changed))
    }

    fn list_version(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let md = fs::metadata(self.jobs_dir()).ok()?;
        Some((md.mtime() as u64).wrapping_mul(1_000_000_000) ^ md.mtime_nsec() as u64 ^ md.ino())
    }

    fn open_lines(
        &self,
        id: &JobId,
        stream: Stream,
        start: Start,
        max_keep: usize,
    ) -> Result<Box<dyn LineSource>> {
        Ok(Box::new(StreamReader::open(
            self, id, stream, start, max_keep,
        )?))
    }

    fn merged_before(&self, id: &JobId, at: Anchor, writer_done: bool) -> Result<[u64; 2]> {
        merged::merged_before(self, id, at, writer_done)
    }

    fn open_raw(&self, id: &JobId, stream: Stream) -> Result<Box<dyn RawLog>> {
        let path = self.log_path(id, stream);
        let file = open_job_file(&path).map_err(|e| {
            anyhow::Error::new(e).context(format!("opening {} of job {id}", stream.name()))
        })?;
        // Only a job with a size limit has a gap sidecar; others pay one failed
        // open per request.
        match open_job_file(&self.gap_path(id, stream)) {
            Ok(gap) => Ok(Box::new(LimitedLog { log: file, gap })),
            Err(_) => Ok(Box::new(file)),
        }
    }

    fn progress(&self, id: &JobId) -> Progress {
        let len = |p: PathBuf| job_file_len(&p).unwrap_or(0);
        let [out, err] = Stream::BOTH;
        [
            len(self.log_path(id, out)),
            len(self.log_path(id, err)),
            len(self.index_path(id, out)),
            len(self.index_path(id, err)),
        ]
    }

    fn live_stats(&self, id: &JobId, stream: Stream) -> Option<StreamStats> {
        let log = open_job_file(&self.log_path(id, stream)).ok()?;
        let idx = IndexFile::open(&self.index_path(id, stream)).ok();
        count_stats(&log, idx.as_ref()).ok()
    }

    fn watcher(&self) -> Result<Box<dyn ChangeWatcher>> {
        Ok(Box::new(watch::FileWatcher::new(self.clone())?))
    }

    fn location(&self) -> String {
        self.jobs_dir().display().to_string()
    }

    /// Reads `job_runs/` (a missing one holds no jobs; a symlink or a file in
    /// its place is an error, never followed).
    fn scan(&self, f: &mut dyn FnMut(ScanEntry)) -> Result<()> {
        let jobs_dir = self.jobs_dir();
        match fs::symlink_metadata(&jobs_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", jobs_dir.display())),
            Ok(md) if md.file_type().is_symlink() => bail!(
                "{} is a symlink; gc never follows symlinks: point --log-dir at the real root",
                jobs_dir.display()
            ),
            Ok(md) if !md.is_dir() => bail!("{} is not a directory", jobs_dir.display()),
            Ok(_) => {}
        }
        let entries = fs::read_dir(&jobs_dir)
            .with_context(|| format!("cannot list {}", jobs_dir.display()))?;
        let not_an_id = "its name is not a job id".to_string();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    f(ScanEntry::Stray {
                        name: String::new(),
                        why: format!("cannot read an entry: {e}"),
                    });
                    continue;
                }
            };
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                f(ScanEntry::Stray {
                    name: file_name.to_string_lossy().into_owned(),
                    why: not_an_id.clone(),
                });
                continue;
            };
            if name.starts_with('.') {
                // Ids never start with '.': temp files and collectors' trash.
                match self.leftover(name) {
                    Ok(Some(leftover)) => f(ScanEntry::Leftover(leftover)),
                    Ok(None) => {}
                    Err(e) => f(ScanEntry::Stray {
                        name: name.to_string(),
                        why: e.to_string(),
                    }),
                }
                continue;
            }
            match JobId::parse(name) {
                Ok(id) => f(ScanEntry::Job(id)),
                Err(_) => f(ScanEntry::Stray {
                    name: name.to_string(),
                    why: not_an_id.clone(),
                }),
            }
        }
        Ok(())
    }

    fn job_usage(&self, id: &JobId) -> io::Result<JobUsage> {
        self.dir_usage_of(id)
    }

    fn remove_job(&self, id: &JobId, expected: DirIdentity) -> Result<Removed> {
        self.remove_dir_of(id, expected)
    }

    fn clear_leftover(&self, leftover: &Leftover) -> io::Result<bool> {
        match tree::remove_tree(&leftover.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Per-stream write state of a [`FileJobSink`].
struct StreamFiles {
    log: File,
    idx: File,
    /// Index records made by the current append, written to `idx` in one
    /// write at its end (a whole read makes four).
    idx_pending: Vec<u8>,
    /// Bytes of the index that hold its header and whole records.
    idx_len: u64,
    /// Bytes and lines appended so far.
    lines: LineSplitter,
    /// Where the last index record written ends. Bytes past it, up to the end,
    /// hold no newline: their record is written with the chunk that ends their
    /// line (see [`FileJobSink::append`]).
    recorded_end: u64,
    /// Read time of the last chunk not yet in a record.
    pending_ts: u64,
    /// Index records written so far.
    records: u64,
    /// The size limit and its gap sidecar, when `--max-log-size` is set.
    limit: Option<(limit::Limiter, File)>,
    /// Why the size limit could not cut the log (a filesystem without hole
    /// punching): the log then keeps growing, and the job's logging goes on.
    limit_error: Option<String>,
}

impl StreamFiles {
    /// Records the bytes not yet recorded if `len` more would make their
    /// record span more than [`index::MAX_CHUNK`] bytes.
    fn record_before(&mut self, seq: &mut u64, len: usize) {
        if self.lines.offset() - self.recorded_end + len as u64 > index::MAX_CHUNK as u64 {
            let ts = self.pending_ts;
            self.record(seq, ts);
        }
    }

    /// Counts `data` (written to the log just now, `newlines` of them) into
    /// the index: a record at its last newline, and never one spanning more
    /// than [`index::MAX_CHUNK`] bytes (the bytes before it get theirs first).
    fn account(&mut self, seq: &mut u64, data: &[u8], newlines: u64, ts_us: u64) {
        self.record_before(seq, data.len());
        self.pending_ts = ts_us;
        self.lines.advance(data, newlines);
        if newlines > 0 {
            self.record(seq, ts_us);
        }
    }

    /// Under a size limit: writes `data` (at most [`index::MAX_CHUNK`]
    /// bytes, `newlines` of them) and counts it into the index, then lets
    /// the limit cut. The log is cut only at line starts right after a
    /// record: the record goes at the piece's last newline, so every piece
    /// holding one makes a cut point (a child writing in blocks rarely ends
    /// a read at a line end). The bytes after it wait for the next record.
    fn append_limited(
        &mut self,
        seq: &mut u64,
        data: &[u8],
        newlines: u64,
        ts_us: u64,
    ) -> io::Result<()> {
        self.record_before(seq, data.len());
        self.log.write_all(data)?;
        self.pending_ts = ts_us;
        if newlines == 0 {
            self.lines.advance(data, 0);
            return Ok(());
        }
        let split = memchr::memrchr(b'\n', data).map_or(data.len(), |i| i + 1);
        let (lines, rest) = data.split_at(split);
        self.lines.advance(lines, newlines);
        self.record(seq, ts_us);
        // The cut may punch out records too: all of them are in the file.
        self.write_records()?;
        self.enforce_limit();
        self.lines.advance(rest, 0);
        Ok(())
    }

    /// Makes the record for everything appended up to `end`, if not yet
    /// done; [`StreamFiles::write_records`] writes it.
    fn record(&mut self, seq: &mut u64, ts_us: u64) {
        let end = self.lines.offset();
        if end == self.recorded_end {
            return;
        }
        let rec = Record {
            seq: *seq,
            ts_us,
            end,
            lines_end: self.lines.complete_lines(),
        };
        *seq += 1;
        self.idx_pending.extend_from_slice(&rec.encode());
        self.recorded_end = end;
        self.records += 1;
    }

    /// Writes the records made since the last call to the index. Records that
    /// fail to be written are dropped, and the index is cut back to its last
    /// whole record (a write cut short by a full disk must not shift every
    /// later record off its slot).
    fn write_records(&mut self) -> io::Result<()> {
        if self.idx_pending.is_empty() {
            return Ok(());
        }
        let written = self.idx.write_all(&self.idx_pending);
        match written {
            Ok(()) => self.idx_len += self.idx_pending.len() as u64,
            Err(_) => {
                let _ = self.idx.set_len(self.idx_len);
            }
        }
        self.idx_pending.clear();
        written
    }

    /// After a chunk that ended a line and got its record: lets the size limit
    /// grow the gap. The sidecar is rewritten before anything is punched, so a
    /// reader that checks it after a read knows whether its bytes were data.
    fn enforce_limit(&mut self) {
        if self.limit_error.is_some() {
            return;
        }
        if let Err(e) = self.cut_to_limit() {
            // Never a reason to stop logging: the log keeps everything from
            // here on and the error is reported in metadata.
            self.limit_error = Some(format!("--max-log-size: cannot cut the log: {e}"));
        }
    }

    fn cut_to_limit(&mut self) -> io::Result<()> {
        let Some((limiter, gap_file)) = &mut self.limit else {
            return Ok(());
        };
        let at = limit::Cut {
            offset: self.lines.offset(),
            lines: self.lines.complete_lines(),
            records: self.records,
        };
        let Some(adv) = limiter.at_line_start(at) else {
            return Ok(());
        };
        gap_file.write_all_at(&adv.gap.encode(), 0)?;
        let (from, to) = limit::Advance::aligned(adv.log.0, adv.log.1, adv.gap.start);
        punch(&self.log, from, to)?;
        let rec_at = |r: u64| HEADER.len() as u64 + r * RECORD_LEN as u64;
        let (from, to) = limit::Advance::aligned(
            rec_at(adv.records.0),
            rec_at(adv.records.1),
            rec_at(adv.records_floor),
        );
        punch(&self.idx, from, to)
    }
}

/// Tries to read a gap sidecar this many times while its writer rewrites it:
/// the rewrite is one small `pwrite`, so a second read sees it whole.
const GAP_READ_TRIES: usize = 8;

/// The gap a sidecar describes now (see `store::limit`).
pub(crate) fn read_gap(f: &File) -> io::Result<limit::Gap> {
    let mut b = [0u8; limit::GAP_LEN];
    for _ in 0..GAP_READ_TRIES {
        f.read_exact_at(&mut b, 0)?;
        if let Some(g) = limit::Gap::decode(&b) {
            return Ok(g);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "the gap sidecar is damaged",
    ))
}

/// Gives the bytes `[from, to)` of `file` back to the filesystem; they read as
/// zeros after, and the file keeps its size.
fn punch(file: &File, from: u64, to: u64) -> io::Result<()> {
    use nix::fcntl::FallocateFlags as F;
    if to <= from {
        return Ok(());
    }
    let off = i64::try_from(from).map_err(io::Error::other)?;
    let len = i64::try_from(to - from).map_err(io::Error::other)?;
    nix::fcntl::fallocate(
        file,
        F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
    .map_err(|e| io::Error::other(format!("cannot cut the log to its size limit: {e}")))
}

/// The file store's writer for one job. Holds the job's lock for its lifetime, so
/// readers can tell a dead writer from a live one.
///
/// It also holds a reserve file (`.reserve`) while the job runs: on a full disk
/// the logs stop growing, and unlinking the reserve before the final metadata
/// write gives that write the room it needs.
pub(crate) struct FileJobSink {
    dir: PathBuf,
    streams: [StreamFiles; 2],
    seq: u64,
    /// The reserve file, until released.
    reserve: Option<PathBuf>,
    _lock: Flock<File>,
    /// The job directory, `flock`ed for the sink's lifetime: see
    /// [`dir_writer_alive`].
    _dir_lock: Flock<OwnedFd>,
}

impl FileJobSink {
    fn create(store: &FileStore, id: &JobId) -> std::result::Result<FileJobSink, CreateError> {
        let dir = store.job_dir(id);
        let sink = FileJobSink::create_in(dir.clone());
        if matches!(sink, Err(CreateError::Io(_))) {
            // The directory is ours (create_dir succeeded) and holds only what
            // create_in made: remove it so the same id can be retried.
            let _ = fs::remove_dir_all(&dir);
        }
        sink
    }

    fn create_in(dir: PathBuf) -> std::result::Result<FileJobSink, CreateError> {
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CreateError::IdInUse(dir))
            }
            Err(e) => {
                return Err(CreateError::Io(
                    anyhow::Error::new(e)
                        .context(format!("cannot create job directory {}", dir.display())),
                ))
            }
        }
        let io_err = |e: io::Error, what: &Path| {
            CreateError::Io(
                anyhow::Error::new(e).context(format!("cannot create {}", what.display())),
            )
        };
        let dir_fd = open_dir_nofollow(&dir).map_err(|e| io_err(e, &dir))?;
        // Blocking: a reader checking liveness holds a shared lock for an
        // instant, which must not make the job fail to start.
        let dir_lock = Flock::lock(dir_fd, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(e.into(), &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = create_new_file(&lock_path, false).map_err(|e| io_err(e, &lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(e.into(), &lock_path))?;
        let open_stream = |stream: Stream| -> std::result::Result<StreamFiles, CreateError> {
            let log_path = dir.join(log_name(stream));
            let log = append_file(&log_path).map_err(|e| io_err(e, &log_path))?;
            let idx_path = dir.join(index_name(stream));
            let mut idx = append_file(&idx_path).map_err(|e| io_err(e, &idx_path))?;
            idx.write_all(&HEADER).map_err(|e| io_err(e, &idx_path))?;
            Ok(StreamFiles {
                log,
                idx,
                idx_pending: Vec::with_capacity(8 * RECORD_LEN),
                idx_len: HEADER.len() as u64,
                lines: LineSplitter::new(),
                recorded_end: 0,
                pending_ts: 0,
                records: 0,
                limit: None,
                limit_error: None,
            })
        };
        let streams = [open_stream(Stream::Stdout)?, open_stream(Stream::Stderr)?];
        let reserve_path = dir.join(RESERVE_FILE);
        let reserve = make_reserve(&reserve_path).map_err(|e| io_err(e, &reserve_path))?;
        Ok(FileJobSink {
            streams,
            dir,
            seq: 0,
            reserve,
            _lock: lock,
            _dir_lock: dir_lock,
        })
    }

    /// Writes the records still owed for chunks without a newline.
    fn record_pending(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for s in &mut self.streams {
            let ts = s.pending_ts;
            s.record(&mut self.seq, ts);
            if let Err(e) = s.write_records() {
                result = Err(e);
            }
        }
        result
    }

    /// Unlinks the reserve, giving its room back for the final metadata.
    fn release_reserve(&mut self) {
        if let Some(path) = self.reserve.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Makes the reserve file at `path` (see [`RESERVE_BYTES`]). A full disk is an
/// error: the job could not keep its final status. A file size limit below the
/// reserve (RLIMIT_FSIZE) is not: the disk itself has room, so the job runs
/// without a reserve (`None`).
fn make_reserve(path: &Path) -> io::Result<Option<PathBuf>> {
    let f = create_new_file(path, false)?;
    let r = nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::empty(),
        0,
        RESERVE_BYTES as i64,
    );
    let result = match r {
        Ok(()) => Ok(()),
        Err(e) => match io::Error::from(e) {
            // A filesystem without fallocate: real zero blocks hold room too.
            e if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
                (0..RESERVE_BYTES / ZEROS.len()).try_for_each(|_| (&f).write_all(&ZEROS))
            }
            e => Err(e),
        },
    };
    match result {
        Ok(()) => Ok(Some(path.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(libc::EFBIG) => {
            fs::remove_file(path)?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Creates a new file the wrapper will write: `O_EXCL` so an existing file (or a
/// link planted in the job directory) is refused rather than reused, and
/// `O_NOFOLLOW` so no symlink is followed even where `O_EXCL` alone would not
/// say so. With `append`, every write goes to the end.
fn create_new_file(path: &Path, append: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    if append {
        // Readable too, so a terminal copy that fell behind can read the log
        // back (`JobSink::log_reader`); O_APPEND only concerns writes.
        opts.read(true).append(true);
    } else {
        opts.write(true);
    }
    opts.create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

fn append_file(path: &Path) -> io::Result<File> {
    create_new_file(path, true)
}

impl JobSink for FileJobSink {
    fn dir(&self) -> &Path {
        &self.dir
    }

    /// A chunk without a newline gets no record of its own: it joins the record
    /// of the chunk that ends its line. A line's time and arrival order are
    /// those of the chunk holding its newline, so they stay exact, while a job
    /// writing a byte at a time costs one record per line, not per byte. A
    /// record still never spans more than [`index::MAX_CHUNK`] bytes (readers
    /// scan one record's range to find a line), and the bytes not yet recorded
    /// are a tail readers scan.
    ///
    /// A larger chunk (a whole read, up to four records' worth, perhaps after
    /// bytes a redactor held back) is still one write (without a size limit),
    /// recorded in pieces of at most [`index::MAX_CHUNK`], whose records go
    /// to the index in one write after the log's.
    fn append(&mut self, stream: Stream, chunk: &Chunk) -> io::Result<()> {
        let s = &mut self.streams[stream.index()];
        let (data, ts) = (chunk.data(), chunk.ts_us());
        // Under a size limit each piece is written, and may be cut, as a
        // chunk of its own.
        let limited = s.limit.is_some();
        if !limited {
            s.log.write_all(data)?;
        }
        let mut appended = Ok(());
        for (i, piece) in data.chunks(index::MAX_CHUNK).enumerate() {
            let n = chunk.piece_newlines(i, piece);
            if !limited {
                s.account(&mut self.seq, piece, n, ts);
                continue;
            }
            appended = s.append_limited(&mut self.seq, piece, n, ts);
            if appended.is_err() {
                break;
            }
        }
        // The records of what is in the log, in one write.
        let recorded = s.write_records();
        appended.and(recorded)
    }

    fn limit_size(&mut self, max: u64) -> io::Result<bool> {
        for stream in Stream::BOTH {
            let path = self.dir.join(gap_name(stream));
            let f = create_new_file(&path, false)?;
            f.write_all_at(&limit::Gap::default().encode(), 0)?;
            self.streams[stream.index()].limit = Some((limit::Limiter::new(max), f));
        }
        Ok(true)
    }

    fn limit_error(&self, stream: Stream) -> Option<String> {
        self.streams[stream.index()].limit_error.clone()
    }

    fn omitted(&self, stream: Stream) -> Option<Omitted> {
        let (limiter, _) = self.streams[stream.index()].limit.as_ref()?;
        let gap = limiter.gap();
        gap.is_gap().then(|| Omitted {
            omitted_bytes: gap.omitted_bytes(),
            omitted_lines: gap.omitted_lines(),
        })
    }

    fn finish(&mut self) -> io::Result<()> {
        // A final line without a newline gets its record now; then the reserve
        // gives its room to the final metadata.
        let recorded = self.record_pending();
        self.release_reserve();
        recorded
    }

    fn write_metadata(&mut self, meta: &Metadata, last: bool) -> Result<()> {
        if last {
            // Also when the caller did not finish first.
            let _ = self.finish();
        }
        // Only the final metadata is made durable (fsync). The logs are not:
        // every byte is in the page cache before the next read, which no crash of
        // the job or the wrapper can lose, and forcing a 1 GB log to disk would
        // cost the job more than the whole wrapping does (`tee` does not either).
        metadata::write_atomic(&self.dir.join(METADATA_FILE), &meta.to_json(), last)
    }

    fn discard(self: Box<Self>) {
        let dir = self.dir.clone();
        drop(self);
        let _ = fs::remove_dir_all(dir);
    }

    fn log_reader(&self, stream: Stream, from: u64) -> Option<File> {
        let s = &self.streams[stream.index()];
        // A log cut by a size limit holds the bytes from `from` on only when
        // they are all in its tail.
        if let Some((limiter, _)) = &s.limit {
            let gap = limiter.gap();
            if gap.is_gap() && from < gap.end {
                return None;
            }
        }
        s.log.try_clone().ok()
    }
}

/// A stream's index file opened for reading: random access to its records.
pub(crate) struct IndexFile {
    file: File,
    count: u64,
    /// The stream's gap sidecar, when a size limit punched records out.
    gap: Option<File>,
}

impl IndexFile {
    /// Opens `path`, checking the header; the record count is taken now (a growing
    /// file can be reopened to see more).
    pub(crate) fn open(path: &Path) -> Result<IndexFile> {
        let file = open_job_file(path).with_context(|| format!("opening {}", path.display()))?;
        let mut header = [0u8; HEADER.len()];
        file.read_exact_at(&mut header, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        if header != HEADER {
            bail!("{} is not a logwrap index (bad header)", path.display());
        }
        // The sidecar sits beside the index: `stdout.idx` -> `stdout.gap`.
        let gap = open_job_file(&path.with_extension("gap")).ok();
        let mut idx = IndexFile {
            file,
            count: 0,
            gap,
        };
        idx.refresh()
            .with_context(|| format!("measuring {}", path.display()))?;
        Ok(idx)
    }

    /// Takes in records appended since the last look.
    pub(crate) fn refresh(&mut self) -> io::Result<()> {
        let len = self.file.metadata()?.len();
        self.count = len.saturating_sub(HEADER.len() as u64) / RECORD_LEN as u64;
        Ok(())
    }

    /// Records `first..first + out.len()` (all below the count) in one read.
    pub(crate) fn get_block(&self, first: u64, out: &mut [Record]) -> io::Result<()> {
        let mut b = vec![0u8; out.len() * RECORD_LEN];
        self.file
            .read_exact_at(&mut b, HEADER.len() as u64 + first * RECORD_LEN as u64)?;
        for (k, (slot, raw)) in out.iter_mut().zip(b.chunks_exact(RECORD_LEN)).enumerate() {
            *slot = self.record(first + k as u64, raw)?;
        }
        Ok(())
    }

    /// Record `i` from its bytes `b`.
    fn record(&self, i: u64, b: &[u8]) -> io::Result<Record> {
        let rec = Record::decode(b.try_into().expect("a record's bytes"));
        match &self.gap {
            // A punched record (no real one ends at 0 after the first): a
            // zero-length chunk at the gap's start keeps the records in order
            // (see `store::limit`).
            Some(gap) if rec.end == 0 && i > 0 => {
                let g = read_gap(gap)?;
                Ok(Record {
                    seq: 0,
                    ts_us: 0,
                    end: g.start,
                    lines_end: g.lines_start,
                })
            }
            _ => Ok(rec),
        }
    }
}

impl Records for IndexFile {
    fn count(&self) -> u64 {
        self.count
    }
    fn get(&self, i: u64) -> io::Result<Record> {
        let mut b = [0u8; RECORD_LEN];
        self.file
            .read_exact_at(&mut b, HEADER.len() as u64 + i * RECORD_LEN as u64)?;
        self.record(i, &b)
    }
}

/// Byte offset where line `n` (from 1) starts in a stream's log, using its index;
/// `None` when the log has fewer than `n - 1` complete lines.
pub(crate) fn line_start(log: &File, idx: &impl Records, n: u64) -> Result<Option<u64>> {
    if n <= 1 {
        return Ok(Some(0));
    }
    let newline = n - 1;
    let Some(chunk) = index::chunk_with_newline(idx, newline)? else {
        return Ok(None);
    };
    let (start, end) = index::chunk_range(idx, chunk)?;
    let before = index::lines_before(idx, chunk)?;
    let recorded = idx.get(chunk)?.lines_end.saturating_sub(before);
    let mut buf = vec![0u8; (end - start) as usize];
    log.read_exact_at(&mut buf, start)?;
    // The chunk's newlines must be exactly those its records count: a record
    // moved in the middle of the index (out of order, or lying) shifts a
    // chunk's bytes or count, and trusting it would name the wrong line
    // without a word. Only the chunk a size limit omitted holds fewer (its
    // bytes are a hole), and no line is looked up there.
    let found = memchr::memchr_iter(b'\n', &buf).count() as u64;
    if found != recorded {
        bail!(
            "index and log disagree (chunk {chunk} holds {found} newlines, its record {recorded})"
        );
    }
    let nth = (newline - before - 1) as usize;
    match memchr::memchr_iter(b'\n', &buf).nth(nth) {
        Some(pos) => Ok(Some(start + pos as u64 + 1)),
        None => bail!("index and log disagree (chunk {chunk} holds fewer newlines than recorded)"),
    }
}

/// Most bytes past the index's last record that [`count_stats`] scans for
/// newlines. A live writer's index trails its log by at most one read (256
/// KiB, recorded just after it is written), so this covers it four times over; only a log whose
/// index is missing or damaged has more, and then the count covers the index
/// and this much (a lower bound) rather than reading a whole log per request.
const LIVE_SCAN: u64 = 1 << 20;

/// Bytes and lines of a log now: its length; the newlines the index's last
/// record counts, plus those in the unindexed tail (at most [`LIVE_SCAN`]
/// bytes of it); plus one for a final line without a newline.
fn count_stats(log: &File, idx: Option<&IndexFile>) -> io::Result<StreamStats> {
    let len = log.metadata()?.len();
    let last = match idx {
        Some(i) if i.count() > 0 => i.get(i.count() - 1).ok(),
        _ => None,
    };
    // A record past the log's end or with more newlines than bytes is not
    // trusted: the log is counted as if unindexed.
    let (mut lines, indexed_end) = match last {
        Some(r) if r.end <= len && r.lines_end <= r.end => (r.lines_end, r.end),
        _ => (0, 0),
    };
    let from = indexed_end.max(len.saturating_sub(LIVE_SCAN));
    let mut buf = vec![0u8; (len - from).min(index::MAX_CHUNK as u64) as usize];
    let mut pos = from;
    let mut last_byte = None;
    while pos < len && !buf.is_empty() {
        let want = ((len - pos) as usize).min(buf.len());
        let got = FileExt::read_at(log, &mut buf[..want], pos)?;
        if got == 0 {
            break;
        }
        lines += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
        last_byte = Some(buf[got - 1]);
        pos += got as u64;
    }
    if last_byte.is_none() && len > 0 && pos >= len {
        // Nothing past the index: the last byte decides the final line.
        let mut b = [0u8; 1];
        log.read_exact_at(&mut b, len - 1)?;
        last_byte = Some(b[0]);
    }
    if last_byte.is_some_and(|b| b != b'\n') {
        lines += 1;
    }
    Ok(StreamStats { bytes: len, lines })
}

/// A job written straight through the store, for unit tests of the readers.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A fresh root named after `tag` holding job `j`, with `writes` appended in
    /// order, the n-th read at 100+n µs. The sink is returned so the job stays
    /// live (its lock held) for as long as the test keeps it.
    pub fn job(tag: &str, writes: &[(Stream, &[u8])]) -> (TempRoot, JobId, Box<dyn JobSink>) {
        let store = TempRoot::new(tag);
        let id = JobId::parse("j").unwrap();
        let mut sink = store.create_job(&id).unwrap();
        for (i, (s, c)) in writes.iter().enumerate() {
            sink.append(*s, &Chunk::new(c, 100 + i as u64)).unwrap();
        }
        (store, id, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_counts_its_newlines_once_and_piece_by_piece() {
        let m = index::MAX_CHUNK;
        for len in [
            0,
            1,
            m - 1,
            m,
            m + 1,
            4 * m + 17,
            8 * m,
            8 * m + 1,
            9 * m + 5,
        ] {
            // Newlines at varying distances, some at the pieces' edges.
            let data: Vec<u8> = (0..len)
                .map(|i| {
                    if i % 97 == 0 || i % m == m - 1 || i % m == 0 {
                        b'\n'
                    } else {
                        b'x'
                    }
                })
                .collect();
            let chunk = Chunk::new(&data, 1);
            assert_eq!(chunk.newlines(), count_newlines(&data), "len {len}");
            for (i, piece) in data.chunks(m).enumerate() {
                assert_eq!(
                    chunk.piece_newlines(i, piece),
                    count_newlines(piece),
                    "len {len} piece {i}"
                );
            }
        }
    }

    #[test]
    fn live_stats_count_what_the_logs_hold_now_in_every_store() {
        let writes: [(Stream, &[u8]); 3] = [
            (Stream::Stdout, b"one\ntwo\n"),
            (Stream::Stderr, b"oops\n"),
            (Stream::Stdout, b"thr"),
        ];
        for t in both::jobs("live-stats", &writes) {
            let stats = |s| t.store.live_stats(&t.id, s).unwrap();
            assert_eq!(
                [stats(Stream::Stdout), stats(Stream::Stderr)],
                [
                    StreamStats {
                        bytes: 11,
                        lines: 3
                    },
                    StreamStats { bytes: 5, lines: 1 }
                ],
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn live_stats_scan_only_a_bounded_unindexed_tail() {
        let (store, id, _sink) = testing::job("live-tail", &[(Stream::Stdout, b"a\nb\n")]);
        // Bytes past the index (as after a crash): counted by a scan.
        let log = store.log_path(&id, Stream::Stdout);
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"c\nd").unwrap();
        assert_eq!(
            store.live_stats(&id, Stream::Stdout),
            Some(StreamStats { bytes: 7, lines: 4 })
        );
        // Far more than the scan bound past the index: only the last
        // LIVE_SCAN bytes are read, so the count is a lower bound.
        let big = vec![b'\n'; (LIVE_SCAN * 2) as usize];
        f.write_all(&big).unwrap();
        let got = store.live_stats(&id, Stream::Stdout).unwrap();
        assert_eq!(got.bytes, 7 + 2 * LIVE_SCAN);
        assert_eq!(got.lines, 2 + LIVE_SCAN);
    }

    #[test]
    fn ids_are_validated() {
        for good in ["a", "job-1.2_3", &"x".repeat(128), "A.b"] {
            assert!(JobId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "../etc",
            "a/b",
            "a b",
            "é",
            "%2e%2e",
            &"x".repeat(129),
            "a\0b",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_unique_and_time_sortable() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert!(JobId::parse(a.as_str()).is_ok());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("20"), "{a}");
        assert_eq!(a.as_str().find('T'), Some(8), "{a}");
    }

    fn temp_store(tag: &str) -> TempRoot {
        TempRoot::new(&format!("store-{tag}"))
    }

    #[test]
    fn index_finds_every_line_start_across_chunks() {
        let store = temp_store("index");
        let id = JobId::parse("j").unwrap();
        let mut sink = store.create_job(&id).unwrap();
        let chunks: [&[u8]; 4] = [b"one\ntw", b"o\n", b"", b"three\nfour\nfive"];
        for (i, c) in chunks.iter().enumerate() {
            sink.append(Stream::Stdout, &Chunk::new(c, i as u64))
                .unwrap();
        }
        let log = File::open(store.log_path(&id, Stream::Stdout)).unwrap();
        let idx = IndexFile::open(&store.index_path(&id, Stream::Stdout)).unwrap();
        // The empty chunk holds no newline: it joins the next chunk's record.
        assert_eq!(idx.count(), 3);
        let starts: Vec<_> = (1..=6)
            .map(|n| line_start(&log, &idx, n).unwrap())
            .collect();
        assert_eq!(
            starts,
            vec![Some(0), Some(4), Some(8), Some(14), Some(19), None]
        );
    }

    #[test]
    fn job_files_are_created_new_and_never_through_a_link() {
        let store = temp_store("nofollow");
        let victim = store.root().join("victim");
        fs::write(&victim, b"keep me").unwrap();
        let planted = store.root().join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        for append in [false, true] {
            let err = create_new_file(&planted, append).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "append {append}");
        }
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    }

    #[test]
    fn a_byte_at_a_time_costs_a_record_per_line_with_exact_line_times() {
        let store = temp_store("bytes");
        let id = JobId::parse("b").unwrap();
        let mut sink = FileJobSink::create(&store, &id).unwrap();
        let text = b"ab\ncd\n";
        for (i, b) in text.iter().enumerate() {
            sink.append(
                Stream::Stdout,
                &Chunk::new(std::slice::from_ref(b), i as u64),
            )
            .unwrap();
        }
        let path = store.index_path(&id, Stream::Stdout);
        let records = |p: &Path| {
            let idx = IndexFile::open(p).unwrap();
            (0..idx.count())
                .map(|i| idx.get(i).unwrap())
                .collect::<Vec<_>>()
        };
        let got: Vec<_> = records(&path)
            .iter()
            .map(|r| (r.ts_us, r.end, r.lines_end))
            .collect();
        // Each line is stamped with the read time of its newline, as before.
        assert_eq!(got, vec![(2, 3, 1), (5, 6, 2)]);
        let log = File::open(store.log_path(&id, Stream::Stdout)).unwrap();
        let idx = IndexFile::open(&path).unwrap();
        assert_eq!(line_start(&log, &idx, 2).unwrap(), Some(3));
        // A line longer than a chunk still gets records no wider than a chunk.
        let extra = index::MAX_CHUNK + 10;
        for i in 0..extra {
            sink.append(Stream::Stdout, &Chunk::new(b"x", 100 + i as u64))
                .unwrap();
        }
        sink.record_pending().unwrap();
        let recs = records(&path);
        assert_eq!(recs.len(), 4);
        let mut start = 0;
        for r in &recs {
            assert!(r.end - start <= index::MAX_CHUNK as u64, "{r:?}");
            start = r.end;
        }
        assert_eq!(start, 6 + extra as u64);
        assert_eq!(recs[3].ts_us, 100 + extra as u64 - 1);
        drop(sink);
    }

    #[test]
    fn a_chunk_over_max_chunk_is_recorded_in_pieces_no_wider_than_a_chunk() {
        // A whole read (up to four records' worth), perhaps after bytes a
        // redactor held back, makes such chunks.
        for limited in [false, true] {
            let store = temp_store("over");
            let id = JobId::parse("o").unwrap();
            let mut sink = FileJobSink::create(&store, &id).unwrap();
            if limited {
                sink.limit_size(1 << 30).unwrap();
            }
            let mut data = Vec::new();
            sink.append(Stream::Stdout, &Chunk::new(b"pre", 1)).unwrap();
            data.extend_from_slice(b"pre");
            // Newlines in the first 300 bytes, in the rest, and none at all.
            let mut big = vec![b'y'; index::MAX_CHUNK + 300];
            big[100] = b'\n';
            big[5000] = b'\n';
            big[index::MAX_CHUNK + 299] = b'\n';
            let plain = vec![b'z'; index::MAX_CHUNK + 7];
            // A whole read of four records' worth, newlines here and there.
            let read: Vec<u8> = (0..4 * index::MAX_CHUNK + 300)
                .map(|i| if i % 9_973 == 0 { b'\n' } else { b'r' })
                .collect();
            for (ts, chunk) in [(2, &big), (3, &plain), (4, &big), (5, &read), (6, &read)] {
                sink.append(Stream::Stdout, &Chunk::new(chunk, ts)).unwrap();
                data.extend_from_slice(chunk);
            }
            sink.record_pending().unwrap();
            let log = fs::read(store.log_path(&id, Stream::Stdout)).unwrap();
            assert!(
                log == data,
                "limited {limited}: the log is not the bytes given"
            );
            let path = store.index_path(&id, Stream::Stdout);
            let idx = IndexFile::open(&path).unwrap();
            let (mut start, mut lines) = (0, 0);
            for i in 0..idx.count() {
                let r = idx.get(i).unwrap();
                assert!(
                    r.end - start <= index::MAX_CHUNK as u64,
                    "limited {limited}: {r:?}"
                );
                let piece = &data[start as usize..r.end as usize];
                lines += memchr::memchr_iter(b'\n', piece).count() as u64;
                assert_eq!(r.lines_end, lines, "limited {limited}: {r:?}");
                start = r.end;
            }
            assert_eq!(start, data.len() as u64, "limited {limited}");
            let file = File::open(store.log_path(&id, Stream::Stdout)).unwrap();
            let newline_ends: Vec<u64> = memchr::memchr_iter(b'\n', &data)
                .map(|i| i as u64 + 1)
                .collect();
            for (n, end) in newline_ends.iter().enumerate() {
                let got = line_start(&file, &idx, n as u64 + 2).unwrap();
                assert_eq!(got, Some(*end), "limited {limited}: line {}", n + 2);
            }
            drop(sink);
        }
    }

    #[test]
    fn an_existing_id_is_refused() {
        let store = temp_store("dup");
        let id = JobId::parse("same").unwrap();
        let _first = store.create_job(&id).unwrap();
        assert!(matches!(
            store.create_job(&id),
            Err(CreateError::IdInUse(_))
        ));
    }

    #[test]
    fn lock_tells_a_live_writer_from_a_dead_one() {
        let store = temp_store("lock");
        let id = JobId::parse("l").unwrap();
        let sink = store.create_job(&id).unwrap();
        assert!(store.writer_alive(&id));
        drop(sink);
        assert!(!store.writer_alive(&id));
    }

    #[test]
    fn listing_returns_only_job_directories_in_id_order() {
        let store = temp_store("list");
        for id in ["b", "a"] {
            let _ = store.create_job(&JobId::parse(id).unwrap()).unwrap();
        }
        fs::create_dir(store.jobs_dir().join(".deleting-c-1-1")).unwrap();
        fs::write(store.jobs_dir().join("stray-file"), b"").unwrap();
        let ids: Vec<_> = store.list_job_ids().unwrap();
        assert_eq!(
            ids.iter().map(JobId::as_str).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        fs::remove_dir_all(store.root()).unwrap();
        assert!(
            store.list_job_ids().unwrap().is_empty(),
            "a root without job_runs has no jobs"
        );
    }
}

// ---------------------------------------------------------------------------
// Removing finished jobs (gc): the trash protocol
// ---------------------------------------------------------------------------
//
// Only this section knows how a job directory is taken out of the root: renamed
// to a unique dot-name in `job_runs/` (atomic, so readers see the whole job or
// nothing and two collectors can never both take it), checked to be the very
// directory that was judged and to have no live writer, then removed; and how
// the trash of a collector that died mid-deletion is recognised and cleared.

/// Deepest directory nesting measured inside a job directory (a job may write its
/// own files into `DATABUILD_JOB_LOG_DIR`); bounds the recursion, and nothing a
/// job sensibly writes comes near it. What lies deeper is not counted (see
/// [`JobUsage::deep`]), but removed with the job all the same.
pub(crate) const MAX_WALK_DEPTH: usize = 32;

/// Makes every trash name this process uses unique, even with several
/// collectors in one process (a scheduler embedding the library).
static TRASH_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Identity of a job directory as it was judged: removal checks it, so a newer
/// job that reused the id in the meantime is never taken instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirIdentity {
    pub ino: u64,
    pub mtime_ns: i64,
}

impl DirIdentity {
    fn of(md: &fs::Metadata) -> DirIdentity {
        use std::os::unix::fs::MetadataExt;
        DirIdentity {
            ino: md.ino(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
        }
    }
}

/// What a collector needs to know of a job directory besides its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobUsage {
    /// Bytes it takes on disk, as `du` counts them (symlinks count as themselves).
    pub size: u64,
    /// Its identity, to hand back to [`FileStore::remove_job`].
    pub dir: DirIdentity,
    /// Its mtime in ms since the epoch: the age of a job without metadata.
    pub mtime_ms: i64,
    /// Part of the job's own files could not be measured: nested deeper
    /// than 32 directories, or in a directory it made unreadable. `size`
    /// counts only the rest; such a job is still judged and removed like any
    /// other.
    pub deep: bool,
}

/// What became of [`FileStore::remove_job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The job and everything in it are gone.
    Deleted,
    /// Nothing was deleted: the job was already gone, or a new job had
    /// reused its id.
    Untouched,
    /// Nothing was deleted: its writer is alive after all (a wrapper that
    /// wrote its final metadata and has not exited yet, as when `--listen`
    /// waits for slow followers).
    WriterAlive,
}

/// Trash a collector left in `job_runs/` when it died mid-deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    path: PathBuf,
}

impl Leftover {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FileStore {
    /// Size, identity and age of job `id`'s directory, never following a
    /// symlink. `NotFound` when it is gone; any other error says, in words
    /// fit for a warning, why it is not a job gc may measure.
    fn dir_usage_of(&self, id: &JobId) -> io::Result<JobUsage> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.job_dir(id);
        let md = fs::symlink_metadata(&dir)?;
        if md.file_type().is_symlink() {
            return Err(io::Error::other(
                "it is a symlink (gc never follows symlinks)",
            ));
        }
        if !md.is_dir() {
            return Err(io::Error::other("it is not a directory"));
        }
        let (inside, deep) = match tree::usage(&dir, MAX_WALK_DEPTH) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot measure it: {e}"))),
        };
        Ok(JobUsage {
            size: inside.saturating_add(disk_usage(&md)),
            dir: DirIdentity::of(&md),
            mtime_ms: md.mtime().saturating_mul(1000) + md.mtime_nsec() / 1_000_000,
            deep,
        })
    }

    /// Deletes job `id`, judged finished, if its directory is still the one
    /// `expected` names and no writer holds it: moved aside first, then checked,
    /// then removed. A job found changed or alive is put back untouched.
    fn remove_dir_of(&self, id: &JobId, expected: DirIdentity) -> Result<Removed> {
        let dir = self.job_dir(id);
        // A live writer's job is not even moved aside (its readers would see
        // it vanish for a moment); the check after the move covers the race.
        if dir_writer_alive(&dir) {
            return Ok(Removed::WriterAlive);
        }
        let seq = TRASH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let trash = self.trash_path(id, std::process::id(), seq);
        match rename_noreplace(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::Untouched),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot move {} aside", dir.display()))
            }
        }
        let md = fs::symlink_metadata(&trash)
            .with_context(|| format!("cannot inspect {}", trash.display()))?;
        // The job was judged finished a moment ago from its metadata; its writer's
        // lock on the directory (which moved with it) is the last word, right
        // before anything is deleted (issue 8).
        let changed = DirIdentity::of(&md) != expected;
        if changed || dir_writer_alive(&trash) {
            // Another collector took the job we judged and a new job reused its id
            // since, or its writer is alive after all: give it back untouched.
            rename_noreplace(&trash, &dir).with_context(|| {
                format!(
                    "a new job took id {id} while it was being deleted and could not be put back; it is at {}",
                    trash.display()
                )
            })?;
            return Ok(if changed {
                Removed::Untouched
            } else {
                Removed::WriterAlive
            });
        }
        // Never follows symlinks (it unlinks them), tolerates entries vanishing
        // under it, and reaches any depth a job nested its own files to.
        match tree::remove_tree(&trash) {
            Ok(()) => Ok(Removed::Deleted),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removed::Deleted),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", trash.display())),
        }
    }

    /// For the name of an entry in `job_runs/`: the trash it is, if a collector
    /// that is no longer alive left it there. `Ok(None)` for anything else,
    /// including trash whose collector is alive (it finishes its own work); an
    /// error, in words fit for a warning, for trash that is not a directory.
    fn leftover(&self, name: &str) -> io::Result<Option<Leftover>> {
        let Some(pid) = FileStore::trash_owner(name) else {
            return Ok(None);
        };
        if pid_alive(pid) {
            return Ok(None);
        }
        let path = self.jobs_dir().join(name);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => Ok(Some(Leftover { path })),
            Ok(_) => Err(io::Error::other("it is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// rename(2) that fails instead of replacing `to` (an empty directory would
/// otherwise be silently replaced). Falls back to a plain rename on filesystems
/// without RENAME_NOREPLACE; the names used are unique anyway.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL | Errno::ENOSYS) => fs::rename(from, to),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// True unless `pid` certainly does not exist (EPERM means it does).
fn pid_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None),
            Err(Errno::ESRCH)
        ),
        _ => false,
    }
}

/// Space a file takes on disk, as `du` counts it.
fn disk_usage(md: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    md.blocks().saturating_mul(512)
}

/// A fresh root under the system temp dir, removed when dropped, so a failing
/// test leaves nothing behind.
#[cfg(test)]
pub(crate) struct TempRoot(pub FileStore, bool);

/// Makes every [`TempRoot`] of one test process unique.
#[cfg(test)]
static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
impl TempRoot {
    pub(crate) fn new(tag: &str) -> TempRoot {
        let seq = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("logwrap-{tag}-{}-{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = FileStore::new(root);
        store.ensure_writable().expect("temp root");
        TempRoot(store, true)
    }

    /// The store, no longer removed on drop: for a caller that cleans up
    /// itself.
    pub(crate) fn keep(mut self) -> FileStore {
        self.1 = false;
        self.0.clone()
    }
}

#[cfg(test)]
impl std::ops::Deref for TempRoot {
    type Target = FileStore;
    fn deref(&self) -> &FileStore {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TempRoot {
    fn drop(&mut self) {
        if self.1 {
            let _ = fs::remove_dir_all(self.0.root());
        }
    }
}

#[cfg(test)]
mod removal_tests {
    use super::*;

    fn id(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    #[test]
    fn trash_names_round_trip_to_their_collector_pid() {
        let store = FileStore::new("/r");
        let id = id("build-42-x");
        let trash = store.trash_path(&id, 4242, 7);
        let name = trash.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with('.'), "{name}");
        assert_eq!(trash.parent(), Some(store.jobs_dir().as_path()));
        assert_eq!(FileStore::trash_owner(name), Some(4242));
        for not_trash in [
            ".deleting-",
            ".deleting-x",
            ".metadata.json.tmp",
            "job-1-2-3",
        ] {
            assert_eq!(FileStore::trash_owner(not_trash), None, "{not_trash}");
        }
    }

    #[test]
    fn a_finished_job_is_removed_whole_and_leaves_no_trash() {
        let t = TempRoot::new("remove");
        let store = &t.0;
        let job = id("done");
        let mut sink = store.create_job(&job).unwrap();
        sink.append(Stream::Stdout, &Chunk::new(&[b'x'; 10_000], 1))
            .unwrap();
        drop(sink);
        fs::create_dir_all(store.job_dir(&job).join("own/deeper")).unwrap();
        let usage = store.job_usage(&job).unwrap();
        assert!(usage.size >= 10_000, "{usage:?}");
        assert_eq!(store.remove_job(&job, usage.dir).unwrap(), Removed::Deleted);
        assert!(!store.job_dir(&job).exists());
        assert_eq!(fs::read_dir(store.jobs_dir()).unwrap().count(), 0);
        assert_eq!(
            store.remove_job(&job, usage.dir).unwrap(),
            Removed::Untouched,
            "already gone"
        );
    }

    #[test]
    fn a_live_or_replaced_job_is_put_back_untouched() {
        let t = TempRoot::new("putback");
        let store = &t.0;
        let live = id("live");
        let sink = store.create_job(&live).unwrap();
        let usage = store.job_usage(&live).unwrap();
        // Not even moved aside: its readers never see it vanish.
        let watched = std::thread::scope(|s| {
            let dir = store.job_dir(&live);
            let seen = s.spawn(move || (0..2000).all(|_| dir.is_dir()));
            let removed = store.remove_job(&live, usage.dir).unwrap();
            (removed, seen.join().unwrap())
        });
        assert_eq!(watched, (Removed::WriterAlive, true));
        assert!(store.job_dir(&live).is_dir());
        assert!(store.writer_alive(&live), "the lock is still on it");
        drop(sink);

        let reused = id("reused");
        drop(store.create_job(&reused).unwrap());
        let judged = store.job_usage(&reused).unwrap();
        fs::remove_dir_all(store.job_dir(&reused)).unwrap();
        drop(store.create_job(&reused).unwrap());
        assert_eq!(
            store.remove_job(&reused, judged.dir).unwrap(),
            Removed::Untouched
        );
        assert!(store.job_dir(&reused).is_dir());
        assert_eq!(
            fs::read_dir(store.jobs_dir()).unwrap().count(),
            2,
            "no trash left"
        );
    }

    #[test]
    fn job_usage_refuses_symlinks_and_files() {
        let t = TempRoot::new("usage");
        let store = &t.0;
        fs::create_dir_all(store.jobs_dir()).unwrap();
        std::os::unix::fs::symlink("/", store.jobs_dir().join("link")).unwrap();
        fs::write(store.jobs_dir().join("file"), b"x").unwrap();
        let err = store.job_usage(&id("link")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let err = store.job_usage(&id("file")).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = store.job_usage(&id("none")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn only_trash_of_a_dead_collector_is_a_leftover() {
        let t = TempRoot::new("leftover");
        let store = &t.0;
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let stale = store.trash_path(&id("old"), dead_pid, 0);
        fs::create_dir_all(stale.join("sub")).unwrap();
        let busy = store.trash_path(&id("busy"), std::process::id(), 0);
        fs::create_dir_all(&busy).unwrap();
        let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();

        let found = store.leftover(&name(&stale)).unwrap().unwrap();
        assert_eq!(found.path(), stale);
        assert_eq!(store.leftover(&name(&busy)).unwrap(), None);
        assert_eq!(store.leftover(".metadata.json.tmp").unwrap(), None);
        assert!(store.clear_leftover(&found).unwrap());
        assert!(!stale.exists());
        assert!(!store.clear_leftover(&found).unwrap());
        assert!(busy.exists());
    }
}
