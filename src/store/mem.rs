//! An in-memory [`LogStore`]: jobs, their output, line tables and metadata kept
//! in the process, with the same reading semantics as the file store. It is the
//! second implementation of the storage seam (issue 9): the unit tests of the
//! readers and the server run against both stores, and an embedder can use it
//! to test code that reads jobs without touching the disk. It is not for the
//! command line: nothing outlives the process, every byte of every job stays
//! in memory until the job is removed (no bound: jobs are expected to be
//! small), and a job's [`JobSink::dir`] is not a real directory.

use super::{
    ChangeWatcher, Changes, Chunk, CreateError, DirIdentity, JobId, JobSink, JobUsage, Leftover,
    LogStore, Progress, RawLog, Removed, ScanEntry, Stream,
};
use crate::metadata::{Metadata, StreamStats};
use crate::output::lines::LineSplitter;
use crate::reader::{LineSource, LogLine, Start};
use crate::timefmt;
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where a [`MemStore`] job claims to live. No such directory exists: the path
/// only gives [`JobSink::dir`] (handed to a child as `DATABUILD_JOB_LOG_DIR`)
/// and messages something recognisable.
const PSEUDO_ROOT: &str = "/nonexistent/memstore";

/// Bytes drained from a watcher's wake-up pipe per read: the bytes carry no
/// information (the changes are kept in the store), so any size empties it in
/// a few reads.
const WAKE_DRAIN: usize = 256;

/// An in-memory store of jobs (see the module doc). Clones share the same jobs,
/// so a test can keep one clone to write through and hand another to a reader
/// or a server.
///
/// ```
/// use logwrap::reader::Start;
/// use logwrap::store::{Chunk, JobId, LogStore, MemStore, Stream};
///
/// let store = MemStore::new();
/// let id = JobId::parse("demo").unwrap();
/// let mut sink = store.create_job(&id)?;
/// sink.append(Stream::Stdout, &Chunk::new(b"one\ntwo\nthree\n", 1))?;
/// let mut lines = store.open_lines(&id, Stream::Stdout, Start::Tail(2), 1024)?;
/// let first = lines.next_line(false)?.expect("two lines to read");
/// assert_eq!((first.number, first.data.as_slice()), (2, &b"two\n"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct MemStore {
    shared: Arc<Mutex<State>>,
}

/// Everything a [`MemStore`] holds. Lock order: this state first, then a job;
/// a job's lock is never held while taking this one.
#[derive(Default)]
struct State {
    /// Each job behind its own lock, shared with its sink and its readers: a
    /// reader of a removed job keeps reading what it had, like a reader of an
    /// unlinked file.
    jobs: HashMap<JobId, Arc<Mutex<Job>>>,
    /// Bumped on every creation and removal ([`LogStore::list_version`]).
    list_version: u64,
    /// The live watchers, by key.
    watchers: HashMap<u64, Slot>,
    next_watcher: u64,
}

/// A watcher's side in the shared state: what it watches, what changed since
/// it last took changes, and the write end of its wake-up pipe.
struct Slot {
    jobs: HashSet<JobId>,
    list: bool,
    /// Changed jobs, and whether more than output changed.
    pending_jobs: BTreeMap<JobId, bool>,
    pending_list: bool,
    wake: OwnedFd,
}

impl Slot {
    /// Makes the watcher's descriptor readable. A full pipe already is, so
    /// `EAGAIN` is fine; the change itself is in `pending_*`.
    fn poke(&self) {
        let _ = nix::unistd::write(&self.wake, &[1]);
    }
}

/// One job.
struct Job {
    streams: [MemStream; 2],
    /// The metadata as last written; `None` until the wrapper writes it.
    meta: Option<Metadata>,
    /// True while the job's [`JobSink`] exists (the file store's lock).
    alive: bool,
    /// True once the job was removed from the store.
    removed: bool,
    created_ms: i64,
    /// Arrival sequence of the next chunk, shared by both streams.
    seq: u64,
}

