//! The Redis-backed [`LogStore`] (issue 10 point 4): every job shipped to one
//! Redis, from every machine, read through the same trait as the file store,
//! so `serve`, `logs`, `ls` and `show` work unchanged with `--source
//! redis://...`. Read-only: jobs are created by wrappers with `--ship`, and
//! removed by Redis's own expiry, never by `gc`.

use super::{alive_key, meta_key, stream_key, JOBS_KEY};
use crate::metadata::{Metadata, Omitted, Status, MAX_METADATA_BYTES};
use crate::reader::{LineSource, LogLine, Start};
use crate::store::{
    ChangeWatcher, Changes, CreateError, DirIdentity, JobId, JobListing, JobSink, JobUsage,
    Leftover, LogStore, OmitCause, OmittedRange, Progress, RawLog, Removed, ScanEntry, Stream,
    Unlisted,
};
use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::OFlag;
use redis::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A command taking longer than this counts as a lost connection (it is
/// dropped and made again on the next call).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries fetched per `XRANGE` while reading lines: at most 64 KiB each
/// (1 MiB for pieces of a long line), so a few MiB per call at most.
const FETCH: usize = 8;
/// How long the watcher's `XREAD` blocks: changes to the set of watched jobs
/// are taken up at least this often; the socket timeout is longer.
const BLOCK: Duration = Duration::from_millis(250);
/// A watcher whose Redis is down, or refused its read, tries again this
/// often: never a hot loop of reconnects.
const RECONNECT: Duration = Duration::from_secs(1);
/// How long a watched key that is not a stream (a key of the fleet's Redis
/// replaced by a string, forged or damaged) is left out of the watcher's one
/// `XREAD` before it is tried again: long enough that a bad key costs one
/// failed read and one `TYPE` each per key every few seconds, short enough
/// that a key set right again is followed again soon.
const SHUN: Duration = Duration::from_secs(5);
/// Jobs listed at most: the list is built in memory.
const MAX_JOBS: usize = 100_000;
/// Jobs asked about per pipelined round trip when listing.
const LIST_BATCH: usize = 500;
/// Most bytes of metadata documents fetched per round trip when listing: a
/// batch of large ones (up to `MAX_METADATA_BYTES` each) is fetched in
/// several, so listing holds at most about this much of them at once.
const LIST_BYTES: u64 = 32 << 20;
/// Most keys the `SCAN` for jobs asks for per call.
const SCAN_COUNT: usize = 1000;

/// Jobs shipped to one Redis (see the module docs).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    url: String,
    conn: Mutex<Option<redis::Connection>>,
    /// The last listing held more than `MAX_JOBS` jobs.
    cut: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn connect(client: &redis::Client, url: &str, read_timeout: Duration) -> Result<redis::Connection> {
    let conn = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {url}"))?;
    conn.set_read_timeout(Some(read_timeout))
        .and_then(|()| conn.set_write_timeout(Some(IO_TIMEOUT)))
        .with_context(|| format!("setting timeouts on {url}"))?;
    Ok(conn)
}

impl Inner {
    /// Runs `f` on the shared connection, connecting first if needed; a failed
    /// command drops the connection so the next call makes a new one. A
    /// command whose connection broke under it is tried once more on a new
    /// one: every command here only reads, and a connection breaks for
    /// reasons of its own (a reader stopped and continued, as by Ctrl-Z and
    /// `fg`, gets EINTR from a read with a timeout; a Redis restarted).
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut guard = lock(&self.conn);
        let mut tries = 0;
        loop {
            tries += 1;
            if guard.is_none() {
                *guard = Some(connect(&self.client, &self.url, IO_TIMEOUT).map_err(|e| {
                    // Down, restarting or paused: a wrong password or a
                    // refused user is an answer, and stays one.
                    let cause = e
                        .chain()
                        .find_map(|c| c.downcast_ref::<redis::RedisError>());
                    match cause {
                        Some(r)
                            if r.kind() != redis::ErrorKind::AuthenticationFailed
                                && r.code().is_none_or(busy_code) =>
                        {
                            unavailable(&format!("connecting to {}", self.url), r)
                        }
                        _ => e,
                    }
                })?);
            }
            let conn = guard.as_mut().expect("connected above");
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let broken = e.is_io_error() || e.is_connection_dropped();
                    let busy = e.code().is_some_and(busy_code);
                    if broken || busy || e.is_timeout() {
                        *guard = None;
                    }
                    // Once, and only for a broken connection, not a slow one.
                    let retry = broken && !e.is_timeout() && tries == 1;
                    if !retry {
                        let what = format!("reading from {}", self.url);
                        if broken || busy || e.is_timeout() {
                            return Err(unavailable(&what, &e));
                        }
                        return Err(anyhow::Error::new(e).context(what));
                    }
                }
            }
        }
    }
}

/// Error codes with which a Redis says it cannot answer for now, not that
/// the request is wrong: still loading its data after a restart, busy with a
/// script, a cluster or replica not ready.
fn busy_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN"
    )
}

/// [`Unavailable`](crate::store::Unavailable): `what` failed for a reason of
/// the connection, said once (the redis error's text already holds its
/// cause, which `{:#}` would repeat).
fn unavailable(what: &str, e: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(crate::store::Unavailable(format!("{what}: {e}")))
}

