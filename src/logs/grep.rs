//! `logwrap grep` (issue 11, point 1): search the whole log of one job, several,
//! or every job from a terminal, ripgrep-style: `ID:LINE:TEXT` per matching
//! line (`ID:stderr:LINE:TEXT` for stderr), matches coloured on a terminal.
//! The matching is [`crate::search`], the same as the server's search endpoint.

use super::jobs;
use crate::metadata::Status;
use crate::search::{Cursor, Pattern, Scan};
use crate::store::{self, JobId, LogStore, Stream};
use anstyle::{AnsiColor, Style as Paint};
use anyhow::{Context, Result};
use std::io::{BufWriter, Write};

/// What `logwrap grep` was asked for.
#[derive(Debug, Clone)]
pub struct GrepOptions {
    /// What to look for, compiled (a bad pattern is a usage error found
    /// before any job is read).
    pub pattern: Pattern,
    /// The jobs to search; empty means the most recent one, unless `all`.
    pub ids: Vec<JobId>,
    /// Every job (newest first), filtered by `status` and `since_days`.
    pub all: bool,
    /// Only jobs with one of these statuses (all when empty).
    pub status: Vec<Status>,
    /// Only jobs started within this many days.
    pub since_days: Option<f64>,
    /// One stream, or both (stdout first) when `None`.
    pub stream: Option<Stream>,
    /// Only the number of matching lines per job, like `grep -c`.
    pub count: bool,
}

/// `logwrap grep`: exit 0 when a line matched, 1 when none did. A job that
/// cannot be searched is skipped with a warning, like an unreadable file in
/// grep, and counts as one without a match.
pub fn grep_cmd(store: &dyn LogStore, o: GrepOptions) -> Result<i32> {
    let ids = chosen_jobs(store, &o)?;
    let colour = super::ls::use_colour();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let streams: &[Stream] = match &o.stream {
        Some(s) => std::slice::from_ref(s),
        None => &Stream::BOTH,
    };
    let mut any = false;
    for id in &ids {
        let mut written = Ok(());
        let searched = search_job(store, id, streams, &o, colour, &mut out, &mut written);
        written.context("writing to stdout")?;
        match searched {
            Ok(count) => {
                if o.count {
                    writeln!(out, "{id}:{count}").context("writing to stdout")?;
                }
                any |= count > 0;
            }
            // One job's damaged or unreadable log is that job's problem, as an
            // unreadable file is for grep: say so and search the others.
            Err(e) => {
                out.flush().context("writing to stdout")?;
                super::say(&format!("warning: job {id} not searched: {e:#}"));
            }
        }
    }
    out.flush().context("writing to stdout")?;
    Ok(if any { 0 } else { 1 })
}

/// Searches `streams` of job `id`, printing its matches to `out`; the number
/// of matching lines. An error is the job's (its log refused or unreadable);
/// a failed write to `out` is left in `written` instead, as it ends the whole
/// search.
fn search_job(
    store: &dyn LogStore,
    id: &JobId,
    streams: &[Stream],
    o: &GrepOptions,
    colour: bool,
    out: &mut impl Write,
    written: &mut std::io::Result<()>,
) -> Result<u64> {
    let mut count = 0u64;
    for &stream in streams {
        let log = match store.open_raw(id, stream) {
            Ok(log) => log,
            // A job being created or removed meanwhile has nothing to search.
            Err(e) if store::is_not_found(&e) && o.all => continue,
            Err(e) => return Err(e),
        };
        let mut scan = Scan::new(log, o.pattern.clone(), Cursor::start(stream))
            .with_context(|| format!("reading its {}", stream.name()))?;
        while !scan.done() && written.is_ok() {
            scan.step(&mut |m| {
                count += 1;
                if !o.count && written.is_ok() {
                    *written = out.write_all(format_match(id, &m, colour).as_bytes());
                }
            })
            .with_context(|| format!("searching its {}", stream.name()))?;
        }
    }
    Ok(count)
}

/// The jobs `o` names: its ids (each must exist), or the most recent job, or
/// with `--all` every job that passes the filters, newest first.
fn chosen_jobs(store: &dyn LogStore, o: &GrepOptions) -> Result<Vec<JobId>> {
    if !o.ids.is_empty() {
        for id in &o.ids {
            if !store.job_exists(id) {
                return Err(jobs::not_found(store, id));
            }
        }
        return Ok(o.ids.clone());
    }
    if !o.all {
        return Ok(vec![jobs::most_recent(store)?]);
    }
    let now_ms = crate::timefmt::unix_ms(std::time::SystemTime::now());
    let oldest = o
        .since_days
        .map(|d| now_ms.saturating_sub((d * 86_400_000.0) as i64));
    Ok(store
        .list_jobs()?
        .into_iter()
        .filter(|j| {
            let Ok(meta) = &j.meta else { return false };
            (o.status.is_empty() || o.status.contains(&meta.status))
                && oldest.is_none_or(|t| j.started_ms >= t)
        })
        .map(|j| j.id)
        .collect())
}

/// One output line: `ID:LINE:TEXT`, `ID:stderr:LINE:TEXT` for stderr; with
/// colour, the id magenta, the line number green and the matches bold red,
/// as ripgrep shows them.
fn format_match(id: &JobId, m: &crate::search::Match, colour: bool) -> String {
    let paint = |p: Paint, s: &str| {
        if colour {
            format!("{p}{s}{p:#}")
        } else {
            s.to_string()
        }
    };
    let fg = |c: AnsiColor| Paint::new().fg_color(Some(c.into()));
    let mut line = paint(fg(AnsiColor::Magenta), id.as_str());
    line.push(':');
    if m.stream == Stream::Stderr {
        line.push_str("stderr:");
    }
    line.push_str(&paint(fg(AnsiColor::Green), &m.line.to_string()));
    line.push(':');
    if colour {
        let hit = fg(AnsiColor::Red).bold();
        let chars: Vec<char> = m.text.chars().collect();
        let mut at = 0;
        for &(a, b) in &m.ranges {
            line.extend(&chars[at..a]);
            line.push_str(&paint(hit, &chars[a..b].iter().collect::<String>()));
            at = b;
        }
        line.extend(&chars[at..]);
    } else {
        line.push_str(&m.text);
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_print_as_id_line_text_with_stderr_named() {
        let id = JobId::parse("build-1").unwrap();
        let m = crate::search::Match {
            stream: Stream::Stdout,
            line: 12,
            offset: 0,
            text: "an error: é".into(),
            ranges: vec![(3, 8)],
        };
        assert_eq!(format_match(&id, &m, false), "build-1:12:an error: é\n");
        let e = crate::search::Match {
            stream: Stream::Stderr,
            ..m.clone()
        };
        assert_eq!(
            format_match(&id, &e, false),
            "build-1:stderr:12:an error: é\n"
        );
        let painted = format_match(&id, &m, true);
        assert!(
            painted.contains("\u{1b}[1m\u{1b}[31merror\u{1b}[0m"),
            "{painted:?}"
        );
    }
}
