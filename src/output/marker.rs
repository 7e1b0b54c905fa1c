//! Finds `DATABUILD_MISSING_DEPS_JSON:` marker lines in a stream of chunks (SPEC §1
//! "Markers"). Chunks may split a line, or the prefix itself, anywhere; the payload
//! kept per line is bounded so a huge marker line cannot grow memory.

use super::count_newlines;
use memchr::{memchr, memmem, memrchr};
use std::sync::LazyLock;

/// The prefix searcher, built once.
static FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(MARKER_PREFIX));

/// A line that starts with this is a marker; the rest of the line is JSON.
pub const MARKER_PREFIX: &[u8] = b"DATABUILD_MISSING_DEPS_JSON:";

/// The start of this marker and of redaction's `DATABUILD_REDACT: `: one
/// search of a chunk for it (`find_stems`) serves the redactor and this
/// scanner.
pub const MARKER_STEM: &[u8] = b"DATABUILD_";

/// The stem searcher, built once.
static STEMS: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(MARKER_STEM));

/// Puts every position of [`MARKER_STEM`] in `buf` into `out`, ascending.
pub fn find_stems(buf: &[u8], out: &mut Vec<usize>) {
    out.extend(STEMS.find_iter(buf));
}

/// Where the prefix occurs in a chunk's complete lines.
// One lives on the stack while a chunk is scanned; boxing the searcher's
// state would allocate per chunk.
#[allow(clippy::large_enum_variant)]
enum Hits<'a> {
    /// Searched for here.
    Search(memmem::FindIter<'a, 'static>),
    /// Among the stems found in the chunk ([`find_stems`]), which the body
    /// starts `off` bytes into.
    Stems {
        stems: std::slice::Iter<'a, usize>,
        off: usize,
        lines: &'a [u8],
    },
}

impl Iterator for Hits<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Hits::Search(found) => found.next(),
            Hits::Stems { stems, off, lines } => stems.find_map(|&stem| {
                let hit = stem.checked_sub(*off)?;
                lines.get(hit..)?.starts_with(MARKER_PREFIX).then_some(hit)
            }),
        }
    }
}

/// Longest marker payload that is parsed. Real payloads list a few partitions;
/// 1 MiB is generous for that while keeping a runaway line's cost fixed.
pub const MAX_MARKER_PAYLOAD: usize = 1 << 20;

/// One marker line, found complete.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkerEvent {
    /// Line number in its stream, from 1.
    pub line: u64,
    /// The parsed payload, or why it was refused.
    pub result: Result<serde_json::Value, String>,
}

#[derive(Debug)]
enum State {
    /// At the start of a line, with this many bytes of the prefix matched so far.
    Prefix(usize),
    /// The current line is not a marker; skip to its end.
    Other,
    /// The current line is a marker: its payload so far (capped) and full length.
    Payload { buf: Vec<u8>, len: usize },
}

/// Per-stream scanner state. Feed every chunk, in order, then call [`finish`].
///
/// [`finish`]: MarkerScanner::finish
#[derive(Debug)]
pub struct MarkerScanner {
    /// Newlines seen so far: the current line's number is this plus one.
    newlines: u64,
    state: State,
}

impl Default for MarkerScanner {
    fn default() -> Self {
        MarkerScanner {
            newlines: 0,
            state: State::Prefix(0),
        }
    }
}

