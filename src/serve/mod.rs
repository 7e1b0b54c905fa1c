//! The HTTP tail server (SPEC §5, issue 4): `logwrap serve` for every job under
//! the root, and the same server inside the wrapper (`logwrap --listen ADDR`).
//!
//! `Server` is a component driven by a mio event loop it does not own: it
//! registers its listener, its inotify descriptor and its connections under its
//! own token range, and the owner hands it events, calls `Server::tick` after
//! each poll and waits no longer than `Server::timeout`. `logwrap serve` runs
//! it on its main thread and learns of new lines from inotify on the
//! directories of the jobs being followed. The wrapper runs it on a thread of
//! its own (`ServerThread`), so followers never slow the reading of the
//! child, and flags each chunk it appends, so followers get a line at once. No
//! async runtime, every buffer bounded.

mod board;
pub mod client;
mod conn;
mod follow;
pub(crate) mod http;
pub use http::host_name;
mod page;
mod routes;
pub(crate) mod sse;
pub(crate) mod term;

use crate::store::{self, ChangeWatcher, JobId, LogStore};
use anyhow::{bail, Context, Result};
use conn::{Conn, Phase, ReadStatus, Source, Timer, SSE_HIGH_WATER};
use follow::{Pumped, Shared, Which};
use mio::event::Event;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use routes::{Body, Ctx, JobState, Response};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the server listens unless told otherwise (SPEC §5): loopback only, so
/// exposing logs beyond the machine is always an explicit choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default connection cap: within the default 1024-descriptor limit of a
/// process, and enough for 1,000 followers of one job (SPEC §7).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time a client has to send a request head (408 after).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a kept-alive connection may sit idle, or a client may leave
/// what it asked for unread, before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default heartbeat interval on a silent event stream (SPEC §5: "every ~15
/// s"): under the usual 30-60 s idle timeouts of proxies and load balancers.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a finishing wrapper keeps serving so its followers get the last
/// lines and `complete`: a follower that keeps up needs milliseconds; one that
/// does not cannot hold the job's exit back by more than this.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How far past the grace a finishing wrapper waits for its server thread
/// to end on its own (it checks the deadline between connections).
const STOP_SLACK: Duration = Duration::from_millis(20);

/// Connections accepted beyond the cap only to be answered 503 (then closed), so
/// a client learns why; past these, new connections are closed at once.
const OVERFLOW_SLOTS: usize = 64;
/// Descriptors a connection may hold: its socket and, following both streams
/// of a job, two logs and two indexes.
const FDS_PER_CONN: usize = 5;
/// Descriptors kept out of the connections' reach: the server's own (job
/// files of a request, the watcher, the listing) and, under `--listen`, the
/// wrapper's, which shares the process's table (its metadata rewrites, the
/// final one included, markers, shipping). Without them, clients holding
/// every descriptor left the job's end unrecorded (EMFILE).
const FD_RESERVE: usize = 64;
/// How often the status of followed jobs is re-read even without a file event:
/// catches a writer that died without a trace inotify reports.
const STATUS_RECHECK: Duration = Duration::from_secs(1);
/// Without inotify (it can be unavailable or out of watches), followed jobs are
/// polled this often instead.
const FALLBACK_POLL: Duration = Duration::from_millis(100);
/// Most bytes one connection is given per turn of the event loop: one
/// follower's buffer (or file piece). A client that reads as fast as the
/// server writes would otherwise keep the loop on it until its whole backlog
/// is sent, while other clients, timers and a shutdown wait (issue point 10).
const TURN_BUDGET: usize = SSE_HIGH_WATER;
/// Bytes of a made-as-read body (job list, `log-tail`) produced per turn, and
/// at most what waits in user space for a client that does not read: a
/// thousand such clients hold 16 MiB (issue point 8: under 64 MiB).
const STREAM_PIECE: usize = 16 * 1024;
/// How often the job events stream (`/api/events`) looks at running jobs for
/// new output, a status change or their end, and at the list of jobs when the
/// store cannot say that it changed: "every 1-2 s" (issue 11, point 5) keeps a
/// job list live at the cost of one metadata read per running job per look.
const BOARD_LOOK: Duration = Duration::from_secs(1);
/// Most bytes of job events waiting for one listener: a listener this far
/// behind is closed, and its page reconnects and loads the list afresh,
/// rather than the server holding events for it without bound.
const FEED_HIGH_WATER: usize = 256 * 1024;
/// Tokens per server: the listener, inotify, then one per connection slot.
const LISTENER: usize = 0;
const WATCHER: usize = 1;
const FIRST_CONN: usize = 2;

