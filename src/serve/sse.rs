//! Server-Sent Events framing for log lines, with no I/O (SPEC §5). One log line
//! becomes exactly one `event: log`, and nothing a job prints can forge a field or
//! an event: the text is made valid UTF-8 (invalid bytes become U+FFFD), carriage
//! returns are resolved the way a terminal shows them (so no CR ever reaches the
//! wire), and over-long lines are cut on a character boundary and marked.

use crate::reader::LogLine;
use serde::Serialize;
use std::borrow::Cow;

pub use super::term::terminal_text;
use std::fmt::Write as _;

/// Most bytes of one line put into an event; longer lines are cut and marked.
/// 64 KiB holds any line a person reads, and bounds what one event costs a
/// follower's buffer (SPEC §5 "over-long lines are capped").
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Reconnection delay suggested to EventSource clients, in ms: short, because a
/// reconnect resumes exactly where it left off.
pub const RETRY_MS: u32 = 1000;

/// The opening of every event stream: a comment (so proxies and clients see bytes
/// at once) and the reconnection delay.
pub fn stream_start() -> String {
    format!(": logwrap\nretry: {RETRY_MS}\n\n")
}

/// The heartbeat comment sent after a silence.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// How event data is encoded (`?format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `data:` is the line as a terminal shows it.
    Text,
    /// `data:` is a JSON object with the exact text, line number, stream and time.
    Json,
}

/// The `data` object of `?format=json` events.
#[derive(Debug, Serialize)]
struct JsonLine<'a> {
    line: u64,
    stream: &'a str,
    /// The exact text of the line (invalid UTF-8 as U+FFFD), without its newline.
    text: &'a str,
    /// What a terminal shows for it, only when that differs (the line holds a
    /// carriage return): see [`terminal_text`].
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
    /// Whether the line ended with a newline (false for an unfinished last line).
    newline: bool,
    /// When the wrapper read the line, RFC 3339 (null if unknown).
    ts: Option<String>,
    /// The same in microseconds since the epoch (null if unknown).
    ts_us: Option<u64>,
    /// Full length of the line in bytes, newline included.
    len: u64,
    /// True when `text` holds only the first [`MAX_LINE_BYTES`] bytes.
    truncated: bool,
}

/// Appends one `event: log` for `line` to `out`. `id` is the event id (the line
/// number, or the combined cursor); `name_stream` adds a `stream:` field (the
/// combined endpoint), which EventSource ignores and other clients can read.
pub fn log_event(out: &mut Vec<u8>, line: &LogLine, id: &str, name_stream: bool, format: Format) {
    debug_assert!(!id.contains(['\n', '\r', '\0']));
    let (exact, cut) = line_text(line);
    let mut ev = String::with_capacity(exact.len() + 64);
    ev.push_str("event: log\nid: ");
    ev.push_str(id);
    ev.push('\n');
    if name_stream {
        let _ = writeln!(ev, "stream: {}", line.stream.name());
    }
    ev.push_str("data: ");
    match format {
        Format::Text => {
            ev.push_str(&terminal_text(&exact));
            if cut > 0 {
                let _ = write!(ev, "\u{2026} [{cut} more bytes not shown]");
            }
        }
        Format::Json => {
            let shown = terminal_text(&exact);
            let data = JsonLine {
                line: line.number,
                stream: line.stream.name(),
                text: &exact,
                display: matches!(shown, Cow::Owned(_)).then_some(&*shown),
                newline: line.complete,
                ts: (line.ts_us > 0)
                    .then(|| crate::timefmt::rfc3339_ms((line.ts_us / 1000) as i64)),
                ts_us: (line.ts_us > 0).then_some(line.ts_us),
                len: line.len,
                truncated: cut > 0,
            };
            // Serialising plain strings and numbers cannot fail; an empty object
            // would still be one well-formed event.
            let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into());
            ev.push_str(&json);
        }
    }
    ev.push_str("\n\n");
    debug_assert_eq!(ev.matches('\n').count(), 4 + usize::from(name_stream));
    out.extend_from_slice(ev.as_bytes());
}