/// `e` for a [`RawLog`] method, which answers in `io::Error`s: its text,
/// and an [`Unavailable`](crate::store::Unavailable) still one inside.
fn to_io(e: anyhow::Error) -> io::Error {
    let text = format!("{e:#}");
    if crate::store::is_unavailable(&e) {
        return io::Error::other(crate::store::Unavailable(text));
    }
    io::Error::other(text)
}

fn not_found(id: &JobId) -> anyhow::Error {
    anyhow::Error::new(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no job run {id} in Redis"),
    ))
}

fn read_only() -> anyhow::Error {
    anyhow!("a Redis source is read-only: jobs get there with --ship and leave by expiry")
}

impl RedisStore {
    /// Whether job `id` has its keys in Redis; an error if Redis cannot say.
    fn exists(&self, id: &JobId) -> Result<bool> {
        let n: i64 = self
            .inner
            .with(|c| redis::cmd("EXISTS").arg(meta_key(id)).query(c))?;
        Ok(n == 1)
    }

    /// The jobs shipped to the Redis at `url` (checked, not yet connected).
    pub fn new(url: &str) -> Result<RedisStore> {
        Self::with_ca(url, None)
    }

    /// As [`RedisStore::new`], checking a `rediss://` server against the
    /// certificates of `ca` instead of the system's.
    pub fn with_ca(url: &str, ca: Option<&super::CaFile>) -> Result<RedisStore> {
        let client = super::redis_client(url, ca)?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                url: super::public_url(url),
                conn: Mutex::new(None),
                cut: Default::default(),
            }),
        })
    }

    /// The shipped marks of job `id`: `[stdout, stderr]` (offset, next line).
    fn marks(&self, id: &JobId) -> Result<[(u64, u64); 2]> {
        let v: Vec<Option<String>> = self.inner.with(|c| {
            redis::cmd("HMGET")
                .arg(meta_key(id))
                .arg("stdout_end")
                .arg("stderr_end")
                .query(c)
        })?;
        // Absent: nothing shipped yet. Present but not two numbers: forged or
        // damaged, which must not read as an empty log (`logs` would print
        // nothing and succeed).
        let parse = |s: Option<&String>, field: &str| match s {
            None => Ok((0, 1)),
            Some(m) => m
                .split_once(' ')
                .and_then(|(o, l)| Some((o.parse().ok()?, l.parse().ok()?)))
                .ok_or_else(|| {
                    anyhow!(
                        "job {id} in Redis is damaged: its {field} is {m:?}, not \"OFFSET LINE\""
                    )
                }),
        };
        Ok([
            parse(v.first().and_then(Option::as_ref), "stdout_end")?,
            parse(v.get(1).and_then(Option::as_ref), "stderr_end")?,
        ])
    }
}

/// An entry of a job's log stream, parsed.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    line: u64,
    offset: u64,
    ts_us: u64,
    data: Vec<u8>,
    /// The end entry (no data).
    end: bool,
    /// It continues a line begun in an earlier entry (a piece of a long line).
    cont: bool,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Parses an `XRANGE` reply (or one stream of an `XREAD` reply).
fn entries(v: Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut pair) = item else {
                return None;
            };
            let fields = pair.pop()?;
            let id = text(&pair.pop()?)?;
            let Value::Array(kv) = fields else {
                return None;
            };
            let mut e = Entry {
                id,
                line: 0,
                offset: 0,
                ts_us: 0,
                data: Vec::new(),
                end: false,
                cont: false,
            };
            let mut it = kv.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let num = || text(&v).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                match text(&k).as_deref() {
                    Some("line") => e.line = num(),
                    Some("offset") => e.offset = num(),
                    Some("ts") => e.ts_us = num(),
                    Some("end") => e.end = true,
                    Some("cont") => e.cont = true,
                    Some("data") => {
                        if let Value::BulkString(b) = v {
                            e.data = b;
                        }
                    }
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// Refuses a metadata document of `len` bytes over the cap local metadata
/// has: one machine of the fleet must not make every `ls` download and hold
/// gigabytes.
fn check_meta_len(len: u64) -> std::result::Result<(), String> {
    if len > MAX_METADATA_BYTES {
        return Err(format!(
            "its metadata in Redis is {len} bytes, over the {MAX_METADATA_BYTES} a job's may take"
        ));
    }
    Ok(())
}

/// Parses the metadata document of job `id`, refusing one that names another
/// job: any machine of the fleet can write any key, and a job listed or shown
/// under a name not its own would pass one job off as another.
fn parse_meta(id: &JobId, json: &[u8]) -> std::result::Result<Metadata, String> {
    check_meta_len(json.len() as u64)?;
    let m: Metadata =
        serde_json::from_slice(json).map_err(|e| format!("metadata in Redis: {e}"))?;
    if m.job_run_id != id.as_str() {
        return Err(format!(
            "its metadata in Redis is that of job {:?}",
            m.job_run_id
        ));
    }
    Ok(m)
}

/// `items` in groups in order, each of at most `budget` bytes by `size`
/// (one item alone may be larger).
fn byte_groups<T>(items: &[T], size: impl Fn(&T) -> u64, budget: u64) -> Vec<&[T]> {
    let mut groups = Vec::new();
    let (mut start, mut sum) = (0, 0u64);
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && sum.saturating_add(n) > budget {
            groups.push(&items[start..i]);
            (start, sum) = (i, 0);
        }
        sum = sum.saturating_add(n);
    }
    if start < items.len() {
        groups.push(&items[start..]);
    }
    groups
}

