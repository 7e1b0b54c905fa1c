//! The web pages (SPEC §5): a job list at `/` and a live view of one job at
//! `/job_runs/{id}`. Self-contained: inline CSS and JS, no CDN, and a
//! Content-Security-Policy that forbids loading anything from elsewhere.
//!
//! The job page follows `combined` with one EventSource (`format=json`, so each
//! line names its stream; browsers allow only six connections per host), and
//! switches between stdout, stderr and combined on the client. It stays
//! responsive on a log of a million lines by rendering lazily: only the rows in
//! view are in the DOM (fixed-height rows in a scroller sized for all lines), at
//! most [`PAGE_KEPT_LINES`] lines are kept in memory (older ones are
//! dropped with a note and the raw log a click away), and a page opened on a big
//! log starts at its last [`PAGE_TAIL`] lines. ANSI SGR colours (16, 256 and
//! truecolor, bold, dim, italic, underline, inverse) are rendered; each line
//! number is a `#L<n>` link (stdout; `#E<n>` for stderr) that scrolls to it; the
//! view sticks to the bottom until the reader scrolls up, and sticks again at
//! the bottom; `complete` shows the exit status and closes the EventSource.

use crate::store::JobId;

/// Jobs per page of the job list at `/`: a screenful or two, rendered at once;
/// the rest is a page away (`offset=` of the API).
pub const INDEX_PAGE: usize = 100;

/// Lines a job page asks for when it opens (`?lines=`): the start of a huge log
/// is a download away, and the browser gets going in a second or two.
pub const PAGE_TAIL: usize = 100_000;

/// Most lines a job page keeps in memory; past this the oldest tenth is dropped.
/// About 30-60 MB of script heap for typical lines.
pub const PAGE_KEPT_LINES: usize = 200_000;

