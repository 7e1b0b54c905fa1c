//! `logwrap logs`, `ls` and `show` (SPEC §4, issue 3): print what a job wrote,
//! follow it live, find jobs. Plain `logs` copies byte ranges of the log file, so
//! the output is the log byte for byte (binary, huge lines); the line modes
//! (`--all`, `--timestamps`, `--prefix`) go through the line readers.
//!
//! Exit status: 0 on success; 1 when the job or its log is not found, cannot be
//! read, or is deleted while followed; 2 for an invalid id or option (clap);
//! with `logs -f --exit-status`, the job's own status (137 when abandoned).

mod grep;
mod jobs;
mod ls;
mod remote;
mod watch;

pub use grep::{grep_cmd, GrepOptions};
pub use jobs::ABANDONED_EXIT;
pub(crate) use ls::escape_controls;
pub use ls::{ls_cmd, show_cmd, LsOptions, ShowOptions, DAMAGED};

use crate::exit;
use crate::metadata::Metadata;
use crate::reader::{CombinedReader, LineSource, LogLine, Start};
use crate::store::{self, JobId, LogStore, OmitCause, RawLog, Stream};
use crate::timefmt;
use anyhow::{Context, Result};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Longest part of a line the line modes keep in memory; longer lines are copied
/// from the file instead. 64 KiB holds nearly every real line (one read serves
/// many lines) while keeping memory small however long a line is.
const LINE_KEEP: usize = 64 * 1024;

/// How long `logs -f` waits for a job that has not created its directory yet: a
/// scheduler that starts `logs -f` as it launches the job loses a race of
/// milliseconds, while a mistyped id should not hang a terminal for long.
const WAIT_FOR_JOB: Duration = Duration::from_secs(5);

/// How often `logs -f` checks, without any file event, whether the job's writer
/// is still alive. The kernel closes the files of a wrapper killed by SIGKILL,
/// an inotify event that wakes us at once; but on a filesystem whose changes
/// inotify does not see (a network filesystem) nothing does, so this bounds how
/// late a job is found abandoned. Each check is a metadata read and one flock:
/// at 250 ms it costs nothing and still feels immediate.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(250);

/// Width of an RFC 3339 timestamp with milliseconds, for the placeholder of a
/// line whose time is unknown (no index), so columns stay aligned.
const TIMESTAMP_WIDTH: usize = 24;

/// Bytes copied at a time from a store that is not files.
const COPY_BLOCK: usize = 64 * 1024;

/// Buffer in front of stdout: the line modes print many short pieces per line,
/// and 64 KiB turns them into few writes.
const OUT_BUFFER: usize = 64 * 1024;

/// What `logwrap logs` was asked for, validated (built by `config.rs` from the
/// command line; an embedder builds it directly).
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    /// The job; `None` means the most recent one.
    pub id: Option<JobId>,
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u64>,
    /// Start at line N, counting from 1.
    pub since: Option<u64>,
    /// The job's stderr instead of its stdout.
    pub stderr: bool,
    /// stdout and stderr merged in arrival order.
    pub all: bool,
    /// Prefix each line with its stream.
    pub prefix: bool,
    /// Prefix each line with the time it was read.
    pub timestamps: bool,
    /// With `follow`: return the job's own exit status.
    pub exit_status: bool,
    /// Read through this logwrap HTTP server instead of `store`.
    pub server: Option<String>,
    /// Bearer token for `server`.
    pub token: Option<String>,
}

/// `logwrap logs`: prints from `store` (or from `args.server`); returns the exit
/// code. A reader that goes away is an error here, which `main` treats as the
/// end of the output.
pub fn logs_cmd(store: &dyn LogStore, args: LogsOptions) -> Result<i32> {
    logs(store, args)
}

/// Prints `logwrap: <msg>` on stderr in one write, so a reader of stderr (or
/// another process writing to the same terminal) never sees half a message.
pub(crate) fn say(msg: &str) {
    let _ = io::stderr().write_all(format!("logwrap: {msg}\n").as_bytes());
}