impl LogStore for RedisStore {
    fn create_job(&self, _id: &JobId) -> std::result::Result<Box<dyn JobSink>, CreateError> {
        Err(CreateError::Io(read_only()))
    }

    /// The document's size is asked first, so one over the cap is refused
    /// without being downloaded.
    fn metadata(&self, id: &JobId) -> Result<Metadata> {
        let damaged = |why: String| anyhow!("job {id} in Redis is damaged: {why}");
        let len: u64 = self
            .inner
            .with(|c| redis::cmd("HSTRLEN").arg(meta_key(id)).arg("json").query(c))?;
        check_meta_len(len).map_err(damaged)?;
        let json: Option<Vec<u8>> = self
            .inner
            .with(|c| redis::cmd("HGET").arg(meta_key(id)).arg("json").query(c))?;
        let json = json.ok_or_else(|| not_found(id))?;
        parse_meta(id, &json).map_err(damaged)
    }

    /// A Redis that cannot be asked is no news: the wrapper is taken as
    /// alive (a follower waits rather than declaring the job abandoned).
    fn writer_alive(&self, id: &JobId) -> bool {
        self.inner
            .with(|c| redis::cmd("EXISTS").arg(alive_key(id)).query::<i64>(c))
            .map_or(true, |n| n == 1)
    }

    /// A Redis that cannot be asked is no news either: the job is taken to
    /// exist, and the next read says what is wrong (rather than "deleted" or
    /// "no job").
    fn job_exists(&self, id: &JobId) -> bool {
        self.exists(id).unwrap_or(true)
    }

