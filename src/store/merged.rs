//! Where a line falls in the arrival order of a job's two streams, found in
//! the file store's index files by binary search instead of a walk from the
//! first line (issue 11: `at=L5000000` on a 1 GB log answers in milliseconds).
//!
//! The merge ([`CombinedReader`](crate::reader::CombinedReader)) orders lines
//! by the arrival sequence of the chunk that completed each one, stdout first
//! on a tie, and lines past the index last (their sequence is unknown). So a
//! line's place is its key `(seq, stream)`: the stderr lines before stdout
//! line k are those whose seq is below its seq, and the stdout lines before
//! stderr line k those whose seq is at most its seq. Each count is a binary
//! search over one stream's records by `seq`; a line's seq is a binary search
//! by `lines_end`. Only the bytes past the index are scanned, as every reader
//! of the file store does.

use super::{open_job_file, FileStore, IndexFile, JobId, Stream};
use crate::output::index::{self, Records};
use crate::reader::{walk_merged_before, Anchor, LARGEST_CHUNK};
use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes read at a time while counting the newlines past the index.
const BLOCK: usize = 64 * 1024;

/// See [`LogStore::merged_before`](super::LogStore::merged_before).
pub(super) fn merged_before(
    store: &FileStore,
    id: &JobId,
    at: Anchor,
    writer_done: bool,
) -> Result<[u64; 2]> {
    let limited = [Stream::Stdout, Stream::Stderr]
        .iter()
        .any(|s| open_job_file(&store.gap_path(id, *s)).is_ok());
    if limited {
        // A size limit punches records out of the index (they read as seq 0):
        // the keys are no longer in order, but the log is bounded by the
        // limit, so the walk is too.
        return walk_merged_before(store, id, at, writer_done);
    }
    let open = |s: Stream| {
        let log_path = store.log_path(id, s);
        let log =
            open_job_file(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
        let idx = IndexFile::open(&store.index_path(id, s)).ok();
        Keys::new(&log, idx, writer_done)
            .with_context(|| format!("reading {} of job {id}", s.name()))
    };
    cursor(&open(Stream::Stdout)?, &open(Stream::Stderr)?, at)
}

/// The cursor before `at`, from both streams' keys.
fn cursor<R: Records>(out: &Keys<R>, err: &Keys<R>, at: Anchor) -> Result<[u64; 2]> {
    let end = [out.lines, err.lines];
    Ok(match at {
        Anchor::Line(Stream::Stdout, n) => {
            let n = n.max(1);
            if n > out.lines {
                return Ok(end);
            }
            [n - 1, err.below(out.key(n)?)?]
        }
        Anchor::Line(Stream::Stderr, n) => {
            let n = n.max(1);
            if n > err.lines {
                return Ok(end);
            }
            [out.at_most(err.key(n)?)?, n - 1]
        }
        Anchor::Merged(n) => {
            let before = n.saturating_sub(1);
            if before >= out.lines + err.lines {
                return Ok(end);
            }
            // The stdout lines among the first `before` merged ones: the
            // largest k whose merged position (0-based) is below `before`.
            // Positions grow with k, so a binary search finds it.
            let (mut lo, mut hi) = (0, out.lines.min(before));
            while lo < hi {
                let k = lo + (hi - lo).div_ceil(2);
                let pos = k - 1 + err.below(out.key(k)?)?;
                if pos < before {
                    lo = k;
                } else {
                    hi = k - 1;
                }
            }
            [lo, before - lo]
        }
    })
}

/// One stream's lines as the merge sees them: how many there are and each
/// one's arrival sequence.
struct Keys<R> {
    /// The index, when it is consistent with the log (as a reader checks).
    idx: Option<R>,
    /// Newlines the index covers.
    indexed_lines: u64,
    /// Newlines past the index.
    tail_lines: u64,
    /// Lines a reader hands out now (see [`Keys::new`]).
    lines: u64,
    /// The seq of a final line without a newline: the last record's when
    /// the index covers the whole log, else unknown (`u64::MAX`).
    unfinished_seq: u64,
}

impl<R: Records> Keys<R> {
    /// The keys of a stream whose log is `log`, as a reader of it finds
    /// them: a final line without a newline counts only once the writer is
    /// done, and while it runs, lines past an index that lags by at most one
    /// chunk wait for their records.
    fn new(log: &File, idx: Option<R>, writer_done: bool) -> Result<Keys<R>> {
        let len = log.metadata()?.len();
        let idx = idx.filter(|i| consistent(i, len));
        let (indexed_lines, indexed_end, last_seq) = match &idx {
            Some(i) if i.count() > 0 => {
                let last = i.get(i.count() - 1)?;
                (last.lines_end, last.end, last.seq)
            }
            _ => (0, 0, u64::MAX),
        };
        let tail_lines = count_newlines(log, indexed_end, len)?;
        let unfinished = len > 0 && byte_at(log, len - 1)? != b'\n';
        let lines = if writer_done {
            indexed_lines + tail_lines + u64::from(unfinished)
        } else if idx.is_some() && len - indexed_end <= LARGEST_CHUNK {
            indexed_lines
        } else {
            indexed_lines + tail_lines
        };
        Ok(Keys {
            unfinished_seq: if indexed_end == len {
                last_seq
            } else {
                u64::MAX
            },
            idx,
            indexed_lines,
            tail_lines,
            lines,
        })
    }

    /// The seq of line `n` (1 ≤ n ≤ lines).
    fn key(&self, n: u64) -> Result<u64> {
        if n <= self.indexed_lines {
            let idx = self.idx.as_ref().context("an index covers the line")?;
            let chunk = index::chunk_with_newline(idx, n)?.context("the index holds the line")?;
            return Ok(idx.get(chunk)?.seq);
        }
        if n <= self.indexed_lines + self.tail_lines {
            return Ok(u64::MAX);
        }
        Ok(self.unfinished_seq)
    }

    /// Lines whose seq is below `v`.
    fn below(&self, v: u64) -> Result<u64> {
        let Some(idx) = &self.idx else {
            return Ok(0);
        };
        // The first record whose seq reaches `v`: lines completed before it
        // come first. Past every record, the indexed lines and an unfinished
        // last line of the last record do.
        let (mut lo, mut hi) = (0, idx.count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if idx.get(mid)?.seq >= v {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let n = if lo < idx.count() {
            index::lines_before(idx, lo)?
        } else {
            let counted = self.lines > self.indexed_lines + self.tail_lines;
            self.indexed_lines + u64::from(counted && self.unfinished_seq < v)
        };
        Ok(n.min(self.lines))
    }

    /// Lines whose seq is at most `v`.
    fn at_most(&self, v: u64) -> Result<u64> {
        match v.checked_add(1) {
            Some(w) => self.below(w),
            None => Ok(self.lines),
        }
    }
}

/// The checks a reader makes before it trusts an index (see
/// `StreamReader::adopt_index`): records in order, within the log, and no
/// more newlines than bytes.
fn consistent<R: Records>(idx: &R, len: u64) -> bool {
    if idx.count() == 0 {
        return true;
    }
    match (idx.get(0), idx.get(idx.count() - 1)) {
        (Ok(first), Ok(last)) => {
            first.end <= last.end && last.end <= len && last.lines_end <= last.end
        }
        _ => false,
    }
}

fn byte_at(log: &File, at: u64) -> Result<u8> {
    let mut b = [0u8; 1];
    log.read_exact_at(&mut b, at)?;
    Ok(b[0])
}

/// Newlines in `log` between `from` and `to`, a block at a time.
fn count_newlines(log: &File, mut from: u64, to: u64) -> Result<u64> {
    let mut block = vec![0u8; ((to.saturating_sub(from)) as usize).min(BLOCK)];
    let mut n = 0;
    while from < to {
        let want = ((to - from) as usize).min(BLOCK);
        let got = log.read_at(&mut block[..want], from)?;
        if got == 0 {
            break;
        }
        n += memchr::memchr_iter(b'\n', &block[..got]).count() as u64;
        from += got as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Chunk, LogStore, TempRoot};

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Chunks of random lines on random streams, some without a newline at
    /// their end (a line continued by the next chunk of its stream).
    fn writes(rng: &mut Rng) -> Vec<(Stream, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..rng.next(30) {
            let s = if rng.next(3) == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let mut chunk = Vec::new();
            for _ in 0..rng.next(4) {
                chunk.extend(std::iter::repeat_n(b'x', rng.next(5) as usize));
                chunk.push(b'\n');
            }
            chunk.extend(std::iter::repeat_n(b'y', rng.next(3) as usize));
            if !chunk.is_empty() {
                out.push((s, chunk));
            }
        }
        out
    }

    /// Every anchor worth asking about, past the ends included.
    fn anchors(store: &dyn LogStore, id: &JobId) -> Vec<Anchor> {
        let total = |s| {
            store
                .open_lines(id, s, crate::reader::Start::Line(1), 0)
                .unwrap()
                .total_lines()
                .unwrap()
        };
        let (o, e) = (total(Stream::Stdout), total(Stream::Stderr));
        let mut all: Vec<Anchor> = (0..=o + e + 2).map(Anchor::Merged).collect();
        all.extend((0..=o + 2).map(|n| Anchor::Line(Stream::Stdout, n)));
        all.extend((0..=e + 2).map(|n| Anchor::Line(Stream::Stderr, n)));
        all
    }

    fn agree(store: &FileStore, id: &JobId, what: &str) {
        for done in [true, false] {
            for at in anchors(store, id) {
                let walked = walk_merged_before(store, id, at, done).unwrap();
                let found = merged_before(store, id, at, done).unwrap();
                assert_eq!(found, walked, "{what}, {at:?}, writer done: {done}");
            }
        }
    }

    #[test]
    fn the_index_and_a_walk_agree_on_random_interleavings() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..60 {
            let root = TempRoot::new(&format!("merged-{round}"));
            let id = JobId::parse("j").unwrap();
            let mut sink = root.create_job(&id).unwrap();
            for (i, (s, c)) in writes(&mut rng).iter().enumerate() {
                sink.append(*s, &Chunk::new(c, 100 + i as u64)).unwrap();
            }
            agree(&root, &id, &format!("round {round}"));
            // An index cut short (a crash between a chunk and its record),
            // then none at all: lines past it have no known order.
            let idx = root.index_path(&id, Stream::Stdout);
            let len = std::fs::metadata(&idx).unwrap().len();
            if len > 16 + 32 {
                let f = std::fs::OpenOptions::new().write(true).open(&idx).unwrap();
                f.set_len(len - 32 - rng.next(32)).unwrap();
                agree(&root, &id, &format!("round {round}, short index"));
            }
            std::fs::remove_file(root.index_path(&id, Stream::Stderr)).unwrap();
            agree(&root, &id, &format!("round {round}, no stderr index"));
            std::fs::remove_file(&idx).unwrap();
            agree(&root, &id, &format!("round {round}, no index"));
        }
    }

    #[test]
    fn positions_come_from_the_index_not_a_scan() {
        // Many lines: the keys are read by binary search, so asking for a
        // line far in costs a few record reads (the walk would read them all;
        // here the answer is only checked, the cost is the design).
        let root = TempRoot::new("merged-far");
        let id = JobId::parse("j").unwrap();
        let mut sink = root.create_job(&id).unwrap();
        for i in 0..2000u64 {
            let s = if i % 3 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            sink.append(s, &Chunk::new(format!("{i}\n").as_bytes(), i))
                .unwrap();
        }
        let at = |a| merged_before(&root, &id, a, true).unwrap();
        // Line i (0-based) went to stderr when i % 3 == 0.
        assert_eq!(at(Anchor::Merged(1)), [0, 0]);
        assert_eq!(at(Anchor::Merged(4)), [2, 1]);
        assert_eq!(at(Anchor::Merged(1000)), [666, 333]);
        assert_eq!(at(Anchor::Line(Stream::Stderr, 2)), [2, 1]);
        assert_eq!(at(Anchor::Line(Stream::Stdout, 3)), [2, 2]);
        assert_eq!(at(Anchor::Merged(5000)), [1333, 667]);
    }
}