/// One stream of a job: its bytes and where each line ends.
#[derive(Default)]
struct MemStream {
    bytes: Vec<u8>,
    /// One entry per complete line, in order: line N is `ends[N - 1]`.
    ends: Vec<LineEnd>,
    splitter: LineSplitter,
    /// Read time and sequence of the last chunk, which an unfinished final
    /// line takes (as the file store's last record gives it).
    last: (u64, u64),
}

/// Where a complete line ends and when it was completed.
#[derive(Debug, Clone, Copy)]
struct LineEnd {
    /// Offset just past the line's newline.
    end: u64,
    ts_us: u64,
    seq: u64,
}

impl MemStream {
    fn append(&mut self, data: &[u8], ts_us: u64, seq: u64) {
        let base = self.splitter.offset();
        for piece in self.splitter.split(data) {
            if piece.complete {
                debug_assert_eq!(piece.line, self.ends.len() as u64 + 1);
                self.ends.push(LineEnd {
                    end: base + piece.range.end as u64,
                    ts_us,
                    seq,
                });
            }
        }
        self.bytes.extend_from_slice(data);
        self.last = (ts_us, seq);
    }

    /// Where line `n` (from 1) starts; for the line after the last complete
    /// one, where the unfinished line starts (or the end).
    fn line_start(&self, n: u64) -> u64 {
        match n {
            0 | 1 => 0,
            _ => self.ends[(n - 2) as usize].end,
        }
    }

    /// Lines, counting an unfinished final one.
    fn total_lines(&self) -> u64 {
        self.splitter.lines()
    }
}

fn not_found(id: &JobId) -> anyhow::Error {
    anyhow::Error::new(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no job run {id} in memory"),
    ))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still usable:
    // the panic itself is what gets reported.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The pseudo directory of job `id` (see [`PSEUDO_ROOT`]).
    fn dir(id: &JobId) -> PathBuf {
        Path::new(PSEUDO_ROOT).join(id.as_str())
    }

    fn job(&self, id: &JobId) -> Result<Arc<Mutex<Job>>> {
        lock(&self.shared)
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Removes job `id` (finished or not); false if there was none. Readers
    /// already open keep what they read and see [`RawLog::removed`].
    pub fn remove(&self, id: &JobId) -> bool {
        self.remove_if(id, None)
    }

    /// Removes job `id`, only if it is `this` one when given (a sink discarding
    /// its job must not remove a newer job of the same id).
    fn remove_if(&self, id: &JobId, this: Option<&Arc<Mutex<Job>>>) -> bool {
        let mut state = lock(&self.shared);
        match (state.jobs.get(id), this) {
            (None, _) => return false,
            (Some(job), Some(this)) if !Arc::ptr_eq(job, this) => return false,
            _ => {}
        }
        let Some(job) = state.jobs.remove(id) else {
            return false;
        };
        state.list_version += 1;
        lock(&job).removed = true;
        notify(&mut state, id, true, true);
        for slot in state.watchers.values_mut() {
            // Gone with the job, as a file watch goes with its directory.
            slot.jobs.remove(id);
        }
        true
    }
}

/// Records a change for every watcher that cares and wakes them: to job `id`
/// (`status`: more than output), and to the list of jobs when `list`.
fn notify(state: &mut State, id: &JobId, status: bool, list: bool) {
    for slot in state.watchers.values_mut() {
        let mut woke = false;
        if slot.jobs.contains(id) {
            *slot.pending_jobs.entry(id.clone()).or_default() |= status;
            woke = true;
        }
        if list && slot.list {
            slot.pending_list = true;
            woke = true;
        }
        if woke {
            slot.poke();
        }
    }
}

