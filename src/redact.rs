//! Secret redaction (issue 12, SPEC §10): which values to hide ([`Secrets`],
//! from environment name globs, a file and `DATABUILD_REDACT:` marker lines),
//! the needles each value yields (the value, its lines, base64 at the three
//! alignments, URL-encoded, JSON-escaped), and the streaming [`Redactor`] that
//! turns every match into `[REDACTED]` before any sink sees a byte.
//!
//! The redactor holds back only the bytes that could still become a match (a
//! suffix of what it was given that is a proper prefix of a needle); the
//! caller releases them unchanged after a short silence ([`Redactor::release`])
//! so redaction adds no visible latency, and at the end of a stream
//! ([`Redactor::finish`]). With no needles it passes every byte through as is.

pub use crate::output::marker::MARKER_STEM;
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use std::cell::OnceCell;
use std::collections::HashSet;

/// What a match becomes in every sink.
pub const REPLACEMENT: &[u8] = b"[REDACTED]";

/// Values shorter than this are not redacted, only named in metadata
/// (`redact_skipped`): masking `test` or `1234` everywhere would ruin the log
/// and, by showing where the masks fall, reveal the value anyway.
pub const MIN_SECRET_LEN: usize = 6;

/// Each line of a multi-line value that is at least this long is a needle of
/// its own (a PEM key printed line by line, a value wrapped by a tool); shorter
/// lines (`-----`, blank) would match far too much.
pub const MIN_LINE_LEN: usize = 8;

/// Longest value taken as a secret. Needles are what the redactor may hold
/// back, so this bounds the held bytes and the time spent per chunk looking
/// for a partial match; 64 KiB is far above keys, tokens and credential files.
pub const MAX_SECRET_LEN: usize = 64 * 1024;

/// Longest value a `DATABUILD_REDACT:` marker line may carry. The rest of the
/// line is swallowed up to this many bytes; a longer line is let through after
/// it (a job printing the prefix and then megabytes without a newline must not
/// lose all its output), and the value is named in `redact_skipped`.
pub const MAX_MARKER_VALUE: usize = 8 * 1024;

/// Most values `DATABUILD_REDACT:` markers may add to one job. A build has a
/// handful of runtime secrets; a runaway job printing markers must cost
/// little: each value adds its needles to the filter in place (see
/// `Redactor::extend`), but the automaton, which checks the filter's hits,
/// is built anew for the next hit after a value is added.
pub const MAX_MARKER_SECRETS: usize = 256;

/// Most bytes of needles (a value with its encodings: about eight times its
/// length) markers may add to one job, so that memory and the automaton's
/// rebuilds stay bounded however many or long the values are (1,000 values
/// of 8 KiB took 650 MB and minutes). Room for a dozen private keys, or
/// hundreds of tokens.
pub const MAX_MARKER_NEEDLE_BYTES: usize = 128 * 1024;

/// Most entries kept in `redact_skipped`; later ones are counted in the last
/// entry. metadata.json stays small whatever the environment holds.
pub const MAX_SKIPPED_NAMES: usize = 100;

/// The marker a job prints to add a value at run time; like the
/// `DATABUILD_MISSING_DEPS_JSON:` marker it counts only at the start of a line.
pub const MARKER: &[u8] = b"DATABUILD_REDACT: ";

/// The name globs whose environment variables are secrets unless
/// `--no-default-redact` clears them.
pub const DEFAULT_ENV_GLOBS: &[&str] = &[
    "*_TOKEN",
    "*_SECRET",
    "*_SECRET_*",
    "*_PASSWORD",
    "*_PASSWD",
    "*_PRIVATE_KEY",
    "*_ACCESS_KEY",
    "*_API_KEY",
    "*_CREDENTIALS",
];

/// True if `name` matches `glob`, where `*` is any run of characters and `?`
/// any one; ASCII letters match regardless of case (`github_token` is as
/// secret as `GITHUB_TOKEN`).
pub fn glob_match(glob: &str, name: &str) -> bool {
    let (g, n) = (glob.as_bytes(), name.as_bytes());
    let (mut gi, mut ni) = (0, 0);
    // Where the last `*` was and the name position it is trying to cover.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if gi < g.len() && (g[gi] == b'?' || g[gi].eq_ignore_ascii_case(&n[ni])) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, ni));
            gi += 1;
        } else if let Some((sg, sn)) = star {
            gi = sg + 1;
            ni = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

/// The values to hide, each with a name that may be shown (never the value).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Vec<(String, Vec<u8>)>,
}

impl Secrets {
    /// No values: only `DATABUILD_REDACT:` markers will add some.
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// Adds `value` under `name` (e.g. `env GITHUB_TOKEN`).
    pub fn add(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.values.push((name.into(), value.into()));
    }

    /// Adds every variable of `vars` whose name matches one of `globs`.
    pub fn add_env<I, K, V>(&mut self, globs: &[String], vars: I)
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        use std::os::unix::ffi::OsStrExt;
        for (k, v) in vars {
            let name = k.as_ref().to_string_lossy();
            if globs.iter().any(|g| glob_match(g, &name)) {
                self.add(format!("env {name}"), v.as_ref().as_bytes());
            }
        }
    }

    /// Adds each non-empty line of `text` (the contents of a `--redact-file`
    /// named `source`) as a value.
    pub fn add_lines(&mut self, source: &str, text: &[u8]) {
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if !trim(line).is_empty() {
                self.add(format!("{source} line {}", i + 1), line);
            }
        }
    }

    /// How many values were added.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no value was added.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// `value` without surrounding ASCII whitespace: a trailing newline in a file
/// or a variable is never part of the secret, and no needle then starts with
/// `\n` (which the marker pattern relies on, see [`Redactor`]).
fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return &[];
    };
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .unwrap_or(start);
    &value[start..=end]
}

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The base64 characters that depend only on `value` when it starts `align`
/// bytes (0, 1 or 2) into a 3-byte group of a longer encoded text: character
/// `i` covers bits `6i..6i+6`, and it is fixed by the value alone when all of
/// those bits lie inside it.
fn base64_stable(value: &[u8], align: usize, alphabet: &[u8; 64]) -> Vec<u8> {
    let first = (8 * align).div_ceil(6);
    let last = 8 * (align + value.len()) / 6; // exclusive
    (first..last)
        .map(|i| {
            // The 16 bits from the byte holding bit 6i on (it is in `value`:
            // 6i >= 8 * align), big-endian, hold all six.
            let (byte, shift) = (6 * i / 8 - align, 10 - 6 * i % 8);
            let word = u16::from_be_bytes([value[byte], value.get(byte + 1).copied().unwrap_or(0)]);
            alphabet[usize::from((word >> shift) & 63)]
        })
        .collect()
}

/// `value` percent-encoded as URLs and forms carry it: every byte outside the
/// unreserved set as `%XX`, with upper-case hex (`upper`) or lower-case.
fn url_encoded(value: &[u8], upper: bool) -> Vec<u8> {
    let hex: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
        }
    }
    out
}

/// `value` as it appears inside a JSON string (quotes, backslashes, newlines
/// and other control characters escaped), as serde_json and most encoders write it.
fn json_escaped(value: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(value);
    let quoted = serde_json::to_string(&text).unwrap_or_default();
    match quoted.len() {
        n if n >= 2 => quoted.as_bytes()[1..n - 1].to_vec(),
        _ => Vec::new(),
    }
}

/// Every needle `value` (already trimmed, long enough) yields: the value, each
/// long enough line of it, and its encodings; each at least
/// [`MIN_SECRET_LEN`] bytes (an encoding of a short piece would match noise).
pub fn needles(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![value.to_vec()];
    if value.contains(&b'\n') {
        for line in value.split(|&b| b == b'\n') {
            let line = trim(line);
            if line.len() >= MIN_LINE_LEN {
                out.push(line.to_vec());
            }
        }
    }
    for align in 0..3 {
        for alphabet in [B64_STD, B64_URL] {
            out.push(base64_stable(value, align, alphabet));
        }
    }
    out.push(url_encoded(value, true));
    out.push(url_encoded(value, false));
    out.push(json_escaped(value));
    let mut seen = HashSet::new();
    out.retain(|n| n.len() >= MIN_SECRET_LEN && seen.insert(n.clone()));
    out
}

/// Per-stream state of the [`Redactor`].
#[derive(Debug)]
struct StreamState {
    /// Bytes that may be the start of a match, not yet given out.
    held: Vec<u8>,
    /// The last byte given out was a newline (or none was): a marker may start here.
    line_start: bool,
    /// Inside a `DATABUILD_REDACT:` line: the value so far (swallowed).
    marker: Option<Vec<u8>>,
    /// The marker line's value passed [`MAX_MARKER_VALUE`]: the rest of the
    /// line is swallowed too (hidden, never a needle) up to its newline.
    marker_overflow: bool,
    /// Leading bytes of `held` that are no partial match, only kept so the
    /// bytes given out end at a page boundary (see [`Redactor::feed`]).
    extra: usize,
}

impl Default for StreamState {
    fn default() -> StreamState {
        StreamState {
            held: Vec::new(),
            line_start: true,
            marker: None,
            marker_overflow: false,
            extra: 0,
        }
    }
}

/// How much of a stream's input may still be held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// More input follows: hold a possible partial match.
    Feed,
    /// Silence: give out a held partial match unchanged.
    Release,
    /// The stream ended: as `Release`, and an open marker line ends too.
    Finish,
}