    /// At most `MAX_JOBS` ids, the greatest (generated ids grow with time:
    /// the newest jobs), found by scanning every key while holding no more
    /// than that many; more makes [`LogStore::list_cut`] say so.
    fn job_ids(&self) -> Result<Vec<JobId>> {
        let mut ids = std::collections::BTreeSet::new();
        let mut cut = false;
        let mut cursor = 0u64;
        loop {
            // Key names as bytes: one that is not UTF-8 (any machine of the
            // fleet can write one) is skipped below, not an error for the
            // whole list.
            let (next, keys): (u64, Vec<Vec<u8>>) = self.inner.with(|c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("logwrap:{*}:meta")
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(c)
            })?;
            for k in keys {
                let id = std::str::from_utf8(&k)
                    .ok()
                    .and_then(|k| k.strip_prefix("logwrap:{"))
                    .and_then(|r| r.strip_suffix("}:meta"))
                    .and_then(|s| JobId::parse(s).ok());
                if let Some(id) = id {
                    // SCAN may return a key twice: the set keeps it once.
                    ids.insert(id);
                    if ids.len() > MAX_JOBS {
                        ids.pop_first();
                        cut = true;
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.inner
            .cut
            .store(cut, std::sync::atomic::Ordering::Relaxed);
        Ok(ids.into_iter().collect())
    }

    fn list_cut(&self) -> Option<String> {
        self.inner
            .cut
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| {
                format!(
                    "{} holds more than {MAX_JOBS} jobs: only the {MAX_JOBS} with the greatest \
                     ids (the newest, for generated ids) are listed",
                    self.inner.url
                )
            })
    }

    /// A few pipelined round trips per `LIST_BATCH` jobs, not two per job:
    /// the documents' sizes and the wrappers' liveness, then the documents
    /// not over the cap, at most `LIST_BYTES` of them per round trip.
    fn list_jobs(&self) -> Result<Vec<JobListing>> {
        let ids = self.job_ids()?;
        let mut jobs = Vec::with_capacity(ids.len());
        for batch in ids.chunks(LIST_BATCH) {
            let mut p = redis::pipe();
            // A reply that is an error (a meta key that is not a hash) is that
            // job's alone: the others of the batch are still listed.
            p.ignore_errors();
            for id in batch {
                p.cmd("HSTRLEN").arg(meta_key(id)).arg("json");
                p.cmd("EXISTS").arg(alive_key(id));
            }
            let replies: Vec<Value> = self.inner.with(|c| p.query(c))?;
            // Per job, what stands for its document if it is not to be
            // fetched (`None`: fetch it), and its size.
            let (mut metas, sizes): (
                Vec<Option<std::result::Result<Metadata, Unlisted>>>,
                Vec<u64>,
            ) = replies
                .chunks(2)
                .map(|pair| match &pair[0] {
                    Value::Int(n) => (
                        check_meta_len(*n as u64)
                            .err()
                            .map(|why| Err(Unlisted::Damaged(why))),
                        *n as u64,
                    ),
                    Value::ServerError(e) => (
                        Some(Err(Unlisted::Damaged(format!("metadata in Redis: {e}")))),
                        0,
                    ),
                    v => (
                        Some(Err(Unlisted::Damaged(format!("metadata in Redis: {v:?}")))),
                        0,
                    ),
                })
                .unzip();
            let wanted: Vec<usize> = (0..batch.len()).filter(|&i| metas[i].is_none()).collect();
            for group in byte_groups(&wanted, |&i| sizes[i], LIST_BYTES) {
                let mut p = redis::pipe();
                p.ignore_errors();
                for &i in group {
                    p.cmd("HGET").arg(meta_key(&batch[i])).arg("json");
                }
                let docs: Vec<Value> = self.inner.with(|c| p.query(c))?;
                for (&i, doc) in group.iter().zip(docs) {
                    metas[i] = Some(match doc {
                        Value::BulkString(b) => {
                            parse_meta(&batch[i], &b).map_err(Unlisted::Damaged)
                        }
                        Value::ServerError(e) => {
                            Err(Unlisted::Damaged(format!("metadata in Redis: {e}")))
                        }
                        _ => Err(Unlisted::Creating),
                    });
                }
            }
            for ((id, pair), meta) in batch.iter().zip(replies.chunks(2)).zip(metas) {
                let meta = meta.unwrap_or(Err(Unlisted::Creating));
                let alive = matches!(pair.get(1), Some(Value::Int(1)));
                let meta = meta.map(|mut m| {
                    if m.status == Status::Running && !alive {
                        m.status = Status::Abandoned;
                    }
                    m
                });
                let started_ms = meta
                    .as_ref()
                    .ok()
                    .and_then(|m| crate::timefmt::parse_rfc3339_ms(&m.started_at))
                    .unwrap_or(0);
                jobs.push(JobListing {
                    id: id.clone(),
                    meta,
                    started_ms,
                });
            }
        }
        jobs.sort_by(|a, b| (b.started_ms, &b.id).cmp(&(a.started_ms, &a.id)));
        Ok(jobs)
    }

    fn created_ms(&self, _id: &JobId) -> Option<i64> {
        None
    }

    /// The last id of the jobs stream: it moves whenever a job starts or ends.
    fn list_version(&self) -> Option<u64> {
        let v: Value = self
            .inner
            .with(|c| {
                redis::cmd("XREVRANGE")
                    .arg(JOBS_KEY)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query(c)
            })
            .ok()?;
        let id = entries(v).pop().map(|e| e.id).unwrap_or_default();
        let (ms, seq) = id.split_once('-').unwrap_or(("0", "0"));
        Some(ms.parse::<u64>().ok()?.wrapping_mul(1 << 16) ^ seq.parse::<u64>().ok()?)
    }

    fn open_lines(
        &self,
        id: &JobId,
        stream: Stream,
        start: Start,
        max_keep: usize,
    ) -> Result<Box<dyn LineSource>> {
        if !self.exists(id)? {
            return Err(not_found(id));
        }
        let mut r = RedisLines {
            store: self.clone(),
            id: id.clone(),
            stream,
            key: stream_key(id, stream),
            next: 1,
            pos: 0,
            max_keep,
            buf: VecDeque::new(),
            at: 0,
            after: None,
            partial: None,
            ended: false,
            gap: None,
            requested: None,
        };
        let want = match start {
            Start::Line(n) => n.max(1),
            Start::Tail(n) => (r.total_lines()? + 1).saturating_sub(n).max(1),
        };
        r.seek(want)?;
        Ok(Box::new(r))
    }

    fn open_raw(&self, id: &JobId, stream: Stream) -> Result<Box<dyn RawLog>> {
        if !self.exists(id)? {
            return Err(not_found(id));
        }
        Ok(Box::new(RedisRaw {
            store: self.clone(),
            id: id.clone(),
            stream,
            cache: Mutex::new(None),
        }))
    }

    /// Shipped bytes and next line numbers of both streams.
    fn progress(&self, id: &JobId) -> Progress {
        match self.marks(id) {
            Ok([(o, ol), (e, el)]) => [o, e, ol, el],
            Err(_) => [0; 4],
        }
    }

    fn watcher(&self) -> Result<Box<dyn ChangeWatcher>> {
        RedisWatcher::start(self)
    }

    fn location(&self) -> String {
        self.inner.url.clone()
    }

    fn scan(&self, _f: &mut dyn FnMut(ScanEntry)) -> Result<()> {
        bail!("gc does not apply to a Redis source: its jobs expire by --ship-ttl")
    }

    fn job_usage(&self, _id: &JobId) -> io::Result<JobUsage> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a Redis source is read-only",
        ))
    }

    fn remove_job(&self, _id: &JobId, _expected: DirIdentity) -> Result<Removed> {
        Err(read_only())
    }

    fn clear_leftover(&self, _leftover: &Leftover) -> io::Result<bool> {
        Ok(false)
    }
}

/// A line being put together from entries.
struct Partial {
    number: u64,
    offset: u64,
    len: u64,
    data: Vec<u8>,
    /// When its latest piece was read.
    ts_us: u64,
}

/// One stream of a shipped job, line by line.
struct RedisLines {
    store: RedisStore,
    id: JobId,
    stream: Stream,
    key: String,
    /// Number and offset of the next line.
    next: u64,
    pos: u64,
    max_keep: usize,
    /// Entries fetched and not yet used up; `at` bytes of the first are used.
    buf: VecDeque<Entry>,
    at: usize,
    /// Id of the last entry fetched: the next `XRANGE` starts after it.
    after: Option<String>,
    partial: Option<Partial>,
    /// The end entry was seen.
    ended: bool,
    /// Lines trimmed away before the next line, until it is returned (as its
    /// `lost_before`).
    gap: Option<(u64, u64)>,
    /// The line asked for when a gap was found at the start: what
    /// `next_number` says until the first line is returned, so a caller sees
    /// the jump.
    requested: Option<u64>,
}

