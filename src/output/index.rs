//! The line index: a sidecar per stream (`stdout.idx`, `stderr.idx`) that lets a
//! reader find line N, the last N lines, each line's arrival time, and the arrival
//! order across both streams without scanning the log.
//!
//! # Format (version 1)
//!
//! A 16-byte header, `b"LWIDX\x01\0\0"` then 8 reserved zero bytes, followed by
//! fixed-size 32-byte records, in order, each covering the chunks the wrapper read
//! from the child and appended to the log since the previous record. A record is
//! written for every chunk that holds a newline; chunks without one wait and join
//! it (or are recorded once they reach [`MAX_CHUNK`] bytes, or when the job
//! ends), so a job writing a byte at a time costs a record per line, not per byte. All integers are little-endian `u64`:
//!
//! | bytes  | field       | meaning                                                  |
//! |--------|-------------|----------------------------------------------------------|
//! | 0..8   | `seq`       | arrival sequence number, shared by both streams of a job |
//! | 8..16  | `ts_us`     | when the chunk was read, microseconds since the epoch    |
//! | 16..24 | `end`       | byte offset in the log just past this chunk              |
//! | 24..32 | `lines_end` | newlines in the log up to `end`                          |
//!
//! A chunk starts where the previous record ends (the first at 0). A line's
//! timestamp and arrival sequence are those of the chunk that holds its newline (the
//! moment the line became complete); a final line without a newline takes those of
//! the last chunk; since a record is written with each chunk holding a newline,
//! these are exactly the read time and order of that chunk. At most one record per
//! read (not per line) keeps the cost to one small write per chunk, so 5 M short
//! lines cost a few thousand records, not 5 M. Finding line N is a binary search on
//! `lines_end` then a scan of one record's range (at most [`MAX_CHUNK`] bytes).
//!
//! The record is written after its chunk's data, so the log may run ahead of the
//! index (by at most [`MAX_CHUNK`] bytes without a newline, or one chunk, also
//! after a crash); readers treat bytes past the last record's `end` as one
//! unindexed chunk and scan it.

/// Magic and version at the start of every index file.
pub const HEADER: [u8; 16] = *b"LWIDX\x01\0\0\0\0\0\0\0\0\0\0";
/// Size of one record.
pub const RECORD_LEN: usize = 32;
/// Largest chunk the wrapper reads at once, so the scan to find a line inside a
/// chunk is bounded. 64 KiB: the pipe buffer's default size, few syscalls for a
/// fast child, and a buffer that stays in the CPU cache between the read and the
/// log write (measured: 256 KiB reads made the page-cache copy twice as slow).
pub const MAX_CHUNK: usize = 64 * 1024;

/// One index record (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record {
    pub seq: u64,
    pub ts_us: u64,
    pub end: u64,
    pub lines_end: u64,
}

impl Record {
    /// The record's on-disk bytes.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        for (i, v) in [self.seq, self.ts_us, self.end, self.lines_end]
            .into_iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Reads a record back from its bytes.
    pub fn decode(b: &[u8; RECORD_LEN]) -> Record {
        let field = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Record {
            seq: field(0),
            ts_us: field(1),
            end: field(2),
            lines_end: field(3),
        }
    }
}

/// Random access to a stream's records, from a file or from memory.
pub trait Records {
    /// Number of complete records.
    fn count(&self) -> u64;
    /// Record `i` (`i < count()`).
    fn get(&self, i: u64) -> std::io::Result<Record>;
}

impl Records for [Record] {
    fn count(&self) -> u64 {
        self.len() as u64
    }
    fn get(&self, i: u64) -> std::io::Result<Record> {
        Ok(self[i as usize])
    }
}

/// The first record whose `lines_end` reaches `newlines`, i.e. the chunk that holds
/// the `newlines`-th newline of the stream; `None` when the index has fewer.
pub fn chunk_with_newline<R: Records + ?Sized>(
    r: &R,
    newlines: u64,
) -> std::io::Result<Option<u64>> {
    let (mut lo, mut hi) = (0, r.count());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if r.get(mid)?.lines_end >= newlines {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok((lo < r.count()).then_some(lo))
}

/// Byte range `[start, end)` of chunk `i`.
pub fn chunk_range<R: Records + ?Sized>(r: &R, i: u64) -> std::io::Result<(u64, u64)> {
    let start = if i == 0 { 0 } else { r.get(i - 1)?.end };
    Ok((start, r.get(i)?.end))
}

/// Newlines before chunk `i`.
pub fn lines_before<R: Records + ?Sized>(r: &R, i: u64) -> std::io::Result<u64> {
    Ok(if i == 0 { 0 } else { r.get(i - 1)?.lines_end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(chunks: &[&[u8]]) -> Vec<Record> {
        let (mut end, mut lines) = (0, 0);
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                end += c.len() as u64;
                lines += memchr::memchr_iter(b'\n', c).count() as u64;
                Record {
                    seq: i as u64 * 2,
                    ts_us: 1000 + i as u64,
                    end,
                    lines_end: lines,
                }
            })
            .collect()
    }

    #[test]
    fn record_round_trips_through_bytes() {
        let r = Record {
            seq: 1,
            ts_us: u64::MAX,
            end: 1 << 40,
            lines_end: 7,
        };
        assert_eq!(Record::decode(&r.encode()), r);
    }

    #[test]
    fn finds_the_chunk_holding_each_newline() {
        // chunk 0: "a\nb" (1 newline), chunk 1: "c" (0), chunk 2: "\nd\ne\n" (3)
        let idx = records(&[b"a\nb", b"c", b"\nd\ne\n"]);
        let found: Vec<_> = (1..=4)
            .map(|n| chunk_with_newline(idx.as_slice(), n).unwrap())
            .collect();
        assert_eq!(found, vec![Some(0), Some(2), Some(2), Some(2)]);
        assert_eq!(chunk_with_newline(idx.as_slice(), 5).unwrap(), None);
        assert_eq!(chunk_range(idx.as_slice(), 2).unwrap(), (4, 9));
        assert_eq!(lines_before(idx.as_slice(), 2).unwrap(), 1);
    }
}