/// The streaming redactor for a job's streams (indexed 0 and 1), sharing one
/// set of needles so a `DATABUILD_REDACT:` value printed on stderr is hidden
/// on stdout too.
///
/// Matching: the needles plus `"\n" + MARKER` in one leftmost-longest
/// Aho-Corasick automaton (`Automaton`), behind a q-gram filter
/// (`QgramFilter`). When the last byte given out was a newline, the
/// search text starts with a `\n` of context that is not given out again, so a
/// marker at the start of a line (or of the stream) is found; no other needle
/// can start with `\n` since values are trimmed.
#[derive(Debug)]
pub struct Redactor {
    /// The patterns (index 0 is the marker) and their automaton.
    automaton: Automaton,
    seen: HashSet<Vec<u8>>,
    /// For each byte, the patterns starting with it (for partial-match checks).
    by_first: Vec<Vec<u32>>,
    max_len: usize,
    streams: [StreamState; 2],
    redactions: u64,
    skipped: Vec<String>,
    skipped_dropped: u64,
    marker_secrets: usize,
    /// Bytes of needles the markers' values added.
    marker_bytes: usize,
    /// Decides where the automaton needs to look at all.
    filter: QgramFilter,
    /// Reused search text for the start of a chunk: context byte, held
    /// bytes and as much of the chunk as a match starting in them can reach.
    scratch: Vec<u8>,
    matches: Vec<(usize, usize, usize)>,
    /// Reused: the matches in the rest of a chunk after held bytes.
    rest_matches: Vec<(usize, usize, usize)>,
}

impl Redactor {
    /// A redactor for `secrets`; values too short (or too long) are only named.
    pub fn new(secrets: &Secrets) -> Redactor {
        let mut marker = vec![b'\n'];
        marker.extend_from_slice(MARKER);
        let mut r = Redactor {
            automaton: Automaton::new(vec![marker]),
            seen: HashSet::new(),
            by_first: vec![Vec::new(); 256],
            max_len: 0,
            streams: Default::default(),
            redactions: 0,
            skipped: Vec::new(),
            skipped_dropped: 0,
            marker_secrets: 0,
            marker_bytes: 0,
            filter: QgramFilter::new(&[]),
            scratch: Vec::new(),
            matches: Vec::new(),
            rest_matches: Vec::new(),
        };
        for (name, value) in &secrets.values {
            r.add_value(name, value);
        }
        r.rebuild();
        r
    }

    /// Adds the needles of `value`, or names it in `redact_skipped`.
    fn add_value(&mut self, name: &str, value: &[u8]) {
        self.add_value_within(name, value, usize::MAX);
    }

    /// [`Redactor::add_value`], unless its new needles would take more than
    /// `room` bytes; returns the bytes they took.
    fn add_value_within(&mut self, name: &str, value: &[u8], room: usize) -> usize {
        let value = trim(value);
        if value.is_empty() {
            return 0;
        }
        if value.len() < MIN_SECRET_LEN {
            self.skip(format!(
                "{name}: shorter than {MIN_SECRET_LEN} bytes, not redacted"
            ));
            return 0;
        }
        if value.len() > MAX_SECRET_LEN {
            self.skip(format!(
                "{name}: longer than {MAX_SECRET_LEN} bytes, not redacted"
            ));
            return 0;
        }
        let new: Vec<Vec<u8>> = needles(value)
            .into_iter()
            .filter(|n| !self.seen.contains(n))
            .collect();
        let bytes = new.iter().map(Vec::len).sum();
        if bytes > room {
            self.skip(format!(
                "{name}: over {MAX_MARKER_NEEDLE_BYTES} bytes of marker values with their encodings, not redacted"
            ));
            return 0;
        }
        for n in new {
            if self.seen.insert(n.clone()) {
                self.automaton.patterns.push(n);
            }
        }
        bytes
    }

    fn skip(&mut self, note: String) {
        if self.skipped.len() < MAX_SKIPPED_NAMES {
            self.skipped.push(note);
        } else {
            self.skipped_dropped += 1;
        }
    }

    /// Takes in the patterns from `from` on, just added: in place where they
    /// keep the filter's stride, else by a rebuild (a value shorter than all
    /// before, which can happen only so often). The automaton is built anew
    /// when next needed either way.
    fn extend(&mut self, from: usize) {
        if !self.filter.add(&self.automaton.patterns[from..]) {
            return self.rebuild();
        }
        self.automaton.built = OnceCell::new();
        for (i, p) in self.automaton.patterns.iter().enumerate().skip(from) {
            self.by_first[usize::from(p[0])].push(i as u32);
            self.max_len = self.max_len.max(p.len());
        }
    }

    /// Makes everything derived from the patterns anew after some were added.
    fn rebuild(&mut self) {
        self.automaton.built = OnceCell::new();
        let patterns = &self.automaton.patterns;
        self.by_first = vec![Vec::new(); 256];
        for (i, p) in patterns.iter().enumerate() {
            self.by_first[usize::from(p[0])].push(i as u32);
        }
        self.max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        self.filter = QgramFilter::new(patterns);
    }

    /// True when no value is hidden yet (only markers could add one).
    pub fn has_secrets(&self) -> bool {
        self.automaton.patterns.len() > 1
    }

    /// Matches replaced so far.
    pub fn redactions(&self) -> u64 {
        self.redactions
    }

    /// Values not redacted, by name and reason (never the value).
    pub fn skipped(&self) -> Vec<String> {
        let mut out = self.skipped.clone();
        if self.skipped_dropped > 0 {
            out.push(format!("... and {} more", self.skipped_dropped));
        }
        out
    }

    /// True if stream `s` holds bytes back (a possible partial match).
    pub fn holds(&self, s: usize) -> bool {
        !self.streams[s].held.is_empty()
    }

    /// Redacts `input`, the next bytes of stream `s` (0 or 1); a possible
    /// partial match at the end is held back. Returns `Some(n)`, with nothing
    /// written to `out`, when `input[..n]` is what goes out, exactly as it is
    /// (the common case, which then costs no copy; the rest of `input` is
    /// held); else `None`, and what goes out is in `out`.
    ///
    /// `align`, when more input is already waiting (the caller's read filled
    /// its buffer), is where in `input` the log file's next page starts: the
    /// cut (the end of `input`, or where a partial match starts) moves back
    /// to a page start, at most [`ALIGN_HOLD`] bytes before the end, so the
    /// log is written in whole pages (a write ending inside a page costs the
    /// kernel about a third more) even after a redaction shifted the log
    /// against the reads. Those bytes are held only until the next input, or
    /// [`Redactor::take_extra`].
    ///
    /// `marks` is [`Marks::Stems`] when the caller has searched `input` for
    /// [`MARKER_STEM`] already (for its own scanner), else [`Marks::Search`].
    pub fn feed(
        &mut self,
        s: usize,
        input: &[u8],
        out: &mut Vec<u8>,
        align: Option<usize>,
        marks: Marks,
    ) -> Option<usize> {
        let st = &self.streams[s];
        let plain = st.marker.is_none()
            && st.held.is_empty()
            && !(st.line_start && input.first() == Some(&MARKER[0]));
        if plain {
            self.matches.clear();
            find_matches(
                &self.automaton,
                &self.filter,
                input,
                marks,
                &mut self.matches,
            );
            if self.matches.is_empty() {
                let partial = hold_start(
                    &self.automaton.patterns,
                    &self.by_first,
                    &self.filter,
                    input,
                );
                let keep = match align {
                    Some(first) => page_cut(partial, input.len(), first),
                    None => partial,
                };
                let st = &mut self.streams[s];
                st.held.extend_from_slice(&input[keep..]);
                st.extra = partial - keep;
                if let Some(&last) = input[..keep].last() {
                    st.line_start = last == b'\n';
                }
                return Some(keep);
            }
        }
        self.process(s, input, out, Mode::Feed);
        None
    }

    /// Gives out the held bytes of stream `s` that [`Redactor::feed`] kept
    /// only to end at a page boundary (no more input came at once).
    pub fn take_extra(&mut self, s: usize, out: &mut Vec<u8>) {
        let st = &mut self.streams[s];
        if st.extra == 0 {
            return;
        }
        out.extend(st.held.drain(..st.extra));
        st.extra = 0;
        st.line_start = out.last() == Some(&b'\n');
    }

    /// Moves the bytes stream `s` holds back to the end of `front`, so that
    /// the caller passes them again, followed at once by the next input, as
    /// one chunk to [`Redactor::feed`]: the same search, without copying the
    /// input to join it to them. Returns how many bytes were moved, or `None`
    /// (nothing moved) when they do not fit or the stream is inside a marker
    /// line (whose value is not searched text).
    pub fn unhold_into(&mut self, s: usize, front: &mut [u8]) -> Option<usize> {
        let st = &mut self.streams[s];
        let h = st.held.len();
        if st.marker.is_some() || h > front.len() {
            return None;
        }
        let at = front.len() - h;
        front[at..].copy_from_slice(&st.held);
        st.held.clear();
        st.extra = 0;
        Some(h)
    }

    /// Gives out what stream `s` holds back: complete matches still redacted,
    /// a partial match unchanged (called after a short silence).
    pub fn release(&mut self, s: usize, out: &mut Vec<u8>) {
        self.process(s, &[], out, Mode::Release);
    }

    /// The end of stream `s`: gives out everything held, and a marker line
    /// without a newline still adds its value.
    pub fn finish(&mut self, s: usize, out: &mut Vec<u8>) {
        self.process(s, &[], out, Mode::Finish);
    }

