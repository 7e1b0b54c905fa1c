//! `logwrap ls` and `logwrap show`: jobs as an aligned table or JSON, and one
//! job's metadata with its live status. Formatting is plain functions; colour
//! only on a terminal, and never with `NO_COLOR` set.

use super::jobs;
use super::say;
use crate::metadata::{Metadata, Status};
use crate::store::{JobId, JobListing, LogStore, Stream, Unlisted};
use crate::timefmt;
use anstyle::{AnsiColor, Style as Paint};
use anyhow::{Context, Result};
use std::io::{IsTerminal, Write};

/// Narrowest the command column is cut to, however narrow the terminal: a
/// command shorter than this says nothing.
const MIN_COMMAND_WIDTH: usize = 12;

/// Spaces each level of nesting indents a child's id in the `ls` table: enough
/// to see the tree, few enough that deep builds still fit.
const NEST_INDENT: usize = 2;

/// Width assumed for a terminal that does not report one.
const DEFAULT_WIDTH: usize = 80;

/// What `logwrap ls` was asked for.
#[derive(Debug, Clone, Default)]
pub struct LsOptions {
    /// A JSON array of full metadata instead of a table.
    pub json: bool,
    /// Only jobs with one of these statuses (all when empty).
    pub status: Vec<String>,
    /// At most this many of the newest jobs.
    pub limit: Option<usize>,
    /// Only the ids, one per line (for scripts and shell completion).
    pub ids: bool,
}

/// What `logwrap show` was asked for.
#[derive(Debug, Clone)]
pub struct ShowOptions {
    pub id: JobId,
    /// The metadata.json document instead of a summary.
    pub json: bool,
}