/// For a person at a terminal who asked for a job's stdout and got nothing
/// because everything went to stderr (issue 11, point 7): a one-line hint to
/// use `--stderr` or `--all`. Never when stdout is not a terminal, where the
/// empty output is the answer a script asked for.
fn stderr_only_hint(store: &dyn LogStore, id: &JobId, args: &LogsOptions) -> Option<String> {
    use std::io::IsTerminal;
    if args.stderr || args.all || !io::stdout().is_terminal() {
        return None;
    }
    let size = |s: Stream| store.open_raw(id, s).ok()?.len().ok();
    if size(Stream::Stdout)? != 0 {
        return None;
    }
    let err = size(Stream::Stderr).filter(|n| *n > 0)?;
    Some(format!(
        "job {id} wrote nothing to stdout but {err} bytes to stderr; \
         add --stderr (or --all for both) to see them"
    ))
}

fn logs(store: &dyn LogStore, args: LogsOptions) -> Result<i32> {
    if let Some(url) = &args.server {
        return remote::logs(&args, url);
    }
    let id = match &args.id {
        Some(id) => id.clone(),
        None => jobs::most_recent(store)?,
    };
    if store.metadata(&id).is_err_and(|e| store::is_not_found(&e)) {
        let appeared =
            args.follow && watch::wait_for_job(store, &id, WAIT_FOR_JOB, LIVENESS_INTERVAL)?;
        // Without --follow, a job whose wrapper is still setting it up is read
        // as it is (its logs exist before its metadata).
        if !appeared && store.open_raw(&id, Stream::Stdout).is_err() {
            return Err(jobs::not_found(store, &id));
        }
    }
    let finished = match store.live_metadata(&id) {
        Ok(m) => m.status.is_finished(),
        // A planted metadata.json (a link, a FIFO, 16 MiB of zeros) makes the
        // whole job suspect: say so rather than print what is beside it.
        Err(e) if store::is_damaged(&e) => return Err(e),
        Err(_) => !store.writer_alive(&id),
    };
    let mut printer = Printer::open(store, &id, &args)?;
    // A full copy of one stream needs no index; every other mode seeks with it
    // or takes timestamps and arrival order from it.
    let index_used =
        args.tail.is_some() || args.since.is_some_and(|n| n > 1) || args.all || args.timestamps;
    printer.warn_about_index(&id, finished, index_used)?;
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(OUT_BUFFER, stdout.lock());
    if !args.follow {
        // A snapshot: a running job's unfinished last line is shown as it is.
        printer.drain(true, &mut out)?;
        out.flush()?;
        if let Some(hint) = stderr_only_hint(store, &id, &args) {
            say(&hint);
        }
        return Ok(0);
    }
    match follow(store, &id, &mut printer, &mut out)? {
        FollowEnd::Ended(meta) => {
            if meta.status == crate::metadata::Status::Abandoned {
                say(&format!(
                    "job {id} was abandoned: its wrapper died without finishing"
                ));
            }
            Ok(if args.exit_status {
                jobs::exit_status(&meta)
            } else {
                0
            })
        }
        FollowEnd::Deleted => {
            say(&format!(
                "stopped following job {id}: its log was deleted (by `logwrap gc` or by hand)"
            ));
            Ok(exit::NOT_FOUND_READ)
        }
    }
}

/// Why following stopped.
enum FollowEnd {
    /// The job ended or was abandoned; its live metadata.
    Ended(Box<Metadata>),
    /// The log or the job's directory was removed.
    Deleted,
}

