//! Reading a job's lines back: from line N, or the last N lines, with each line's
//! arrival time and sequence taken from the index, optionally merged across both
//! streams in arrival order. The readers never hold more than one block plus the
//! kept part of one line in memory, however long the line or the log.
//!
//! Readers are polled: [`StreamReader::next_line`] returns `None` at the current
//! end of the log, and the caller decides whether to wait (follow) or stop.

use crate::output::index::Records;
use crate::store::{line_start, FileStore, IndexFile, JobId, Stream};
use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes read from the log at a time while looking for line ends.
const BLOCK: usize = 64 * 1024;

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
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At line N (from 1), like `tail -n +N`.
    Line(u64),
    /// At the last N lines present when the reader opens.
    Tail(u64),
}

/// Reads one stream's lines in order.
pub struct StreamReader {
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
    max_keep: usize,
    block: Vec<u8>,
}

impl StreamReader {
    /// Opens `stream` of job `id`. Lines longer than `max_keep` bytes are cut in
    /// [`LogLine::data`] (their `len` stays exact). A missing or damaged index is
    /// not an error: reads fall back to scanning (see [`StreamReader::indexed`]).
    pub fn open(
        store: &FileStore,
        id: &JobId,
        stream: Stream,
        start: Start,
        max_keep: usize,
    ) -> Result<StreamReader> {
        let path = store.log_path(id, stream);
        let log = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let idx_path = store.index_path(id, stream);
        let idx = IndexFile::open(&idx_path).ok();
        let mut r = StreamReader {
            stream,
            log,
            idx,
            idx_path,
            pos: 0,
            line: 1,
            scanned: 0,
            rec: 0,
            max_keep,
            block: vec![0; BLOCK],
        };
        let first = match start {
            Start::Line(n) => n.max(1),
            Start::Tail(n) => (r.total_lines()? + 1).saturating_sub(n).max(1),
        };
        r.seek_line(first)?;
        Ok(r)
    }

    /// True when the index was usable; false means line lookups scan the log.
    pub fn indexed(&self) -> bool {
        self.idx.is_some()
    }

    /// The stream this reader reads.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Byte offset of the next line.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn refresh_index(&mut self) {
        match &self.idx {
            Some(_) => {
                if let Ok(i) = IndexFile::open(&self.idx_path) {
                    self.idx = Some(i);
                }
            }
            None => self.idx = IndexFile::open(&self.idx_path).ok(),
        }
    }

    fn log_len(&self) -> Result<u64> {
        Ok(self.log.metadata()?.len())
    }

    /// Lines in the log now, counting a final line without a newline.
    pub fn total_lines(&mut self) -> Result<u64> {
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
        let mut n = 0;
        while from < to {
            let want = ((to - from) as usize).min(BLOCK);
            let got = self.log.read_at(&mut self.block[..want], from)?;
            if got == 0 {
                break;
            }
            n += memchr::memchr_iter(b'\n', &self.block[..got]).count() as u64;
            from += got as u64;
        }
        Ok(n)
    }

    /// Moves to line `n`; past the end, waits at the end for it to be written.
    fn seek_line(&mut self, n: u64) -> Result<()> {
        let indexed = match &self.idx {
            Some(i) => line_start(&self.log, i, n)?,
            None => None,
        };
        let (pos, line) = match indexed {
            Some(off) => (off, n),
            None => {
                // Not in the index (unindexed tail, no index): scan from the last
                // indexed point, counting newlines.
                let (mut pos, mut line) = match &self.idx {
                    Some(i) if i.count() > 0 => {
                        let last = i.get(i.count() - 1)?;
                        (last.end, last.lines_end + 1)
                    }
                    _ => (0, 1),
                };
                let len = self.log_len()?;
                'scan: while line < n && pos < len {
                    let got = self.log.read_at(&mut self.block, pos)?;
                    if got == 0 {
                        break;
                    }
                    for i in memchr::memchr_iter(b'\n', &self.block[..got]) {
                        line += 1;
                        if line == n {
                            pos += i as u64 + 1;
                            break 'scan;
                        }
                    }
                    pos += got as u64;
                }
                (pos.min(len), line)
            }
        };
        self.pos = pos;
        self.line = line;
        self.scanned = pos;
        self.rec = match &self.idx {
            Some(i) => crate::output::index::chunk_with_newline(i, line)?.unwrap_or(i.count()),
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
            match idx.get(self.rec) {
                Ok(r) if r.end > newline_at => return (r.ts_us, r.seq),
                Ok(_) => self.rec += 1,
                Err(_) => break,
            }
        }
        // Past the index (it trails its chunk by a moment, or a crash cut it).
        (0, u64::MAX)
    }

    /// The next line, or `None` at the current end. A final line without a
    /// newline is returned only when `writer_done` (it may still grow otherwise).
    pub fn next_line(&mut self, writer_done: bool) -> Result<Option<LogLine>> {
        let mut len = self.log_len()?;
        if self.scanned >= len {
            self.refresh_index();
            len = self.log_len()?;
        }
        let mut data = Vec::new();
        let mut at = self.pos;
        let mut newline = None;
        while at < len {
            let want = ((len - at) as usize).min(BLOCK);
            let got = self.log.read_at(&mut self.block[..want], at)?;
            if got == 0 {
                break;
            }
            let chunk = &self.block[..got];
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
        let end = match newline {
            Some(nl) => nl + 1,
            None if writer_done && len > self.pos => len,
            None => {
                self.scanned = len;
                return Ok(None);
            }
        };
        self.refresh_index_if_needed(end);
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
        };
        self.pos = end;
        self.scanned = end;
        self.line += 1;
        Ok(Some(line))
    }

    /// The index is written just after its chunk: re-read it if it does not yet
    /// cover the line just found.
    fn refresh_index_if_needed(&mut self, end: u64) {
        let covered = match &self.idx {
            Some(i) => i.count() > 0 && i.get(i.count() - 1).map(|r| r.end >= end).unwrap_or(false),
            None => false,
        };
        if !covered {
            self.refresh_index();
        }
    }
}