    /// `text` with every complete match replaced (metadata strings: the
    /// command line, the cwd). Markers mean nothing here: the search goes on
    /// after one.
    pub fn redact_str(&mut self, text: &str) -> String {
        if !self.has_secrets() {
            return text.to_string();
        }
        let text = text.as_bytes();
        let mut out = Vec::with_capacity(text.len());
        let mut found = Vec::new();
        let (mut pos, mut from) = (0, 0);
        while from < text.len() {
            found.clear();
            find_matches(
                &self.automaton,
                &self.filter,
                &text[from..],
                Marks::Search,
                &mut found,
            );
            let mut next = text.len();
            for &(start, end, p) in &found {
                let (start, end) = (from + start, from + end);
                if p == 0 {
                    next = end;
                    break;
                }
                out.extend_from_slice(&text[pos..start]);
                push_replacement(&text[start..end], &mut out);
                self.redactions += 1;
                pos = end;
            }
            from = next;
        }
        out.extend_from_slice(&text[pos..]);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn process(&mut self, s: usize, input: &[u8], out: &mut Vec<u8>, mode: Mode) {
        // After a marker's prefix, the rest of the search text is read again
        // as the marker's value and what follows it.
        let mut owned: Option<Vec<u8>> = None;
        let mut off = 0;
        loop {
            let data = match &owned {
                Some(v) => &v[off..],
                None => &input[off..],
            };
            if self.streams[s].marker.is_some() {
                match self.swallow_marker(s, data, mode) {
                    Some(n) => {
                        off += n;
                        continue;
                    }
                    None => return,
                }
            }
            match self.scan(s, data, out, mode) {
                Some(rest) => {
                    owned = Some(rest);
                    off = 0;
                }
                None => return,
            }
        }
    }

    /// Inside a marker line: takes the value from `input`; returns where the
    /// value ended (the newline, or the cap) or `None` if all of it was taken.
    /// Past the cap the rest of the line is taken and dropped: all of a marker
    /// line is hidden, however long (its value is too long to be a needle).
    fn swallow_marker(&mut self, s: usize, input: &[u8], mode: Mode) -> Option<usize> {
        let st = &mut self.streams[s];
        let nl = memchr::memchr(b'\n', input);
        let line_end = nl.unwrap_or(input.len());
        if st.marker_overflow {
            if nl.is_some() || mode == Mode::Finish {
                st.marker = None;
                st.marker_overflow = false;
                return nl.map(|_| line_end);
            }
            return None;
        }
        let value = st.marker.as_mut().expect("called inside a marker");
        let room = MAX_MARKER_VALUE - value.len();
        if line_end > room {
            self.end_marker(s, true);
            let st = &mut self.streams[s];
            st.marker = Some(Vec::new());
            st.marker_overflow = true;
            return Some(room);
        }
        value.extend_from_slice(&input[..line_end]);
        if nl.is_some() || mode == Mode::Finish {
            self.end_marker(s, false);
            return nl.map(|_| line_end);
        }
        None
    }

    /// A marker line ended: its value becomes needles for both streams.
    fn end_marker(&mut self, s: usize, too_long: bool) {
        let Some(value) = self.streams[s].marker.take() else {
            return;
        };
        let name = format!(
            "a DATABUILD_REDACT: marker on {}",
            if s == 0 { "stdout" } else { "stderr" }
        );
        if too_long {
            self.skip(format!(
                "{name}: value longer than {MAX_MARKER_VALUE} bytes, not redacted beyond its line"
            ));
            return;
        }
        if self.marker_secrets >= MAX_MARKER_SECRETS {
            self.skip(format!(
                "{name}: over {MAX_MARKER_SECRETS} marker values, not redacted"
            ));
            return;
        }
        let before = self.automaton.patterns.len();
        let room = MAX_MARKER_NEEDLE_BYTES - self.marker_bytes;
        let took = self.add_value_within(&name, &value, room);
        if took > 0 {
            self.marker_secrets += 1;
            self.marker_bytes += took;
        }
        if self.automaton.patterns.len() != before {
            self.extend(before);
        }
    }

    /// Redacts the held bytes plus `input` into `out`. Returns what follows
    /// a marker's prefix if one was found (its value, then more output).
    fn scan(&mut self, s: usize, input: &[u8], out: &mut Vec<u8>, mode: Mode) -> Option<Vec<u8>> {
        let st = &mut self.streams[s];
        if st.held.is_empty() && input.is_empty() {
            return None;
        }
        // The search text is the head (a `\n` of context when a marker may
        // start the text, then the held bytes) followed by `input`. The head
        // is at most `max_len` bytes; `input` is a whole chunk and is not
        // copied to be searched: only the matches starting in the head need
        // the two together, and those end within `max_len` bytes of it.
        let first = st.held.first().or(input.first());
        let context = st.line_start && first == Some(&MARKER[0]);
        let base = usize::from(context);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        if context {
            scratch.push(b'\n');
        }
        scratch.append(&mut st.held);
        st.extra = 0;
        let h = scratch.len();
        let whole = input.len() <= self.max_len;
        let joined = if h == 0 {
            Joined {
                head: &[],
                tail: input,
            }
        } else {
            scratch.extend_from_slice(&input[..input.len().min(self.max_len)]);
            self.matches.clear();
            find_matches(
                &self.automaton,
                &self.filter,
                &scratch,
                Marks::Search,
                &mut self.matches,
            );
            if whole {
                // A short input: the head and all of it are searched as one.
                Joined {
                    head: &scratch,
                    tail: &[],
                }
            } else {
                Joined {
                    head: &scratch[..h],
                    tail: input,
                }
            }
        };
        if h == 0 {
            self.matches.clear();
            find_matches(
                &self.automaton,
                &self.filter,
                input,
                Marks::Search,
                &mut self.matches,
            );
        } else if !whole {
            // Keep the matches that start in the head; a later one may have
            // been cut short by the end of the searched piece, so the rest
            // of `input` is searched on its own, from where they end.
            let kept = self.matches.iter().position(|m| m.0 >= h);
            self.matches.truncate(kept.unwrap_or(self.matches.len()));
            if self.matches.last().is_none_or(|m| m.2 != 0) {
                let from = self.matches.last().map_or(h, |m| m.1.max(h));
                let mut rest = std::mem::take(&mut self.rest_matches);
                rest.clear();
                let rest_input = &input[from - h..];
                find_matches(
                    &self.automaton,
                    &self.filter,
                    rest_input,
                    Marks::Search,
                    &mut rest,
                );
                self.matches
                    .extend(rest.iter().map(|&(a, b, p)| (a + from, b + from, p)));
                self.rest_matches = rest;
            }
        }
        let len = joined.len();
        let given_before = out.len();
        // The last match may be the start of a longer needle still arriving.
        // (Everything from `len - max_len` on lies in one part of `joined`.)
        let mut hold_from = len;
        if mode == Mode::Feed {
            if let Some(&(start, _, p)) = self.matches.last() {
                if p != 0
                    && len - start < self.max_len
                    && is_partial(
                        &self.automaton.patterns,
                        &self.by_first,
                        joined.suffix(start),
                    )
                {
                    self.matches.pop();
                    hold_from = start;
                }
            }
            if hold_from == len {
                let floor = self.matches.last().map_or(0, |m| m.1);
                let from = floor.max(len.saturating_sub(self.max_len.saturating_sub(1)));
                let suffix = joined.suffix(from);
                hold_from = from
                    + hold_start(
                        &self.automaton.patterns,
                        &self.by_first,
                        &self.filter,
                        suffix,
                    );
            }
        }
        let mut pos = base;
        let mut marker_end = None;
        let mut secret = Vec::new();
        for &(start, end, p) in &self.matches {
            if p == 0 {
                // `\n` + MARKER: the newline is given out, the marker's
                // prefix kept, its value swallowed.
                joined.copy(pos..(start + 1).max(base), out);
                out.extend_from_slice(MARKER);
                out.extend_from_slice(REPLACEMENT);
                self.redactions += 1;
                marker_end = Some(end);
                pos = end;
                break;
            }
            joined.copy(pos..start, out);
            secret.clear();
            joined.copy(start..end, &mut secret);
            push_replacement(&secret, out);
            self.redactions += 1;
            pos = end;
        }
        let st = &mut self.streams[s];
        let rest = if let Some(end) = marker_end {
            st.line_start = false;
            st.marker = Some(Vec::new());
            let mut rest = Vec::new();
            joined.copy(end..len, &mut rest);
            Some(rest)
        } else {
            let hold_from = hold_from.max(pos);
            joined.copy(pos..hold_from, out);
            joined.copy(hold_from..len, &mut st.held);
            if out.len() > given_before {
                st.line_start = out.last() == Some(&b'\n');
            }
            None
        };
        self.scratch = scratch;
        rest
    }
}

/// A search text in two parts that are never copied into one: a few held
/// bytes (the head) and the chunk that follows them (the tail).
struct Joined<'a> {
    head: &'a [u8],
    tail: &'a [u8],
}

impl<'a> Joined<'a> {
    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Appends the bytes at `range` to `out`.
    fn copy(&self, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        let h = self.head.len();
        if range.start < h {
            out.extend_from_slice(&self.head[range.start..range.end.min(h)]);
        }
        if range.end > h {
            out.extend_from_slice(&self.tail[range.start.max(h) - h..range.end - h]);
        }
    }

    /// The bytes from `at` to the end as one slice. Only asked for within
    /// the last `max_len` bytes, which lie in one part: the tail when it is
    /// longer than that, else the head holds everything.
    fn suffix(&self, at: usize) -> &'a [u8] {
        match at.checked_sub(self.head.len()) {
            Some(t) => &self.tail[t..],
            None => {
                debug_assert!(self.tail.is_empty(), "a suffix across both parts");
                &self.head[at..]
            }
        }
    }
}

/// The leftmost-longest Aho-Corasick automaton of the patterns, built the
/// first time a search needs it: the filter keeps ordinary output (and
/// metadata strings) from ever reaching it, so a job whose output holds no
/// secret never pays for building it (with 50 values, about as much as all
/// the rest of the redactor's start-up).
#[derive(Debug)]
struct Automaton {
    /// Index 0 is the marker pattern.
    patterns: Vec<Vec<u8>>,
    built: OnceCell<AhoCorasick>,
}

