//! The shipper: reads a job's log files from a cursor (byte offset and line
//! number per stream), cuts whole lines, and sends them to Redis in pipelined
//! transactions; on the wrapper it runs on a thread of its own, so Redis can
//! never slow, block or fail the job (issue 10 point 1). The files are the
//! truth: nothing is queued in memory, so nothing can be dropped.

use super::{entry_id, meta_key, stream_key, ShipConfig, END_ID, JOBS_KEY, JOBS_MAXLEN};
use crate::metadata::{Metadata, ShipState};
use crate::output::index::Records;
use crate::store::{open_job_file, FileStore, IndexFile, JobId, Stream};
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes of lines read for one entry: big enough that a fast job costs few
/// entries (5 M short lines make ~8,000), small enough that a follower gets
/// lines in small steps (the "~64 KiB" batch).
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// Longest entry: a line longer than this is sent in pieces of this size, so
/// the shipper's memory stays bounded whatever the job prints (one 100 MB line).
pub const MAX_ENTRY: usize = 1 << 20;

/// Most bytes of entries in one transaction: a round trip per MiB keeps a
/// local Redis busy while bounding what a slow one holds in our memory.
pub(crate) const ROUND_BYTES: usize = 1 << 20;

/// How often the shipper looks at the files when there was nothing new: the
/// issue's "~50 ms" bound on batching delay, well inside the 50 ms p99 goal of
/// a remote follower together with a round trip.
const POLL: Duration = Duration::from_millis(10);

/// During a burst (a full [`ROUND_BYTES`] or more waiting), shipping waits
/// this long, then ships what came meanwhile: the "~50 ms" batching,
/// by time rather than size, so that a short burst is shipped after the job
/// rather than against it for the CPU (with Redis on the same machine, its
/// work of taking the entries competes with the job at full priority).
/// Output at an ordinary pace never fills a round and never waits.
const BURST_PACE: Duration = Duration::from_millis(50);

/// After [`BURST_PACE`], while the burst lasts, each round is followed by a
/// rest this many times as long as the round took: shipping (and Redis taking
/// it) has at most a quarter of the time, the job the rest. A burst faster
/// than a quarter of the shipping rate is caught up once it ends.
const BURST_REST: u32 = 3;

/// When a live shipper may ship all that is waiting (see [`BURST_PACE`]).
#[derive(Debug, Default)]
struct Pacer {
    /// When a round was found full and shipping paused.
    paused_at: Option<Instant>,
    /// After the pause, rounds rest until then.
    rest_until: Option<Instant>,
}

impl Pacer {
    /// A full round's worth is waiting, or was just shipped, at `now`: true
    /// if shipping pauses here (a burst has begun, or its pause or a rest is
    /// not over: the shipper was woken early, by markers), false if it ships
    /// on. A drain that empties the files ends the burst
    /// ([`Pacer::drained`]).
    fn full_round(&mut self, now: Instant) -> bool {
        match self.paused_at {
            None => {
                self.paused_at = Some(now);
                true
            }
            Some(t) => now < t + BURST_PACE || self.rest_until.is_some_and(|r| now < r),
        }
    }

    /// A full round went from `started` to `now`: during a burst, the next
    /// one waits [`BURST_REST`] times that.
    fn shipped(&mut self, started: Instant, now: Instant) {
        if self.paused_at.is_some() {
            self.rest_until = Some(now + now.saturating_duration_since(started) * BURST_REST);
        }
    }

    /// How long the pause has left at `now`.
    fn left(&self, now: Instant) -> Duration {
        let pause = self.paused_at.map_or(Duration::ZERO, |t| {
            (t + BURST_PACE).saturating_duration_since(now)
        });
        let rest = self
            .rest_until
            .map_or(Duration::ZERO, |r| r.saturating_duration_since(now));
        pause.max(rest)
    }

    /// Nothing is left to ship: the burst is over.
    fn drained(&mut self) {
        self.paused_at = None;
        self.rest_until = None;
    }
}

/// Index records read at once from where the last entry's time was found
/// (see `Shipper::line_time`): 512 bytes, a few MiB of log.
const HINT_BLOCK: usize = 16;

/// Connecting gives up after this long: a Redis that does not answer a TCP
/// handshake in 2 s is down for our purposes, and backoff tries again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A reply taking longer than this counts as a lost connection; an `EXEC` of
/// [`ROUND_BYTES`] takes milliseconds on a healthy server.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// First wait after a failure, doubled on each further failure up to
/// [`MAX_BACKOFF`]: quick recovery from a restart, no busy loop on an outage.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// See [`MIN_BACKOFF`]: an outage costs one attempt every 5 s.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The cursor file is rewritten at most this often while shipping (and always
/// at the end); the marks in Redis are the exact truth, the file is only where
/// a later `logwrap ship` starts when Redis cannot be asked.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// The wrapper's heartbeat key `logwrap:{ID}:alive` lives this long: a reader
/// sees a job whose wrapper died (SIGKILL, power loss) as abandoned within
/// this time, while three missed refreshes are needed to misjudge a live one.
pub(crate) const ALIVE_TTL: Duration = Duration::from_secs(15);
/// How often the shipping thread refreshes the heartbeat; see [`ALIVE_TTL`].
const ALIVE_REFRESH: Duration = Duration::from_secs(5);

/// The least the wrapper waits at the job's end for the rest to reach a
/// Redis that answers: enough for the last lines of an ordinary job (a local
/// round trip is well under a millisecond), so its metadata says `complete`
/// when the wrapper exits; only the end of a burst is handed over.
const MIN_FINISH_WAIT: Duration = Duration::from_millis(5);

/// The wrapper waits at most this fraction of the job's duration at its end
/// (above [`MIN_FINISH_WAIT`]): shipping is to cost a job at most 10% (issue
/// 10), and the shipping process's start and its share of the CPU take part
/// of that.
const FINISH_WAIT_DIVISOR: u64 = 20;

/// What is left to ship at the job's end that the wrapper waits for whatever
/// the shipping rate so far: one transaction ([`ROUND_BYTES`]), one round trip.
/// More is waited for only when the rate measured so far says it gets there
/// within the wait; else it is handed over at once, as waiting for part of it
/// would only delay the job's exit (issue 10: `--ship` costs <= 1.1x).
const FINISH_BACKLOG: u64 = ROUND_BYTES as u64;

/// The shipping state file in the job directory.
const STATE_FILE: &str = "ship.json";
/// Held (flock) by whoever ships the job, so a wrapper and a `logwrap ship`
/// (or two of those) never ship the same job at once.
const LOCK_FILE: &str = "ship.lock";

/// Where shipping stands in one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    /// Bytes of the log shipped.
    pub offset: u64,
    /// Number of the line the next byte belongs to.
    pub line: u64,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor { offset: 0, line: 1 }
    }
}

impl Cursor {
    /// The `*_end` mark in the meta hash: `"OFFSET LINE"`.
    fn mark(&self) -> String {
        format!("{} {}", self.offset, self.line)
    }

    fn parse_mark(s: &str) -> Option<Cursor> {
        let (o, l) = s.split_once(' ')?;
        Some(Cursor {
            offset: o.parse().ok()?,
            line: l.parse().ok()?,
        })
    }
}

/// `ship.json`: the cursor and state, kept in the job directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub(crate) state: ShipState,
    stdout: Cursor,
    stderr: Cursor,
    /// Bytes per second the shipper's rounds have sent so far, if any: what
    /// the wrapper judges its wait at the job's end by when the shipper is a
    /// process of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate: Option<f64>,
}

/// The job's shipping state as last recorded in its directory, if any.
pub(crate) fn read_state(store: &FileStore, id: &JobId) -> Option<ShipState> {
    read_state_file(store, id).map(|f| f.state)
}

/// Most bytes `ship.json` can be: a URL, two cursors and an error message.
const MAX_STATE_BYTES: u64 = 64 * 1024;

