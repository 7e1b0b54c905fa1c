//! `logwrap logs --server URL`: the same output as local reading, taken from a
//! logwrap HTTP server over SSE (`?format=json`), resuming with `Last-Event-ID`
//! if the connection drops while following.

use super::jobs;
use super::LogsOptions;
use crate::metadata::Metadata;
use crate::serve::client::{self, Line, Notice, Query, Said, Target};
use crate::store::Stream;
use anyhow::{Context, Result};
use std::io::{self, BufWriter, Write};

/// Prints job output read from the server at `url`; returns the exit code.
pub fn logs(args: &LogsOptions, url: &str) -> Result<i32> {
    let target = Target::parse(url, args.token.clone())?;
    let id = match &args.id {
        Some(id) => id.to_string(),
        None => client::latest_job(&target)?,
    };
    let query = Query {
        which: match (args.all, args.stderr) {
            (true, _) => "combined",
            (false, true) => "stderr",
            (false, false) => "stdout",
        },
        follow: args.follow,
        since: args.since,
        tail: args.tail,
    };
    // Line modes end every line with a newline, as local reading does; the plain
    // copy keeps an unterminated last line as it is.
    let line_mode = args.all || args.prefix || args.timestamps;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    // The job's `tail_url`, asked for the first time lines turn out trimmed.
    let mut origin: Option<Option<String>> = None;
    let print_line = |out: &mut BufWriter<io::StdoutLock<'_>>, l: &Line| -> io::Result<()> {
        if args.timestamps {
            write!(out, "{} ", l.ts.as_deref().unwrap_or("-"))?;
        }
        if args.prefix {
            write!(out, "{}: ", l.stream)?;
        }
        out.write_all(l.text.as_bytes())?;
        if l.newline || line_mode {
            out.write_all(b"\n")?;
        }
        if args.follow {
            out.flush()?;
        }
        Ok(())
    };
    // Notices come as local reading gives them: a size limit's cut in the
    // output where it happened, trimmed lines and an emptied log on stderr.
    let mut print = |said: Said| -> io::Result<()> {
        match said {
            Said::Line(l) => print_line(&mut out, l),
            Said::Notice(Notice::Omitted { message, .. }) => {
                writeln!(out, "[logwrap: {message}]")
            }
            Said::Notice(Notice::Lost { stream, from, to }) => {
                out.flush()?;
                let origin = origin.get_or_insert_with(|| {
                    let doc = target.get_json(&format!("/api/job_runs/{id}")).ok();
                    doc.and_then(|m| m["tail_url"].as_str().map(String::from))
                });
                let stream = Stream::from_name(stream).unwrap_or(Stream::Stdout);
                super::warn_trimmed(&format!("lines {from}-{to}"), stream, origin.as_deref());
                Ok(())
            }
            Said::Notice(Notice::Truncated { message, .. }) => {
                out.flush()?;
                super::say(&format!("warning: {message}"));
                Ok(())
            }
        }
    };
    client::stream(&target, &id, &query, &mut print)?;
    out.flush()?;
    if !args.exit_status {
        return Ok(0);
    }
    let doc = target.get_json(&format!("/api/job_runs/{id}"))?;
    let meta: Metadata =
        serde_json::from_value(doc).context("the server sent metadata logwrap cannot read")?;
    Ok(jobs::exit_status(&meta))
}
