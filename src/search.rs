//! Searching a job's whole log (issue 11, point 1): a pattern (plain text or a
//! regular expression, with smart, sensitive or insensitive case) matched line
//! by line against a stream's raw bytes a block at a time, so a gigabyte costs
//! one pass at memory speed and a bounded buffer. Each matching line is then
//! reported as the terminal shows it (carriage returns resolved, colours
//! stripped) with the matched ranges in that text. The server's search endpoint
//! and `logwrap grep` both drive a [`Scan`].

use crate::store::{RawLog, Stream};
use anyhow::{Context, Result};
use regex::bytes::{Regex as BytesRegex, RegexBuilder as BytesBuilder};
use regex::{Regex, RegexBuilder};

/// Bytes of log read and searched at once: large enough that the regex engine
/// runs at memory speed between reads, small enough to hold per search (the
/// server may run a few at a time).
pub const BLOCK: usize = 1 << 20;

/// Longest part of a matching line reported (bytes of raw line): a line is
/// searched in its first [`BLOCK`] bytes, but a result carries at most this much
/// text, as an event does ([`crate::serve`] caps lines the same way).
pub const MAX_TEXT: usize = 64 * 1024;

/// Longest pattern accepted: real searches are words or short expressions;
/// this keeps a hostile query from costing the regex compiler much.
pub const MAX_PATTERN: usize = 1024;

/// Size limit handed to the regex compiler (bytes of compiled program): the
/// crate's default is 10 MiB; a search pattern needs far less, and a server
/// compiles what a client sends.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How letter case is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Insensitive when the pattern has no upper-case letter (like `rg -S`).
    Smart,
    Sensitive,
    Insensitive,
}

impl Case {
    /// Parses `smart`, `sensitive` or `insensitive`.
    pub fn parse(s: &str) -> Option<Case> {
        match s {
            "smart" => Some(Case::Smart),
            "sensitive" => Some(Case::Sensitive),
            "insensitive" => Some(Case::Insensitive),
            _ => None,
        }
    }
}

/// A compiled search: the same pattern for the raw bytes (finding candidate
/// lines fast) and for the shown text (the ranges reported).
#[derive(Debug, Clone)]
pub struct Pattern {
    raw: BytesRegex,
    shown: Regex,
}

impl Pattern {
    /// Compiles `pattern`: literal text unless `regex`. The error says what is
    /// wrong with the pattern, in the regex crate's words.
    pub fn new(pattern: &str, regex: bool, case: Case) -> Result<Pattern> {
        if pattern.is_empty() {
            anyhow::bail!("the search pattern is empty");
        }
        if pattern.len() > MAX_PATTERN {
            anyhow::bail!("the search pattern is longer than {MAX_PATTERN} bytes");
        }
        let source = if regex {
            pattern.to_string()
        } else {
            regex::escape(pattern)
        };
        let insensitive = match case {
            Case::Sensitive => false,
            Case::Insensitive => true,
            Case::Smart => !pattern.chars().any(char::is_uppercase),
        };
        let raw = BytesBuilder::new(&source)
            .case_insensitive(insensitive)
            .multi_line(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .with_context(|| format!("invalid search pattern {pattern:?}"))?;
        let shown = RegexBuilder::new(&source)
            .case_insensitive(insensitive)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .with_context(|| format!("invalid search pattern {pattern:?}"))?;
        Ok(Pattern { raw, shown })
    }

    /// The ranges (in characters) where the pattern matches `text`.
    pub fn ranges(&self, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        // Character positions, walked once along the text.
        let (mut byte, mut chars) = (0usize, 0usize);
        let mut to_chars = |b: usize| {
            chars += text[byte..b].chars().count();
            byte = b;
            chars
        };
        for m in self.shown.find_iter(text) {
            if m.is_empty() {
                continue;
            }
            let start = to_chars(m.start());
            let end = to_chars(m.end());
            out.push((start, end));
        }
        out
    }
}

/// One matching line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub stream: Stream,
    /// Line number in its stream, from 1.
    pub line: u64,
    /// Byte offset of the line in its stream.
    pub offset: u64,
    /// The line as a terminal shows it, without colours, at most [`MAX_TEXT`]
    /// bytes of the raw line.
    pub text: String,
    /// Matched ranges of `text`, in characters, non-empty.
    pub ranges: Vec<(usize, usize)>,
}

/// What a terminal shows of a raw line (newline excluded): carriage returns
/// and cursor moves resolved, then every escape sequence dropped.
pub fn shown_text(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let cut = &raw[..raw.len().min(MAX_TEXT)];
    let cut = &cut[..if cut.len() < raw.len() {
        crate::serve::sse::utf8_prefix(cut)
    } else {
        cut.len()
    }];
    let text = String::from_utf8_lossy(cut);
    strip_escapes(&crate::serve::term::terminal_text(&text))
}