pub(crate) fn read_state_file(store: &FileStore, id: &JobId) -> Option<StateFile> {
    let bytes =
        crate::store::read_job_file(&store.job_dir(id).join(STATE_FILE), MAX_STATE_BYTES).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Where the data to send from `window` (bytes of one stream from the cursor
/// on) ends, or `None` to wait for more: up to the last newline; with no
/// newline, the whole window when it is a full [`MAX_ENTRY`] piece of a long
/// line or the job's last line (`last`: nothing more will come).
pub(crate) fn cut(window: &[u8], last: bool) -> Option<usize> {
    if window.is_empty() {
        return None;
    }
    match memchr::memrchr(b'\n', window) {
        Some(i) => Some(i + 1),
        None if last || window.len() >= MAX_ENTRY => Some(window.len()),
        None => None,
    }
}

/// One entry ready to send.
struct Entry {
    stream: Stream,
    /// Starts in the middle of a line (a piece of a line over [`MAX_ENTRY`]).
    cont: bool,
    at: Cursor,
    /// Where its bytes are in the shipper's arena.
    data: std::ops::Range<usize>,
    newlines: u64,
    ts_us: u64,
}

/// One stream's files, open for reading.
#[derive(Default)]
struct Source {
    log: Option<File>,
    idx: Option<IndexFile>,
    /// The log's length as measured for this round (see
    /// [`Shipper::measure`]): one `fstat` per round, not per entry.
    len: Option<u64>,
    /// The index record the last entry's time was found in: entries only
    /// move forward, so the next search starts there.
    hint: u64,
    /// The index's record count was taken for this round.
    idx_fresh: bool,
    /// Where the index's last record ends, as taken for this round: while
    /// the job runs, entries go no further (see [`Shipper::next_entry`]).
    indexed: Option<u64>,
    /// The offset where the last entry ended and whether it ended a line, so
    /// the next entry knows if it continues one without reading the byte.
    ended: Option<(u64, bool)>,
}

/// A stream's index (`idx` of its [`Source`]), opened if need be and its
/// record count taken once a round (`fresh`; after the log's length, so it
/// holds the records of what the round ships, unless the wrapper has yet to
/// write them); `None` when there is none to read.
fn fresh_index<'a>(
    idx: &'a mut Option<IndexFile>,
    fresh: &mut bool,
    path: impl FnOnce() -> std::path::PathBuf,
) -> Option<&'a mut IndexFile> {
    if idx.is_none() {
        *idx = IndexFile::open(&path()).ok();
    }
    let idx = idx.as_mut()?;
    if !*fresh {
        idx.refresh().ok()?;
        *fresh = true;
    }
    Some(idx)
}

/// Ships one job; used by the wrapper's thread and by `logwrap ship`.
pub(crate) struct Shipper {
    cfg: ShipConfig,
    client: redis::Client,
    conn: Option<redis::Connection>,
    store: FileStore,
    id: JobId,
    cur: [Cursor; 2],
    sources: [Source; 2],
    /// The bytes of one round's entries, reused from round to round: at most
    /// [`ROUND_BYTES`] and two more entries (each up to [`MAX_ENTRY`]).
    arena: Vec<u8>,
    /// Whether the meta hash says the started event / end entry are there.
    started_sent: bool,
    end_sent: bool,
    state: ShipState,
    /// Lines of a final piece without a newline that were shipped.
    partial_lines: u64,
    last_persist: Option<Instant>,
    last_alive: Option<Instant>,
    /// `missing_deps` entries already sent as `marker` events (the meta
    /// hash's `markers`, read back on connect).
    markers_sent: usize,
    /// The job's keys were found lost and dropped ([`Shipper::forget_shipped`]):
    /// shipping starts over, with the started event.
    starting_over: bool,
    /// The meta hash says the `finished` event is in the jobs stream.
    finished_sent: bool,
    /// Bytes sent by [`Shipper::round`] and the time those rounds took: the
    /// shipping rate the wrapper judges its wait at the job's end by.
    sent: u64,
    busy: Duration,
    _lock: Flock<File>,
}

impl Shipper {
    /// A shipper for job `id`, holding its ship lock; `None` when someone else
    /// holds it (with `wait`, once they let go).
    pub(crate) fn open(
        store: &FileStore,
        id: &JobId,
        cfg: &ShipConfig,
        wait: bool,
    ) -> Result<Option<Shipper>> {
        let path = store.job_dir(id).join(LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags_nofollow()
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let how = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let lock = match Flock::lock(f, how) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        };
        let saved = read_state_file(store, id).filter(|s| s.state.url == cfg.public_url());
        let (cur, state) = match saved {
            Some(s) => ([s.stdout, s.stderr], s.state),
            None => (
                [Cursor::default(); 2],
                ShipState {
                    url: cfg.public_url(),
                    ..ShipState::default()
                },
            ),
        };
        let mut sh = Shipper {
            cfg: cfg.clone(),
            client: cfg.client()?,
            conn: None,
            store: store.clone(),
            id: id.clone(),
            cur,
            sources: Default::default(),
            arena: Vec::new(),
            started_sent: false,
            end_sent: false,
            state,
            partial_lines: 0,
            last_persist: None,
            last_alive: None,
            markers_sent: 0,
            starting_over: false,
            finished_sent: false,
            sent: 0,
            busy: Duration::ZERO,
            _lock: lock,
        };
        sh.state.complete = false;
        sh.update_counts();
        Ok(Some(sh))
    }

    pub(crate) fn state(&self) -> &ShipState {
        &self.state
    }

    pub(crate) fn shipped_bytes(&self) -> u64 {
        self.cur.iter().map(|c| c.offset).sum()
    }

    /// Bytes per second the rounds so far sent, if they sent any.
    fn rate(&self) -> Option<f64> {
        let secs = self.busy.as_secs_f64();
        (self.sent > 0 && secs > 0.0).then(|| self.sent as f64 / secs)
    }

    fn update_counts(&mut self) {
        self.state.bytes = self.shipped_bytes();
        self.state.lines = self.cur.iter().map(|c| c.line - 1).sum::<u64>() + self.partial_lines;
    }

    fn failed(&mut self, e: &anyhow::Error) {
        self.conn = None;
        self.state.last_error = Some(error_text(e));
    }

    /// Connects and reads back what Redis already holds of this job: the
    /// cursor resumes from its marks (a lost reply is not re-sent; a Redis
    /// that lost the job gets it all again).
    pub(crate) fn connect(&mut self) -> Result<()> {
        self.connect_within(CONNECT_TIMEOUT)
    }

