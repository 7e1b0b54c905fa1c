"use strict";
// The job page (issue 11): tail first, earlier lines on demand, one numbering
// in arrival order, sections, search, timestamps, wrap, the line in progress,
// and recovery after a server restart. The server's API is all it uses:
// `logs/combined` as an EventSource for the live tail and, with `fetch`, for
// ranges (`before=`, `at=`, `count=`), `search`, and the metadata.
const LH = 18, TAIL = __TAIL__, KEEP = __KEEP__, CAP = __CAP__, CHUNK = __CHUNK__;
const params = new URLSearchParams(location.search);
const tok = params.get("token");
const tq = tok ? "token=" + encodeURIComponent(tok) : "";
const api = "../api/job_runs/" + encodeURIComponent(JOB);
const $ = (id) => document.getElementById(id);
const logEl = $("log"), spacer = $("spacer"), rows = $("rows");

// ---- The model -------------------------------------------------------------
// A line: `c` is its cursor [stdout lines, stderr lines] up to and including it
// (the event id `O.E`), `p` its number in the combined log (O+E), `e` 1 for
// stderr, `n` its number in its own stream. Loaded lines live in segments of
// consecutive lines, `a` the cursor before the first and `b` after the last;
// between segments are gaps, shown as one row that says how many lines it holds
// and loads them on demand. The segment the live EventSource appends to is
// `live` and always the last.
let segs = [];
let view = "combined", stick = !parseHash(location.hash), dirty = false, target = null;
let items = null, tops = null, cols = 0, charW = 0;
let wrap = false, tsMode = "off", started = 0, status = "connecting", done = false;
let loading = false, lastId = null, endC = [0, 0], notes = [], es = null, retry = 1000;
// Gaps whose loading failed or brought nothing: not tried again by scrolling.
const noFill = new Set();
const partial = [null, null];
const pos = (c) => c[0] + c[1];
const beforeOf = (l) => (l.e ? [l.c[0], l.c[1] - 1] : [l.c[0] - 1, l.c[1]]);
const fmt = (n) => n.toLocaleString("en-US");
const inView = (l) => view === "combined" || (view === "stderr") === !!l.e;
function between(x, y) {
  return view === "combined" ? pos(y) - pos(x) : view === "stdout" ? y[0] - x[0] : y[1] - x[1];
}
function lineOf(d, id) {
  const c = id.split(".").map(Number);
  const l = { c: c, p: pos(c), e: d.stream === "stderr" ? 1 : 0, n: d.line, raw: d.text,
    t: d.display !== undefined ? d.display : d.text, ts: d.ts_us || 0, s: null, sec: null, hdr: false };
  return l;
}
// Gap notices the server sent just before line `l` go just before it.
function notesBefore(list, l) { for (const x of list) x.p = l.p - 0.5; return list; }
function gapNote(d) {
  const what = d.message || ("lines " + fmt(d.from) + "\u2013" + fmt(d.to) + " of " + d.stream +
    " are not held by this server; the full log is on the job's own machine");
  return { note: true, e: d.stream === "stderr" ? 1 : 0, t: "[" + what + "]", p: 0 };
}
// Where a page reloaded because the job emptied its log keeps why, for its top.
const TRUNCATED = "logwrap-truncated:" + JOB;
// Lines loaded: all (notes included, for the memory bound) and per stream.
let loaded = 0;
const perStream = [0, 0];
function countLoaded() {
  loaded = 0; perStream[0] = perStream[1] = 0;
  for (const s of segs) { loaded += s.lines.length; for (const l of s.lines) if (!l.note) perStream[l.e]++; }
}

// Merges a segment into the loaded ones (ranges may overlap or touch).
function merge(seg) {
  const all = segs.concat([seg]).sort((x, y) => pos(x.a) - pos(y.a));
  const out = [];
  for (const s of all) {
    const last = out[out.length - 1];
    if (last && pos(s.a) <= pos(last.b)) {
      const cut = pos(last.b);
      for (const l of s.lines) if (l.p > cut) last.lines.push(l);
      if (pos(s.b) > cut) last.b = s.b;
      last.live = last.live || s.live;
    } else out.push(s);
  }
  segs = out;
  countLoaded();
}

