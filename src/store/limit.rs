//! Per-job size limits (`--max-log-size`, issue 12 point 4): the file store keeps
//! the head and a rolling tail of each stream, and the middle becomes an explicit
//! gap that every reader reports as "N bytes (M lines) omitted".
//!
//! # On-disk format
//!
//! Nothing moves: `stdout.log` and `stdout.idx` keep every byte and record at its
//! true offset, so line numbers, byte offsets and index records stay the job's
//! own. The omitted middle is given back to the filesystem by punching a hole
//! (`fallocate(PUNCH_HOLE)`) in the log and in the index: the files stay sparse,
//! their apparent size keeps growing, the blocks they use stay bounded, and no
//! byte is ever rewritten or copied. What is omitted is described by a sidecar,
//! `stdout.gap` (and `stderr.gap`), created with the job when a limit is set (no
//! sidecar: no limit, and readers pay nothing). It is [`GAP_LEN`] bytes,
//! rewritten in place, all integers little-endian `u64`:
//!
//! | bytes  | field         | meaning                                              |
//! |--------|---------------|------------------------------------------------------|
//! | 0..8   | magic         | `b"LWGAP\x01\0\0"`                                   |
//! | 8..16  | `start`       | first omitted byte (a line start: the head ends here)|
//! | 16..24 | `end`         | first kept byte of the tail (a line start)           |
//! | 24..32 | `lines_start` | newlines before `start`                              |
//! | 32..40 | `lines_end`   | newlines before `end`                                |
//! | 40..48 | `check`       | [`check`] of the four fields, to detect a torn read  |
//!
//! `start == end` means nothing is omitted (yet). Lines `lines_start + 1 ..=
//! lines_end` are omitted; the first kept line after the gap is `lines_end + 1`.
//! The writer updates the sidecar *before* it punches, so a reader that checks
//! the sidecar after reading bytes knows whether they were still data.
//!
//! In the index, the records of chunks inside the gap read as zeros once
//! punched; the record of the chunk ending at `end` is always kept, so a reader
//! sees one chunk `[start, end)` holding the omitted newlines, and treats a
//! zero record as a zero-length chunk at `start` (see `IndexFile`).
//!
//! # Policy
//!
//! The head is the first half of the limit, closed at the first line start at
//! or after it. The tail may then use the rest of the limit; the cut points are
//! line starts at least one segment ([`segment_len`]) apart, so the gap grows a
//! segment at a time and disk use stays under the limit plus one segment and
//! one read. A line longer than a segment delays the next cut until it ends.

use std::collections::VecDeque;

/// Magic and version at the start of every gap sidecar.
pub const GAP_MAGIC: [u8; 8] = *b"LWGAP\x01\0\0";
/// Size of the gap sidecar.
pub const GAP_LEN: usize = 48;
/// Cut points per limit: the gap grows by about `limit / 16` at a time, so a
/// job that prints without end costs 16 hole punches per limit's worth of
/// output, and the tail overshoots the limit by at most one such segment.
const SEGMENTS_PER_LIMIT: u64 = 16;
/// Smallest segment: one index record (`index::MAX_CHUNK`; under a limit a
/// read is stored in pieces of that size), since cuts fall between records.
const MIN_SEGMENT: u64 = crate::output::index::MAX_CHUNK as u64;

/// What a size limit left out of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gap {
    /// First omitted byte.
    pub start: u64,
    /// First byte kept after the gap.
    pub end: u64,
    /// Newlines before `start`.
    pub lines_start: u64,
    /// Newlines before `end`.
    pub lines_end: u64,
}

impl Gap {
    /// True when something is omitted.
    pub fn is_gap(&self) -> bool {
        self.end > self.start
    }

    /// Bytes omitted.
    pub fn omitted_bytes(&self) -> u64 {
        self.end - self.start
    }

    /// Lines omitted.
    pub fn omitted_lines(&self) -> u64 {
        self.lines_end - self.lines_start
    }