/// `logwrap ls`.
pub fn ls_cmd(store: &dyn LogStore, args: LsOptions) -> Result<i32> {
    let mut shown: Vec<JobListing> = Vec::new();
    for mut job in store.list_jobs()? {
        // A job whose metadata cannot be read is listed as `damaged` (issue 8),
        // with the reason on stderr; one still being created is not listed.
        let status = match &job.meta {
            Ok(meta) => meta.status.as_str(),
            Err(Unlisted::Damaged(problem)) => {
                say(&format!("warning: job {} is damaged: {problem}", job.id));
                DAMAGED
            }
            Err(Unlisted::Creating) => continue,
        };
        if args.status.is_empty() || args.status.iter().any(|s| s == status) {
            if let Ok(meta) = &mut job.meta {
                crate::store::add_live_stats(store, &job.id, meta);
            }
            shown.push(job);
        }
        if args.limit.is_some_and(|n| shown.len() >= n) {
            break;
        }
    }
    if let Some(cut) = store.list_cut() {
        say(&format!("warning: {cut}"));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.ids {
        for job in &shown {
            writeln!(out, "{}", job.id)?;
        }
    } else if args.json {
        let docs: Vec<serde_json::Value> = shown.iter().map(json_entry).collect();
        serde_json::to_writer_pretty(&mut out, &docs).context("writing JSON")?;
        out.write_all(b"\n")?;
    } else {
        let tty = stdout.is_terminal();
        let style = Style {
            colour: use_colour(),
            width: tty.then(terminal_width),
        };
        let now_ms = timefmt::unix_ms(std::time::SystemTime::now());
        let parents: Vec<Option<&str>> = shown
            .iter()
            .map(|j| j.meta.as_ref().ok()?.parent_job_run_id.as_deref())
            .collect();
        let ids: Vec<&str> = shown.iter().map(|j| j.id.as_str()).collect();
        let rows: Vec<Row> = tree_order(&ids, &parents)
            .into_iter()
            .map(|(i, depth)| {
                let j = &shown[i];
                let mut row = match &j.meta {
                    Ok(meta) => row(store, &j.id, meta, now_ms),
                    Err(Unlisted::Damaged(problem)) => damaged_row(&j.id, problem),
                    Err(Unlisted::Creating) => damaged_row(&j.id, "being created"),
                };
                row.id = format!("{}{}", " ".repeat(depth * NEST_INDENT), row.id);
                row
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
fn json_entry(job: &JobListing) -> serde_json::Value {
    match &job.meta {
        Ok(meta) => serde_json::to_value(meta).unwrap_or_default(),
        Err(problem) => serde_json::json!({
            "job_run_id": job.id.as_str(),
            "status": DAMAGED,
            "error": match problem {
                Unlisted::Damaged(why) => why.as_str(),
                Unlisted::Creating => "being created",
            },
        }),
    }
}

/// The order of the `ls` table (issue 13): each job of `ids` (newest first)
/// followed by the jobs that ran inside it (`parents[i]` names job `i`'s
/// parent), each with its depth. A job whose parent is not listed (filtered
/// out, removed) stands at the top level where it is.
pub fn tree_order(ids: &[&str], parents: &[Option<&str>]) -> Vec<(usize, usize)> {
    let mut children: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    let listed: std::collections::HashSet<&str> = ids.iter().copied().collect();
    let mut roots = Vec::new();
    for (i, parent) in parents.iter().enumerate() {
        match parent {
            Some(p) if listed.contains(p) && *p != ids[i] => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut seen = vec![false; ids.len()];
    // Depth-first without recursion: planted metadata could nest deeply.
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 0)).collect();
    loop {
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            out.push((i, depth));
            if let Some(kids) = children.get(ids[i]) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }
        // Jobs only reachable through a cycle of planted parents: shown all
        // the same, at the top level.
        match seen.iter().position(|s| !s) {
            Some(i) => stack.push((i, 0)),
            None => return out,
        }
    }
}

/// `logwrap show <id>`.
pub fn show_cmd(store: &dyn LogStore, args: ShowOptions) -> Result<i32> {
    if !store.job_exists(&args.id) {
        return Err(jobs::not_found(store, &args.id));
    }
    let meta = store.current_metadata(&args.id)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        out.write_all(&meta.to_json())?;
    } else {
        let colour = use_colour();
        let now_ms = timefmt::unix_ms(std::time::SystemTime::now());
        let sizes = [Stream::Stdout, Stream::Stderr].map(|s| log_size(store, &args.id, s));
        let dir = format!("{}/{}", store.location(), args.id);
        let children: Vec<String> = crate::nest::children(store, &args.id)?
            .iter()
            .map(JobId::to_string)
            .collect();
        out.write_all(summary(&meta, sizes, &dir, &children, now_ms, colour).as_bytes())?;
    }
    out.flush()?;
    Ok(0)
}

/// Colour on stdout as anstream decides it, the same way clap's own output
/// does: only on a terminal that can show it, never with `NO_COLOR` set to
/// anything non-empty (<https://no-color.org>), always with `CLICOLOR_FORCE`.
pub(super) fn use_colour() -> bool {
    anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never
}

/// The terminal's width, from the terminal itself or `COLUMNS`.
fn terminal_width() -> usize {
    if let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size_of(std::io::stdout()) {
        if w > 0 {
            return usize::from(w);
        }
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
fn log_size(store: &dyn LogStore, id: &JobId, stream: Stream) -> Option<u64> {
    store.open_raw(id, stream).ok()?.len().ok()
}

fn row(store: &dyn LogStore, id: &JobId, meta: &Metadata, now_ms: i64) -> Row {
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
        command: format!("({})", escape_controls(problem)),
    }
}

/// The exit column: the code, else the signal's name, else `-`.
fn exit_text(meta: &Metadata) -> String {
    match (&meta.exit_code, &meta.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => escape_controls(sig),
        (None, None) => "-".into(),
    }
}

/// `2026-11-21T15:35:49.123Z` shown to the second, `2026-11-21 15:35:49`.
fn started_text(rfc3339: &str) -> String {
    match timefmt::parse_rfc3339_ms(rfc3339) {
        Some(ms) => timefmt::rfc3339_ms(ms)[..19].replace('T', " "),
        None => escape_controls(rfc3339),
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

/// Colour of a status: green done, red failed, yellow abandoned, cyan
/// running, magenta damaged.
fn status_colour(s: Option<Status>) -> Paint {
    let colour = match s {
        Some(Status::Succeeded) => AnsiColor::Green,
        Some(Status::Failed | Status::Killed | Status::TimedOut) => AnsiColor::Red,
        Some(Status::Abandoned) => AnsiColor::Yellow,
        Some(Status::Running) => AnsiColor::Cyan,
        None => AnsiColor::Magenta,
    };
    Paint::new().fg_color(Some(colour.into()))
}

fn paint(text: &str, paint: Paint, colour: bool) -> String {
    if colour {
        format!("{paint}{text}{paint:#}")
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
        Paint::new().bold(),
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
    children: &[String],
    now_ms: i64,
    colour: bool,
) -> String {
    let mut lines: Vec<(&str, String)> = vec![("job_run_id", meta.job_run_id.clone())];
    if let Some(parent) = &meta.parent_job_run_id {
        lines.push(("parent", escape_controls(parent)));
    }
    lines.extend([
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
    ]);
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
        // Every value is the job's to choose (a job can rewrite its own
        // metadata.json; a Redis source holds whatever a machine sent), so
        // none reaches the terminal as control characters; the status was
        // read as one of a few words, and only its colour is ours.
        let v = if *k == "status" {
            v.clone()
        } else {
            escape_controls(v)
        };
        out += &format!("{:width$} {v}\n", format!("{k}:"));
    }
    let mut list = |title: &str, items: Vec<String>| {
        if !items.is_empty() {
            out += &format!("{title} ({}):\n", items.len());
            for i in items {
                out += &format!("  {}\n", escape_controls(&i));
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
    list("children", children.to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn children_follow_their_parent_indented_by_depth() {
        // Newest first, as listed: two children of `a`, one grandchild.
        let ids = ["b", "a.2", "a.1.1", "a.1", "a", "x.1"];
        let parents = [None, Some("a"), Some("a.1"), Some("a"), None, Some("x")];
        let order: Vec<(&str, usize)> = tree_order(&ids, &parents)
            .into_iter()
            .map(|(i, d)| (ids[i], d))
            .collect();
        assert_eq!(
            order,
            [
                ("b", 0),
                ("a", 0),
                ("a.2", 1),
                ("a.1", 1),
                ("a.1.1", 2),
                // Its parent is not listed: top level, where it was.
                ("x.1", 0),
            ]
        );
        // Planted parents forming a cycle still show every job once.
        let order = tree_order(&["p", "q"], &[Some("q"), Some("p")]);
        assert_eq!(order.len(), 2);
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