impl Automaton {
    fn new(patterns: Vec<Vec<u8>>) -> Automaton {
        Automaton {
            patterns,
            built: OnceCell::new(),
        }
    }

    fn get(&self) -> &AhoCorasick {
        self.built.get_or_init(|| {
            // Patterns are at most a few MiB in all (bounded by
            // MAX_SECRET_LEN per value), which the builder always accepts.
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                // It only reads the filter's rare windows; the plain NFA
                // builds in less than half the time of the faster-searching
                // kinds (each marker value builds it again) and saves their
                // memory.
                .kind(Some(AhoCorasickKind::NoncontiguousNFA))
                .build(&self.patterns)
                .expect("bounded byte patterns always build")
        })
    }
}

/// Slots (one byte each) in the q-gram filter's first table, which every
/// sample is looked up in: 512 KiB, so it stays in the L2 cache, and a
/// lookup is one multiply, one shift and one load (a bit table needs a
/// second shift and a mask). It holds only the q-grams a sample can land on
/// (see [`QgramFilter`]): for 50 values with their encodings, a few thousand,
/// under 1% of the slots, so a group of [`SAMPLES_PER_TEST`] samples all
/// miss ~95% of the time (a fuller table made the group test a coin toss
/// the branch predictor loses, and sent a fifth of the groups down the slow
/// path).
const FILTER_SLOTS: usize = 1 << 19;

/// Bits in the second table, which holds every q-gram of every pattern and
/// is asked only about samples the first one passes (and about their
/// neighbours): 32 KiB, a few percent full, so a sample passes both by
/// chance about once in thousands.
const CONFIRM_BITS: usize = 1 << 18;

/// Bytes in a q-gram; the shortest pattern ([`MIN_SECRET_LEN`]) is longer.
const Q: usize = 4;

/// Multipliers of the two independent hashes of a q-gram.
const HASH_A: u32 = 0x9e37_79b1;
const HASH_B: u32 = 0x85eb_ca77;

/// A sampling filter in front of the automaton (the idea of Wu-Manber and
/// q-gram filters): every sampled pattern is at least `min` long, and
/// samples are taken `step = min - Q + 1` bytes apart, so any occurrence holds
/// a whole sampled q-gram, and the first one it holds starts within its first
/// `step` bytes. The first table therefore needs only each sampled
/// pattern's q-grams at offsets `0..step` (fewer entries: fewer chance
/// hits); the second holds all of every pattern's, for the neighbour check
/// and for the held-back suffix. Around a sample that passes both, a window
/// wide enough to hold any occurrence covering it goes to the automaton.
/// Ordinary output is thus looked at once every `step` bytes, not byte by
/// byte.
///
/// The marker (pattern 0) is not sampled: its 19 bytes would bound the
/// stride below most needles' length. Its occurrences come from a substring
/// search ([`Marks`]), which the wrapper shares with the
/// `DATABUILD_MISSING_DEPS_JSON:` scanner.
///
/// Measured and left out (200 MB, 50 values, on the 2-core test VM): AVX2
/// and AVX-512 gathers of the samples and of their slots (~1.7x and ~3x
/// slower than these scalar loads on its AMD cores); a bit table of 2^18 or
/// 2^19 bits in place of the byte table (fits the L1/L2 cache better, yet no
/// faster within the noise: even a 4 KiB table, always in the L1 cache, cut
/// a group's time by only about a fifth, so the cost is mostly the
/// per-sample work, not cache misses, and a table of 2^21 slots is no slower
/// than 2^19); and searching each read on a second thread while the
/// wrapper writes it out (a prototype of the best case any pipelining could
/// reach: the hand-over between threads, ~20-30 us of wake-up on a VM, and
/// the CPU the job itself needs made the run ~6% slower than searching
/// inline).
#[derive(Debug, Clone)]
struct QgramFilter {
    // Fixed-size, so a hash (always below the table's size) indexes it
    // with no bounds check in the per-sample loop.
    a: Box<[u8; FILTER_SLOTS]>,
    b: Box<[u64; CONFIRM_BITS / 64]>,
    step: usize,
    min_len: usize,
    max_len: usize,
    /// The shortest sampled pattern, which sets `step` and `pair_check`.
    min_sampled: usize,
    /// Every sampled pattern is at least `3 * Q - 1` long, so an occurrence holding
    /// the q-gram at `p` also holds the one at `p - Q` or at `p + Q` (if it
    /// ends before `p + 2Q`, it started at `p + 2Q - 1 - len <= p - Q` or
    /// earlier): a hit is only taken when a neighbour hits too. Output that
    /// shares a few 4-byte pieces with the needles (random text does, every
    /// few thousand samples) then rarely wakes the automaton.
    pair_check: bool,
    /// There are patterns besides the marker to sample for (with no value
    /// hidden yet, the default, there are none).
    sampled: bool,
    /// The marker's substring search.
    marker: memchr::memmem::Finder<'static>,
}

impl QgramFilter {
    /// The filter of `patterns`, pattern 0 being the marker.
    fn new(patterns: &[Vec<u8>]) -> QgramFilter {
        let sampled = patterns.get(1..).unwrap_or_default();
        let min_sampled = sampled.iter().map(Vec::len).min().unwrap_or(0);
        let step = (min_sampled + 1).saturating_sub(Q).max(1);
        let mut filter = QgramFilter {
            a: zeroed_table::<u8, FILTER_SLOTS>(),
            b: zeroed_table::<u64, { CONFIRM_BITS / 64 }>(),
            step,
            min_len: patterns.iter().map(Vec::len).min().unwrap_or(0),
            pair_check: min_sampled >= 3 * Q - 1,
            min_sampled,
            max_len: patterns.iter().map(Vec::len).max().unwrap_or(0),
            sampled: !sampled.is_empty(),
            marker: memchr::memmem::Finder::new(patterns.first().map_or(&[][..], Vec::as_slice))
                .into_owned(),
        };
        for (k, p) in patterns.iter().enumerate() {
            filter.insert(p, k > 0);
        }
        filter
    }

    /// Puts the q-grams of pattern `p` in the tables: every one in the
    /// second (for the neighbour check and the held-back suffix), those a
    /// sample can land on in the first if `p` is `sampled` (not the marker).
    fn insert(&mut self, p: &[u8], sampled: bool) {
        for (i, w) in p.windows(Q).enumerate() {
            let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            if sampled && i < self.step {
                self.a[qgram_hash::<FILTER_SLOTS>(v, HASH_A)] = 1;
            }
            set_bit(&mut self.b[..], qgram_hash::<CONFIRM_BITS>(v, HASH_B));
        }
    }

    /// Adds `patterns` (none of them the marker) to the tables in place, if
    /// none is shorter than the shortest sampled so far (the stride and the
    /// neighbour check stay right); false, and nothing added, if one is.
    fn add(&mut self, patterns: &[Vec<u8>]) -> bool {
        let shortest = patterns.iter().map(Vec::len).min().unwrap_or(usize::MAX);
        if !self.sampled || shortest < self.min_sampled {
            return false;
        }
        for p in patterns {
            self.insert(p, true);
            self.max_len = self.max_len.max(p.len());
        }
        true
    }

    /// The first table's slot for the q-gram `v`: 1 if a sample with this
    /// q-gram may lie in an occurrence, else 0.
    #[inline(always)]
    fn probe_a(&self, v: u32) -> u8 {
        self.a[qgram_hash::<FILTER_SLOTS>(v, HASH_A)]
    }

    /// The second table's word for the q-gram `v`, shifted so that bit 0 is
    /// its bit: odd if the q-gram may occur (the other bits are noise).
    #[inline(always)]
    fn probe_b(&self, v: u32) -> u64 {
        let h = qgram_hash::<CONFIRM_BITS>(v, HASH_B);
        self.b[h / 64] >> (h % 64)
    }

    /// True if the q-gram `v` may occur anywhere in a pattern.
    #[inline(always)]
    fn hit(&self, v: u32) -> bool {
        self.probe_b(v) & 1 != 0
    }

    /// True if the sample at `p` may be part of an occurrence: its q-gram may
    /// be one a sample can land on (both tables), and (see `pair_check`) the
    /// q-gram before or after it may occur too.
    #[inline(always)]
    fn sample_hit(&self, buf: &[u8], p: usize) -> bool {
        let v = qgram_at(buf, p);
        if self.probe_a(v) == 0 || !self.hit(v) {
            return false;
        }
        !self.pair_check
            || (p >= Q && self.hit(qgram_at(buf, p - Q)))
            || (p + 2 * Q <= buf.len() && self.hit(qgram_at(buf, p + Q)))
    }

    /// True if any of the [`SAMPLES_PER_TEST`] samples from `p` on (`step`
    /// apart) may occur, by the first hash; the caller keeps the last of them
    /// within `buf`. Loads unchecked: the one check is the group's.
    #[inline(always)]
    fn group_may_hit(&self, buf: &[u8], p: usize) -> bool {
        let span = &buf[p..p + (SAMPLES_PER_TEST - 1) * self.step + Q];
        let mut acc = 0;
        for i in 0..SAMPLES_PER_TEST {
            let at = i * self.step;
            debug_assert!(at + Q <= span.len());
            // SAFETY: `at + Q <= (SAMPLES_PER_TEST - 1) * step + Q`, the
            // length of `span`; the read is unaligned and of plain bytes.
            let v = unsafe { span.as_ptr().add(at).cast::<[u8; Q]>().read_unaligned() };
            acc |= self.probe_a(u32::from_le_bytes(v));
        }
        acc & 1 != 0
    }
}

/// How many samples the filter tests together (see [`find_matches`]): the
/// first hash says no to ~99% of samples, so eight at once still skip ~90%
/// of the time, with an eighth of the branches.
const SAMPLES_PER_TEST: usize = 8;