/// Both streams of a job merged in arrival order (by the sequence of the chunk
/// that completed each line).
pub struct CombinedReader {
    readers: [StreamReader; 2],
    peeked: [Option<LogLine>; 2],
}

impl CombinedReader {
    /// Merges two readers, normally stdout and stderr of one job.
    pub fn new(stdout: StreamReader, stderr: StreamReader) -> CombinedReader {
        CombinedReader {
            readers: [stdout, stderr],
            peeked: [None, None],
        }
    }

    fn peek(&mut self, i: usize, writer_done: bool) -> Result<()> {
        if self.peeked[i].is_none() {
            self.peeked[i] = self.readers[i].next_line(writer_done)?;
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
    use crate::store::{JobSink, LogStore};

    fn job(tag: &str, writes: &[(Stream, &[u8])]) -> (FileStore, JobId, Box<dyn JobSink>) {
        let root =
            std::env::temp_dir().join(format!("logwrap-reader-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = FileStore::new(root);
        store.ensure_writable().unwrap();
        let id = JobId::parse("j").unwrap();
        let mut sink = store.create_job(&id).unwrap();
        for (i, (s, c)) in writes.iter().enumerate() {
            sink.append(*s, c, 100 + i as u64).unwrap();
        }
        (store, id, sink)
    }

    fn texts(r: &mut StreamReader, done: bool) -> Vec<(u64, String, u64)> {
        std::iter::from_fn(|| r.next_line(done).unwrap())
            .map(|l| (l.number, String::from_utf8(l.data).unwrap(), l.ts_us))
            .collect()
    }

    #[test]
    fn reads_lines_with_their_chunk_timestamps() {
        let (store, id, _sink) = job(
            "ts",
            &[(Stream::Stdout, b"a\nb"), (Stream::Stdout, b"b\nc")],
        );
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Line(1), 100).unwrap();
        assert_eq!(
            texts(&mut r, false),
            vec![(1, "a\n".into(), 100), (2, "bb\n".into(), 101)]
        );
        assert_eq!(texts(&mut r, true), vec![(3, "c".into(), 101)]);
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn tail_and_since_start_at_the_right_line() {
        let (store, id, _sink) = job("tail", &[(Stream::Stdout, b"1\n2\n3\n4\n5")]);
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Tail(2), 100).unwrap();
        assert_eq!(
            texts(&mut r, true).iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Line(3), 100).unwrap();
        assert_eq!(
            texts(&mut r, true).iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Tail(99), 100).unwrap();
        assert_eq!(texts(&mut r, true).len(), 5);
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn missing_index_falls_back_to_scanning() {
        let (store, id, _sink) = job("noidx", &[(Stream::Stdout, b"x\ny\nz\n")]);
        std::fs::remove_file(store.index_path(&id, Stream::Stdout)).unwrap();
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Tail(1), 100).unwrap();
        assert!(!r.indexed());
        assert_eq!(texts(&mut r, true), vec![(3, "z\n".into(), 0)]);
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn long_lines_are_cut_but_measured() {
        let (store, id, _sink) = job(
            "long",
            &[
                (Stream::Stdout, &[b'x'; 200_000]),
                (Stream::Stdout, b"\nok\n"),
            ],
        );
        let mut r = StreamReader::open(&store, &id, Stream::Stdout, Start::Line(1), 10).unwrap();
        let first = r.next_line(false).unwrap().unwrap();
        assert_eq!((first.len, first.data.len()), (200_001, 10));
        assert_eq!(r.next_line(false).unwrap().unwrap().data, b"ok\n");
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn combined_follows_arrival_order() {
        let (store, id, _sink) = job(
            "merge",
            &[
                (Stream::Stdout, b"o1\no"),
                (Stream::Stderr, b"e1\n"),
                (Stream::Stdout, b"2\n"),
                (Stream::Stderr, b"e2\n"),
            ],
        );
        let open = |s| StreamReader::open(&store, &id, s, Start::Line(1), 100).unwrap();
        let mut c = CombinedReader::new(open(Stream::Stdout), open(Stream::Stderr));
        let order: Vec<_> = std::iter::from_fn(|| c.next_line(true).unwrap())
            .map(|l| String::from_utf8(l.data).unwrap())
            .collect();
        assert_eq!(order, vec!["o1\n", "e1\n", "o2\n", "e2\n"]);
        std::fs::remove_dir_all(store.root()).unwrap();
    }
}