impl LogStore for MemStore {
    fn create_job(&self, id: &JobId) -> std::result::Result<Box<dyn JobSink>, CreateError> {
        let mut state = lock(&self.shared);
        if state.jobs.contains_key(id) {
            return Err(CreateError::IdInUse(MemStore::dir(id)));
        }
        let job = Arc::new(Mutex::new(Job {
            streams: Default::default(),
            meta: None,
            alive: true,
            removed: false,
            created_ms: timefmt::unix_ms(std::time::SystemTime::now()),
            seq: 0,
        }));
        state.jobs.insert(id.clone(), Arc::clone(&job));
        state.list_version += 1;
        notify(&mut state, id, true, true);
        Ok(Box::new(MemSink {
            store: self.clone(),
            id: id.clone(),
            dir: MemStore::dir(id),
            job,
        }))
    }

    fn metadata(&self, id: &JobId) -> Result<Metadata> {
        let job = self.job(id)?;
        let meta = lock(&job).meta.clone();
        // A job being created has no metadata yet, like a directory without
        // metadata.json: not found, so listings show it as being created.
        meta.ok_or_else(|| not_found(id).context(format!("job run {id} has no metadata yet")))
    }

    fn writer_alive(&self, id: &JobId) -> bool {
        self.job(id).is_ok_and(|j| lock(&j).alive)
    }

    fn job_exists(&self, id: &JobId) -> bool {
        lock(&self.shared).jobs.contains_key(id)
    }

    fn job_ids(&self) -> Result<Vec<JobId>> {
        let mut ids: Vec<JobId> = lock(&self.shared).jobs.keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    fn created_ms(&self, id: &JobId) -> Option<i64> {
        self.job(id).ok().map(|j| lock(&j).created_ms)
    }

    fn list_version(&self) -> Option<u64> {
        Some(lock(&self.shared).list_version)
    }

    fn open_lines(
        &self,
        id: &JobId,
        stream: Stream,
        start: Start,
        max_keep: usize,
    ) -> Result<Box<dyn LineSource>> {
        let job = self
            .job(id)
            .with_context(|| format!("opening {}", stream.name()))?;
        let (next, pos) = {
            let j = lock(&job);
            let s = &j.streams[stream.index()];
            let total = s.total_lines();
            let want = match start {
                Start::Line(n) => n.max(1),
                Start::Tail(n) => (total + 1).saturating_sub(n).max(1),
            };
            // Past the end: wait at the last, unfinished line, so numbers stay
            // right as the stream grows (as the file store's reader does).
            let next = want.min(s.ends.len() as u64 + 1);
            (next, s.line_start(next))
        };
        Ok(Box::new(MemLines {
            job,
            stream,
            next,
            pos,
            max_keep,
        }))
    }

    fn open_raw(&self, id: &JobId, stream: Stream) -> Result<Box<dyn RawLog>> {
        let job = self
            .job(id)
            .with_context(|| format!("opening {} of job {id}", stream.name()))?;
        Ok(Box::new(MemRaw { job, stream }))
    }

    /// Bytes of stdout and stderr, then their complete lines (where the file
    /// store gives its index sizes): any append changes it.
    fn progress(&self, id: &JobId) -> Progress {
        let Ok(job) = self.job(id) else {
            return [0; 4];
        };
        let j = lock(&job);
        let [out, err] = &j.streams;
        [
            out.bytes.len() as u64,
            err.bytes.len() as u64,
            out.ends.len() as u64,
            err.ends.len() as u64,
        ]
    }

    fn live_stats(&self, id: &JobId, stream: Stream) -> Option<StreamStats> {
        let job = self.job(id).ok()?;
        let j = lock(&job);
        let s = &j.streams[stream.index()];
        let unfinished = s.bytes.last().is_some_and(|&b| b != b'\n');
        Some(StreamStats {
            bytes: s.bytes.len() as u64,
            lines: s.ends.len() as u64 + u64::from(unfinished),
        })
    }

    fn watcher(&self) -> Result<Box<dyn ChangeWatcher>> {
        let (read, wake) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .context("cannot make a pipe to wake a watcher of the memory store")?;
        let mut state = lock(&self.shared);
        let key = state.next_watcher;
        state.next_watcher += 1;
        state.watchers.insert(
            key,
            Slot {
                jobs: HashSet::new(),
                list: false,
                pending_jobs: BTreeMap::new(),
                pending_list: false,
                wake,
            },
        );
        Ok(Box::new(MemWatcher {
            store: self.clone(),
            key,
            read,
        }))
    }

    fn location(&self) -> String {
        "memory".to_string()
    }

    fn scan(&self, f: &mut dyn FnMut(ScanEntry)) -> Result<()> {
        for id in self.job_ids()? {
            f(ScanEntry::Job(id));
        }
        Ok(())
    }

    /// The bytes both streams hold; the identity is the job's own allocation
    /// (a job created again under the same id is another one).
    fn job_usage(&self, id: &JobId) -> io::Result<JobUsage> {
        let job = self
            .job(id)
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("{e:#}")))?;
        let j = lock(&job);
        Ok(JobUsage {
            size: j.streams.iter().map(|s| s.bytes.len() as u64).sum(),
            dir: DirIdentity {
                ino: Arc::as_ptr(&job) as usize as u64,
                mtime_ns: j.created_ms.saturating_mul(1_000_000),
            },
            mtime_ms: j.created_ms,
            deep: false,
        })
    }

    fn remove_job(&self, id: &JobId, expected: DirIdentity) -> Result<Removed> {
        let Ok(job) = self.job(id) else {
            return Ok(Removed::Untouched);
        };
        let same = self.job_usage(id).is_ok_and(|u| u.dir == expected);
        if !same || lock(&job).alive {
            return Ok(Removed::Untouched);
        }
        Ok(if self.remove_if(id, Some(&job)) {
            Removed::Deleted
        } else {
            Removed::Untouched
        })
    }

    /// Nothing is ever left over here: removal is one step.
    fn clear_leftover(&self, _leftover: &Leftover) -> io::Result<bool> {
        Ok(false)
    }
}

