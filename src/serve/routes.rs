//! The endpoints of SPEC §5: which path is which route (pure, ids validated
//! before any file is touched) and the handlers that answer each one from the
//! store: event streams, raw logs with `Range`, Jenkins/LAVA-style polling, the
//! job list (paged, filtered) and metadata, the job events stream (fed by the
//! server's `board`), health, and the web pages.

use super::follow::{parse_cursor, parse_event_id, Follower, StartAt, Which};
use super::http::{parse_range, Range, Reject, Request};
use super::page;
use super::sse::{self, utf8_prefix, Format};
use crate::metadata::{Metadata, Status};
use crate::reader::Anchor;
use crate::search;
use crate::store::{self, JobId, LogStore, OmitCause, OmittedRange, RawLog, Stream};
use anyhow::Result;
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of log one polling response carries (`log-tail`, `progressiveText`):
/// big enough that a client catches up with a fast job in few requests, small
/// enough to build in memory (SPEC §5 "content is bounded per response").
pub const MAX_POLL_BYTES: usize = 512 * 1024;

/// Most jobs `GET /api/job_runs` returns: each costs a metadata read, done inside
/// the event loop, so the list must stay cheap however many jobs the root holds.
pub const MAX_LIST: usize = 10_000;

/// Most metadata files one job list reads per turn of the event loop, so a
/// filter that matches few of many jobs shares the loop like everyone else.
const LIST_READS_PER_TURN: usize = 64;

/// How long the newest-first order of the jobs is reused without checking the
/// root again: within it, a thousand clients listing at once cost one sort.
const LIST_ORDER_TTL: Duration = Duration::from_secs(1);

/// A route, with its job id already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Index,
    JobPage(JobId),
    Healthz,
    List,
    Job(JobId),
    Events(JobId, Which),
    Raw(JobId, Stream),
    ProgressiveText(JobId, Stream),
    LogTail(JobId),
    Search(JobId),
    /// `GET /api/events`: job events for the job list (see `board`).
    JobEvents,
    NotFound,
}

/// Maps decoded path segments to a route. A segment in an id's place must be a
/// valid job id (SPEC §2), else 400: nothing outside the root is ever named.
pub fn route(segments: &[String]) -> Result<Route, Reject> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let id = |i: usize| {
        JobId::parse(s[i]).map_err(|e| Reject {
            status: 400,
            reason: e,
        })
    };
    Ok(match s.as_slice() {
        [] => Route::Index,
        ["healthz"] => Route::Healthz,
        ["job_runs", _] => Route::JobPage(id(1)?),
        ["api", "job_runs"] => Route::List,
        ["api", "events"] => Route::JobEvents,
        ["api", "job_runs", _] => Route::Job(id(2)?),
        ["api", "job_runs", _, "log-tail"] => Route::LogTail(id(2)?),
        ["api", "job_runs", _, "search"] => Route::Search(id(2)?),
        ["api", "job_runs", _, "logs", w] => match Which::parse(w) {
            Some(which) => Route::Events(id(2)?, which),
            None => Route::NotFound,
        },
        ["api", "job_runs", _, "logs", st, "raw"] => match Stream::from_name(st) {
            Some(stream) => Route::Raw(id(2)?, stream),
            None => Route::NotFound,
        },
        ["api", "job_runs", _, "logs", st, "progressiveText"] => match Stream::from_name(st) {
            Some(stream) => Route::ProgressiveText(id(2)?, stream),
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    })
}

/// A response body.
pub enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `start`, sent in pieces as the client reads.
    File {
        file: Box<dyn RawLog>,
        start: u64,
        len: u64,
    },
    /// An event stream, fed by the server as the log grows.
    Events(Box<Follower>),
    /// The job events stream, fed by the server's board of jobs.
    Feed,
    /// A body made piece by piece as the client reads it, ended by closing
    /// the connection: only what one turn makes is ever held for a client.
    Stream(Box<dyn Produce>),
    /// No body and no Content-Length (204).
    Nothing,
}

/// A response: status, headers (Content-Length and Connection are added when it
/// is sent) and body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Response {
    fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", content_type.to_string()),
                ("Cache-Control", "no-cache".to_string()),
            ],
            body: Body::Bytes(body),
        }
    }

    /// A 200 whose body is made as the client reads it.
    fn stream(content_type: &str, body: impl Produce + 'static) -> Response {
        Response {
            body: Body::Stream(Box::new(body)),
            ..Response::new(200, content_type, Vec::new())
        }
    }

    /// A JSON document.
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    /// An error, as JSON under `/api` and as text elsewhere.
    pub fn error(status: u16, msg: &str, api: bool) -> Response {
        if api {
            Response::json(status, &json!({ "error": msg }))
        } else {
            Response::new(
                status,
                "text/plain; charset=utf-8",
                format!("{msg}\n").into_bytes(),
            )
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// A response body made as the client reads it (issue point 8: a hundred
/// clients that ask for the list of 10,000 jobs and never read must not pin a
/// copy each).
pub trait Produce: Send {
    /// Appends the next piece of the body to `out`, about `want` bytes or
    /// less; false once the body is complete.
    fn produce(&mut self, out: &mut Vec<u8>, want: usize) -> Result<bool>;
}

/// The jobs of the root, newest first, shared by every list being sent.
#[derive(Default)]
pub struct JobOrder {
    ids: Option<Arc<[JobId]>>,
    built: Option<Instant>,
    /// Modification time of `job_runs/` when built: a job created or
    /// removed since changes it.
    version: Option<u64>,
    /// Each listed job's rank ([`LogStore::rank_ms`], from `started_at`,
    /// which never changes once written): a rebuild reads the metadata of new
    /// jobs only, so a root of 10,000 jobs costs one directory listing per
    /// new job, not 10,000 reads.
    started: HashMap<JobId, i64>,
}

/// What the handlers need: the store, the one job served when the server runs
/// inside a wrapper (`None` for `logwrap serve`: every job in the root), and
/// the shared order of the jobs.
pub struct Ctx<'a> {
    pub store: &'a Arc<dyn LogStore>,
    pub only: Option<&'a JobId>,
    pub order: &'a RefCell<JobOrder>,
}

impl Ctx<'_> {
    fn visible(&self, id: &JobId) -> bool {
        self.only.is_none_or(|o| o == id) && self.store.job_exists(id)
    }
}

/// A job's state as followers need it, read in this order so nothing written
/// before the end can be missed: first whether it has ended, then how far its
/// output has come.
pub struct JobState {
    /// The data of `event: complete` once the job has ended (or was abandoned).
    pub complete: Option<serde_json::Value>,
    /// The store's [`Progress`](crate::store::Progress) of the job: readers
    /// hand out a line only once the store has all of it, so a follower is
    /// woken when this changes.
    pub sizes: [u64; 4],
    /// Which run of the id this is (see [`instance`]).
    pub instance: Option<String>,
}

/// What tells one run of a job id from another that took the id after it
/// was deleted: when and where its wrapper started.
pub fn instance(m: &Metadata) -> String {
    format!("{} {} {}", m.started_at, m.hostname, m.pid)
}

/// Reads a job's [`JobState`].
pub fn job_state(store: &dyn LogStore, id: &JobId) -> Result<JobState> {
    let meta = store.live_metadata(id)?;
    let complete = meta.status.is_finished().then(|| complete_data(&meta));
    Ok(JobState {
        complete,
        sizes: store.progress(id),
        instance: Some(instance(&meta)),
    })
}

