//! Finds GitHub Actions annotation lines (`::error file=F,line=L::msg`,
//! `::warning ...`, `::notice ...`) in a stream of chunks (issue 11, point 2), so
//! a job's errors are listed in its metadata with links to their lines. Chunks
//! may split a line anywhere; only lines starting with `::` are kept, each at
//! most [`MAX_ANNOTATION_LINE`] bytes, so the cost stays a `memmem` per chunk.
//! The log keeps the raw line; the page recognises the same dialects (and the
//! section lines of GitLab, GitHub and Buildkite) when it shows it.

use super::count_newlines;
use memchr::{memchr, memmem, memrchr};
use std::sync::LazyLock;

/// Every annotation line starts with this.
const PREFIX: &[u8] = b"::";

/// The prefix searcher, built once.
static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(PREFIX));

/// Most bytes of an annotation line parsed: a message is a sentence or two and
/// a path; this keeps a runaway `::error` line's cost and metadata size fixed.
pub const MAX_ANNOTATION_LINE: usize = 4096;

/// One annotation line, found complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// `error`, `warning` or `notice`.
    pub level: &'static str,
    pub message: String,
    /// The source file and line it is about (`file=`, `line=`), if named.
    pub file: Option<String>,
    pub line: Option<u64>,
    pub title: Option<String>,
    /// Its line number in the log stream, from 1.
    pub log_line: u64,
}

/// Per-stream scanner. Feed every chunk, in order, then call [`finish`].
///
/// [`finish`]: AnnotationScanner::finish
#[derive(Debug)]
pub struct AnnotationScanner {
    /// Newlines seen so far: the current line's number is this plus one.
    newlines: u64,
    /// The unfinished current line while it may still be an annotation (its
    /// bytes so far, capped), `None` once it cannot be.
    line: Option<Vec<u8>>,
}

impl Default for AnnotationScanner {
    fn default() -> Self {
        AnnotationScanner {
            newlines: 0,
            line: Some(Vec::new()),
        }
    }
}

impl AnnotationScanner {
    /// [`AnnotationScanner::feed_counted`], counting the chunk's newlines itself.
    #[cfg(test)]
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Annotation>) {
        self.feed_counted(chunk, count_newlines(chunk), out);
    }

    /// Scans one chunk holding `newlines` newlines, pushing every annotation
    /// line it completes onto `out`. The chunk's newlines are counted once by
    /// the wrapper for all its consumers; the scanner counts only up to a
    /// hit, for its line number.
    pub fn feed_counted(&mut self, chunk: &[u8], newlines: u64, out: &mut Vec<Annotation>) {
        debug_assert_eq!(newlines, count_newlines(chunk));
        // Each of the chunk's newlines ends one line.
        let after = self.newlines + newlines;
        let mut body = chunk;
        // The line carried over from the last chunk.
        let carried = self.line.as_ref().is_none_or(|l| !l.is_empty());
        if carried {
            match memchr(b'\n', body) {
                None => return self.absorb(body),
                Some(i) => {
                    self.absorb(&body[..i]);
                    self.newlines += 1;
                    if let Some(line) = self.line.take() {
                        out.extend(parse(&line, self.newlines));
                    }
                    body = &body[i + 1..];
                }
            }
        }
        // Every line of `body[..tail]` is complete; `body[tail..]` is unfinished.
        let tail = memrchr(b'\n', body).map_or(0, |i| i + 1);
        let mut counted = 0;
        for hit in FINDER.find_iter(&body[..tail]) {
            if hit < counted || (hit > 0 && body[hit - 1] != b'\n') {
                continue;
            }
            self.newlines += count_newlines(&body[counted..hit]);
            let end = hit + memchr(b'\n', &body[hit..]).unwrap_or(tail - 1 - hit);
            let line = &body[hit..end];
            self.newlines += 1;
            out.extend(parse(
                &line[..line.len().min(MAX_ANNOTATION_LINE)],
                self.newlines,
            ));
            counted = end + 1;
        }
        self.newlines = after;
        self.line = Some(Vec::new());
        self.absorb(&body[tail..]);
    }

    /// Ends the stream: a final annotation line without a newline still counts.
    pub fn finish(&mut self, out: &mut Vec<Annotation>) {
        if let Some(line) = self.line.take() {
            out.extend(parse(&line, self.newlines + 1));
        }
    }

    fn absorb(&mut self, segment: &[u8]) {
        let Some(line) = &mut self.line else { return };
        let room = MAX_ANNOTATION_LINE.saturating_sub(line.len());
        line.extend_from_slice(&segment[..room.min(segment.len())]);
        let known = line.len().min(PREFIX.len());
        if line[..known] != PREFIX[..known] {
            self.line = None;
        }
    }
}