// ---- Colours ---------------------------------------------------------------
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
const CTRL = /[\x00-\x08\x0b-\x1f]/g;
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
  const style = (fg ? "color:" + fg + ";" : "") + (bg ? "background:" + bg + ";" : "");
  return "<span" + (cls ? ' class="' + cls + '"' : "") + (style ? ' style="' + style + '"' : "") + ">" + esc(text) + "</span>";
}
function html(st, text) {
  if (text.indexOf("\x1b") < 0) return span(st, text.replace(CTRL, ""));
  let out = "", at = 0;
  for (const m of text.matchAll(ESC)) {
    out += span(st, text.slice(at, m.index).replace(CTRL, ""));
    if (m[2] === "m") st = sgr(st, m[1] || "");
    at = m.index + m[0].length;
  }
  return out + span(st, text.slice(at).replace(CTRL, ""));
}
// Columns a line takes on screen (for wrapped rows): escapes and controls take
// none, a tab up to eight.
function width(t) {
  const s = t.indexOf("\x1b") < 0 && !/[\x00-\x1f]/.test(t) ? t : t.replace(ESC, "").replace(/[\x00-\x08\x0a-\x1f]/g, "");
  let w = s.length;
  for (let i = s.indexOf("\t"); i >= 0; i = s.indexOf("\t", i + 1)) w += 7;
  return w;
}