impl RedisLines {
    fn fetch(&mut self, from: &str, count: usize) -> Result<Vec<Entry>> {
        let key = self.key.clone();
        let v: Value = self.store.inner.with(|c| {
            redis::cmd("XRANGE")
                .arg(&key)
                .arg(from)
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query(c)
        })?;
        Ok(entries(v))
    }

    /// Positions the reader at line `want`, or at the first line still in
    /// Redis after it (a gap, which the next line's number shows).
    fn seek(&mut self, want: u64) -> Result<()> {
        let key = self.key.clone();
        // The last entry that starts before line `want`: line `want` starts in
        // it, or at the start of the entry after it.
        let before: Value = self.store.inner.with(|c| {
            redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(format!("({want}-0"))
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(c)
        })?;
        let from = match entries(before).pop() {
            Some(e) if want > 1 => e.id,
            _ => "-".to_string(),
        };
        let mut got = self.fetch(&from, FETCH)?;
        if got.is_empty() {
            // Nothing shipped yet: wait at line 1 (numbers stay right as the
            // stream grows, as the file store's reader does).
            return Ok(());
        }
        self.after = got.last().map(|e| e.id.clone());
        self.next = got[0].line;
        self.pos = got[0].offset;
        self.buf = got.drain(..).collect();
        self.at = 0;
        if from == "-" && self.buf.front().is_some_and(|e| e.cont) {
            // The first entry left continues a line whose start was trimmed
            // away: start at its first whole line.
            self.skip_partial_start()?;
        }
        self.skip_to(want)?;
        // Only what is missing from line `want` on: lines trimmed before it
        // (passed over while skipping to it) were not asked for.
        self.gap = (self.next > want).then(|| (want, self.next - 1));
        if self.gap.is_some() {
            self.requested = Some(want);
        }
        Ok(())
    }