/// Parses `::LEVEL[ k=v,k=v]::message` (GitHub's workflow command syntax, with
/// its `%25`, `%0D`, `%0A` escapes in the message and `%2C`, `%3A` in values).
fn parse(line: &[u8], log_line: u64) -> Option<Annotation> {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let rest = text.strip_prefix("::")?;
    let (command, message) = rest.split_once("::")?;
    let (name, params) = match command.split_once(' ') {
        Some((n, p)) => (n, p.trim()),
        None => (command, ""),
    };
    let level = match name {
        "error" => "error",
        "warning" => "warning",
        "notice" => "notice",
        _ => return None,
    };
    let mut a = Annotation {
        level,
        message: unescape(message, false),
        file: None,
        line: None,
        title: None,
        log_line,
    };
    for kv in params.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = unescape(v, true);
        match k.trim() {
            "file" => a.file = Some(v),
            "line" => a.line = v.trim().parse().ok(),
            "title" => a.title = Some(v),
            _ => {}
        }
    }
    Some(a)
}

fn unescape(s: &str, property: bool) -> String {
    let mut out = s
        .replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%0d", "\r")
        .replace("%0a", "\n");
    if property {
        out = out
            .replace("%3A", ":")
            .replace("%2C", ",")
            .replace("%3a", ":")
            .replace("%2c", ",");
    }
    out.replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Vec<Annotation> {
        let mut s = AnnotationScanner::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn github_annotations_are_found_with_their_file_line_and_log_line() {
        let got = scan(&[b"build\n::error file=src/a.rs,line=12,col=3,title=E0308::mismatched types\n::warning::50%25 slower%0Athan before\nx ::error::not at line start\n::group::Build\n::notice title=a%2Cb::fyi"]);
        assert_eq!(
            got,
            [
                Annotation {
                    level: "error",
                    message: "mismatched types".into(),
                    file: Some("src/a.rs".into()),
                    line: Some(12),
                    title: Some("E0308".into()),
                    log_line: 2,
                },
                Annotation {
                    level: "warning",
                    message: "50% slower\nthan before".into(),
                    file: None,
                    line: None,
                    title: None,
                    log_line: 3,
                },
                Annotation {
                    level: "notice",
                    message: "fyi".into(),
                    file: None,
                    line: None,
                    title: Some("a,b".into()),
                    log_line: 6,
                },
            ]
        );
    }

    #[test]
    fn lines_split_across_chunks_anywhere_are_found_once() {
        let text = b"a\n::error::one\nb\n:x\n::warning file=f::two\n";
        let whole = scan(&[text]);
        assert_eq!(whole.len(), 2);
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let got = scan(&[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(got, whole, "cuts at {cut} and {cut2}");
            }
        }
        assert_eq!(whole[0].log_line, 2);
        assert_eq!(whole[1].log_line, 5);
    }

    #[test]
    fn a_huge_annotation_line_is_parsed_from_its_capped_start() {
        let mut line = b"::error::".to_vec();
        line.extend(std::iter::repeat_n(b'x', 10 * MAX_ANNOTATION_LINE));
        line.push(b'\n');
        let got = scan(&[&line[..5000], &line[5000..]]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.len(), MAX_ANNOTATION_LINE - 9);
    }
}