/// Validated server settings.
#[derive(Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Required token (`Authorization: Bearer T` or `?token=T`), if any.
    pub token: Option<String>,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Silence after which an event stream gets a heartbeat comment.
    pub heartbeat: Duration,
    /// Host names answered besides loopback ones when bound to loopback.
    pub allow_hosts: Vec<String>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in debug output or logs.
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("allow_hosts", &self.allow_hosts)
            .finish()
    }
}

impl ServeConfig {
    /// Settings with the defaults, listening on `listen` (see `parse_listen`).
    pub fn new(listen: &str, token: Option<String>) -> Result<ServeConfig> {
        Ok(ServeConfig {
            listen: parse_listen(listen)?,
            token: token.filter(|t| !t.is_empty()),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            heartbeat: DEFAULT_HEARTBEAT,
            allow_hosts: Vec::new(),
        })
    }
}

/// Longest token file read: a bearer token is a few dozen bytes; anything this
/// big is the wrong file, and is not read into memory whole.
const MAX_TOKEN_FILE: u64 = 4096;

/// Environment variable that may hold the token; the wrapper never passes it on
/// to the job (SPEC §5), or the job's `env` would print it into the log.
pub const TOKEN_ENV: &str = "DATABUILD_LOG_TOKEN";

/// Reads `--token-file`: the whole file (at most 4 KiB, `MAX_TOKEN_FILE`) with
/// its trailing line end dropped, as `echo secret > file` writes it. An empty
/// token would let anyone in, so it is refused.
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("--token-file {shown}"))?;
    let mut raw = Vec::new();
    file.take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut raw)
        .with_context(|| format!("--token-file {shown}"))?;
    if raw.len() as u64 > MAX_TOKEN_FILE {
        bail!("--token-file {shown}: longer than {MAX_TOKEN_FILE} bytes; is it the right file?");
    }
    let text = String::from_utf8(raw)
        .map_err(|_| anyhow::anyhow!("--token-file {shown}: the token is not UTF-8 text"))?;
    let token = text.strip_suffix('\n').unwrap_or(&text);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() {
        bail!("--token-file {shown}: the file is empty; put the token in it");
    }
    if token.contains(['\n', '\r']) {
        bail!("--token-file {shown}: the token must be one line");
    }
    Ok(token.to_string())
}

/// Parses a listen address: `HOST:PORT`, `[V6]:PORT`, `:PORT` or `PORT` (both on
/// 127.0.0.1). Port 0 picks a free port.
pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    let full = if s.parse::<u16>().is_ok() {
        format!("127.0.0.1:{s}")
    } else if let Some(port) = s.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else {
        s.to_string()
    };
    full.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| {
            format!(
                "--listen {s:?}: expected HOST:PORT, e.g. 127.0.0.1:8080 (port 0 picks a free one)"
            )
        })
}

/// A followed job: its last known state, how many follow it, and its newest
/// events encoded once for all of them, by stream and format.
struct Watched {
    state: JobState,
    followers: usize,
    shared: HashMap<(Which, sse::Format), Shared>,
    /// The job is gone (deleted, or expired from Redis): its followers are
    /// ended, and one that reconnects learns it with a 404. Its log may still
    /// read as a log that never grows (a Redis source reads a deleted stream
    /// as an empty one), which would hold them for ever.
    gone: bool,
}

/// The tail server. See the module docs.
pub(crate) struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    registry: Option<Registry>,
    base: usize,
    cfg: ServeConfig,
    store: Arc<dyn LogStore>,
    only: Option<JobId>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    jobs: HashMap<JobId, Watched>,
    /// The store's change notification, when other processes write the jobs.
    watcher: Option<Box<dyn ChangeWatcher>>,
    next_recheck: Instant,
    /// An accept failed for want of descriptors: retry when one is closed.
    accept_blocked: bool,
    /// Connections that used up their turn with more to send: driven again on
    /// the next [`Server::tick`], in order, before the loop waits.
    ready: Vec<usize>,
    /// The newest-first order of the jobs, shared by the job lists being sent.
    order: std::cell::RefCell<routes::JobOrder>,
    /// The jobs as the job events stream knows them, while it has listeners
    /// (`feeds` of them), and when to look at the store next.
    board: Option<board::Board>,
    feeds: usize,
    next_look: Instant,
}

