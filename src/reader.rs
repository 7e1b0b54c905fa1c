//! Reading a job's lines back: from line N, or the last N lines, with each line's
//! arrival time and sequence taken from the index, optionally merged across both
//! streams in arrival order. The readers never hold more than one block plus the
//! kept part of one line in memory, however long the line or the log.
//!
//! Readers are polled: `StreamReader::next_line` returns `None` at the current
//! end of the log, and the caller decides whether to wait (follow) or stop.

use crate::output::index::{self, Records};
use crate::store::limit::Gap;
use crate::store::{line_start, open_job_file, read_gap, FileStore, IndexFile, JobId, Stream};
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes read from the log at a time while looking for line ends.
const BLOCK: usize = 64 * 1024;
/// Smallest read buffer a reader holds once it has read anything.
const MIN_BLOCK: usize = 4 * 1024;

/// The first `want` bytes of a read buffer, grown on demand: a follower that
/// reads a few lines at a time (a thousand of them on one server) keeps a few
/// KiB rather than a whole [`BLOCK`].
fn grow(block: &mut Vec<u8>, want: usize) -> &mut [u8] {
    if block.len() < want {
        block.resize(want.next_power_of_two().clamp(MIN_BLOCK, BLOCK), 0);
    }
    &mut block[..want]
}

/// Largest chunk an index record is trusted to describe. Finding a line reads its
/// whole chunk, so this bounds that buffer against a damaged record; 1 MiB is
/// well above what any wrapper records at once (`index::MAX_CHUNK`, 256 KiB in
/// earlier versions), so indexes of older job directories stay usable.
pub(crate) const LARGEST_CHUNK: u64 = 1 << 20;

/// Holes up to this long are copied out as the zeros they read as: a
/// filesystem may store a run of zero bytes the job really wrote as a hole
/// (ZFS with compression does, a record at a time, 128 KiB by default), and
/// 1 MiB of them is cheap to copy. A longer hole is one the job made itself
/// (`truncate -s 50G` on its own log): copying it would cost the time and
/// the output of reading every zero, so it is left out and reported.
pub(crate) const HOLE_COPIED: u64 = 1 << 20;

/// Where the first data at or after `from` starts in `log`, at most `to`. A
/// hole (a job that extended its own log with `truncate`) reads as zeros and
/// holds no newline, so scans jump over it and a sparse log costs only its
/// data. `from` when the filesystem cannot tell (all of it then counts as
/// data, as it did before `SEEK_DATA`).
pub(crate) fn next_data(log: &File, from: u64, to: u64) -> u64 {
    match lseek(log, from as i64, Whence::SeekData) {
        Ok(at) => (at as u64).clamp(from, to),
        // Nothing but a hole from `from` to the end of the file.
        Err(Errno::ENXIO) => to.max(from),
        Err(_) => from,
    }
}

/// Where the first hole at or after `from` starts in `log` (the end of the
/// file counts as one), at most `to`; `to` when the filesystem cannot tell.
fn next_hole(log: &File, from: u64, to: u64) -> u64 {
    match lseek(log, from as i64, Whence::SeekHole) {
        Ok(at) => (at as u64).clamp(from, to),
        Err(_) => to,
    }
}

/// Copies `len` bytes of `log` from `offset` to `out` (by the kernel when it
/// can), except that a hole longer than [`HOLE_COPIED`] is left out and
/// `skipped` is told where it is and how long. Returns the bytes copied or
/// left out: fewer than `len` means the log shrank meanwhile.
pub(crate) fn copy_data(
    log: &File,
    offset: u64,
    len: u64,
    out: &File,
    mut skipped: impl FnMut(u64, u64),
) -> std::io::Result<u64> {
    let end = offset.saturating_add(len);
    let mut at = offset;
    while at < end {
        let data = next_data(log, at, end);
        if data - at > HOLE_COPIED {
            skipped(at, data - at);
            at = data;
            continue;
        }
        // From here to the next hole, with a short hole before it copied
        // as its zeros.
        let stop = if data < end {
            next_hole(log, data, end).max(data + 1)
        } else {
            end
        };
        let want = stop - at;
        let copied = copy_span(log, at, want, out)?;
        at += copied;
        if copied < want {
            break;
        }
    }
    Ok(at - offset)
}