/// The data of `event: complete` (SPEC §5).
pub fn complete_data(m: &Metadata) -> serde_json::Value {
    let mut data = json!({
        "exit_code": m.exit_code,
        "duration_ms": m.duration_ms,
        "status": m.status.as_str(),
    });
    if let Some(sig) = &m.signal {
        // The signal that ended the job, for the page's badge (issue 11,
        // point 4).
        data["signal"] = json!(sig);
    }
    data
}

/// Answers a request (its token already checked).
pub fn handle(ctx: &Ctx, req: &Request) -> Response {
    let api = req.segments.first().is_some_and(|s| s == "api");
    let route = match route(&req.segments) {
        Ok(r) => r,
        Err(rej) => return Response::error(rej.status, &rej.reason, api),
    };
    let id = match &route {
        Route::JobPage(id)
        | Route::Job(id)
        | Route::Events(id, _)
        | Route::Raw(id, _)
        | Route::ProgressiveText(id, _)
        | Route::LogTail(id)
        | Route::Search(id) => Some(id.clone()),
        _ => None,
    };
    if let Some(id) = &id {
        if !ctx.visible(id) {
            return Response::error(404, &format!("no job run {id}"), api);
        }
    }
    let result = match route {
        Route::Healthz => Ok(Response::new(
            200,
            "text/plain; charset=utf-8",
            b"ok\n".to_vec(),
        )),
        Route::Index => Ok(index()),
        Route::JobPage(id) => Ok(Response::new(
            200,
            "text/html; charset=utf-8",
            page::job_page(&id).into_bytes(),
        )
        .header("Content-Security-Policy", page::CSP)),
        Route::List => list(ctx, req),
        Route::Job(id) => job(ctx, &id),
        Route::Events(id, which) => events(ctx, req, &id, which),
        Route::Raw(id, stream) => raw(ctx, req, &id, stream),
        Route::LogTail(id) => poll(ctx, req, &id, None, true),
        Route::ProgressiveText(id, stream) => poll(ctx, req, &id, Some(stream), false),
        Route::Search(id) => search(ctx, req, &id),
        Route::JobEvents => Ok(Response {
            status: 200,
            headers: vec![
                ("Content-Type", "text/event-stream; charset=utf-8".into()),
                ("Cache-Control", "no-cache".into()),
                ("X-Accel-Buffering", "no".into()),
            ],
            body: Body::Feed,
        }),
        Route::NotFound => Ok(Response::error(404, "not found", api)),
    };
    result.unwrap_or_else(|e| {
        // 409: the request is fine, the job's files are not (issue 8).
        let damaged = |why: String| {
            let job = id.as_ref().map(JobId::as_str).unwrap_or("?");
            Response::error(409, &format!("job {job}: {why}"), api)
        };
        if let Some(d) = store::damaged_reason(&e) {
            // The file is named relative to the job, never by its path on
            // the server.
            let name = d.path.file_name().unwrap_or_default().to_string_lossy();
            return damaged(format!(
                "{name} {}; logwrap reads only regular files in a job directory",
                d.reason
            ));
        }
        if e.chain().any(|c| c.is::<serde_json::Error>()) {
            // A job file that does not parse (metadata.json the job rewrote):
            // damaged as well, as `ls` and the job list call it, not a fault
            // of the server.
            return damaged(public_error(ctx, &e));
        }
        if store::is_not_found(&e) {
            return Response::error(404, &public_error(ctx, &e), api);
        }
        match e.downcast::<Reject>() {
            Ok(rej) => Response::error(rej.status, &rej.reason, api),
            Err(e) => Response::error(500, &public_error(ctx, &e), api),
        }
    })
}

/// An error as a client may read it: files are named within the store,
/// never by where the store is on the server.
fn public_error(ctx: &Ctx, e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let location = ctx.store.location();
    if location.is_empty() {
        return text;
    }
    text.replace(&format!("{location}/"), "")
        .replace(&location, "the store")
}

/// Fills `buf` from `log` at `offset`; an error if the log is shorter.
fn read_exact_at(log: &dyn RawLog, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match log.read_at(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for Reject {}

fn bad(reason: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Reject {
        status: 400,
        reason: reason.into(),
    })
}

fn number(req: &Request, name: &str) -> Result<Option<u64>> {
    req.param(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{name} must be a non-negative integer, not {v:?}")))
        })
        .transpose()
}

fn flag(req: &Request, name: &str) -> Result<bool> {
    match req.param(name) {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("" | "true" | "1" | "yes") => Ok(true),
        Some(v) => Err(bad(format!("{name} must be true or false, not {v:?}"))),
    }
}

/// The ids of the jobs in view, newest first (by rank, see
/// [`LogStore::rank_ms`], then id), as `ls` orders them. The
/// order is built once and shared (see [`LIST_ORDER_TTL`]); only ids are kept,
/// each job's metadata is read when its turn to be sent comes.
fn ordered_ids(ctx: &Ctx) -> Result<Arc<[JobId]>> {
    if let Some(id) = ctx.only {
        return Ok(Arc::from(vec![id.clone()]));
    }
    let version = ctx.store.list_version();
    let mut order = ctx.order.borrow_mut();
    if let (Some(ids), Some(built)) = (&order.ids, order.built) {
        if built.elapsed() < LIST_ORDER_TTL && version.is_some() && order.version == version {
            return Ok(ids.clone());
        }
    }
    let mut keyed: Vec<(i64, JobId)> = Vec::new();
    let mut complete = true;
    let mut started = HashMap::new();
    for id in ctx.store.job_ids()? {
        let known = order.started.remove(&id);
        let at = match known {
            Some(at) => at,
            None => match ctx.store.metadata(&id) {
                Ok(m) => ctx.store.rank_ms(&id, Some(&m.started_at)),
                // A job being created has no metadata for a moment; it is
                // simply not listed, and this order is not kept for the next
                // request.
                Err(e) if store::is_not_found(&e) => {
                    complete = false;
                    continue;
                }
                // A damaged job is listed, as `ls` lists it, where its
                // directory's time puts it (`LogStore::list_jobs`).
                Err(_) => ctx.store.rank_ms(&id, None),
            },
        };
        started.insert(id.clone(), at);
        keyed.push((at, id));
    }
    keyed.sort_by(|a, b| b.cmp(a));
    let ids: Arc<[JobId]> = keyed.into_iter().map(|(_, id)| id).collect();
    *order = JobOrder {
        ids: complete.then(|| ids.clone()),
        built: complete.then(Instant::now),
        version: if complete { version } else { None },
        started,
    };
    Ok(ids)
}

/// Longest `q` of the job list: ids are at most 128 bytes, and a command
/// worth finding is found by a shorter piece of it.
const MAX_QUERY: usize = 1024;

/// Which jobs a list shows: `status=` and `q=` (a case-insensitive piece of
/// the id or of the command line).
struct ListFilter {
    status: Option<Status>,
    /// Only damaged jobs (`status=damaged`, as `ls --status damaged`).
    damaged: bool,
    /// Lowercased.
    q: Option<String>,
}

impl ListFilter {
    fn is_none(&self) -> bool {
        self.status.is_none() && !self.damaged && self.q.is_none()
    }

    fn matches(&self, m: &Metadata) -> bool {
        if self.damaged || self.status.is_some_and(|s| m.status != s) {
            return false;
        }
        let Some(q) = &self.q else {
            return true;
        };
        m.job_run_id.to_lowercase().contains(q.as_str())
            || m.command.join(" ").to_lowercase().contains(q.as_str())
    }

    /// Whether a damaged job `id` is shown: it has no status or command of
    /// its own, only its id.
    fn matches_damaged(&self, id: &JobId) -> bool {
        self.status.is_none()
            && self
                .q
                .as_ref()
                .is_none_or(|q| id.as_str().to_lowercase().contains(q.as_str()))
    }
}

