//! One SSE follower: where it reads in a job's log (one stream, or both merged in
//! arrival order), the event ids that let a reconnect resume exactly, and `pump`,
//! which turns lines into events until the follower's buffer is full.
//!
//! # Event ids and resuming
//!
//! On `stdout` and `stderr` the id is the line number (SPEC §5), and
//! `Last-Event-ID: N` resumes at line N+1. On `combined` a position needs both
//! streams, so the id is a cursor `O.E`: the last stdout and stderr line numbers
//! delivered up to and including this event (`0` for none yet). `Last-Event-ID:
//! O.E` resumes at stdout line O+1 and stderr line E+1, so a reconnect neither
//! repeats nor skips a line of either stream.

use super::sse::{self, Format, MAX_LINE_BYTES};
use crate::reader::{CombinedReader, LineSource, LogLine, Start};
use crate::store::{JobId, LogStore, Stream};
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Which lines an event stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    One(Stream),
    Combined,
}

impl Which {
    /// `stdout`, `stderr` or `combined`.
    pub fn parse(s: &str) -> Option<Which> {
        match s {
            "stdout" => Some(Which::One(Stream::Stdout)),
            "stderr" => Some(Which::One(Stream::Stderr)),
            "combined" => Some(Which::Combined),
            _ => None,
        }
    }
}

/// Where a new follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At line N of the stream (of each stream, on `combined`): `?since=N`.
    Line(u64),
    /// The last N lines (of the merged lines, on `combined`): `?lines=N`.
    Tail(u64),
    /// Just after an event id (`Last-Event-ID`, `?after=`): stdout line O+1,
    /// stderr line E+1 (on a single stream only the first number is used).
    After(u64, u64),
    /// The last K lines that end at an event id, inclusive (`?before=ID`):
    /// on a stream lines N-K+1..=N; on combined the last K merged lines among
    /// stdout lines up to O and stderr lines up to E.
    Before([u64; 2], u64),
}

/// Parses a `Last-Event-ID` for `which`: `N` for a stream, `O.E` for combined.
pub fn parse_event_id(which: Which, id: &str) -> Option<StartAt> {
    parse_cursor(which, id).map(|[o, e]| StartAt::After(o, e))
}

/// The line numbers an event id names: `[N, 0]` for a stream's `N`, `[O, E]`
/// for combined.
pub fn parse_cursor(which: Which, id: &str) -> Option<[u64; 2]> {
    match which {
        Which::One(_) => id.trim().parse().ok().map(|n| [n, 0]),
        Which::Combined => {
            let (o, e) = id.trim().split_once('.')?;
            Some([o.parse().ok()?, e.parse().ok()?])
        }
    }
}

enum Lines {
    One(Box<dyn LineSource>),
    Combined(Box<CombinedReader>),
}

impl Lines {
    /// Readers of `which` of job `id` from just after `last` (the last line
    /// numbers of stdout and stderr already delivered).
    fn after(store: &dyn LogStore, id: &JobId, which: Which, last: [u64; 2]) -> Result<Lines> {
        let open = |s: Stream| store.open_lines(id, s, Start::Line(last[idx(s)] + 1), KEEP);
        Ok(match which {
            Which::One(s) => Lines::One(open(s)?),
            Which::Combined => Lines::Combined(Box::new(CombinedReader::new(
                open(Stream::Stdout)?,
                open(Stream::Stderr)?,
            ))),
        })
    }

    fn next(&mut self, done: bool) -> Result<Option<LogLine>> {
        match self {
            Lines::One(r) => r.next_line(done),
            Lines::Combined(c) => c.next_line(done),
        }
    }

    /// Where each stream read goes on: its next line's number and offset.
    /// Right when the readers have reached the end, that offset is where a
    /// line in progress starts.
    fn heads(&self) -> [Option<Head>; 2] {
        let head = |r: &dyn LineSource| Head {
            stream: r.stream(),
            line: r.next_number(),
            pos: r.position(),
        };
        match self {
            Lines::One(r) => [Some(head(r.as_ref())), None],
            Lines::Combined(c) => {
                let [out, err] = c.readers();
                [Some(head(out.as_ref())), Some(head(err.as_ref()))]
            }
        }
    }
}

/// Where a reader of one stream goes on (see [`Lines::heads`]).
#[derive(Debug, Clone, Copy)]
struct Head {
    stream: Stream,
    line: u64,
    pos: u64,
}

/// Most bytes of a line in progress read for `event: partial`: its end is
/// what a terminal shows (a progress bar's last frame, a prompt), and a
/// 100 MB line without a newline then costs one small read, not 100 MB.
pub const PARTIAL_BYTES: u64 = 8 * 1024;

/// Least time between two `partial` events of one stream: a progress bar
/// redrawn a thousand times a second becomes ten events, still smooth to a
/// reader (issue 11, point 4).
pub const PARTIAL_EVERY: Duration = Duration::from_millis(100);

/// The line in progress of one stream as last looked at.
#[derive(Default)]
struct PartialTrack {
    /// Line number and length of the bytes after the last line last read,
    /// partial or not: while they are the same, there is nothing to read (a
    /// thousand followers woken at once read them once).
    looked: Option<(u64, u64)>,
    /// Line number and length of the line in progress last encoded.
    sent: Option<(u64, u64)>,
    sent_at: Option<Instant>,
    /// Its event, while it is still the line in progress; empty once the
    /// line has ended or nothing is in progress.
    event: Vec<u8>,
}

/// The lines in progress of the streams a reader follows, each encoded at
/// most every [`PARTIAL_EVERY`] and only when it grew.
#[derive(Default)]
pub struct Partials {
    streams: [PartialTrack; 2],
    /// A change held back by [`PARTIAL_EVERY`]: when to look again, so the
    /// last state is sent even if nothing else happens.
    due: Option<Instant>,
}

impl Partials {
    /// Brings the events up to date with the logs (`sizes`, the job's
    /// progress) for the readers at `heads`.
    #[allow(clippy::too_many_arguments)]
    fn look(
        &mut self,
        store: &dyn LogStore,
        id: &JobId,
        which: Which,
        format: Format,
        heads: [Option<Head>; 2],
        sizes: [u64; 4],
        now: Instant,
    ) -> Result<()> {
        self.due = None;
        for Head { stream, line, pos } in heads.into_iter().flatten() {
            let t = &mut self.streams[idx(stream)];
            let size = sizes[idx(stream)];
            if size <= pos {
                t.event.clear();
                continue;
            }
            if t.looked == Some((line, size - pos)) {
                continue;
            }
            if let Some(at) = t.sent_at.map(|t| t + PARTIAL_EVERY).filter(|&at| at > now) {
                self.due = Some(self.due.map_or(at, |d| d.min(at)));
                continue;
            }
            t.looked = Some((line, size - pos));
            let Some(p) = read_partial(store, id, stream, line, pos, size)? else {
                // Whole lines not read yet (their index record is on its
                // way): they come as log events first.
                t.event.clear();
                continue;
            };
            t.event.clear();
            sse::partial_event(&mut t.event, &p, which == Which::Combined, format);
            t.sent = Some((line, p.len));
            t.sent_at = Some(now);
        }
        Ok(())
    }