impl Server {
    /// Binds the listening socket. `only` limits the server to one job (the
    /// wrapper's); `None` serves every job under the store's root.
    pub(crate) fn bind(
        cfg: ServeConfig,
        store: Arc<dyn LogStore>,
        only: Option<JobId>,
    ) -> Result<Server> {
        let mut cfg = cfg;
        if let Some(room) = raise_fd_limit() {
            let fit = (room.saturating_sub(FD_RESERVE + OVERFLOW_SLOTS) / FDS_PER_CONN).max(1);
            if fit < cfg.max_connections {
                eprintln!(
                    "logwrap: serving at most {fit} connections, not {}: the descriptor limit is {room} (ulimit -n)",
                    cfg.max_connections
                );
                cfg.max_connections = fit;
            }
        }
        let std = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        std.set_nonblocking(true)?;
        let addr = std.local_addr()?;
        // Change notification is only needed when other processes write the
        // jobs; without it (inotify out of watches) followers poll.
        let watcher = match only {
            Some(_) => None,
            None => store.watcher().ok(),
        };
        Ok(Server {
            listener: TcpListener::from_std(std),
            addr,
            registry: None,
            base: 0,
            cfg,
            store,
            only,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            jobs: HashMap::new(),
            watcher,
            next_recheck: Instant::now() + STATUS_RECHECK,
            accept_blocked: false,
            ready: Vec::new(),
            order: Default::default(),
            board: None,
            feeds: 0,
            next_look: Instant::now(),
        })
    }

    /// The server for a wrapper's own job.
    pub(crate) fn for_job(
        cfg: ServeConfig,
        store: Arc<dyn LogStore>,
        id: &JobId,
    ) -> Result<Server> {
        Server::bind(cfg, store, Some(id.clone()))
    }