/// A job list entry for a job whose metadata.json cannot be read, as `ls
/// --json` gives it: its id, status `damaged` and why. The file is named
/// relative to the job, never by its path on the server.
fn damaged_entry(id: &JobId, e: &anyhow::Error) -> serde_json::Value {
    let why = match store::damaged_reason(e) {
        Some(d) => d.short(),
        None => format!("metadata.json cannot be read: {}", e.root_cause()),
    };
    json!({
        "job_run_id": id.as_str(),
        "status": crate::logs::DAMAGED,
        "error": why,
    })
}

/// `GET /api/job_runs`: a JSON array of metadata (live status and sizes),
/// newest first, from the `offset`-th match, made a few jobs at a time as the
/// client reads.
struct JobList {
    store: Arc<dyn LogStore>,
    ids: Arc<[JobId]>,
    next: usize,
    filter: ListFilter,
    /// Matches still to pass over before the first one sent.
    skip: usize,
    left: usize,
    sent: usize,
    started: bool,
}

impl Produce for JobList {
    fn produce(&mut self, out: &mut Vec<u8>, want: usize) -> Result<bool> {
        if !self.started {
            self.started = true;
            out.push(b'[');
        }
        let mut reads = 0;
        while out.len() < want && reads < LIST_READS_PER_TURN && self.left > 0 {
            let Some(id) = self.ids.get(self.next) else {
                break;
            };
            self.next += 1;
            reads += 1;
            let entry = match self.store.current_metadata(id) {
                Ok(m) if self.filter.matches(&m) => serde_json::to_value(&m)?,
                Ok(_) => continue,
                // Removed since the order was made (gc): simply not listed.
                Err(e) if store::is_not_found(&e) => continue,
                Err(e) if self.filter.matches_damaged(id) => damaged_entry(id, &e),
                Err(_) => continue,
            };
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            out.extend_from_slice(if self.sent == 0 { b"\n" } else { b",\n" });
            serde_json::to_writer_pretty(&mut *out, &entry)?;
            self.sent += 1;
            self.left -= 1;
        }
        if self.left == 0 || self.next >= self.ids.len() {
            out.extend_from_slice(b"\n]\n");
            return Ok(false);
        }
        Ok(true)
    }
}

/// `GET /api/job_runs/{id}`: the job's live metadata, plus `children`, the ids
/// of the jobs that ran inside it, in the order they started (issue 13).
fn job(ctx: &Ctx, id: &JobId) -> Result<Response> {
    let meta = ctx.store.current_metadata(id)?;
    let children: Vec<String> = crate::nest::children(ctx.store.as_ref(), id)?
        .iter()
        .map(JobId::to_string)
        .collect();
    let mut doc = serde_json::to_value(&meta).unwrap_or_default();
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("children".into(), json!(children));
    }
    Ok(Response::json(200, &doc))
}

fn list(ctx: &Ctx, req: &Request) -> Result<Response> {
    let damaged = req.param("status") == Some(crate::logs::DAMAGED);
    let status = match req.param("status") {
        None | Some("") => None,
        Some(_) if damaged => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| bad(format!("unknown status {s:?}")))?),
    };
    let q = match req.param("q") {
        None | Some("") => None,
        Some(q) if q.len() > MAX_QUERY => {
            return Err(bad(format!("q is longer than {MAX_QUERY} bytes")))
        }
        Some(q) => Some(q.to_lowercase()),
    };
    let filter = ListFilter { status, damaged, q };
    let limit = number(req, "limit")?.map_or(MAX_LIST, |n| (n as usize).min(MAX_LIST));
    let offset = usize::try_from(number(req, "offset")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let ids = ordered_ids(ctx)?;
    // Without a filter every job matches: the offset is a position in the
    // order, passed over without reading a thing.
    let (next, skip) = if filter.is_none() {
        (offset.min(ids.len()), 0)
    } else {
        (0, offset)
    };
    let total = filter.is_none().then_some(ids.len());
    let body = JobList {
        store: Arc::clone(ctx.store),
        ids,
        next,
        filter,
        skip,
        left: limit,
        sent: 0,
        started: false,
    };
    let mut resp = Response::stream("application/json", body);
    if let Some(n) = total {
        resp = resp.header("X-Total-Count", n.to_string());
    }
    if let Some(cut) = ctx.store.list_cut() {
        // Jobs were left out of the list (a store listing at most so many):
        // said, as `ls` says it, in words fit for a header.
        let words: String = cut
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
            .collect();
        resp = resp.header("X-List-Cut", words);
    }
    Ok(resp)
}

/// `GET /`: the job list page, which loads its jobs from the API.
fn index() -> Response {
    Response::new(
        200,
        "text/html; charset=utf-8",
        page::index_page().into_bytes(),
    )
    .header("Content-Security-Policy", page::CSP)
}

fn events(ctx: &Ctx, req: &Request, id: &JobId, which: Which) -> Result<Response> {
    let follow = flag(req, "follow")?;
    let format = match req.param("format") {
        None | Some("" | "text") => Format::Text,
        Some("json") => Format::Json,
        Some(f) => return Err(bad(format!("format must be text or json, not {f:?}"))),
    };
    let count = match number(req, "count")? {
        Some(0) => return Err(bad("count must be at least 1")),
        Some(k) => Some(k.min(MAX_COUNT)),
        None => None,
    };
    let state = job_state(ctx.store.as_ref(), id)?;
    let resume = req
        .header("last-event-id")
        .filter(|v| !v.trim().is_empty())
        .map(|v| ("Last-Event-ID", v))
        .or_else(|| req.param("after").map(|v| ("after", v)));
    let event_id = |what: &str, v: &str| {
        parse_event_id(which, v)
            .ok_or_else(|| bad(format!("{what} {v:?} is not an event id of this stream")))
    };
    let from = if let Some((what, v)) = resume {
        event_id(what, v)?
    } else if let Some(v) = req.param("before") {
        if follow {
            return Err(bad("before= gives lines already written: it cannot follow"));
        }
        let cursor = parse_cursor(which, v)
            .ok_or_else(|| bad(format!("before {v:?} is not an event id of this stream")))?;
        StartAt::Before(cursor, count.unwrap_or(BEFORE_COUNT))
    } else if let Some(v) = req.param("at") {
        let done = state.complete.is_some();
        anchor_start(ctx.store.as_ref(), id, which, v, done)?
    } else {
        match (number(req, "since")?, number(req, "lines")?) {
            (Some(n), _) => StartAt::Line(n.max(1)),
            (None, Some(n)) => StartAt::Tail(n),
            (None, None) => StartAt::Line(1),
        }
    };
    let mut f = Follower::open(
        ctx.store.as_ref(),
        id,
        which,
        from,
        follow,
        format,
        state.sizes,
    )?;
    if let Some(k) = count {
        f.limit(k);
    }
    f.instance = state.instance.clone();
    if resume.is_some() && state.complete.is_some() && f.at_end(true)? {
        // A reconnect to an ended job with nothing left: 204 tells EventSource to
        // stop reconnecting.
        return Ok(Response {
            status: 204,
            headers: vec![("Cache-Control", "no-cache".into())],
            body: Body::Nothing,
        });
    }
    Ok(Response {
        status: 200,
        headers: vec![
            ("Content-Type", "text/event-stream; charset=utf-8".into()),
            ("Cache-Control", "no-cache".into()),
            ("X-Accel-Buffering", "no".into()),
        ],
        body: Body::Events(Box::new(f)),
    })
}

/// Most `log` events one request asks for with `?count=K`; larger counts are
/// cut to it. A page loads a screenful or a few thousand lines at a time; a
/// million in one answer would only be dropped by the browser (issue 11,
/// point 3).
pub const MAX_COUNT: u64 = 10_000;