/// Copies `len` bytes of `log` from `at` to `out`; fewer if the log ends
/// first. The kernel copies (`sendfile`: to a file, a pipe or a socket, no
/// byte passes through here); where it cannot (a terminal), reads and
/// writes of [`COPY_PIECE`] bytes, at offsets (the log's file position is
/// not used).
fn copy_span(log: &File, at: u64, len: u64, out: &File) -> std::io::Result<u64> {
    use std::io::Write;
    let end = at + len;
    let mut off = at as libc::off64_t;
    while (off as u64) < end {
        let want = (end - off as u64).min(1 << 30) as usize;
        match nix::sys::sendfile::sendfile64(out, log, Some(&mut off), want) {
            Ok(0) => return Ok(off as u64 - at),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut pos = off as u64;
    let mut buf = Vec::new();
    while pos < end {
        if buf.is_empty() {
            buf = vec![0u8; COPY_PIECE.min((end - pos) as usize)];
        }
        let want = buf.len().min((end - pos) as usize);
        let n = match log.read_at(&mut buf[..want], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut w = out;
        w.write_all(&buf[..n])?;
        pos += n as u64;
    }
    Ok(pos - at)
}

/// The pieces [`copy_span`] reads and writes when the kernel cannot copy.
const COPY_PIECE: usize = 256 * 1024;

/// What every reader says when a log it reads is found shorter than what it
/// read (a job may empty its own log, see [`LineSource::restarts`]): like
/// `tail -f` after "file truncated", it goes on from the log's start, where
/// the job's next lines land.
pub fn truncated_message(stream: Stream) -> String {
    format!(
        "the job's {} log was truncated; following it again from its start \
         (line numbers start over)",
        stream.name()
    )
}

/// One line of a job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    /// Line number in its stream, from 1.
    pub number: u64,
    /// Byte offset of the line's first byte in the stream's log.
    pub offset: u64,
    /// Full length in bytes, including the newline if there is one.
    pub len: u64,
    /// When the line was read by the wrapper (µs since the epoch); 0 if unknown
    /// (bytes past the index after a crash, or no index).
    pub ts_us: u64,
    /// Arrival sequence of the chunk that completed the line (orders lines across
    /// streams); `u64::MAX` if unknown.
    pub seq: u64,
    /// The first bytes of the line, up to the reader's `max_keep`, newline included
    /// when it fits. `len > data.len()` means the line was cut.
    pub data: Vec<u8>,
    /// False for a final line without a newline.
    pub complete: bool,
    /// What a size limit left out right before this line (`--max-log-size`):
    /// readers show the gap here.
    pub omitted_before: Option<crate::metadata::Omitted>,
    /// Lines the store no longer held right before this one, first and last
    /// number (a Redis stream trimmed by `--ship-maxlen`, issue 10): carried
    /// by the line, so a reader says so exactly once and where it happened,
    /// however far ahead of its printing a merged reader reads.
    pub lost_before: Option<(u64, u64)>,
    /// The log was found emptied right before this line (the job truncated
    /// its own log, see [`LineSource::restarts`]): it is the first line the
    /// reader read after starting over at the log's start, and numbers count
    /// from 1 again. Carried by the line, like `lost_before`, so a merged or
    /// shared reader says so where it happened.
    pub restarted: bool,
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At line N (from 1), like `tail -n +N`.
    Line(u64),
    /// At the last N lines present when the reader opens.
    Tail(u64),
}

/// One stream of a job, line by line, as a store serves it
/// ([`LogStore::open_lines`](crate::store::LogStore::open_lines)).
pub trait LineSource: Send {
    /// The stream read.
    fn stream(&self) -> Stream;
    /// The next line, or `None` at the current end. A final line without a
    /// newline is returned only when `writer_done` (it may still grow otherwise).
    fn next_line(&mut self, writer_done: bool) -> Result<Option<LogLine>>;
    /// Number of the line [`LineSource::next_line`] returns next.
    fn next_number(&self) -> u64;
    /// Byte offset of the next line.
    fn position(&self) -> u64;
    /// Lines in the stream now, counting a final line without a newline.
    fn total_lines(&mut self) -> Result<u64>;
    /// False when the store's line index could not be used (lookups scan).
    fn indexed(&self) -> bool {
        true
    }
    /// True when a size limit may omit part of the stream: its lines then
    /// carry [`LogLine::omitted_before`], and the raw bytes have a hole.
    fn limited(&self) -> bool {
        false
    }
    /// Bytes of the stream the index covers; less than the stream's size once
    /// its writer is done means the index was cut short.
    fn indexed_bytes(&self) -> u64 {
        u64::MAX
    }
    /// Times the reader found its log shorter than it had read and started
    /// over at the log's start (like `tail -f` on "file truncated"): a job
    /// may empty its own log. Stores whose logs only grow never do.
    fn restarts(&self) -> u64 {
        0
    }
    /// Lines the store no longer holds (a Redis stream trimmed by `MAXLEN`,
    /// issue 10) that the reader passes over before its next line: the first
    /// and last missing number, until that line is returned (carrying them as
    /// [`LogLine::lost_before`]). Stores that keep every line never have one.
    fn gap(&self) -> Option<(u64, u64)> {
        None
    }
}

impl LineSource for StreamReader {
    fn stream(&self) -> Stream {
        self.stream
    }
    fn next_line(&mut self, writer_done: bool) -> Result<Option<LogLine>> {
        StreamReader::next_line(self, writer_done)
    }
    fn next_number(&self) -> u64 {
        self.line
    }
    fn position(&self) -> u64 {
        self.pos
    }
    fn total_lines(&mut self) -> Result<u64> {
        StreamReader::total_lines(self)
    }
    fn indexed(&self) -> bool {
        self.idx.is_some()
    }
    fn indexed_bytes(&self) -> u64 {
        self.indexed_end
    }
    fn limited(&self) -> bool {
        self.gap_file.is_some()
    }
    fn restarts(&self) -> u64 {
        self.restarts
    }
}

/// The file store's [`LineSource`]: reads one stream's lines in order.
pub(crate) struct StreamReader {
    stream: Stream,
    log: File,
    idx: Option<IndexFile>,
    idx_path: std::path::PathBuf,
    /// Offset and number of the next line to return.
    pos: u64,
    line: u64,
    /// How far past `pos` the current (unfinished) line is known to have no newline.
    scanned: u64,
    /// Index record holding the newline of the next line, found by walking forward.
    rec: u64,
    /// The last record read by [`StreamReader::stamp`] and its number: lines in
    /// one chunk share it, so it is read once per chunk, not once per line.
    rec_cache: Option<(u64, crate::output::index::Record)>,
    /// End of the log as the index covers it (0 without a usable index).
    indexed_end: u64,
    /// Size of the log when last measured: a log only grows, so it is
    /// measured again only once the reader has reached it; found smaller,
    /// the job truncated it (see [`StreamReader::restart`]).
    known_len: u64,
    /// Times the log was found shorter than `known_len` or the reader's
    /// position (see [`LineSource::restarts`]).
    restarts: u64,
    /// A restart not yet told by a line ([`LogLine::restarted`]).
    restart_pending: bool,
    /// The index was found inconsistent with the log: it is never used again.
    damaged: bool,
    /// The index was re-read after the writer was done, so it will not grow.
    index_final: bool,
    max_keep: usize,
    /// The gap sidecar, when the job has a size limit, and the gap as last
    /// read from it.
    gap_file: Option<File>,
    gap: Gap,
    /// The gap the reader jumped over, reported with the next line.
    skipped: Option<crate::metadata::Omitted>,
    block: Vec<u8>,
    /// Log offset and length of the bytes held in `block`, so that many short
    /// lines cost one read per block rather than one per line.
    block_at: u64,
    block_len: usize,
}

impl StreamReader {
    /// Opens `stream` of job `id`. Lines longer than `max_keep` bytes are cut in
    /// [`LogLine::data`] (their `len` stays exact). A missing or damaged index is
    /// not an error: reads fall back to scanning (see [`StreamReader::indexed`]).
    pub(crate) fn open(
        store: &FileStore,
        id: &JobId,
        stream: Stream,
        start: Start,
        max_keep: usize,
    ) -> Result<StreamReader> {
        let path = store.log_path(id, stream);
        let log = open_job_file(&path).with_context(|| format!("opening {}", path.display()))?;
        let idx_path = store.index_path(id, stream);
        let idx = IndexFile::open(&idx_path).ok();
        let mut r = StreamReader {
            stream,
            log,
            idx: None,
            idx_path,
            pos: 0,
            line: 1,
            scanned: 0,
            rec: 0,
            rec_cache: None,
            indexed_end: 0,
            known_len: 0,
            restarts: 0,
            restart_pending: false,
            damaged: false,
            index_final: false,
            max_keep,
            gap_file: open_job_file(&store.gap_path(id, stream)).ok(),
            gap: Gap::default(),
            skipped: None,
            block: Vec::new(),
            block_at: 0,
            block_len: 0,
        };
        r.adopt_index(idx)?;
        let first = |r: &mut StreamReader| -> Result<u64> {
            Ok(match start {
                Start::Line(n) => n.max(1),
                Start::Tail(n) => (r.total_lines()? + 1).saturating_sub(n).max(1),
            })
        };
        let line = first(&mut r)?;
        r.seek_line(line)?;
        if r.damaged && matches!(start, Start::Tail(_)) {
            // The seek found the index lying: the line count it gave is suspect
            // too, so count again by scanning.
            let line = first(&mut r)?;
            r.seek_line(line)?;
        }
        Ok(r)
    }

    fn refresh_index(&mut self) {
        if self.damaged {
            return;
        }
        // Re-measuring the open index costs one fstat; reopening it (only when
        // there was none yet) also an open and a header read.
        let idx = match self.idx.take() {
            Some(mut i) => i.refresh().map(|()| i).ok(),
            None => IndexFile::open(&self.idx_path).ok(),
        };
        if let Some(i) = idx {
            // A refresh that finds the index implausible keeps scanning; an error
            // here only means the log could not be measured, which the next read
            // reports.
            let _ = self.adopt_index(Some(i));
        }
    }

    /// Uses `idx` if it is consistent with the log: records past the log's end
    /// (a log cut short, or power loss that kept the index but not the data) or
    /// more newlines than bytes mean it cannot be trusted, and the reader scans.
    fn adopt_index(&mut self, idx: Option<IndexFile>) -> Result<()> {
        if self.damaged {
            return Ok(());
        }
        let Some(idx) = idx else {
            return Ok(());
        };
        let len = self.log_len()?;
        let end = if idx.count() == 0 {
            Some(0)
        } else {
            match (idx.get(0), idx.get(idx.count() - 1)) {
                (Ok(first), Ok(last))
                    if first.end <= last.end && last.end <= len && last.lines_end <= last.end =>
                {
                    Some(last.end)
                }
                _ => None,
            }
        };
        match end {
            Some(end) => {
                self.idx = Some(idx);
                self.indexed_end = end;
            }
            None => self.mark_damaged(),
        }
        Ok(())
    }

    fn mark_damaged(&mut self) {
        self.damaged = true;
        self.idx = None;
        self.indexed_end = 0;
    }

    /// Where line `n` starts according to the index; `Ok(None)` when the index
    /// does not reach it, `Err` when the index contradicts the log. Chunks are
    /// checked first so a damaged record can never ask for a huge buffer.
    fn indexed_line_start(&self, idx: &IndexFile, n: u64) -> Result<Option<u64>> {
        if n > 1 {
            let Some(chunk) = index::chunk_with_newline(idx, n - 1)? else {
                return Ok(None);
            };
            let (start, end) = index::chunk_range(idx, chunk)?;
            if start > end || end - start > LARGEST_CHUNK {
                anyhow::bail!("index chunk {chunk} spans {start}..{end}");
            }
        }
        line_start(&self.log, idx, n)
    }

    fn log_len(&self) -> Result<u64> {
        Ok(self.log.metadata()?.len())
    }

    /// Lines in the log now, counting a final line without a newline.
    pub(crate) fn total_lines(&mut self) -> Result<u64> {
        self.refresh_index();
        let len = self.log_len()?;
        let (mut lines, indexed_end) = match &self.idx {
            Some(i) if i.count() > 0 => {
                let last = i.get(i.count() - 1)?;
                (last.lines_end, last.end.min(len))
            }
            _ => (0, 0),
        };
        lines += self.count_newlines(indexed_end, len)?;
        if len > 0 && !self.byte_at(len - 1)?.eq(&b'\n') {
            lines += 1;
        }
        Ok(lines)
    }

    fn byte_at(&self, off: u64) -> Result<u8> {
        let mut b = [0u8; 1];
        self.log.read_exact_at(&mut b, off)?;
        Ok(b[0])
    }

    fn count_newlines(&mut self, mut from: u64, to: u64) -> Result<u64> {
        self.block_len = 0;
        let mut n = 0;
        while from < to {
            from = next_data(&self.log, from, to);
            if from >= to {
                break;
            }
            let want = ((to - from) as usize).min(BLOCK);
            let got = self.log.read_at(grow(&mut self.block, want), from)?;
            if got == 0 {
                break;
            }
            n += memchr::memchr_iter(b'\n', &self.block[..got]).count() as u64;
            from += got as u64;
        }
        Ok(n)
    }

    /// Moves to line `n`; past the end, waits at the start of the last,
    /// unfinished line, so line numbers stay right as the log grows.
    fn seek_line(&mut self, n: u64) -> Result<()> {
        self.block_len = 0;
        self.refresh_gap()?;
        // A line the size limit omitted: start at the gap, which the next
        // line reports.
        let g = self.gap;
        let n = if g.is_gap() && n > g.lines_start + 1 && n <= g.lines_end + 1 {
            g.lines_start + 1
        } else {
            n
        };
        let found = match &self.idx {
            Some(i) => self.indexed_line_start(i, n).map_err(drop),
            None => Ok(None),
        };
        let indexed = found.unwrap_or_else(|()| {
            self.mark_damaged();
            None
        });
        let (pos, line) = match indexed {
            Some(off) => (off, n),
            None => {
                // Not in the index (unindexed tail, no index): scan from the start
                // of the first line the index does not finish (a chunk ends
                // anywhere, not only at a line start), counting newlines.
                let after_index = match &self.idx {
                    Some(i) if i.count() > 0 => {
                        let line = i.get(i.count() - 1)?.lines_end + 1;
                        match self.indexed_line_start(i, line) {
                            Ok(Some(pos)) => Some((pos, line)),
                            _ => None,
                        }
                    }
                    _ => Some((0, 1)),
                };
                let (mut pos, mut line) = after_index.unwrap_or_else(|| {
                    self.mark_damaged();
                    (0, 1)
                });
                let len = self.log_len()?;
                // Start of the line being counted: where a line past the end
                // will be found once it is written.
                let mut line_pos = pos;
                'scan: while line < n && pos < len {
                    // Only up to the length measured: a live log grows while
                    // it is scanned, and a line counted past `len` would
                    // leave the reader at `len` inside it, with its number.
                    pos = next_data(&self.log, pos, len);
                    if pos >= len {
                        break;
                    }
                    let want = ((len - pos) as usize).min(BLOCK);
                    let got = self.log.read_at(grow(&mut self.block, want), pos)?;
                    if got == 0 {
                        break;
                    }
                    for i in memchr::memchr_iter(b'\n', &self.block[..got]) {
                        line += 1;
                        line_pos = pos + i as u64 + 1;
                        if line == n {
                            break 'scan;
                        }
                    }
                    pos += got as u64;
                }
                (line_pos, line)
            }
        };
        self.pos = pos;
        self.line = line;
        self.scanned = pos;
        self.rec = match &self.idx {
            // No record holds the line's newline (yet): an unfinished last line
            // may still sit inside the last record, where a chunk without a
            // newline joined it; `stamp` walks on from there.
            Some(i) => crate::output::index::chunk_with_newline(i, line)?
                .unwrap_or(i.count().saturating_sub(1)),
            None => 0,
        };
        Ok(())
    }

    /// Timestamp and sequence of the chunk holding byte `newline_at` (or the last
    /// chunk, for an unfinished final line).
    fn stamp(&mut self, newline_at: u64) -> (u64, u64) {
        let Some(idx) = &self.idx else {
            return (0, u64::MAX);
        };
        while self.rec < idx.count() {
            let r = match self.rec_cache {
                Some((i, r)) if i == self.rec => r,
                _ => match idx.get(self.rec) {
                    Ok(r) => {
                        self.rec_cache = Some((self.rec, r));
                        r
                    }
                    Err(_) => break,
                },
            };
            if r.end > newline_at {
                return (r.ts_us, r.seq);
            }
            self.rec += 1;
        }
        // Past the index (it trails its chunk by a moment, or a crash cut it).
        (0, u64::MAX)
    }

    /// The next line, or `None` at the current end. A final line without a
    /// newline is returned only when `writer_done` (it may still grow otherwise).
    pub(crate) fn next_line(&mut self, writer_done: bool) -> Result<Option<LogLine>> {
        if self.gap_file.is_none() {
            return self.next_raw_line(writer_done);
        }
        // Under a size limit: never read inside the gap, and check after each
        // line that its bytes were not punched while being read (the writer
        // updates the sidecar first).
        loop {
            if self.in_gap(self.pos) {
                self.jump_gap()?;
            }
            let Some(mut line) = self.next_raw_line(writer_done)? else {
                return Ok(None);
            };
            self.refresh_gap()?;
            if self.in_gap(line.offset) {
                self.pos = line.offset;
                self.line = line.number;
                continue;
            }
            line.omitted_before = self.skipped.take();
            return Ok(Some(line));
        }
    }

    /// Re-reads the gap sidecar, if there is one.
    fn refresh_gap(&mut self) -> Result<()> {
        if let Some(f) = &self.gap_file {
            self.gap = read_gap(f).context("reading the gap sidecar")?;
        }
        Ok(())
    }

    fn in_gap(&self, at: u64) -> bool {
        at >= self.gap.start && at < self.gap.end
    }

    /// Moves past the gap to the first kept line, remembering what was skipped.
    fn jump_gap(&mut self) -> Result<()> {
        let g = self.gap;
        let skipped = crate::metadata::Omitted {
            omitted_bytes: g.end - self.pos,
            omitted_lines: (g.lines_end + 1).saturating_sub(self.line),
        };
        self.skipped = Some(match self.skipped {
            Some(s) => crate::metadata::Omitted {
                omitted_bytes: s.omitted_bytes + skipped.omitted_bytes,
                omitted_lines: s.omitted_lines + skipped.omitted_lines,
            },
            None => skipped,
        });
        self.pos = g.end;
        self.line = g.lines_end + 1;
        self.scanned = g.end;
        self.block_len = 0;
        self.rec_cache = None;
        self.rec = match &self.idx {
            Some(i) => {
                index::chunk_with_newline(i, self.line)?.unwrap_or(i.count().saturating_sub(1))
            }
            None => 0,
        };
        Ok(())
    }

    fn next_raw_line(&mut self, writer_done: bool) -> Result<Option<LogLine>> {
        let mut len = self.known_len;
        let mut fresh = false;
        if self.scanned >= len {
            len = self.log_len()?;
            if len < self.known_len.max(self.pos) {
                self.restart();
            }
            if self.scanned >= len && self.idx.is_none() {
                // Nothing new: a moment to look for an index that was missing
                // (a job still being created).
                self.refresh_index();
            }
            self.known_len = len;
            fresh = true;
        }
        let mut data = Vec::new();
        let mut at = self.pos;
        let mut newline = None;
        loop {
            while at < len {
                if at < self.scanned && data.len() >= self.max_keep {
                    // Read before and found without a newline, and nothing
                    // more of it is kept: go on from where that read
                    // stopped, so a follower of a long line that grows a
                    // little at a time reads each byte once, not all of the
                    // line at every look.
                    at = self.scanned;
                    continue;
                }
                if !self.cached(at) {
                    let data_at = next_data(&self.log, at, len);
                    if data_at > at {
                        // A hole: zeros, no newline. The line goes on across
                        // it, kept only as far as `max_keep` allows.
                        let room = self.max_keep.saturating_sub(data.len()) as u64;
                        data.resize(data.len() + room.min(data_at - at) as usize, 0);
                        at = data_at;
                        continue;
                    }
                }
                let (from, got) = self.fill_block(at, len)?;
                if got == 0 {
                    break;
                }
                let chunk = &self.block[from..from + got];
                let found = if at + (got as u64) <= self.scanned {
                    None
                } else {
                    let skip = self.scanned.saturating_sub(at) as usize;
                    memchr::memchr(b'\n', &chunk[skip..]).map(|i| i + skip)
                };
                let take = found.map_or(got, |i| i + 1);
                let room = self.max_keep.saturating_sub(data.len());
                data.extend_from_slice(&chunk[..take.min(room)]);
                if let Some(i) = found {
                    newline = Some(at + i as u64);
                    break;
                }
                at += got as u64;
            }
            if newline.is_some() || fresh || at < len {
                break;
            }
            // At the end as last measured: the log may have grown since.
            let now = self.log_len()?;
            if now < len {
                // Shrunk while being read: the line is not what it was. The
                // next call reads the log from its start.
                self.restart();
                self.known_len = now;
                return Ok(None);
            }
            self.known_len = now;
            fresh = true;
            if now <= len {
                break;
            }
            len = now;
        }
        let end = match newline {
            Some(nl) => nl + 1,
            None if writer_done && len > self.pos => len,
            None => {
                self.scanned = len;
                return Ok(None);
            }
        };
        self.refresh_index_if_needed(end, writer_done);
        if !writer_done && self.record_on_its_way(end, len) {
            // The wrapper writes a chunk's record just after the chunk, and a
            // follower woken by the chunk often looks in between: wait for the
            // record (the next poll) rather than hand out a line without its time
            // and arrival order, which would also misorder a merged follow.
            self.scanned = end - 1;
            return Ok(None);
        }
        let (ts_us, seq) = self.stamp(end - 1);
        let line = LogLine {
            stream: self.stream,
            number: self.line,
            offset: self.pos,
            len: end - self.pos,
            ts_us,
            seq,
            data,
            complete: newline.is_some(),
            omitted_before: None,
            lost_before: None,
            restarted: std::mem::take(&mut self.restart_pending),
        };
        self.pos = end;
        self.scanned = end;
        self.line += 1;
        Ok(Some(line))
    }

    /// Starts over at the log's start, found shorter than it was (a job that
    /// ran `: > stdout.log`): what the reader had read is gone, and what the
    /// wrapper appends now lands from the new end, as `tail -f` goes on after
    /// "file truncated". The index no longer matches the log, so the log is
    /// scanned from here on.
    fn restart(&mut self) {
        self.mark_damaged();
        self.pos = 0;
        self.line = 1;
        self.scanned = 0;
        self.rec = 0;
        self.rec_cache = None;
        self.block_len = 0;
        self.restarts += 1;
        self.restart_pending = true;
    }

    /// True when the line ending at `end` is past the index only because its
    /// record is not written yet: the index is in use and lags the log by at most
    /// one read (256 KiB). A larger gap means records are being lost (a failing disk), and
    /// waiting for them could hold lines back until the job ends.
    fn record_on_its_way(&self, end: u64, len: u64) -> bool {
        if self.idx.is_none() {
            return false;
        }
        let indexed = self.indexed_end;
        indexed < end && len.saturating_sub(indexed) <= LARGEST_CHUNK
    }

    /// True when `block` holds the byte at `at`.
    fn cached(&self, at: u64) -> bool {
        at >= self.block_at && at < self.block_at + self.block_len as u64
    }

    /// Makes `block` hold bytes at `at` (below `len`), reading only when the
    /// cached block does not already; returns where they start in `block` and how
    /// many there are (0 at the end of the file). The log is append-only, so
    /// cached bytes never go stale.
    fn fill_block(&mut self, at: u64, len: u64) -> Result<(usize, usize)> {
        if self.cached(at) {
            let from = (at - self.block_at) as usize;
            return Ok((from, self.block_len - from));
        }
        let want = ((len - at) as usize).min(BLOCK);
        let got = self.log.read_at(grow(&mut self.block, want), at)?;
        self.block_at = at;
        self.block_len = got;
        Ok((0, got))
    }

    /// The index is written just after its chunk: re-read it if it does not yet
    /// cover the line just found.
    ///
    /// Without an index, only the refresh at the end of the log looks for one (a
    /// failed open per line would cost more than the scan); once the writer is
    /// done one re-read is enough, so an index cut short by a crash is not
    /// re-read for every line past its end.
    fn refresh_index_if_needed(&mut self, end: u64, writer_done: bool) {
        if self.idx.is_none() {
            return;
        }
        let covered = self.indexed_end >= end;
        if covered || (writer_done && self.index_final) {
            return;
        }
        self.refresh_index();
        self.index_final = writer_done;
    }
}

/// A line named by where it is in a job's output, for
/// [`LogStore::merged_before`](crate::store::LogStore::merged_before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The n-th line (from 1) of both streams merged in arrival order.
    Merged(u64),
    /// Line n (from 1) of one stream.
    Line(Stream, u64),
}