/// The writer of one [`MemStore`] job; the job's writer is alive until it is
/// dropped.
struct MemSink {
    store: MemStore,
    id: JobId,
    dir: PathBuf,
    job: Arc<Mutex<Job>>,
}

impl MemSink {
    fn changed(&self, status: bool) {
        notify(&mut lock(&self.store.shared), &self.id, status, false);
    }
}

impl JobSink for MemSink {
    /// A pseudo path: no such directory exists (see [`PSEUDO_ROOT`]).
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn append(&mut self, stream: Stream, chunk: &Chunk) -> io::Result<()> {
        if chunk.data().is_empty() {
            return Ok(());
        }
        {
            let mut j = lock(&self.job);
            let seq = j.seq;
            j.seq += 1;
            j.streams[stream.index()].append(chunk.data(), chunk.ts_us(), seq);
        }
        self.changed(false);
        Ok(())
    }

    fn write_metadata(&mut self, meta: &Metadata, _last: bool) -> Result<()> {
        lock(&self.job).meta = Some(meta.clone());
        self.changed(true);
        Ok(())
    }

    fn discard(self: Box<Self>) {
        self.store.remove_if(&self.id, Some(&self.job));
    }
}

impl Drop for MemSink {
    fn drop(&mut self) {
        lock(&self.job).alive = false;
        self.changed(true);
    }
}

/// A [`LineSource`] over one stream of a [`MemStore`] job: the line table
/// gives each line's bounds, time and sequence directly.
struct MemLines {
    job: Arc<Mutex<Job>>,
    stream: Stream,
    /// Number and offset of the next line.
    next: u64,
    pos: u64,
    max_keep: usize,
}

impl LineSource for MemLines {
    fn stream(&self) -> Stream {
        self.stream
    }