/// Lines `?before=ID` gives without `count`.
pub const BEFORE_COUNT: u64 = 1_000;

/// Where `?at=ANCHOR` starts: `L<n>` the n-th line of the combined log
/// (arrival order), `O<n>` stdout line n, `E<n>` stderr line n. On a stream
/// endpoint `L<n>` and that stream's letter mean its line n; on combined the
/// start is the cursor of the lines merged before that line.
fn anchor_start(
    store: &dyn LogStore,
    id: &JobId,
    which: Which,
    v: &str,
    done: bool,
) -> Result<StartAt> {
    let wrong = || {
        bad(format!(
            "at must be L<n>, O<n> or E<n> (n from 1), not {v:?}"
        ))
    };
    let (letter, n) = v.split_at_checked(1).ok_or_else(wrong)?;
    let n: u64 = n.parse().map_err(|_| wrong())?;
    if n == 0 {
        return Err(wrong());
    }
    let anchor = match letter {
        "L" => Anchor::Merged(n),
        "O" => Anchor::Line(Stream::Stdout, n),
        "E" => Anchor::Line(Stream::Stderr, n),
        _ => return Err(wrong()),
    };
    match (which, anchor) {
        (Which::Combined, a) => {
            let [o, e] = store.merged_before(id, a, done)?;
            Ok(StartAt::After(o, e))
        }
        (Which::One(_), Anchor::Merged(n)) => Ok(StartAt::Line(n)),
        (Which::One(s), Anchor::Line(t, n)) if s == t => Ok(StartAt::Line(n)),
        (Which::One(s), _) => Err(bad(format!(
            "at={v} names a line of the other stream; on {} use L<n> or {}<n>",
            s.name(),
            if s == Stream::Stdout { "O" } else { "E" }
        ))),
    }
}

fn raw(ctx: &Ctx, req: &Request, id: &JobId, stream: Stream) -> Result<Response> {
    let file = ctx.store.open_raw(id, stream)?;
    let size = file.len()?;
    let base = |status: u16| Response {
        status,
        headers: vec![
            ("Content-Type", "text/plain; charset=utf-8".into()),
            ("Cache-Control", "no-cache".into()),
            ("Accept-Ranges", "bytes".into()),
            (
                "Content-Disposition",
                format!("inline; filename=\"{id}.{}.log\"", stream.name()),
            ),
        ],
        body: Body::Nothing,
    };
    let range = parse_range(req.header("range"), size);
    // Bytes a Redis source no longer holds (issue 10): the notice in their
    // place, never an error halfway through the body nor a silent hole. A
    // size limit's gap reads as zeros, as the file on disk does.
    let trimmed = match file.omitted_range()? {
        Some(gap) if gap.cause == OmitCause::Trimmed => Some(gap),
        _ => None,
    };
    if let Some(gap) = trimmed {
        let notice = omitted_notice(ctx, id, stream, gap).into_bytes();
        match range {
            Range::Full => {
                return Ok(Response {
                    body: Body::Stream(Box::new(Prefixed {
                        head: notice,
                        file,
                        pos: gap.end,
                        end: size,
                    })),
                    ..base(200)
                });
            }
            Range::Part(a, _) if a < gap.end => {
                return Ok(Response {
                    body: Body::Bytes(notice),
                    ..base(416)
                }
                .header("Content-Range", format!("bytes */{size}")));
            }
            _ => {}
        }
    }
    Ok(match range {
        Range::Full => Response {
            body: Body::File {
                file,
                start: 0,
                len: size,
            },
            ..base(200)
        },
        Range::Part(a, b) => Response {
            body: Body::File {
                file,
                start: a,
                len: b - a,
            },
            ..base(206)
        }
        .header("Content-Range", format!("bytes {a}-{}/{size}", b - 1)),
        Range::Unsatisfiable => Response {
            body: Body::Bytes(Vec::new()),
            ..base(416)
        }
        .header("Content-Range", format!("bytes */{size}")),
    })
}

/// A raw log whose start a Redis source trimmed: the notice, then the bytes
/// still held, a file piece at a time.
struct Prefixed {
    head: Vec<u8>,
    file: Box<dyn RawLog>,
    pos: u64,
    end: u64,
}

impl Produce for Prefixed {
    fn produce(&mut self, out: &mut Vec<u8>, want: usize) -> Result<bool> {
        out.append(&mut self.head);
        if self.pos < self.end {
            let n = (self.end - self.pos).min(want.max(MIN_TAIL_READ) as u64) as usize;
            let at = out.len();
            out.resize(at + n, 0);
            read_exact_at(self.file.as_ref(), &mut out[at..], self.pos)?;
            self.pos += n as u64;
        }
        Ok(self.pos < self.end)
    }
}

/// The line said in place of bytes that are not there: the size limit's
/// words, or for bytes a Redis source trimmed, their range and where the
/// full log still is (the origin's `tail_url`).
fn omitted_notice(ctx: &Ctx, id: &JobId, stream: Stream, gap: OmittedRange) -> String {
    match gap.cause {
        OmitCause::SizeLimit => {
            format!("[logwrap: {}]\n", sse::gap_message(stream, gap.omitted))
        }
        OmitCause::Trimmed => {
            let tail_url = ctx.store.metadata(id).ok().and_then(|m| m.tail_url);
            format!(
                "[logwrap: bytes {}-{} ({} lines) of {} are no longer in Redis (trimmed by \
                 --ship-maxlen); the full log is on the job's machine{}]\n",
                gap.start,
                gap.end - 1,
                gap.omitted.omitted_lines,
                stream.name(),
                match &tail_url {
                    Some(url) => format!(": {url}"),
                    None => " (it gave no tail_url)".to_string(),
                }
            )
        }
    }
}

/// `log-tail` (JSON, `stream` from the query) and `progressiveText` (raw text,
/// stream from the path): the bytes from `start`, at most [`MAX_POLL_BYTES`], cut
/// on a UTF-8 character boundary, and the offset to ask for next.
fn poll(
    ctx: &Ctx,
    req: &Request,
    id: &JobId,
    stream: Option<Stream>,
    as_json: bool,
) -> Result<Response> {
    let stream = match stream {
        Some(s) => s,
        None => match req.param("stream") {
            None | Some("" | "stdout") => Stream::Stdout,
            Some("stderr") => Stream::Stderr,
            Some(s) => return Err(bad(format!("stream must be stdout or stderr, not {s:?}"))),
        },
    };
    let start = number(req, "start")?.unwrap_or(0);
    // Whether the job has ended is read before the size, so "finished" never
    // comes with bytes still unread.
    let state = job_state(ctx.store.as_ref(), id)?;
    let file = ctx.store.open_raw(id, stream)?;
    let size = file.len()?;
    // A size limit's gap (issue 12): the bytes before it are answered up to its
    // start, a start inside it gets the notice in their place and the offset
    // past it, so the pieces still concatenate to the log as readers show it.
    let (piece_size, complete) = match file.omitted_range()? {
        Some(gap) if start >= gap.start && start < gap.end => {
            let notice = omitted_notice(ctx, id, stream, gap);
            return Ok(gap_piece(
                notice,
                gap,
                state.complete.is_some() && gap.end >= size,
                as_json,
            ));
        }
        Some(gap) if start < gap.start => (gap.start, true),
        _ => (size, state.complete.is_some()),
    };
    let (start, end) = piece_bounds(file.as_ref(), start, piece_size, complete)?;
    let finished = state.complete.is_some() && end >= size;
    if as_json {
        let head = format!("{{\"is_finished\":{finished},\"new_size\":{end},\"content\":\"");
        let body = LogTail {
            file,
            pos: start,
            end,
            head: Some(head),
            carry: Vec::new(),
        };
        return Ok(Response::stream("application/json", body));
    }
    Ok(Response {
        status: 200,
        headers: vec![
            ("Content-Type", "text/plain; charset=utf-8".into()),
            ("Cache-Control", "no-cache".into()),
        ],
        body: Body::File {
            file,
            start,
            len: end - start,
        },
    }
    .header("X-Text-Size", end.to_string())
    .header("X-More-Data", (!finished).to_string()))
}

