//! The web pages (SPEC §5): a job list at `/` and a live view of one job at
//! `/job_runs/{id}`. Self-contained: inline CSS and JS, no CDN, and a
//! Content-Security-Policy that forbids loading anything from elsewhere.
//!
//! The job page (script in `job.js`) opens on the tail of the log: it follows
//! `combined` with one EventSource (`format=json`, `lines=`[`PAGE_TAIL`]; browsers
//! allow only six connections per host) and loads any other range with `fetch`
//! on demand: earlier lines as the reader scrolls up (a row says how many lines
//! a gap holds), and the range around a `#L<n>` link, loaded or not. Lines are
//! numbered once in arrival order in the combined view (`#L<n>`), by their own
//! stream's numbers in the stdout and stderr views (`#O<n>`, `#E<n>`); `#L10-L20`
//! marks a range. Only the rows in view are in the DOM, and at most
//! [`PAGE_KEPT_LINES`] lines are kept (the ones farthest from the view become a
//! gap again). ANSI SGR colours (16, 256 and truecolor, bold, dim, italic,
//! underline, inverse) are rendered; timestamps (absolute or from the job's
//! start) and wrapping are toggles; the line in progress (`event: partial`) shows
//! as a provisional last row; sections fold; the search box searches the whole
//! log on the server. The view sticks to the bottom until the reader scrolls up.
//! `complete` shows the exit status (the signal of a killed job); after a server
//! restart the page reconnects by itself, says "reconnecting" meanwhile, and shows
//! the final status of a job that ended while the server was away.

use crate::store::JobId;

/// Jobs per page of the job list at `/`: a screenful or two, rendered at once;
/// the rest is a page away (`offset=` of the API).
pub const INDEX_PAGE: usize = 100;

/// Lines a job page asks for when it opens: a few screens, so the tail of any
/// log shows at once; earlier lines load as the reader scrolls up.
pub const PAGE_TAIL: usize = 1_000;

/// Most lines a page asks for at once, for `?lines=N` on the page (capped, with a
/// note saying so) and for one range.
pub const PAGE_LINES_CAP: usize = 50_000;

/// Lines one "load more" brings.
pub const PAGE_CHUNK: usize = 1_000;

/// Most lines a job page keeps in memory; past this a tenth goes, from the end
/// farther from the view. About 30-60 MB of script heap for typical lines.
pub const PAGE_KEPT_LINES: usize = 200_000;