/// The cursor `[o, e]` of the lines merged before `at`: the last stdout and
/// stderr line numbers of the lines that come before it in arrival order
/// (the end cursor when `at` is past the end). Walks both streams from their
/// first line, so it reads no further than `at`; stores with an index find it
/// without a walk (the file store does).
pub fn walk_merged_before<S: crate::store::LogStore + ?Sized>(
    store: &S,
    id: &JobId,
    at: Anchor,
    writer_done: bool,
) -> Result<[u64; 2]> {
    // Only the positions are wanted, never the text.
    let open = |s: Stream| store.open_lines(id, s, Start::Line(1), 0);
    let mut merged = CombinedReader::new(open(Stream::Stdout)?, open(Stream::Stderr)?);
    let mut cur = [0u64; 2];
    loop {
        let Some(line) = merged.next_line(writer_done)? else {
            return Ok(cur);
        };
        let i = usize::from(line.stream == Stream::Stderr);
        if let Anchor::Line(s, n) = at {
            if line.stream == s && line.number >= n {
                return Ok(cur);
            }
        }
        if let Anchor::Merged(n) = at {
            // Its place in arrival order, counting the lines a size limit or
            // a trimmed store left out before it (numbers stay true): at or
            // past the target, the place before it is the answer.
            if line.number + cur[1 - i] >= n {
                let mut before = cur;
                before[i] = line.number - 1;
                return Ok(before);
            }
        }
        cur[i] = line.number;
    }
}