    /// `http://host:port`, naming this machine when bound to all addresses.
    pub(crate) fn base_url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        } else if self.addr.is_ipv6() {
            format!("[{}]", self.addr.ip())
        } else {
            self.addr.ip().to_string()
        };
        format!("http://{host}:{}", self.addr.port())
    }

    /// The page that follows job `id`.
    pub(crate) fn job_url(&self, id: &JobId) -> String {
        format!("{}/job_runs/{id}", self.base_url())
    }

    /// Registers the server's sources with `registry`, using tokens from `base`
    /// upwards (the listener, inotify, then one per connection).
    pub(crate) fn register(&mut self, registry: &Registry, base: Token) -> Result<()> {
        self.base = base.0;
        registry
            .register(
                &mut self.listener,
                Token(base.0 + LISTENER),
                Interest::READABLE,
            )
            .context("watching the listening socket")?;
        if let Some(w) = &self.watcher {
            let fd = w.fd().as_raw_fd();
            registry
                .register(
                    &mut SourceFd(&fd),
                    Token(base.0 + WATCHER),
                    Interest::READABLE,
                )
                .context("watching for changes")?;
        }
        self.registry = Some(registry.try_clone().context("cloning the mio registry")?);
        Ok(())
    }

    /// True if `token` is one of the server's.
    pub(crate) fn owns(&self, token: Token) -> bool {
        token.0 >= self.base && token.0 < self.base + FIRST_CONN + self.conns.len()
    }

    /// Handles one event for one of the server's tokens.
    pub(crate) fn handle_event(&mut self, ev: &Event) {
        match ev.token().0 - self.base {
            LISTENER => self.accept(),
            WATCHER => self.read_changes(),
            n => {
                let slot = n - FIRST_CONN;
                if let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        c.read_ready = true;
                    }
                    if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                        c.write_ready = true;
                    }
                    self.drive(slot);
                }
            }
        }
    }

    /// New output was appended to the log (the wrapper calls this after each
    /// chunk): followers that have caught up are sent the new lines now.
    pub(crate) fn notify(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
        for id in ids {
            self.refresh(&id, false);
            self.wake(&id);
        }
    }

    /// How long the owner's poll may wait before [`Server::tick`] is due.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let conns = self.conns.iter().flatten().map(|c| c.timer(&self.cfg).0);
        let recheck = (!self.jobs.is_empty()).then_some(self.next_recheck);
        let look = self.board.is_some().then_some(self.next_look);
        conns
            .chain(recheck)
            .chain(look)
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    /// Runs the timers that are due: 408 for slow request heads, closing idle
    /// and stalled connections, heartbeats, and the periodic status re-check.
    pub(crate) fn tick(&mut self) {
        for slot in std::mem::take(&mut self.ready) {
            if let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                c.deferred = false;
                self.drive(slot);
            }
        }
        let now = Instant::now();
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            let (at, what) = c.timer(&self.cfg);
            if at > now {
                continue;
            }
            match what {
                Timer::Close => self.close(slot),
                Timer::HeaderTimeout => {
                    c.inbuf.clear();
                    c.close_after = true;
                    let resp = Response::error(408, "request head not received in time", false);
                    c.respond(resp, false, false, now);
                    self.drive(slot);
                }
                Timer::Heartbeat => {
                    c.heartbeat(now);
                    self.drive(slot);
                }
                // A line in progress changed within the last partial event's
                // window: its latest state goes out now.
                Timer::Partial => self.drive(slot),
            }
        }
        if self.board.is_some() && now >= self.next_look {
            self.look(now);
        }
        if now >= self.next_recheck {
            let poll_sizes = self.watcher.is_none();
            self.next_recheck = now
                + if poll_sizes && self.only.is_none() {
                    FALLBACK_POLL
                } else {
                    STATUS_RECHECK
                };
            let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
            for id in ids {
                self.refresh(&id, true);
                // Every follower looks, changed sizes or not: whatever a missed
                // event may have hidden is found within one re-check.
                self.wake_all(&id);
            }
        }
    }

    /// The job has ended (the wrapper calls this after writing its final
    /// metadata): sends followers the rest and `complete`, waiting until
    /// `deadline` at most for them to take it, then closes every connection.
    pub(crate) fn shutdown(mut self, poll: &mut Poll, deadline: Instant) {
        let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
        for id in ids {
            self.refresh(&id, true);
            self.wake(&id);
        }
        let mut events = Events::with_capacity(64);
        loop {
            let busy = self.conns.iter().flatten().any(|c| {
                matches!(c.source, Source::Events(_)) || (c.phase == Phase::Body && c.pending() > 0)
            });
            let now = Instant::now();
            if !busy || now >= deadline {
                return;
            }
            let wait = if self.ready.is_empty() {
                deadline - now
            } else {
                Duration::ZERO
            };
            match poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            for ev in events.iter() {
                if Instant::now() >= deadline {
                    return;
                }
                if self.owns(ev.token()) {
                    self.handle_event(ev);
                }
            }
            self.tick();
        }
    }

    /// Looks at the store for the job events stream and queues what changed
    /// for every listener.
    fn look(&mut self, now: Instant) {
        let Some(board) = &mut self.board else {
            return;
        };
        let mut out = Vec::new();
        board.step(self.store.as_ref(), self.only.as_ref(), &mut out);
        // The first look at a big root goes on at the next turn.
        self.next_look = if board.scanning() {
            now
        } else {
            now + BOARD_LOOK
        };
        if out.is_empty() {
            return;
        }
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if !matches!(c.source, Source::Feed) {
                continue;
            }
            if c.pending() + out.len() > FEED_HIGH_WATER {
                self.close(slot);
                continue;
            }
            c.fill(now, |buf| buf.extend_from_slice(&out));
            self.drive(slot);
        }
    }

    /// A new listener of the job events stream: the board is made for the
    /// first one, and starts with a look at the store.
    fn add_feed(&mut self) {
        self.feeds += 1;
        if self.board.is_none() {
            if let Some(w) = &mut self.watcher {
                // New jobs then wake the board at once (`read_changes`).
                let _ = w.watch_list();
            }
            self.board = Some(board::Board::new(self.store.as_ref(), self.only.as_ref()));
            self.next_look = Instant::now();
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, _)) => self.add_conn(sock),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(_) => {
                    // Out of descriptors (EMFILE/ENFILE) or memory: the pending
                    // connection waits in the backlog until a slot frees up.
                    self.accept_blocked = true;
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, mut sock: mio::net::TcpStream) {
        if self.open >= self.cfg.max_connections + OVERFLOW_SLOTS {
            return; // dropped: closed at once
        }
        let Some(registry) = &self.registry else {
            return;
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let token = Token(self.base + FIRST_CONN + slot);
        if registry
            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.free.push(slot);
            return;
        }
        // Lines are small writes that must leave at once (SPEC §7 latency).
        let _ = sock.set_nodelay(true);
        let over_cap = self.open >= self.cfg.max_connections;
        self.conns[slot] = Some(Conn::new(sock, Instant::now(), over_cap));
        self.open += 1;
        self.drive(slot);
    }

    fn close(&mut self, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if let Some(reg) = &self.registry {
            let _ = reg.deregister(&mut c.sock);
        }
        if let Some(f) = c.follower() {
            let id = f.job.clone();
            self.unfollow(&id);
        }
        if matches!(c.source, Source::Feed) {
            self.feeds -= 1;
            if self.feeds == 0 {
                self.board = None;
            }
        }
        self.free.push(slot);
        self.open -= 1;
        if self.accept_blocked {
            self.accept_blocked = false;
            self.accept();
        }
    }

    /// Moves connection `slot` on as far as it can go now: sends what is queued,
    /// refills from its body, answers the next request on a kept-alive
    /// connection. Returns when it waits on the client or on the log.
    fn drive(&mut self, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let keep = self.step(&mut c);
        if keep && c.more && !c.deferred {
            c.deferred = true;
            self.ready.push(slot);
        }
        c.more = false;
        self.conns[slot] = Some(c);
        if !keep {
            self.close(slot);
        }
    }

    /// The body of [`Server::drive`]; false when the connection must close.
    fn step(&mut self, c: &mut Conn) -> bool {
        let mut now = Instant::now();
        let mut produced = 0usize;
        loop {
            if c.flush(now).is_err() {
                return false;
            }
            if c.pending() > 0 {
                // The socket is full. A follower still notices a vanished client.
                return c.read() == ReadStatus::Open || !c.streaming();
            }
            if produced >= TURN_BUDGET {
                // Sent a turn's worth: the others go first (see TURN_BUDGET).
                c.more = true;
                return true;
            }
            if c.phase == Phase::Head {
                let closed = c.read() == ReadStatus::Closed;
                match http::parse_request(&c.inbuf) {
                    http::Parsed::Partial if closed => return false,
                    http::Parsed::Partial => return true,
                    http::Parsed::Rejected(rej) => {
                        // Errors under /api are JSON, a target that could not
                        // be parsed (`/api/job_runs/%zz`) included.
                        let line = c.inbuf.split(|&b| b == b'\n').next().unwrap_or_default();
                        let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
                        let api = target == b"/api" || target.starts_with(b"/api/");
                        c.inbuf.clear();
                        c.close_after = true;
                        let mut resp = Response::error(rej.status, &rej.reason, api);
                        if rej.status == 405 {
                            resp.headers.push(("Allow", "GET, HEAD".into()));
                        }
                        c.respond(resp, false, false, now);
                    }
                    http::Parsed::Done(req, n) => {
                        c.inbuf.drain(..n);
                        // A client that sent its requests and then shut its
                        // side (`nc -N`) gets every complete one answered;
                        // the last closes the connection.
                        if closed
                            && !matches!(http::parse_request(&c.inbuf), http::Parsed::Done(..))
                        {
                            c.close_after = true;
                        }
                        self.answer(c, &req, now);
                    }
                }
                continue;
            }
            if matches!(c.source, Source::Feed) {
                // Events are queued by `look`; until then, only a client
                // that goes away is news.
                return c.read() == ReadStatus::Open;
            }
            if matches!(c.source, Source::Events(_)) {
                let Source::Events(mut f) = std::mem::replace(&mut c.source, Source::Nothing)
                else {
                    return false;
                };
                let store = Arc::clone(&self.store);
                let job = self.jobs.get_mut(&f.job);
                let sizes = job.as_ref().map(|j| j.state.sizes);
                let pumped = c.fill(now, |out| match job {
                    Some(w) if w.gone => Err(anyhow::anyhow!("job {} is gone", f.job)),
                    // The job was deleted and a new one took its id: its lines
                    // are not this follower's to get.
                    // (Both known: a state that could not be read when the
                    // job was first followed says nothing of its run.)
                    Some(w)
                        if f.instance.is_some()
                            && w.state.instance.is_some()
                            && w.state.instance != f.instance =>
                    {
                        Err(anyhow::anyhow!("job {} was replaced by a new run", f.job))
                    }
                    Some(w) => pump_shared(store.as_ref(), &mut f, w, out),
                    None => f.pump(out, SSE_HIGH_WATER, None),
                });
                produced += c.pending();
                match pumped {
                    Ok(Pumped::Full) => c.source = Source::Events(f),
                    Ok(Pumped::Idle) => {
                        if let Some(s) = sizes {
                            f.seen = s;
                        }
                        c.source = Source::Events(f);
                        if c.pending() == 0 {
                            return c.read() == ReadStatus::Open;
                        }
                    }
                    // Done: `complete` sent, or the end of a one-shot request.
                    // Err: the job vanished under the follower (deleted); the
                    // client reconnects and learns it with a 404.
                    Ok(Pumped::Done) | Err(_) => {
                        c.close_after = true;
                        self.unfollow(&f.job);
                    }
                }
                continue;
            }
            if matches!(c.source, Source::Stream(_)) {
                let Source::Stream(mut body) = std::mem::replace(&mut c.source, Source::Nothing)
                else {
                    return false;
                };
                // One piece per turn: making it may have read many files.
                let made = c.fill(now, |out| body.produce(out, STREAM_PIECE));
                // Making it took time (a search's turn): what comes next is
                // timed from now, not blamed on the client.
                now = Instant::now();
                match made {
                    Ok(true) => {
                        c.source = Source::Stream(body);
                        c.more = true;
                        if c.pending() == 0 {
                            // Nothing to send yet (a search counting past its
                            // page): no write will fail if the client left,
                            // so look; and the wait is the server's, not an
                            // idle client's.
                            if c.read() == ReadStatus::Closed {
                                return false;
                            }
                            c.producing(now);
                        }
                    }
                    Ok(false) => {}
                    // The body cannot be finished: closing cuts it short, which
                    // the client sees (no Content-Length was promised).
                    Err(_) => return false,
                }
                if c.more {
                    return c.flush(now).is_ok();
                }
                continue;
            }
            match &mut c.source {
                Source::File { .. } => {
                    if !c.refill_file(now) {
                        return false;
                    }
                    produced += c.pending();
                }
                Source::Events(_) | Source::Feed | Source::Stream(_) => {}
                Source::Nothing => {
                    if c.close_after {
                        return false;
                    }
                    c.next_request(now);
                }
            }
        }
    }

    /// Answers one request on `c`.
    fn answer(&mut self, c: &mut Conn, req: &http::Request, now: Instant) {
        let head_only = req.method == http::Method::Head;
        let resp = if c.over_cap {
            c.close_after = true;
            let mut r = Response::error(503, "too many connections; retry shortly", false);
            r.headers.push(("Retry-After", "1".into()));
            r
        } else if let Some(msg) = self.misdirected(req) {
            c.close_after = true;
            Response::error(421, &msg, false)
        } else if !self.authorized(req) {
            let api = req.segments.first().is_some_and(|s| s == "api");
            let mut r = Response::error(
                401,
                "a token is required: send Authorization: Bearer <token> or ?token=<token>",
                api,
            );
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
            r
        } else {
            let ctx = Ctx {
                store: &self.store,
                only: self.only.as_ref(),
                order: &self.order,
            };
            routes::handle(&ctx, req)
        };
        let follows = match &resp.body {
            Body::Events(f) if !head_only => Some((f.job.clone(), f.instance.clone())),
            _ => None,
        };
        let feed = matches!(resp.body, Body::Feed) && !head_only;
        c.respond(resp, head_only, req.keep_alive, now);
        if let Some((id, instance)) = follows {
            self.follow(&id, instance);
        }
        if feed {
            self.add_feed();
        }
    }

    /// Why a request must be refused for the name it asked for, if it must: on
    /// a loopback address only loopback names (and `--allow-host` ones) are
    /// answered, so a web page whose DNS name was re-pointed at 127.0.0.1 cannot
    /// read the logs (SPEC §5, DNS rebinding). HTTP/1.0 without `Host` comes
    /// from no browser and passes.
    fn misdirected(&self, req: &http::Request) -> Option<String> {
        let host = req.host.as_deref()?;
        if !self.addr.ip().is_loopback() || http::loopback_host_allowed(host, &self.cfg.allow_hosts)
        {
            return None;
        }
        Some(format!(
            "this server listens on loopback and answers only requests for localhost, \
             127.0.0.1 or [::1], not Host {:?} (a guard against DNS rebinding); \
             start it with --allow-host {} to accept that name",
            host,
            http::host_name(host)
        ))
    }

    fn authorized(&self, req: &http::Request) -> bool {
        match &self.cfg.token {
            None => true,
            Some(t) => http::presented_token(req)
                .is_some_and(|g| http::token_matches(g.as_bytes(), t.as_bytes())),
        }
    }

    /// A follower of `id` started, of the job's run `instance`: watch its job.
    fn follow(&mut self, id: &JobId, instance: Option<String>) {
        if let Some(w) = self.jobs.get_mut(id) {
            w.followers += 1;
            if instance.is_some() && w.state.instance.is_some() && instance != w.state.instance {
                // A new run of the id, seen before the re-check: look now, so
                // the followers of the old run end and this one is served.
                self.refresh(id, true);
            }
            return;
        }
        if let Some(w) = &mut self.watcher {
            // A job that cannot be watched is still seen by the periodic re-check.
            let _ = w.watch_job(id);
        }
        let state = routes::job_state(self.store.as_ref(), id).unwrap_or(JobState {
            complete: None,
            sizes: [0; 4],
            instance: None,
        });
        self.jobs.insert(
            id.clone(),
            Watched {
                state,
                followers: 1,
                shared: HashMap::new(),
                gone: false,
            },
        );
    }

    fn unfollow(&mut self, id: &JobId) {
        let Some(w) = self.jobs.get_mut(id) else {
            return;
        };
        w.followers -= 1;
        if w.followers > 0 {
            return;
        }
        self.jobs.remove(id);
        if let Some(w) = &mut self.watcher {
            w.unwatch_job(id);
        }
    }

    /// Re-reads a followed job's log sizes, and with `status` whether it ended.
    fn refresh(&mut self, id: &JobId, status: bool) {
        let Some(w) = self.jobs.get_mut(id) else {
            return;
        };
        if status {
            match routes::job_state(self.store.as_ref(), id) {
                Ok(state) => {
                    let replaced = w.state.instance.is_some() && state.instance != w.state.instance;
                    if replaced {
                        // Deleted, and its id taken by a new job before this
                        // look: the shared events are the old run's, and its
                        // followers end (see `Server::drive`).
                        w.shared.clear();
                    }
                    w.state = state;
                    if replaced {
                        // The old run's directory took its watch with it.
                        if let Some(watcher) = &mut self.watcher {
                            let _ = watcher.watch_job(id);
                        }
                    }
                    return;
                }
                Err(e) if store::is_not_found(&e) && !self.store.job_exists(id) => {
                    w.gone = true;
                    return;
                }
                Err(_) => {}
            }
        }
        w.state.sizes = self.store.progress(id);
    }

    /// Lets every follower of `id` that has something new to read take it.
    fn wake(&mut self, id: &JobId) {
        self.wake_followers(id, false);
    }

    /// Lets every follower of `id` look for new lines.
    fn wake_all(&mut self, id: &JobId) {
        self.wake_followers(id, true);
    }

    fn wake_followers(&mut self, id: &JobId, all: bool) {
        let Some(w) = self.jobs.get(id) else {
            return;
        };
        let (sizes, done) = (w.state.sizes, w.state.complete.is_some());
        for slot in 0..self.conns.len() {
            let due = match self.conns[slot].as_mut().and_then(Conn::follower) {
                Some(f) => f.job == *id && (all || done || f.seen != sizes),
                None => false,
            };
            if due {
                self.drive(slot);
            }
        }
    }

    fn read_changes(&mut self) {
        let Some(w) = &mut self.watcher else {
            return;
        };
        let Ok(changes) = w.take_changes() else {
            return;
        };
        if changes.list || changes.overflow {
            // A job was created or removed: the job events stream says so now
            // rather than at its next look.
            self.next_look = Instant::now();
        }
        let mut dirty: HashMap<JobId, bool> = changes.jobs.into_iter().collect();
        if changes.overflow {
            for id in self.jobs.keys() {
                dirty.insert(id.clone(), true);
            }
        }
        for (id, status) in dirty {
            self.refresh(&id, status);
            self.wake(&id);
        }
    }
}