/// The q-gram at `p` of `buf` as a number (the caller keeps `p + Q` within `buf`).
#[inline(always)]
fn qgram_at(buf: &[u8], p: usize) -> u32 {
    let mut w = [0u8; Q];
    w.copy_from_slice(&buf[p..p + Q]);
    u32::from_le_bytes(w)
}

/// A multiplicative hash of the q-gram `v` into `0..BITS` (a power of two).
#[inline(always)]
fn qgram_hash<const BITS: usize>(v: u32, mul: u32) -> usize {
    (v.wrapping_mul(mul) >> (32 - BITS.trailing_zeros())) as usize
}

/// A table of `N` zeros, made on the heap (hundreds of KiB do not belong
/// on the stack).
fn zeroed_table<T: Copy + Default, const N: usize>() -> Box<[T; N]> {
    vec![T::default(); N]
        .into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("a vector of N zeros"))
}

fn set_bit(table: &mut [u64], h: usize) {
    table[h / 64] |= 1 << (h % 64);
}

/// The leftmost-longest matches in `buf` (stopping after the first marker),
/// as `(start, end, pattern)`: the same as searching all of `buf`, since
/// every occurrence lies inside the window of one of its sampled q-grams (a
/// marker: of its start, see [`Marks`]) and merged windows never cut one.
fn find_matches(
    matcher: &Automaton,
    filter: &QgramFilter,
    buf: &[u8],
    marks: Marks,
    matches: &mut Vec<(usize, usize, usize)>,
) {
    if buf.len() < filter.min_len {
        return; // no pattern fits (and the automaton need not be built)
    }
    if buf.len() < Q {
        collect(matcher, buf, 0..buf.len(), matches);
        return;
    }
    let reach = filter.max_len;
    let mut window: Option<(usize, usize)> = None;
    // Adds the window that holds any occurrence covering `p`; true once a
    // marker was found (the search ends there).
    let mut add = |p: usize, matches: &mut Vec<(usize, usize, usize)>| -> bool {
        let (ws, we) = (p.saturating_sub(reach - Q), (p + reach).min(buf.len()));
        window = match window {
            Some((s, e)) if ws <= e => Some((s, we.max(e))),
            Some((s, e)) => {
                if collect(matcher, buf, s..e, matches) {
                    return true;
                }
                Some((ws, we))
            }
            None => Some((ws, we)),
        };
        false
    };
    // The marker's occurrences take their windows in order with the samples'.
    let mut markers = MarkerStarts {
        buf,
        filter,
        marks,
        at: 0,
    };
    let mut next_marker = markers.next();
    if filter.sampled {
        let step = filter.step;
        let last = buf.len() - Q;
        let group = (SAMPLES_PER_TEST - 1) * step;
        let mut p = 0;
        loop {
            // Most samples miss, so `SAMPLES_PER_TEST` of them are tested
            // with one branch; only a group with a possible hit is looked at
            // sample by sample.
            while p + group + Q <= buf.len() && !filter.group_may_hit(buf, p) {
                p += group + step;
            }
            let stop = last.min(p + group);
            while p <= stop {
                if filter.sample_hit(buf, p) {
                    while let Some(m) = next_marker.filter(|&m| m <= p) {
                        if add(m, matches) {
                            return;
                        }
                        next_marker = markers.next();
                    }
                    if add(p, matches) {
                        return;
                    }
                }
                p += step;
            }
            if p > last {
                break;
            }
        }
    }
    while let Some(m) = next_marker {
        if add(m, matches) {
            return;
        }
        next_marker = markers.next();
    }
    if let Some((s, e)) = window {
        collect(matcher, buf, s..e, matches);
    }
}

/// Where the marker (pattern 0) may occur in a searched text. The q-gram
/// filter does not sample it, so its occurrences come from a substring
/// search: made by the redactor, or made already by the caller, which
/// shares it with the `DATABUILD_MISSING_DEPS_JSON:` scanner.
#[derive(Debug, Clone, Copy)]
pub enum Marks<'a> {
    /// Search the text for the marker.
    Search,
    /// Every position of [`MARKER_STEM`] in the text, ascending: the marker,
    /// `\n` + [`MARKER`], starts one byte before one of them.
    Stems(&'a [usize]),
}

/// The starts of the marker's occurrences in `buf`, ascending.
struct MarkerStarts<'a> {
    buf: &'a [u8],
    filter: &'a QgramFilter,
    marks: Marks<'a>,
    /// Where the search goes on (`Search`), or the next stem to look at.
    at: usize,
}

impl Iterator for MarkerStarts<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let marker = self.filter.marker.needle();
        match self.marks {
            Marks::Search => {
                let start = self.at + self.filter.marker.find(self.buf.get(self.at..)?)?;
                self.at = start + 1;
                Some(start)
            }
            Marks::Stems(stems) => {
                while let Some(&stem) = stems.get(self.at) {
                    self.at += 1;
                    debug_assert!(self.buf[stem..].starts_with(MARKER_STEM));
                    if stem > 0 && self.buf[stem - 1..].starts_with(marker) {
                        return Some(stem - 1);
                    }
                }
                None
            }
        }
    }
}

/// Adds the matches within `span` of `buf`; true once a marker was found.
fn collect(
    matcher: &Automaton,
    buf: &[u8],
    span: std::ops::Range<usize>,
    matches: &mut Vec<(usize, usize, usize)>,
) -> bool {
    let input = aho_corasick::Input::new(buf).span(span);
    for m in matcher.get().find_iter(input) {
        if matches.last().is_some_and(|l| m.start() < l.1) {
            continue;
        }
        let p = m.pattern().as_usize();
        matches.push((m.start(), m.end(), p));
        if p == 0 {
            return true;
        }
    }
    false
}

/// Where the bytes to hold back start in `buf` (its length if none): the
/// longest suffix that more bytes could make a match. A newline that may
/// start a marker is given out (lines stay live); the stream's context
/// records it.
fn hold_start(
    patterns: &[Vec<u8>],
    by_first: &[Vec<u32>],
    filter: &QgramFilter,
    buf: &[u8],
) -> usize {
    let from = buf.len().saturating_sub(filter.max_len.saturating_sub(1));
    // A suffix of `Q` bytes or more that begins a pattern begins with one of
    // its q-grams, so the filter rules out nearly every position at once;
    // only the rest are compared with the patterns.
    let may_begin = |i: usize| buf.len() - i < Q || filter.hit(qgram_at(buf, i));
    match (from..buf.len()).find(|&i| may_begin(i) && is_partial(patterns, by_first, &buf[i..])) {
        Some(h) if buf[h] == b'\n' => h + 1,
        Some(h) => h,
        None => buf.len(),
    }
}

/// Most bytes [`Redactor::feed`] holds to end what it gives out at a page
/// boundary: one page, plus a partial match.
pub const ALIGN_HOLD: usize = PAGE + 512;

/// The page size the log's writes are aligned to.
pub const PAGE: usize = 4096;

/// Where to cut an input of `len` bytes that must be cut at `partial` or
/// before, so the cut is a page start (`first`, `first + PAGE`, ...), if one
/// lies at most [`ALIGN_HOLD`] bytes before the end; else `partial`.
fn page_cut(partial: usize, len: usize, first: usize) -> usize {
    if partial < first {
        return partial;
    }
    let cut = partial - (partial - first) % PAGE;
    if len - cut <= ALIGN_HOLD {
        cut
    } else {
        partial
    }
}

/// True if `tail` is a proper prefix of some pattern (more bytes could make it a match).
fn is_partial(patterns: &[Vec<u8>], by_first: &[Vec<u32>], tail: &[u8]) -> bool {
    by_first[usize::from(tail[0])].iter().any(|&i| {
        let p = &patterns[i as usize];
        p.len() > tail.len() && p.starts_with(tail)
    })
}