    /// [`Shipper::connect`], giving up on connecting after `timeout`.
    pub(crate) fn connect_within(&mut self, timeout: Duration) -> Result<()> {
        let r = self.try_connect(timeout);
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    fn try_connect(&mut self, timeout: Duration) -> Result<()> {
        let url = self.cfg.public_url();
        let mut conn = self
            .client
            .get_connection_with_timeout(timeout)
            .with_context(|| format!("connecting to {url}"))?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(IO_TIMEOUT)))
            .with_context(|| format!("setting timeouts on {url}"))?;
        let marks: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(meta_key(&self.id))
            .arg("stdout_end")
            .arg("stderr_end")
            .arg("started")
            .arg("end")
            .arg("markers")
            .arg("finished")
            .query(&mut conn)
            .with_context(|| format!("reading the shipping marks of {} from {url}", self.id))?;
        for (i, c) in self.cur.iter_mut().enumerate() {
            *c = marks[i]
                .as_deref()
                .and_then(Cursor::parse_mark)
                .unwrap_or_default();
        }
        self.started_sent = marks[2].is_some();
        self.end_sent = marks[3].is_some();
        self.finished_sent = marks[5].is_some();
        self.markers_sent = marks[4]
            .as_deref()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.partial_lines = 0;
        self.last_alive = None;
        self.update_counts();
        self.conn = Some(conn);
        self.state.last_error = None;
        Ok(())
    }

    /// The length of `stream`'s log as measured this round (opening it the
    /// first time); `None` while it does not exist yet.
    fn source_len(&mut self, stream: Stream) -> Result<Option<u64>> {
        let path = self.store.log_path(&self.id, stream);
        let src = &mut self.sources[stream as usize];
        if src.log.is_none() {
            match open_job_file(&path) {
                Ok(f) => src.log = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            }
        }
        let Some(log) = &src.log else { return Ok(None) };
        if src.len.is_none() {
            let len = log
                .metadata()
                .with_context(|| format!("measuring {}", path.display()))?
                .len();
            src.len = Some(len);
        }
        Ok(src.len)
    }

    /// Forgets the logs' lengths and the index's count: the next round
    /// measures them anew and ships what they hold then.
    fn measure(&mut self) {
        for src in &mut self.sources {
            src.len = None;
            src.idx_fresh = false;
            src.indexed = None;
        }
    }

    /// Bytes of both logs not shipped yet, measured now (the next round
    /// ships up to there).
    fn waiting(&mut self) -> Result<u64> {
        self.measure();
        let mut total = 0;
        for stream in Stream::BOTH {
            if let Some(len) = self.source_len(stream)? {
                total += len.saturating_sub(self.cur[stream as usize].offset);
            }
        }
        Ok(total)
    }

    /// The next entry of `stream` from its cursor, if one is ready (`last`:
    /// the job has ended, so a final line without a newline goes too); its
    /// bytes are read into the arena at `pos`.
    fn next_entry(
        &mut self,
        stream: Stream,
        last: bool,
        at: Cursor,
        pos: usize,
    ) -> Result<Option<Entry>> {
        let i = stream as usize;
        let Some(mut len) = self.source_len(stream)? else {
            return Ok(None);
        };
        if !last {
            // While the job runs, only what the index covers: the wrapper
            // writes a read's records just after its bytes, and an entry
            // is stamped with the time its last line was read, which only
            // the index knows. The rest goes with the next round (at the
            // end, all goes, stamped now if the index never caught up).
            let (store, id) = (&self.store, &self.id);
            let src = &mut self.sources[i];
            if src.indexed.is_none() {
                let path = || store.index_path(id, stream);
                src.indexed = fresh_index(&mut src.idx, &mut src.idx_fresh, path).and_then(|idx| {
                    match idx.count() {
                        0 => Some(0),
                        n => idx.get(n - 1).ok().map(|r| r.end),
                    }
                });
            }
            if let Some(indexed) = src.indexed {
                len = len.min(indexed);
            }
        }
        let path = self.store.log_path(&self.id, stream);
        let src = &mut self.sources[i];
        let Some(log) = &src.log else { return Ok(None) };
        let avail = len.saturating_sub(at.offset);
        if avail == 0 {
            return Ok(None);
        }
        // Read into the arena at `pos`: grown (and zeroed) only the first
        // time a round reaches this far, not once per entry.
        if self.arena.len() < pos + MAX_ENTRY {
            self.arena.resize(pos + MAX_ENTRY, 0);
        }
        let mut n = avail.min(BATCH_BYTES as u64) as usize;
        log.read_exact_at(&mut self.arena[pos..pos + n], at.offset)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut end = cut(&self.arena[pos..pos + n], last && avail == n as u64);
        if end.is_none() && avail > n as u64 {
            // A line longer than a batch: look further, up to one entry.
            let more = avail.min(MAX_ENTRY as u64) as usize;
            log.read_exact_at(&mut self.arena[pos + n..pos + more], at.offset + n as u64)
                .with_context(|| format!("reading {}", path.display()))?;
            n = more;
            end = cut(&self.arena[pos..pos + n], last && avail == n as u64);
        }
        let Some(end) = end else { return Ok(None) };
        let window = &self.arena[pos..pos + end];
        let cont = match src.ended {
            Some((offset, newline)) if offset == at.offset => !newline,
            _ => {
                let mut before = [0u8; 1];
                at.offset > 0
                    && log.read_exact_at(&mut before, at.offset - 1).is_ok()
                    && before[0] != b'\n'
            }
        };
        src.ended = Some((at.offset + end as u64, window.last() == Some(&b'\n')));
        let newlines = memchr::memchr_iter(b'\n', window).count() as u64;
        let ts_us = self.line_time(stream, at.offset + end as u64);
        Ok(Some(Entry {
            stream,
            cont,
            at,
            data: pos..pos + end,
            newlines,
            ts_us,
        }))
    }

    /// When the byte before `end` was read from the child (from the line
    /// index); now when the index has not caught up.
    fn line_time(&mut self, stream: Stream, end: u64) -> u64 {
        let (store, id) = (&self.store, &self.id);
        let src = &mut self.sources[stream as usize];
        let path = || store.index_path(id, stream);
        let Some(idx) = fresh_index(&mut src.idx, &mut src.idx_fresh, path) else {
            return crate::timefmt::now_us();
        };
        // The first record whose chunk reaches `end`. Entries move forward
        // about a record at a time, so it is nearly always among the few
        // after the last one found: those are read in one go. Else (a cursor
        // read back from Redis, a burst of small chunks) a search.
        let count = idx.count();
        let start = src.hint.min(count);
        let base = start.saturating_sub(1);
        let mut block = [crate::output::index::Record::default(); HINT_BLOCK];
        let block = &mut block[..(count - base).min(HINT_BLOCK as u64) as usize];
        if idx.get_block(base, block).is_err() {
            return crate::timefmt::now_us();
        }
        let behind = start > 0 && block.first().is_some_and(|r| r.end >= end);
        let skip = usize::from(start > 0);
        if !behind {
            if let Some(k) = block.iter().skip(skip).position(|r| r.end >= end) {
                src.hint = base + (skip + k) as u64;
                return block[skip + k].ts_us;
            }
        }
        let reaches = |i: u64| idx.get(i).map(|r| r.end >= end);
        let (mut lo, mut hi) = if behind {
            (0, start - 1)
        } else {
            // Gallop on past the block, then search the last step.
            let (mut lo, mut step) = (base + block.len() as u64, 1u64);
            let hi = loop {
                let probe = lo.saturating_add(step - 1);
                if probe >= count {
                    break count;
                }
                match reaches(probe) {
                    Ok(true) => break probe,
                    Ok(false) => {
                        lo = probe + 1;
                        step = step.saturating_mul(2);
                    }
                    Err(_) => return crate::timefmt::now_us(),
                }
            };
            (lo, hi)
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match reaches(mid) {
                Ok(true) => hi = mid,
                Ok(false) => lo = mid + 1,
                Err(_) => return crate::timefmt::now_us(),
            }
        }
        src.hint = lo;
        match idx.get(lo) {
            Ok(r) if lo < count => r.ts_us,
            _ => crate::timefmt::now_us(),
        }
    }

    /// Sends one transaction of entries from both streams, up to the logs'
    /// lengths as last measured ([`Shipper::measure`]); the bytes of lines
    /// it sent (0: nothing was waiting; [`ROUND_BYTES`] or more: more may
    /// be).
    fn round(&mut self, last: bool) -> Result<usize> {
        let began = Instant::now();
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut next = self.cur;
        let mut open = [true, true];
        while bytes < ROUND_BYTES && open.iter().any(|o| *o) {
            for stream in Stream::BOTH {
                let i = stream as usize;
                if !open[i] {
                    continue;
                }
                match self.next_entry(stream, last, next[i], bytes)? {
                    Some(e) => {
                        bytes += e.data.len();
                        next[i] = Cursor {
                            offset: e.at.offset + e.data.len() as u64,
                            line: e.at.line + e.newlines,
                        };
                        entries.push(e);
                    }
                    None => open[i] = false,
                }
            }
        }
        if entries.is_empty() {
            return Ok(0);
        }
        // The job's last line without a newline: an entry that ends the log
        // of a job that has ended, not a piece of a long line that merely
        // ends this round.
        let partial = entries
            .iter()
            .filter(|e| last && self.arena[e.data.clone()].last() != Some(&b'\n'))
            .filter(|e| {
                Some(e.at.offset + e.data.len() as u64) == self.sources[e.stream as usize].len
            })
            .count() as u64;
        let meta = meta_key(&self.id);
        let mut p = redis::pipe();
        p.atomic();
        for e in &entries {
            p.cmd("XADD")
                .arg(stream_key(&self.id, e.stream))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.cfg.maxlen)
                .arg(entry_id(e.at.line, e.at.offset))
                .arg("stream")
                .arg(e.stream.name())
                .arg("line")
                .arg(e.at.line)
                .arg("offset")
                .arg(e.at.offset)
                .arg("lines")
                .arg(e.newlines)
                .arg("ts")
                .arg(e.ts_us)
                .arg("data")
                .arg(&self.arena[e.data.clone()]);
            if e.cont {
                p.arg("cont").arg(1);
            }
            p.ignore();
        }
        // Its reply counts the marks it created rather than updated: after a
        // round has set them, a created one means Redis lost the job's keys
        // meanwhile (FLUSHALL, a key evicted or deleted) with the connection
        // still up. (Free: no command is added to the round.)
        p.cmd("HSET")
            .arg(&meta)
            .arg("stdout_end")
            .arg(next[0].mark())
            .arg("stderr_end")
            .arg(next[1].mark());
        self.expire(&mut p);
        let conn = self.conn.as_mut().context("not connected")?;
        let (created,): (i64,) = p
            .query(conn)
            .with_context(|| format!("shipping to {}", self.cfg.public_url()))?;
        let had_marks = self.cur != [Cursor::default(); 2];
        if created > 0 && had_marks {
            // What this round added starts in the middle of the log: drop
            // the job's keys and ship all of it again, as to a Redis that
            // restarted without its data.
            // Nothing counts as sent: the caller's next turn sends the
            // started event first, then the log from its start.
            self.forget_shipped()?;
            return Ok(0);
        }
        self.cur = next;
        self.partial_lines += partial;
        self.update_counts();
        self.sent += bytes as u64;
        self.busy += began.elapsed();
        Ok(bytes)
    }

    /// Drops the job's keys in Redis and starts over (the next round ships
    /// the log from its start, with the started event), after finding the
    /// marks Redis held not where this shipper left them.
    fn forget_shipped(&mut self) -> Result<()> {
        let conn = self.conn.as_mut().context("not connected")?;
        redis::cmd("DEL")
            .arg(stream_key(&self.id, Stream::Stdout))
            .arg(stream_key(&self.id, Stream::Stderr))
            .arg(meta_key(&self.id))
            .query::<()>(conn)
            .with_context(|| format!("shipping to {}", self.cfg.public_url()))?;
        self.cur = Default::default();
        self.started_sent = false;
        self.end_sent = false;
        self.finished_sent = false;
        self.markers_sent = 0;
        self.partial_lines = 0;
        self.starting_over = true;
        self.update_counts();
        Ok(())
    }

    /// Refreshes `logwrap:{ID}:alive` when due: the wrapper is alive.
    fn heartbeat_if_due(&mut self) -> Result<()> {
        if self.last_alive.is_some_and(|t| t.elapsed() < ALIVE_REFRESH) {
            return Ok(());
        }
        let conn = self.conn.as_mut().context("not connected")?;
        redis::cmd("SET")
            .arg(super::alive_key(&self.id))
            .arg(std::process::id())
            .arg("PX")
            .arg(ALIVE_TTL.as_millis() as u64)
            .query::<()>(conn)
            .with_context(|| format!("shipping to {}", self.cfg.public_url()))?;
        self.last_alive = Some(Instant::now());
        Ok(())
    }

    /// The sliding TTL on both keys, after the writes (an EXPIRE before the
    /// first XADD would find no key).
    fn expire(&self, p: &mut redis::Pipeline) {
        let ttl = self.cfg.ttl.as_secs();
        for stream in Stream::BOTH {
            p.cmd("EXPIRE")
                .arg(stream_key(&self.id, stream))
                .arg(ttl)
                .ignore();
        }
        p.cmd("EXPIRE").arg(meta_key(&self.id)).arg(ttl).ignore();
    }

    /// The `started` event in the jobs stream and the first meta hash, unless
    /// Redis already has them.
    pub(crate) fn send_started(&mut self, meta: &Metadata, live: bool) -> Result<()> {
        if self.started_sent {
            return Ok(());
        }
        let mut p = redis::pipe();
        p.atomic();
        if live {
            // A wrapper's shipper: the heartbeat with the metadata, so that a
            // reader never sees the running job without it (and takes it for
            // abandoned).
            p.cmd("SET")
                .arg(super::alive_key(&self.id))
                .arg(std::process::id())
                .arg("PX")
                .arg(ALIVE_TTL.as_millis() as u64)
                .ignore();
        }
        p.cmd("HSET")
            .arg(meta_key(&self.id))
            .arg("json")
            .arg(meta.to_json())
            .arg("host")
            .arg(&meta.hostname)
            .arg("status")
            .arg(meta.status.as_str())
            .ignore();
        self.expire(&mut p);
        let conn = self.conn.as_mut().context("not connected")?;
        p.query::<()>(conn)
            .with_context(|| format!("shipping to {}", self.cfg.public_url()))?;
        if live {
            self.last_alive = Some(Instant::now());
        }
        // The event, then its mark: a wrapper stopped in between means the
        // next shipper sends it again (at least once), never that it is lost.
        self.job_event("started", meta)?;
        let conn = self.conn.as_mut().context("not connected")?;
        redis::cmd("HSET")
            .arg(meta_key(&self.id))
            .arg("started")
            .arg(&meta.started_at)
            .query::<()>(conn)
            .with_context(|| format!("shipping to {}", self.cfg.public_url()))?;
        self.started_sent = true;
        Ok(())
    }

    /// A `marker` event in the jobs stream for each `missing_deps` entry not
    /// sent yet (with its stream, line and JSON value), and the metadata, so a
    /// scheduler watching the fleet sees markers while jobs run.
    pub(crate) fn send_markers(&mut self, meta: &Metadata) -> Result<()> {
        if meta.missing_deps.len() <= self.markers_sent {
            return Ok(());
        }
        let mut p = redis::pipe();
        for dep in &meta.missing_deps[self.markers_sent..] {
            p.cmd("XADD")
                .arg(JOBS_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(JOBS_MAXLEN)
                .arg("*")
                .arg("event")
                .arg("marker")
                .arg("id")
                .arg(self.id.as_str())
                .arg("host")
                .arg(&meta.hostname)
                .arg("stream")
                .arg(&dep.stream)
                .arg("line")
                .arg(dep.line)
                .arg("value")
                .arg(dep.value.to_string())
                .ignore();
        }
        p.cmd("HSET")
            .arg(meta_key(&self.id))
            .arg("json")
            .arg(meta.to_json())
            .arg("markers")
            .arg(meta.missing_deps.len())
            .ignore();
        let conn = self.conn.as_mut().context("not connected")?;
        p.query::<()>(conn)
            .with_context(|| format!("shipping to {}", self.cfg.public_url()))?;
        self.markers_sent = meta.missing_deps.len();
        Ok(())
    }

    fn job_event(&mut self, event: &str, meta: &Metadata) -> Result<()> {
        let conn = self.conn.as_mut().context("not connected")?;
        redis::cmd("XADD")
            .arg(JOBS_KEY)
            .arg("MAXLEN")
            .arg("~")
            .arg(JOBS_MAXLEN)
            .arg("*")
            .arg("event")
            .arg(event)
            .arg("id")
            .arg(self.id.as_str())
            .arg("host")
            .arg(&meta.hostname)
            .arg("status")
            .arg(meta.status.as_str())
            .arg("exit_code")
            .arg(meta.exit_code.map(|c| c.to_string()).unwrap_or_default())
            .arg("tail_url")
            .arg(meta.tail_url.as_deref().unwrap_or(""))
            .query::<()>(conn)
            .with_context(|| format!("shipping to {}", self.cfg.public_url()))
    }

    /// Ships the rest of a job that has ended, then its end entry and
    /// `finished` event; `meta` is its final metadata (gets the ship state).
    pub(crate) fn ship_to_end(&mut self, meta: &mut Metadata) -> Result<()> {
        let r = self.try_ship_to_end(meta);
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    fn try_ship_to_end(&mut self, meta: &mut Metadata) -> Result<()> {
        self.send_started(meta, false)?;
        loop {
            self.measure();
            if self.round(true)? == 0 {
                if std::mem::take(&mut self.starting_over) {
                    self.send_started(meta, false)?;
                    continue;
                }
                break;
            }
        }
        self.send_markers(meta)?;
        if !self.end_sent {
            self.state.complete = true;
            self.state.last_error = None;
            meta.ship = Some(self.state.clone());
            let mut p = redis::pipe();
            p.atomic();
            for stream in Stream::BOTH {
                p.cmd("XADD")
                    .arg(stream_key(&self.id, stream))
                    .arg(END_ID)
                    .arg("end")
                    .arg(1)
                    .arg("status")
                    .arg(meta.status.as_str())
                    .arg("exit_code")
                    .arg(meta.exit_code.map(|c| c.to_string()).unwrap_or_default())
                    .arg("stdout_bytes")
                    .arg(self.cur[0].offset)
                    .arg("stdout_lines")
                    .arg(meta.stdout.lines)
                    .arg("stderr_bytes")
                    .arg(self.cur[1].offset)
                    .arg("stderr_lines")
                    .arg(meta.stderr.lines)
                    .ignore();
            }
            p.cmd("HSET")
                .arg(meta_key(&self.id))
                .arg("json")
                .arg(meta.to_json())
                .arg("status")
                .arg(meta.status.as_str())
                .arg("end")
                .arg(1)
                .ignore();
            p.cmd("DEL").arg(super::alive_key(&self.id)).ignore();
            self.expire(&mut p);
            let conn = self.conn.as_mut().context("not connected")?;
            if let Err(e) = p.query::<()>(conn) {
                self.state.complete = false;
                return Err(e).with_context(|| format!("shipping to {}", self.cfg.public_url()));
            }
            self.end_sent = true;
        }
        if !self.finished_sent {
            // After the end entry, and marked apart (the jobs stream is in
            // another Cluster slot): whoever ships next sends it if a wrapper
            // stopped in between; at worst twice, never lost.
            self.job_event("finished", meta)?;
            let conn = self.conn.as_mut().context("not connected")?;
            redis::cmd("HSET")
                .arg(meta_key(&self.id))
                .arg("finished")
                .arg(1)
                .query::<()>(conn)
                .with_context(|| format!("shipping to {}", self.cfg.public_url()))?;
            self.finished_sent = true;
        }
        self.state.complete = true;
        self.state.last_error = None;
        meta.ship = Some(self.state.clone());
        Ok(())
    }

    /// Writes `ship.json` (best effort: Redis's marks are the truth).
    pub(crate) fn persist(&mut self) {
        self.last_persist = Some(Instant::now());
        let file = StateFile {
            state: self.state.clone(),
            stdout: self.cur[0],
            stderr: self.cur[1],
            rate: self.rate(),
        };
        let Ok(bytes) = serde_json::to_vec(&file) else {
            return;
        };
        let path = self.store.job_dir(&self.id).join(STATE_FILE);
        let _ = crate::metadata::write_atomic(&path, &bytes, false);
    }

    fn persist_if_due(&mut self) {
        if self
            .last_persist
            .is_none_or(|t| t.elapsed() >= PERSIST_INTERVAL)
        {
            self.persist();
        }
    }
}

/// Opening files without following a symlink a job may have planted.
trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
    }
}