    /// The sidecar's bytes.
    pub fn encode(&self) -> [u8; GAP_LEN] {
        let mut b = [0u8; GAP_LEN];
        b[..8].copy_from_slice(&GAP_MAGIC);
        for (i, v) in self.fields().into_iter().chain([check(self)]).enumerate() {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The gap described by `b`, or `None` for bytes that are not a whole,
    /// consistent sidecar (a torn read: read again).
    pub fn decode(b: &[u8; GAP_LEN]) -> Option<Gap> {
        if b[..8] != GAP_MAGIC {
            return None;
        }
        let field = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[8 + i * 8..16 + i * 8]);
            u64::from_le_bytes(w)
        };
        let gap = Gap {
            start: field(0),
            end: field(1),
            lines_start: field(2),
            lines_end: field(3),
        };
        let sane = gap.start <= gap.end && gap.lines_start <= gap.lines_end;
        (sane && field(4) == check(&gap)).then_some(gap)
    }

    fn fields(&self) -> [u64; 4] {
        [self.start, self.end, self.lines_start, self.lines_end]
    }
}

/// A checksum of the sidecar's fields (FNV-1a over their bytes): a reader that
/// raced the in-place rewrite sees a mismatch and reads again.
pub fn check(g: &Gap) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in g.fields() {
        for byte in v.to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Size of one segment of the tail for a limit of `max` bytes per stream.
pub fn segment_len(max: u64) -> u64 {
    (max / SEGMENTS_PER_LIMIT).max(MIN_SEGMENT)
}

/// A place the log could be cut: a line start right after an index record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Byte offset (a line start).
    pub offset: u64,
    /// Newlines before it.
    pub lines: u64,
    /// Index records written before it (the record ending here is `records - 1`).
    pub records: u64,
}

/// What the writer must do to grow the gap: write the new sidecar, then punch
/// the log bytes `log` and the index records `records` (a half-open range of
/// record numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub gap: Gap,
    pub log: (u64, u64),
    pub records: (u64, u64),
    /// The first record after the head: punches may start as early as this
    /// (see [`Advance::aligned`]).
    pub records_floor: u64,
}

/// Filesystem block size punches are aligned to. A punch frees only the whole
/// blocks inside its range, so each unaligned start would leave one block
/// allocated per cut; starting each punch at the block boundary below (never
/// before the gap) frees them. A filesystem with larger blocks keeps at most
/// one partial block per cut.
pub const PUNCH_ALIGN: u64 = 4096;

impl Advance {
    /// `[from, to)` widened down to [`PUNCH_ALIGN`], but never below `floor`
    /// (bytes before it are kept data).
    pub fn aligned(from: u64, to: u64, floor: u64) -> (u64, u64) {
        ((from / PUNCH_ALIGN * PUNCH_ALIGN).max(floor), to)
    }
}

/// The writer's side of one stream's limit: where the head ended, where the
/// tail starts, and the cut points to come (at most a limit's worth of
/// segments, so memory stays a few hundred bytes).
#[derive(Debug)]
pub struct Limiter {
    max: u64,
    segment: u64,
    /// Where the head ended, once it has.
    head: Option<Cut>,
    /// Where the kept tail starts (the gap's end).
    tail: Option<Cut>,
    /// Future cut points, oldest first, one segment apart.
    cuts: VecDeque<Cut>,
}

impl Limiter {
    /// A limit of `max` bytes for one stream.
    pub fn new(max: u64) -> Limiter {
        Limiter {
            max,
            segment: segment_len(max),
            head: None,
            tail: None,
            cuts: VecDeque::new(),
        }
    }

    /// What is omitted so far.
    pub fn gap(&self) -> Gap {
        match (self.head, self.tail) {
            (Some(h), Some(t)) => Gap {
                start: h.offset,
                end: t.offset,
                lines_start: h.lines,
                lines_end: t.lines,
            },
            _ => Gap::default(),
        }
    }