/// Both streams of a job merged in arrival order (by the sequence of the chunk
/// that completed each line).
pub struct CombinedReader {
    readers: [Box<dyn LineSource>; 2],
    peeked: [Option<LogLine>; 2],
    /// A stream found at its end after its writer was done: it has no more
    /// lines, so it is not asked again for every line of the other.
    ended: [bool; 2],
}

impl CombinedReader {
    /// Merges two readers, normally stdout and stderr of one job.
    pub fn new(stdout: Box<dyn LineSource>, stderr: Box<dyn LineSource>) -> CombinedReader {
        CombinedReader {
            readers: [stdout, stderr],
            peeked: [None, None],
            ended: [false, false],
        }
    }

    /// The stdout and stderr readers being merged.
    pub fn readers(&self) -> &[Box<dyn LineSource>; 2] {
        &self.readers
    }

    fn peek(&mut self, i: usize, writer_done: bool) -> Result<()> {
        if self.peeked[i].is_none() && !self.ended[i] {
            self.peeked[i] = self.readers[i].next_line(writer_done)?;
            self.ended[i] = writer_done && self.peeked[i].is_none();
        }
        Ok(())
    }

    /// The next line in arrival order, or `None` at the current end.
    pub fn next_line(&mut self, writer_done: bool) -> Result<Option<LogLine>> {
        self.peek(0, writer_done)?;
        self.peek(1, writer_done)?;
        // A line seen on one stream may have been preceded by one on the other
        // stream that completed after our look at it: look at the other again,
        // now that the first line is known to be written.
        match (&self.peeked[0], &self.peeked[1]) {
            (Some(_), None) => self.peek(1, writer_done)?,
            (None, Some(_)) => self.peek(0, writer_done)?,
            _ => {}
        }
        let pick = match (&self.peeked[0], &self.peeked[1]) {
            (Some(a), Some(b)) => usize::from(b.seq < a.seq),
            (Some(_), None) => 0,
            (None, Some(_)) => 1,
            (None, None) => return Ok(None),
        };
        Ok(self.peeked[pick].take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::both::{self, TestJob};
    use crate::store::{Chunk, JobSink, TempRoot};

    fn job(tag: &str, writes: &[(Stream, &[u8])]) -> (TempRoot, JobId, Box<dyn JobSink>) {
        crate::store::testing::job(&format!("reader-{tag}"), writes)
    }

    fn texts(r: &mut dyn LineSource, done: bool) -> Vec<(u64, String, u64)> {
        std::iter::from_fn(|| r.next_line(done).unwrap())
            .map(|l| (l.number, String::from_utf8(l.data).unwrap(), l.ts_us))
            .collect()
    }

    /// Stdout of the test job, through the store's trait.
    fn open(t: &TestJob, start: Start, max_keep: usize) -> Box<dyn LineSource> {
        t.store
            .open_lines(&t.id, Stream::Stdout, start, max_keep)
            .unwrap()
    }

    // The tests from here to the file-only ones run against every store: the
    // readers and the server see only the trait (issue 9).

    #[test]
    fn reads_lines_with_their_chunk_timestamps() {
        for t in both::jobs(
            "ts",
            &[(Stream::Stdout, b"a\nb"), (Stream::Stdout, b"b\nc")],
        ) {
            let mut r = open(&t, Start::Line(1), 100);
            assert_eq!(
                texts(r.as_mut(), false),
                vec![(1, "a\n".into(), 100), (2, "bb\n".into(), 101)],
                "{}",
                t.name
            );
            assert_eq!(r.total_lines().unwrap(), 3, "{}", t.name);
            // The unfinished last line comes only once the writer is done.
            assert_eq!(
                texts(r.as_mut(), true),
                vec![(3, "c".into(), 101)],
                "{}",
                t.name
            );
            assert_eq!(r.position(), 6, "{}", t.name);
        }
    }

    #[test]
    fn an_unfinished_line_is_complete_false_and_numbers_go_on() {
        for t in both::jobs("partial", &[(Stream::Stderr, b"x\nlast")]) {
            let mut r = t
                .store
                .open_lines(&t.id, Stream::Stderr, Start::Tail(1), 100)
                .unwrap();
            assert_eq!(r.stream(), Stream::Stderr);
            assert_eq!(r.next_number(), 2, "{}", t.name);
            let l = r.next_line(true).unwrap().unwrap();
            assert_eq!(
                (l.stream, l.number, l.offset, l.len, l.complete),
                (Stream::Stderr, 2, 2, 4, false),
                "{}",
                t.name
            );
            assert_eq!(l.data, b"last");
            assert_eq!(r.next_line(true).unwrap(), None, "{}", t.name);
        }
    }

    #[test]
    fn tail_and_since_start_at_the_right_line() {
        for t in both::jobs("tail", &[(Stream::Stdout, b"1\n2\n3\n4\n5")]) {
            let numbers = |start| {
                let mut r = open(&t, start, 100);
                texts(r.as_mut(), true)
                    .iter()
                    .map(|t| t.0)
                    .collect::<Vec<_>>()
            };
            assert_eq!(numbers(Start::Tail(2)), vec![4, 5], "{}", t.name);
            assert_eq!(numbers(Start::Line(3)), vec![3, 4, 5], "{}", t.name);
            assert_eq!(numbers(Start::Tail(99)).len(), 5, "{}", t.name);
            assert_eq!(numbers(Start::Line(0)).len(), 5, "{}", t.name);
        }
    }

    #[test]
    fn long_lines_are_cut_but_measured() {
        for t in both::jobs(
            "long",
            &[
                (Stream::Stdout, &[b'x'; 200_000]),
                (Stream::Stdout, b"\nok\n"),
            ],
        ) {
            let mut r = open(&t, Start::Line(1), 10);
            let first = r.next_line(false).unwrap().unwrap();
            assert_eq!((first.len, first.data.len()), (200_001, 10), "{}", t.name);
            assert_eq!(r.next_line(false).unwrap().unwrap().data, b"ok\n");
        }
    }

    #[test]
    fn a_line_past_the_end_keeps_its_number_as_the_log_grows() {
        for mut t in both::jobs("past", &[(Stream::Stdout, b"1\n2\n3")]) {
            let mut r = open(&t, Start::Line(5), 100);
            assert_eq!(
                r.next_number(),
                3,
                "{}: waits at the unfinished line 3",
                t.name
            );
            assert_eq!(r.next_line(false).unwrap(), None);
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"x\n4\n5\n", 200))
                .unwrap();
            assert_eq!(
                texts(r.as_mut(), false),
                vec![
                    (3, "3x\n".into(), 200),
                    (4, "4\n".into(), 200),
                    (5, "5\n".into(), 200)
                ],
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn a_line_past_the_end_is_found_at_a_line_start_while_the_log_grows() {
        // A writer appends an unfinished line, then the rest of it, while
        // readers seek past the end: each must wait at the start of a line,
        // with that line's number, however far the log grew meanwhile.
        let (store, id, _sink) =
            crate::store::testing::job("growing", &[(Stream::Stdout, b"1\n2\n")]);
        let path = store.log_path(&id, Stream::Stdout);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    f.write_all(b"par").unwrap();
                    f.write_all(b"tial\n").unwrap();
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        let mut seeks = 0;
        while std::time::Instant::now() < deadline {
            let r = crate::store::LogStore::open_lines(
                &*store,
                &id,
                Stream::Stdout,
                Start::Line(u64::MAX / 2),
                0,
            )
            .unwrap();
            let (at, number) = (r.position(), r.next_number());
            let log = std::fs::read(&path).unwrap();
            let before = &log[..at as usize];
            assert!(
                before.is_empty() || before.ends_with(b"\n"),
                "seek {seeks}: waits at {at}, inside a line"
            );
            let newlines = memchr::memchr_iter(b'\n', before).count() as u64;
            assert_eq!(
                number,
                newlines + 1,
                "seek {seeks}: number of the line at {at}"
            );
            seeks += 1;
            if log.len() > 4 << 20 {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(seeks > 10, "only {seeks} seeks");
    }

    #[test]
    fn a_copy_keeps_short_holes_as_zeros_and_leaves_long_ones_out() {
        let t = TempRoot::new("reader-holes");
        let path = t.0.root().join("log");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        // "a\n", a 100 KiB hole, "b\n", a 5 MiB hole, "c\n" (holes are
        // made by writing past the end).
        let short = 2 + (100 << 10);
        let long_at = short + 2;
        let c_at = long_at + (5 << 20);
        f.write_all_at(b"a\n", 0).unwrap();
        f.write_all_at(b"b\n", short).unwrap();
        f.write_all_at(b"c\n", c_at).unwrap();
        let len = c_at + 2;
        let copy = t.0.root().join("copy");
        let sink = File::create(&copy).unwrap();
        let mut skipped = Vec::new();
        let done = copy_data(&f, 0, len, &sink, |at, n| skipped.push((at, n))).unwrap();
        let out = std::fs::read(&copy).unwrap();
        assert_eq!(done, len);
        let mut want = b"a\n".to_vec();
        want.resize(short as usize, 0);
        want.extend_from_slice(b"b\n");
        // Filesystems keep holes in blocks: the long one is left out from
        // the first block boundary after "b\n" to the block holding "c\n".
        let (at, n) = match skipped[..] {
            [one] => one,
            _ => panic!("skipped {skipped:?}"),
        };
        assert!(
            at >= long_at && at + n <= c_at && n > HOLE_COPIED,
            "{at} {n}"
        );
        assert_eq!(out.len() as u64, len - n);
        assert_eq!(&out[..want.len()], &want[..], "the short hole is copied");
        assert!(out.ends_with(b"c\n"));
        assert!(out[short as usize + 2..out.len() - 2]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn a_copy_the_kernel_cannot_make_is_read_and_written_in_pieces() {
        // `sendfile` refuses an output opened for appending (`logs >> f`):
        // the copy reads and writes instead, from where it was asked.
        let t = TempRoot::new("copy-append");
        let path = t.0.root().join("log");
        let data: Vec<u8> = (0..3 * COPY_PIECE + 123).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let log = File::open(&path).unwrap();
        for append in [false, true] {
            let copy = t.0.root().join(format!("copy-{append}"));
            std::fs::write(&copy, b"before\n").unwrap();
            let sink = std::fs::OpenOptions::new()
                .write(true)
                .append(append)
                .open(&copy)
                .unwrap();
            if !append {
                use std::io::Seek;
                (&sink).seek(std::io::SeekFrom::End(0)).unwrap();
            }
            let from = 1000;
            let done = copy_data(&log, from, data.len() as u64 - from, &sink, |_, _| {
                panic!("no hole")
            })
            .unwrap();
            assert_eq!(done, data.len() as u64 - from);
            let out = std::fs::read(&copy).unwrap();
            assert_eq!(&out[..7], b"before\n");
            assert!(out[7..] == data[from as usize..], "append {append}");
            // Asked for more than there is: the copy says how much it made.
            let short = copy_data(&log, 10, data.len() as u64, &sink, |_, _| {}).unwrap();
            assert_eq!(short, data.len() as u64 - 10, "append {append}");
        }
    }

    /// Bytes this thread has read from files so far (`rchar` in
    /// /proc/thread-self/io): the tests run in threads of one process.
    fn bytes_read() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn an_unfinished_long_line_is_not_read_again_at_every_look() {
        let (store, id, _sink) = job("regrow", &[(Stream::Stdout, &[b'x'; 4 << 20])]);
        let path = store.log_path(&id, Stream::Stdout);
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Line(1), 10).unwrap();
        assert_eq!(r.next_line(false).unwrap(), None, "no newline yet");
        let append = |bytes: &[u8]| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(bytes).unwrap();
        };
        // The line grows by a byte: a follower looks again.
        append(b"x");
        let before = bytes_read();
        assert_eq!(r.next_line(false).unwrap(), None);
        let read = bytes_read() - before;
        assert!(read < 1 << 20, "read {read} bytes for one new byte");
        append(b"\n");
        // Written by hand, the end has no index record: the writer is done.
        let l = r.next_line(true).unwrap().unwrap();
        assert_eq!((l.number, l.len, l.data.len()), (1, (4 << 20) + 2, 10));
    }

    #[test]
    fn many_short_lines_across_blocks_are_all_read_once() {
        let body: Vec<u8> = (0..40_000)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        for mut t in both::jobs("blocks", &[(Stream::Stdout, &body)]) {
            let mut r = open(&t, Start::Line(1), 100);
            let got = texts(r.as_mut(), false);
            assert_eq!(got.len(), 40_000, "{}", t.name);
            assert!(got
                .iter()
                .enumerate()
                .all(|(i, t)| t.0 == i as u64 + 1 && t.1 == format!("{i}\n")));
            // Growth after a short cached block is still seen.
            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"more\n", 7))
                .unwrap();
            assert_eq!(
                texts(r.as_mut(), false),
                vec![(40_001, "more\n".into(), 7)],
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn combined_follows_arrival_order() {
        for t in both::jobs(
            "merge",
            &[
                (Stream::Stdout, b"o1\no"),
                (Stream::Stderr, b"e1\n"),
                (Stream::Stdout, b"2\n"),
                (Stream::Stderr, b"e2\n"),
                (Stream::Stdout, b"tail"),
            ],
        ) {
            let open = |s| t.store.open_lines(&t.id, s, Start::Line(1), 100).unwrap();
            let mut c = CombinedReader::new(open(Stream::Stdout), open(Stream::Stderr));
            let order = |c: &mut CombinedReader, done| {
                std::iter::from_fn(|| c.next_line(done).unwrap())
                    .map(|l| String::from_utf8(l.data).unwrap())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                order(&mut c, false),
                vec!["o1\n", "e1\n", "o2\n", "e2\n"],
                "{}",
                t.name
            );
            assert_eq!(order(&mut c, true), vec!["tail"], "{}", t.name);
        }
    }

    /// `n` numbered lines of 100 bytes from line `from`, as one chunk.
    fn hundred_byte_lines(from: u64, n: u64) -> Vec<u8> {
        (from..from + n)
            .flat_map(|i| format!("{i:099}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_follower_overtaken_by_a_size_limit_jumps_the_gap_and_says_so() {
        let t = TempRoot::new("reader-limit");
        let id = JobId::parse("j").unwrap();
        let mut sink = crate::store::LogStore::create_job(&t.0, &id).unwrap();
        // 256 KiB: a 128 KiB head, then a tail cut a 64 KiB segment at a time.
        assert!(sink.limit_size(256 << 10).unwrap());
        let mut written = 0;
        // Writes `n` more lines, 100 to a chunk.
        let mut write = |sink: &mut Box<dyn JobSink>, n: u64| {
            for _ in 0..n / 100 {
                sink.append(
                    Stream::Stdout,
                    &Chunk::new(&hundred_byte_lines(written + 1, 100), 1),
                )
                .unwrap();
                written += 100;
            }
        };
        write(&mut sink, 1000);
        let mut head = StreamReader::open(&t, &id, Stream::Stdout, Start::Line(1), 200).unwrap();
        assert!(head.limited());
        let first = head.next_line(false).unwrap().unwrap();
        assert_eq!((first.number, first.omitted_before), (1, None));
        write(&mut sink, 20_000);
        let mut tail = StreamReader::open(&t, &id, Stream::Stdout, Start::Tail(1), 200).unwrap();
        assert_eq!(tail.next_line(false).unwrap().unwrap().number, 21_000);
        // The head reader reads the head, then jumps the gap to the kept tail.
        let mut last = 1;
        let jumped = loop {
            let l = head.next_line(false).unwrap().unwrap();
            if let Some(o) = l.omitted_before {
                break (o, l);
            }
            assert_eq!(l.number, last + 1);
            last = l.number;
        };
        let (o, l) = jumped;
        assert_eq!(l.number, last + 1 + o.omitted_lines, "true numbers");
        assert_eq!(o.omitted_bytes, o.omitted_lines * 100);
        assert_eq!(l.data, format!("{:099}\n", l.number).into_bytes());
        // The tail reader, overtaken by the gap while it waits, jumps to what
        // is kept and counts only what it had not read.
        write(&mut sink, 20_000);
        let l = tail.next_line(false).unwrap().unwrap();
        let o = l
            .omitted_before
            .expect("the gap moved past the tail reader");
        assert_eq!(l.number, 21_001 + o.omitted_lines);
        assert_eq!(l.data, format!("{:099}\n", l.number).into_bytes());
        let gap = sink.omitted(Stream::Stdout).unwrap();
        assert!(gap.omitted_lines > o.omitted_lines);
        // Every kept line reads back right, to the last.
        let mut n = l.number;
        while let Some(l) = tail.next_line(true).unwrap() {
            n += 1;
            assert_eq!((l.number, l.omitted_before), (n, None));
            assert_eq!(l.data, format!("{n:099}\n").into_bytes());
        }
        assert_eq!(n, 41_000);
    }

    // File-only from here: damaged, missing or lagging index files.

    #[test]
    fn missing_index_falls_back_to_scanning() {
        let (store, id, _sink) = job("noidx", &[(Stream::Stdout, b"x\ny\nz\n")]);
        std::fs::remove_file(store.index_path(&id, Stream::Stdout)).unwrap();
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Tail(1), 100).unwrap();
        assert!(!r.indexed());
        assert_eq!(texts(&mut r, true), vec![(3, "z\n".into(), 0)]);
    }

    #[test]
    fn garbage_records_are_detected_and_scanned_around() {
        let (store, id, _sink) = job("garbage", &[(Stream::Stdout, b"a\nb\nc\nd\n")]);
        let path = store.index_path(&id, Stream::Stdout);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(crate::output::index::HEADER.len());
        bytes.extend_from_slice(&[0xff; 64]);
        std::fs::write(&path, bytes).unwrap();
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Tail(2), 100).unwrap();
        assert!(!r.indexed());
        let got: Vec<_> = texts(&mut r, true)
            .into_iter()
            .map(|t| (t.0, t.1))
            .collect();
        assert_eq!(got, vec![(3, "c\n".into()), (4, "d\n".into())]);
    }

    #[test]
    fn an_index_that_claims_lines_the_log_lacks_is_not_trusted() {
        // Records for chunks whose data never reached the disk (power loss).
        let (store, id, _sink) = job(
            "ahead",
            &[(Stream::Stdout, b"1\n2\n"), (Stream::Stdout, b"3\n4\n")],
        );
        let log = store.log_path(&id, Stream::Stdout);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(4)
            .unwrap();
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Tail(1), 100).unwrap();
        assert!(!r.indexed());
        assert_eq!(texts(&mut r, true), vec![(2, "2\n".into(), 0)]);
    }

    #[test]
    fn an_index_whose_chunks_overlap_falls_back_to_a_scan() {
        // Plausible first and last records around one that ends before the
        // previous one: the seek must neither trust it nor size a buffer by it.
        let (store, id, _sink) = job("overlap", &[(Stream::Stdout, b"x\ny\n")]);
        let mut bytes = crate::output::index::HEADER.to_vec();
        for (end, lines_end) in [(3u64, 0u64), (2, 1), (4, 2)] {
            let rec = crate::output::index::Record {
                seq: 0,
                ts_us: 1,
                end,
                lines_end,
            };
            bytes.extend_from_slice(&rec.encode());
        }
        std::fs::write(store.index_path(&id, Stream::Stdout), bytes).unwrap();
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Line(2), 100).unwrap();
        assert!(!r.indexed());
        assert_eq!(texts(&mut r, true), vec![(2, "y\n".into(), 0)]);
    }

    #[test]
    fn an_index_of_chunks_larger_than_todays_reads_is_still_used() {
        // Earlier wrappers read 256 KiB at a time.
        let body: Vec<u8> = (1..=40_000)
            .flat_map(|i| format!("{i:06}\n").into_bytes())
            .collect();
        assert!(body.len() > 256 * 1024);
        let (store, id, _sink) = job("bigchunk", &[(Stream::Stdout, &body)]);
        let mut r =
            StreamReader::open(&store, &id, Stream::Stdout, Start::Line(39_999), 100).unwrap();
        assert!(r.indexed());
        let got: Vec<_> = texts(&mut r, true).into_iter().map(|t| t.1).collect();
        assert_eq!(got, vec!["039999\n", "040000\n"]);
    }

    #[test]
    fn a_line_whose_record_is_not_written_yet_waits_for_it() {
        let (store, id, _sink) = job("record", &[(Stream::Stdout, b"a\n")]);
        let append = |path: std::path::PathBuf, bytes: &[u8]| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(bytes).unwrap();
        };
        // The moment between the wrapper's two writes: data, no record yet.
        append(store.log_path(&id, Stream::Stdout), b"b\n");
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Line(1), 100).unwrap();
        assert_eq!(texts(&mut r, false), vec![(1, "a\n".into(), 100)]);
        let rec = crate::output::index::Record {
            seq: 1,
            ts_us: 555,
            end: 4,
            lines_end: 2,
        };
        append(store.index_path(&id, Stream::Stdout), &rec.encode());
        assert_eq!(texts(&mut r, false), vec![(2, "b\n".into(), 555)]);
        // A writer that died between the two writes: the line comes, untimed.
        append(store.log_path(&id, Stream::Stdout), b"c\n");
        assert_eq!(texts(&mut r, false), vec![]);
        assert_eq!(texts(&mut r, true), vec![(3, "c\n".into(), 0)]);
    }
}