/// What the shipping loop and whoever drives it (the wrapper's thread
/// handle, or the control reader of `logwrap ship --live`) share.
pub(crate) struct Ctl {
    /// The job's final metadata, once it has ended.
    pub(crate) end: Option<Metadata>,
    /// The wrapper stops waiting: the loop ends at its next look.
    pub(crate) abandon: bool,
    /// Metadata with markers not yet sent, from the wrapper's loop.
    pub(crate) markers: Option<Metadata>,
    /// The loop has finished (shipped the end, or given up).
    pub(crate) done: bool,
    /// Connected and the last attempt worked (no backoff in progress).
    pub(crate) healthy: bool,
    pub(crate) state: ShipState,
    /// The shipping rate so far (bytes per second), once there is one.
    pub(crate) rate: Option<f64>,
    /// The wrapper has exited or is exiting and left the rest to this
    /// process: a failure ends the loop (and is recorded) instead of being
    /// retried with nobody waiting.
    pub(crate) detached: bool,
    /// The wrapper is exiting after handing the rest over: nothing is sent
    /// until it has, so that shipping (and a Redis on the same machine
    /// taking it) does not compete with its last steps for the CPU.
    pub(crate) hold: bool,
}

/// [`Ctl`] and the condition variable its changes are signalled on.
pub(crate) type Shared = Arc<(Mutex<Ctl>, Condvar)>;