impl MarkerScanner {
    /// [`MarkerScanner::feed_counted`], counting the chunk's newlines itself.
    #[cfg(test)]
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<MarkerEvent>) {
        self.feed_counted(chunk, count_newlines(chunk), None, out);
    }

    /// Scans one chunk holding `newlines` newlines, pushing every marker line
    /// it completes onto `out`.
    ///
    /// Markers are rare, so rather than stepping line by line this searches the
    /// chunk for the prefix (SIMD `memmem`) and checks that each hit starts a
    /// line; only the line carried over from the last chunk and the unfinished
    /// last line are stepped through by hand. The chunk's newlines are counted
    /// once by the wrapper for all its consumers; the scanner counts only up
    /// to a hit, for its line number. `stems`, when given, are all the
    /// positions of [`MARKER_STEM`] in the chunk ([`find_stems`]): the search
    /// made for the redactor, which then is not made again.
    pub fn feed_counted(
        &mut self,
        chunk: &[u8],
        newlines: u64,
        stems: Option<&[usize]>,
        out: &mut Vec<MarkerEvent>,
    ) {
        debug_assert_eq!(newlines, count_newlines(chunk));
        // Each of the chunk's newlines ends one line.
        let after = self.newlines + newlines;
        let mut body = chunk;
        if !matches!(self.state, State::Prefix(0)) {
            match memchr(b'\n', body) {
                None => return self.absorb(body),
                Some(i) => {
                    self.absorb(&body[..i]);
                    self.end_line(out);
                    body = &body[i + 1..];
                }
            }
        }
        // Every line of `body[..tail]` is complete; `body[tail..]` is unfinished.
        let tail = memrchr(b'\n', body).map_or(0, |i| i + 1);
        let lines = &body[..tail];
        let hits = match stems {
            Some(stems) => Hits::Stems {
                stems: stems.iter(),
                off: chunk.len() - body.len(),
                lines,
            },
            None => Hits::Search(FINDER.find_iter(lines)),
        };
        let mut counted = 0;
        for hit in hits {
            if hit < counted || (hit > 0 && body[hit - 1] != b'\n') {
                continue;
            }
            self.newlines += count_newlines(&body[counted..hit]);
            let end = hit + memchr(b'\n', &body[hit..]).unwrap_or(tail - 1 - hit);
            self.state = State::Payload {
                buf: Vec::new(),
                len: 0,
            };
            self.absorb(&body[hit + MARKER_PREFIX.len()..end]);
            self.end_line(out);
            counted = end + 1;
        }
        self.newlines = after;
        self.state = State::Prefix(0);
        self.absorb(&body[tail..]);
    }

    /// Ends the stream: a final marker line without a newline still counts.
    pub fn finish(&mut self, out: &mut Vec<MarkerEvent>) {
        if matches!(self.state, State::Payload { .. }) {
            self.end_line(out);
        }
    }

    fn absorb(&mut self, segment: &[u8]) {
        match &mut self.state {
            State::Other => {}
            State::Prefix(matched) => {
                let want = &MARKER_PREFIX[*matched..];
                let take = want.len().min(segment.len());
                if segment[..take] != want[..take] {
                    self.state = State::Other;
                } else if take == want.len() {
                    self.state = State::Payload {
                        buf: Vec::new(),
                        len: 0,
                    };
                    self.absorb(&segment[take..]);
                } else {
                    *matched += take;
                }
            }
            State::Payload { buf, len } => {
                *len += segment.len();
                let room = MAX_MARKER_PAYLOAD.saturating_sub(buf.len());
                buf.extend_from_slice(&segment[..room.min(segment.len())]);
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<MarkerEvent>) {
        self.newlines += 1;
        if let State::Payload { buf, len } = std::mem::replace(&mut self.state, State::Prefix(0)) {
            out.push(MarkerEvent {
                line: self.newlines,
                result: parse_payload(&buf, len),
            });
        }
        self.state = State::Prefix(0);
    }
}

/// Deepest nesting of a payload kept: metadata.json puts it a few levels
/// down, and every reader parses that with serde_json's limit of 128 levels,
/// so a payload nested near that limit would make the job's own metadata
/// unreadable (its job "damaged" to every reader and to gc).
pub const MAX_MARKER_DEPTH: usize = 64;

fn parse_payload(buf: &[u8], len: usize) -> Result<serde_json::Value, String> {
    if len > MAX_MARKER_PAYLOAD {
        return Err(format!(
            "marker payload is {len} bytes, over the {MAX_MARKER_PAYLOAD}-byte limit; not parsed"
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(buf).map_err(|e| format!("invalid JSON: {e}"))?;
    if depth(&value) > MAX_MARKER_DEPTH {
        return Err(format!(
            "marker payload nests deeper than {MAX_MARKER_DEPTH} levels; not kept"
        ));
    }
    Ok(value)
}

/// Levels of nesting of `v`: 1 for a scalar, one more per array or object
/// around it. (serde_json parses at most 128 levels, so the recursion is
/// bounded.)
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scan(chunks: &[&[u8]]) -> Vec<MarkerEvent> {
        let mut s = MarkerScanner::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn a_payload_nested_too_deep_is_an_error_not_a_value() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = format!("DATABUILD_MISSING_DEPS_JSON:{}\n", nested(MAX_MARKER_DEPTH));
        assert!(scan(&[ok.as_bytes()])[0].result.is_ok());
        let deep = format!(
            "DATABUILD_MISSING_DEPS_JSON:{}\n",
            nested(MAX_MARKER_DEPTH + 1)
        );
        let err = scan(&[deep.as_bytes()])[0].result.clone().unwrap_err();
        assert!(err.contains("deeper than 64"), "{err}");
    }

    #[test]
    fn finds_a_marker_with_its_line_number() {
        let ev = scan(&[b"a\nDATABUILD_MISSING_DEPS_JSON:{\"x\":1}\nb\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].line, 2);
        assert_eq!(ev[0].result, Ok(json!({"x": 1})));
    }

    #[test]
    fn finds_a_marker_split_at_every_byte() {
        let text = b"x\nDATABUILD_MISSING_DEPS_JSON:[1,2]\nDATABUILD_MISSING_DEPS_JSON:{bad\n";
        for cut in 0..text.len() {
            let ev = scan(&[&text[..cut], &text[cut..]]);
            assert_eq!(ev.len(), 2, "cut at {cut}");
            assert_eq!(ev[0].line, 2);
            assert_eq!(ev[0].result, Ok(json!([1, 2])));
            assert_eq!(ev[1].line, 3);
            assert!(ev[1].result.as_ref().unwrap_err().contains("invalid JSON"));
        }
    }

    #[test]
    fn marker_must_start_the_line() {
        assert!(
            scan(&[b" DATABUILD_MISSING_DEPS_JSON:{}\nxDATABUILD_MISSING_DEPS_JSON:{}\n"])
                .is_empty()
        );
        assert!(scan(&[b"DATABUILD_MISSING_DEPS_JSON\n"]).is_empty());
    }

    #[test]
    fn last_line_without_newline_is_scanned() {
        let ev = scan(&[b"DATABUILD_MISSING_DEPS_JSON:", b"true"]);
        assert_eq!(
            ev,
            vec![MarkerEvent {
                line: 1,
                result: Ok(json!(true))
            }]
        );
    }

    #[test]
    fn oversized_payload_is_refused_with_bounded_memory() {
        let mut s = MarkerScanner::default();
        let mut out = Vec::new();
        s.feed(MARKER_PREFIX, &mut out);
        let block = vec![b'7'; 1 << 16];
        for _ in 0..64 {
            s.feed(&block, &mut out);
        }
        if let State::Payload { buf, .. } = &s.state {
            assert!(buf.len() <= MAX_MARKER_PAYLOAD);
        }
        s.feed(b"\n", &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].result.as_ref().unwrap_err().contains("limit"));
    }

    /// The obvious line-by-line reading, to check the fast path against.
    fn reference(text: &[u8]) -> Vec<(u64, String)> {
        text.split(|b| *b == b'\n')
            .enumerate()
            .filter_map(|(i, line)| {
                let payload = line.strip_prefix(MARKER_PREFIX)?;
                Some((i as u64 + 1, String::from_utf8_lossy(payload).into_owned()))
            })
            .collect()
    }

    #[test]
    fn any_chunking_of_mixed_text_matches_a_line_by_line_reading() {
        let pieces: [&[u8]; 6] = [
            b"plain line\n",
            b"DATABUILD_MISSING_DEPS_JSON:[1]\n",
            b"xDATABUILD_MISSING_DEPS_JSON:[2]\n",
            b"DATABUILD_MISSING",
            b"\n",
            b"DATABUILD_MISSING_DEPS_JSON:{}",
        ];
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for round in 0..600 {
            let text: Vec<u8> = (0..next(40))
                .flat_map(|_| pieces[next(pieces.len())].to_vec())
                .collect();
            let mut scanner = MarkerScanner::default();
            let mut out = Vec::new();
            let mut at = 0;
            while at < text.len() {
                // Longer chunks with stems: a carried line and whole marker
                // lines in one.
                let step = 1 + next(if round % 2 == 0 { 20 } else { 90 });
                let end = (at + step).min(text.len());
                let chunk = &text[at..end];
                if round % 2 == 0 {
                    scanner.feed(chunk, &mut out);
                } else {
                    // With the stems the wrapper found for the redactor,
                    // here in a chunk a little longer than the one scanned
                    // (the redactor holds back the end of a read).
                    let mut stems = Vec::new();
                    find_stems(&text[at..(end + next(12)).min(text.len())], &mut stems);
                    let n = count_newlines(chunk);
                    scanner.feed_counted(chunk, n, Some(&stems), &mut out);
                }
                at = end;
            }
            scanner.finish(&mut out);
            let got: Vec<_> = out
                .iter()
                .map(|e| {
                    let payload = match &e.result {
                        Ok(v) => v.to_string(),
                        Err(_) => "?".to_string(),
                    };
                    (e.line, payload)
                })
                .collect();
            let want: Vec<_> = reference(&text)
                .into_iter()
                .map(|(l, p)| {
                    let parsed =
                        serde_json::from_str::<serde_json::Value>(&p).map(|v| v.to_string());
                    (l, parsed.unwrap_or_else(|_| "?".to_string()))
                })
                .collect();
            assert_eq!(got, want, "text {:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn crlf_line_end_still_parses() {
        let ev = scan(&[b"DATABUILD_MISSING_DEPS_JSON:{\"a\":2}\r\n"]);
        assert_eq!(ev[0].result, Ok(json!({"a": 2})));
    }
}