/// Content-Security-Policy of the pages: everything inline or from this server,
/// so a page can never load a script from elsewhere; no page may frame them
/// (clickjacking), and no `<base>` or form a job's text might smuggle in
/// could point anywhere.
pub const CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                       img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Escapes text for HTML content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root{--bg:#101418;--fg:#d8dee4;--dim:#7d8590;--line:#1c2128;--acc:#58a6ff;--ok:#2ea043;--bad:#da3633;--warn:#d29922;--lh:18px}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.4 system-ui,sans-serif}
a{color:var(--acc)}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;padding:8px 12px;border-bottom:1px solid var(--line)}
header h1{font-size:16px;margin:0;font-weight:600}
.badge{padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600;background:var(--line)}
.badge.running{background:#1f6feb}.badge.succeeded{background:var(--ok)}
.badge.failed,.badge.killed,.badge.timed_out{background:var(--bad)}.badge.abandoned{background:var(--warn);color:#000}
.tabs label{margin-right:8px;cursor:pointer}
.muted{color:var(--dim);font-size:12px}
#cmd{font-family:ui-monospace,monospace;font-size:12px;color:var(--dim);overflow:hidden;text-overflow:ellipsis;white-space:nowrap;max-width:40vw}
body.job{display:flex;flex-direction:column;height:100vh}
#log{flex:1;position:relative;overflow:auto;font:13px/var(--lh) ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
#spacer{position:relative;min-width:100%}
#rows{position:absolute;left:0;top:0;min-width:100%}
.r{display:flex;height:var(--lh);padding-right:12px}
.t{white-space:pre}
#log.wrap #rows{width:100%}
#log.wrap .r{overflow:hidden}
#log.wrap .t{white-space:pre-wrap;word-break:break-all;flex:1;min-width:0}
.ts{flex:none;width:13ch;color:var(--dim);user-select:none}
.r.gap{color:var(--dim);font-style:italic;font-family:system-ui,sans-serif;font-size:12px;align-items:center}
.r.gap button{font-size:11px;margin-left:8px;background:var(--line);color:var(--fg);border:1px solid #30363d;border-radius:4px;cursor:pointer}
.r.note{color:var(--warn)}
.r.pv{opacity:.7}
.badge.reconnecting,.badge.connecting{background:var(--warn);color:#000}
.r:hover{background:#161b22}
.r.hl{background:#3b2e00}
.n{flex:none;display:inline-block;width:9ch;padding-right:1ch;margin-right:1ch;text-align:right;color:var(--dim);text-decoration:none;border-right:2px solid transparent;user-select:none}
.r.e .n{border-right-color:var(--bad)}
#note:empty{display:none}
#note{padding:4px 12px;color:var(--dim);font-size:12px}
#pause{position:fixed;right:18px;bottom:18px;display:none;padding:6px 12px;border-radius:16px;border:0;background:var(--acc);color:#000;cursor:pointer;font-weight:600}
.b{font-weight:bold}.d{opacity:.6}.i{font-style:italic}.u{text-decoration:underline}.s{text-decoration:line-through}
table{border-collapse:collapse;margin:12px}td,th{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left}
td.st{font-weight:600}
.r.m{background:#2a2410}.r.m.hl{background:#5a4600}
.r.h{cursor:pointer;color:#e6edf3;font-weight:600}
.fold{display:inline-block;width:2ch;color:var(--dim)}
.dur{color:var(--dim);font-weight:400;margin-left:1ch}
#find{display:flex;gap:4px;align-items:center}
#find input{width:16em;background:var(--line);color:var(--fg);border:1px solid #30363d;border-radius:4px;padding:2px 6px}
#find button{background:var(--line);color:var(--fg);border:1px solid #30363d;border-radius:4px;cursor:pointer}
#ann:empty{display:none}
#ann{margin:0;padding:4px 12px 4px 28px;font-size:12px;max-height:20vh;overflow:auto;border-bottom:1px solid var(--line)}
#ann li.error{color:#ff7b72}#ann li.warning{color:#e3b341}#ann li.notice{color:var(--acc)}
"#;

/// The job page's script (src/serve/job.js), with its limits filled in.
const SCRIPT: &str = include_str!("job.js");

const INDEX_STYLE: &str = r#"
:root{--bg:#101418;--fg:#d8dee4;--dim:#7d8590;--line:#1c2128;--acc:#58a6ff;--ok:#2ea043;--bad:#da3633;--warn:#d29922}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.4 system-ui,sans-serif}
a{color:var(--acc)}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;padding:8px 12px;border-bottom:1px solid var(--line)}
header h1{font-size:16px;margin:0;font-weight:600}
header input,header select,header button{background:var(--line);color:var(--fg);border:1px solid #30363d;border-radius:4px;padding:2px 6px;font:inherit}
header input{width:18em}
header button{cursor:pointer}header button:disabled{opacity:.4;cursor:default}
.muted{color:var(--dim);font-size:12px}
.badge{padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600;background:var(--line);white-space:nowrap}
.badge.running{background:#1f6feb}.badge.succeeded{background:var(--ok)}
.badge.failed,.badge.killed,.badge.timed_out{background:var(--bad)}.badge.abandoned,.badge.damaged{background:var(--warn);color:#000}
#live.on{color:var(--ok)}#live.off{color:var(--warn)}
table{border-collapse:collapse;margin:12px;min-width:calc(100% - 24px)}
td,th{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--dim);font-size:12px}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.cmd{font-family:ui-monospace,monospace;font-size:12px;color:var(--dim);max-width:40vw;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
tr.new td{animation:flash 1.5s}
@keyframes flash{from{background:#1f3a5f}to{background:transparent}}
#empty{margin:12px}
"#;

const INDEX_SCRIPT: &str = include_str!("index.js");

/// The job list at `/` (issue 11, point 5): a shell whose script loads pages
/// of [`INDEX_PAGE`] jobs from `/api/job_runs` (status filter, search of id
/// and command, next/previous) and keeps them live with one EventSource on
/// `/api/events`.
pub fn index_page() -> String {
    // `damaged` last: a job whose metadata.json cannot be read (see `ls`).
    let statuses: String = crate::metadata::Status::ALL
        .iter()
        .map(|s| s.as_str())
        .chain([crate::logs::DAMAGED])
        .map(|s| format!("<option value=\"{s}\">{s}</option>"))
        .collect();
    let script = INDEX_SCRIPT.replace("__PAGE__", &INDEX_PAGE.to_string());
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>logwrap jobs</title>\
<style>{INDEX_STYLE}</style></head><body><header><h1>logwrap jobs</h1>\
<select id=\"status\" title=\"status\"><option value=\"\">all statuses</option>{statuses}</select>\
<input id=\"q\" type=\"search\" placeholder=\"find by id or command\" autocomplete=\"off\">\
<button id=\"prev\" type=\"button\" disabled>\u{2190} newer</button>\
<button id=\"next\" type=\"button\" disabled>older \u{2192}</button>\
<span id=\"range\" class=\"muted\"></span><span id=\"live\" class=\"muted\">connecting</span>\
<span id=\"note\" class=\"muted\"></span></header>\
<table><thead><tr><th>job</th><th>status</th><th>exit</th><th>started</th><th>duration</th>\
<th>stdout</th><th>stderr</th><th>command</th></tr></thead><tbody id=\"rows\"></tbody></table>\
<p id=\"empty\" class=\"muted\" hidden>No jobs.</p>\
<script>{script}</script></body></html>\n"
    )
}

/// The live view of one job.
pub fn job_page(id: &JobId) -> String {
    // A valid id holds only [A-Za-z0-9._-]: safe in HTML and in a JS string.
    let id_html = html_escape(id.as_str());
    let id_js = serde_json::to_string(id.as_str()).unwrap_or_else(|_| "\"\"".into());
    let script = SCRIPT
        .replace("__TAIL__", &PAGE_TAIL.to_string())
        .replace("__KEEP__", &PAGE_KEPT_LINES.to_string())
        .replace("__CAP__", &PAGE_LINES_CAP.to_string())
        .replace("__CHUNK__", &PAGE_CHUNK.to_string());
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{id_html} \u{2014} logwrap</title>\
<style>{STYLE}</style></head><body class=\"job\">\
<header><h1><a href=\"../\">jobs</a> / {id_html}</h1><span id=\"badge\" class=\"badge\">connecting</span>\
<span id=\"cmd\"></span><span id=\"when\" class=\"muted\"></span><span id=\"dur\" class=\"muted\"></span>\
<span id=\"host\" class=\"muted\"></span>\
<span class=\"tabs\"><label><input type=\"radio\" name=\"view\" value=\"combined\" checked> combined</label>\
<label><input type=\"radio\" name=\"view\" value=\"stdout\"> stdout</label>\
<label><input type=\"radio\" name=\"view\" value=\"stderr\"> stderr</label></span>\
<label class=\"muted\"><input id=\"wrap\" type=\"checkbox\"> wrap</label>\
<label class=\"muted\">time <select id=\"ts\"><option value=\"off\">off</option><option value=\"abs\">clock</option>\
<option value=\"rel\">since start</option></select></label>\
<a class=\"raw\" href=\"../api/job_runs/{id_html}/logs/stdout/raw\" download=\"{id_html}.stdout.log\">stdout.log</a>\
<a class=\"raw\" href=\"../api/job_runs/{id_html}/logs/stderr/raw\" download=\"{id_html}.stderr.log\">stderr.log</a>\
<span id=\"find\"><input id=\"q\" type=\"search\" placeholder=\"search the whole log (/)\" autocomplete=\"off\">\
<button id=\"prev\" type=\"button\" title=\"previous match\">\u{2191}</button><button id=\"next\" type=\"button\" title=\"next match\">\u{2193}</button>\
<span id=\"hits\" class=\"muted\"></span></span>\
<span id=\"count\" class=\"muted\"></span></header><ul id=\"ann\"></ul><div id=\"note\"></div>\
<div id=\"log\"><div id=\"spacer\"><div id=\"rows\"></div></div></div>\
<button id=\"pause\" type=\"button\">paused \u{2014} follow \u{2193}</button>\
<script>const JOB = {id_js};\n{script}</script></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_job_list_page_is_self_contained() {
        let page = index_page();
        assert!(!page.contains("__PAGE__"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert_eq!(page.matches("EventSource(").count(), 1);
        assert!(page.contains("api/events") && page.contains("api/job_runs?"));
    }

    #[test]
    fn the_job_page_is_self_contained() {
        let page = job_page(&JobId::parse("build-1").unwrap());
        assert!(page.contains("const JOB = \"build-1\";"));
        for hole in ["__TAIL__", "__KEEP__", "__CAP__", "__CHUNK__"] {
            assert!(!page.contains(hole), "{hole} left in the page");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(page.contains("new EventSource("));
        assert_eq!(
            page.matches("EventSource(").count(),
            1,
            "one connection per page"
        );
    }
}