pub(crate) fn shared(state: ShipState) -> Shared {
    Arc::new((
        Mutex::new(Ctl {
            end: None,
            abandon: false,
            markers: None,
            done: false,
            healthy: true,
            state,
            rate: None,
            detached: false,
            hold: false,
        }),
        Condvar::new(),
    ))
}

/// How the wrapper's wait at the job's end came out.
pub(crate) enum Outcome {
    /// Everything and the end entry are in Redis.
    Done(ShipState),
    /// Redis is failing: the shipper stops; the next catch-up completes it.
    Failed(ShipState),
    /// Redis answers but the rest did not get there within the wait.
    Pending(ShipState),
}

/// The wrapper's live shipping (issue 10 point 1): a `logwrap ship --live`
/// process of its own at the lowest priority when the config names the
/// program (the job and the wrapper never compete with it for the CPU, and the
/// wrapper's exit never waits for it), else a thread of the wrapper. It starts
/// once the job has run `START_DELAY` (25 ms), or at the job's end if that comes
/// first. The process is started from a short-lived thread: the spawn takes
/// about a millisecond, which the wrapper's loop (and so the job, whose
/// output it drains) does not wait for.
pub struct LiveShipper {
    how: How,
    store: FileStore,
    id: JobId,
    cfg: ShipConfig,
}

enum How {
    /// Not started yet: at `at`, or at the job's end; `started` is the job's
    /// first metadata, for a thread's `started` event.
    Later {
        at: Instant,
        started: Box<Metadata>,
    },
    /// The shipping process is being started by the thread: its handle, or
    /// why it could not start (a shipping thread then takes over).
    Starting {
        spawner: std::thread::JoinHandle<Result<super::live::Process>>,
        started: Box<Metadata>,
        /// The metadata with markers that came meanwhile, to pass on.
        markers: Option<Box<Metadata>>,
    },
    Thread(Shared),
    Process(super::live::Process),
    /// Could not start; the state says why.
    Failed(ShipState),
}

/// How long a job runs before its shipping starts. A job that ends sooner is
/// shipped from its end, in the background (its wrapper does not wait): most
/// jobs of a pipeline run for milliseconds, and starting a shipping process
/// beside them cost them more than the 10% shipping may (issue 10). Short
/// enough that a line written at a job's start still reaches a follower
/// well within the latency target (< 50 ms): this delay plus the start.
pub const START_DELAY: Duration = Duration::from_millis(25);