/// Content-Security-Policy of the pages: everything inline or from this server,
/// so a page can never load a script from elsewhere.
pub const CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:";

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
.r{height:var(--lh);white-space:pre;padding-right:12px}
.r:hover{background:#161b22}
.r.hl{background:#3b2e00}
.n{display:inline-block;width:7ch;padding-right:1ch;margin-right:1ch;text-align:right;color:var(--dim);text-decoration:none;border-right:2px solid transparent;user-select:none}
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

const SCRIPT: &str = r##"
"use strict";
const LH = 18, TAIL = __TAIL__, KEEP = __KEEP__;
const tok = new URLSearchParams(location.search).get("token");
const tq = tok ? "token=" + encodeURIComponent(tok) : "";
const api = "../api/job_runs/" + encodeURIComponent(JOB);
const $ = (id) => document.getElementById(id);
const logEl = $("log"), spacer = $("spacer"), rows = $("rows");
// All lines, and the ones shown in each view (the same objects).
const views = { combined: [], stdout: [], stderr: [] };
let view = "combined", stick = true, dropped = 0, dirty = false, target = null;
// SGR state per stream: separate terminals.
const ends = [null, null];

const BASE16 = ["#000000","#cd3131","#0dbc79","#e5e510","#2472c8","#bc3fbc","#11a8cd","#e5e5e5",
  "#666666","#f14c4c","#23d18b","#f5f543","#3b8eea","#d670d6","#29b8db","#ffffff"];
function c256(n) {
  if (n < 16) return BASE16[n];
  if (n < 232) { n -= 16; const v = (x) => x ? 55 + x * 40 : 0;
    return "rgb(" + v(Math.floor(n / 36)) + "," + v(Math.floor(n / 6) % 6) + "," + v(n % 6) + ")"; }
  const g = 8 + (n - 232) * 10; return "rgb(" + g + "," + g + "," + g + ")";
}
// Applies one SGR parameter list to a state; returns a new state object.
function sgr(st, params) {
  st = Object.assign({}, st || {});
  const p = params.replace(/:/g, ";").split(";").map((x) => x === "" ? 0 : parseInt(x, 10));
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === 0) st = {};
    else if (c === 1) st.b = 1; else if (c === 2) st.d = 1; else if (c === 3) st.i = 1;
    else if (c === 4) st.u = 1; else if (c === 7) st.v = 1; else if (c === 9) st.s = 1;
    else if (c === 22) { delete st.b; delete st.d; } else if (c === 23) delete st.i;
    else if (c === 24) delete st.u; else if (c === 27) delete st.v; else if (c === 29) delete st.s;
    else if (c >= 30 && c <= 37) st.fg = BASE16[c - 30]; else if (c >= 90 && c <= 97) st.fg = BASE16[c - 82];
    else if (c >= 40 && c <= 47) st.bg = BASE16[c - 40]; else if (c >= 100 && c <= 107) st.bg = BASE16[c - 92];
    else if (c === 39) delete st.fg; else if (c === 49) delete st.bg;
    else if (c === 38 || c === 48) {
      let col = null;
      if (p[i + 1] === 5) { col = c256(p[i + 2] & 255); i += 2; }
      else if (p[i + 1] === 2) { col = "rgb(" + (p[i + 2] & 255) + "," + (p[i + 3] & 255) + "," + (p[i + 4] & 255) + ")"; i += 4; }
      if (col) { if (c === 38) st.fg = col; else st.bg = col; }
    }
  }
  return Object.keys(st).length ? st : null;
}
const ESC = /\x1b(?:\[([0-9;:?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;
// The state after a line, from the state before it.
function endState(st, text) {
  if (text.indexOf("\x1b") < 0) return st;
  for (const m of text.matchAll(ESC)) if (m[2] === "m") st = sgr(st, m[1] || "");
  return st;
}
const esc = (s) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
function span(st, text) {
  if (!text) return "";
  if (!st) return esc(text);
  let fg = st.fg, bg = st.bg;
  if (st.v) { const t = fg || "var(--fg)"; fg = bg || "var(--bg)"; bg = t; }
  const cls = ["b", "d", "i", "u", "s"].filter((k) => st[k]).join(" ");
  let style = (fg ? "color:" + fg + ";" : "") + (bg ? "background:" + bg + ";" : "");
  return "<span" + (cls ? ' class="' + cls + '"' : "") + (style ? ' style="' + style + '"' : "") + ">" + esc(text) + "</span>";
}
function html(st, text) {
  if (text.indexOf("\x1b") < 0) return span(st, text.replace(/[\x00-\x08\x0b-\x1f]/g, ""));
  let out = "", at = 0;
  for (const m of text.matchAll(ESC)) {
    out += span(st, text.slice(at, m.index).replace(/[\x00-\x08\x0b-\x1f]/g, ""));
    if (m[2] === "m") st = sgr(st, m[1] || "");
    at = m.index + m[0].length;
  }
  return out + span(st, text.slice(at).replace(/[\x00-\x08\x0b-\x1f]/g, ""));
}
const anchor = (l) => (l.e ? "E" : "L") + l.n;
// Sections (issue 11): GitLab section_start/section_end, GitHub ::group::/
// ::endgroup::, Buildkite ---/+++/~~~ headers, recognised on the exact text.
const sections = [];
let openSecs = [], foldCache = null;
function mark(raw) {
  let m;
  const s = raw.replace(/^\x1b\[0?K/, "");
  if ((m = /^section_start:(\d+):([^\[\r\s]+)(?:\[([^\]]*)\])?\r?(?:\x1b\[0?K)?(.*)$/.exec(s)))
    return { k: "start", id: m[2], title: m[4].replace(ESC, "") || m[2], fold: /collapsed=true/.test(m[3] || ""), ts: +m[1] * 1e6 };
  if ((m = /^section_end:(\d+):([^\r\s]+)/.exec(s))) return { k: "end", id: m[2], ts: +m[1] * 1e6 };
  if ((m = /^::group::(.*)$/.exec(raw))) return { k: "start", id: "::group", title: m[1], fold: true };
  if (/^::endgroup::/.test(raw)) return { k: "end", id: "::group" };
  if ((m = /^(---|\+\+\+|~~~) (.+)$/.exec(raw))) return { k: "bk", id: "bk", title: m[2], fold: m[1] !== "+++" };
  return null;
}
function closeSec(sec, ts) {
  sec.end = ts || sec.end || 0;
  if (!sec.user) sec.folded = sec.fold;
  foldCache = null;
}
function section(l, raw, ts) {
  const mk = mark(raw);
  if (mk && mk.k === "bk") {
    // A Buildkite header ends the one before it.
    while (openSecs.length) closeSec(openSecs.pop(), ts);
  }
  if (mk && mk.k === "end") {
    const at = openSecs.map((x) => x.id).lastIndexOf(mk.id);
    l.sec = openSecs[openSecs.length - 1] || null;
    if (at >= 0) while (openSecs.length > at) closeSec(openSecs.pop(), mk.ts || ts);
    return;
  }
  l.sec = openSecs[openSecs.length - 1] || null;
  if (!mk) return;
  const sec = { i: sections.length, id: mk.id, title: mk.title, fold: mk.fold, folded: false, user: false,
    parent: l.sec, start: mk.ts || ts, end: null };
  sections.push(sec);
  openSecs.push(sec);
  l.sec = sec; l.hdr = true;
}
function hidden(l) {
  for (let s = l.hdr ? l.sec.parent : l.sec; s; s = s.parent) if (s.folded) return true;
  return false;
}
// The lines of the view, without those in folded sections.
function shown() {
  const lines = views[view];
  if (!sections.some((s) => s.folded)) return lines;
  if (!foldCache || foldCache.view !== view || foldCache.len !== lines.length)
    foldCache = { view: view, len: lines.length, lines: lines.filter((l) => !hidden(l)) };
  return foldCache.lines;
}
function dur(sec) {
  if (!sec.start) return "";
  if (sec.end === null) return "running";
  const s = (sec.end - sec.start) / 1e6;
  return s < 60 ? s.toFixed(1) + "s" : Math.floor(s / 60) + "m " + Math.round(s % 60) + "s";
}
let hits = new Set();
function row(l) {
  const a = anchor(l);
  const cls = "r" + (l.e ? " e" : "") + (target === a ? " hl" : "") + (hits.has(a) ? " m" : "") + (l.hdr ? " h" : "");
  const body = l.hdr
    ? '<span class="fold">' + (l.sec.folded ? "\u25b8" : "\u25be") + "</span>" + esc(l.sec.title) + '<span class="dur">' + dur(l.sec) + "</span>"
    : html(l.s, l.t);
  return '<div class="' + cls + '" id="' + a + '"' + (l.hdr ? ' data-s="' + l.sec.i + '"' : "") + '><a class="n" href="#' + a + '">' + l.n + "</a>" + body + "</div>";
}
function render() {
  dirty = false;
  const lines = shown();
  spacer.style.height = (lines.length * LH) + "px";
  if (stick) logEl.scrollTop = logEl.scrollHeight;
  const first = Math.max(0, Math.floor(logEl.scrollTop / LH) - 20);
  const last = Math.min(lines.length, first + Math.ceil(logEl.clientHeight / LH) + 40);
  rows.style.top = (first * LH) + "px";
  let h = "";
  for (let i = first; i < last; i++) h += row(lines[i]);
  rows.innerHTML = h;
  $("count").textContent = lines.length + " lines" + (dropped ? " (" + dropped + " earlier not kept)" : "");
  $("pause").style.display = stick ? "none" : "block";
}
function schedule() { if (!dirty) { dirty = true; requestAnimationFrame(render); } }
function add(d) {
  const e = d.stream === "stderr" ? 1 : 0;
  const t = d.display !== undefined ? d.display : d.text;
  const l = { n: d.line, e: e, t: t, s: ends[e] };
  ends[e] = endState(ends[e], t);
  section(l, d.text, d.ts_us || 0);
  views.combined.push(l);
  views[e ? "stderr" : "stdout"].push(l);
  if (views.combined.length > KEEP) {
    const cut = Math.floor(KEEP / 10), gone = views.combined.splice(0, cut);
    dropped += cut;
    const out = gone.filter((x) => !x.e).length;
    views.stdout.splice(0, out);
    views.stderr.splice(0, cut - out);
    $("note").textContent = "Earlier lines are not kept in this page; download the raw log for all of it.";
  }
  schedule();
}
function goTo(hash) {
  const m = /^#([LE])(\d+)$/.exec(hash || "");
  if (!m) return false;
  const e = m[1] === "E" ? 1 : 0, n = parseInt(m[2], 10);
  const l = views[view].find((x) => x.e === e && x.n === n);
  if (!l) return false;
  // A line in a folded section: open the sections around it.
  for (let s = l.hdr ? l.sec.parent : l.sec; s; s = s.parent) if (s.folded) { s.folded = false; s.user = true; foldCache = null; }
  const i = shown().indexOf(l);
  target = m[1] + n; stick = false;
  logEl.scrollTop = Math.max(0, i * LH - logEl.clientHeight / 3);
  render();
  return true;
}
logEl.addEventListener("scroll", () => {
  const bottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 2 * LH;
  if (bottom !== stick) { stick = bottom; }
  schedule();
});
rows.addEventListener("click", (ev) => {
  const r = ev.target.closest(".r.h");
  if (!r || ev.target.closest("a")) return;
  const sec = sections[+r.dataset.s];
  sec.folded = !sec.folded; sec.user = true; foldCache = null;
  schedule();
});
// Search (issue 11): the whole log through the server, not just what is loaded.
let found = [], at = -1, findSeq = 0, lastQ = "";
function showHit() {
  const f = found[at];
  $("hits").textContent = found.total ? (at + 1) + "/" + found.total + (found.total > found.length ? " (first " + found.length + ")" : "") : "no matches";
  if (!f) return;
  const a = (f.stream === "stderr" ? "E" : "L") + f.line;
  if (!goTo("#" + a)) $("note").textContent = "Match on " + f.stream + " line " + f.line + " is before the lines loaded in this page; open the raw log for it.";
  else $("note").textContent = "";
}
function find(q) {
  const seq = ++findSeq;
  if (!q) { found = []; hits = new Set(); $("hits").textContent = ""; schedule(); return; }
  const stream = view === "combined" ? "both" : view;
  fetch(api + "/search?limit=1000&stream=" + stream + "&q=" + encodeURIComponent(q) + (tq ? "&" + tq : ""))
    .then((r) => r.json()).then((v) => {
      if (seq !== findSeq) return;
      found = v.matches || []; found.total = v.total || 0; at = found.length ? 0 : -1;
      hits = new Set(found.map((f) => (f.stream === "stderr" ? "E" : "L") + f.line));
      showHit(); schedule();
    }).catch(() => { $("hits").textContent = "search failed"; });
}
function step(by) { if (!found.length) return; at = (at + by + found.length) % found.length; showHit(); }
$("q").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") { ev.preventDefault(); if ($("q").value !== lastQ) { lastQ = $("q").value; find(lastQ); } else step(ev.shiftKey ? -1 : 1); }
  if (ev.key === "Escape") $("q").blur();
});
$("next").addEventListener("click", () => step(1));
$("prev").addEventListener("click", () => step(-1));
document.addEventListener("keydown", (ev) => {
  const typing = document.activeElement && document.activeElement.tagName === "INPUT" && document.activeElement.type === "search";
  if ((ev.key === "/" && !typing) || ((ev.ctrlKey || ev.metaKey) && ev.key === "f")) { ev.preventDefault(); $("q").focus(); $("q").select(); }
});
// Annotations from the metadata, with links to their lines.
function annotations(m) {
  const list = $("ann");
  list.innerHTML = (m.annotations || []).map((a) => {
    const h = (a.stream === "stderr" ? "E" : "L") + a.log_line;
    const where = a.file ? " " + esc(a.file) + (a.line ? ":" + a.line : "") : "";
    return '<li class="' + esc(a.level) + '"><a href="#' + h + '">' + esc(a.level) + where + "</a> " + esc(a.title ? a.title + ": " : "") + esc(a.message) + "</li>";
  }).join("");
}
function meta() { return fetch(api + (tq ? "?" + tq : "")).then((r) => r.json()); }
$("pause").addEventListener("click", () => { stick = true; target = null; schedule(); });
window.addEventListener("hashchange", () => goTo(location.hash));
for (const r of document.querySelectorAll("input[name=view]")) {
  r.addEventListener("change", () => { view = r.value; stick = true; schedule(); });
}
for (const a of document.querySelectorAll("a.raw")) a.href += tq ? "?" + tq : "";
function badge(status, text) { const b = $("badge"); b.className = "badge " + status; b.textContent = text; }
meta().then((m) => {
  $("cmd").textContent = (m.command || []).join(" ");
  annotations(m);
  if (m.status === "running") badge("running", "running");
}).catch(() => {});
const es = new EventSource(api + "/logs/combined?follow=true&format=json&lines=" + (parseInt(new URLSearchParams(location.search).get("lines"), 10) || TAIL) + (tq ? "&" + tq : ""));
let pending = location.hash;
es.addEventListener("log", (ev) => {
  add(JSON.parse(ev.data));
  if (pending && goTo(pending)) pending = null;
});
es.addEventListener("gap", (ev) => {
  const d = JSON.parse(ev.data);
  add({ stream: d.stream, line: "\u2026", text: "[" + d.message + "]" });
});
es.addEventListener("complete", (ev) => {
  const d = JSON.parse(ev.data);
  es.close();
  const how = d.exit_code !== null && d.exit_code !== undefined ? "exit " + d.exit_code : d.status;
  badge(d.status, d.status + (how !== d.status ? " (" + how + ")" : ""));
  // Sections still open end with the job; where it failed stays open.
  const last = openSecs[openSecs.length - 1];
  while (openSecs.length) closeSec(openSecs.pop(), 0);
  if (d.status !== "succeeded") for (let s = last; s; s = s.parent) { s.folded = false; s.user = true; }
  foldCache = null; schedule();
  meta().then(annotations).catch(() => {});
  document.body.dataset.complete = d.status;
  if (pending) goTo(pending);
});
es.addEventListener("error", () => {
  if (es.readyState === EventSource.CLOSED && !document.body.dataset.complete) badge("abandoned", "disconnected");
});
"##;

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
.badge.failed,.badge.killed,.badge.timed_out{background:var(--bad)}.badge.abandoned{background:var(--warn);color:#000}
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

const INDEX_SCRIPT: &str = r##"
"use strict";
const PAGE = __PAGE__;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const tok = params.get("token");
// `?token=` is carried to every request and link, as the job page does.
const withToken = (url) => tok ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(tok) : url;
let offset = Math.max(0, parseInt(params.get("offset"), 10) || 0);
let status = params.get("status") || "", query = params.get("q") || "";
let loading = 0, hasNext = false, total = null, opened = false;
const rows = new Map(); // id -> {job, tr}
$("status").value = status;
$("q").value = query;

// A list entry (metadata) or an event's summary, in one shape.
function norm(m) {
  return { id: m.id || m.job_run_id, status: m.status, exit_code: m.exit_code, signal: m.signal,
    started_at: m.started_at, duration_ms: m.duration_ms, command: m.command || [],
    stdout: m.stdout || { bytes: 0, lines: 0 }, stderr: m.stderr || { bytes: 0, lines: 0 } };
}
function size(n) {
  if (n < 1024) return n + " B";
  const u = ["KiB", "MiB", "GiB", "TiB"]; let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + " " + u[i];
}
function dur(ms) {
  if (ms == null) return "";
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
}
const streamText = (s) => size(s.bytes) + " \u00b7 " + s.lines + (s.lines === 1 ? " line" : " lines");
function started(at) {
  const d = new Date(at);
  return isNaN(d) ? at || "" : d.toLocaleString();
}
function elapsed(j) {
  if (j.status !== "running") return j.duration_ms;
  const t = Date.parse(j.started_at);
  return isNaN(t) ? j.duration_ms : Math.max(0, Date.now() - t);
}
function cell(tr, cls, text) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  tr.appendChild(td);
  return td;
}
// A row's cells from a job; built with textContent only, never markup.
function fill(tr, j) {
  tr.textContent = "";
  tr.dataset.id = j.id;
  tr.dataset.status = j.status;
  const a = document.createElement("a");
  a.className = "job";
  a.href = withToken("job_runs/" + encodeURIComponent(j.id));
  a.textContent = j.id;
  cell(tr, "", "").appendChild(a);
  const badge = document.createElement("span");
  badge.className = "badge " + j.status;
  badge.textContent = j.status === "killed" && j.signal ? "killed (" + j.signal + ")" : j.status;
  cell(tr, "st", "").appendChild(badge);
  cell(tr, "num exit", j.exit_code == null ? "" : String(j.exit_code));
  cell(tr, "", started(j.started_at)).title = j.started_at || "";
  cell(tr, "num dur", dur(elapsed(j)));
  cell(tr, "num out", streamText(j.stdout));
  cell(tr, "num err", streamText(j.stderr));
  const cmd = j.command.join(" ");
  cell(tr, "cmd", cmd).title = cmd;
}
function row(j) {
  const tr = document.createElement("tr");
  fill(tr, j);
  rows.set(j.id, { job: j, tr: tr });
  return tr;
}
function matches(j) {
  if (status && j.status !== status) return false;
  const q = query.toLowerCase();
  return !q || j.id.toLowerCase().includes(q) || j.command.join(" ").toLowerCase().includes(q);
}
function showPaging() {
  const n = $("rows").children.length;
  $("empty").hidden = n > 0;
  $("prev").disabled = offset === 0;
  $("next").disabled = !hasNext;
  $("range").textContent = n === 0 ? "" : (offset + 1) + "\u2013" + (offset + n) + (total != null ? " of " + total : "");
}
// Keeps the view in the address, so a reload or a shared link shows the same.
function remember() {
  const p = new URLSearchParams();
  if (tok) p.set("token", tok);
  if (status) p.set("status", status);
  if (query) p.set("q", query);
  if (offset) p.set("offset", offset);
  const s = p.toString();
  history.replaceState(null, "", s ? "?" + s : location.pathname);
}
async function load() {
  const mine = ++loading;
  const p = new URLSearchParams({ limit: PAGE + 1, offset: offset });
  if (status) p.set("status", status);
  if (query) p.set("q", query);
  remember();
  let resp, list;
  try {
    resp = await fetch(withToken("api/job_runs?" + p));
    list = await resp.json();
  } catch (e) {
    if (mine === loading) $("note").textContent = "could not load the job list: " + e;
    return;
  }
  if (mine !== loading) return; // a newer request won
  if (!resp.ok) { $("note").textContent = list.error || ("HTTP " + resp.status); return; }
  $("note").textContent = "";
  const t = resp.headers.get("X-Total-Count");
  total = t == null ? null : parseInt(t, 10);
  hasNext = list.length > PAGE;
  rows.clear();
  const body = $("rows");
  body.textContent = "";
  for (const m of list.slice(0, PAGE)) body.appendChild(row(norm(m)));
  showPaging();
}

// One EventSource for the whole list: rows change in place, new jobs that
// match the view (or come to match it) appear at the top of the first page.
const es = new EventSource(withToken("api/events"));
function onJob(ev) {
  const j = norm(JSON.parse(ev.data));
  const have = rows.get(j.id);
  if (have) { have.job = j; fill(have.tr, j); return; }
  if (offset !== 0 || !matches(j)) return;
  const body = $("rows"), top = body.firstChild;
  // A job that comes to match the view later (it failed, in a view of failed
  // jobs) belongs at the top only if none shown is newer (RFC 3339 UTC
  // stamps sort as text).
  if (ev.type !== "started" && top && rows.get(top.dataset.id).job.started_at > j.started_at) return;
  const tr = row(j);
  tr.className = "new";
  body.insertBefore(tr, body.firstChild);
  if (total != null) total++;
  while (body.children.length > PAGE) {
    const last = body.lastChild;
    rows.delete(last.dataset.id);
    body.removeChild(last);
    hasNext = true;
  }
  showPaging();
}
for (const t of ["started", "status", "finished", "progress"]) es.addEventListener(t, onJob);
es.addEventListener("removed", (ev) => {
  const id = JSON.parse(ev.data).id, have = rows.get(id);
  if (!have) return;
  have.tr.remove();
  rows.delete(id);
  if (total != null) total--;
  showPaging();
});
es.addEventListener("open", () => {
  $("live").textContent = "live";
  $("live").className = "muted on";
  // Back after a break: what changed meanwhile was not told, so load again.
  if (opened) load();
  opened = true;
});
es.addEventListener("error", () => {
  $("live").textContent = "reconnecting";
  $("live").className = "muted off";
});
// Running jobs' durations tick.
setInterval(() => {
  for (const { job, tr } of rows.values()) {
    if (job.status === "running") tr.querySelector(".dur").textContent = dur(elapsed(job));
  }
}, 1000);

$("status").addEventListener("change", () => { status = $("status").value; offset = 0; load(); });
let typing = null;
$("q").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => { query = $("q").value.trim(); offset = 0; load(); }, 250);
});
$("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
$("next").addEventListener("click", () => { offset += PAGE; load(); });
load();
"##;

/// The job list at `/` (issue 11, point 5): a shell whose script loads pages
/// of [`INDEX_PAGE`] jobs from `/api/job_runs` (status filter, search of id
/// and command, next/previous) and keeps them live with one EventSource on
/// `/api/events`.
pub fn index_page() -> String {
    let statuses: String = crate::metadata::Status::ALL
        .iter()
        .map(|s| format!("<option value=\"{0}\">{0}</option>", s.as_str()))
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
        .replace("__KEEP__", &PAGE_KEPT_LINES.to_string());
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{id_html} \u{2014} logwrap</title>\
<style>{STYLE}</style></head><body class=\"job\">\
<header><h1><a href=\"../\">jobs</a> / {id_html}</h1><span id=\"badge\" class=\"badge\">connecting</span>\
<span id=\"cmd\"></span>\
<span class=\"tabs\"><label><input type=\"radio\" name=\"view\" value=\"combined\" checked> combined</label>\
<label><input type=\"radio\" name=\"view\" value=\"stdout\"> stdout</label>\
<label><input type=\"radio\" name=\"view\" value=\"stderr\"> stderr</label></span>\
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
        assert!(!page.contains("__TAIL__") && !page.contains("__KEEP__"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(page.contains("new EventSource("));
        assert_eq!(
            page.matches("EventSource(").count(),
            1,
            "one connection per page"
        );
    }
}