/// `s` without ANSI escape sequences (CSI, OSC, and two-byte escapes).
fn strip_escapes(s: &str) -> String {
    if !s.contains('\u{1b}') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ST (ESC \).
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Where a scan of one stream is: the next byte to search, the number of the
/// line starting there, and how many matches came before (so a later page
/// still reports the total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub stream: Stream,
    pub offset: u64,
    pub line: u64,
    pub before: u64,
}

impl Cursor {
    /// The start of `stream`.
    pub fn start(stream: Stream) -> Cursor {
        Cursor {
            stream,
            offset: 0,
            line: 1,
            before: 0,
        }
    }

    /// The cursor as an opaque token: `stream.offset.line.before`.
    pub fn token(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.stream.name(),
            self.offset,
            self.line,
            self.before
        )
    }

    /// Parses a token made by [`Cursor::token`].
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut parts = s.split('.');
        let stream = match parts.next()? {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            _ => return None,
        };
        let mut num = || parts.next()?.parse::<u64>().ok();
        let (offset, line, before) = (num()?, num()?, num()?);
        // Every line holds at least its newline, so a cursor made here never
        // has more lines before its offset than bytes.
        if line == 0 || line > offset.saturating_add(1) || parts.next().is_some() {
            return None;
        }
        Some(Cursor {
            stream,
            offset,
            line,
            before,
        })
    }
}

/// A search through one stream of a job, from a cursor to the log's size when
/// the scan began (output appended later is left to the next search), a block
/// at a time: each [`Scan::step`] reads at most one [`BLOCK`].
pub struct Scan {
    log: Box<dyn RawLog>,
    pattern: Pattern,
    stream: Stream,
    pos: u64,
    line: u64,
    end: u64,
    /// Inside a line longer than a block whose first block was searched:
    /// skipping to its end.
    skipping: bool,
    buf: Vec<u8>,
}

impl Scan {
    /// A scan of `log` (the raw bytes of `at.stream`) from `at`.
    pub fn new(log: Box<dyn RawLog>, pattern: Pattern, at: Cursor) -> Result<Scan> {
        let end = log.len().context("measuring the log")?;
        Ok(Scan {
            log,
            pattern,
            stream: at.stream,
            pos: at.offset.min(end),
            line: at.line,
            end,
            skipping: false,
            buf: Vec::new(),
        })
    }

    /// True once the whole log is searched.
    pub fn done(&self) -> bool {
        self.pos >= self.end
    }

    /// Where the scan is: the next line to search.
    pub fn cursor(&self, before: u64) -> Cursor {
        Cursor {
            stream: self.stream,
            offset: self.pos,
            line: self.line,
            before,
        }
    }

    /// Searches the next block, handing each matching line to `found`.
    pub fn step(&mut self, found: &mut dyn FnMut(Match)) -> Result<()> {
        if self.skipping {
            // Only the next newline matters, and a hole (a job that extended
            // its log with `truncate`) holds none: jump over it rather than
            // read gigabytes of zeros.
            if let Some(f) = self.log.as_file() {
                self.pos = crate::reader::next_data(f, self.pos, self.end);
            }
        }
        if self.done() {
            return Ok(());
        }
        let want = (self.end - self.pos).min(BLOCK as u64) as usize;
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match self
                .log
                .read_at(&mut self.buf[got..], self.pos + got as u64)
            {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading the log"),
            }
        }
        if got == 0 {
            // Shorter than measured (truncated under us): nothing more.
            self.end = self.pos;
            return Ok(());
        }
        let block = &self.buf[..got];
        let at_end = self.pos + got as u64 >= self.end;
        if self.skipping {
            match memchr::memchr(b'\n', block) {
                Some(i) => {
                    self.pos += i as u64 + 1;
                    self.line += 1;
                    self.skipping = false;
                }
                None => self.pos += got as u64,
            }
            return Ok(());
        }
        // Search whole lines: up to the last newline, or everything at the
        // end of the log (a last line without newline), or the first block of
        // a line longer than a block.
        let (len, long) = match memchr::memrchr(b'\n', block) {
            Some(i) => (i + 1, false),
            None if at_end => (got, false),
            None => (got, true),
        };
        let lines = search_block(&self.pattern, &block[..len]);
        let mut counted = 0usize;
        let mut line = self.line;
        for (start, stop) in lines {
            line += memchr::memchr_iter(b'\n', &block[counted..start]).count() as u64;
            counted = start;
            let text = shown_text(&block[start..stop]);
            let ranges = self.pattern.ranges(&text);
            if ranges.is_empty() {
                // Matched only inside escape sequences or overwritten text:
                // nothing a reader would see.
                continue;
            }
            found(Match {
                stream: self.stream,
                line,
                offset: self.pos + start as u64,
                text,
                ranges,
            });
        }
        if long {
            self.skipping = true;
            self.pos += len as u64;
        } else {
            self.line = line + memchr::memchr_iter(b'\n', &block[counted..len]).count() as u64;
            self.pos += len as u64;
        }
        Ok(())
    }
}

