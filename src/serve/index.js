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
    started_at: m.started_at, duration_ms: m.duration_ms, command: m.command || [], error: m.error,
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
  // A damaged job has no command: why it is damaged stands in its place.
  const cmd = j.error ? j.error : j.command.join(" ");
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