/// How often the wrapper's loop looks whether the shipping process has
/// started (it takes about a millisecond; on a busy machine its thread, at
/// a lower priority, may wait longer, and the loop should not spin meanwhile).
const START_POLL: Duration = Duration::from_millis(5);

impl LiveShipper {
    /// Ships job `id` of `store` from the files as they grow, starting
    /// `START_DELAY` from now; `started` is its first metadata (already on
    /// disk). Redis being down is never a failure: the state says what failed.
    pub fn new(store: &FileStore, id: &JobId, cfg: &ShipConfig, started: &Metadata) -> LiveShipper {
        LiveShipper {
            how: How::Later {
                at: Instant::now() + START_DELAY,
                started: Box::new(started.clone()),
            },
            store: store.clone(),
            id: id.clone(),
            cfg: cfg.clone(),
        }
    }

    /// When the wrapper's loop is next to call [`LiveShipper::start_if_due`]:
    /// when shipping is to start, or soon while the process is starting (its
    /// markers wait for it).
    pub fn due_at(&self) -> Option<Instant> {
        match &self.how {
            How::Later { at, .. } => Some(*at),
            How::Starting { .. } => Some(Instant::now() + START_POLL),
            _ => None,
        }
    }

    /// Starts shipping if it is due at `now`; `meta` is the job's metadata as
    /// on disk, with any markers so far. A shipping process is started from
    /// a thread, and taken over once it runs.
    pub fn start_if_due(&mut self, now: Instant, meta: &Metadata) {
        if matches!(self.how, How::Later { at, .. } if now >= at) {
            match self.cfg.handoff.clone() {
                Some(program) => {
                    let (store, id, cfg) = (self.store.clone(), self.id.clone(), self.cfg.clone());
                    self.start_with(meta, move || {
                        super::live::Process::spawn(&program, &store, &id, &cfg)
                    });
                }
                None => self.start(meta),
            }
        }
        self.settle(false);
    }

    /// Starts the process or thread now if it has not started (at the job's
    /// end: waits the millisecond a process takes to start, rather than
    /// start a thread to wait for it); markers the job printed before are
    /// sent at once.
    pub fn start(&mut self, meta: &Metadata) {
        self.settle(true);
        let How::Later { started, .. } = &self.how else {
            return;
        };
        let started = started.clone();
        let (store, id, cfg) = (&self.store, &self.id, &self.cfg);
        // A program that cannot be started leaves it to a thread.
        let process = cfg
            .handoff
            .as_deref()
            .and_then(|program| super::live::Process::spawn(program, store, id, cfg).ok());
        self.how = match process {
            Some(p) => How::Process(p),
            None => self.thread_or_failed(&started),
        };
        if !meta.missing_deps.is_empty() {
            self.markers(meta);
        }
    }

    /// Starts the shipping process with `spawn`, called on a thread of its
    /// own; [`LiveShipper::settle`] takes it over.
    fn start_with(
        &mut self,
        meta: &Metadata,
        spawn: impl FnOnce() -> Result<super::live::Process> + Send + 'static,
    ) {
        let How::Later { started, .. } = &self.how else {
            return;
        };
        let started = started.clone();
        let spawned = std::thread::Builder::new()
            .name("logwrap-spawner".into())
            .spawn(move || {
                // The process starts at this thread's priority (and then
                // lowers its own to the lowest).
                lower_priority();
                spawn()
            });
        let Ok(spawner) = spawned else {
            // No thread to wait for it: started from here.
            return self.start(meta);
        };
        self.how = How::Starting {
            spawner,
            started,
            markers: None,
        };
        if !meta.missing_deps.is_empty() {
            self.markers(meta);
        }
    }

    /// Takes the shipping process over once the thread starting it is done
    /// (`wait`: waits for that) and passes on the markers that came
    /// meanwhile; if it could not start, a shipping thread takes over.
    fn settle(&mut self, wait: bool) {
        match &self.how {
            How::Starting { spawner, .. } if wait || spawner.is_finished() => {}
            _ => return,
        }
        let placeholder = How::Failed(ShipState::default());
        let How::Starting {
            spawner,
            started,
            markers,
        } = std::mem::replace(&mut self.how, placeholder)
        else {
            unreachable!("matched above");
        };
        self.how = match spawner.join() {
            Ok(Ok(p)) => How::Process(p),
            // A program that cannot be started leaves it to a thread.
            Ok(Err(_)) | Err(_) => self.thread_or_failed(&started),
        };
        if let Some(meta) = markers {
            self.markers(&meta);
        }
    }

    /// A shipping thread, or the state saying why there is none.
    fn thread_or_failed(&self, started: &Metadata) -> How {
        self.spawn_thread(started).unwrap_or_else(|e| {
            How::Failed(ShipState {
                url: self.cfg.public_url(),
                last_error: Some(error_text(&e)),
                ..ShipState::default()
            })
        })
    }

    /// A shipping thread. Fails only if it cannot start or the job's ship
    /// lock is taken.
    fn spawn_thread(&self, started: &Metadata) -> Result<How> {
        let (store, id, cfg) = (&self.store, &self.id, &self.cfg);
        let sh = Shipper::open(store, id, cfg, false)?
            .context("another process is shipping this job")?;
        let shared = shared(sh.state.clone());
        let theirs = shared.clone();
        let started = started.clone();
        std::thread::Builder::new()
            .name("logwrap-ship".into())
            .spawn(move || {
                block_signals();
                lower_priority();
                ship_loop(sh, &theirs, &started, &mut |_| {});
            })
            .context("starting the shipping thread")?;
        // Jobs whose wrapper could not finish shipping (issue 10 point 3).
        super::catch_up_in_background(store.clone(), cfg.clone(), id.clone());
        Ok(How::Thread(shared))
    }

    /// The job's metadata has new markers (`missing_deps`) and is on disk:
    /// they go to the jobs stream as `marker` events.
    pub fn markers(&mut self, meta: &Metadata) {
        match &mut self.how {
            How::Starting { markers, .. } => *markers = Some(Box::new(meta.clone())),
            How::Thread(shared) => {
                let (m, cv) = &**shared;
                lock(m).markers = Some(meta.clone());
                cv.notify_all();
            }
            How::Process(p) => p.notify(),
            // Read at the start, or from the end.
            How::Later { .. } | How::Failed(_) => {}
        }
    }

    /// Whether the job's end is to be written to metadata.json before
    /// [`LiveShipper::finish`]: a shipping process reads it from there.
    pub fn reads_end_from_disk(&mut self) -> bool {
        self.settle(true);
        matches!(self.how, How::Process(_))
    }

    /// The shipping state now, for metadata.json.
    pub fn state(&self) -> ShipState {
        match &self.how {
            How::Thread(shared) => lock(&shared.0).state.clone(),
            How::Process(p) => p.view().0,
            How::Later { .. } | How::Starting { .. } => ShipState {
                url: self.cfg.public_url(),
                ..ShipState::default()
            },
            How::Failed(state) => state.clone(),
        }
    }