/// Prints new output whenever the store reports a change, until the job ends.
fn follow(
    store: &dyn LogStore,
    id: &JobId,
    printer: &mut Printer,
    out: &mut BufWriter<io::StdoutLock<'_>>,
) -> Result<FollowEnd> {
    let mut watcher = store.watcher()?;
    watcher.watch_job(id)?;
    let mut check_at = Instant::now();
    // Since when the store could not be reached (a Redis source down or
    // restarting): said once, then asked again every second, as `tail -F`
    // goes on; the reader keeps its place, so nothing is repeated or skipped.
    let mut down = false;
    loop {
        match follow_step(store, id, watcher.as_mut(), printer, out, &mut check_at) {
            Ok(Some(end)) => return Ok(end),
            Ok(None) => {
                if std::mem::take(&mut down) {
                    say("reading again: the source answers");
                }
            }
            Err(e) if store::is_unavailable(&e) => {
                out.flush()?;
                if !std::mem::replace(&mut down, true) {
                    say(&format!("warning: {e:#}; trying again every second"));
                }
                std::thread::sleep(UNAVAILABLE_RETRY);
                check_at = Instant::now();
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long `logs -f` waits before asking a store it could not reach again.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// One look of [`follow`]: the status, then new output, then a wait for
/// the next change. `Some` once following is over.
fn follow_step(
    store: &dyn LogStore,
    id: &JobId,
    watcher: &mut dyn store::ChangeWatcher,
    printer: &mut Printer,
    out: &mut BufWriter<io::StdoutLock<'_>>,
    check_at: &mut Instant,
) -> Result<Option<FollowEnd>> {
    // Look at the status before reading: once the job is seen ended, every
    // byte it wrote is already in the files, so this drain is the last.
    let mut ended = None;
    if Instant::now() >= *check_at {
        match store.live_metadata(id) {
            Ok(m) if m.status.is_finished() => ended = Some(m),
            Ok(_) => {}
            // metadata.json is only ever replaced, never removed, once the
            // job has started: gone means the job is being deleted (`rm -rf`
            // removes it before the directory).
            Err(e) if store::is_not_found(&e) || !store.job_exists(id) => {
                printer.drain(true, out)?;
                out.flush()?;
                return Ok(Some(FollowEnd::Deleted));
            }
            Err(e) => return Err(e),
        }
        *check_at = Instant::now() + LIVENESS_INTERVAL;
    }
    printer.drain(ended.is_some(), out)?;
    out.flush()?;
    if let Some(meta) = ended {
        return Ok(Some(FollowEnd::Ended(Box::new(meta))));
    }
    if printer.deleted()? {
        return Ok(Some(FollowEnd::Deleted));
    }
    let changes = watcher.wait(check_at.saturating_duration_since(Instant::now()))?;
    if changes.overflow || changes.jobs.iter().any(|(_, status)| *status) {
        *check_at = Instant::now();
    }
    Ok(None)
}

/// Turns a job's logs into output, as far as they are written.
enum Printer {
    Raw(RawPrinter),
    Lines(LinePrinter),
}

impl Printer {
    fn open(store: &dyn LogStore, id: &JobId, args: &LogsOptions) -> Result<Printer> {
        let stream = if args.stderr {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let start = match (args.tail, args.since) {
            (Some(n), _) => Start::Tail(n),
            (None, Some(n)) => Start::Line(n.max(1)),
            (None, None) => Start::Line(1),
        };
        let open = |s: Stream, start: Start, keep: usize| store.open_lines(id, s, start, keep);
        // Where the whole log is when the source lost part of it.
        let origin = store.metadata(id).ok().and_then(|m| m.tail_url);
        let file = |s: Stream| store.open_raw(id, s);
        // A log cut by a size limit is printed line by line, so the gap is
        // said where it is rather than copied as the hole it leaves.
        let limited = open(stream, Start::Line(1), 0)?.limited();
        if !(args.all || args.timestamps || args.prefix || limited) {
            let mut reader = open(stream, start, 0)?;
            return Ok(Printer::Raw(RawPrinter {
                want: first_wanted(&mut reader, start)?,
                reader,
                file: file(stream)?,
                pos: None,
                origin,
            }));
        }
        let style = LineStyle {
            timestamps: args.timestamps,
            prefix: args.prefix,
        };
        if !args.all {
            let mut reader = open(stream, start, LINE_KEEP)?;
            return Ok(Printer::Lines(LinePrinter {
                want: first_wanted(&mut reader, start)?,
                source: Source::One(reader),
                files: [Some(file(stream)?), None],
                skip: 0,
                style,
                stamp: (u64::MAX, String::new()),
                restarts: [0; 2],
                origin,
            }));
        }
        // Merged: `--tail N` is the last N lines of the merged output, which are
        // among the last N of each stream; `--since N` counts merged lines.
        let (each, skip) = match start {
            Start::Tail(n) => (Start::Tail(n), Some(n)),
            Start::Line(_) => (Start::Line(1), None),
        };
        let mut out = open(Stream::Stdout, each, LINE_KEEP)?;
        let mut err = open(Stream::Stderr, each, LINE_KEEP)?;
        let skip = match (skip, start) {
            (Some(n), _) => {
                let avail = |r: &mut Box<dyn LineSource>| -> Result<u64> {
                    Ok((r.total_lines()? + 1).saturating_sub(r.next_number()))
                };
                (avail(&mut out)? + avail(&mut err)?).saturating_sub(n)
            }
            (None, Start::Line(n)) => n.saturating_sub(1),
            (None, Start::Tail(_)) => 0,
        };
        Ok(Printer::Lines(LinePrinter {
            source: Source::Both(Box::new(CombinedReader::new(out, err))),
            files: [Some(file(Stream::Stdout)?), Some(file(Stream::Stderr)?)],
            skip,
            want: 0,
            style,
            stamp: (u64::MAX, String::new()),
            restarts: [0; 2],
            origin,
        }))
    }

    /// Prints everything written so far; `done` when the writer has finished, so
    /// a last line without a newline is complete too.
    fn drain(&mut self, done: bool, out: &mut BufWriter<io::StdoutLock<'_>>) -> Result<()> {
        match self {
            Printer::Raw(p) => p.drain(done, out),
            Printer::Lines(p) => p.drain(done, out),
        }
    }

    /// The raw logs being read (one per stream at most).
    fn files(&self) -> Vec<&dyn RawLog> {
        match self {
            Printer::Raw(p) => vec![p.file.as_ref()],
            Printer::Lines(p) => p.files.iter().flatten().map(|f| f.as_ref()).collect(),
        }
    }

    /// True once a log being read has been deleted.
    fn deleted(&self) -> Result<bool> {
        for f in self.files() {
            if f.removed().context("checking the log")? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One line on stderr per stream whose index cannot help, where it would
    /// (`index_used`): the reading still works, by scanning.
    fn warn_about_index(&self, id: &JobId, finished: bool, index_used: bool) -> Result<()> {
        if !index_used {
            return Ok(());
        }
        let readers: Vec<&dyn LineSource> = match self {
            Printer::Raw(p) => vec![p.reader.as_ref()],
            Printer::Lines(p) => match &p.source {
                Source::One(r) => vec![r.as_ref()],
                Source::Both(c) => c.readers().iter().map(|r| r.as_ref()).collect(),
            },
        };
        for r in readers {
            let len = match self.file(r.stream()) {
                Some(f) => f.len().context("reading the log's size")?,
                None => 0,
            };
            let name = r.stream().name();
            if len > 0 && !r.indexed() {
                say(&format!(
                    "warning: the {name} index of job {id} is missing or damaged; scanning the log instead (slower, no timestamps)"
                ));
            } else if finished && r.indexed() && r.indexed_bytes() < len {
                say(&format!(
                    "warning: the {name} index of job {id} covers {} of {len} bytes (cut short by a crash?); scanning the rest",
                    r.indexed_bytes()
                ));
            }
        }
        Ok(())
    }

    /// The raw log of `stream`, if it is being read.
    fn file(&self, stream: Stream) -> Option<&dyn RawLog> {
        match self {
            Printer::Raw(p) => (p.reader.stream() == stream).then_some(p.file.as_ref()),
            Printer::Lines(p) => p.files[usize::from(stream == Stream::Stderr)].as_deref(),
        }
    }
}

/// The number of the first line to print. A reader asked for a line past the
/// end waits at the last, unfinished line (so its numbering stays right), which
/// is not wanted: `--tail 0` prints nothing of what is there.
fn first_wanted(reader: &mut Box<dyn LineSource>, start: Start) -> Result<u64> {
    Ok(match start {
        Start::Line(n) => n,
        Start::Tail(n) => (reader.total_lines()? + 1).saturating_sub(n).max(1),
    })
}

/// Plain output: the log's bytes from the first wanted line on, copied as they
/// are, unfinished last line included (like `tail -f`).
struct RawPrinter {
    /// Finds where the first wanted line starts (and, for `--since` past the
    /// current end, waits for it).
    reader: Box<dyn LineSource>,
    /// First line to print.
    want: u64,
    file: Box<dyn RawLog>,
    /// Next byte to copy, once the first wanted line is reached.
    pos: Option<u64>,
    /// The job's `tail_url`: where the whole log is.
    origin: Option<String>,
}

impl RawPrinter {
    fn drain(&mut self, done: bool, out: &mut BufWriter<io::StdoutLock<'_>>) -> Result<()> {
        let pos = match self.pos {
            Some(pos) => pos,
            None => {
                while self.reader.next_number() < self.want {
                    let Some(line) = self.reader.next_line(done)? else {
                        return Ok(());
                    };
                    warn_lost(&line, self.origin.as_deref());
                }
                if let Some((from, to)) = self.reader.gap() {
                    warn_trimmed(
                        &format!("lines {from}-{to}"),
                        self.reader.stream(),
                        self.origin.as_deref(),
                    );
                }
                self.reader.position()
            }
        };
        let len = self.file.len().context("reading the log's size")?;
        let pos = if len < pos {
            out.flush()?;
            say(&truncated_notice(self.reader.stream()));
            0
        } else {
            pos
        };
        let pos = self.copy_held(pos, len, out)?;
        self.pos = Some(len.max(pos));
        Ok(())
    }

    /// Copies bytes `pos..len` of the log; returns where it got to. Bytes a
    /// Redis source trimmed away before they were copied (issue 10: a follow
    /// that fell behind `--ship-maxlen`) are said on stderr and passed over:
    /// the copy goes on from the first byte still held.
    fn copy_held(
        &self,
        mut pos: u64,
        len: u64,
        out: &mut BufWriter<io::StdoutLock<'_>>,
    ) -> Result<u64> {
        while pos < len {
            let mut copied = 0;
            let Err(e) = copy_counted(self.file.as_ref(), pos, len - pos, out, &mut copied) else {
                return Ok(len);
            };
            pos += copied;
            let held = match self.file.omitted_range() {
                Ok(Some(r)) if r.cause == OmitCause::Trimmed && r.start <= pos && pos < r.end => {
                    r.end
                }
                _ => return Err(e),
            };
            warn_trimmed(
                &format!("bytes {pos}-{}", held - 1),
                self.reader.stream(),
                self.origin.as_deref(),
            );
            pos = held;
        }
        Ok(pos)
    }
}

/// Says on stderr that `what` ("lines A-B") of `stream` are missing (a
/// Redis source trimmed them, issue 10), so a gap is never silent, and where
/// the whole log is: the job's `tail_url`, when it gave one.
fn warn_trimmed(what: &str, stream: Stream, origin: Option<&str>) {
    let at = match origin {
        Some(url) => format!(": {url}"),
        None => " (it gave no tail_url)".to_string(),
    };
    say(&format!(
        "warning: {what} of {} are no longer in the source (trimmed by --ship-maxlen); \
         the full log is on the job's machine{at}",
        stream.name()
    ));
}

/// Says on stderr that lines the store no longer held come before `line`.
fn warn_lost(line: &LogLine, origin: Option<&str>) {
    if let Some((from, to)) = line.lost_before {
        warn_trimmed(&format!("lines {from}-{to}"), line.stream, origin);
    }
}

/// What `logs` says when a log it reads is found shorter than what it read
/// (a job may empty its own log): like `tail -f`, it goes on from the log's
/// start, where the job's next lines land.
fn truncated_notice(stream: Stream) -> String {
    format!("warning: {}", crate::reader::truncated_message(stream))
}

/// Says [`truncated_notice`] once each time `reader` started over; `seen`
/// holds how many times it had. True when it just did.
fn warn_restart(
    reader: &dyn LineSource,
    seen: &mut u64,
    out: &mut BufWriter<io::StdoutLock<'_>>,
) -> Result<bool> {
    if reader.restarts() == *seen {
        return Ok(false);
    }
    *seen = reader.restarts();
    out.flush()?;
    say(&truncated_notice(reader.stream()));
    Ok(true)
}

/// Where the line modes take lines from.
enum Source {
    One(Box<dyn LineSource>),
    Both(Box<CombinedReader>),
}

/// What goes before each line.
struct LineStyle {
    timestamps: bool,
    prefix: bool,
}

/// Line by line: merged streams, timestamps, stream prefixes.
struct LinePrinter {
    source: Source,
    /// The logs by stream, to copy lines longer than [`LINE_KEEP`].
    files: [Option<Box<dyn RawLog>>; 2],
    /// Lines still to skip (merged `--tail`/`--since`).
    skip: u64,
    /// First line number to print (one stream, `--since` past the end).
    want: u64,
    style: LineStyle,
    /// The last timestamp formatted: lines of one chunk share it.
    stamp: (u64, String),
    /// Restarts of each reader already reported ([`warn_restart`]).
    restarts: [u64; 2],
    /// The job's `tail_url`: where the whole log is.
    origin: Option<String>,
}

impl LinePrinter {
    fn drain(&mut self, done: bool, out: &mut BufWriter<io::StdoutLock<'_>>) -> Result<()> {
        loop {
            let line = match &mut self.source {
                Source::One(r) => {
                    let line = r.next_line(done)?;
                    if warn_restart(r.as_ref(), &mut self.restarts[0], out)? {
                        // `--since N` counted lines of the log as it was.
                        self.want = 0;
                    }
                    line
                }
                Source::Both(c) => {
                    let line = c.next_line(done)?;
                    for (r, seen) in c.readers().iter().zip(&mut self.restarts) {
                        warn_restart(r.as_ref(), seen, out)?;
                    }
                    line
                }
            };
            let Some(line) = line else { return Ok(()) };
            // Said even for a line skipped below: the lines before it are
            // missing whatever is printed.
            warn_lost(&line, self.origin.as_deref());
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            if line.number < self.want {
                continue;
            }
            self.print(&line, out)?;
        }
    }

    fn print(&mut self, line: &LogLine, out: &mut BufWriter<io::StdoutLock<'_>>) -> Result<()> {
        if let Some(o) = line.omitted_before {
            out.write_all(gap_notice(line.stream, o).as_bytes())?;
        }
        // A line redrawn with bare carriage returns (a progress bar) shows only
        // what follows the last one: the frames go first, the stamp and prefix
        // then start the text a terminal ends up showing (issue 11, point 7).
        let whole = line.data.len() as u64 == line.len;
        let frames = if whole && (self.style.timestamps || self.style.prefix) {
            last_bare_cr(&line.data).map_or(0, |i| i + 1)
        } else {
            0
        };
        out.write_all(&line.data[..frames])?;
        if self.style.timestamps {
            if self.stamp.0 != line.ts_us {
                self.stamp = (line.ts_us, timestamp(line.ts_us));
            }
            out.write_all(self.stamp.1.as_bytes())?;
            out.write_all(b" ")?;
        }
        if self.style.prefix {
            out.write_all(line.stream.name().as_bytes())?;
            out.write_all(b": ")?;
        }
        if whole {
            out.write_all(&line.data[frames..])?;
        } else {
            let file = self.files[usize::from(line.stream == Stream::Stderr)]
                .as_deref()
                .context("no log file open for this stream")?;
            copy_range(file, line.offset, line.len, out)?;
        }
        if !line.complete {
            // Each printed line ends with a newline, so the next one (maybe of
            // the other stream) starts on its own line.
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// Position of the last carriage return in `data` that is not part of the
/// line's `\r\n` ending.
fn last_bare_cr(data: &[u8]) -> Option<usize> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    memchr::memrchr(b'\r', body)
}

/// The line `logs` prints where a size limit cut `stream`.
fn gap_notice(stream: Stream, o: crate::metadata::Omitted) -> String {
    format!("[logwrap: {}]\n", crate::serve::sse::gap_message(stream, o))
}

/// A line's time, or a placeholder as wide when the index does not know it.
fn timestamp(ts_us: u64) -> String {
    if ts_us == 0 {
        format!("{:-<TIMESTAMP_WIDTH$}", "")
    } else {
        timefmt::rfc3339_ms((ts_us / 1000) as i64)
    }
}

/// Copies `len` bytes of `log` from `offset` to `out`: by the kernel when the
/// store is files, else in bounded blocks.
fn copy_range(
    log: &dyn RawLog,
    offset: u64,
    len: u64,
    out: &mut BufWriter<io::StdoutLock<'_>>,
) -> Result<()> {
    copy_counted(log, offset, len, out, &mut 0)
}

/// As [`copy_range`], counting in `copied` the bytes written to `out`, so a
/// caller knows where a copy that failed stopped.
fn copy_counted(
    log: &dyn RawLog,
    offset: u64,
    len: u64,
    out: &mut BufWriter<io::StdoutLock<'_>>,
    copied: &mut u64,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    match log.as_file() {
        Some(f) => {
            out.flush()?;
            // Straight to the descriptor, not through stdout's line buffer:
            // file to file, pipe or socket, the kernel copies (no bytes pass
            // through here), and otherwise a write is not cut at the last
            // newline of each 8 KiB piece (two writes a piece, ~50,000 for
            // a 200 MB log).
            let raw = std::fs::File::from(
                out.get_ref()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("duplicating standard output")?,
            );
            *copied = crate::reader::copy_data(f, offset, len, &raw, |at, n| {
                say(&format!(
                    "warning: left out a {n}-byte hole at byte {at} of the log: the job \
                     extended the file without writing to it (it reads as zeros)"
                ))
            })
            .context("copying the log")?;
        }
        None => {
            let mut buf = vec![0u8; COPY_BLOCK.min(len as usize)];
            while *copied < len {
                let want = buf.len().min((len - *copied) as usize);
                let got = log.read_at(&mut buf[..want], offset + *copied)?;
                if got == 0 {
                    break;
                }
                out.write_all(&buf[..got])?;
                *copied += got as u64;
            }
        }
    }
    if *copied < len {
        anyhow::bail!("the log shrank while being read (truncated by hand?)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_times_keep_the_column_width() {
        assert_eq!(timestamp(0).len(), TIMESTAMP_WIDTH);
        assert_eq!(timestamp(1_709_210_096_789_000), "2024-02-29T12:34:56.789Z");
        assert_eq!(timestamp(1_000).len(), TIMESTAMP_WIDTH);
    }

    #[test]
    fn the_last_bare_carriage_return_is_found_past_a_crlf_ending() {
        assert_eq!(last_bare_cr(b"10%\r100%\n"), Some(3));
        assert_eq!(last_bare_cr(b"a\rb\rc"), Some(3));
        assert_eq!(last_bare_cr(b"dos line\r\n"), None);
        assert_eq!(last_bare_cr(b"x\ry\r\n"), Some(1));
        assert_eq!(last_bare_cr(b"plain\n"), None);
    }
}