    /// Drops the rest of a line whose start was trimmed away.
    fn skip_partial_start(&mut self) -> Result<()> {
        loop {
            let Some(e) = self.buf.front() else {
                if !self.more()? {
                    return Ok(());
                }
                continue;
            };
            if e.end {
                return Ok(());
            }
            let rest = &e.data[self.at..];
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.at += i + 1;
                    self.pos += i as u64 + 1;
                    self.next += 1;
                    return Ok(());
                }
                None => {
                    self.pos += rest.len() as u64;
                    self.buf.pop_front();
                    self.at = 0;
                }
            }
        }
    }

    /// Reads and drops lines until line `want` is next (or the stream's
    /// current end is reached, where the reader then waits).
    fn skip_to(&mut self, want: u64) -> Result<()> {
        while self.next < want {
            if self.read_line(false, true)?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Fetches the entries after the last one (called with nothing buffered);
    /// false if there are none yet.
    fn more(&mut self) -> Result<bool> {
        let from = match &self.after {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        let got = self.fetch(&from, FETCH)?;
        let Some(first) = got.first() else {
            return Ok(false);
        };
        let (offset, line, cont) = (first.offset, first.line, first.cont);
        self.after = got.last().map(|e| e.id.clone());
        self.buf.extend(got);
        self.at = 0;
        if offset > self.pos {
            // Trimmed (MAXLEN) before we read it: what lay between is gone.
            let from = self.partial.take().map_or(self.next, |p| p.number);
            self.pos = offset;
            self.next = line;
            if cont {
                self.skip_partial_start()?;
            }
            if self.next > from {
                self.gap = Some((from, self.next - 1));
            }
        }
        Ok(true)
    }

    /// The next line; with `skip`, only counted (nothing kept).
    fn read_line(&mut self, writer_done: bool, skip: bool) -> Result<Option<LogLine>> {
        loop {
            let Some(e) = self.buf.front() else {
                if self.more()? {
                    continue;
                }
                return Ok(self.take_unfinished(writer_done || self.ended));
            };
            if e.end {
                self.ended = true;
                self.buf.pop_front();
                self.at = 0;
                continue;
            }
            let ts = e.ts_us;
            let rest = &e.data[self.at..];
            let (n, complete) = match memchr::memchr(b'\n', rest) {
                Some(i) => (i + 1, true),
                None => (rest.len(), false),
            };
            let p = self.partial.get_or_insert(Partial {
                number: self.next,
                offset: self.pos,
                len: 0,
                data: Vec::new(),
                ts_us: ts,
            });
            p.ts_us = ts;
            if !skip {
                let room = self.max_keep.saturating_sub(p.data.len());
                p.data.extend_from_slice(&rest[..n.min(room)]);
            }
            p.len += n as u64;
            self.at += n;
            self.pos += n as u64;
            if self.at >= e.data.len() {
                self.buf.pop_front();
                self.at = 0;
            }
            if complete {
                let p = self.partial.take().expect("set above");
                self.next += 1;
                return Ok(Some(LogLine {
                    omitted_before: None,
                    lost_before: None,
                    restarted: false,
                    stream: self.stream,
                    number: p.number,
                    offset: p.offset,
                    len: p.len,
                    ts_us: ts,
                    seq: ts,
                    data: p.data,
                    complete: true,
                }));
            }
        }
    }

    /// A final line without a newline, once nothing more will come.
    fn take_unfinished(&mut self, done: bool) -> Option<LogLine> {
        if !done {
            return None;
        }
        let p = self.partial.take()?;
        self.next += 1;
        Some(LogLine {
            omitted_before: None,
            lost_before: None,
            restarted: false,
            stream: self.stream,
            number: p.number,
            offset: p.offset,
            len: p.len,
            ts_us: p.ts_us,
            seq: p.ts_us,
            data: p.data,
            complete: false,
        })
    }
}

impl LineSource for RedisLines {
    fn stream(&self) -> Stream {
        self.stream
    }

    /// A gap found while reading (trimmed since the last read) or when
    /// opening goes with the line that follows it.
    fn next_line(&mut self, writer_done: bool) -> Result<Option<LogLine>> {
        let mut line = self.read_line(writer_done, false)?;
        if let Some(l) = &mut line {
            l.lost_before = self.gap.take();
            self.requested = None;
        }
        Ok(line)
    }

    fn next_number(&self) -> u64 {
        self.requested
            .unwrap_or_else(|| self.partial.as_ref().map_or(self.next, |p| p.number))
    }

    fn gap(&self) -> Option<(u64, u64)> {
        self.gap
    }

    fn position(&self) -> u64 {
        self.partial.as_ref().map_or(self.pos, |p| p.offset)
    }

    /// Shipped lines, counting a final line without a newline once the job
    /// has ended.
    fn total_lines(&mut self) -> Result<u64> {
        let [out, err] = self.store.marks(&self.id)?;
        let (_, next) = if self.stream == Stream::Stdout {
            out
        } else {
            err
        };
        let complete = next.saturating_sub(1);
        let finished = self
            .store
            .metadata(&self.id)
            .ok()
            .filter(|m| m.status.is_finished());
        Ok(match finished {
            Some(m) => {
                let s = if self.stream == Stream::Stdout {
                    m.stdout
                } else {
                    m.stderr
                };
                s.lines.max(complete)
            }
            None => complete,
        })
    }
}

/// The raw bytes of one stream of a shipped job, read from its entries.
struct RedisRaw {
    store: RedisStore,
    id: JobId,
    stream: Stream,
    /// The entry read last: sequential reads go on from it.
    cache: Mutex<Option<Entry>>,
}

impl RedisRaw {
    fn key(&self) -> String {
        stream_key(&self.id, self.stream)
    }

    fn range(&self, from: &str, to: &str, rev: bool) -> io::Result<Option<Entry>> {
        let key = self.key();
        let v: Value = self
            .store
            .inner
            .with(|c| {
                redis::cmd(if rev { "XREVRANGE" } else { "XRANGE" })
                    .arg(&key)
                    .arg(from)
                    .arg(to)
                    .arg("COUNT")
                    .arg(1)
                    .query(c)
            })
            .map_err(to_io)?;
        Ok(entries(v).into_iter().find(|e| !e.end))
    }

    /// The last entry with data (the end entry, and anything forged past
    /// it, left out).
    fn last(&self) -> io::Result<Option<Entry>> {
        self.range("(18446744073709551615-0", "-", true)
    }

    /// The entry holding byte `offset`: a binary search on line numbers (an
    /// entry's offset grows with its first line), then one look among the
    /// pieces of a long line. The search runs up to the first line of the
    /// last entry held, whatever the shipped mark claims (a forged mark of
    /// 2^64-1 lines is a search of 64 steps at most, never an endless one).
    fn find(&self, offset: u64) -> io::Result<Option<Entry>> {
        let mark_line = {
            let marks = self.store.marks(&self.id).map_err(to_io)?;
            marks[self.stream as usize].1
        };
        let Some(last) = self.last()? else {
            return Ok(None);
        };
        let (mut lo, mut hi) = (1u64, mark_line.min(last.line).max(1));
        let mut best: Option<Entry> = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match self.range(&format!("{mid}-18446744073709551615"), "-", true)? {
                Some(e) if e.offset <= offset => {
                    best = Some(e);
                    let Some(up) = mid.checked_add(1) else { break };
                    lo = up;
                }
                // `mid` >= `lo` >= 1: no wrap.
                Some(_) => hi = mid - 1,
                // Trimmed up to past line `mid`: look higher.
                None => {
                    let Some(up) = mid.checked_add(1) else { break };
                    lo = up;
                }
            }
        }
        // Pieces of one long line share its number: the entry holding the byte
        // is the last one up to id `LINE-OFFSET` of the first line past it.
        match self.range(&format!("{lo}-{offset}"), "-", true)? {
            Some(e) if e.offset <= offset => Ok(Some(e)),
            _ => Ok(best),
        }
    }
}

impl RawLog for RedisRaw {
    fn len(&self) -> io::Result<u64> {
        let marks = self.store.marks(&self.id).map_err(to_io)?;
        Ok(marks[self.stream as usize].0)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut cache = lock(&self.cache);
        let hit = |e: &Entry| e.offset <= offset && offset < e.offset + e.data.len() as u64;
        if !cache.as_ref().is_some_and(hit) {
            // Sequential reads go on with the next entry; others search.
            let next = match cache.as_ref() {
                Some(c) if offset == c.offset + c.data.len() as u64 => {
                    self.range(&format!("({}", c.id), "+", false)?
                }
                _ => None,
            };
            *cache = match next.filter(hit) {
                Some(e) => Some(e),
                None => self.find(offset)?,
            };
        }
        let Some(e) = cache.as_ref().filter(|e| hit(e)) else {
            if offset < self.len()? {
                // Never a silent hole: the bytes were trimmed (MAXLEN).
                return Err(io::Error::other(format!(
                    "byte {offset} of {} of job {} is no longer in Redis (trimmed by --ship-maxlen); \
                     the full log is on the job's machine",
                    self.stream.name(),
                    self.id
                )));
            }
            return Ok(0);
        };
        let from = (offset - e.offset) as usize;
        let n = (e.data.len() - from).min(buf.len());
        buf[..n].copy_from_slice(&e.data[from..from + n]);
        Ok(n)
    }

    /// Only a Redis that answers can say the job is gone: an error is not a
    /// deletion.
    fn removed(&self) -> io::Result<bool> {
        let n: i64 = self
            .store
            .inner
            .with(|c| redis::cmd("EXISTS").arg(meta_key(&self.id)).query(c))
            .map_err(to_io)?;
        Ok(n == 0)
    }

    /// The start of the log that `XADD ... MAXLEN ~` trimmed away: up to the
    /// first entry still held (all of it when none is), so readers say so
    /// instead of failing on it.
    fn omitted_range(&self) -> io::Result<Option<OmittedRange>> {
        let (len, next_line) = self.store.marks(&self.id).map_err(to_io)?[self.stream as usize];
        let (end, lines) = match self.range("-", "+", false)? {
            Some(first) => (first.offset.min(len), first.line.saturating_sub(1)),
            None => (len, next_line.saturating_sub(1)),
        };
        Ok((end > 0).then_some(OmittedRange {
            start: 0,
            end,
            omitted: Omitted {
                omitted_bytes: end,
                omitted_lines: lines,
            },
            cause: OmitCause::Trimmed,
        }))
    }
}

/// What a watcher's thread and its owner share.
#[derive(Default)]
struct Watch {
    /// Watched jobs, with the last entry id seen of each stream.
    jobs: HashMap<JobId, [String; 2]>,
    /// The last id seen of the jobs stream, when the list is watched.
    list: Option<String>,
    pending: BTreeMap<JobId, bool>,
    pending_list: bool,
    stop: bool,
}

/// Change notification from Redis: one thread per watcher, one connection,
/// one `XREAD BLOCK` over every watched stream with the last id seen of each
/// (never `$`, so nothing written between two reads is missed), however many
/// jobs are watched.
struct RedisWatcher {
    store: RedisStore,
    shared: Arc<Mutex<Watch>>,
    read: OwnedFd,
    /// The thread, woken when the watched set changes or the watcher goes.
    thread: std::thread::Thread,
}

impl RedisWatcher {
    fn start(store: &RedisStore) -> Result<Box<dyn ChangeWatcher>> {
        let (read, wake) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .context("cannot make a pipe to wake a watcher of Redis")?;
        let shared = Arc::new(Mutex::new(Watch::default()));
        let theirs = shared.clone();
        let client = store.inner.client.clone();
        let url = store.inner.url.clone();
        let handle = std::thread::Builder::new()
            .name("logwrap-redis-watch".into())
            .spawn(move || watch_loop(&client, &url, &theirs, &wake))
            .context("starting the Redis watcher thread")?;
        Ok(Box::new(RedisWatcher {
            store: store.clone(),
            shared,
            read,
            thread: handle.thread().clone(),
        }))
    }

    /// The id of the newest entry of `key` now ("0-0" when it is empty).
    fn last_id(&self, key: &str) -> Result<String> {
        let v: Value = self.store.inner.with(|c| {
            redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(c)
        })?;
        Ok(entries(v).pop().map_or_else(|| "0-0".to_string(), |e| e.id))
    }
}

impl ChangeWatcher for RedisWatcher {
    fn watch_job(&mut self, id: &JobId) -> Result<()> {
        if !self.store.job_exists(id) {
            return Err(not_found(id));
        }
        let ids = [
            self.last_id(&stream_key(id, Stream::Stdout))?,
            self.last_id(&stream_key(id, Stream::Stderr))?,
        ];
        lock(&self.shared).jobs.insert(id.clone(), ids);
        self.thread.unpark();
        Ok(())
    }

    fn unwatch_job(&mut self, id: &JobId) {
        lock(&self.shared).jobs.remove(id);
    }

    fn watch_list(&mut self) -> Result<()> {
        let last = self.last_id(JOBS_KEY)?;
        lock(&self.shared).list = Some(last);
        self.thread.unpark();
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    fn take_changes(&mut self) -> Result<Changes> {
        let mut b = [0u8; 256];
        while matches!(nix::unistd::read(&self.read, &mut b), Ok(n) if n > 0) {}
        let mut w = lock(&self.shared);
        Ok(Changes {
            jobs: std::mem::take(&mut w.pending).into_iter().collect(),
            list: std::mem::take(&mut w.pending_list),
            overflow: false,
        })
    }
}

impl Drop for RedisWatcher {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.thread.unpark();
    }
}

/// The indices of `keys` that hold something other than a stream (a key
/// that does not exist is an empty stream to `XREAD`).
fn not_streams(c: &mut redis::Connection, keys: &[String]) -> redis::RedisResult<Vec<usize>> {
    let mut p = redis::pipe();
    for k in keys {
        p.cmd("TYPE").arg(k);
    }
    let types: Vec<String> = p.query(c)?;
    Ok(types
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.as_str(), "stream" | "none"))
        .map(|(i, _)| i)
        .collect())
}