    /// The job has ended with `meta`, already written to metadata.json:
    /// ships the rest and the end entry, waiting while Redis answers for a
    /// twentieth of the job's duration (at least 5 ms, `MIN_FINISH_WAIT`, at
    /// most the config's `finish_wait`), so shipping adds at most ~5% to a
    /// job's run; not at all while Redis is down, nor when more is left than the
    /// shipping rate so far sends in that time (the end of a burst: waiting
    /// for part of it would only delay the exit). What is left then is
    /// finished by the shipping process after the wrapper exits (it records
    /// the outcome in metadata.json), or by the next catch-up. Returns the
    /// state to record.
    pub fn finish(mut self, meta: &Metadata) -> ShipState {
        // A job shorter than START_DELAY: its shipping starts now, and its
        // wrapper does not wait for a process that has yet to start.
        self.start(meta);
        let wait = self.cfg.finish_wait;
        let share =
            Duration::from_micros(meta.duration_ms.unwrap_or(0) * 1000 / FINISH_WAIT_DIVISOR);
        let bound = share.clamp(MIN_FINISH_WAIT.min(wait), wait);
        let (state, rate, healthy) = match &self.how {
            How::Thread(shared) => {
                let ctl = lock(&shared.0);
                (ctl.state.clone(), ctl.rate, ctl.healthy)
            }
            How::Process(p) => p.view(),
            How::Later { .. } | How::Starting { .. } | How::Failed(_) => {
                (self.state(), None, false)
            }
        };
        let backlog = (meta.stdout.bytes + meta.stderr.bytes).saturating_sub(state.bytes);
        let fits = backlog <= FINISH_BACKLOG
            || rate.is_some_and(|r| backlog as f64 / r <= bound.as_secs_f64());
        let deadline = Instant::now() + if fits { bound } else { Duration::ZERO };
        let outcome = match self.how {
            How::Thread(shared) => wait_thread(&shared, meta, deadline),
            How::Process(p) => p.finish(deadline, healthy),
            How::Later { .. } | How::Starting { .. } | How::Failed(_) => return state,
        };
        match outcome {
            Outcome::Done(state) => state,
            Outcome::Pending(mut state) if state.last_error.is_some() => {
                // Handed over: its last word is in the message.
                state.complete = false;
                state
            }
            Outcome::Failed(mut state) | Outcome::Pending(mut state) => {
                super::mark_pending(&self.store);
                state.complete = false;
                if state.last_error.is_none() {
                    state.last_error = Some(
                        "not finished when the job ended; run `logwrap ship` to complete it".into(),
                    );
                }
                state
            }
        }
    }
}

/// The thread's side of [`LiveShipper::finish`]: tells the loop the job
/// ended and waits for it until `deadline` while it is healthy.
fn wait_thread(shared: &Shared, meta: &Metadata, deadline: Instant) -> Outcome {
    let (m, cv) = &**shared;
    let mut ctl = lock(m);
    ctl.end = Some(meta.clone());
    cv.notify_all();
    while !ctl.done && ctl.healthy {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        ctl = match cv.wait_timeout(ctl, deadline - now) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
    ctl.abandon = true;
    cv.notify_all();
    let state = ctl.state.clone();
    if ctl.done {
        Outcome::Done(state)
    } else if ctl.healthy {
        let mut state = state;
        // A thread ends with the wrapper: nobody finishes it in the background.
        state.last_error = None;
        Outcome::Pending(state)
    } else {
        Outcome::Failed(state)
    }
}

/// Keeps the wrapper's signals (SIGCHLD, SIGWINCH, the forwarded ones) off
/// this thread: delivered here they would interrupt a connect or a read with
/// EINTR, which the Redis client reports as a failure. The event loop's thread
/// still takes them all.
pub(crate) fn block_signals() {
    let _ = nix::sys::signal::SigSet::all().thread_block();
}

/// Niceness of the shipping thread: when the job, the wrapper and Redis
/// compete for the CPU, the job goes first (issue 10: shipping must not slow
/// it) and the shipper catches up when the job pauses or ends. Not lower, nor
/// `SCHED_IDLE`: a process exits only once each of its threads has been
/// scheduled to die, and on a busy machine (two CPU hogs on two cores) an
/// idle-class shipper held the wrapper's exit up to 1.1 s, nice 19 up to
/// 0.3 s, while at 10 the exit took as long as without shipping.
const SHIP_NICENESS: i32 = 10;

/// Lowers this thread's priority (on Linux a thread has its own nice value);
/// a failure only means shipping competes with the job as an equal.
fn lower_priority() {
    // SAFETY: plain syscalls on this thread's own id, no memory handed over.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, SHIP_NICENESS);
    }
}

pub(crate) fn lock(m: &Mutex<Ctl>) -> std::sync::MutexGuard<'_, Ctl> {
    // A panic on the other side must not take the job down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ships job `sh` while it runs and to its end once `shared` says it ended,
/// until it is done or abandoned; `report` hears how each attempt after the
/// end went (true: all shipped). Returns the shipper, still holding the
/// job's ship lock.
pub(crate) fn ship_loop(
    mut sh: Shipper,
    shared: &Shared,
    started: &Metadata,
    report: &mut dyn FnMut(bool),
) -> Shipper {
    let (m, cv) = &**shared;
    let mut backoff = MIN_BACKOFF;
    let mut was_healthy = true;
    let mut pacer = Pacer::default();
    loop {
        let mut paused = false;
        let (end, markers) = {
            let mut ctl = lock(m);
            while ctl.hold && !ctl.abandon {
                ctl = cv.wait(ctl).unwrap_or_else(|p| p.into_inner());
            }
            if ctl.abandon {
                break;
            }
            (ctl.end.clone(), ctl.markers.take())
        };
        let ending = end.is_some();
        let step: Result<bool> = (|| {
            if sh.conn.is_none() {
                sh.connect()?;
                if !was_healthy {
                    // Back: said before anything is sent, so that whoever
                    // sees the lines in Redis also sees shipping healthy.
                    sh.persist();
                }
            }
            sh.send_started(started, true)?;
            match end {
                Some(mut meta) => {
                    sh.ship_to_end(&mut meta)?;
                    Ok(true)
                }
                None => {
                    sh.heartbeat_if_due()?;
                    if let Some(meta) = &markers {
                        if let Err(e) = sh.send_markers(meta) {
                            // Sent again with the next markers or at the end.
                            lock(m).markers.get_or_insert_with(|| meta.clone());
                            return Err(e);
                        }
                    }
                    // A burst's start waits too: more than a full round
                    // already waiting is not sent at once. (Measured here,
                    // the first round ships up to there.)
                    if sh.waiting()? >= ROUND_BYTES as u64 && pacer.full_round(Instant::now()) {
                        paused = true;
                    }
                    while !paused {
                        let began = Instant::now();
                        let sent = sh.round(false)?;
                        if sent < ROUND_BYTES {
                            // All that was waiting (a round is full only
                            // when more may be).
                            pacer.drained();
                            break;
                        }
                        let stop = {
                            let ctl = lock(m);
                            ctl.abandon || ctl.hold
                        };
                        if stop {
                            break;
                        }
                        let now = Instant::now();
                        pacer.shipped(began, now);
                        if pacer.full_round(now) {
                            paused = true;
                            break;
                        }
                        sh.measure();
                    }
                    sh.state.last_error = None;
                    Ok(false)
                }
            }
        })();
        let finished = matches!(step, Ok(true));
        let healthy = step.is_ok();
        if let Err(e) = &step {
            sh.failed(e);
        }
        let wait = if healthy {
            backoff = MIN_BACKOFF;
            if paused {
                pacer.left(Instant::now())
            } else {
                POLL
            }
        } else {
            let w = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            w
        };
        // A change of health is written at once: a wrapper whose shipping
        // process this is judges its wait at the job's end by it.
        if finished || !healthy || !was_healthy {
            sh.persist();
        } else {
            sh.persist_if_due();
        }
        was_healthy = healthy;
        if ending {
            // After `ship.json` says so, which is where the answer is read.
            report(healthy);
        }
        let mut ctl = lock(m);
        ctl.state = sh.state.clone();
        ctl.rate = sh.rate();
        ctl.healthy = healthy;
        if finished {
            ctl.done = true;
            cv.notify_all();
            return sh;
        }
        cv.notify_all();
        if ctl.abandon || (!healthy && ctl.detached) {
            break;
        }
        // Woken early by the job's end or the wrapper giving up.
        let _ = cv.wait_timeout_while(ctl, wait, |c| {
            !c.abandon && (c.end.is_none() || !healthy) && (c.markers.is_none() || !healthy)
        });
    }
    sh.persist();
    lock(m).state = sh.state.clone();
    sh
}

