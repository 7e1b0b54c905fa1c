//! `logwrap ls` and `logwrap show`: jobs as an aligned table or JSON, and one
//! job's metadata with its live status. Formatting is plain functions; colour
//! only on a terminal, and never with `NO_COLOR` set.

use super::jobs::{self, Job};
use super::say;
use crate::cli::{LsArgs, ShowArgs};
use crate::metadata::{Metadata, Status};
use crate::store::{FileStore, JobId, LogStore, Stream};
use crate::timefmt;
use anyhow::{Context, Result};
use std::io::{IsTerminal, Write};

/// Narrowest the command column is cut to, however narrow the terminal: a
/// command shorter than this says nothing.
const MIN_COMMAND_WIDTH: usize = 12;

/// Width assumed for a terminal that does not report one.
const DEFAULT_WIDTH: usize = 80;

/// `logwrap ls`.
pub fn ls_cmd(args: LsArgs) -> Result<i32> {
    let store = jobs::reading_root(args.root.log_dir)?;
    let mut shown: Vec<Job> = Vec::new();
    for job in jobs::list(&store)? {
        // A job whose metadata cannot be read is listed as `damaged` (issue 8),
        // with the reason on stderr; one still being created is not listed.
        let status = match (&job.meta, &job.problem) {
            (Some(meta), _) => meta.status.as_str(),
            (None, Some(problem)) => {
                say(&format!("warning: job {} is damaged: {problem}", job.id));
                DAMAGED
            }
            (None, None) => continue,
        };
        if args.status.is_empty() || args.status.iter().any(|s| s == status) {
            shown.push(job);
        }
        if args.limit.is_some_and(|n| shown.len() >= n) {
            break;
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        let docs: Vec<serde_json::Value> = shown.iter().map(json_entry).collect();
        serde_json::to_writer_pretty(&mut out, &docs).context("writing JSON")?;
        out.write_all(b"\n")?;
    } else {
        let tty = stdout.is_terminal();
        let style = Style {
            colour: use_colour(tty, std::env::var_os("NO_COLOR").as_deref()),
            width: tty.then(terminal_width),
        };
        let now_ms = timefmt::unix_ms(std::time::SystemTime::now());
        let rows: Vec<Row> = shown
            .iter()
            .map(|j| match &j.meta {
                Some(meta) => row(&store, &j.id, meta, now_ms),
                None => damaged_row(&j.id, j.problem.as_deref().unwrap_or_default()),
            })
            .collect();
        out.write_all(table(&rows, &style).as_bytes())?;
    }
    out.flush()?;
    Ok(0)
}

/// The status `ls` shows for a job whose metadata.json cannot be read (a link,
/// a FIFO, over the size cap, not JSON).
pub const DAMAGED: &str = "damaged";

/// A job in `ls --json`: its metadata, or for a damaged job its id, `damaged`
/// and why.
fn json_entry(job: &Job) -> serde_json::Value {
    match &job.meta {
        Some(meta) => serde_json::to_value(meta).unwrap_or_default(),
        None => serde_json::json!({
            "job_run_id": job.id.as_str(),
            "status": DAMAGED,
            "error": job.problem,
        }),
    }
}

/// `logwrap show <id>`.
pub fn show_cmd(args: ShowArgs) -> Result<i32> {
    let store = jobs::reading_root(args.root.log_dir)?;
    if !store.job_dir(&args.id).is_dir() {
        return Err(jobs::not_found(&store, &args.id));
    }
    let meta = store.live_metadata(&args.id)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        out.write_all(&meta.to_json())?;
    } else {
        let colour = use_colour(
            stdout.is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        let now_ms = timefmt::unix_ms(std::time::SystemTime::now());
        let sizes = [Stream::Stdout, Stream::Stderr].map(|s| log_size(&store, &args.id, s));
        let dir = store.job_dir(&args.id);
        out.write_all(
            summary(&meta, sizes, &dir.display().to_string(), now_ms, colour).as_bytes(),
        )?;
    }
    out.flush()?;
    Ok(0)
}

/// Colour only on a terminal, and not when `NO_COLOR` is set to anything
/// non-empty (<https://no-color.org>).
pub fn use_colour(tty: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    tty && no_color.is_none_or(|v| v.is_empty())
}

/// The terminal's width, from the terminal itself or `COLUMNS`.
fn terminal_width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize we pass; fd 1 is only read.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return usize::from(ws.ws_col);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// How the table is drawn.
pub struct Style {
    pub colour: bool,
    /// Terminal width to fit the command into; `None` (not a terminal): never cut.
    pub width: Option<usize>,
}

/// One job's cells, as text.
pub struct Row {
    pub id: String,
    /// `None` for a damaged job.
    pub status: Option<Status>,
    pub exit: String,
    pub started: String,
    pub duration: String,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

/// Current size of a stream's log (the metadata's counts lag while a job runs).
fn log_size(store: &FileStore, id: &JobId, stream: Stream) -> Option<u64> {
    crate::store::job_file_len(&store.log_path(id, stream))
}

fn row(store: &FileStore, id: &JobId, meta: &Metadata, now_ms: i64) -> Row {
    let size = |s| log_size(store, id, s).map_or("-".into(), human_size);
    Row {
        id: id.to_string(),
        status: Some(meta.status),
        exit: exit_text(meta),
        started: started_text(&meta.started_at),
        duration: duration_ms(meta, now_ms).map_or("-".into(), human_duration),
        stdout: size(Stream::Stdout),
        stderr: size(Stream::Stderr),
        command: shell_words(&meta.command),
    }
}

/// The row of a damaged job: its id, `damaged`, and why in the command column.
fn damaged_row(id: &JobId, problem: &str) -> Row {
    let dash = || "-".to_string();
    Row {
        id: id.to_string(),
        status: None,
        exit: dash(),
        started: dash(),
        duration: dash(),
        stdout: dash(),
        stderr: dash(),
        command: format!("({problem})"),
    }
}

/// The exit column: the code, else the signal's name, else `-`.
fn exit_text(meta: &Metadata) -> String {
    match (&meta.exit_code, &meta.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => sig.clone(),
        (None, None) => "-".into(),
    }
}

/// `2026-11-21T15:35:49.123Z` shown to the second, `2026-11-21 15:35:49`.
fn started_text(rfc3339: &str) -> String {
    match timefmt::parse_rfc3339_ms(rfc3339) {
        Some(ms) => timefmt::rfc3339_ms(ms)[..19].replace('T', " "),
        None => rfc3339.to_string(),
    }
}

/// Recorded duration, or the time so far for a running job.
fn duration_ms(meta: &Metadata, now_ms: i64) -> Option<u64> {
    if let Some(d) = meta.duration_ms {
        return Some(d);
    }
    if meta.status != Status::Running {
        return None;
    }
    let started = timefmt::parse_rfc3339_ms(&meta.started_at)?;
    u64::try_from(now_ms - started).ok()
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// `0`, `512B`, `1.5K`, `23M`, `1.1G` (powers of 1024, like `ls -h`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes == 0 {
        return "0".into();
    }
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// The argv as one would type it: words with spaces or shell characters quoted.
/// A word with control characters is written `$'...'` with them escaped, so a
/// command cannot drive the terminal (colours, cursor moves, a CR hiding text).
pub fn shell_words(argv: &[String]) -> String {
    let quote = |w: &String| {
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
        if plain {
            w.clone()
        } else if w.chars().any(char::is_control) {
            format!(
                "$'{}'",
                escape_controls(&w.replace('\\', r"\\").replace('\'', r"\'"))
            )
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// `text` with each control character (C0, DEL, C1) written as an escape
/// (`\e`, `\r`, `\n`, `\t`, `\xHH`), as bash's `$'...'` reads them, so text a
/// job chose (its command, its cwd) prints as text and cannot drive the terminal.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\x1b' => out.push_str(r"\e"),
            '\r' => out.push_str(r"\r"),
            '\n' => out.push_str(r"\n"),
            '\t' => out.push_str(r"\t"),
            c if c.is_control() && (c as u32) < 0x100 => {
                out.push_str(&format!(r"\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to `width` characters, the cut marked with `…`.
pub fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// ANSI colour of a status: green done, red failed, yellow abandoned, cyan
/// running, magenta damaged.
fn status_colour(s: Option<Status>) -> &'static str {
    match s {
        Some(Status::Succeeded) => "32",
        Some(Status::Failed | Status::Killed | Status::TimedOut) => "31",
        Some(Status::Abandoned) => "33",
        Some(Status::Running) => "36",
        None => "35",
    }
}

fn paint(text: &str, code: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// The aligned table, header first; the command (last column) is cut to the
/// terminal width.
pub fn table(rows: &[Row], style: &Style) -> String {
    const HEAD: [&str; 8] = [
        "ID", "STATUS", "EXIT", "STARTED", "DURATION", "STDOUT", "STDERR", "COMMAND",
    ];
    // Numbers are right-aligned, words left-aligned.
    const RIGHT: [bool; 7] = [false, false, true, false, true, true, true];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.status.map_or(DAMAGED, Status::as_str).to_string(),
                r.exit.clone(),
                r.started.clone(),
                r.duration.clone(),
                r.stdout.clone(),
                r.stderr.clone(),
            ]
        })
        .collect();
    let mut widths: [usize; 7] = std::array::from_fn(|i| HEAD[i].chars().count());
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let lead: usize = widths.iter().map(|w| w + 2).sum();
    let command_width = style
        .width
        .map(|w| w.saturating_sub(lead).max(MIN_COMMAND_WIDTH));
    let pad = |text: &str, i: usize| {
        let fill = " ".repeat(widths[i] - text.chars().count());
        if RIGHT[i] {
            format!("{fill}{text}")
        } else {
            format!("{text}{fill}")
        }
    };
    let mut out = String::new();
    let head: Vec<String> = (0..7).map(|i| pad(HEAD[i], i)).collect();
    out += &paint(
        &format!("{}  {}", head.join("  "), HEAD[7]),
        "1",
        style.colour,
    );
    out.push('\n');
    for (r, c) in rows.iter().zip(&cells) {
        let mut line: Vec<String> = (0..7).map(|i| pad(&c[i], i)).collect();
        line[1] = paint(&line[1], status_colour(r.status), style.colour);
        let command = match command_width {
            Some(w) => shorten(&r.command, w),
            None => r.command.clone(),
        };
        out += &format!("{}  {command}\n", line.join("  "));
    }
    out
}

/// The human summary of `show`: one `key: value` line per field, markers listed.
pub fn summary(
    meta: &Metadata,
    sizes: [Option<u64>; 2],
    dir: &str,
    now_ms: i64,
    colour: bool,
) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("job_run_id", meta.job_run_id.clone()),
        (
            "status",
            paint(
                meta.status.as_str(),
                status_colour(Some(meta.status)),
                colour,
            ),
        ),
        ("exit", exit_text(meta)),
        ("command", shell_words(&meta.command)),
        ("cwd", escape_controls(&meta.cwd)),
        ("hostname", escape_controls(&meta.hostname)),
        ("pid", meta.pid.to_string()),
        (
            "child_pid",
            meta.child_pid.map_or("-".into(), |p| p.to_string()),
        ),
        ("pty", meta.pty.to_string()),
        ("started_at", meta.started_at.clone()),
        (
            "ended_at",
            meta.ended_at.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "duration",
            duration_ms(meta, now_ms).map_or("-".into(), human_duration),
        ),
    ];
    for (name, stats, size) in [
        ("stdout", &meta.stdout, sizes[0]),
        ("stderr", &meta.stderr, sizes[1]),
    ] {
        let size = size.unwrap_or(stats.bytes);
        lines.push((
            name,
            format!(
                "{} bytes ({}), {} lines recorded",
                size,
                human_size(size),
                stats.lines
            ),
        ));
    }
    if !meta.building_partitions.is_empty() {
        lines.push((
            "partitions",
            escape_controls(&meta.building_partitions.join(", ")),
        ));
    }
    if let Some(url) = &meta.tail_url {
        lines.push(("tail_url", url.clone()));
    }
    if let Some(e) = &meta.error {
        lines.push(("error", escape_controls(e)));
    }
    lines.push(("log_dir", dir.to_string()));
    lines.push(("logwrap", meta.logwrap_version.clone()));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in &lines {
        out += &format!("{:width$} {v}\n", format!("{k}:"));
    }
    let mut list = |title: &str, items: Vec<String>| {
        if !items.is_empty() {
            out += &format!("{title} ({}):\n", items.len());
            for i in items {
                out += &format!("  {i}\n");
            }
        }
    };
    list(
        "missing_deps",
        meta.missing_deps
            .iter()
            .map(|d| format!("{}:{}  {}", d.stream, d.line, d.value))
            .collect(),
    );
    list(
        "marker_errors",
        meta.marker_errors
            .iter()
            .map(|e| format!("{}:{}  {}", e.stream, e.line, e.error))
            .collect(),
    );
    list("log_errors", meta.log_errors.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn durations_and_sizes_read_like_ls() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_340), "12.3s");
        assert_eq!(human_duration(245_000), "4m05s");
        assert_eq!(human_duration(7_380_000), "2h03m");
        assert_eq!(human_duration(273_600_000), "3d04h");
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(23 << 20), "23M");
    }

    #[test]
    fn control_characters_are_escaped_not_printed() {
        let argv = ["printf".to_string(), "a\x1b[31mb'\\\r\n\u{9b}".to_string()];
        assert_eq!(shell_words(&argv), r"printf $'a\e[31mb\'\\\r\n\x9b'");
        assert_eq!(escape_controls("/tmp/x\x1b[2J\x07y"), r"/tmp/x\e[2J\x07y");
        assert_eq!(escape_controls("plain é"), "plain é");
    }

    #[test]
    fn commands_are_quoted_and_cut_to_width() {
        let argv = ["sh", "-c", "echo 'hi' there", ""].map(String::from);
        assert_eq!(shell_words(&argv), r"sh -c 'echo '\''hi'\'' there' ''");
        assert_eq!(shorten("abcdef", 6), "abcdef");
        assert_eq!(shorten("abcdefg", 6), "abcde…");
    }

    fn sample_row(id: &str, status: Status, command: &str) -> Row {
        Row {
            id: id.into(),
            status: Some(status),
            exit: "0".into(),
            started: "2026-01-01 00:00:00".into(),
            duration: "1.0s".into(),
            stdout: "12B".into(),
            stderr: "0".into(),
            command: command.into(),
        }
    }

    #[test]
    fn table_aligns_columns_and_fits_the_terminal() {
        let rows = [
            sample_row("a", Status::Succeeded, "true"),
            sample_row("long-id-7", Status::Running, &"x".repeat(200)),
        ];
        let plain = table(
            &rows,
            &Style {
                colour: false,
                width: Some(100),
            },
        );
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |l: &str, word: &str| l.find(word).unwrap();
        assert_eq!(col(lines[0], "STATUS"), col(lines[1], "succeeded"));
        assert_eq!(col(lines[0], "STATUS"), col(lines[2], "running"));
        assert!(lines.iter().all(|l| l.chars().count() <= 100), "{plain}");
        assert!(lines[2].ends_with('…'));
        assert!(!plain.contains('\x1b'));
        let wide = table(
            &rows,
            &Style {
                colour: false,
                width: None,
            },
        );
        assert!(wide.contains(&"x".repeat(200)), "not a terminal: never cut");
        let coloured = table(
            &rows,
            &Style {
                colour: true,
                width: None,
            },
        );
        assert!(coloured.contains("\x1b[32msucceeded"));
    }
}