fn watch_loop(client: &redis::Client, url: &str, shared: &Mutex<Watch>, wake: &OwnedFd) {
    super::shipper::block_signals();
    let mut conn: Option<redis::Connection> = None;
    // The last read failed with its connection.
    let mut broke = false;
    // Keys left out of the `XREAD` until then: they are not streams.
    let mut shunned: HashMap<String, Instant> = HashMap::new();
    loop {
        let now = Instant::now();
        shunned.retain(|_, until| *until > now);
        // The keys and last ids to read from, taken fresh each time round.
        let (keys, ids, owners) = {
            let w = lock(shared);
            if w.stop {
                return;
            }
            let mut keys = Vec::new();
            let mut ids = Vec::new();
            let mut owners: Vec<Option<(JobId, usize)>> = Vec::new();
            for (id, last) in &w.jobs {
                for s in Stream::BOTH {
                    keys.push(stream_key(id, s));
                    ids.push(last[s as usize].clone());
                    owners.push(Some((id.clone(), s as usize)));
                }
            }
            if let Some(last) = &w.list {
                keys.push(JOBS_KEY.to_string());
                ids.push(last.clone());
                owners.push(None);
            }
            let mut i = 0;
            while i < keys.len() {
                if shunned.contains_key(&keys[i]) {
                    keys.swap_remove(i);
                    ids.swap_remove(i);
                    owners.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            (keys, ids, owners)
        };
        if keys.is_empty() {
            // Nothing to read until something is watched (which unparks us).
            std::thread::park_timeout(BLOCK);
            continue;
        }
        if conn.is_none() {
            // The socket waits longer than the block, so a timeout means a dead
            // connection, not a quiet job.
            match connect(client, url, BLOCK + IO_TIMEOUT) {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    // Redis is down: try again in a second (or when told to stop).
                    std::thread::park_timeout(RECONNECT);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(FETCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&keys)
            .arg(&ids)
            .query(c);
        let reply = match reply {
            Ok(v) => {
                broke = false;
                v
            }
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                conn = None;
                // A connection that broke once is made again at once (EINTR
                // after the process was stopped and continued); one that
                // breaks again waits.
                if std::mem::replace(&mut broke, true) {
                    std::thread::park_timeout(RECONNECT);
                }
                continue;
            }
            Err(_) => {
                // Redis refused the read: most likely a watched key is not a
                // stream (WRONGTYPE), which would fail every read for every
                // job. Leave such keys out for a while and tell their owners,
                // whose own reads then say what is wrong.
                let bad = not_streams(c, &keys).unwrap_or_default();
                if bad.is_empty() {
                    std::thread::park_timeout(RECONNECT);
                    continue;
                }
                let until = Instant::now() + SHUN;
                let mut w = lock(shared);
                for i in bad {
                    shunned.insert(keys[i].clone(), until);
                    match &owners[i] {
                        Some((id, _)) => {
                            if w.jobs.contains_key(id) {
                                w.pending.entry(id.clone()).or_default();
                            }
                        }
                        None => w.pending_list = true,
                    }
                }
                drop(w);
                let _ = nix::unistd::write(wake, &[1]);
                continue;
            }
        };
        let Value::Array(streams) = reply else {
            continue;
        };
        let mut w = lock(shared);
        let mut woke = false;
        for s in streams {
            let Value::Array(mut pair) = s else { continue };
            let Some(items) = pair.pop() else { continue };
            let Some(key) = pair.pop().as_ref().and_then(text) else {
                continue;
            };
            let got = entries(items);
            let Some(last) = got.last().map(|e| e.id.clone()) else {
                continue;
            };
            let Some(i) = keys.iter().position(|k| *k == key) else {
                continue;
            };
            match &owners[i] {
                Some((id, s)) => {
                    let status = got.iter().any(|e| e.end);
                    if let Some(ids) = w.jobs.get_mut(id) {
                        ids[*s] = last;
                        *w.pending.entry(id.clone()).or_default() |= status;
                        woke = true;
                    }
                }
                None => {
                    w.list = Some(last);
                    w.pending_list = true;
                    woke = true;
                }
            }
        }
        drop(w);
        if woke {
            let _ = nix::unistd::write(wake, &[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_that_cannot_answer_for_now_is_an_outage_not_an_answer() {
        for code in ["LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"] {
            assert!(busy_code(code), "{code}");
        }
        for code in ["NOPERM", "WRONGPASS", "NOAUTH", "WRONGTYPE", "ERR", "OOM"] {
            assert!(!busy_code(code), "{code}");
        }
    }

    #[test]
    fn metadata_documents_are_fetched_in_groups_within_the_byte_budget() {
        let sizes = [10u64, 10, 25, 1, 100, 0, 5];
        let groups = byte_groups(&sizes, |n| *n, 30);
        assert_eq!(
            groups,
            vec![&[10, 10][..], &[25, 1], &[100], &[0, 5]],
            "one item over the budget goes alone"
        );
        assert!(byte_groups(&[] as &[u64], |n| *n, 30).is_empty());
    }

    #[test]
    fn metadata_over_the_local_cap_is_refused() {
        assert!(check_meta_len(MAX_METADATA_BYTES).is_ok());
        let err = check_meta_len(MAX_METADATA_BYTES + 1).unwrap_err();
        assert!(err.contains("16777217 bytes"), "{err}");
    }
}