// ---- Sections (GitLab, GitHub Actions, Buildkite) --------------------------
let sections = [], openSecs = [];
const MAX_DEPTH = 32;
const userFold = new Map();
function mark(raw) {
  let m;
  const s = raw.replace(/^\x1b\[0?K/, "");
  // Nothing after the name can fail to match (`[^]*`, no `$`): a title with a
  // CR or U+2028 in it once sent the engine back through every shorter name,
  // quadratic in a 64 KiB line, and a job could freeze its viewers' tabs.
  if ((m = /^section_start:(\d+):([^\[\r\s]+)(?:\[([^\]]*)\])?\r?(?:\x1b\[0?K)?([^]*)/.exec(s)))
    return { k: "start", id: m[2], title: m[4].replace(ESC, "").replace(/[\r\u2028\u2029]/g, "") || m[2], fold: /collapsed=true/.test(m[3] || ""), ts: +m[1] * 1e6 };
  if ((m = /^section_end:(\d+):([^\r\s]+)/.exec(s))) return { k: "end", id: m[2], ts: +m[1] * 1e6 };
  if ((m = /^::group::(.*)$/.exec(raw))) return { k: "start", id: "::group", title: m[1], fold: true };
  if (/^::endgroup::/.test(raw)) return { k: "end", id: "::group" };
  if ((m = /^(---|\+\+\+|~~~) (.+)$/.exec(raw))) return { k: "bk", id: "bk", title: m[2], fold: m[1] !== "+++" };
  return null;
}
function closeSec(sec, ts) {
  sec.end = ts || sec.end || 0;
  if (!sec.user) sec.folded = sec.fold;
}
function section(l) {
  const mk = mark(l.raw);
  if (mk && mk.k === "bk") while (openSecs.length) closeSec(openSecs.pop(), l.ts);
  if (mk && mk.k === "end") {
    const at = openSecs.map((x) => x.id).lastIndexOf(mk.id);
    l.sec = openSecs[openSecs.length - 1] || null;
    if (at >= 0) while (openSecs.length > at) closeSec(openSecs.pop(), mk.ts || l.ts);
    return;
  }
  l.sec = openSecs[openSecs.length - 1] || null;
  l.hdr = false;
  // Past MAX_DEPTH open sections a start is a plain line: a job opening
  // thousands without closing them would make every fold test walk them all.
  if (!mk || openSecs.length >= MAX_DEPTH) return;
  const sec = { i: sections.length, id: mk.id, title: mk.title, fold: mk.fold, folded: false, user: false,
    parent: l.sec, start: mk.ts || l.ts, end: null, at: l.p };
  if (userFold.has(l.p)) { sec.folded = userFold.get(l.p); sec.user = true; }
  sections.push(sec);
  openSecs.push(sec);
  l.sec = sec; l.hdr = true;
}
// Where the job failed stays open; the other sections still open end with it.
function endSections(failed) {
  const last = openSecs[openSecs.length - 1];
  while (openSecs.length) closeSec(openSecs.pop(), 0);
  if (failed) for (let s = last; s; s = s.parent) { s.folded = false; s.user = true; }
}
function hidden(l) {
  for (let s = l.hdr ? l.sec.parent : l.sec; s; s = s.parent) if (s.folded) return true;
  return false;
}
function dur(sec) {
  if (!sec.start) return "";
  if (sec.end === null) return "running";
  return span_(sec.end - sec.start);
}
function span_(us) {
  const s = us / 1e6;
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor(s / 60) % 60 + "m";
}
const ends = [null, null];
function take(l) {
  if (l.note) return;
  l.s = ends[l.e];
  ends[l.e] = endState(ends[l.e], l.t);
  section(l);
}
// Colours and sections again over everything loaded, in order (after lines
// were loaded before others). Colour state does not cross a gap.
function retake() {
  sections = []; openSecs = [];
  let prev = [0, 0];
  for (const s of segs) {
    if (pos(s.a) !== pos(prev)) { ends[0] = ends[1] = null; }
    for (const l of s.lines) take(l);
    prev = s.b;
  }
  if (done) endSections(status !== "succeeded");
}

// ---- Layout ----------------------------------------------------------------
// `items` is what the view shows, in order: lines (not in folded sections)
// and gaps. Without wrapping every item is one row; with wrapping `tops[i]`
// is the rows before item i.
function build() {
  items = [];
  let prev = [0, 0];
  for (const s of segs) {
    const g = between(prev, s.a);
    if (g > 0) items.push({ gap: true, from: prev, to: s.a, n: g });
    for (const l of s.lines) if (inView(l) && !(l.sec && hidden(l))) items.push(l);
    prev = s.b;
  }
  tops = null;
}
function rowsOf(it) {
  if (!wrap || it.gap || it.hdr) return 1;
  if (it.wc !== cols) { it.w = Math.max(1, Math.ceil(width(it.t) / cols)); it.wc = cols; }
  return it.w;
}
function layout() {
  if (!items) build();
  if (wrap && !tops) {
    tops = new Array(items.length + 1);
    tops[0] = 0;
    for (let i = 0; i < items.length; i++) tops[i + 1] = tops[i] + rowsOf(items[i]);
  }
}
// The lines the view shows now (also what the browser tests look at).
function shown() { layout(); return items.filter((x) => !x.gap && !x.note); }
const topOf = (i) => (wrap ? tops[i] : i);
function indexAt(unit) {
  if (!wrap) return Math.max(0, Math.min(items.length - 1, Math.floor(unit)));
  let lo = 0, hi = items.length - 1;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (tops[mid] <= unit) lo = mid; else hi = mid - 1; }
  return lo;
}
const shownPartials = () => partial.filter((pl) => pl && inView(pl));
function size() {
  layout();
  spacer.style.height = ((topOf(items.length) + shownPartials().length) * LH) + "px";
}
// Changes the model while the line at the top of the view stays where it is.
function keepPlace(change) {
  if (!stick) layout();
  if (stick || !items.length) { change(); items = null; schedule(); return; }
  let i = indexAt(logEl.scrollTop / LH);
  while (i < items.length - 1 && items[i].gap) i++;
  const anchor = items[i], off = logEl.scrollTop - topOf(i) * LH;
  change();
  items = null;
  size();
  const j = items.indexOf(anchor);
  if (j >= 0) logEl.scrollTop = topOf(j) * LH + off;
  render();
}
function measure() {
  const probe = document.createElement("div");
  probe.className = "r";
  probe.innerHTML = '<a class="n">0</a>' + (tsMode !== "off" ? '<span class="ts">00:00:00.000</span>' : "") + '<span class="t">' + "0".repeat(100) + "</span>";
  rows.appendChild(probe);
  const t = probe.querySelector(".t");
  charW = t.getBoundingClientRect().width / 100 || 8;
  const gutter = t.getBoundingClientRect().left - probe.getBoundingClientRect().left;
  rows.removeChild(probe);
  const c = Math.max(20, Math.floor((logEl.clientWidth - gutter - 16) / charW));
  if (c !== cols) { cols = c; tops = null; }
}

// ---- Rendering -------------------------------------------------------------
function anchorOf(l) { return view === "combined" ? "L" + l.p : (l.e ? "E" : "O") + l.n; }
function targeted(l) {
  const t = target;
  if (!t || l.note) return false;
  if (t.k === "L") return l.p >= t.n && l.p <= t.m;
  return (t.k === "E") === !!l.e && l.n >= t.n && l.n <= t.m;
}
let hits = new Set();
function stamp(l) {
  if (tsMode === "off") return "";
  let s = "";
  if (l.ts) {
    if (tsMode === "rel" && started) {
      const ms = Math.max(0, Math.round(l.ts / 1000 - started));
      s = "+" + Math.floor(ms / 60000) + ":" + String(Math.floor(ms / 1000) % 60).padStart(2, "0") + "." + String(ms % 1000).padStart(3, "0");
    } else {
      const d = new Date(l.ts / 1000);
      s = d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
    }
  }
  return '<span class="ts">' + s + "</span>";
}
function row(it, i) {
  const h = wrap ? ' style="height:' + rowsOf(it) * LH + 'px"' : "";
  if (it.gap) {
    const top = pos(it.from) === 0;
    const what = top ? fmt(it.n) + " earlier line" + (it.n === 1 ? "" : "s") + " not loaded" : fmt(it.n) + " line" + (it.n === 1 ? "" : "s") + " not loaded";
    const busy = loading ? ' <span class="muted">loading\u2026</span>' : "";
    return '<div class="r gap" data-i="' + i + '"' + h + '><span class="n">\u22ef</span><span class="t">' + what +
      (top ? ' <button type="button" data-g="first">load from the start</button>'
        : ' <button type="button" data-g="down">load ' + fmt(CHUNK) + " after the lines above</button>") +
      ' <button type="button" data-g="up">load ' + fmt(CHUNK) + " before the lines below</button>" + busy + "</span></div>";
  }
  if (it.note) return '<div class="r note"' + h + '><span class="n">\u2026</span><span class="t">' + esc(it.t) + "</span></div>";
  const a = anchorOf(it);
  const cls = "r" + (it.e ? " e" : "") + (targeted(it) ? " hl" : "") + (hits.has((it.e ? "E" : "O") + it.n) ? " m" : "") + (it.hdr ? " h" : "");
  const title = view === "combined" ? ' title="' + (it.e ? "stderr" : "stdout") + " line " + it.n + '"' : "";
  const body = it.hdr
    ? '<span class="fold">' + (it.sec.folded ? "\u25b8" : "\u25be") + "</span>" + esc(it.sec.title) + '<span class="dur">' + dur(it.sec) + "</span>"
    : html(it.s, it.t);
  return '<div class="' + cls + '" id="' + a + '"' + h + (it.hdr ? ' data-s="' + it.sec.i + '"' : "") + '><a class="n" href="#' + a + '"' + title + ">" +
    (view === "combined" ? it.p : it.n) + "</a>" + stamp(it) + '<span class="t">' + body + "</span></div>";
}
function prow(pl) {
  return '<div class="r pv' + (pl.e ? " e" : "") + '" title="the line in progress: not ended by a newline yet"><span class="n">\u2026</span>' +
    stamp({}) + '<span class="t">' + html(ends[pl.e], pl.t) + "</span></div>";
}
function total() {
  const last = segs.length ? segs[segs.length - 1].b : [0, 0];
  const c = pos(last) > pos(endC) ? last : endC;
  return view === "combined" ? pos(c) : view === "stdout" ? c[0] : c[1];
}
function render() {
  dirty = false;
  size();
  if (stick) logEl.scrollTop = logEl.scrollHeight;
  const n = items.length, top = logEl.scrollTop / LH, bottom = top + logEl.clientHeight / LH;
  const first = n ? Math.max(0, indexAt(top) - 20) : 0;
  rows.style.top = (topOf(first) * LH) + "px";
  let h = "", i = first, gapSeen = null;
  for (; i < n && topOf(i) < bottom + 20; i++) {
    const it = items[i];
    if (it.gap && topOf(i) + 1 > top && topOf(i) < bottom) gapSeen = { it: it, y: topOf(i) - top };
    h += row(it, i);
  }
  if (i >= n) for (const pl of shownPartials()) h += prow(pl);
  rows.innerHTML = h;
  const all = total();
  let count = fmt(all) + " line" + (all === 1 ? "" : "s");
  const shownLines = view === "combined" ? perStream[0] + perStream[1] : perStream[view === "stderr" ? 1 : 0];
  if (shownLines < all) count += " (" + fmt(shownLines) + " loaded)";
  $("count").textContent = count;
  $("pause").style.display = stick ? "none" : "block";
  // A gap in view loads the lines next to it: below it when it is in the top
  // half of the view (the reader scrolled up to it), else above it.
  if (gapSeen && !loading) {
    const dir = gapSeen.y < (bottom - top) / 2 ? "up" : "down";
    if (!noFill.has(pos(gapSeen.it.to) + dir)) fill(gapSeen.it, dir, true);
  }
}
function schedule() { if (!dirty) { dirty = true; requestAnimationFrame(render); } }

// ---- Loading ---------------------------------------------------------------
function parseEvents(text) {
  const out = [];
  let pend = [];
  for (const block of text.split("\n\n")) {
    let ev = "message", id = null, data = "";
    for (const ln of block.split("\n")) {
      if (ln.startsWith("event: ")) ev = ln.slice(7);
      else if (ln.startsWith("id: ")) id = ln.slice(4);
      else if (ln.startsWith("data: ")) data += ln.slice(6);
    }
    if (ev === "log" && id) { const l = lineOf(JSON.parse(data), id); out.push(...notesBefore(pend, l), l); pend = []; }
    else if (ev === "gap") pend.push(gapNote(JSON.parse(data)));
  }
  return out;
}
function getLines(q) {
  return fetch(api + "/logs/combined?format=json&" + q + (tq ? "&" + tq : ""))
    .then((r) => { if (r.status === 204) return ""; if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
    .then(parseEvents);
}
// Adds fetched lines (consecutive, in order) to what is loaded.
function insert(list) {
  const ls = list.filter((x) => !x.note);
  if (!ls.length) return;
  const seg = { a: beforeOf(ls[0]), b: ls[ls.length - 1].c, lines: list, live: false };
  keepPlace(() => { merge(seg); retake(); trim(); });
}
// Loads the lines of a gap next to the block below it ("up"), next to the
// block above it ("down"), or from the start of the log ("first"). One request
// at a time: a scroll-driven one is skipped while another runs, a click waits.
let queued = null;
function fill(gap, dir, auto) {
  let q;
  if (dir === "first") q = "at=L1&count=" + CHUNK;
  else if (dir === "down") q = "at=L" + (pos(gap.from) + 1) + "&count=" + Math.min(CHUNK, pos(gap.to) - pos(gap.from));
  else q = "before=" + gap.to[0] + "." + gap.to[1] + "&count=" + Math.min(CHUNK, pos(gap.to) - pos(gap.from));
  const key = pos(gap.to) + dir;
  if (loading) { if (!auto) queued = [gap, dir]; return; }
  loading = true;
  getLines(q).then((list) => { if (!list.length && auto) noFill.add(key); insert(list); })
    .catch((e) => { noFill.add(key); say("Loading lines failed: " + e.message); })
    .finally(loaded_);
}
function loaded_() {
  loading = false;
  if (queued) { const [g, d] = queued; queued = null; fill(g, d, false); }
  schedule();
}
// At most KEEP lines stay loaded: past that a tenth goes, from the end
// farther from what the reader looks at (it becomes a gap row again). When it
// is the live end, new lines start a new segment after the gap.
function trim() {
  if (loaded <= KEEP) return;
  const it = items && items.length ? items[indexAt(logEl.scrollTop / LH)] : null;
  const center = stick || !it ? Infinity : it.gap ? pos(it.to) : it.p;
  let cut = loaded - KEEP + Math.floor(KEEP / 10);
  while (cut > 0 && segs.length) {
    const f = segs[0], l = segs[segs.length - 1];
    const fromEnd = center !== Infinity && pos(l.b) - center > center - pos(f.a);
    const s = fromEnd ? l : f;
    const k = Math.min(cut, s.lines.length);
    if (fromEnd) s.lines.splice(s.lines.length - k, k); else s.lines.splice(0, k);
    cut -= k;
    const rest = s.lines.filter((x) => !x.note);
    if (!rest.length) { segs.splice(fromEnd ? segs.length - 1 : 0, 1); continue; }
    if (fromEnd) { s.b = rest[rest.length - 1].c; s.live = false; } else s.a = beforeOf(rest[0]);
  }
  countLoaded();
}
function say(text) { $("note").textContent = text; }

// ---- Going to a line -------------------------------------------------------
// `#L<n>`: line n of the combined log; `#O<n>`, `#E<n>`: line n of stdout or
// stderr; `#L10-L20` (or `#L10-20`) a range.
function parseHash(h) {
  const m = /^#([LOE])(\d+)(?:-([LOE])?(\d+))?$/.exec(h || "");
  if (!m || (m[3] && m[3] !== m[1])) return null;
  const n = parseInt(m[2], 10), to = m[4] ? parseInt(m[4], 10) : n;
  return { k: m[1], n: Math.min(n, to), m: Math.max(n, to) };
}
function findLine(k, n) {
  for (const s of segs) {
    if (k === "L" && (n <= pos(s.a) || n > pos(s.b))) continue;
    for (const l of s.lines) if (!l.note && (k === "L" ? l.p === n : (k === "E") === !!l.e && l.n === n)) return l;
  }
  return null;
}
function show(l) {
  if (!inView(l)) { view = "combined"; document.querySelector("input[value=combined]").checked = true; }
  for (let s = l.hdr ? l.sec.parent : l.sec; s; s = s.parent) if (s.folded) { s.folded = false; s.user = true; userFold.set(s.at, false); }
  items = null;
  stick = false;
  size();
  const i = items.indexOf(l);
  logEl.scrollTop = Math.max(0, topOf(i) * LH - logEl.clientHeight / 3);
  render();
}
let jumps = 0;
function goTo(hash) {
  const t = parseHash(hash);
  if (!t) return false;
  target = t;
  stick = false;
  const l = findLine(t.k, t.n);
  if (l) { say(""); show(l); return true; }
  const seq = ++jumps, from = Math.max(1, t.n - 50);
  // While it loads, scrolling loads nothing else.
  loading = true;
  getLines("at=" + t.k + from + "&count=" + Math.min(CAP, Math.max(CHUNK, t.m - from + 50))).then((list) => {
    if (seq !== jumps) return;
    insert(list);
    const l2 = findLine(t.k, t.n);
    if (l2) { say(""); show(l2); }
    else if (list.length && list[0].note) {
      // Left out by a size limit (or no longer held here): the notice says so.
      say("Line " + t.k + t.n + " is not kept: " + list[0].t);
      show(list[0]);
    } else say("Line " + t.k + t.n + " is not in this log (yet).");
  }).catch((e) => say("Loading line " + t.k + t.n + " failed: " + e.message))
    .finally(loaded_);
  return true;
}

// ---- Live ------------------------------------------------------------------
function live(d, id) { append(lineOf(d, id)); }
function append(l) {
  lastId = l.c.join(".");
  if (pos(l.c) > pos(endC)) endC = l.c;
  if (partial[l.e] && l.n >= partial[l.e].n) partial[l.e] = null;
  const fresh = notesBefore(notes, l);
  notes = [];
  let seg = segs[segs.length - 1];
  if (!seg || !seg.live) {
    const a = beforeOf(l);
    if (seg && pos(a) <= pos(seg.b)) seg.live = true;
    else {
      keepPlace(() => merge({ a: a, b: a, lines: [], live: true }));
      seg = segs[segs.length - 1];
    }
  }
  if (l.p <= pos(seg.b)) { schedule(); return; } // loaded already by a range request
  for (const x of fresh) seg.lines.push(x);
  seg.lines.push(l);
  seg.b = l.c;
  loaded += 1 + fresh.length;
  perStream[l.e]++;
  take(l);
  if (items && (!wrap || tops) && !fresh.length && inView(l) && !(l.sec && hidden(l)) && !l.hdr) {
    // The common case: one more row at the end.
    items.push(l);
    if (tops) tops.push(tops[tops.length - 1] + rowsOf(l));
  } else items = null;
  if (loaded > KEEP) keepPlace(trim);
  schedule();
}
function badge(st, text) { const b = $("badge"); b.className = "badge " + st; b.textContent = text; }
function statusText(d) {
  if (d.status === "killed" && d.signal) return "killed (" + d.signal + ")";
  if (d.exit_code !== null && d.exit_code !== undefined && d.status !== "succeeded") return d.status + " (exit " + d.exit_code + ")";
  return d.status;
}
function finish(d) {
  if (done) return;
  done = true;
  status = d.status;
  if (es) es.close();
  partial[0] = partial[1] = null;
  badge(d.status, statusText(d));
  endSections(d.status !== "succeeded");
  items = null; schedule();
  meta().then((m) => {
    annotations(m); header(m);
    if (m.status === d.status) badge(m.status, statusText(m));
  }).catch(() => {});
  document.body.dataset.complete = d.status;
}
function connect() {
  const from = lastId ? "after=" + encodeURIComponent(lastId) : "lines=" + tailN;
  es = new EventSource(api + "/logs/combined?follow=true&format=json&" + from + (tq ? "&" + tq : ""));
  es.addEventListener("open", () => { retry = 1000; if (!done && status !== "connecting") badge(status, status); });
  es.addEventListener("log", (ev) => live(JSON.parse(ev.data), ev.lastEventId));
  es.addEventListener("gap", (ev) => notes.push(gapNote(JSON.parse(ev.data))));
  // The job emptied its log: the lines shown are gone and numbers start again.
  // The page starts over with the new log, and says why at its top.
  es.addEventListener("truncated", (ev) => {
    es.close();
    done = true;
    try { sessionStorage.setItem(TRUNCATED, ev.data); } catch (e) { /* private mode: no note */ }
    location.reload();
  });
  es.addEventListener("partial", (ev) => {
    const d = JSON.parse(ev.data), e = d.stream === "stderr" ? 1 : 0;
    partial[e] = { pv: true, e: e, n: d.line, t: d.display !== undefined ? d.display : d.text };
    schedule();
  });
  es.addEventListener("complete", (ev) => finish(JSON.parse(ev.data)));
  es.addEventListener("error", () => {
    if (done) return;
    // The browser tries again by itself; say so rather than "running".
    if (es.readyState === EventSource.CONNECTING) { badge("reconnecting", "reconnecting"); return; }
    es.close();
    recover();
  });
}
// The stream closed for good (a 204 because the job ended while the server was
// away, or an error answer): ask the server what became of the job.
function recover() {
  badge("reconnecting", "reconnecting");
  meta().then((m) => {
    if (m.status === "running") { status = "running"; setTimeout(connect, retry); return; }
    // Ended: whatever is left after the last line seen, then the final status.
    return getLines((lastId ? "after=" + lastId : "lines=" + tailN) + "&count=" + CAP).then((list) => {
      for (const x of list) { if (x.note) notes.push(x); else append(x); }
      header(m);
      finish({ status: m.status, exit_code: m.exit_code, signal: m.signal });
    });
  }).catch((e) => {
    // The server's answer about the job itself (409: its files are damaged;
    // 404: it is gone) will not change by asking again: say it and stop.
    if (e.status === 409 || e.status === 404) {
      done = true;
      badge("damaged", e.status === 409 ? "damaged" : "gone");
      say(e.message);
      document.body.dataset.complete = "damaged";
      return;
    }
    retry = Math.min(retry * 2, 10000); setTimeout(recover, retry);
  });
}

// ---- Search ----------------------------------------------------------------
let found = [], at = -1, findSeq = 0, lastQ = "";
function showHit() {
  const f = found[at];
  $("hits").textContent = found.total ? (at + 1) + "/" + fmt(found.total) + (found.total > found.length ? " (first " + fmt(found.length) + ")" : "") : "no matches";
  if (f) goTo("#" + (f.stream === "stderr" ? "E" : "O") + f.line);
}
function find(q) {
  const seq = ++findSeq;
  if (!q) { found = []; hits = new Set(); $("hits").textContent = ""; schedule(); return; }
  const stream = view === "combined" ? "both" : view;
  fetch(api + "/search?limit=1000&stream=" + stream + "&q=" + encodeURIComponent(q) + (tq ? "&" + tq : ""))
    .then((r) => r.json()).then((v) => {
      if (seq !== findSeq) return;
      found = v.matches || []; found.total = v.total || 0; at = found.length ? 0 : -1;
      hits = new Set(found.map((f) => (f.stream === "stderr" ? "E" : "O") + f.line));
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

// ---- Header, annotations, controls -----------------------------------------
function annotations(m) {
  $("ann").innerHTML = (m.annotations || []).map((a) => {
    const h = (a.stream === "stderr" ? "E" : "O") + a.log_line;
    const where = a.file ? " " + esc(a.file) + (a.line ? ":" + a.line : "") : "";
    return '<li class="' + esc(a.level) + '"><a href="#' + h + '">' + esc(a.level) + where + "</a> " + esc(a.title ? a.title + ": " : "") + esc(a.message) + "</li>";
  }).join("");
}
let ended = 0;
function header(m) {
  $("cmd").textContent = (m.command || []).join(" ");
  $("cmd").title = (m.command || []).join(" ");
  started = Date.parse(m.started_at) || started;
  ended = m.duration_ms !== null && m.duration_ms !== undefined ? started + m.duration_ms : 0;
  $("host").textContent = m.hostname ? "on " + m.hostname : "";
  if (started) $("when").textContent = "started " + new Date(started).toLocaleString();
  $("when").title = m.started_at || "";
  tick();
}
function tick() {
  if (!started) return;
  const to = ended || (done ? 0 : Date.now());
  $("dur").textContent = to ? span_((to - started) * 1000) + (ended ? "" : " so far") : "";
}
setInterval(() => { if (!ended && !done) tick(); }, 1000);
function meta() {
  return fetch(api + (tq ? "?" + tq : "")).then((r) => {
    if (r.ok) return r.json();
    // The reason the server gave, with the status for the caller.
    return r.json().catch(() => ({})).then((v) => {
      const e = new Error(v.error || "HTTP " + r.status);
      e.status = r.status;
      throw e;
    });
  });
}
logEl.addEventListener("scroll", () => {
  const bottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 2 * LH;
  if (bottom !== stick) stick = bottom;
  schedule();
});
rows.addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-g]");
  if (b) {
    const it = items[+b.closest(".r").dataset.i];
    if (it && it.gap) fill(it, b.dataset.g, false);
    return;
  }
  const r = ev.target.closest(".r.h");
  if (!r || ev.target.closest("a")) return;
  const sec = sections[+r.dataset.s];
  sec.folded = !sec.folded; sec.user = true; userFold.set(sec.at, sec.folded);
  items = null; schedule();
});
$("pause").addEventListener("click", () => { stick = true; target = null; schedule(); });
window.addEventListener("hashchange", () => goTo(location.hash));
window.addEventListener("resize", () => { if (wrap) { measure(); items = null; } schedule(); });
for (const r of document.querySelectorAll("input[name=view]")) {
  r.addEventListener("change", () => { keepPlace(() => { view = r.value; }); });
}
$("wrap").addEventListener("change", () => {
  keepPlace(() => { wrap = $("wrap").checked; logEl.classList.toggle("wrap", wrap); if (wrap) measure(); });
});
$("ts").addEventListener("change", () => {
  keepPlace(() => { tsMode = $("ts").value; logEl.classList.toggle("stamped", tsMode !== "off"); if (wrap) measure(); });
});
for (const a of document.querySelectorAll("a.raw, h1 a")) a.href += tq ? "?" + tq : "";

// ---- Start -----------------------------------------------------------------
// `?lines=N` asks for a longer tail; more than CAP would be dropped by the page
// anyway, so it is capped, and the page says so.
let tailN = TAIL;
const askedLines = parseInt(params.get("lines"), 10);
if (askedLines > 0) {
  tailN = Math.min(askedLines, CAP);
  if (askedLines > CAP) say("Showing at most the last " + fmt(CAP) + " lines at first (asked for " + fmt(askedLines) + "); earlier ones load as you scroll up.");
}
meta().then((m) => {
  header(m);
  annotations(m);
  if (m.status === "running" && !done) { status = "running"; badge("running", "running"); }
}).catch(() => {});
if (parseHash(location.hash)) goTo(location.hash);
try {
  const t = sessionStorage.getItem(TRUNCATED);
  if (t) {
    sessionStorage.removeItem(TRUNCATED);
    const d = JSON.parse(t);
    notes.push({ note: true, e: d.stream === "stderr" ? 1 : 0, t: "[" + d.message + "]", p: 0 });
  }
} catch (e) { /* no storage: no note */ }
connect();