    /// A line of `stream` was read: its line in progress is no more.
    fn line_ended(&mut self, stream: Stream) {
        self.streams[idx(stream)].event.clear();
    }
}

/// The line in progress of `stream` starting at byte `pos` as line `line`,
/// the log being `size` bytes: its last [`PARTIAL_BYTES`]. `None` when the
/// bytes read hold a newline (whole lines wait to be read first).
fn read_partial(
    store: &dyn LogStore,
    id: &JobId,
    stream: Stream,
    line: u64,
    pos: u64,
    size: u64,
) -> Result<Option<sse::Partial>> {
    let raw = store.open_raw(id, stream)?;
    let from = pos.max(size.saturating_sub(PARTIAL_BYTES));
    let mut tail = vec![0u8; (size - from) as usize];
    let mut got = 0;
    while got < tail.len() {
        match raw.read_at(&mut tail[got..], from + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    tail.truncate(got);
    if tail.is_empty() || memchr::memchr(b'\n', &tail).is_some() {
        return Ok(None);
    }
    Ok(Some(sse::Partial {
        stream,
        line,
        len: from + got as u64 - pos,
        tail,
        truncated: from > pos,
    }))
}

/// What [`Follower::pump`] stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// The buffer reached its bound: more lines wait (back-pressure).
    Full,
    /// Caught up with the log; following for more.
    Idle,
    /// The stream is over (after `complete`, or at the end without `follow`).
    Done,
}

/// An event stream in progress.
pub struct Follower {
    pub job: JobId,
    /// The run of the job id it follows ([`super::routes::instance`]): a
    /// new job that takes the id after this one was deleted is not it.
    pub instance: Option<String>,
    which: Which,
    /// The follower's own readers; dropped while it is served from the shared
    /// events of its job ([`Shared`]), reopened if it falls behind them.
    lines: Option<Lines>,
    format: Format,
    follow: bool,
    /// Last line number delivered per stream (stdout, stderr).
    last: [u64; 2],
    /// Truncations of each stream's log told (`event: truncated`): a line
    /// number names a line only together with how many came before it.
    restarts: [u64; 2],
    /// Lines read but not yet sent (the 204 check looks ahead one line).
    pending: Option<LogLine>,
    /// Merged lines still to drop before the first event (combined `lines=N`).
    skip: u64,
    /// First line number wanted per stream: `since=N` or `Last-Event-ID` past
    /// the current end waits for that line rather than starting from now, as
    /// `logs -f --since` does locally (issue 11, point 7).
    want: [u64; 2],
    /// Without `follow`: the log sizes when the request came; lines starting
    /// beyond them are left for another request, so a fast writer cannot keep a
    /// one-shot request going.
    stop_at: Option<[u64; 2]>,
    /// The log and index sizes when this follower last caught up: while they are
    /// unchanged there is nothing to read, and a wake-up costs no file access.
    pub seen: [u64; 4],
    /// `log` events still to send before the stream ends (`?count=K`).
    remaining: Option<u64>,
    /// The last line wanted per stream (`?before=ID`): lines beyond it are
    /// left out.
    upto: Option<[u64; 2]>,
    /// Per stream, whether its last wanted line has been read (or it has
    /// none): once both have, nothing more is read.
    passed: [bool; 2],
    /// Nothing more is sent: both streams passed `upto`.
    cut: bool,
    /// The lines in progress as this follower's own readers see them.
    partials: Partials,
    /// Line number and length of the last partial event sent, per stream:
    /// the same state is never sent twice, also when the follower moves
    /// between its own readers and its job's shared events.
    partial_sent: [Option<(u64, u64)>; 2],
    /// When to look at the lines in progress again (see [`Partials`]).
    partial_due: Option<Instant>,
}

/// The event id of the position `last` (the last line numbers delivered):
/// the line number on a stream, `O.E` on combined.
fn event_id(which: Which, last: [u64; 2]) -> String {
    match which {
        Which::One(s) => last[idx(s)].to_string(),
        Which::Combined => format!("{}.{}", last[0], last[1]),
    }
}

fn idx(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Reader's `max_keep`: one byte beyond the event cap, so a line that just fits
/// keeps its newline and a longer one is known to be cut.
const KEEP: usize = MAX_LINE_BYTES + 1;

impl Follower {
    /// Opens the readers for a new follower of job `id`.
    pub fn open(
        store: &dyn LogStore,
        id: &JobId,
        which: Which,
        from: StartAt,
        follow: bool,
        format: Format,
        sizes: [u64; 4],
    ) -> Result<Follower> {
        let open = |s: Stream, start: Start| store.open_lines(id, s, start, KEEP);
        // The first line of the K that end at line n.
        let first_of = |n: u64, k: u64| Start::Line(n.saturating_add(1).saturating_sub(k).max(1));
        // `before`: a reader of the last k lines of `s` up to line n (up to
        // its end when n is past it), that end, and whether there are none.
        let window = |s: Stream, n: u64, k: u64| -> Result<(Box<dyn LineSource>, u64, bool)> {
            let mut r = open(s, first_of(n, k))?;
            let end = r.total_lines()?.min(n);
            if end < n {
                r = open(s, first_of(end, k))?;
            }
            let none = end < r.next_number();
            Ok((r, end, none))
        };
        let mut skip = 0;
        let mut last = [0, 0];
        // `before`: the last line wanted per stream, and whether the stream
        // has none to give at all.
        let mut upto = None;
        let mut passed = [true; 2];
        let want = match from {
            StartAt::Line(n) => [n, n],
            StartAt::Tail(_) | StartAt::Before(..) => [0, 0],
            StartAt::After(o, e) => [o.saturating_add(1), e.saturating_add(1)],
        };
        let lines = match which {
            Which::One(s) => {
                let r = match from {
                    StartAt::Line(n) => open(s, Start::Line(n))?,
                    StartAt::Tail(n) => open(s, Start::Tail(n))?,
                    StartAt::After(n, _) => open(s, Start::Line(n.saturating_add(1)))?,
                    StartAt::Before([n, _], k) => {
                        let (r, end, none) = window(s, n, k)?;
                        upto = Some([end, end]);
                        passed[idx(s)] = none;
                        r
                    }
                };
                last[idx(s)] = r.next_number().saturating_sub(1);
                Lines::One(r)
            }
            Which::Combined => {
                let both = |starts: [Start; 2]| -> Result<_> {
                    Ok((
                        open(Stream::Stdout, starts[0])?,
                        open(Stream::Stderr, starts[1])?,
                    ))
                };
                let (mut out, mut err) = match from {
                    StartAt::Line(n) => both([Start::Line(n), Start::Line(n)])?,
                    StartAt::Tail(n) => both([Start::Tail(n), Start::Tail(n)])?,
                    StartAt::After(o, e) => both([
                        Start::Line(o.saturating_add(1)),
                        Start::Line(e.saturating_add(1)),
                    ])?,
                    StartAt::Before([o, e], k) => {
                        // Each stream's window holds its last k lines up to
                        // the cursor; of the merged lines only the last k.
                        let (out, o, o_none) = window(Stream::Stdout, o, k)?;
                        let (err, e, e_none) = window(Stream::Stderr, e, k)?;
                        let size = |end: u64, r: &dyn LineSource| {
                            (end + 1).saturating_sub(r.next_number())
                        };
                        skip = (size(o, out.as_ref()) + size(e, err.as_ref())).saturating_sub(k);
                        upto = Some([o, e]);
                        passed = [o_none, e_none];
                        (out, err)
                    }
                };
                last = [
                    out.next_number().saturating_sub(1),
                    err.next_number().saturating_sub(1),
                ];
                if let StartAt::Tail(n) = from {
                    // Each stream's window holds its last n lines; of the merged
                    // lines only the last n are wanted.
                    let window = |r: &mut Box<dyn LineSource>| -> Result<u64> {
                        Ok((r.total_lines()? + 1).saturating_sub(r.next_number()))
                    };
                    skip = (window(&mut out)? + window(&mut err)?).saturating_sub(n);
                }
                Lines::Combined(Box::new(CombinedReader::new(out, err)))
            }
        };
        Ok(Follower {
            job: id.clone(),
            instance: None,
            which,
            lines: Some(lines),
            format,
            follow,
            pending: None,
            skip,
            // Lines before a wanted line past the end are never sent: the
            // stream is as if they had been.
            last: [
                last[0].max(want[0].saturating_sub(1)),
                last[1].max(want[1].saturating_sub(1)),
            ],
            restarts: [0; 2],
            want,
            stop_at: (!follow).then_some([sizes[0], sizes[1]]),
            seen: [u64::MAX; 4],
            remaining: match from {
                StartAt::Before(_, k) => Some(k),
                _ => None,
            },
            upto,
            passed,
            cut: upto.is_some() && passed == [true; 2],
            partials: Partials::default(),
            partial_sent: [None; 2],
            partial_due: None,
        })
    }

    /// Says that the job emptied the log of `stream` (its `restarts`-th
    /// truncation): the next line of it is line 1 of the new log.
    fn tell_truncated(&mut self, out: &mut Vec<u8>, stream: Stream, restarts: u64) {
        let i = idx(stream);
        self.restarts[i] = restarts;
        self.last[i] = 0;
        sse::truncated_event(out, stream, &event_id(self.which, self.last));
    }

    /// Ends the stream after at most `k` `log` events (`?count=K`), without
    /// `complete` when it is cut there.
    pub fn limit(&mut self, k: u64) {
        self.remaining = Some(self.remaining.map_or(k, |r| r.min(k)));
    }

    /// True when there is nothing to send: the next read finds no line. The line
    /// read to find out is kept for [`Follower::pump`]. Used with `done` for the
    /// 204 answer to a reconnect to an ended job.
    pub fn at_end(&mut self, done: bool) -> Result<bool> {
        while self.pending.is_none() {
            match self.read(done)? {
                None => return Ok(true),
                Some(l) if self.skip > 0 && !l.restarted => {
                    self.skip -= 1;
                    self.last[idx(l.stream)] = l.number;
                }
                Some(l) => self.pending = Some(l),
            }
        }
        Ok(false)
    }

    fn read(&mut self, done: bool) -> Result<Option<LogLine>> {
        loop {
            if self.cut {
                return Ok(None);
            }
            let lines = self
                .lines
                .as_mut()
                .context("the follower's reader is closed")?;
            let Some(line) = lines.next(done)? else {
                return Ok(None);
            };
            if let Some(stop) = self.stop_at {
                if line.offset >= stop[idx(line.stream)] {
                    return Ok(None);
                }
            }
            if let Some(upto) = self.upto {
                // Lines up to the cursor only; once each stream has given
                // its last one, reading stops (for an event id of this
                // stream, at the first line beyond it).
                let i = idx(line.stream);
                let beyond = line.number > upto[i];
                if line.number >= upto[i] {
                    self.passed[i] = true;
                    self.cut = self.passed == [true; 2];
                }
                if beyond {
                    if self.cut {
                        return Ok(None);
                    }
                    continue;
                }
            }
            if line.restarted {
                // The job emptied its log: every line from here is new, and
                // a line asked for by number was one of the old log.
                self.want[idx(line.stream)] = 0;
            }
            if line.number >= self.want[idx(line.stream)] {
                return Ok(Some(line));
            }
        }
    }

    /// Appends events to `out` until it holds `high_water` bytes or the log has no
    /// more lines. `complete` is the job's end (the data of `event: complete`)
    /// once it has ended: it must be known before the last read, so that every
    /// line written before the end is sent before `complete`.
    pub fn pump(
        &mut self,
        out: &mut Vec<u8>,
        high_water: usize,
        complete: Option<&serde_json::Value>,
    ) -> Result<Pumped> {
        let done = complete.is_some();
        // Looked at again only once caught up (see `Follower::partial`).
        self.partial_due = None;
        while out.len() < high_water {
            if self.remaining == Some(0) {
                // Cut by `count`: no `complete` unless the log ended there too.
                if let Some(data) = complete.filter(|_| self.upto.is_none()) {
                    if self.at_end(true)? {
                        sse::complete_event(out, data);
                    }
                }
                return Ok(Pumped::Done);
            }
            let line = match self.pending.take() {
                Some(l) => Some(l),
                None => self.read(done)?,
            };
            let Some(line) = line else {
                // A range before a cursor is not the end of the log.
                if let Some(data) = complete.filter(|_| self.upto.is_none()) {
                    sse::complete_event(out, data);
                    return Ok(Pumped::Done);
                }
                return Ok(if self.follow {
                    Pumped::Idle
                } else {
                    Pumped::Done
                });
            };
            let i = idx(line.stream);
            let mut before = self.last[i];
            if line.restarted {
                self.tell_truncated(out, line.stream, self.restarts[i] + 1);
                before = 0;
                self.skip = 0;
            }
            self.last[i] = line.number;
            self.partials.line_ended(line.stream);
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            gap_before(out, &line, before);
            let id = event_id(self.which, self.last);
            sse::log_event(out, &line, &id, self.which == Which::Combined, self.format);
            if let Some(r) = &mut self.remaining {
                *r -= 1;
            }
        }
        Ok(Pumped::Full)
    }
}

/// The `event: gap` that goes before `line` when lines are missing after line
/// `before` of its stream: cut by the job's size limit (issue 12, the counts
/// come with the line), or no longer held by the store (trimmed Redis, issue
/// 10). Never silent.
fn gap_before(out: &mut Vec<u8>, line: &LogLine, before: u64) {
    if let Some(o) = line.omitted_before {
        sse::gap_event(out, line, o);
    } else if line.number > before + 1 {
        gap_event(out, line.stream, before + 1, line.number - 1);
    }
}

/// `event: gap` for lines `from..=to` of `stream` that the store no longer
/// holds; their full text is on the job's own machine (its `tail_url`).
fn gap_event(out: &mut Vec<u8>, stream: Stream, from: u64, to: u64) {
    let data = serde_json::json!({"stream": stream.name(), "from": from, "to": to});
    out.extend_from_slice(format!("event: gap\ndata: {data}\n\n").as_bytes());
}

/// Bytes of encoded events a job's [`Shared`] keeps: at 1,000 lines/s of
/// ~100-byte lines, several seconds of history, so a follower that is a little
/// slow still finds its place there; slower ones read the store. One per
/// (job, stream, format) followed, so memory stays small whatever the number of
/// followers (issue 11, point 6: 1,000 followers under 32 MiB).
pub const SHARED_BYTES: usize = 512 * 1024;

/// Bytes of events [`Shared`] reads at once: a quarter of what it keeps, so
/// followers served one after another from one burst all find their place.
const ADVANCE_BYTES: usize = SHARED_BYTES / 4;

/// One event kept by [`Shared`], with the positions before and after it.
struct Entry {
    before: [u64; 2],
    after: [u64; 2],
    bytes: Vec<u8>,
    /// The `event: truncated` of this stream: numbers start again after it.
    restart: Option<Stream>,
}

/// The newest events of one job, for one `which` and `format`, each read and
/// encoded once and copied to every follower that is caught up (issue 11,
/// point 6: a thousand followers each re-reading the files and re-encoding
/// every line made the last line arrive seconds late).
pub struct Shared {
    lines: Lines,
    which: Which,
    format: Format,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The position after the newest event (what its reader has read).
    end: [u64; 2],
    /// Truncations of each stream's log before the newest event, counted
    /// from those its first follower had been told (see `Follower::restarts`).
    restarts: [u64; 2],
    /// The job's sizes when the reader last reached the end of the log.
    seen: [u64; 4],
    /// The reader reached the end of the log of an ended job: nothing more.
    finished: bool,
    /// The lines in progress, encoded once for every follower.
    partials: Partials,
}

impl Shared {
    /// Shared events of `which` of job `id` starting after `last`, for
    /// followers told of `restarts` truncations.
    pub fn new(
        store: &dyn LogStore,
        id: &JobId,
        which: Which,
        format: Format,
        (last, restarts): ([u64; 2], [u64; 2]),
    ) -> Result<Shared> {
        Ok(Shared {
            lines: Lines::after(store, id, which, last)?,
            which,
            format,
            entries: VecDeque::new(),
            bytes: 0,
            end: last,
            restarts,
            seen: [u64::MAX; 4],
            finished: false,
            partials: Partials::default(),
        })
    }

    /// Reads and encodes what the job has added since the last call, at most
    /// [`ADVANCE_BYTES`] at a time, so the events read for the follower that
    /// asked are never the ones dropped; the oldest go past [`SHARED_BYTES`].
    fn advance(&mut self, sizes: [u64; 4], done: bool) -> Result<()> {
        if self.finished || (self.seen == sizes && !done) {
            return Ok(());
        }
        let mut read = 0;
        while read < ADVANCE_BYTES {
            let Some(line) = self.lines.next(done)? else {
                self.seen = sizes;
                self.finished = done;
                break;
            };
            let i = idx(line.stream);
            if line.restarted {
                // The job emptied its log. The events kept are of lines it
                // no longer has, and numbers start again: a follower still
                // behind them is told of the truncation and reads the new
                // log itself (see `Follower::pump_shared`).
                let before = self.end;
                self.entries.clear();
                self.end[i] = 0;
                self.restarts[i] += 1;
                let mut bytes = Vec::new();
                sse::truncated_event(&mut bytes, line.stream, &event_id(self.which, self.end));
                self.bytes = bytes.len();
                self.entries.push_back(Entry {
                    before,
                    after: self.end,
                    bytes,
                    restart: Some(line.stream),
                });
            } else if line.number <= self.end[i] {
                // Started after a line past the end then (`since=N`): the
                // lines before it are not events.
                continue;
            }
            let before = self.end;
            self.end[idx(line.stream)] = line.number;
            self.partials.line_ended(line.stream);
            let mut bytes = Vec::new();
            gap_before(&mut bytes, &line, before[idx(line.stream)]);
            let id = event_id(self.which, self.end);
            sse::log_event(
                &mut bytes,
                &line,
                &id,
                self.which == Which::Combined,
                self.format,
            );
            read += bytes.len();
            self.bytes += bytes.len();
            self.entries.push_back(Entry {
                before,
                after: self.end,
                bytes,
                restart: None,
            });
            while self.bytes > SHARED_BYTES {
                match self.entries.pop_front() {
                    Some(e) => self.bytes -= e.bytes.len(),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Where a follower that has delivered up to `last` goes on in the kept
    /// events: `Some(entries.len())` when it is caught up, `None` when its
    /// place is not kept (behind, ahead, or reading along another path).
    /// `restarts` are the truncations the follower was told: the same line
    /// numbers name other lines before a truncation and after it.
    fn place(&self, last: [u64; 2], restarts: [u64; 2]) -> Option<usize> {
        // Only the oldest event kept can be a truncation (they are dropped
        // at one): the events after it count from its `after`.
        let (skip, first) = match self.entries.front() {
            Some(e) if e.restart.is_some() => {
                let mut told = self.restarts;
                if let Some(s) = e.restart {
                    told[idx(s)] -= 1;
                }
                if e.before == last && restarts == told {
                    return Some(0);
                }
                (1, e.after)
            }
            Some(e) => (0, e.before),
            None => (0, self.end),
        };
        if restarts != self.restarts {
            return None;
        }
        let k = skip + (last[0] + last[1]).checked_sub(first[0] + first[1])? as usize;
        match self.entries.get(k) {
            Some(e) if e.before == last => Some(k),
            None if k == self.entries.len() && self.end == last => Some(k),
            _ => None,
        }
    }
}

impl Follower {
    /// True when this follower can be served from its job's [`Shared`]
    /// events: a plain live follower with nothing of its own in hand.
    pub fn shares(&self) -> bool {
        self.follow
            && self.stop_at.is_none()
            && self.skip == 0
            && self.pending.is_none()
            && self.remaining.is_none()
    }

    /// Which lines and how encoded: the key of the [`Shared`] events.
    pub fn kind(&self) -> (Which, Format) {
        (self.which, self.format)
    }

    /// The last line numbers delivered, stdout and stderr, and the
    /// truncations of each log told before them: where shared events that
    /// this follower starts go on.
    pub fn last(&self) -> ([u64; 2], [u64; 2]) {
        (self.last, self.restarts)
    }

    /// Like [`Follower::pump`], but copying events from `shared` (after
    /// bringing it up to `sizes`) while this follower's place is kept there.
    /// Returns `None` when it is not: the caller pumps from the store instead
    /// (the follower's own readers are reopened where it is).
    pub fn pump_shared(
        &mut self,
        store: &dyn LogStore,
        shared: &mut Shared,
        out: &mut Vec<u8>,
        high_water: usize,
        complete: Option<&serde_json::Value>,
        sizes: [u64; 4],
    ) -> Result<Option<Pumped>> {
        if !self.shares() || shared.kind() != self.kind() {
            return Ok(None);
        }
        self.partial_due = None;
        let done = complete.is_some();
        loop {
            shared.advance(sizes, done)?;
            let Some(mut k) = shared.place(self.last, self.restarts) else {
                if self.lines.is_none() {
                    // Served from the shared events until it fell behind
                    // them: a truncation since then emptied the log of the
                    // lines it had still to read. It says so and reads the
                    // new log from its start.
                    for s in Stream::BOTH {
                        let told = shared.restarts[idx(s)];
                        if told > self.restarts[idx(s)] {
                            self.tell_truncated(out, s, told);
                        }
                    }
                    self.lines = Some(Lines::after(store, &self.job, self.which, self.last)?);
                }
                return Ok(None);
            };
            // Served from the shared events: the own readers would only go
            // stale and hold memory.
            self.lines = None;
            while k < shared.entries.len() {
                if out.len() >= high_water {
                    return Ok(Some(Pumped::Full));
                }
                let e = &shared.entries[k];
                out.extend_from_slice(&e.bytes);
                self.last = e.after;
                if let Some(s) = e.restart {
                    self.restarts[idx(s)] += 1;
                }
                k += 1;
            }
            if shared.finished {
                if let Some(data) = complete {
                    sse::complete_event(out, data);
                    return Ok(Some(Pumped::Done));
                }
            }
            if shared.seen == sizes && (!done || shared.finished) {
                return Ok(Some(Pumped::Idle));
            }
            if out.len() >= high_water {
                return Ok(Some(Pumped::Full));
            }
        }
    }
}

impl Shared {
    fn kind(&self) -> (Which, Format) {
        (self.which, self.format)
    }
}

impl Follower {
    /// Appends `event: partial` for each line in progress this live follower
    /// has not been sent yet (issue 11, point 4). Call it when the follower
    /// is caught up (pumped `Idle`) while the job runs: `shared` are its
    /// job's shared events, which then serve it the events they encode once
    /// for all. Held-back changes are looked at again at
    /// [`Follower::partial_due`].
    pub fn partial(
        &mut self,
        store: &dyn LogStore,
        shared: Option<&mut Shared>,
        out: &mut Vec<u8>,
        sizes: [u64; 4],
        now: Instant,
    ) -> Result<()> {
        self.partial_due = None;
        if !self.follow || self.pending.is_some() || self.cut {
            return Ok(());
        }
        let served = shared.filter(|sh| {
            self.lines.is_none()
                && sh.kind() == self.kind()
                && sh.end == self.last
                && sh.restarts == self.restarts
        });
        let own = served.is_none();
        let (partials, heads) = match served {
            Some(sh) => {
                let heads = sh.lines.heads();
                (&mut sh.partials, heads)
            }
            None => match &self.lines {
                Some(l) => (&mut self.partials, l.heads()),
                None => return Ok(()),
            },
        };
        // A line before one asked for (`since=N` past the end) is not sent,
        // nor its beginning.
        let heads = heads.map(|h| h.filter(|h| h.line >= self.want[idx(h.stream)]));
        partials.look(store, &self.job, self.which, self.format, heads, sizes, now)?;
        for (i, t) in partials.streams.iter().enumerate() {
            if !t.event.is_empty() && t.sent != self.partial_sent[i] {
                out.extend_from_slice(&t.event);
                self.partial_sent[i] = t.sent;
            }
        }
        self.partial_due = partials.due;
        if own {
            // Sent: a follower's own copy is not kept (a thousand slow
            // followers would each hold one); the job's shared one is, for
            // the others.
            for t in &mut self.partials.streams {
                t.event = Vec::new();
            }
        }
        Ok(())
    }

    /// When a line in progress that changed too soon after the last
    /// `partial` event is to be looked at again.
    pub fn partial_due(&self) -> Option<Instant> {
        self.partial_due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::both::{self, TestJob};
    use crate::store::Chunk;

    /// The job of `writes` in every store: each test runs against all of them
    /// (issue 9).
    fn jobs(tag: &str, writes: &[(Stream, &[u8])]) -> Vec<TestJob> {
        both::jobs(&format!("follow-{tag}"), writes)
    }

    fn ids_and_data(out: &[u8]) -> Vec<(String, String)> {
        fields(out, "event: log", ["id: ", "data: "])
    }

    /// Two fields (`names`, with their `: `) of each event in `out` that
    /// starts with `kind`.
    fn fields(out: &[u8], kind: &str, names: [&str; 2]) -> Vec<(String, String)> {
        let text = String::from_utf8(out.to_vec()).unwrap();
        text.split("\n\n")
            .filter(|e| e.starts_with(kind))
            .map(|e| {
                let field = |f: &str| {
                    e.lines()
                        .find_map(|l| l.strip_prefix(f))
                        .unwrap_or("")
                        .to_string()
                };
                (field(names[0]), field(names[1]))
            })
            .collect()
    }

    const BIG: usize = 1 << 20;

    /// A non-following text follower of both streams, starting at `start`.
    fn combined_text(t: &TestJob, start: StartAt) -> Follower {
        Follower::open(
            t.store.as_ref(),
            &t.id,
            Which::Combined,
            start,
            false,
            Format::Text,
            [99, 99, 0, 0],
        )
        .unwrap()
    }

    #[test]
    fn combined_ids_resume_both_streams_exactly() {
        for t in jobs(
            "resume",
            &[
                (Stream::Stdout, b"o1\n"),
                (Stream::Stderr, b"e1\n"),
                (Stream::Stdout, b"o2\n"),
                (Stream::Stderr, b"e2\n"),
            ],
        ) {
            let mut f = combined_text(&t, StartAt::Line(1));
            let mut out = Vec::new();
            assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Done);
            let got = ids_and_data(&out);
            assert_eq!(
                got,
                [("1.0", "o1"), ("1.1", "e1"), ("2.1", "o2"), ("2.2", "e2")]
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            );
            // Resume after the second event: o2 and e2 follow, nothing repeated.
            let from = parse_event_id(Which::Combined, "1.1").unwrap();
            let mut f = combined_text(&t, from);
            let mut out = Vec::new();
            f.pump(&mut out, BIG, None).unwrap();
            let data: Vec<_> = ids_and_data(&out).into_iter().map(|x| x.1).collect();
            assert_eq!(data, ["o2", "e2"], "{}", t.name);
        }
    }

    #[test]
    fn combined_tail_gives_the_last_merged_lines() {
        for t in jobs(
            "tail",
            &[
                (Stream::Stdout, b"o1\no2\n"),
                (Stream::Stderr, b"e1\n"),
                (Stream::Stdout, b"o3\n"),
            ],
        ) {
            let mut f = combined_text(&t, StartAt::Tail(2));
            let mut out = Vec::new();
            f.pump(&mut out, BIG, None).unwrap();
            assert_eq!(
                ids_and_data(&out),
                [("2.1", "e1"), ("3.1", "o3")].map(|(a, b)| (a.to_string(), b.to_string())),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn pumping_stops_at_the_bound_and_resumes() {
        let body: Vec<u8> = (1..=100)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        for t in jobs("bound", &[(Stream::Stdout, &body)]) {
            let which = Which::One(Stream::Stdout);
            let mut f = Follower::open(
                t.store.as_ref(),
                &t.id,
                which,
                StartAt::Line(1),
                true,
                Format::Text,
                [0, 0, 0, 0],
            )
            .unwrap();
            let mut out = Vec::new();
            assert_eq!(f.pump(&mut out, 100, None).unwrap(), Pumped::Full);
            assert!(out.len() < 100 + 64);
            let first = ids_and_data(&out).len();
            out.clear();
            assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Idle);
            assert_eq!(ids_and_data(&out).len() + first, 100);
            let end = serde_json::json!({"status": "succeeded"});
            out.clear();
            assert_eq!(f.pump(&mut out, BIG, Some(&end)).unwrap(), Pumped::Done);
            assert_eq!(
                out,
                b"event: complete\ndata: {\"status\":\"succeeded\"}\n\n"
            );
        }
    }

    #[test]
    fn a_one_shot_request_stops_at_the_size_it_saw() {
        for mut t in jobs("oneshot", &[(Stream::Stdout, b"a\nb\n")]) {
            let which = Which::One(Stream::Stdout);
            let mut f = Follower::open(
                t.store.as_ref(),
                &t.id,
                which,
                StartAt::Line(1),
                false,
                Format::Text,
                [4, 0, 0, 0],
            )
            .unwrap();
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"c\n", 9))
                .unwrap();
            let mut out = Vec::new();
            assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Done);
            assert_eq!(ids_and_data(&out).len(), 2, "{}", t.name);
        }
    }

    #[test]
    fn a_following_combined_stream_takes_new_lines_then_ends() {
        for mut t in jobs("live", &[(Stream::Stdout, b"o1\n")]) {
            let mut f = Follower::open(
                t.store.as_ref(),
                &t.id,
                Which::Combined,
                StartAt::Line(1),
                true,
                Format::Text,
                [0; 4],
            )
            .unwrap();
            let mut out = Vec::new();
            assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Idle);
            assert!(f.at_end(false).unwrap(), "{}", t.name);
            t.sink()
                .append(Stream::Stderr, &Chunk::new(b"e1\npart", 5))
                .unwrap();
            assert!(!f.at_end(false).unwrap(), "{}", t.name);
            assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Idle);
            // The job ended: its unfinished line comes before `complete`.
            let end = serde_json::json!({"status": "failed"});
            assert_eq!(f.pump(&mut out, BIG, Some(&end)).unwrap(), Pumped::Done);
            assert_eq!(
                ids_and_data(&out),
                [("1.0", "o1"), ("1.1", "e1"), ("1.2", "part")]
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                "{}",
                t.name
            );
            assert!(out.ends_with(b"event: complete\ndata: {\"status\":\"failed\"}\n\n"));
        }
    }

    #[test]
    fn caught_up_followers_share_events_encoded_once_and_slow_ones_read_the_store() {
        for mut t in jobs("shared", &[(Stream::Stdout, b"o1\n")]) {
            let open = |t: &TestJob| {
                Follower::open(
                    t.store.as_ref(),
                    &t.id,
                    Which::Combined,
                    StartAt::Line(1),
                    true,
                    Format::Text,
                    [0; 4],
                )
                .unwrap()
            };
            let (mut a, mut b) = (open(&t), open(&t));
            let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
            assert_eq!(a.pump(&mut out_a, BIG, None).unwrap(), Pumped::Idle);
            let mut shared = Shared::new(
                t.store.as_ref(),
                &t.id,
                Which::Combined,
                Format::Text,
                a.last(),
            )
            .unwrap();
            // `b` has not read its first line yet: its place is not kept.
            let sizes = t.store.progress(&t.id);
            let got = b.pump_shared(t.store.as_ref(), &mut shared, &mut out_b, BIG, None, sizes);
            assert!(got.unwrap().is_none(), "{}", t.name);
            assert_eq!(b.pump(&mut out_b, BIG, None).unwrap(), Pumped::Idle);

            t.sink()
                .append(Stream::Stderr, &Chunk::new(b"e1\n", 5))
                .unwrap();
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"o2\n", 6))
                .unwrap();
            let sizes = t.store.progress(&t.id);
            for (f, out) in [(&mut a, &mut out_a), (&mut b, &mut out_b)] {
                let got = f.pump_shared(t.store.as_ref(), &mut shared, out, BIG, None, sizes);
                assert_eq!(got.unwrap(), Some(Pumped::Idle), "{}", t.name);
                // Served from the shared events, its own readers are let go.
                assert!(f.lines.is_none(), "{}", t.name);
            }
            assert_eq!(out_a, out_b, "{}", t.name);
            assert_eq!(
                ids_and_data(&out_a),
                [("1.0", "o1"), ("1.1", "e1"), ("2.1", "o2")]
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                "{}",
                t.name
            );

            // More than the shared events keep, while `b` does not read: `a`
            // keeps up from them; `b` finds its place gone and reads the store.
            let line = vec![b'x'; 1000];
            let mut chunk = Vec::new();
            for _ in 0..(2 * SHARED_BYTES / 1000) {
                chunk.extend_from_slice(&line);
                chunk.push(b'\n');
            }
            t.sink()
                .append(Stream::Stdout, &Chunk::new(&chunk, 7))
                .unwrap();
            let sizes = t.store.progress(&t.id);
            let mut more_a = Vec::new();
            loop {
                let room = more_a.len() + BIG;
                let got = a.pump_shared(
                    t.store.as_ref(),
                    &mut shared,
                    &mut more_a,
                    room,
                    None,
                    sizes,
                );
                if got.unwrap() == Some(Pumped::Idle) {
                    break;
                }
            }
            let n = 2 * SHARED_BYTES / 1000;
            assert_eq!(ids_and_data(&more_a).len(), n, "{}", t.name);
            let got = b.pump_shared(
                t.store.as_ref(),
                &mut shared,
                &mut Vec::new(),
                BIG,
                None,
                sizes,
            );
            assert!(got.unwrap().is_none(), "{}", t.name);
            let mut more_b = Vec::new();
            loop {
                let room = more_b.len() + BIG;
                if b.pump(&mut more_b, room, None).unwrap() == Pumped::Idle {
                    break;
                }
            }
            assert_eq!(more_a, more_b, "{}", t.name);

            // The end: `complete` after the last line, from the shared events.
            t.sink()
                .append(Stream::Stderr, &Chunk::new(b"last", 8))
                .unwrap();
            let sizes = t.store.progress(&t.id);
            let end = serde_json::json!({"status": "succeeded"});
            let mut tail = Vec::new();
            let got = a.pump_shared(
                t.store.as_ref(),
                &mut shared,
                &mut tail,
                BIG,
                Some(&end),
                sizes,
            );
            assert_eq!(got.unwrap(), Some(Pumped::Done), "{}", t.name);
            let want = format!("{}.2", 2 + n);
            assert_eq!(
                ids_and_data(&tail),
                [(want, "last".to_string())],
                "{}",
                t.name
            );
            assert!(tail.ends_with(b"event: complete\ndata: {\"status\":\"succeeded\"}\n\n"));
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn count_ends_the_stream_after_k_events_without_complete() {
        for t in jobs("count", &[(Stream::Stdout, b"a\nb\nc\n")]) {
            let end = serde_json::json!({"status": "succeeded"});
            let mut f = combined_text(&t, StartAt::Line(1));
            f.limit(2);
            let mut out = Vec::new();
            assert_eq!(f.pump(&mut out, BIG, Some(&end)).unwrap(), Pumped::Done);
            assert_eq!(ids_and_data(&out), pairs(&[("1.0", "a"), ("2.0", "b")]));
            assert!(!contains_complete(&out), "{}", t.name);
            // The log ends first: the normal ending.
            let mut f = combined_text(&t, StartAt::Line(2));
            f.limit(5);
            let mut out = Vec::new();
            assert_eq!(f.pump(&mut out, BIG, Some(&end)).unwrap(), Pumped::Done);
            assert_eq!(ids_and_data(&out).len(), 2, "{}", t.name);
            assert!(contains_complete(&out), "{}", t.name);
            // Exactly the lines left: the log ended there too.
            let mut f = combined_text(&t, StartAt::Line(2));
            f.limit(2);
            let mut out = Vec::new();
            f.pump(&mut out, BIG, Some(&end)).unwrap();
            assert!(contains_complete(&out), "{}", t.name);
        }
    }

    fn contains_complete(out: &[u8]) -> bool {
        String::from_utf8_lossy(out).contains("event: complete")
    }

    #[test]
    fn before_gives_the_lines_that_end_at_a_cursor() {
        let body: Vec<u8> = (1..=10)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        for t in jobs("before-one", &[(Stream::Stderr, &body)]) {
            let end = serde_json::json!({"status": "succeeded"});
            let open = |from| {
                Follower::open(
                    t.store.as_ref(),
                    &t.id,
                    Which::One(Stream::Stderr),
                    from,
                    false,
                    Format::Text,
                    [0, 99, 0, 0],
                )
                .unwrap()
            };
            let mut out = Vec::new();
            let mut f = open(StartAt::Before([7, 0], 3));
            assert_eq!(f.pump(&mut out, BIG, Some(&end)).unwrap(), Pumped::Done);
            assert_eq!(
                ids_and_data(&out),
                pairs(&[("5", "5"), ("6", "6"), ("7", "7")]),
                "{}",
                t.name
            );
            assert!(!contains_complete(&out), "a range is not the end");
            let mut out = Vec::new();
            open(StartAt::Before([2, 0], 5))
                .pump(&mut out, BIG, None)
                .unwrap();
            assert_eq!(ids_and_data(&out), pairs(&[("1", "1"), ("2", "2")]));
        }
    }

    #[test]
    fn before_on_combined_gives_the_last_merged_lines_up_to_the_cursor() {
        for t in jobs(
            "before-combined",
            &[
                (Stream::Stdout, b"o1\no2\n"),
                (Stream::Stderr, b"e1\n"),
                (Stream::Stdout, b"o3\n"),
                (Stream::Stderr, b"e2\ne3\n"),
                (Stream::Stdout, b"o4\n"),
            ],
        ) {
            let mut out = Vec::new();
            let mut f = combined_text(&t, StartAt::Before([3, 2], 3));
            assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Done);
            assert_eq!(
                ids_and_data(&out),
                pairs(&[("2.1", "e1"), ("3.1", "o3"), ("3.2", "e2")]),
                "{}",
                t.name
            );
            let mut out = Vec::new();
            combined_text(&t, StartAt::Before([1, 0], 3))
                .pump(&mut out, BIG, None)
                .unwrap();
            assert_eq!(ids_and_data(&out), pairs(&[("1.0", "o1")]), "{}", t.name);
            let mut out = Vec::new();
            combined_text(&t, StartAt::Before([4, 3], 100))
                .pump(&mut out, BIG, None)
                .unwrap();
            assert_eq!(ids_and_data(&out).len(), 7, "{}", t.name);
            // Not a place a stream reached (o2 came before e1): the last
            // lines among stdout up to 1 and stderr up to 3, and past the
            // end of stdout its last line.
            let data = |upto: [u64; 2], k: u64| {
                let mut out = Vec::new();
                combined_text(&t, StartAt::Before(upto, k))
                    .pump(&mut out, BIG, None)
                    .unwrap();
                ids_and_data(&out)
                    .into_iter()
                    .map(|x| x.1)
                    .collect::<Vec<_>>()
            };
            assert_eq!(data([1, 3], 3), ["e1", "e2", "e3"], "{}", t.name);
            assert_eq!(data([9, 1], 2), ["o3", "o4"], "{}", t.name);
            assert_eq!(data([0, 0], 2), Vec::<String>::new(), "{}", t.name);
        }
    }

    #[test]
    fn a_line_in_progress_is_sent_once_per_change_and_at_most_once_per_window() {
        for mut t in jobs("partial", &[(Stream::Stdout, b"o1\n\rab")]) {
            let (store, id) = (t.store.clone(), t.id.clone());
            let mut f = Follower::open(
                store.as_ref(),
                &id,
                Which::One(Stream::Stdout),
                StartAt::Line(1),
                true,
                Format::Text,
                [0; 4],
            )
            .unwrap();
            let mut out = Vec::new();
            assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Idle);
            let partial = |f: &mut Follower, now: Instant| {
                let mut out = Vec::new();
                let sizes = store.progress(&id);
                f.partial(store.as_ref(), None, &mut out, sizes, now)
                    .unwrap();
                String::from_utf8(out).unwrap()
            };
            let t0 = Instant::now();
            assert_eq!(
                partial(&mut f, t0),
                "event: partial\ndata: ab\n\n",
                "{}",
                t.name
            );
            assert_eq!(partial(&mut f, t0 + PARTIAL_EVERY * 5), "", "unchanged");
            // Grown within the window: held back, and looked at again when
            // the window ends.
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"\rabc", 5))
                .unwrap();
            let t1 = t0 + PARTIAL_EVERY * 5;
            assert_eq!(partial(&mut f, t1), "event: partial\ndata: abc\n\n");
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"d", 6))
                .unwrap();
            assert_eq!(partial(&mut f, t1 + PARTIAL_EVERY / 2), "");
            assert_eq!(f.partial_due(), Some(t1 + PARTIAL_EVERY), "{}", t.name);
            assert_eq!(
                partial(&mut f, t1 + PARTIAL_EVERY),
                "event: partial\ndata: abcd\n\n"
            );
            assert_eq!(f.partial_due(), None);
            // The line ends: its log event, and no partial until the next.
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"\n", 7))
                .unwrap();
            let mut out = Vec::new();
            assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Idle);
            assert_eq!(ids_and_data(&out), pairs(&[("2", "abcd")]), "{}", t.name);
            assert_eq!(partial(&mut f, t1 + PARTIAL_EVERY * 3), "");
        }
    }

    #[test]
    fn followers_served_from_shared_events_share_one_partial_event() {
        for mut t in jobs("partial-shared", &[(Stream::Stdout, b"o1\n")]) {
            let (store, id) = (t.store.clone(), t.id.clone());
            let open = || {
                Follower::open(
                    store.as_ref(),
                    &id,
                    Which::Combined,
                    StartAt::Line(1),
                    true,
                    Format::Json,
                    [0; 4],
                )
                .unwrap()
            };
            let (mut a, mut b) = (open(), open());
            for f in [&mut a, &mut b] {
                assert_eq!(f.pump(&mut Vec::new(), BIG, None).unwrap(), Pumped::Idle);
            }
            let mut shared =
                Shared::new(store.as_ref(), &id, Which::Combined, Format::Json, a.last()).unwrap();
            t.sink()
                .append(Stream::Stderr, &Chunk::new(b"e1\n\rx", 5))
                .unwrap();
            let sizes = store.progress(&id);
            let now = Instant::now();
            let mut outs = Vec::new();
            for f in [&mut a, &mut b] {
                let mut out = Vec::new();
                let got = f.pump_shared(store.as_ref(), &mut shared, &mut out, BIG, None, sizes);
                assert_eq!(got.unwrap(), Some(Pumped::Idle), "{}", t.name);
                f.partial(store.as_ref(), Some(&mut shared), &mut out, sizes, now)
                    .unwrap();
                // Encoded once, in the shared events: no copy of its own.
                assert!(f.partials.streams.iter().all(|p| p.sent.is_none()));
                outs.push(String::from_utf8(out).unwrap());
            }
            assert_eq!(outs[0], outs[1], "{}", t.name);
            let partial = "event: partial\nstream: stderr\ndata: {\"stream\":\"stderr\",\
                 \"line\":2,\"text\":\"\\rx\",\"display\":\"x\",\"len\":2,\"truncated\":false}\n\n";
            // After the log event of the line before it.
            let log = outs[0].find("event: log\nid: 1.1\n");
            assert!(
                log.is_some_and(|at| outs[0][at..].contains(partial)),
                "{}",
                outs[0]
            );
            // Sent once: nothing new, nothing again.
            let mut out = Vec::new();
            a.partial(store.as_ref(), Some(&mut shared), &mut out, sizes, now)
                .unwrap();
            assert!(out.is_empty());
        }
    }

    #[test]
    fn followers_are_told_of_a_truncation_also_when_behind_the_shared_events() {
        for mut t in jobs("truncated", &[(Stream::Stdout, b"a\nb\n")]) {
            let store = t.store.clone();
            let id = t.id.clone();
            let open = || {
                let which = Which::One(Stream::Stdout);
                let from = StartAt::Line(1);
                Follower::open(store.as_ref(), &id, which, from, true, Format::Text, [0; 4])
                    .unwrap()
            };
            let (mut a, mut b) = (open(), open());
            for f in [&mut a, &mut b] {
                assert_eq!(f.pump(&mut Vec::new(), BIG, None).unwrap(), Pumped::Idle);
            }
            let which = Which::One(Stream::Stdout);
            let mut shared =
                Shared::new(store.as_ref(), &id, which, Format::Text, a.last()).unwrap();
            // Both served from the shared events, then only `a` reads on.
            let pump = |f: &mut Follower, shared: &mut Shared| -> Vec<(String, String)> {
                let mut out = Vec::new();
                let sizes = store.progress(&id);
                let got = f.pump_shared(store.as_ref(), shared, &mut out, BIG, None, sizes);
                if got.unwrap().is_none() {
                    assert_eq!(f.pump(&mut out, BIG, None).unwrap(), Pumped::Idle);
                }
                fields(&out, "event: ", ["event: ", "id: "])
            };
            let (a_got, b_got) = (pump(&mut a, &mut shared), pump(&mut b, &mut shared));
            assert!(a_got.is_empty() && b_got.is_empty(), "{a_got:?} {b_got:?}");
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"c\n", 7))
                .unwrap();
            let ev = |e: &str, id: &str| (e.to_string(), id.to_string());
            assert_eq!(pump(&mut a, &mut shared), [ev("log", "3")]);
            if !t.empty_log(Stream::Stdout) {
                continue; // a memory store's logs only grow
            }
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"d\n", 8))
                .unwrap();
            let told = [ev("truncated", "0"), ev("log", "1")];
            assert_eq!(pump(&mut a, &mut shared), told);
            // `b` had not read `c` when the log was emptied: the shared
            // events of the old log are gone, and it is told all the same.
            assert_eq!(pump(&mut b, &mut shared), told);
            // Both go on in the new log's numbering, `a` from the shared
            // events, `b` from its own readers until it catches up.
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"e\n", 9))
                .unwrap();
            assert_eq!(pump(&mut a, &mut shared), [ev("log", "2")]);
            assert_eq!(pump(&mut b, &mut shared), [ev("log", "2")]);
        }
    }

    #[test]
    fn a_huge_line_in_progress_costs_only_its_last_bytes() {
        let mut line = vec![b'x'; 3 * PARTIAL_BYTES as usize];
        line.extend_from_slice("\u{e9}nd".as_bytes());
        for t in jobs("partial-huge", &[(Stream::Stderr, &line)]) {
            let size = line.len() as u64;
            let p = read_partial(t.store.as_ref(), &t.id, Stream::Stderr, 1, 0, size)
                .unwrap()
                .unwrap();
            assert_eq!((p.line, p.len, p.truncated), (1, size, true));
            assert_eq!(p.tail.len() as u64, PARTIAL_BYTES, "{}", t.name);
            assert!(p.tail.ends_with("\u{e9}nd".as_bytes()));
            // A whole line not read yet is not a line in progress.
            let got = read_partial(t.store.as_ref(), &t.id, Stream::Stderr, 1, 0, 2);
            assert!(got.unwrap().is_some());
        }
        for t in jobs("partial-whole", &[(Stream::Stdout, b"a\nb")]) {
            let got = read_partial(t.store.as_ref(), &t.id, Stream::Stdout, 1, 0, 3);
            assert!(got.unwrap().is_none(), "{}", t.name);
        }
    }

    #[test]
    fn event_ids_parse_per_endpoint() {
        let one = Which::One(Stream::Stderr);
        assert_eq!(parse_event_id(one, "12"), Some(StartAt::After(12, 0)));
        assert_eq!(parse_event_id(one, "x"), None);
        assert_eq!(
            parse_event_id(Which::Combined, "3.4"),
            Some(StartAt::After(3, 4))
        );
        assert_eq!(parse_event_id(Which::Combined, "3"), None);
    }
}