/// The polling answer for a start inside a size limit's gap or bytes a Redis
/// source trimmed: the notice as content, and the first kept byte as the
/// offset to ask for next.
fn gap_piece(notice: String, gap: OmittedRange, finished: bool, as_json: bool) -> Response {
    if as_json {
        let body = serde_json::json!({
            "is_finished": finished,
            "new_size": gap.end,
            "content": notice,
            "omitted": gap.omitted,
        });
        return Response {
            status: 200,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("Cache-Control", "no-cache".into()),
            ],
            body: Body::Bytes(body.to_string().into_bytes()),
        };
    }
    Response {
        status: 200,
        headers: vec![
            ("Content-Type", "text/plain; charset=utf-8".into()),
            ("Cache-Control", "no-cache".into()),
        ],
        body: Body::Bytes(notice.into_bytes()),
    }
    .header("X-Text-Size", gap.end.to_string())
    .header("X-More-Data", (!finished).to_string())
}

/// The piece of a log one polling response carries: from `start` (a start past
/// the end is the end), at most [`MAX_POLL_BYTES`], leaving out a character cut
/// by the bound or still being written, unless the log is complete. Reads only
/// the last few bytes of the piece. Returns its start and end offsets.
pub fn piece_bounds(
    file: &dyn RawLog,
    start: u64,
    size: u64,
    complete: bool,
) -> Result<(u64, u64)> {
    let start = start.min(size);
    let end = size.min(start.saturating_add(MAX_POLL_BYTES as u64));
    if end == size && complete {
        return Ok((start, end));
    }
    // A UTF-8 character is at most 4 bytes: its cut-off start is in the last 3.
    let tail_len = (end - start).min(4);
    let mut tail = [0u8; 4];
    let tail = &mut tail[..tail_len as usize];
    read_exact_at(file, tail, end - tail_len)?;
    let cut = tail.len() - utf8_prefix(tail);
    Ok((start, end - cut as u64))
}

/// Fewest log bytes read per piece of a `log-tail` body, so a nearly full
/// buffer still moves on by more than a character.
const MIN_TAIL_READ: usize = 1024;

/// The `log-tail` JSON object, made as the client reads: the fields known up
/// front, then the content escaped a file piece at a time.
struct LogTail {
    file: Box<dyn RawLog>,
    pos: u64,
    end: u64,
    head: Option<String>,
    /// The start of a character cut by the last piece, for the next one.
    carry: Vec<u8>,
}

impl Produce for LogTail {
    fn produce(&mut self, out: &mut Vec<u8>, want: usize) -> Result<bool> {
        if let Some(head) = self.head.take() {
            out.extend_from_slice(head.as_bytes());
        }
        while out.len() < want && self.pos < self.end {
            // Escaping at most sextuples a byte (`\u0000`), so a turn stays
            // within a small multiple of what was asked for.
            let room = want.saturating_sub(out.len()).max(MIN_TAIL_READ) as u64;
            let n = (self.end - self.pos).min(room) as usize;
            let mut buf = std::mem::take(&mut self.carry);
            let at = buf.len();
            buf.resize(at + n, 0);
            read_exact_at(self.file.as_ref(), &mut buf[at..], self.pos)?;
            self.pos += n as u64;
            // Cut only between characters, so the pieces decode as the whole.
            let keep = if self.pos == self.end {
                buf.len()
            } else {
                utf8_prefix(&buf)
            };
            self.carry = buf[keep..].to_vec();
            let text = String::from_utf8_lossy(&buf[..keep]);
            let quoted = out.len();
            serde_json::to_writer(&mut *out, &*text)?;
            // The content is one string across pieces: drop each piece's quotes.
            out.pop();
            out.remove(quoted);
        }
        if self.pos < self.end {
            return Ok(true);
        }
        out.extend_from_slice(b"\"}\n");
        Ok(false)
    }
}

/// Matches one search response lists when the client names no `limit`: a
/// screenful of results, cheap to send.
pub const SEARCH_DEFAULT_LIMIT: u64 = 100;

/// Most matches one search response lists (`limit` is capped here): the rest
/// are counted and reached with the cursor, so a response stays bounded
/// however often the pattern matches (issue 11, point 1).
pub const MAX_SEARCH_LIMIT: u64 = 1000;

/// Blocks of log ([`search::BLOCK`] each) searched per turn of the event
/// loop: a few milliseconds, so a search through a gigabyte shares the loop
/// with followers instead of stalling them for its whole second.
const SEARCH_BLOCKS_PER_TURN: usize = 4;

/// A turn's search also ends after the block that takes it past this: a
/// block where every line matches costs far more than one where none does
/// (4 blocks took ~115 ms), and the other clients wait meanwhile.
const SEARCH_TURN: std::time::Duration = std::time::Duration::from_millis(5);

/// `GET /api/job_runs/{id}/search`: `q` (required), `regex`, `case`
/// (smart|sensitive|insensitive), `stream` (stdout|stderr|both), `limit`,
/// `cursor` (the `next` of the previous page).
fn search(ctx: &Ctx, req: &Request, id: &JobId) -> Result<Response> {
    let q = req
        .param("q")
        .filter(|q| !q.is_empty())
        .ok_or_else(|| bad("q (the text to search for) is required"))?;
    let regex = flag(req, "regex")?;
    let case = match req.param("case") {
        None | Some("") => search::Case::Smart,
        Some(c) => search::Case::parse(c).ok_or_else(|| {
            bad(format!(
                "case must be smart, sensitive or insensitive, not {c:?}"
            ))
        })?,
    };
    let pattern = search::Pattern::new(q, regex, case).map_err(|e| bad(format!("{e:#}")))?;
    let streams: &[Stream] = match req.param("stream") {
        None | Some("" | "both" | "combined") => &Stream::BOTH,
        Some("stdout") => &[Stream::Stdout],
        Some("stderr") => &[Stream::Stderr],
        Some(s) => {
            return Err(bad(format!(
                "stream must be stdout, stderr or both, not {s:?}"
            )))
        }
    };
    let limit = number(req, "limit")?
        .unwrap_or(SEARCH_DEFAULT_LIMIT)
        .min(MAX_SEARCH_LIMIT);
    if limit == 0 {
        // Its `next` would be its own cursor: a client following it would
        // ask for ever.
        return Err(bad("limit must be at least 1"));
    }
    let at = match req.param("cursor") {
        None | Some("") => search::Cursor::start(streams[0]),
        Some(c) => search::Cursor::parse(c)
            .filter(|c| streams.contains(&c.stream))
            .ok_or_else(|| bad(format!("cursor {c:?} is not a cursor of this search")))?,
    };
    let mut scans = std::collections::VecDeque::new();
    for &stream in streams.iter().skip_while(|s| **s != at.stream) {
        let from = if stream == at.stream {
            at
        } else {
            search::Cursor::start(stream)
        };
        let log = ctx.store.open_raw(id, stream)?;
        scans.push_back(search::Scan::new(log, pattern.clone(), from)?);
    }
    let body = SearchBody {
        scans,
        limit,
        listed: 0,
        total: at.before,
        next: None,
        started: false,
    };
    Ok(Response::stream("application/json", body))
}