    fn next_line(&mut self, writer_done: bool) -> Result<Option<LogLine>> {
        let j = lock(&self.job);
        let s = &j.streams[self.stream.index()];
        let (end, ts_us, seq, complete) = match s.ends.get((self.next - 1) as usize) {
            Some(e) => (e.end, e.ts_us, e.seq, true),
            // An unfinished final line only once the writer is done: until
            // then it may still grow.
            None if writer_done && (s.bytes.len() as u64) > self.pos => {
                (s.bytes.len() as u64, s.last.0, s.last.1, false)
            }
            None => return Ok(None),
        };
        let len = end - self.pos;
        let keep = len.min(self.max_keep as u64) as usize;
        let from = self.pos as usize;
        let line = LogLine {
            stream: self.stream,
            number: self.next,
            offset: self.pos,
            len,
            ts_us,
            seq,
            data: s.bytes[from..from + keep].to_vec(),
            complete,
            omitted_before: None,
            lost_before: None,
            restarted: false,
        };
        self.next += 1;
        self.pos = end;
        Ok(Some(line))
    }

    fn next_number(&self) -> u64 {
        self.next
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn total_lines(&mut self) -> Result<u64> {
        Ok(lock(&self.job).streams[self.stream.index()].total_lines())
    }
}

/// The raw bytes of one stream of a [`MemStore`] job.
struct MemRaw {
    job: Arc<Mutex<Job>>,
    stream: Stream,
}

impl RawLog for MemRaw {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.job).streams[self.stream.index()].bytes.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let j = lock(&self.job);
        let bytes = &j.streams[self.stream.index()].bytes;
        let Some(rest) = usize::try_from(offset).ok().and_then(|o| bytes.get(o..)) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    fn removed(&self) -> io::Result<bool> {
        Ok(lock(&self.job).removed)
    }
}

/// A [`ChangeWatcher`] of a [`MemStore`]: changes are recorded in its slot of
/// the shared state, and a byte in its pipe makes [`ChangeWatcher::fd`]
/// readable, so it can be waited on or registered in a poller like inotify.
struct MemWatcher {
    store: MemStore,
    key: u64,
    read: OwnedFd,
}

impl MemWatcher {
    fn with_slot<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        lock(&self.store.shared).watchers.get_mut(&self.key).map(f)
    }
}

impl ChangeWatcher for MemWatcher {
    fn watch_job(&mut self, id: &JobId) -> Result<()> {
        if !self.store.job_exists(id) {
            return Err(not_found(id)).context(format!("cannot watch job {id} for new output"));
        }
        self.with_slot(|s| s.jobs.insert(id.clone()));
        Ok(())
    }

    fn unwatch_job(&mut self, id: &JobId) {
        self.with_slot(|s| {
            s.jobs.remove(id);
            s.pending_jobs.remove(id);
        });
    }

    fn watch_list(&mut self) -> Result<()> {
        self.with_slot(|s| s.list = true);
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    fn take_changes(&mut self) -> Result<Changes> {
        let mut buf = [0u8; WAKE_DRAIN];
        loop {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("reading a memory store watcher's pipe"),
            }
        }
        let changes = self.with_slot(|s| Changes {
            jobs: std::mem::take(&mut s.pending_jobs).into_iter().collect(),
            list: std::mem::take(&mut s.pending_list),
            overflow: false,
        });
        Ok(changes.unwrap_or_default())
    }
}

impl Drop for MemWatcher {
    fn drop(&mut self) {
        lock(&self.store.shared).watchers.remove(&self.key);
    }
}

/// The same job written through each store, for tests that must pass against
/// both (issue 9: the readers and the server see only the trait).
#[cfg(test)]
pub(crate) mod both {
    use super::*;
    use crate::store::FileStore;

    /// A job `j` written through one store, with `writes` appended in order, the
    /// n-th read at 100+n µs. The sink is kept so the job stays live; a file
    /// store's root is removed on drop, also when the test fails.
    pub struct TestJob {
        /// `"file"` or `"memory"`, for assertion messages.
        pub name: &'static str,
        pub store: Arc<dyn LogStore>,
        pub id: JobId,
        pub sink: Option<Box<dyn JobSink>>,
        root: Option<PathBuf>,
    }