/// Appends the `event: truncated` sent before the first line of a log the
/// job emptied (`: > stdout.log`): its data names the stream and has the
/// words a page shows. Its `id` is the start of the new log (`0` on a
/// stream, `O.0` or `0.E` on combined): a reconnect right after it resumes
/// at the new log's first line, and the ids of the lines after it count in
/// the new log's numbering.
pub fn truncated_event(out: &mut Vec<u8>, stream: crate::store::Stream, id: &str) {
    let data = serde_json::json!({
        "stream": stream.name(),
        "message": crate::reader::truncated_message(stream),
    });
    out.extend_from_slice(format!("event: truncated\nid: {id}\ndata: {data}\n\n").as_bytes());
}

/// Appends the `event: gap` a size limit's cut becomes (issue 12), sent right
/// before the first line after the cut. It has no `id:`, so a reconnect
/// resumes after the last line, and its data is one JSON object: the stream,
/// the omitted byte and line counts, the first and last omitted line numbers,
/// and the words a page shows.
pub fn gap_event(out: &mut Vec<u8>, line: &LogLine, omitted: crate::metadata::Omitted) {
    let data = serde_json::json!({
        "stream": line.stream.name(),
        "omitted_bytes": omitted.omitted_bytes,
        "omitted_lines": omitted.omitted_lines,
        "first_line": line.number.saturating_sub(omitted.omitted_lines),
        "last_line": line.number.saturating_sub(1),
        "message": gap_message(line.stream, omitted),
    });
    out.extend_from_slice(format!("event: gap\ndata: {data}\n\n").as_bytes());
}

/// "N bytes (M lines) of stdout omitted by --max-log-size": the words every
/// reader uses for a cut.
pub fn gap_message(stream: crate::store::Stream, o: crate::metadata::Omitted) -> String {
    format!(
        "{} bytes ({} lines) of {} omitted by --max-log-size",
        o.omitted_bytes,
        o.omitted_lines,
        stream.name()
    )
}

/// The line in progress of a stream: bytes written after its last newline
/// while the job runs (a `\r` progress bar, a prompt), at most its last
/// [`PARTIAL_BYTES`](super::follow::PARTIAL_BYTES).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub stream: crate::store::Stream,
    /// The number the line will get once it ends.
    pub line: u64,
    /// Bytes of the line so far.
    pub len: u64,
    /// Its last bytes (all of them unless `truncated`), with no newline.
    pub tail: Vec<u8>,
    /// True when `tail` is only the end of the line.
    pub truncated: bool,
}

/// The `data` object of `?format=json` partial events.
#[derive(Debug, Serialize)]
struct JsonPartial<'a> {
    stream: &'a str,
    line: u64,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
    len: u64,
    truncated: bool,
}

/// Appends one `event: partial` for the line in progress `p`. It has no
/// `id:` field: a line in progress takes no number yet and never moves where
/// a reconnect resumes. Its text is made safe as a log line's is.
pub fn partial_event(out: &mut Vec<u8>, p: &Partial, name_stream: bool, format: Format) {
    let mut tail: &[u8] = &p.tail;
    if p.truncated {
        // Cut from the front: drop the continuation bytes of a character
        // whose start was left out.
        let lead = tail
            .iter()
            .take(3)
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count();
        tail = &tail[lead..];
    }
    // The writer may be in the middle of a character.
    let exact = String::from_utf8_lossy(&tail[..utf8_prefix(tail)]);
    debug_assert!(!exact.contains('\n'));
    let mut ev = String::with_capacity(exact.len() + 64);
    ev.push_str("event: partial\n");
    if name_stream {
        let _ = writeln!(ev, "stream: {}", p.stream.name());
    }
    ev.push_str("data: ");
    let shown = terminal_text(&exact);
    match format {
        Format::Text => ev.push_str(&shown),
        Format::Json => {
            let data = JsonPartial {
                stream: p.stream.name(),
                line: p.line,
                text: &exact,
                display: matches!(shown, Cow::Owned(_)).then_some(&*shown),
                len: p.len,
                truncated: p.truncated,
            };
            // As for log lines: plain strings and numbers always serialise.
            let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into());
            ev.push_str(&json);
        }
    }
    ev.push_str("\n\n");
    debug_assert_eq!(ev.matches('\n').count(), 3 + usize::from(name_stream));
    out.extend_from_slice(ev.as_bytes());
}