/// Pumps follower `f` of job `w`: from the job's shared events while `f` is
/// caught up with them, else from the store; a live follower that catches up
/// with the log starts the shared events of its kind if there are none yet.
fn pump_shared(
    store: &dyn LogStore,
    f: &mut follow::Follower,
    w: &mut Watched,
    out: &mut Vec<u8>,
) -> Result<Pumped> {
    let complete = w.state.complete.as_ref();
    let mut pumped = None;
    if let Some(shared) = w.shared.get_mut(&f.kind()) {
        pumped = f.pump_shared(store, shared, out, SSE_HIGH_WATER, complete, w.state.sizes)?;
    }
    let p = match pumped {
        Some(p) => p,
        None => {
            let p = f.pump(out, SSE_HIGH_WATER, complete)?;
            if p == Pumped::Idle && f.shares() && !w.shared.contains_key(&f.kind()) {
                let (which, format) = f.kind();
                // Without shared events every follower simply reads the store.
                if let Ok(s) = Shared::new(store, &f.job, which, format, f.last()) {
                    w.shared.insert(f.kind(), s);
                }
            }
            p
        }
    };
    if p == Pumped::Idle && complete.is_none() {
        // Caught up with a running job: its lines in progress. They are only
        // a preview, so one that cannot be read now is simply not shown; the
        // next change looks again.
        let shared = w.shared.get_mut(&f.kind());
        let _ = f.partial(store, shared, out, w.state.sizes, Instant::now());
    }
    Ok(p)
}