/// What a matched `secret` becomes: `[REDACTED]`, once per line it spans, so
/// the log keeps the job's line count (and its line numbers).
fn push_replacement(secret: &[u8], out: &mut Vec<u8>) {
    for (i, _) in secret.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(REPLACEMENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A secret with characters every encoding treats specially.
    const SECRET: &[u8] = b"s3cr/t+V@lue \"q\"\\x&y=z";

    fn redactor(values: &[&[u8]]) -> Redactor {
        let mut secrets = Secrets::new();
        for (i, v) in values.iter().enumerate() {
            secrets.add(format!("v{i}"), *v);
        }
        Redactor::new(&secrets)
    }

    /// Feeds `input` to stream `s`, as the wrapper does: what passes
    /// unchanged is copied to `out` too.
    fn feed(r: &mut Redactor, s: usize, input: &[u8], out: &mut Vec<u8>) {
        // As the wrapper does: the stems are found once, beside the redactor.
        let mut stems = Vec::new();
        crate::output::marker::find_stems(input, &mut stems);
        if let Some(n) = r.feed(s, input, out, None, Marks::Stems(&stems)) {
            out.extend_from_slice(&input[..n]);
        }
    }

    /// Feeds `pieces` to stream 0 and finishes it.
    fn run(r: &mut Redactor, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            feed(r, 0, p, &mut out);
        }
        r.finish(0, &mut out);
        out
    }

    /// Like [`run`], the way the wrapper reads: what was held goes back in
    /// front of each piece ([`Redactor::unhold_into`], room for `front`
    /// bytes) and the two are fed as one chunk.
    fn run_unholding(r: &mut Redactor, pieces: &[&[u8]], front: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; front];
        for p in pieces {
            buf.truncate(front);
            buf.extend_from_slice(p);
            let h = r.unhold_into(0, &mut buf[..front]).unwrap_or(0);
            feed(r, 0, &buf[front - h..], &mut out);
        }
        r.finish(0, &mut out);
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Plain base64 (standard alphabet, padded), the reference for the needles.
    fn base64(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for group in data.chunks(3) {
            let mut b = [0u8; 3];
            b[..group.len()].copy_from_slice(group);
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for k in 0..4 {
                if k <= group.len() {
                    out.push(B64_STD[((n >> (18 - 6 * k)) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
        out
    }

    /// The ways a job may print SECRET that must all be caught.
    fn encodings_of(secret: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![secret.to_vec()];
        for pad in 0..3 {
            let mut plain = b"user:".to_vec();
            plain.extend(std::iter::repeat_n(b'p', pad));
            plain.extend_from_slice(secret);
            plain.extend_from_slice(b"@host");
            out.push(base64(&plain));
        }
        out.push(url_encoded(secret, true));
        out.push(url_encoded(secret, false));
        out.push(
            serde_json::to_string(&String::from_utf8_lossy(secret))
                .unwrap()
                .into_bytes(),
        );
        out
    }

    #[test]
    fn globs_match_names_like_a_shell_ignoring_case() {
        assert!(glob_match("*_TOKEN", "GITHUB_TOKEN"));
        assert!(glob_match("*_TOKEN", "github_token"));
        assert!(!glob_match("*_TOKEN", "TOKEN"));
        assert!(!glob_match("*_TOKEN", "GITHUB_TOKENS"));
        assert!(glob_match("*_SECRET_*", "AWS_SECRET_ACCESS_KEY"));
        assert!(glob_match("A?C", "abc"));
        assert!(!glob_match("A?C", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("**X*", "aXb"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn env_values_are_taken_only_when_a_glob_matches_their_name() {
        let mut s = Secrets::new();
        let globs: Vec<String> = DEFAULT_ENV_GLOBS.iter().map(|g| g.to_string()).collect();
        s.add_env(
            &globs,
            [("GITHUB_TOKEN", "ghp_abcdef123"), ("PATH", "/usr/bin:/bin")],
        );
        assert_eq!(s.len(), 1);
        let mut r = Redactor::new(&s);
        let out = run(&mut r, &[b"PATH=/usr/bin:/bin ghp_abcdef123\n"]);
        assert_eq!(out, b"PATH=/usr/bin:/bin [REDACTED]\n");
    }

    #[test]
    fn every_needle_is_caught_at_every_split_position() {
        for enc in encodings_of(SECRET) {
            let mut text = b"log: ".to_vec();
            text.extend_from_slice(&enc);
            text.extend_from_slice(b" done\n");
            for i in 0..=text.len() {
                let mut r = redactor(&[SECRET]);
                let out = run(&mut r, &[&text[..i], &text[i..]]);
                let shown = String::from_utf8_lossy(&out);
                assert!(!contains(&out, SECRET), "split {i}: {shown}");
                assert!(contains(&out, REPLACEMENT), "split {i}: {shown}");
                assert!(
                    out.starts_with(b"log: ") && out.ends_with(b" done\n"),
                    "{shown}"
                );
                assert!(r.redactions() >= 1);
            }
        }
    }

    #[test]
    fn base64_needles_leave_at_most_the_edge_characters() {
        for pad in 0..3 {
            let mut plain = vec![b'x'; pad];
            plain.extend_from_slice(SECRET);
            let mut r = redactor(&[SECRET]);
            let out = run(&mut r, &[&base64(&plain)]);
            // What is left: the characters shared with the padding or the end.
            let left = out.len() - REPLACEMENT.len();
            assert!(
                left <= 4,
                "alignment {pad}: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn a_value_at_the_very_end_of_output_is_caught() {
        let mut r = redactor(&[SECRET]);
        let mut text = b"tail ".to_vec();
        text.extend_from_slice(SECRET);
        assert_eq!(run(&mut r, &[&text]), b"tail [REDACTED]");
    }

    #[test]
    fn only_a_possible_partial_match_is_held_and_released_unchanged() {
        let mut r = redactor(&[SECRET]);
        let mut out = Vec::new();
        feed(&mut r, 0, b"line one\ns3cr", &mut out);
        assert_eq!(out, b"line one\n");
        assert!(r.holds(0));
        r.release(0, &mut out);
        assert_eq!(out, b"line one\ns3cr");
        assert!(!r.holds(0));
        // A newline is never held: a marker may start after it, but the line
        // itself is complete.
        let mut out = Vec::new();
        feed(&mut r, 0, b"done\n", &mut out);
        assert_eq!(out, b"done\n");
        assert!(!r.holds(0));
    }

    #[test]
    fn output_before_a_held_partial_match_goes_out_uncopied() {
        let mut r = redactor(&[SECRET]);
        let mut out = Vec::new();
        assert_eq!(
            r.feed(0, b"line one\ns3cr", &mut out, None, Marks::Search),
            Some(9)
        );
        assert!(out.is_empty() && r.holds(0));
    }

    #[test]
    fn held_bytes_and_a_long_chunk_are_redacted_as_one_text() {
        let filler = "x".repeat(500);
        let secret = String::from_utf8_lossy(SECRET);
        // The held start completes a value; one ends the chunk after it.
        let mut r = redactor(&[SECRET]);
        let mut out = Vec::new();
        feed(&mut r, 0, b"a s3cr", &mut out);
        let chunk = format!("{} {filler} {secret}", &secret[4..]);
        assert_eq!(
            r.feed(0, chunk.as_bytes(), &mut out, None, Marks::Search),
            None
        );
        r.finish(0, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("a [REDACTED] {filler} [REDACTED]")
        );
        // The held start turns out to be ordinary text.
        let mut r = redactor(&[SECRET]);
        let mut out = Vec::new();
        feed(&mut r, 0, b"a s3cr", &mut out);
        feed(&mut r, 0, format!("ambled {filler}").as_bytes(), &mut out);
        r.finish(0, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("a s3crambled {filler}")
        );
        assert_eq!(r.redactions(), 0);
    }

    #[test]
    fn a_shorter_needle_inside_a_longer_one_does_not_cut_the_longer() {
        let mut r = redactor(&[b"abcdef", b"abcdefghij"]);
        let out = run(&mut r, &[b"x abcdef", b"ghij y\n"]);
        assert_eq!(out, b"x [REDACTED] y\n");
        let mut r = redactor(&[b"abcdef", b"abcdefghij"]);
        assert_eq!(run(&mut r, &[b"x abcdef"]), b"x [REDACTED]");
    }

    #[test]
    fn short_values_are_named_not_redacted() {
        let mut s = Secrets::new();
        s.add("env DB_PASSWORD", "test");
        let mut r = Redactor::new(&s);
        assert_eq!(run(&mut r, &[b"test it\n"]), b"test it\n");
        let skipped = r.skipped();
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("env DB_PASSWORD"), "{skipped:?}");
        assert!(!skipped[0].contains("test"), "{skipped:?}");
    }

    #[test]
    fn multi_line_values_are_caught_whole_and_line_by_line() {
        let key: &[u8] =
            b"-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\nEEEEFFFFGGGG\n-----END KEY-----\n";
        let mut r = redactor(&[key]);
        let mut text = b"key:\n".to_vec();
        text.extend_from_slice(key);
        text.extend_from_slice(b"again EEEEFFFFGGGG\n");
        let out = run(&mut r, &[&text]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "key:\n[REDACTED]\n[REDACTED]\n[REDACTED]\n[REDACTED]\nagain [REDACTED]\n"
        );
    }

    #[test]
    fn marker_lines_add_a_value_for_both_streams_and_are_hidden() {
        let text: &[u8] = b"start\nDATABUILD_REDACT: hunter2-xyz\nsay hunter2-xyz\n";
        for i in 0..=text.len() {
            let mut r = redactor(&[]);
            let out = run(&mut r, &[&text[..i], &text[i..]]);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "start\nDATABUILD_REDACT: [REDACTED]\nsay [REDACTED]\n",
                "split {i}"
            );
            let mut err = Vec::new();
            feed(&mut r, 1, b"err hunter2-xyz\n", &mut err);
            assert_eq!(err, b"err [REDACTED]\n");
        }
        // At the very start of a stream, and without a newline at the end.
        let mut r = redactor(&[]);
        assert_eq!(
            run(&mut r, &[b"DATABUILD_REDACT: abcdefgh"]),
            b"DATABUILD_REDACT: [REDACTED]"
        );
        let mut out = Vec::new();
        feed(&mut r, 1, b"abcdefgh\n", &mut out);
        assert_eq!(out, b"[REDACTED]\n");
    }

    #[test]
    fn values_added_by_markers_one_by_one_are_caught_as_if_given_at_the_start() {
        // Longer and shorter values in turn: some extend the filter in
        // place, a shorter one than all before rebuilds it.
        let values = [
            "first-value-of-forty-bytes-0123456789ab",
            "second-value-longer-still-0123456789abcdefgh",
            "short-value1",
            "third-one-of-medium-len",
            "tiny-v",
        ];
        let mut text = Vec::new();
        for v in values {
            text.extend_from_slice(format!("DATABUILD_REDACT: {v}\n").as_bytes());
        }
        let mut tail = Vec::new();
        for v in values {
            tail.extend_from_slice(format!("x {v} y ").as_bytes());
            tail.extend_from_slice(&base64(v.as_bytes()));
            tail.push(b'\n');
        }
        let mut r = redactor(&[]);
        run(&mut r, &[&text]);
        let mut by_markers = Vec::new();
        feed(&mut r, 1, &tail, &mut by_markers);
        let all: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let mut up_front = redactor(&all);
        let mut expected = Vec::new();
        feed(&mut up_front, 1, &tail, &mut expected);
        assert_eq!(
            String::from_utf8_lossy(&by_markers),
            String::from_utf8_lossy(&expected)
        );
        assert!(!String::from_utf8_lossy(&by_markers).contains("value"));
    }

    #[test]
    fn markers_add_needles_up_to_a_budget_and_name_the_rest() {
        // 300 values of 8,000 bytes: far over the budget. What is taken in
        // stays within it, and the rest are named.
        let mut r = redactor(&[]);
        let mut text = Vec::new();
        for i in 0..300 {
            let v: String = (0..8000)
                .map(|k| char::from(b'a' + ((i * 7 + k * 13 + k / 26) % 26) as u8))
                .collect();
            text.extend_from_slice(format!("DATABUILD_REDACT: {v}\n").as_bytes());
        }
        run(&mut r, &[&text]);
        let bytes: usize = r.automaton.patterns.iter().map(Vec::len).sum();
        assert!(bytes <= MAX_MARKER_NEEDLE_BYTES + 64, "{bytes}");
        assert!(r.marker_secrets >= 1, "the first value fits");
        assert!(
            r.skipped()
                .iter()
                .any(|s| s.contains("bytes of marker values")),
            "{:?}",
            r.skipped()
        );
    }

    #[test]
    fn a_marker_not_at_the_start_of_a_line_is_ordinary_text() {
        let mut r = redactor(&[]);
        let text: &[u8] = b"echo DATABUILD_REDACT: abcdefgh\nabcdefgh\n";
        assert_eq!(run(&mut r, &[text]), text);
    }

    #[test]
    fn a_short_marker_value_is_named_and_an_overlong_one_is_hidden_to_its_line_end() {
        let mut r = redactor(&[]);
        assert_eq!(
            run(&mut r, &[b"DATABUILD_REDACT: abc\nabc\n"]),
            b"DATABUILD_REDACT: [REDACTED]\nabc\n"
        );
        assert!(
            r.skipped()[0].contains("marker on stdout"),
            "{:?}",
            r.skipped()
        );
        // Past the cap the value is not a needle, but none of the line shows:
        // in one read, in many, and at the very end of the output.
        let mut text = b"DATABUILD_REDACT: ".to_vec();
        text.extend(std::iter::repeat_n(b'v', MAX_MARKER_VALUE));
        text.extend_from_slice(b"TAILSECRET\nnext\n");
        let pieces: Vec<&[u8]> = text.chunks(1000).collect();
        for input in [vec![&text[..]], pieces] {
            let mut r = redactor(&[]);
            let out = run(&mut r, &input);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "DATABUILD_REDACT: [REDACTED]\nnext\n"
            );
            assert!(r.skipped()[0].contains("longer than"), "{:?}", r.skipped());
        }
        let mut r = redactor(&[]);
        let out = run(&mut r, &[&text[..text.len() - 6]]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "DATABUILD_REDACT: [REDACTED]"
        );
        // The line after it is ordinary output again, a marker too.
        let mut r = redactor(&[]);
        text.extend_from_slice(b"DATABUILD_REDACT: second-value\nsecond-value\n");
        let out = run(&mut r, &[&text]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "DATABUILD_REDACT: [REDACTED]\nnext\nDATABUILD_REDACT: [REDACTED]\n[REDACTED]\n"
        );
    }

    #[test]
    fn metadata_strings_are_redacted() {
        let mut r = redactor(&[SECRET]);
        let cmd = format!("--token={}", String::from_utf8_lossy(SECRET));
        assert_eq!(r.redact_str(&cmd), "--token=[REDACTED]");
        // A marker means nothing in a string: values after it are hidden too.
        let secret = String::from_utf8_lossy(SECRET);
        let text = format!("a {secret}\nDATABUILD_REDACT: x {secret} b\n{secret}");
        assert_eq!(
            r.redact_str(&text),
            "a [REDACTED]\nDATABUILD_REDACT: x [REDACTED] b\n[REDACTED]"
        );
        assert_eq!(r.redact_str("short"), "short");
        assert_eq!(r.redact_str(""), "");
    }

    #[test]
    fn output_without_a_possible_match_never_builds_the_automaton() {
        let mut r = redactor(&[SECRET]);
        let mut out = Vec::new();
        let text = b"ordinary build output, line after line\n".repeat(1000);
        assert_eq!(
            r.feed(0, &text, &mut out, None, Marks::Search),
            Some(text.len())
        );
        assert_eq!(r.redact_str("make -j8 all"), "make -j8 all");
        assert!(r.automaton.built.get().is_none());
        // The first possible match builds it, and it finds the value.
        assert_eq!(run(&mut r, &[b"x ", SECRET, b"\n"]), b"x [REDACTED]\n");
        assert!(r.automaton.built.get().is_some());
    }

    /// xorshift64*: a reproducible stream of numbers for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The marker's pattern and one to six needles of mixed lengths over a
    /// tiny `alphabet`, so overlaps and near misses are common.
    fn random_patterns(rng: &mut Rng, alphabet: &[u8]) -> Vec<Vec<u8>> {
        let mut patterns = vec![b"\nDATABUILD_REDACT: ".to_vec()];
        for _ in 0..1 + rng.below(6) {
            let len = MIN_SECRET_LEN + rng.below(20);
            patterns.push(
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect(),
            );
        }
        patterns
    }

    /// How long each property test runs: bounded for CI, longer on demand
    /// (`LOGWRAP_FUZZ_SECS`).
    fn fuzz_budget() -> Duration {
        let secs = std::env::var("LOGWRAP_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        Duration::from_secs(secs)
    }

    /// Runs `case` (with the case's number, from 1) on one generator seeded
    /// with `seed` until a `share`th of the fuzz budget is spent; returns how
    /// many cases ran.
    fn fuzz(share: u32, seed: u64, mut case: impl FnMut(&mut Rng, usize)) -> usize {
        let deadline = Instant::now() + fuzz_budget() / share;
        let mut rng = Rng(seed);
        let mut cases = 0;
        while Instant::now() < deadline {
            cases += 1;
            case(&mut rng, cases);
        }
        cases
    }

    /// Random text over a small alphabet (so near misses of the needles are
    /// common) with planted values, their encodings and markers.
    fn random_text(rng: &mut Rng, planted: &[Vec<u8>]) -> Vec<u8> {
        const ALPHABET: &[u8] = b"abcs3r/t+\n \"\\DATABUILD_REDACT: ";
        let mut text = Vec::new();
        let parts = 1 + rng.below(30);
        for _ in 0..parts {
            match rng.below(4) {
                0 => text.extend_from_slice(&planted[rng.below(planted.len())]),
                _ => {
                    for _ in 0..rng.below(40) {
                        text.push(ALPHABET[rng.below(ALPHABET.len())]);
                    }
                }
            }
        }
        text
    }

    #[test]
    fn random_chunking_never_leaks_and_matches_one_shot_redaction() {
        let secrets: [&[u8]; 3] = [SECRET, b"abcabcab", b"tokentoken-123"];
        let mut planted: Vec<Vec<u8>> = secrets.iter().flat_map(|s| encodings_of(s)).collect();
        planted.push(b"\nDATABUILD_REDACT: marker-value-9\nmarker-value-9".to_vec());
        let cases = fuzz(1, 0x9e37_79b9_7f4a_7c15, |rng, cases| {
            let text = random_text(rng, &planted);
            let whole = run(&mut redactor(&secrets), &[&text]);
            let mut pieces = Vec::new();
            let mut at = 0;
            // Pieces shorter than any needle, and pieces longer than the
            // longest (which are searched apart from the held bytes).
            let longest = if rng.below(2) == 0 { 12 } else { 300 };
            while at < text.len() {
                let n = 1 + rng.below(longest).min(text.len() - at - 1);
                pieces.push(&text[at..at + n]);
                at += n;
            }
            let chunked = run(&mut redactor(&secrets), &pieces);
            assert_eq!(
                String::from_utf8_lossy(&chunked),
                String::from_utf8_lossy(&whole),
                "case {cases}: {:?} in {pieces:?}",
                String::from_utf8_lossy(&text)
            );
            // Held bytes put back in front of the next piece (with room for
            // all of them, or too little, which falls back to the join).
            let front = [0, 3, 16, 512][rng.below(4)];
            let unholding = run_unholding(&mut redactor(&secrets), &pieces, front);
            assert_eq!(
                String::from_utf8_lossy(&unholding),
                String::from_utf8_lossy(&whole),
                "case {cases}, front {front}: {:?} in {pieces:?}",
                String::from_utf8_lossy(&text)
            );
            for s in secrets.iter().chain([&b"marker-value-9"[..]].iter()) {
                assert!(
                    !contains(&chunked, s),
                    "case {cases}: leaked in {:?}",
                    String::from_utf8_lossy(&chunked)
                );
            }
        });
        assert!(cases > 10, "only {cases} cases ran");
    }

    #[test]
    fn page_cut_moves_a_cut_back_to_a_page_start_within_reach() {
        // The page starts at 100, 4196, 8292, ... of a 65,536-byte input.
        let len = 65_536;
        let last_page = 100 + 15 * PAGE;
        assert_eq!(page_cut(len - 3, len, 100), last_page);
        // Nothing to hold: the end still moves back to the page start.
        assert_eq!(page_cut(len, len, 100), last_page);
        assert_eq!(page_cut(last_page, len, 100), last_page);
        // Too far back: the cut stays where the partial match starts.
        assert_eq!(page_cut(last_page - 1, len, 100), last_page - 1);
        assert!(len - (last_page - PAGE) > ALIGN_HOLD);
        // No page start before the cut.
        assert_eq!(page_cut(50, 60, 100), 50);
        assert_eq!(page_cut(0, 10, 0), 0);
    }

    #[test]
    fn holding_to_a_page_boundary_changes_nothing_but_where_bytes_go_out() {
        // Long pieces fed the way the wrapper reads a busy stream: each one
        // aligned to the bytes given out so far, sometimes followed by no
        // more input at once (take_extra), through the front room or not.
        let secrets: [&[u8]; 2] = [SECRET, b"tokentoken-123"];
        let planted: Vec<Vec<u8>> = secrets.iter().flat_map(|s| encodings_of(s)).collect();
        let mut aligned = 0;
        let cases = fuzz(2, 0x2545_f491_4f6c_dd1d, |rng, cases| {
            // Mostly text without a value (pieces with a match take the
            // other path), and now and then a value or marker.
            let mut text = Vec::new();
            while text.len() < 30_000 {
                if rng.below(40) == 0 {
                    text.extend_from_slice(&random_text(rng, &planted));
                } else {
                    text.extend((0..40).map(|_| b"abcs3r/t \n"[rng.below(10)]));
                }
            }
            let whole = run(&mut redactor(&secrets), &[&text]);
            let mut r = redactor(&secrets);
            let mut out = Vec::new();
            let front = [0, ALIGN_HOLD][rng.below(2)];
            let mut buf = vec![0u8; front];
            let mut at = 0;
            while at < text.len() {
                let n = (1 + rng.below(9000)).min(text.len() - at);
                buf.truncate(front);
                buf.extend_from_slice(&text[at..at + n]);
                at += n;
                let h = r.unhold_into(0, &mut buf[..front]).unwrap_or(0);
                let input = &buf[front - h..];
                let align = (rng.below(4) != 0).then(|| (PAGE - out.len() % PAGE) % PAGE);
                let given = out.len();
                // The wrapper's stems, or the redactor's own search.
                let mut stems = Vec::new();
                crate::output::marker::find_stems(input, &mut stems);
                let marks = [Marks::Search, Marks::Stems(&stems)][rng.below(2)];
                match r.feed(0, input, &mut out, align, marks) {
                    Some(k) => {
                        out.extend_from_slice(&input[..k]);
                        if align.is_some() && k < input.len() && out.len() % PAGE == 0 {
                            aligned += 1;
                        }
                    }
                    None => assert!(out.len() >= given),
                }
                if rng.below(3) == 0 {
                    r.take_extra(0, &mut out);
                }
            }
            r.finish(0, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&whole),
                "case {cases}, front {front}: {:?}",
                String::from_utf8_lossy(&text)
            );
        });
        assert!(cases > 3, "only {cases} cases ran");
        assert!(
            aligned > 0,
            "no cut was moved to a page start in {cases} cases"
        );
    }

    /// The leftmost-longest automaton of `patterns` (pattern 0 the marker)
    /// and the q-gram filter in front of it.
    fn matcher_and_filter(patterns: &[Vec<u8>]) -> (Automaton, QgramFilter) {
        (
            Automaton::new(patterns.to_vec()),
            QgramFilter::new(patterns),
        )
    }

    /// The filtered search of `text` finds what searching all of it finds,
    /// up to and including the first marker (pattern 0), where it stops.
    fn assert_finds_what_a_full_search_finds(
        matcher: &Automaton,
        filter: &QgramFilter,
        text: &[u8],
        marks: Marks,
        case: usize,
    ) {
        let mut found = Vec::new();
        find_matches(matcher, filter, text, marks, &mut found);
        let mut full = Vec::new();
        for m in matcher.get().find_iter(text) {
            full.push((m.start(), m.end(), m.pattern().as_usize()));
            if m.pattern().as_usize() == 0 {
                break;
            }
        }
        assert_eq!(
            found,
            full,
            "case {case}: {:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn the_qgram_filter_finds_exactly_what_a_full_search_finds() {
        let cases = fuzz(2, 7, |rng, cases| {
            // Needles of mixed lengths over a tiny alphabet: many overlaps.
            let patterns = random_patterns(rng, b"abc");
            let (matcher, filter) = matcher_and_filter(&patterns);
            let text: Vec<u8> = (0..rng.below(3000))
                .map(|_| b"abcd"[rng.below(4)])
                .collect();
            assert_finds_what_a_full_search_finds(&matcher, &filter, &text, Marks::Search, cases);
        });
        assert!(cases > 10, "only {cases} cases ran");
    }

    #[test]
    fn a_needle_planted_in_unrelated_text_is_found_wherever_it_falls() {
        // Text that shares no 4-byte piece with the needles: the only hits
        // are the planted needles' own, often one sample each, whose
        // neighbour on one side is unrelated text.
        let cases = fuzz(4, 11, |rng, cases| {
            let mut patterns = random_patterns(rng, b"abcdefghij");
            patterns.retain(|p| p.len() >= 3 * Q - 1);
            if patterns.len() < 2 {
                return;
            }
            let (matcher, filter) = matcher_and_filter(&patterns);
            assert!(filter.pair_check);
            let mut text = Vec::new();
            for _ in 0..rng.below(20) {
                text.extend((0..rng.below(60)).map(|_| b"KLMNOPQRST"[rng.below(10)]));
                // Not the marker (pattern 0), which ends a search.
                text.extend_from_slice(&patterns[1 + rng.below(patterns.len() - 1)]);
            }
            assert_finds_what_a_full_search_finds(&matcher, &filter, &text, Marks::Search, cases);
        });
        assert!(cases > 10, "only {cases} cases ran");
    }

    #[test]
    fn markers_among_needles_are_found_by_their_own_search_or_by_the_callers_stems() {
        let marker = b"\nDATABUILD_REDACT: ".to_vec();
        let cases = fuzz(4, 13, |rng, cases| {
            let patterns = random_patterns(rng, b"abcdefgh");
            let (matcher, filter) = matcher_and_filter(&patterns);
            assert!(filter.sampled);
            // Markers, pieces of them, needles and noise that shares bytes
            // with both.
            let mut text = Vec::new();
            for _ in 0..rng.below(40) {
                match rng.below(4) {
                    0 => text.extend_from_slice(&marker),
                    1 => text.extend_from_slice(&marker[..rng.below(marker.len())]),
                    2 => text.extend_from_slice(&patterns[1 + rng.below(patterns.len() - 1)]),
                    _ => text.extend((0..rng.below(30)).map(|_| b"\nDAT_ab"[rng.below(7)])),
                }
            }
            assert_finds_what_a_full_search_finds(&matcher, &filter, &text, Marks::Search, cases);
            let mut stems = Vec::new();
            crate::output::marker::find_stems(&text, &mut stems);
            let marks = Marks::Stems(&stems);
            assert_finds_what_a_full_search_finds(&matcher, &filter, &text, marks, cases);
        });
        assert!(cases > 10, "only {cases} cases ran");
    }

    #[test]
    fn the_marker_alone_is_found_exactly_where_a_full_search_finds_it() {
        let marker = b"\nDATABUILD_REDACT: ".to_vec();
        let (matcher, filter) = matcher_and_filter(std::slice::from_ref(&marker));
        assert!(
            !filter.sampled,
            "the marker is found by its substring search alone"
        );
        let cases = fuzz(4, 5, |rng, cases| {
            // Pieces of the marker, whole markers and noise.
            let mut text = Vec::new();
            for _ in 0..rng.below(40) {
                match rng.below(3) {
                    0 => text.extend_from_slice(&marker),
                    1 => text.extend_from_slice(&marker[..rng.below(marker.len())]),
                    _ => text.extend((0..rng.below(30)).map(|_| b"\nDx "[rng.below(4)])),
                }
            }
            assert_finds_what_a_full_search_finds(&matcher, &filter, &text, Marks::Search, cases);
        });
        assert!(cases > 10, "only {cases} cases ran");
    }

    #[test]
    fn what_is_held_is_the_longest_suffix_that_could_begin_a_pattern() {
        let cases = fuzz(4, 11, |rng, cases| {
            let patterns = random_patterns(rng, b"ab\nD");
            let mut by_first = vec![Vec::new(); 256];
            for (i, p) in patterns.iter().enumerate() {
                by_first[usize::from(p[0])].push(i as u32);
            }
            let filter = QgramFilter::new(&patterns);
            // Text that often ends in the first bytes of a pattern.
            let mut text: Vec<u8> = (0..rng.below(60))
                .map(|_| b"ab\nDA"[rng.below(5)])
                .collect();
            let p = &patterns[rng.below(patterns.len())];
            text.extend_from_slice(&p[..rng.below(p.len())]);
            let begins = |i: usize| {
                let tail = &text[i..];
                patterns
                    .iter()
                    .any(|p| p.len() > tail.len() && p.starts_with(tail))
            };
            let expected = match (0..text.len()).find(|&i| begins(i)) {
                Some(h) if text[h] == b'\n' => h + 1,
                Some(h) => h,
                None => text.len(),
            };
            let got = hold_start(&patterns, &by_first, &filter, &text);
            assert_eq!(
                got,
                expected,
                "case {cases}: {:?}",
                String::from_utf8_lossy(&text)
            );
        });
        assert!(cases > 10, "only {cases} cases ran");
    }

    #[test]
    fn without_secrets_output_is_byte_exact_however_it_is_chunked() {
        fuzz(2, 42, |rng, _| {
            let len = rng.below(2000);
            // Any bytes, newlines and marker look-alikes not at a line start.
            let text: Vec<u8> = (0..len)
                .map(|_| match rng.below(8) {
                    0 => b'\n',
                    1 => b'D',
                    _ => rng.next() as u8,
                })
                .collect();
            let mut r = redactor(&[]);
            let mut out = Vec::new();
            let mut at = 0;
            while at < text.len() {
                let n = (1 + rng.below(300)).min(text.len() - at);
                feed(&mut r, 0, &text[at..at + n], &mut out);
                if rng.below(4) == 0 {
                    r.release(0, &mut out);
                }
                at += n;
            }
            r.finish(0, &mut out);
            if !contains(&text, b"\nDATABUILD_REDACT: ") && !text.starts_with(MARKER) {
                assert_eq!(out, text);
                assert_eq!(r.redactions(), 0);
            }
        });
    }
}