/// The lines of `block` (whole lines) the pattern matches, as byte ranges
/// (newline included), in order, each once.
fn search_block(pattern: &Pattern, block: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while from < block.len() {
        let Some(m) = pattern.raw.find_at(block, from) else {
            break;
        };
        let start = memchr::memrchr(b'\n', &block[..m.start()]).map_or(0, |i| i + 1);
        let stop =
            memchr::memchr(b'\n', &block[m.start()..]).map_or(block.len(), |i| m.start() + i + 1);
        // A match may run across a newline (`\s`, `[^x]`): the line counts
        // only if the pattern matches within it.
        let line = &block[start..stop];
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if pattern.raw.find(body).is_some_and(|m| !m.is_empty()) {
            out.push((start, stop));
        }
        from = stop;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line, text and ranges of a match.
    type Found = (u64, String, Vec<(usize, usize)>);

    fn scan_all(bytes: &[u8], pattern: &Pattern) -> Vec<Found> {
        let dir = crate::testdir::TempDir::new("search");
        let path = dir.path().join("log");
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut scan = Scan::new(
            Box::new(file),
            pattern.clone(),
            Cursor::start(Stream::Stdout),
        )
        .unwrap();
        let mut out = Vec::new();
        while !scan.done() {
            scan.step(&mut |m| out.push((m.line, m.text, m.ranges)))
                .unwrap();
        }
        out
    }

    #[test]
    fn plain_text_is_literal_and_smart_case() {
        let p = Pattern::new("a.b", false, Case::Smart).unwrap();
        let got = scan_all(b"axb\nA.B here\nno\n", &p);
        assert_eq!(got, [(2, "A.B here".to_string(), vec![(0, 3)])]);
        let sensitive = Pattern::new("Error", false, Case::Smart).unwrap();
        assert!(scan_all(b"error\n", &sensitive).is_empty());
        assert_eq!(scan_all(b"an Error\n", &sensitive).len(), 1);
    }

    #[test]
    fn regexes_match_within_one_line_and_report_every_range() {
        let p = Pattern::new(r"o\s+x", true, Case::Sensitive).unwrap();
        // `\s` could run across the newline; it counts only within a line.
        assert!(scan_all(b"foo\nx\n", &p).is_empty());
        let p = Pattern::new(r"\d+", true, Case::Sensitive).unwrap();
        let got = scan_all("é 12 and 345\nnone\n7".as_bytes(), &p);
        assert_eq!(
            got,
            [
                (1, "é 12 and 345".to_string(), vec![(2, 4), (9, 12)]),
                (3, "7".to_string(), vec![(0, 1)])
            ]
        );
        assert!(Pattern::new("(", true, Case::Smart).is_err());
        assert!(Pattern::new("", false, Case::Smart).is_err());
    }

    #[test]
    fn the_shown_text_is_searched_for_ranges_colours_and_progress_resolved() {
        let p = Pattern::new("done", false, Case::Smart).unwrap();
        let got = scan_all(b"\x1b[32mdone\x1b[0m ok\n10%\r100% done\n", &p);
        assert_eq!(
            got,
            [
                (1, "done ok".to_string(), vec![(0, 4)]),
                (2, "100% done".to_string(), vec![(5, 9)])
            ]
        );
        // A match only in overwritten text is not what a reader sees.
        let p = Pattern::new("50%", false, Case::Smart).unwrap();
        assert!(scan_all(b"50%\r100%\n", &p).is_empty());
    }

    #[test]
    fn line_numbers_stay_true_across_blocks_and_long_lines() {
        let mut log = Vec::new();
        for i in 1..=30_000u32 {
            log.extend_from_slice(format!("line {i} {}\n", "x".repeat(60)).as_bytes());
        }
        // A line longer than a block, then more lines.
        log.extend_from_slice(&vec![b'y'; BLOCK * 2 + 5]);
        log.extend_from_slice(b"\nneedle 30002\n");
        let p = Pattern::new(r"^line (29999|7) |needle", true, Case::Smart).unwrap();
        let lines: Vec<u64> = scan_all(&log, &p).into_iter().map(|m| m.0).collect();
        assert_eq!(lines, [7, 29_999, 30_002]);
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = Cursor {
            stream: Stream::Stderr,
            offset: 10,
            line: 3,
            before: 7,
        };
        assert_eq!(Cursor::parse(&c.token()), Some(c));
        for bad in [
            "",
            "stdout.1.2",
            "x.1.1.1",
            "stdout.1.0.1",
            "stdout.1.1.1.1",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