/// A search response, made as the log is searched:
/// `{"matches":[{stream,line,text,ranges}...],"total":N,"next":cursor|null}`.
struct SearchBody {
    scans: std::collections::VecDeque<search::Scan>,
    limit: u64,
    listed: u64,
    /// Matches so far, those before the cursor included.
    total: u64,
    /// Where the first match not listed is.
    next: Option<search::Cursor>,
    started: bool,
}

impl Produce for SearchBody {
    fn produce(&mut self, out: &mut Vec<u8>, want: usize) -> Result<bool> {
        if !self.started {
            self.started = true;
            out.extend_from_slice(b"{\"matches\":[");
        }
        let mut blocks = 0;
        let turn = std::time::Instant::now();
        while out.len() < want && blocks < SEARCH_BLOCKS_PER_TURN && turn.elapsed() < SEARCH_TURN {
            let Some(scan) = self.scans.front_mut() else {
                break;
            };
            if scan.done() {
                self.scans.pop_front();
                continue;
            }
            blocks += 1;
            let (limit, listed, total, next) = (
                self.limit,
                &mut self.listed,
                &mut self.total,
                &mut self.next,
            );
            scan.step(&mut |m| {
                // A forged cursor may start the count anywhere.
                *total = total.saturating_add(1);
                if *listed < limit {
                    out.extend_from_slice(if *listed == 0 { b"\n" } else { b",\n" });
                    let doc = json!({
                        "stream": m.stream.name(),
                        "line": m.line,
                        "text": m.text,
                        "ranges": m.ranges,
                    });
                    // Strings and numbers always serialise.
                    let _ = serde_json::to_writer(&mut *out, &doc);
                    *listed += 1;
                } else if next.is_none() {
                    *next = Some(search::Cursor {
                        stream: m.stream,
                        offset: m.offset,
                        line: m.line,
                        before: *total - 1,
                    });
                }
            })?;
        }
        if !self.scans.is_empty() {
            return Ok(true);
        }
        let next = self.next.map(|c| c.token());
        out.extend_from_slice(
            format!("\n],\"total\":{},\"next\":{}}}\n", self.total, json!(next)).as_bytes(),
        );
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::Method;
    use super::*;
    use crate::store::both::{self, TestJob};
    use crate::store::Chunk;

    fn segs(path: &str) -> Vec<String> {
        super::super::http::parse_target(path).unwrap().0
    }

    fn id(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    #[test]
    fn errors_name_files_within_the_store_never_where_it_is_on_the_server() {
        for (name, store, _root) in both::stores("routes-errors") {
            let order = RefCell::new(JobOrder::default());
            let ctx = Ctx {
                store: &store,
                only: None,
                order: &order,
            };
            let at = store.location();
            let e = anyhow::anyhow!("Too many open files (os error 24)")
                .context(format!("reading {at}/j/metadata.json"));
            let shown = public_error(&ctx, &e);
            assert_eq!(
                shown, "reading j/metadata.json: Too many open files (os error 24)",
                "{name}"
            );
        }
    }

    #[test]
    fn paths_map_to_routes() {
        let r = |p: &str| route(&segs(p)).unwrap();
        assert_eq!(r("/"), Route::Index);
        assert_eq!(r("/healthz"), Route::Healthz);
        assert_eq!(r("/job_runs/a1"), Route::JobPage(id("a1")));
        assert_eq!(r("/api/job_runs"), Route::List);
        assert_eq!(r("/api/job_runs/"), Route::List);
        assert_eq!(r("/api/job_runs/a1"), Route::Job(id("a1")));
        assert_eq!(
            r("/api/job_runs/a1/logs/combined"),
            Route::Events(id("a1"), Which::Combined)
        );
        assert_eq!(
            r("/api/job_runs/a1/logs/stderr/raw"),
            Route::Raw(id("a1"), Stream::Stderr)
        );
        assert_eq!(
            r("/api/job_runs/a1/logs/stdout/progressiveText"),
            Route::ProgressiveText(id("a1"), Stream::Stdout)
        );
        assert_eq!(r("/api/job_runs/a1/log-tail"), Route::LogTail(id("a1")));
        assert_eq!(r("/api/job_runs/a1/logs/combined/raw"), Route::NotFound);
        assert_eq!(r("/api/job_runs/a1/logs/other"), Route::NotFound);
        assert_eq!(r("/etc/passwd"), Route::NotFound);
    }

    #[test]
    fn ids_are_validated_before_routing() {
        for p in [
            "/api/job_runs/.hidden",
            "/job_runs/a%20b",
            "/api/job_runs/%C3%A9/logs/stdout",
        ] {
            assert_eq!(route(&segs(p)).map_err(|e| e.status), Err(400), "{p}");
        }
        // An empty id segment (`//`) is no valid id either.
        assert_eq!(
            route(&segs("/api/job_runs//logs/stdout")).map_err(|e| e.status),
            Err(400)
        );
    }

    // Handlers driven against a job written through each store: the server
    // sees only the trait, so both must answer alike (issue 9).

    fn get(path: &str, headers: &[(&str, &str)]) -> Request {
        let (segments, query) = super::super::http::parse_target(path).unwrap();
        Request {
            method: Method::Get,
            segments,
            query,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            keep_alive: false,
            host: Some("localhost".into()),
        }
    }

    /// Answers `GET path` from `store`, serving only `only` when given.
    fn answer(
        store: &Arc<dyn LogStore>,
        only: Option<&JobId>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let order = RefCell::new(JobOrder::default());
        let ctx = Ctx {
            store,
            only,
            order: &order,
        };
        handle(&ctx, &get(path, headers))
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole body, made the way the server makes it.
    fn body(r: Response) -> Vec<u8> {
        match r.body {
            Body::Bytes(b) => b,
            Body::File { file, start, len } => {
                let mut buf = vec![0; len as usize];
                read_exact_at(file.as_ref(), &mut buf, start).unwrap();
                buf
            }
            Body::Stream(mut p) => {
                let mut out = Vec::new();
                loop {
                    let want = out.len() + 4096;
                    if !p.produce(&mut out, want).unwrap() {
                        break;
                    }
                }
                out
            }
            Body::Events(mut f) => {
                let mut out = Vec::new();
                f.pump(&mut out, 1 << 20, None).unwrap();
                out
            }
            Body::Feed | Body::Nothing => Vec::new(),
        }
    }

    fn json_of(r: Response) -> serde_json::Value {
        assert_eq!(header(&r, "Content-Type"), Some("application/json"));
        serde_json::from_slice(&body(r)).unwrap()
    }

    /// `(id, data)` of each `event: log` in an event stream.
    fn events_of(out: &[u8]) -> Vec<(String, String)> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| e.starts_with("event: log"))
            .map(|e| {
                let field = |f: &str| e.lines().find_map(|l| l.strip_prefix(f)).unwrap_or("");
                (field("id: ").to_string(), field("data: ").to_string())
            })
            .collect()
    }

    #[test]
    fn the_job_list_and_metadata_are_the_same_from_every_store() {
        for (name, store, _root) in both::stores("routes-list") {
            let write = |id: &str, status: Status, day: &str| {
                let mut sink = store.create_job(&JobId::parse(id).unwrap()).unwrap();
                let started = format!("2026-01-{day}T00:00:00.000Z");
                sink.write_metadata(&both::metadata(id, status, &started), true)
                    .unwrap();
                sink
            };
            drop(write("old", Status::Succeeded, "01"));
            let _live = write("new", Status::Running, "02");
            // Running, but its writer is gone.
            drop(write("dead", Status::Running, "03"));
            // Being created: no metadata yet, not listed.
            let _creating = store.create_job(&id("creating")).unwrap();

            let list = |path: &str, only: Option<&JobId>| {
                let v = json_of(answer(&store, only, path, &[]));
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|m| format!("{} {}", m["job_run_id"], m["status"]))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                list("/api/job_runs", None),
                [
                    "\"dead\" \"abandoned\"",
                    "\"new\" \"running\"",
                    "\"old\" \"succeeded\""
                ],
                "{name}"
            );
            assert_eq!(
                list("/api/job_runs?status=running", None),
                ["\"new\" \"running\""],
                "{name}"
            );
            assert_eq!(list("/api/job_runs?limit=1", None).len(), 1, "{name}");
            assert_eq!(
                list("/api/job_runs", Some(&id("new"))),
                ["\"new\" \"running\""],
                "{name}"
            );

            let m = json_of(answer(&store, None, "/api/job_runs/dead", &[]));
            assert_eq!(m["status"], "abandoned", "{name}");
            let missing = answer(&store, None, "/api/job_runs/nope", &[]);
            assert_eq!(missing.status, 404, "{name}");
            // A wrapper's own server shows only its job.
            let other = answer(&store, Some(&id("new")), "/api/job_runs/old", &[]);
            assert_eq!(other.status, 404, "{name}");
        }
    }

