//! Splitting a stream into lines as it arrives in chunks of any size: which
//! bytes of a chunk belong to which line (numbered from 1), where each piece
//! sits in the stream, and whether it ends its line. A line cut by a chunk
//! boundary continues in the next chunk with the same number. Pure and
//! allocation-free, so every sink (the file store's index, an in-memory store,
//! a shipper) numbers lines the same way.

use std::ops::Range;

/// Where a stream stands between chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSplitter {
    /// Number of the line the next byte belongs to.
    line: u64,
    /// Stream offset of the next byte.
    offset: u64,
    /// Stream offset where the line in progress started.
    line_start: u64,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new()
    }
}

/// The part of one line inside one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The line's number, from 1.
    pub line: u64,
    /// Where the line starts in the stream (it may have started in an earlier
    /// chunk).
    pub line_start: u64,
    /// The piece's bytes within the chunk.
    pub range: Range<usize>,
    /// True when the piece ends with the line's newline.
    pub complete: bool,
}

impl LineSplitter {
    /// A stream at its start: line 1, offset 0.
    pub fn new() -> LineSplitter {
        LineSplitter {
            line: 1,
            offset: 0,
            line_start: 0,
        }
    }

    /// Number of the line the next byte belongs to.
    pub fn next_line(&self) -> u64 {
        self.line
    }

    /// Complete lines so far (newlines seen).
    pub fn complete_lines(&self) -> u64 {
        self.line - 1
    }

    /// Bytes seen so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True when a line has started but not ended (the last chunk did not end
    /// with a newline).
    pub fn in_line(&self) -> bool {
        self.offset > self.line_start
    }

    /// Lines so far, counting an unfinished last one.
    pub fn lines(&self) -> u64 {
        self.complete_lines() + u64::from(self.in_line())
    }

    /// Takes in `chunk`, of which the caller already knows the number of
    /// newlines: the fast path for a sink that needs only the counts.
    pub fn advance(&mut self, chunk: &[u8], newlines: u64) {
        if newlines > 0 {
            let last = memchr::memrchr(b'\n', chunk).expect("the chunk has a newline");
            self.line_start = self.offset + last as u64 + 1;
        }
        self.line += newlines;
        self.offset += chunk.len() as u64;
    }

    /// Takes in `chunk`, yielding its pieces of lines in order.
    pub fn split<'a>(&'a mut self, chunk: &'a [u8]) -> Pieces<'a> {
        Pieces {
            splitter: self,
            chunk,
            at: 0,
        }
    }
}

/// The pieces of one chunk; see [`LineSplitter::split`]. The splitter moves on
/// as the pieces are taken.
pub struct Pieces<'a> {
    splitter: &'a mut LineSplitter,
    chunk: &'a [u8],
    at: usize,
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.at >= self.chunk.len() {
            return None;
        }
        let s = &mut *self.splitter;
        let rest = &self.chunk[self.at..];
        let (len, complete) = match memchr::memchr(b'\n', rest) {
            Some(i) => (i + 1, true),
            None => (rest.len(), false),
        };
        let piece = Piece {
            line: s.line,
            line_start: s.line_start,
            range: self.at..self.at + len,
            complete,
        };
        self.at += len;
        s.offset += len as u64;
        if complete {
            s.line += 1;
            s.line_start = s.offset;
        }
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece of `text` cut into chunks at `cuts`: (line, start, text, complete).
    fn pieces(text: &[u8], cuts: &[usize]) -> (Vec<(u64, u64, String, bool)>, LineSplitter) {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([text.len()].iter()) {
            let chunk = &text[from..to];
            for p in s.split(chunk) {
                let t = String::from_utf8_lossy(&chunk[p.range.clone()]).into_owned();
                out.push((p.line, p.line_start, t, p.complete));
            }
            from = to;
        }
        (out, s)
    }

    #[test]
    fn lines_cut_by_chunks_keep_their_number_and_start() {
        let (p, s) = pieces(b"ab\ncd\nef", &[1, 4]);
        assert_eq!(
            p,
            vec![
                (1, 0, "a".into(), false),
                (1, 0, "b\n".into(), true),
                (2, 3, "c".into(), false),
                (2, 3, "d\n".into(), true),
                (3, 6, "ef".into(), false),
            ]
        );
        assert_eq!((s.complete_lines(), s.lines(), s.in_line()), (2, 3, true));
        assert_eq!(s.offset(), 8);
    }

    #[test]
    fn empty_chunks_and_empty_lines_are_counted_right() {
        let (p, s) = pieces(b"\n\nx\n", &[0, 0, 1, 1]);
        assert_eq!(
            p,
            vec![
                (1, 0, "\n".into(), true),
                (2, 1, "\n".into(), true),
                (3, 2, "x\n".into(), true),
            ]
        );
        assert_eq!((s.lines(), s.in_line(), s.next_line()), (3, false, 4));
    }

    #[test]
    fn every_chunking_gives_the_same_lines_and_advance_agrees_with_split() {
        let text = b"one\ntwo\n\nthree is longer\nfour";
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let (p, s) = pieces(text, &[a, b]);
                // Joined per line, the pieces are the lines.
                let mut lines: Vec<(u64, String)> = Vec::new();
                for (n, _, t, _) in p {
                    match lines.last_mut() {
                        Some((last, acc)) if *last == n => acc.push_str(&t),
                        _ => lines.push((n, t)),
                    }
                }
                let want: Vec<(u64, String)> =
                    ["one\n", "two\n", "\n", "three is longer\n", "four"]
                        .iter()
                        .enumerate()
                        .map(|(i, l)| (i as u64 + 1, l.to_string()))
                        .collect();
                assert_eq!(lines, want, "cuts {a} {b}");
                let mut fast = LineSplitter::new();
                for c in [&text[..a], &text[a..b], &text[b..]] {
                    fast.advance(c, memchr::memchr_iter(b'\n', c).count() as u64);
                }
                assert_eq!(fast, s, "cuts {a} {b}");
            }
        }
    }
}