    impl TestJob {
        /// The job's sink, to append more.
        pub fn sink(&mut self) -> &mut dyn JobSink {
            self.sink.as_deref_mut().expect("the sink is still held")
        }

        /// Empties the log of `stream` as a job may (`: > stdout.log`), in
        /// a file store; false in a memory store, whose logs only grow.
        pub fn empty_log(&self, stream: Stream) -> bool {
            let Some(root) = &self.root else {
                return false;
            };
            let path = FileStore::new(root).log_path(&self.id, stream);
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(0))
                .expect("the log can be emptied");
            true
        }
    }

    impl Drop for TestJob {
        fn drop(&mut self) {
            self.sink = None;
            if let Some(root) = &self.root {
                let _ = std::fs::remove_dir_all(root);
            }
        }
    }

    /// The job of `writes` in a file store (a fresh root named after `tag`) and
    /// in a memory store.
    pub fn jobs(tag: &str, writes: &[(Stream, &[u8])]) -> Vec<TestJob> {
        let (file, id, sink) = crate::store::testing::job(&format!("both-{tag}"), writes);
        let file = file.keep();
        let root = file.root().to_path_buf();
        let file = TestJob {
            name: "file",
            store: Arc::new(file) as Arc<dyn LogStore>,
            id,
            sink: Some(sink),
            root: Some(root),
        };
        let mem = MemStore::new();
        let id = JobId::parse("j").expect("a valid id");
        let mut sink = mem.create_job(&id).expect("a new id");
        for (i, (s, c)) in writes.iter().enumerate() {
            sink.append(*s, &Chunk::new(c, 100 + i as u64))
                .expect("memory appends cannot fail");
        }
        let mem = TestJob {
            name: "memory",
            store: Arc::new(mem),
            id,
            sink: Some(sink),
            root: None,
        };
        vec![file, mem]
    }

    /// A metadata document for job `id` started at `started_at` (RFC 3339).
    pub fn metadata(id: &str, status: crate::metadata::Status, started_at: &str) -> Metadata {
        let finished = status.is_finished() && status != crate::metadata::Status::Abandoned;
        serde_json::from_value(serde_json::json!({
            "job_run_id": id, "command": ["true"], "cwd": "/", "hostname": "h",
            "pid": 1, "child_pid": null, "pty": false,
            "started_at": started_at,
            "ended_at": if finished { Some(started_at) } else { None },
            "duration_ms": if finished { Some(7) } else { None },
            "status": status.as_str(),
            "exit_code": if finished { Some(0) } else { None },
            "signal": null, "stdout": {"bytes": 0, "lines": 0},
            "stderr": {"bytes": 0, "lines": 0}, "missing_deps": [],
            "marker_errors": [], "building_partitions": [], "log_errors": [],
            "tail_url": null, "logwrap_version": "0"
        }))
        .expect("a valid metadata document")
    }

    /// An empty root in a file store and an empty memory store, for tests
    /// that create their own jobs.
    pub fn stores(tag: &str) -> Vec<(&'static str, Arc<dyn LogStore>, TempRoot)> {
        let root = std::env::temp_dir().join(format!("logwrap-both-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let file = FileStore::new(&root);
        file.ensure_writable().expect("a writable temp dir");
        vec![
            ("file", Arc::new(file), TempRoot(Some(root))),
            ("memory", Arc::new(MemStore::new()), TempRoot(None)),
        ]
    }

    /// A test root removed on drop.
    pub struct TempRoot(Option<PathBuf>);

    impl Drop for TempRoot {
        fn drop(&mut self) {
            if let Some(root) = &self.0 {
                let _ = std::fs::remove_dir_all(root);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Status;
    use std::time::Duration;

    fn id(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    fn meta(id: &str, status: Status) -> Metadata {
        super::both::metadata(id, status, "2026-01-01T00:00:00.000Z")
    }

    /// True when the watcher's descriptor is readable now.
    fn readable(w: &dyn ChangeWatcher) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(w.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn a_watcher_wakes_on_output_and_on_status_changes() {
        let store = MemStore::new();
        let j = id("w");
        let mut sink = store.create_job(&j).unwrap();
        let mut w = store.watcher().unwrap();
        w.watch_job(&j).unwrap();
        assert!(!readable(w.as_ref()));
        sink.append(Stream::Stdout, &Chunk::new(b"hi\n", 1))
            .unwrap();
        assert!(readable(w.as_ref()), "an append wakes the watcher");
        let changes = w.wait(Duration::from_secs(5)).unwrap();
        assert_eq!(changes.jobs, vec![(j.clone(), false)]);
        assert!(!readable(w.as_ref()), "taking the changes drains the pipe");
        sink.write_metadata(&meta("w", Status::Running), false)
            .unwrap();
        assert_eq!(w.take_changes().unwrap().jobs, vec![(j.clone(), true)]);
        // Many changes before a look still make one readable descriptor and
        // one entry, never a blocked writer.
        for i in 0..100_000 {
            sink.append(Stream::Stderr, &Chunk::new(b"x", i)).unwrap();
        }
        assert_eq!(w.take_changes().unwrap().jobs, vec![(j.clone(), false)]);
        assert!(!readable(w.as_ref()));
        drop(sink);
        assert_eq!(w.take_changes().unwrap().jobs, vec![(j.clone(), true)]);
        w.unwatch_job(&j);
        assert!(store.remove(&j));
        assert!(w.take_changes().unwrap().is_empty());
    }

    #[test]
    fn watchers_of_every_store_report_new_jobs_output_and_status() {
        let wait = |w: &mut Box<dyn ChangeWatcher>| w.wait(Duration::from_secs(5)).unwrap();
        for (name, store, _root) in super::both::stores("mem-watch") {
            let j = id("w");
            let mut w = store.watcher().unwrap();
            assert!(w.watch_job(&j).is_err(), "{name}: no such job yet");
            w.watch_list().unwrap();
            let mut sink = store.create_job(&j).unwrap();
            assert!(wait(&mut w).list, "{name}");
            w.watch_job(&j).unwrap();
            sink.append(Stream::Stdout, &Chunk::new(b"x\n", 1)).unwrap();
            let c = wait(&mut w);
            assert_eq!(
                (c.jobs, c.list),
                (vec![(j.clone(), false)], false),
                "{name}"
            );
            sink.write_metadata(&meta("w", Status::Running), false)
                .unwrap();
            assert_eq!(wait(&mut w).jobs, vec![(j.clone(), true)], "{name}");
            drop(sink);
            assert_eq!(wait(&mut w).jobs, vec![(j.clone(), true)], "{name}");
            assert!(!readable(w.as_ref()), "{name}: all changes taken");
        }
    }

    #[test]
    fn watching_a_missing_job_fails_and_the_list_reports_creation_and_removal() {
        let store = MemStore::new();
        let mut w = store.watcher().unwrap();
        assert!(w.watch_job(&id("nope")).is_err());
        w.watch_list().unwrap();
        let v0 = store.list_version();
        let sink = store.create_job(&id("a")).unwrap();
        assert_ne!(store.list_version(), v0);
        assert!(w.wait(Duration::from_secs(5)).unwrap().list);
        drop(sink);
        assert!(!w.take_changes().unwrap().list, "no job came or went");
        assert!(store.remove(&id("a")));
        assert!(w.take_changes().unwrap().list);
        assert!(!store.remove(&id("a")), "already gone");
    }

    #[test]
    fn a_dropped_sink_leaves_a_running_job_abandoned() {
        let store = MemStore::new();
        let j = id("gone");
        let mut sink = store.create_job(&j).unwrap();
        sink.write_metadata(&meta("gone", Status::Running), false)
            .unwrap();
        assert!(store.writer_alive(&j));
        assert_eq!(store.live_metadata(&j).unwrap().status, Status::Running);
        drop(sink);
        assert!(!store.writer_alive(&j));
        assert_eq!(store.live_metadata(&j).unwrap().status, Status::Abandoned);
        // A finished job stays as written.
        let k = id("done");
        let mut sink = store.create_job(&k).unwrap();
        sink.write_metadata(&meta("done", Status::Succeeded), true)
            .unwrap();
        drop(sink);
        assert_eq!(store.live_metadata(&k).unwrap().status, Status::Succeeded);
    }

    #[test]
    fn removal_forgets_the_job_but_open_readers_keep_their_bytes() {
        let store = MemStore::new();
        let j = id("r");
        let mut sink = store.create_job(&j).unwrap();
        sink.append(Stream::Stdout, &Chunk::new(b"one\n", 1))
            .unwrap();
        let raw = store.open_raw(&j, Stream::Stdout).unwrap();
        let mut lines = store
            .open_lines(&j, Stream::Stdout, Start::Line(1), 99)
            .unwrap();
        assert!(!raw.removed().unwrap());
        assert!(store.remove(&j));
        assert!(raw.removed().unwrap());
        assert!(!store.job_exists(&j));
        assert!(store.job_ids().unwrap().is_empty());
        assert!(super::super::is_not_found(&store.metadata(&j).unwrap_err()));
        assert!(store.open_raw(&j, Stream::Stdout).is_err());
        assert_eq!(store.progress(&j), [0; 4]);
        let mut buf = [0u8; 8];
        assert_eq!(raw.read_at(&mut buf, 0).unwrap(), 4);
        assert_eq!(lines.next_line(true).unwrap().unwrap().data, b"one\n");
        // The id is free again.
        drop(sink);
        assert!(store.create_job(&j).is_ok());
    }

    #[test]
    fn ids_are_unique_and_a_discarded_job_frees_its_id() {
        let store = MemStore::new();
        let j = id("dup");
        let sink = store.create_job(&j).unwrap();
        assert_eq!(sink.dir(), Path::new("/nonexistent/memstore/dup"));
        assert!(matches!(store.create_job(&j), Err(CreateError::IdInUse(_))));
        sink.discard();
        assert!(!store.job_exists(&j));
        assert!(store.create_job(&j).is_ok());
        assert_eq!(store.location(), "memory");
    }

    #[test]
    fn a_job_without_metadata_is_listed_as_being_created() {
        let store = MemStore::new();
        let _a = store.create_job(&id("a")).unwrap();
        let mut b = store.create_job(&id("b")).unwrap();
        b.write_metadata(&meta("b", Status::Running), false)
            .unwrap();
        let jobs = store.list_jobs().unwrap();
        let a = jobs.iter().find(|l| l.id.as_str() == "a").unwrap();
        assert_eq!(
            a.meta.as_ref().unwrap_err(),
            &super::super::Unlisted::Creating
        );
        assert!(
            a.started_ms > 0,
            "a job being created is dated by its creation"
        );
        let b = jobs.iter().find(|l| l.id.as_str() == "b").unwrap();
        assert_eq!(b.meta.as_ref().unwrap().status, Status::Running);
        assert_eq!(store.job_ids().unwrap(), vec![id("a"), id("b")]);
    }

    #[test]
    fn clones_share_the_jobs_and_progress_follows_appends() {
        let store = MemStore::new();
        let other = store.clone();
        let j = id("p");
        let mut sink = store.create_job(&j).unwrap();
        assert_eq!(other.progress(&j), [0; 4]);
        sink.append(Stream::Stdout, &Chunk::new(b"a\nb", 1))
            .unwrap();
        sink.append(Stream::Stderr, &Chunk::new(b"e\n", 2)).unwrap();
        assert_eq!(other.progress(&j), [3, 2, 1, 1]);
        sink.append(Stream::Stdout, &Chunk::new(b"b", 3)).unwrap();
        assert_eq!(other.progress(&j), [4, 2, 1, 1]);
    }
}