/// Token of the wake-up of a [`ServerThread`]; the server's own tokens follow.
const THREAD_WAKE: Token = Token(0);
const THREAD_SERVER: Token = Token(1);

/// What the owner of a [`ServerThread`] tells it.
#[derive(Default)]
struct Requests {
    /// New output was appended: wake the followers.
    notify: AtomicBool,
    /// Finish: serve followers the rest until then, then stop.
    stop: Mutex<Option<Instant>>,
}

/// A [`Server`] on its own thread with its own event loop: the wrapper's
/// `--listen`. Serving hundreds of followers then never takes a turn from the
/// loop that reads the child (issue point 10: 200 followers made a 2 s job
/// take 22 s when both shared one loop); the wrapper only flags new output.
pub(crate) struct ServerThread {
    requests: Arc<Requests>,
    waker: Arc<mio::Waker>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Disconnected once the thread has ended (its sender goes with it).
    ended: std::sync::mpsc::Receiver<()>,
}

impl ServerThread {
    /// Starts serving on a new thread. Fails (before any job runs) if the event
    /// loop or the thread cannot be made.
    pub(crate) fn spawn(mut server: Server) -> Result<ServerThread> {
        let poll = Poll::new().context("creating the server's event loop")?;
        let waker = Arc::new(
            mio::Waker::new(poll.registry(), THREAD_WAKE).context("creating the server's waker")?,
        );
        server.register(poll.registry(), THREAD_SERVER)?;
        let requests = Arc::new(Requests::default());
        let reqs = requests.clone();
        let (ending, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("logwrap-serve".into())
            .spawn(move || {
                let _ending = ending;
                serve_thread(server, poll, &reqs);
            })
            .context("starting the server thread")?;
        Ok(ServerThread {
            requests,
            waker,
            thread: Some(thread),
            ended,
        })
    }

    /// New output was appended to the log: the server wakes its followers.
    /// Cheap when called per chunk: one wake-up until the server has looked.
    pub(crate) fn notify(&self) {
        if !self.requests.notify.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// The job has ended and its final metadata is written: followers get the
    /// last lines and `complete`, waiting at most `grace`, then the server stops.
    pub(crate) fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + grace;
        if let Ok(mut stop) = self.requests.stop.lock() {
            *stop = Some(deadline);
        }
        let _ = self.waker.wake();
        // The thread stops at the deadline, but a pass over hundreds of
        // followers may carry it past: the job's exit waits no longer than
        // promised (the thread goes with the process). A panic in it has
        // already been reported and must not fail the job.
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = self.ended.recv_timeout(left + STOP_SLACK);
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerThread {
    /// A job that never ran (exec failed) still stops its server.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// The loop of a [`ServerThread`].
fn serve_thread(mut server: Server, mut poll: Poll, requests: &Requests) {
    let mut events = Events::with_capacity(256);
    loop {
        match poll.poll(&mut events, server.timeout()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The poll itself broke: nothing more can be served; the job goes on.
            Err(_) => return,
        }
        for ev in events.iter() {
            if server.owns(ev.token()) {
                server.handle_event(ev);
            }
        }
        if requests.notify.swap(false, Ordering::AcqRel) {
            server.notify();
        }
        let stop = requests.stop.lock().ok().and_then(|s| *s);
        if let Some(deadline) = stop {
            server.shutdown(&mut poll, deadline);
            return;
        }
        server.tick();
    }
}

/// A server needs a descriptor per connection and up to four per follower (two
/// logs, two indexes): raise the soft limit to the hard one, as servers do.
/// Returns the limit now in force, if it is known.
fn raise_fd_limit() -> Option<usize> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let now = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    Some(usize::try_from(now).unwrap_or(usize::MAX))
}

/// `logwrap serve`: serves every job under the root until killed. `cfg` comes
/// validated from `config.rs` (or from an embedder).
pub fn serve_cmd(store: Arc<dyn LogStore>, cfg: ServeConfig) -> Result<i32> {
    let mut poll = Poll::new().context("creating the event loop")?;
    let mut server = Server::bind(cfg, Arc::clone(&store), None)?;
    server.register(poll.registry(), Token(0))?;
    eprintln!(
        "logwrap: serving {}/ (jobs under {})",
        server.base_url(),
        store.location()
    );
    let mut events = Events::with_capacity(256);
    loop {
        match poll.poll(&mut events, server.timeout()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("event loop"),
        }
        for ev in events.iter() {
            server.handle_event(ev);
        }
        server.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finishing_wrapper_waits_no_longer_than_the_grace_for_its_server_thread() {
        // A server thread still busy with a pass over its followers.
        let (ending, ended) = std::sync::mpsc::channel::<()>();
        let busy = std::thread::spawn(move || {
            let _ending = ending;
            std::thread::sleep(Duration::from_secs(3));
        });
        let poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), THREAD_WAKE).unwrap());
        let server = ServerThread {
            requests: Arc::new(Requests::default()),
            waker,
            thread: Some(busy),
            ended,
        };
        let t = Instant::now();
        server.shutdown(Duration::from_millis(200));
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert_eq!(parse_listen(":9000").unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(parse_listen("9000").unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(parse_listen("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert!(parse_listen("nonsense").is_err());
        assert!(parse_listen("1.2.3.4:99999").is_err());
    }

    #[test]
    fn token_files_give_their_first_line_and_refuse_empty_or_huge_ones() {
        let dir = crate::testdir::TempDir::new("tokfile");
        let file = |name: &str, body: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        assert_eq!(read_token_file(&file("a", b"s3cret\n")).unwrap(), "s3cret");
        assert_eq!(
            read_token_file(&file("b", b"s3cret\r\n")).unwrap(),
            "s3cret"
        );
        assert_eq!(read_token_file(&file("c", b"s3cret")).unwrap(), "s3cret");
        for (name, body) in [
            ("empty", &b""[..]),
            ("newline", b"\n"),
            ("two", b"a\nb\n"),
            ("binary", b"\xff\xfe"),
        ] {
            assert!(read_token_file(&file(name, body)).is_err(), "{name}");
        }
        let huge = file("huge", &vec![b'x'; MAX_TOKEN_FILE as usize + 1]);
        assert!(format!("{:#}", read_token_file(&huge).unwrap_err()).contains("longer"));
        assert!(read_token_file(&dir.join("missing")).is_err());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let cfg = ServeConfig::new("127.0.0.1:0", Some("s3cret".into())).unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert_eq!(
            ServeConfig::new(":0", Some(String::new())).unwrap().token,
            None
        );
    }
}