    /// Called after each append that left the log at a line start right after
    /// a record (`at`); says when the gap must grow.
    pub fn at_line_start(&mut self, at: Cut) -> Option<Advance> {
        let Some(head) = self.head else {
            if at.offset >= self.max / 2 {
                self.head = Some(at);
                self.tail = Some(at);
            }
            return None;
        };
        let tail = self.tail.unwrap_or(head);
        if self
            .cuts
            .back()
            .map_or(at.offset >= tail.offset + self.segment, |c| {
                at.offset >= c.offset + self.segment
            })
        {
            self.cuts.push_back(at);
        }
        // The tail may use what the head left of the limit.
        let budget = self.max.saturating_sub(head.offset);
        if at.offset - tail.offset <= budget {
            return None;
        }
        let (mut chosen, mut beyond) = (None, None);
        while let Some(c) = self.cuts.pop_front() {
            if at.offset - c.offset <= budget {
                chosen = Some(c);
                break;
            }
            beyond = Some(c);
        }
        let cut = match (chosen?, beyond) {
            // A cut here would keep no tail at all (the cut points before it
            // are further back than the budget, as when lines end just short
            // of a segment and only every other one is a cut point): keep
            // from the newest of those instead, one cut spacing (under a
            // segment plus one record) of tail, and cut here next time.
            (c, b) if c.offset == at.offset => {
                self.cuts.push_front(c);
                b?
            }
            (c, _) => c,
        };
        self.tail = Some(cut);
        // The record ending at the cut stays: readers take the gap's end from it.
        let first_record = if tail.offset == head.offset {
            head.records
        } else {
            tail.records - 1
        };
        Some(Advance {
            gap: self.gap(),
            log: (tail.offset, cut.offset),
            records: (first_record, cut.records - 1),
            records_floor: head.records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_round_trips_and_a_torn_one_is_refused() {
        let g = Gap {
            start: 100,
            end: 5000,
            lines_start: 3,
            lines_end: 70,
        };
        let b = g.encode();
        assert_eq!(Gap::decode(&b), Some(g));
        assert_eq!((g.omitted_bytes(), g.omitted_lines()), (4900, 67));
        for i in 8..GAP_LEN {
            let mut torn = b;
            torn[i] ^= 1;
            assert_eq!(Gap::decode(&torn), None, "byte {i}");
        }
        assert_eq!(Gap::decode(&[0; GAP_LEN]), None);
    }

    /// Feeds `n` lines of `len` bytes, one record per line, and returns every
    /// advance and the largest kept size seen.
    fn run(max: u64, len: u64, n: u64) -> (Limiter, Vec<Advance>, u64) {
        let mut l = Limiter::new(max);
        let mut advances = Vec::new();
        let mut worst = 0;
        for i in 1..=n {
            let at = Cut {
                offset: i * len,
                lines: i,
                records: i,
            };
            if let Some(a) = l.at_line_start(at) {
                advances.push(a);
            }
            let g = l.gap();
            worst = worst.max(at.offset - g.omitted_bytes());
        }
        (l, advances, worst)
    }

    #[test]
    fn the_tail_is_never_empty_when_cut_points_are_sparse() {
        // Lines just short of a segment: only every other line start is a
        // cut point, twice the budget the head leaves apart.
        let max = 256 << 10;
        for len in [60_000, 65_000, 65_535, 40_000, 1_000] {
            let mut l = Limiter::new(max);
            for i in 1..=4 * max / len + 10 {
                let at = Cut {
                    offset: i * len,
                    lines: i,
                    records: i,
                };
                l.at_line_start(at);
                let g = l.gap();
                if g.is_gap() {
                    assert!(
                        g.end < at.offset,
                        "len {len}, line {i}: nothing kept after the gap"
                    );
                    let kept = at.offset - g.omitted_bytes();
                    assert!(
                        kept <= max + segment_len(max) + MIN_SEGMENT,
                        "len {len}, line {i}: {kept} bytes kept"
                    );
                }
            }
            assert!(l.gap().is_gap(), "len {len}");
        }
    }

    #[test]
    fn under_the_limit_nothing_is_omitted() {
        let (l, advances, _) = run(1 << 20, 100, 10_000);
        assert!(advances.is_empty());
        assert!(!l.gap().is_gap());
    }

    #[test]
    fn the_kept_part_stays_under_the_limit_plus_a_segment() {
        let max = 1 << 20;
        let (l, advances, worst) = run(max, 100, 200_000);
        assert!(worst <= max + segment_len(max), "{worst}");
        let g = l.gap();
        assert!(g.is_gap());
        // The head is half the limit, closed at a line start.
        assert_eq!(g.start, (max / 2).div_ceil(100) * 100);
        assert_eq!(g.omitted_bytes(), g.omitted_lines() * 100);
        // Consecutive punches cover the gap exactly once, records too, and the
        // record ending at the gap's end is never punched.
        let mut log_at = g.start;
        let mut rec_at = g.lines_start;
        for a in &advances {
            assert_eq!(a.log.0, log_at);
            assert_eq!(a.records.0, rec_at);
            log_at = a.log.1;
            rec_at = a.records.1;
            assert_eq!(a.records.1, a.gap.lines_end - 1);
        }
        assert_eq!(log_at, g.end);
        assert!(advances.len() as u64 >= 20, "a segment at a time");
    }
}