    #[test]
    fn the_job_list_pages_and_finds_jobs_by_id_or_command() {
        for (name, store, _root) in both::stores("routes-page") {
            for (i, (id, command, status)) in [
                ("a-1", "make test", Status::Succeeded),
                ("b-2", "cargo BUILD --release", Status::Failed),
                ("c-3", "make deploy", Status::Succeeded),
                ("d-4", "./run.sh", Status::Failed),
            ]
            .into_iter()
            .enumerate()
            {
                let mut sink = store.create_job(&JobId::parse(id).unwrap()).unwrap();
                let mut m =
                    both::metadata(id, status, &format!("2026-01-0{}T00:00:00.000Z", i + 1));
                m.command = command.split(' ').map(String::from).collect();
                sink.write_metadata(&m, true).unwrap();
            }
            let ids = |path: &str| {
                let r = answer(&store, None, path, &[]);
                let total = header(&r, "X-Total-Count").map(String::from);
                let v = json_of(r);
                let ids: Vec<String> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["job_run_id"].as_str().unwrap().to_string())
                    .collect();
                (ids.join(" "), total)
            };
            let all = Some("4".to_string());
            assert_eq!(
                ids("/api/job_runs"),
                ("d-4 c-3 b-2 a-1".into(), all.clone()),
                "{name}"
            );
            assert_eq!(
                ids("/api/job_runs?limit=2&offset=1"),
                ("c-3 b-2".into(), all.clone()),
                "{name}"
            );
            assert_eq!(ids("/api/job_runs?offset=9"), ("".into(), all), "{name}");
            // A piece of the id or the command, whatever its case; filters
            // page too, and have no total (it would cost reading every job).
            assert_eq!(
                ids("/api/job_runs?q=MAKE"),
                ("c-3 a-1".into(), None),
                "{name}"
            );
            assert_eq!(ids("/api/job_runs?q=build"), ("b-2".into(), None), "{name}");
            assert_eq!(ids("/api/job_runs?q=d-4"), ("d-4".into(), None), "{name}");
            assert_eq!(
                ids("/api/job_runs?q=make&offset=1"),
                ("a-1".into(), None),
                "{name}"
            );
            assert_eq!(
                ids("/api/job_runs?status=failed&limit=1&offset=1"),
                ("b-2".into(), None),
                "{name}"
            );
            assert_eq!(
                ids("/api/job_runs?status=failed&q=run"),
                ("d-4".into(), None),
                "{name}"
            );
            let long = format!("/api/job_runs?q={}", "x".repeat(MAX_QUERY + 1));
            assert_eq!(answer(&store, None, &long, &[]).status, 400, "{name}");
            assert_eq!(
                answer(&store, None, "/api/job_runs?offset=-1", &[]).status,
                400
            );
        }
    }

    /// The job of `writes` in every store, with running metadata.
    fn running_jobs(tag: &str, writes: &[(Stream, &[u8])]) -> Vec<TestJob> {
        let mut jobs = both::jobs(&format!("routes-{tag}"), writes);
        for t in &mut jobs {
            let meta = both::metadata("j", Status::Running, "2026-01-01T00:00:00.000Z");
            t.sink().write_metadata(&meta, false).unwrap();
        }
        jobs
    }

    fn finish(t: &mut TestJob) {
        let meta = both::metadata("j", Status::Succeeded, "2026-01-01T00:00:00.000Z");
        t.sink().write_metadata(&meta, true).unwrap();
    }

    #[test]
    fn raw_logs_answer_ranges_from_every_store() {
        let writes: [(Stream, &[u8]); 3] = [
            (Stream::Stdout, b"hello\n"),
            (Stream::Stderr, b"oops\n"),
            (Stream::Stdout, b"world\n"),
        ];
        for t in running_jobs("raw", &writes) {
            let raw = |range: Option<&str>, stream: &str| {
                let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
                let path = format!("/api/job_runs/j/logs/{stream}/raw");
                answer(&t.store, None, &path, &headers)
            };
            let full = raw(None, "stdout");
            assert_eq!(full.status, 200, "{}", t.name);
            assert_eq!(header(&full, "Accept-Ranges"), Some("bytes"));
            assert_eq!(body(full), b"hello\nworld\n", "{}", t.name);
            assert_eq!(body(raw(None, "stderr")), b"oops\n", "{}", t.name);

            let part = raw(Some("bytes=6-10"), "stdout");
            assert_eq!(part.status, 206, "{}", t.name);
            assert_eq!(header(&part, "Content-Range"), Some("bytes 6-10/12"));
            assert_eq!(body(part), b"world", "{}", t.name);

            let suffix = raw(Some("bytes=-3"), "stdout");
            assert_eq!(body(suffix), b"ld\n", "{}", t.name);

            let past = raw(Some("bytes=50-"), "stdout");
            assert_eq!(past.status, 416, "{}", t.name);
            assert_eq!(header(&past, "Content-Range"), Some("bytes */12"));
        }
    }

    #[test]
    fn polling_gives_pieces_from_an_offset_and_says_when_finished() {
        for mut t in running_jobs(
            "poll",
            &[(Stream::Stdout, b"abc\ndef\n"), (Stream::Stderr, b"e\n")],
        ) {
            let v = json_of(answer(
                &t.store,
                None,
                "/api/job_runs/j/log-tail?start=4",
                &[],
            ));
            assert_eq!(
                v,
                serde_json::json!({"is_finished": false, "new_size": 8, "content": "def\n"}),
                "{}",
                t.name
            );
            let v = json_of(answer(
                &t.store,
                None,
                "/api/job_runs/j/log-tail?stream=stderr",
                &[],
            ));
            assert_eq!(v["content"], "e\n", "{}", t.name);

            let text = answer(
                &t.store,
                None,
                "/api/job_runs/j/logs/stdout/progressiveText?start=2",
                &[],
            );
            assert_eq!(header(&text, "X-Text-Size"), Some("8"), "{}", t.name);
            assert_eq!(header(&text, "X-More-Data"), Some("true"), "{}", t.name);
            assert_eq!(body(text), b"c\ndef\n", "{}", t.name);

            t.sink()
                .append(Stream::Stdout, &Chunk::new(b"end", 300))
                .unwrap();
            finish(&mut t);
            let v = json_of(answer(
                &t.store,
                None,
                "/api/job_runs/j/log-tail?start=8",
                &[],
            ));
            assert_eq!(
                v,
                serde_json::json!({"is_finished": true, "new_size": 11, "content": "end"}),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn event_streams_start_where_asked_from_every_store() {
        let writes: [(Stream, &[u8]); 4] = [
            (Stream::Stdout, b"o1\n"),
            (Stream::Stderr, b"e1\n"),
            (Stream::Stdout, b"o2\no3\n"),
            (Stream::Stderr, b"e2\n"),
        ];
        for mut t in running_jobs("sse", &writes) {
            let sse = |t: &TestJob, path: &str, headers: &[(&str, &str)]| {
                answer(
                    &t.store,
                    None,
                    &format!("/api/job_runs/j/logs/{path}"),
                    headers,
                )
            };
            let all = sse(&t, "combined", &[]);
            assert_eq!(all.status, 200, "{}", t.name);
            assert_eq!(
                header(&all, "Content-Type"),
                Some("text/event-stream; charset=utf-8")
            );
            let got: Vec<_> = events_of(&body(all))
                .into_iter()
                .map(|(id, data)| format!("{id} {data}"))
                .collect();
            assert_eq!(
                got,
                ["1.0 o1", "1.1 e1", "2.1 o2", "3.1 o3", "3.2 e2"],
                "{}",
                t.name
            );

            let tail = events_of(&body(sse(&t, "stdout?lines=1", &[])));
            assert_eq!(tail, [("3".to_string(), "o3".to_string())], "{}", t.name);
            let resumed = events_of(&body(sse(&t, "combined", &[("last-event-id", "2.1")])));
            let data: Vec<_> = resumed.iter().map(|e| e.1.as_str()).collect();
            assert_eq!(data, ["o3", "e2"], "{}", t.name);

            // Each line keeps the read time of the chunk that completed it.
            let json = String::from_utf8(body(sse(&t, "stderr?format=json&since=2", &[]))).unwrap();
            assert!(json.contains("\"ts_us\":103"), "{}: {json}", t.name);

            // A reconnect to an ended job with nothing left is told to stop.
            finish(&mut t);
            let over = sse(&t, "stdout", &[("last-event-id", "3")]);
            assert_eq!(over.status, 204, "{}", t.name);
            let more = sse(&t, "stdout", &[("last-event-id", "2")]);
            assert_eq!(more.status, 200, "{}", t.name);
            assert_eq!(sse(&t, "stdout?lines=x", &[]).status, 400, "{}", t.name);
        }
    }

    #[test]
    fn search_pages_through_both_streams_with_a_cursor_and_a_total() {
        let writes: [(Stream, &[u8]); 3] = [
            (Stream::Stdout, b"ok\nerror one\nfine\n"),
            (Stream::Stderr, b"Error two\n"),
            (Stream::Stdout, b"\x1b[31merror\x1b[0m three\n"),
        ];
        for t in running_jobs("search", &writes) {
            let get = |q: &str| {
                json_of(answer(
                    &t.store,
                    None,
                    &format!("/api/job_runs/j/search?{q}"),
                    &[],
                ))
            };
            let found = |v: &serde_json::Value| {
                v["matches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        format!(
                            "{} {} {} {}",
                            m["stream"], m["line"], m["text"], m["ranges"]
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let all = get("q=error");
            assert_eq!(
                found(&all),
                [
                    "\"stdout\" 2 \"error one\" [[0,5]]",
                    "\"stdout\" 4 \"error three\" [[0,5]]",
                    "\"stderr\" 1 \"Error two\" [[0,5]]"
                ],
                "{}",
                t.name
            );
            assert_eq!(all["total"], 3, "{}", t.name);
            assert_eq!(all["next"], serde_json::Value::Null, "{}", t.name);

            // One per page: the cursor leads on, the total stays whole.
            let mut seen = Vec::new();
            let mut q = "q=error&limit=1".to_string();
            loop {
                let page = get(&q);
                assert_eq!(page["total"], 3, "{}: {q}", t.name);
                seen.extend(found(&page));
                match page["next"].as_str() {
                    Some(c) => q = format!("q=error&limit=1&cursor={c}"),
                    None => break,
                }
            }
            assert_eq!(seen, found(&all), "{}", t.name);

            let v = get("q=E.r%2Bo&regex=true&case=sensitive&stream=stderr");
            assert_eq!(v["total"], 1, "{}", t.name);
            let bad = |q: &str| {
                answer(&t.store, None, &format!("/api/job_runs/j/search?{q}"), &[]).status
            };
            assert_eq!(bad("q=("), 200, "{}: plain text needs no escaping", t.name);
            assert_eq!(bad("q=(&regex=true"), 400, "{}", t.name);
            assert_eq!(bad("regex=true"), 400, "{}", t.name);
            assert_eq!(bad("q=x&cursor=junk"), 400, "{}", t.name);
            // A page of none would lead to itself.
            assert_eq!(bad("q=x&limit=0"), 400, "{}", t.name);
            // More lines before an offset than bytes: no cursor of ours.
            assert_eq!(
                bad("q=x&cursor=stdout.5.18446744073709551615.0"),
                400,
                "{}",
                t.name
            );
            // Counts from a forged start stay counts (no wrap to 0).
            let v = get("q=error&cursor=stdout.0.1.18446744073709551615");
            assert_eq!(v["total"], u64::MAX, "{}", t.name);
            assert_eq!(
                bad("q=x&stream=stderr&cursor=stdout.0.1.0"),
                400,
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn polling_pieces_are_cut_on_character_boundaries() {
        let dir = crate::testdir::TempDir::new("piece");
        let path = dir.join("log");
        let mut body = vec![b'a'; MAX_POLL_BYTES - 1];
        body.extend_from_slice("é€".as_bytes());
        std::fs::write(&path, &body).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let size = body.len() as u64;
        let (start, next) = piece_bounds(&f, 0, size, false).unwrap();
        assert_eq!((start, next), (0, MAX_POLL_BYTES as u64 - 1));
        assert_eq!(piece_bounds(&f, next, size, false).unwrap(), (next, size));
        // Past the end: nothing, and the real end as the next offset.
        assert_eq!(
            piece_bounds(&f, size + 100, size, false).unwrap(),
            (size, size)
        );
        // A character still being written waits, unless the log is complete.
        assert_eq!(
            piece_bounds(&f, size - 3, size - 1, false).unwrap(),
            (size - 3, size - 3)
        );
        assert_eq!(
            piece_bounds(&f, size - 3, size - 1, true).unwrap(),
            (size - 3, size - 1)
        );
    }

    #[test]
    fn log_tail_bodies_are_made_in_pieces_that_rebuild_the_text() {
        let dir = crate::testdir::TempDir::new("tail");
        let path = dir.join("log");
        // Multi-byte characters and invalid bytes across every piece boundary.
        let unit = "ab\"é€😀\\\n".as_bytes();
        let mut body: Vec<u8> = unit.iter().cycle().take(300_000).copied().collect();
        body.extend_from_slice(b"\xff\xfeend");
        std::fs::write(&path, &body).unwrap();
        let size = body.len() as u64;
        let mut tail = LogTail {
            file: Box::new(std::fs::File::open(&path).unwrap()),
            pos: 0,
            end: size,
            head: Some("{\"content\":\"".into()),
            carry: Vec::new(),
        };
        let mut out = Vec::new();
        let mut turns = 0;
        loop {
            let before = out.len();
            let more = tail.produce(&mut out, before + 16 * 1024).unwrap();
            // Each turn adds about what was asked: at most one file piece more.
            assert!(out.len() - before <= 7 * 16 * 1024, "turn {turns}");
            turns += 1;
            if !more {
                break;
            }
        }
        assert!(turns > 3, "{turns}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["content"].as_str().unwrap(),
            String::from_utf8_lossy(&body)
        );
    }
}