/// `e` in one line for `last_error` and for `logwrap ship`'s report, as
/// `{e:#}` gives it, except for what Redis refused: a transaction it refused
/// lists every command, each with the same words, so the first is said once
/// with how many there were; and Redis out of memory (`maxmemory` reached
/// with nothing it may evict: it is full, as a disk can be) says so plainly.
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        match cause.downcast_ref::<redis::RedisError>() {
            Some(r) => {
                // Its own causes are the server errors it already names.
                parts.push(redis_text(r));
                break;
            }
            None => parts.push(cause.to_string()),
        }
    }
    parts.join(": ")
}

/// A Redis error in one line (see [`error_text`]).
fn redis_text(r: &redis::RedisError) -> String {
    let Some(errs) = r.clone().into_server_errors() else {
        return r.to_string();
    };
    let Some((_, first)) = errs.first() else {
        return r.to_string();
    };
    let full = first.code() == "OOM";
    if errs.len() == 1 && !full {
        return r.to_string();
    }
    let what = match first.details() {
        Some(d) => format!("{} {}", first.code(), d.trim_end_matches('.')),
        None => first.code().to_string(),
    };
    let head = if full {
        "Redis is full (maxmemory reached, nothing it may evict)"
    } else {
        "Redis refused the write"
    };
    match errs.len() {
        1 => format!("{head}: {what}"),
        n => format!("{head}: {what} ({n} commands refused)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_pauses_shipping_then_ships_a_quarter_of_the_time_until_nothing_is_left() {
        let mut p = Pacer::default();
        let t = Instant::now();
        let ms = Duration::from_millis;
        // Ordinary output never fills a round: nothing to pace.
        p.shipped(t, t + ms(4));
        p.drained();
        assert_eq!(p.left(t), Duration::ZERO);
        // The first full round pauses, and for all of BURST_PACE, also when
        // woken early.
        assert!(p.full_round(t));
        assert_eq!(p.left(t), BURST_PACE);
        assert!(p.full_round(t + BURST_PACE / 2));
        assert_eq!(p.left(t + BURST_PACE / 2), BURST_PACE / 2);
        // After it, each round of the burst rests three times its length...
        let r = t + BURST_PACE;
        assert!(!p.full_round(r));
        p.shipped(r, r + ms(2));
        assert!(p.full_round(r + ms(2)));
        assert_eq!(p.left(r + ms(2)), ms(6));
        assert!(p.full_round(r + ms(7)));
        assert!(!p.full_round(r + ms(8)));
        p.shipped(r + ms(8), r + ms(18));
        assert_eq!(p.left(r + ms(18)), ms(30));
        assert!(!p.full_round(r + ms(48)));
        // ...until the files are drained; the next burst pauses again.
        p.drained();
        assert_eq!(p.left(r + ms(48)), Duration::ZERO);
        assert!(p.full_round(r + ms(100)));
        assert_eq!(p.left(r + ms(100)), BURST_PACE);
    }

    #[test]
    fn while_the_job_runs_entries_hold_only_lines_the_index_has_times_for() {
        use std::io::Write;
        let root = crate::store::TempRoot::new("ship-indexed");
        let id = JobId::parse("indexed").unwrap();
        let mut sink = crate::store::LogStore::create_job(&*root, &id).unwrap();
        sink.append(
            Stream::Stdout,
            &crate::store::Chunk::new(b"one\ntwo\n", 1_000_000),
        )
        .unwrap();
        // A line in the log whose index record the wrapper has yet to write
        // (it writes a read's records just after its bytes).
        std::fs::OpenOptions::new()
            .append(true)
            .open(root.log_path(&id, Stream::Stdout))
            .unwrap()
            .write_all(b"three\n")
            .unwrap();
        let cfg = ShipConfig::new("redis://127.0.0.1:1", 100, Duration::from_secs(60)).unwrap();
        let mut sh = Shipper::open(&root, &id, &cfg, false).unwrap().unwrap();
        let entry = |sh: &mut Shipper, last: bool| {
            sh.measure();
            let e = sh
                .next_entry(Stream::Stdout, last, Cursor::default(), 0)
                .unwrap()
                .unwrap();
            (sh.arena[e.data].to_vec(), e.ts_us)
        };
        // While it runs: the indexed lines, with the time they were read.
        assert_eq!(entry(&mut sh, false), (b"one\ntwo\n".to_vec(), 1_000_000));
        // At the end all goes; the line the index never timed is stamped now.
        let before = crate::timefmt::now_us();
        let (data, ts) = entry(&mut sh, true);
        assert_eq!(data, b"one\ntwo\nthree\n");
        assert!(ts >= before, "{ts} < {before}");
    }

    #[test]
    fn the_loop_goes_on_while_the_shipping_process_starts_and_a_thread_takes_over_if_it_cannot() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let root = crate::store::TempRoot::new("ship-start");
        let id = JobId::parse("starting").unwrap();
        let _sink = crate::store::LogStore::create_job(&*root, &id).unwrap();
        // Nothing listens there: the thread that takes over cannot connect.
        let cfg = ShipConfig::new("redis://127.0.0.1:1", 100, Duration::from_secs(60)).unwrap();
        let meta = crate::metadata::tests::sample();
        let mut ls = LiveShipper::new(&root, &id, &cfg, &meta);
        // The process's start takes until the test says so (or 20 s pass,
        // which only a caller waiting for it lets happen).
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let waited = std::sync::Arc::new(AtomicBool::new(false));
        let w = waited.clone();
        ls.start_with(&meta, move || {
            if gate.recv_timeout(Duration::from_secs(20)).is_err() {
                w.store(true, Ordering::SeqCst);
            }
            anyhow::bail!("cannot start the program")
        });
        ls.start_if_due(Instant::now() + START_DELAY, &meta);
        assert!(
            !waited.load(Ordering::SeqCst),
            "the loop waited for the start"
        );
        assert!(matches!(ls.how, How::Starting { .. }), "started once only");
        let due = ls.due_at();
        let soon = Instant::now() + START_POLL;
        assert!(due.is_some_and(|t| t <= soon), "the loop looks again soon");
        assert_eq!(ls.state().url, "redis://127.0.0.1:1");
        // Markers that come meanwhile are kept for whoever ships.
        let mut marked = meta.clone();
        marked.missing_deps.push(crate::metadata::MissingDep {
            stream: "stdout".into(),
            line: 1,
            value: serde_json::json!({"partitions": ["a"]}),
        });
        ls.markers(&marked);
        match &ls.how {
            How::Starting { markers, .. } => assert_eq!(markers.as_deref(), Some(&marked)),
            _ => panic!("no longer starting"),
        }
        go.send(()).unwrap();
        // The end waits for the start; the program failed, so a thread ships.
        assert!(!ls.reads_end_from_disk());
        assert!(
            matches!(ls.how, How::Thread(_)),
            "no shipping thread took over"
        );
        let mut end = marked.clone();
        end.status = crate::metadata::Status::Succeeded;
        let state = ls.finish(&end);
        assert!(!state.complete);
        assert!(state.last_error.is_some(), "{state:?}");
    }

    #[test]
    fn only_whole_lines_are_cut_until_the_end_or_a_full_piece() {
        assert_eq!(cut(b"", true), None);
        assert_eq!(cut(b"a\nb\nc", false), Some(4));
        assert_eq!(cut(b"abc", false), None);
        assert_eq!(cut(b"abc", true), Some(3));
        assert_eq!(cut(b"a\r\n\rb\n", false), Some(6));
        let long = vec![b'x'; MAX_ENTRY];
        assert_eq!(cut(&long, false), Some(MAX_ENTRY));
    }

    #[test]
    fn marks_round_trip() {
        let c = Cursor {
            offset: 1 << 40,
            line: 7,
        };
        assert_eq!(Cursor::parse_mark(&c.mark()), Some(c));
        assert_eq!(Cursor::parse_mark("x 1"), None);
    }
}