/// The `event: complete` that ends a stream, with `data` as given (a JSON object).
pub fn complete_event(out: &mut Vec<u8>, data: &serde_json::Value) {
    out.extend_from_slice(format!("event: complete\ndata: {data}\n\n").as_bytes());
}

/// The exact text of a line without its line ending (invalid UTF-8 replaced),
/// and how many bytes of it were cut off.
pub fn line_text(line: &LogLine) -> (Cow<'_, str>, u64) {
    let mut data: &[u8] = &line.data;
    if line.complete && data.last() == Some(&b'\n') {
        data = &data[..data.len() - 1];
    }
    let kept_max = data.len().min(MAX_LINE_BYTES);
    let kept = if (line.len as usize) > kept_max + usize::from(line.complete) {
        utf8_prefix(&data[..kept_max])
    } else {
        data.len()
    };
    let full = line.len - u64::from(line.complete);
    let cut = full.saturating_sub(kept as u64);
    (String::from_utf8_lossy(&data[..kept]), cut)
}

/// Length of the longest prefix of `b` that does not end inside a multi-byte
/// UTF-8 character (a cut there would turn its first bytes into U+FFFD). Bytes
/// that are invalid anyway are kept; only an incomplete but so far valid final
/// sequence of up to 3 bytes is left out.
pub fn utf8_prefix(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=3.min(n) {
        let c = b[n - back];
        if c & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let need = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return n,
        };
        return if back < need { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Stream;

    fn line(data: &[u8], complete: bool) -> LogLine {
        LogLine {
            stream: Stream::Stdout,
            number: 7,
            offset: 0,
            len: data.len() as u64,
            ts_us: 1_700_000_000_123_456,
            seq: 0,
            data: data.to_vec(),
            complete,
            omitted_before: None,
            lost_before: None,
            restarted: false,
        }
    }

    fn text_event(data: &[u8]) -> String {
        let mut out = Vec::new();
        log_event(&mut out, &line(data, true), "7", false, Format::Text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_line_is_one_event_with_a_spaced_data_field() {
        assert_eq!(text_event(b"hello\n"), "event: log\nid: 7\ndata: hello\n\n");
        assert_eq!(text_event(b"\n"), "event: log\nid: 7\ndata: \n\n");
    }

    #[test]
    fn carriage_returns_cannot_forge_fields() {
        assert_eq!(
            text_event(b"x\revent: complete\n"),
            "event: log\nid: 7\ndata: event: complete\n\n"
        );
        assert_eq!(
            text_event(b"\rid: 9\n"),
            "event: log\nid: 7\ndata: id: 9\n\n"
        );
        assert_eq!(text_event(b"a\r\n"), "event: log\nid: 7\ndata: a\n\n");
        assert_eq!(text_event(b"abc\r\r\n"), "event: log\nid: 7\ndata: abc\n\n");
    }

    #[test]
    fn invalid_utf8_and_nul_are_safe() {
        assert_eq!(
            text_event(b"a\xffb\0c\n"),
            "event: log\nid: 7\ndata: a\u{fffd}b\0c\n\n"
        );
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary_and_marked() {
        let mut data = vec![b'x'; MAX_LINE_BYTES - 1];
        data.extend_from_slice("é".as_bytes()); // straddles the cap
        data.extend_from_slice(b"tail\n");
        let full_len = data.len() as u64;
        let mut l = line(&data, true);
        l.data.truncate(MAX_LINE_BYTES + 1);
        l.len = full_len;
        let (text, cut) = line_text(&l);
        assert_eq!(text.len(), MAX_LINE_BYTES - 1);
        assert_eq!(cut, 2 + 4);
        let mut out = Vec::new();
        log_event(&mut out, &l, "1", false, Format::Text);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.ends_with("x\u{2026} [6 more bytes not shown]\n\n"),
            "{}",
            &s[s.len() - 40..]
        );
    }

    #[test]
    fn utf8_prefix_leaves_out_only_an_unfinished_character() {
        assert_eq!(utf8_prefix("aé".as_bytes()), 3);
        assert_eq!(utf8_prefix(&"aé".as_bytes()[..2]), 1);
        assert_eq!(utf8_prefix(&"a€".as_bytes()[..3]), 1);
        assert_eq!(utf8_prefix(&"a😀".as_bytes()[..4]), 1);
        assert_eq!(utf8_prefix("a😀".as_bytes()), 5);
        assert_eq!(utf8_prefix(b"a\xff"), 2);
        assert_eq!(utf8_prefix(b""), 0);
    }

    #[test]
    fn json_data_carries_the_exact_text() {
        let mut out = Vec::new();
        log_event(
            &mut out,
            &line(b"a\rb\x1b[1m\xff\n", true),
            "3.4",
            true,
            Format::Json,
        );
        let s = String::from_utf8(out).unwrap();
        let mut lines = s.lines();
        assert_eq!(lines.next(), Some("event: log"));
        assert_eq!(lines.next(), Some("id: 3.4"));
        assert_eq!(lines.next(), Some("stream: stdout"));
        let data: serde_json::Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["text"], "a\rb\x1b[1m\u{fffd}");
        assert_eq!(data["display"], "b\x1b[1m\u{fffd}");
        assert_eq!(data["line"], 7);
        assert_eq!(data["stream"], "stdout");
        assert_eq!(data["newline"], true);
        assert_eq!(data["ts_us"], 1_700_000_000_123_456u64);
        assert_eq!(data["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(data["truncated"], false);
    }

    #[test]
    fn a_gap_is_one_event_without_an_id_naming_the_omitted_lines() {
        let mut l = line(b"after\n", true);
        l.number = 51;
        let mut out = Vec::new();
        let o = crate::metadata::Omitted {
            omitted_bytes: 4000,
            omitted_lines: 40,
        };
        gap_event(&mut out, &l, o);
        let text = String::from_utf8(out).unwrap();
        let data = text
            .strip_prefix("event: gap\ndata: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            (v["first_line"].as_u64(), v["last_line"].as_u64()),
            (Some(11), Some(50))
        );
        assert_eq!(v["omitted_bytes"], 4000);
        assert_eq!(
            v["message"],
            "4000 bytes (40 lines) of stdout omitted by --max-log-size"
        );
    }

    #[test]
    fn complete_event_is_one_event() {
        let mut out = Vec::new();
        complete_event(&mut out, &serde_json::json!({"exit_code": 0}));
        assert_eq!(out, b"event: complete\ndata: {\"exit_code\":0}\n\n");
    }

    #[test]
    fn partial_events_have_no_id_and_cannot_be_forged() {
        let p = Partial {
            stream: Stream::Stderr,
            line: 9,
            len: 20,
            // A cut character at the front, a half-written one at the end.
            tail: b"\xa9ok\rdata: x\rfine \xc3".to_vec(),
            truncated: true,
        };
        let mut out = Vec::new();
        partial_event(&mut out, &p, true, Format::Text);
        assert_eq!(out, b"event: partial\nstream: stderr\ndata: fine  x\n\n");
        let mut out = Vec::new();
        partial_event(&mut out, &p, false, Format::Json);
        let text = String::from_utf8(out).unwrap();
        let data: serde_json::Value = serde_json::from_str(
            text.strip_prefix("event: partial\ndata: ")
                .unwrap()
                .trim_end(),
        )
        .unwrap();
        assert_eq!(
            data,
            serde_json::json!({"stream": "stderr", "line": 9, "text": "ok\rdata: x\rfine ",
                "display": "fine  x", "len": 20, "truncated": true})
        );
    }
}
