//! The wrapper (SPEC §1): create the job, spawn the child on ptys or pipes, then
//! one mio event loop moves every chunk from the child to the store, the marker
//! scanner and the terminal copy, forwards signals, enforces `--timeout` and
//! `--kill-after`, reaps children, and drains the output after the child exits.

mod spawn;
mod tee;

use crate::exit::{self, ChildEnd};
use crate::metadata::{MarkerError, Metadata, MissingDep, Status, StreamStats};
use crate::output::annotations::{self, AnnotationScanner};
use crate::output::index::MAX_CHUNK;
use crate::output::marker::{MarkerEvent, MarkerScanner};
use crate::store::{Chunk, CreateError, JobId, JobSink, LogStore, Stream};
use crate::timefmt;
use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::errno::Errno;
use nix::pty::Winsize;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Window size used when neither the options nor the wrapper's terminal give one
/// (SPEC §1): wide enough that build tools do not wrap their progress lines.
pub(crate) const DEFAULT_COLS: u16 = 160;
/// See [`DEFAULT_COLS`].
pub(crate) const DEFAULT_ROWS: u16 = 50;

/// Most bytes the `missing_deps` entries may take in metadata.json, all markers
/// together (each is also capped at 1 MiB on its own). Real payloads list a few
/// partitions; a job printing many large markers must not make the wrapper's
/// memory, metadata.json and each of its rewrites grow without bound (40 markers
/// of 1 MiB once made a 219 MiB document). Later valid markers become
/// `marker_errors` saying they are over this cap.
pub(crate) const MAX_MISSING_DEPS_BYTES: usize = 1 << 20;

/// Most `marker_errors` entries kept; later ones are only counted in
/// `marker_errors_dropped`. A scheduler needs the first few to see what is wrong.
pub(crate) const MAX_MARKER_ERRORS: usize = 100;

/// Most `annotations` kept in metadata.json (each line at most
/// [`MAX_ANNOTATION_LINE`](crate::output::annotations::MAX_ANNOTATION_LINE));
/// later ones are only counted in `annotations_dropped`. A page lists them at
/// the top: past a few hundred nobody reads them, and metadata stays small.
pub(crate) const MAX_ANNOTATIONS: usize = 200;

/// Shortest time between two rewrites of metadata.json for markers: a flood of
/// markers costs a rewrite per interval, not one per marker, while a scheduler
/// polling the file still sees a marker within this long.
const MARKER_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Chunks read from one stream before the loop looks at the other stream and at
/// signals again, so a firehose on stdout cannot starve stderr or a Ctrl-C.
const READS_PER_TURN: usize = 8;

/// Most bytes taken in the final drain once `--drain-timeout` has passed: what
/// the kernel still buffers is far less; a grandchild still writing is not waited on.
const FINAL_DRAIN_LIMIT: usize = 16 << 20;

/// Silence after which bytes the redactor holds back (a possible start of a
/// secret) are given out unchanged: long enough that a secret written in two
/// pieces back to back is still caught, short enough that a prompt without a
/// newline shows up without a visible delay (issue 12).
const REDACT_RELEASE_AFTER: Duration = Duration::from_millis(100);

/// Everything the wrapper needs, already validated. Made with
/// [`RunConfig::new`] (the binary's defaults) and adjusted with the setters;
/// new settings may be added, so it cannot be built field by field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunConfig {
    pub job_run_id: JobId,
    /// The command and its arguments (at least one element).
    pub command: Vec<OsString>,
    /// Two ptys (true) or pipes (false).
    pub pty: bool,
    /// Do not copy the child's output to the wrapper's stdout/stderr.
    pub quiet: bool,
    /// Window size overrides; otherwise the wrapper's terminal, else 160x50.
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    pub timeout: Option<Duration>,
    pub kill_after: Duration,
    pub drain_timeout: Duration,
    pub partitions: Vec<String>,
    /// Become a child subreaper and reap every child (`waitpid(-1)`). Right for
    /// the `logwrap` binary; an embedding program that has children of its own
    /// should leave it off so their statuses are not taken.
    pub reap_orphans: bool,
    /// Retention housekeeping (SPEC §6) to run on a background thread while the
    /// job runs, at most hourly per root; `None` leaves retention to the caller.
    pub housekeeping: Option<crate::gc::Housekeeping>,
    /// Serve this job over HTTP while it runs (`--listen`, SPEC §5).
    pub listen: Option<crate::serve::ServeConfig>,
    /// Run as a child of this job (issue 13), which the caller found alive in
    /// the same store: the job's id becomes `<parent>.<n>` (see
    /// [`crate::nest`]) and `job_run_id` is not used; the parent is recorded
    /// as `parent_job_run_id`.
    pub parent: Option<JobId>,
    /// Secrets to hide in every sink (issue 12), and `DATABUILD_REDACT:`
    /// markers honoured; `None` turns redaction off.
    pub redact: Option<crate::redact::Secrets>,
    /// Keep at most about this many bytes of each stream: its head and a
    /// rolling tail, the middle omitted with an explicit gap
    /// (`--max-log-size`, issue 12); `None` keeps everything.
    pub max_log_size: Option<u64>,
    /// Ship the job's output to Redis Streams while it runs (`--ship`, SPEC §9).
    pub ship: Option<crate::ship::ShipConfig>,
}

impl RunConfig {
    /// Job `id` running `command` (program and arguments, at least the program)
    /// with the same defaults as the `logwrap` binary: PTY mode, output copied
    /// to this process's stdout and stderr, no timeout, 10 s `kill_after`, 2 s
    /// `drain_timeout`. Unlike the binary it does not reap children that are not
    /// its own, runs no housekeeping, serves nothing, and hides no environment
    /// values (only those `DATABUILD_REDACT:` marker lines name).
    pub fn new(id: JobId, command: Vec<OsString>) -> RunConfig {
        RunConfig {
            job_run_id: id,
            command,
            pty: true,
            quiet: false,
            cols: None,
            rows: None,
            timeout: None,
            kill_after: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(2),
            partitions: Vec::new(),
            reap_orphans: false,
            housekeeping: None,
            listen: None,
            parent: None,
            redact: Some(crate::redact::Secrets::new()),
            max_log_size: None,
            ship: None,
        }
    }

    /// Keep at most about `max` bytes of each stream (head and rolling tail);
    /// `None`, the default, keeps everything.
    pub fn max_log_size(mut self, max: Option<u64>) -> RunConfig {
        self.max_log_size = max;
        self
    }

    /// Two ptys (true, the default) or plain pipes (false).
    pub fn pty(mut self, pty: bool) -> RunConfig {
        self.pty = pty;
        self
    }

    /// Do not copy the child's output to this process's stdout and stderr.
    pub fn quiet(mut self, quiet: bool) -> RunConfig {
        self.quiet = quiet;
        self
    }

    /// The pty's window size, instead of this process's terminal's (or 160x50).
    pub fn window(mut self, cols: Option<u16>, rows: Option<u16>) -> RunConfig {
        self.cols = cols;
        self.rows = rows;
        self
    }

    /// End the job (TERM, then KILL after `kill_after`) when it runs longer.
    pub fn timeout(mut self, timeout: Option<Duration>) -> RunConfig {
        self.timeout = timeout;
        self
    }

    /// How long after a terminating signal the whole group gets SIGKILL.
    pub fn kill_after(mut self, kill_after: Duration) -> RunConfig {
        self.kill_after = kill_after;
        self
    }

    /// How long to keep draining output a grandchild still holds open after
    /// the job has exited.
    pub fn drain_timeout(mut self, drain_timeout: Duration) -> RunConfig {
        self.drain_timeout = drain_timeout;
        self
    }

    /// The partitions the job builds (`building_partitions` in metadata).
    pub fn partitions(mut self, partitions: Vec<String>) -> RunConfig {
        self.partitions = partitions;
        self
    }

    /// Become a child subreaper and reap every child (right for a wrapper
    /// process; leave off in a program that has children of its own).
    pub fn reap_orphans(mut self, reap: bool) -> RunConfig {
        self.reap_orphans = reap;
        self
    }

    /// Run retention housekeeping in the background while the job runs.
    pub fn housekeeping(mut self, hk: Option<crate::gc::Housekeeping>) -> RunConfig {
        self.housekeeping = hk;
        self
    }

    /// Run as a child of job `parent` (a nested job, see [`crate::nest`]): the
    /// id is claimed as `<parent>.<n>` and `job_run_id` is not used.
    pub fn parent(mut self, parent: Option<JobId>) -> RunConfig {
        self.parent = parent;
        self
    }

    /// The secrets to hide (`None`: redaction off, output byte for byte).
    /// The default hides nothing until a `DATABUILD_REDACT:` marker names a
    /// value; the binary adds secret-looking environment variables.
    pub fn redact(mut self, secrets: Option<crate::redact::Secrets>) -> RunConfig {
        self.redact = secrets;
        self
    }

    /// Ship the job's output to Redis Streams while it runs (`--ship`).
    pub fn ship(mut self, ship: Option<crate::ship::ShipConfig>) -> RunConfig {
        self.ship = ship;
        self
    }

    /// Serve the job over HTTP while it runs (`--listen`).
    pub fn listen(mut self, listen: Option<crate::serve::ServeConfig>) -> RunConfig {
        self.listen = listen;
        self
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The wrapper's exit status (SPEC §1 "Exit status").
    pub exit_code: i32,
    /// A message for stderr (exec failure), if any.
    pub error: Option<String>,
    /// The final metadata document.
    pub metadata: Metadata,
}

/// Most ids a nested wrapper tries before giving up: each failed try means
/// another wrapper claimed that child id first, so this is how many siblings
/// may start in the same instant — far more than a build runs at once, while
/// a store that refuses every id (a bug, a planted directory per id) still
/// ends in a message rather than a loop.
const MAX_CHILD_ID_CLAIMS: u64 = 1000;

/// Failure before the job could run (exit 125).
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

const OUT_TOKEN: Token = Token(0);
const ERR_TOKEN: Token = Token(1);
const SIGNAL_TOKEN: Token = Token(2);
const WAKE_TOKEN: Token = Token(3);

/// Runs the job to its end. Installs process-wide signal handling (SIGINT, SIGTERM,
/// SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 are forwarded; SIGXFSZ is ignored so a full
/// log fails a write instead of killing the wrapper).
pub fn run<S: LogStore + Clone + 'static>(
    cfg: &RunConfig,
    store: &S,
) -> Result<RunOutcome, SetupError> {
    // Before the job's files exist: making the reserve under a file size limit
    // must fail with EFBIG, not kill the wrapper.
    // SAFETY: setting a signal disposition; no handler code runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // The tail server raises the descriptor limit for itself; the job gets the
    // limit logwrap was started with (`--listen` must not change the job).
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok();
    let (id, mut sink) = create_job(cfg, store)?;
    if let Some(max) = cfg.max_log_size {
        if let Err(e) = sink.limit_size(max) {
            sink.discard();
            return Err(SetupError(format!(
                "cannot set up --max-log-size in the job directory: {e}"
            )));
        }
    }
    // A busy port must leave nothing behind: the job is removed again.
    let mut server = match &cfg.listen {
        Some(sc) => match crate::serve::Server::for_job(sc.clone(), Arc::new(store.clone()), &id) {
            Ok(srv) => Some(srv),
            Err(e) => {
                sink.discard();
                return Err(SetupError(format!("{e:#}")));
            }
        },
        None => None,
    };
    let started = Instant::now();
    let mut meta = initial_metadata(cfg, &id);
    let mut redactor = cfg.redact.as_ref().map(crate::redact::Redactor::new);
    if let Some(r) = &mut redactor {
        // The command line and cwd are sinks too (issue 12).
        for arg in &mut meta.command {
            *arg = r.redact_str(arg);
        }
        meta.cwd = r.redact_str(&meta.cwd);
        for p in &mut meta.building_partitions {
            *p = r.redact_str(p);
        }
        meta.redactions = r.redactions();
        meta.redact_skipped = r.skipped();
    }
    meta.tail_url = server.as_ref().map(|s| s.job_url(&id));
    if let Err(e) = sink.write_metadata(&meta, false) {
        // Nothing ran yet: leave nothing behind, so the same id can be retried.
        sink.discard();
        return Err(SetupError(format!("{e:#}")));
    }

    // Until the job runs, a failure leaves nothing behind (the same id can be
    // retried), as for the first metadata above.
    macro_rules! or_discard {
        ($result:expr, $what:literal) => {
            match $result {
                Ok(v) => v,
                Err(e) => {
                    sink.discard();
                    return Err(SetupError(format!(concat!($what, "{:#}"), e)));
                }
            }
        };
    }
    let poll = or_discard!(Poll::new(), "cannot create event loop: ");
    // Made before the job starts: failing once it runs would leave it unwaited.
    let waker = Arc::new(or_discard!(
        Waker::new(poll.registry(), WAKE_TOKEN),
        "cannot create waker: "
    ));
    // The server gets its own thread, so followers never slow the reading of
    // the child (issue point 10).
    let server = match server.take() {
        Some(srv) => Some(or_discard!(crate::serve::ServerThread::spawn(srv), "")),
        None => None,
    };
    if let Some(url) = &meta.tail_url {
        eprintln!("logwrap: serving {url}");
    }
    let mut signals = or_discard!(
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD, SIGWINCH]),
        "cannot install signal handlers: "
    );
    or_discard!(
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE),
        "cannot watch signals: "
    );
    if cfg.reap_orphans {
        // Without it orphans are reaped by init instead: the job still runs,
        // so a failure (an old kernel, a seccomp filter) is only reported.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn(&format!("cannot become a child subreaper: {e}"));
        }
    }

    let winsize = cfg.pty.then(|| initial_winsize(cfg));
    let mut env = vec![
        (
            OsString::from("DATABUILD_JOB_RUN_ID"),
            OsString::from(id.as_str()),
        ),
        (
            OsString::from("DATABUILD_JOB_LOG_DIR"),
            sink.dir().as_os_str().to_owned(),
        ),
    ];
    if cfg.pty && std::env::var_os("TERM").is_none() {
        env.push((OsString::from("TERM"), OsString::from("xterm-256color")));
    }
    let spawned = match spawn::spawn(&cfg.command, &env, winsize, nofile) {
        Ok(s) => s,
        Err(spawn::SpawnError::Setup(e)) => {
            sink.discard();
            return Err(SetupError(format!(
                "cannot start the job: {e} (logwrap's own failure, not the command's)"
            )));
        }
        Err(spawn::SpawnError::Exec(e)) => {
            return Ok(exec_failed(cfg, sink, meta, redactor.as_mut(), started, &e))
        }
    };
    meta.child_pid = Some(spawned.pid as u32);
    if let Err(e) = sink.write_metadata(&meta, false) {
        meta.log_errors.push(format!("metadata.json: {e:#}"));
    }
    // Shipping (issue 10) in a process or thread of its own, from the files
    // the loop writes, started by the loop once the job has run a little:
    // Redis can neither delay nor fail the job, so a failure here is recorded.
    let shipper = cfg.ship.as_ref().and_then(|sc| {
        let planned = crate::ship::file_job(sink.dir())
            .context("only jobs of a file store can be shipped")
            .map(|(fs, fid)| crate::ship::LiveShipper::new(&fs, &fid, sc, &meta));
        match planned {
            Ok(t) => Some(t),
            Err(e) => {
                if let Some(st) = &mut meta.ship {
                    st.last_error = Some(format!("{e:#}"));
                }
                None
            }
        }
    });
    // Retention (issue 5) off the critical path: the job already runs, and the
    // thread can neither delay nor fail it.
    if let Some(hk) = &cfg.housekeeping {
        crate::gc::maybe_collect_in_background(hk.clone());
    }

    // Reads are whole (`READ_SIZE`), after the room for held bytes: a read a
    // little short of a whole number of pages left the rest of its last page
    // for a second read, doubling the reads (and wake-ups) of a busy job.
    let (buf, front) = read_buffer(if redactor.is_some() { HELD_FRONT } else { 0 });
    let mut lp = Loop {
        cfg,
        poll,
        signals,
        sink,
        meta,
        started,
        child: Pid::from_raw(spawned.pid),
        child_end: None,
        timed_out: false,
        timeout_at: cfg.timeout.map(|t| started + t),
        kill_at: None,
        drain_at: None,
        want_wake: Arc::new(AtomicBool::new(false)),
        streams: Vec::new(),
        buf,
        front,
        markers: Vec::new(),
        annotations: Vec::new(),
        published_markers: 0,
        last_publish: None,
        publish_at: None,
        missing_deps_bytes: 0,
        server,
        redactor,
        redacted: Vec::new(),
        stems: Vec::new(),
        shipper,
        log_write_failed: false,
        metadata_write_failed: false,
        draining: false,
    };
    let wake_fn: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let _ = waker.wake();
    });
    let [out_tee, err_tee] = if cfg.quiet {
        [None, None]
    } else if same_file(tee::STDOUT, tee::STDERR) {
        // `2>&1`: two writers would tear each other's lines apart.
        let (o, e) = tee::Tee::start_shared(tee::STDOUT, wake_fn.clone(), lp.want_wake.clone());
        [Some(o), Some(e)]
    } else {
        [(tee::STDOUT, 0), (tee::STDERR, 1)].map(|(fd, tag)| {
            Some(tee::Tee::start(
                fd,
                tag,
                wake_fn.clone(),
                lp.want_wake.clone(),
            ))
        })
    };
    for (stream, fd, token, tee) in [
        (Stream::Stdout, spawned.stdout, OUT_TOKEN, out_tee),
        (Stream::Stderr, spawned.stderr, ERR_TOKEN, err_tee),
    ] {
        lp.add_stream(stream, fd, token, tee);
    }
    lp.run();
    Ok(lp.finish())
}

/// Creates the job: under `cfg.job_run_id`, or for a nested job under the
/// first child id of its parent that no other wrapper claimed first (creating
/// the job is the atomic claim).
fn create_job<S: LogStore>(
    cfg: &RunConfig,
    store: &S,
) -> Result<(JobId, Box<dyn JobSink>), SetupError> {
    let failed = |e: CreateError| match e {
        CreateError::IdInUse(_) => SetupError(e.to_string()),
        CreateError::Io(_) => SetupError(format!("{e}; check that the log directory is writable")),
    };
    let Some(parent) = &cfg.parent else {
        let sink = store.create_job(&cfg.job_run_id).map_err(failed)?;
        return Ok((cfg.job_run_id.clone(), sink));
    };
    let ids = store
        .job_ids()
        .map_err(|e| SetupError(format!("listing jobs to number a child of {parent}: {e:#}")))?;
    let first = crate::nest::next_child_number(parent, &ids);
    // The parent keeps the count, so a number gc freed is never taken again.
    let mut n = store.reserve_child(parent, first).unwrap_or(first);
    for _ in 0..MAX_CHILD_ID_CLAIMS {
        let id = crate::nest::child_id(parent, n).map_err(SetupError)?;
        match store.create_job(&id) {
            Ok(sink) => return Ok((id, sink)),
            Err(CreateError::IdInUse(_)) => {
                n = store.reserve_child(parent, n + 1).unwrap_or(n + 1);
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Err(SetupError(format!(
        "cannot run as a child of job {parent}: {MAX_CHILD_ID_CLAIMS} child ids from \
         {parent}.{first} on were all taken; pass --job-run-id to choose an id"
    )))
}

fn initial_metadata(cfg: &RunConfig, id: &JobId) -> Metadata {
    Metadata {
        job_run_id: id.to_string(),
        parent_job_run_id: cfg.parent.as_ref().map(JobId::to_string),
        command: cfg
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd: std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        pid: std::process::id(),
        child_pid: None,
        pty: cfg.pty,
        started_at: timefmt::rfc3339_ms(timefmt::unix_ms(std::time::SystemTime::now())),
        ended_at: None,
        duration_ms: None,
        status: Status::Running,
        exit_code: None,
        signal: None,
        wrapper_exit_code: None,
        stdout: StreamStats::default(),
        stderr: StreamStats::default(),
        missing_deps: Vec::new(),
        marker_errors: Vec::new(),
        marker_errors_dropped: 0,
        annotations: Vec::new(),
        annotations_dropped: 0,
        building_partitions: cfg.partitions.clone(),
        log_errors: Vec::new(),
        tail_url: None,
        error: None,
        redactions: 0,
        redact_skipped: Vec::new(),
        truncated: Default::default(),
        logwrap_version: env!("CARGO_PKG_VERSION").to_string(),
        ship: cfg.ship.as_ref().map(|c| crate::metadata::ShipState {
            url: c.public_url(),
            ..Default::default()
        }),
    }
}

fn initial_winsize(cfg: &RunConfig) -> Winsize {
    let own = spawn::own_winsize();
    Winsize {
        ws_col: cfg.cols.or(own.map(|w| w.ws_col)).unwrap_or(DEFAULT_COLS),
        ws_row: cfg.rows.or(own.map(|w| w.ws_row)).unwrap_or(DEFAULT_ROWS),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The command could not be executed: finish the job as failed with 126/127.
fn exec_failed(
    cfg: &RunConfig,
    mut sink: Box<dyn JobSink>,
    mut meta: Metadata,
    redactor: Option<&mut crate::redact::Redactor>,
    started: Instant,
    err: &std::io::Error,
) -> RunOutcome {
    let code = exit::exec_failure_code(err);
    let program = cfg.command[0].to_string_lossy();
    let bad_interpreter = (code == exit::NOT_FOUND)
        .then(|| missing_interpreter(&cfg.command[0]))
        .flatten();
    let message = if let Some((script, interp)) = bad_interpreter {
        format!(
            "cannot execute {}: bad interpreter: {interp} (named on its #! line) is not found; \
             install it or fix the #! line",
            script.display()
        )
    } else if code == exit::NOT_FOUND {
        format!("command not found: {program}; check the name and PATH")
    } else {
        format!("cannot execute {program}: {err}; check that it is an executable file")
    };
    // It names the command, which may hold a secret (the command line in
    // metadata is redacted too).
    let message = match redactor {
        Some(r) => r.redact_str(&message),
        None => message,
    };
    meta.status = Status::Failed;
    meta.exit_code = Some(code);
    meta.wrapper_exit_code = Some(code);
    meta.error = Some(message.clone());
    stamp_end(&mut meta, started);
    if let Err(e) = sink.write_metadata(&meta, true) {
        eprintln!("logwrap: cannot write the final metadata.json: {e:#}");
        meta.log_errors.push(format!("metadata.json: {e:#}"));
    }
    RunOutcome {
        exit_code: code,
        error: Some(message),
        metadata: meta,
    }
}

/// What to warn about after sending `sig` to `group`: nothing when it was
/// sent or the group is already gone (ESRCH, the usual race with the job's
/// exit), else the error (tini's policy).
fn signal_problem(sent: nix::Result<()>, sig: Signal, group: Pid) -> Option<String> {
    match sent {
        Ok(()) | Err(Errno::ESRCH) => None,
        Err(e) => Some(format!(
            "cannot send {sig} to the job's process group {group}: {e}"
        )),
    }
}

/// Reports a problem that does not stop the job, in one write (so it is not
/// torn by the job's own stderr copy), as `logwrap: warning: ...`.
fn warn(msg: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("logwrap: warning: {msg}\n").as_bytes());
}

/// True when descriptors `a` and `b` are the same open file (same device and
/// inode), as after `2>&1`.
fn same_file(a: tee::Fd, b: tee::Fd) -> bool {
    let stat = |fd| {
        nix::sys::stat::fstat(fd)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    };
    matches!((stat(a), stat(b)), (Some(x), Some(y)) if x == y)
}

/// Bytes `dep` takes in metadata.json: pretty-printed at the depth of a
/// `missing_deps` entry (every line of a large value is indented there too).
fn dep_size(dep: &MissingDep) -> usize {
    /// `{"a": [dep]}` puts the entry at the same depth as in metadata.json.
    #[derive(serde::Serialize)]
    struct Nest<'a> {
        a: [&'a MissingDep; 1],
    }
    /// What `{"a": [...]}` adds around the entry: `{\n  "a": [\n` and `\n  ]\n}`.
    const AROUND: usize = 17;
    pretty_json_size(&Nest { a: [dep] }) - AROUND
}

/// Bytes `v` takes pretty-printed, counted without building the text.
fn pretty_json_size(v: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing to a counter cannot fail, and a JSON value always serialises.
    let _ = serde_json::to_writer_pretty(&mut c, v);
    c.0
}

/// When exec said "not found" for a program that exists, it was the script's
/// `#!` interpreter that is missing: the script's path and that interpreter.
fn missing_interpreter(program: &std::ffi::OsStr) -> Option<(std::path::PathBuf, String)> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let candidates: Vec<std::path::PathBuf> = if program.as_bytes().contains(&b'/') {
        vec![program.into()]
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(program))
            .collect()
    };
    let script = candidates.into_iter().find(|p| p.is_file())?;
    let mut head = Vec::with_capacity(exit::SHEBANG_MAX);
    std::fs::File::open(&script)
        .ok()?
        .take(exit::SHEBANG_MAX as u64)
        .read_to_end(&mut head)
        .ok()?;
    let interp = exit::shebang_interpreter(&head)?;
    Some((script, String::from_utf8_lossy(interp).into_owned()))
}

fn stamp_end(meta: &mut Metadata, started: Instant) {
    meta.ended_at = Some(timefmt::rfc3339_ms(timefmt::unix_ms(
        std::time::SystemTime::now(),
    )));
    meta.duration_ms = Some(started.elapsed().as_millis() as u64);
}

/// One child output stream in the loop.
struct StreamState {
    stream: Stream,
    fd: OwnedFd,
    token: Token,
    open: bool,
    /// Readiness seen but not yet drained to WouldBlock (mio is edge-triggered).
    readable: bool,
    /// The poller reported the other end closed (HUP): no further readiness
    /// edge will come, so reading goes on until EOF.
    closing: bool,
    /// Appends to the log still work; after the first failure they stop.
    log_ok: bool,
    stats: StreamStats,
    ends_with_newline: bool,
    scanner: MarkerScanner,
    notes: AnnotationScanner,
    tee: Option<tee::Tee>,
    /// A chunk the terminal copy had no room for; reading waits until it is taken.
    pending: Option<Vec<u8>>,
    /// Once the job has ended, the log is not held back for a slow terminal
    /// copy: from this log offset on, the copy is read back from the log after
    /// the final metadata is written (issue "final metadata never waits").
    lag_from: Option<u64>,
    /// The redactor holds bytes of this stream back; they go out unchanged
    /// at this time unless more output resolves them first.
    release_at: Option<Instant>,
}

struct Loop<'a> {
    cfg: &'a RunConfig,
    poll: Poll,
    signals: Signals,
    sink: Box<dyn JobSink>,
    meta: Metadata,
    started: Instant,
    child: Pid,
    child_end: Option<ChildEnd>,
    timed_out: bool,
    timeout_at: Option<Instant>,
    kill_at: Option<Instant>,
    drain_at: Option<Instant>,
    want_wake: Arc<AtomicBool>,
    streams: Vec<StreamState>,
    /// The read buffer: reads go to `buf[front..]`; with a redactor the
    /// [`HELD_FRONT`] bytes before them take back what it held from the last
    /// read, so the two are searched as one chunk instead of being copied
    /// together (see [`Redactor::unhold_into`]).
    buf: Vec<u8>,
    front: usize,
    markers: Vec<MarkerEvent>,
    /// Annotation lines found but not yet put in the metadata.
    annotations: Vec<annotations::Annotation>,
    /// Marker entries already in the last metadata.json written.
    published_markers: usize,
    /// When metadata.json was last rewritten for markers.
    last_publish: Option<Instant>,
    /// A deferred rewrite for markers is due then.
    publish_at: Option<Instant>,
    /// Bytes the `missing_deps` entries take (see [`MAX_MISSING_DEPS_BYTES`]).
    missing_deps_bytes: usize,
    /// The tail server (`--listen`), on its own thread; told of new output.
    server: Option<crate::serve::ServerThread>,
    /// Stands in front of every sink (store, markers, terminal copy) when
    /// redaction is on.
    redactor: Option<crate::redact::Redactor>,
    /// The redactor's output for the chunk at hand (reused).
    redacted: Vec<u8>,
    /// Where [`crate::output::marker::MARKER_STEM`] occurs in the chunk being
    /// redacted (reused from read to read).
    stems: Vec<usize>,
    /// The shipper (`--ship`): a process or thread of its own reading the
    /// job's files.
    shipper: Option<crate::ship::LiveShipper>,
    /// A log append has failed (and been reported on stderr).
    log_write_failed: bool,
    /// A metadata rewrite while running has failed (and been recorded).
    metadata_write_failed: bool,
    /// In the final drain: a chunk that is not in the log waits for the
    /// terminal copy (while its reader reads) instead of pausing reads.
    draining: bool,
}

enum ReadResult {
    Data(usize),
    WouldBlock,
    Closed,
}

/// Most bytes read from the child at once: four index records' worth. A
/// busy pipe (1 MiB, see `spawn`) then costs a quarter of the reads and
/// wake-ups that 64 KiB reads did (a wake-up is dear in a VM), for 192 KiB
/// more of buffer; the store still records at most [`MAX_CHUNK`] bytes at
/// once (see `FileJobSink::append`).
const READ_SIZE: usize = 4 * MAX_CHUNK;

/// Room before each read for what the redactor held back from the last one
/// (a partial match, after a full read up to a page more): searched again with
/// the new bytes as one chunk; a longer partial match (rare: a URL-encoded
/// long value) takes the slower path that joins them by copying.
const HELD_FRONT: usize = crate::redact::ALIGN_HOLD;

/// The read buffer, with at least `room` bytes before the part reads go to
/// (`buf[front..]`, [`READ_SIZE`] bytes), which starts at a page boundary.
///
/// Every byte read is copied twice: by `read` from the pipe's pages, which
/// are page-aligned, into this buffer, and by `write` from it into the log's
/// page cache. Copies whose source and destination sit a little apart in
/// their pages are much slower on x86 (a store and a later load 4 KiB apart
/// alias), and a heap buffer this large starts 16 bytes into a page: 200 MB
/// through the unaligned buffer took 1.5-1.8x the CPU time (median of 15
/// paired runs, `make bench`'s mixed workload), nearly all in those copies.
fn read_buffer(room: usize) -> (Vec<u8>, usize) {
    let page = crate::redact::PAGE;
    // Zeroed by the allocator (fresh pages, not yet resident), not by
    // writing zeros: the pages the job never fills cost no memory.
    let mut buf = vec![0u8; page + room + READ_SIZE];
    let at = buf.as_ptr() as usize + room;
    let front = room + (page - at % page) % page;
    buf.truncate(front + READ_SIZE);
    (buf, front)
}

fn read_chunk(fd: &OwnedFd, buf: &mut [u8]) -> ReadResult {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(0) => return ReadResult::Closed,
            Ok(n) => return ReadResult::Data(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return ReadResult::WouldBlock,
            // EIO is how a pty master reports that every slave end is closed.
            Err(_) => return ReadResult::Closed,
        }
    }
}

impl Loop<'_> {
    fn add_stream(&mut self, stream: Stream, fd: OwnedFd, token: Token, tee: Option<tee::Tee>) {
        let raw = fd.as_raw_fd();
        let registered =
            self.poll
                .registry()
                .register(&mut SourceFd(&raw), token, Interest::READABLE);
        self.streams.push(StreamState {
            stream,
            fd,
            token,
            open: true,
            // If registration failed, reading still works by polling on a short
            // timeout; start as readable so nothing waits for an edge.
            readable: true,
            closing: false,
            log_ok: true,
            stats: StreamStats::default(),
            ends_with_newline: true,
            scanner: MarkerScanner::default(),
            notes: AnnotationScanner::default(),
            tee,
            pending: None,
            lag_from: None,
            release_at: None,
        });
        if let Err(e) = registered {
            self.meta
                .log_errors
                .push(format!("cannot watch {}: {e}", stream.name()));
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(16);
        loop {
            self.flush_pending();
            if self.child_end.is_some() && self.streams.iter().all(|s| !s.open) {
                return;
            }
            let now = Instant::now();
            if let Some(at) = self.drain_at {
                if now >= at {
                    self.final_drain();
                    return;
                }
            }
            self.check_deadlines(now);
            self.release_held(now);
            if let Some(sh) = &mut self.shipper {
                sh.start_if_due(now, &self.meta);
            }
            let busy = self
                .streams
                .iter()
                .any(|s| s.open && s.readable && s.pending.is_none());
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                self.next_deadline(now)
            };
            if self.streams.iter().any(|s| s.pending.is_some()) {
                self.want_wake.store(true, Ordering::SeqCst);
                // The tee may have made room between our last try and the flag.
                if self.flush_pending() {
                    continue;
                }
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.meta.log_errors.push(format!("event loop failed: {e}"));
                    self.final_drain();
                    return;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL_TOKEN => self.handle_signals(),
                    WAKE_TOKEN => {}
                    t => {
                        if let Some(s) = self.streams.iter_mut().find(|s| s.token == t) {
                            s.readable = true;
                            // The writer side is gone: that edge comes once, so
                            // read on to EOF even after short reads.
                            s.closing |= ev.is_read_closed() || ev.is_error();
                        }
                    }
                }
            }
            for i in 0..self.streams.len() {
                self.read_stream(i, READS_PER_TURN);
            }
            self.publish_markers();
        }
    }

    /// Offers each held-back chunk to its terminal copy again; true if any moved.
    fn flush_pending(&mut self) -> bool {
        let mut moved = false;
        for s in &mut self.streams {
            if let (Some(buf), Some(tee)) = (s.pending.take(), s.tee.as_ref()) {
                match tee.try_send(buf) {
                    Ok(()) => moved = true,
                    Err(buf) => s.pending = Some(buf),
                }
            }
        }
        moved
    }

    /// Reads up to `max_reads` chunks from stream `i`.
    fn read_stream(&mut self, i: usize, max_reads: usize) -> usize {
        let mut total = 0;
        for _ in 0..max_reads {
            let s = &mut self.streams[i];
            if !s.open || !s.readable || s.pending.is_some() {
                break;
            }
            let front = self.front;
            match read_chunk(&s.fd, &mut self.buf[front..]) {
                ReadResult::WouldBlock => {
                    s.readable = false;
                    self.give_extra(i);
                }
                ReadResult::Closed => self.close_stream(i),
                ReadResult::Data(n) => {
                    total += n;
                    // A short read took all there was: pipes and ptys wake the
                    // poller on every later write, so the EAGAIN read that would
                    // confirm it is skipped (a pty hands out ~4 KiB a read, so
                    // this saves a syscall on nearly every chunk).
                    if n < self.buf.len() - front && !self.streams[i].closing {
                        self.streams[i].readable = false;
                    }
                    self.take_chunk(i, n);
                }
            }
        }
        total
    }

    /// Takes `n` bytes just read from stream `i`: through the redactor (which
    /// may hold back the start of a possible secret) to every sink.
    fn take_chunk(&mut self, i: usize, n: usize) {
        let front = self.front;
        let Some(r) = &mut self.redactor else {
            let buf = std::mem::take(&mut self.buf);
            self.deliver(i, &buf[front..front + n], None);
            self.buf = buf;
            return;
        };
        let mut out = std::mem::take(&mut self.redacted);
        out.clear();
        let index = self.streams[i].stream.index();
        // What it held goes back in front of the new bytes: one chunk to
        // search, and in the common case (no match) handed on uncopied.
        let h = r.unhold_into(index, &mut self.buf[..front]).unwrap_or(0);
        let start = front - h;
        // A full read: more is waiting, so the bytes given out may end at a
        // page of the log (the rest goes out with the next read).
        let align = (n == READ_SIZE).then(|| {
            let page = crate::redact::PAGE as u64;
            ((page - self.streams[i].stats.bytes % page) % page) as usize
        });
        // One search for the stem of both markers, for the redactor and,
        // when the chunk goes out unchanged, the marker scanner.
        let mut stems = std::mem::take(&mut self.stems);
        stems.clear();
        let input = &self.buf[start..front + n];
        crate::output::marker::find_stems(input, &mut stems);
        let marks = crate::redact::Marks::Stems(&stems);
        let unchanged = r.feed(index, input, &mut out, align, marks);
        self.streams[i].release_at = r
            .holds(index)
            .then(|| Instant::now() + REDACT_RELEASE_AFTER);
        if let Some(k) = unchanged {
            self.redacted = out;
            if k > 0 {
                // Held bytes and a whole read may be a little over a read:
                // the store still records at most `MAX_CHUNK` bytes at once
                // (see `FileJobSink::append`), and the rest takes any size.
                let buf = std::mem::take(&mut self.buf);
                self.deliver(i, &buf[start..start + k], Some(&stems));
                self.buf = buf;
            }
            self.stems = stems;
            return;
        }
        self.stems = stems;
        self.deliver_pieces(i, &out);
        self.redacted = out;
    }

    /// Gives out the bytes the redactor held after a full read only to end
    /// at a page boundary: no more input came after all.
    fn give_extra(&mut self, i: usize) {
        self.give_held(i, |r, s, out| r.take_extra(s, out));
    }

    /// Hands to the sinks what `take` gets out of the redactor for stream
    /// `i`, and times the release of what it still holds.
    fn give_held(
        &mut self,
        i: usize,
        take: impl FnOnce(&mut crate::redact::Redactor, usize, &mut Vec<u8>),
    ) {
        let Some(r) = &mut self.redactor else {
            return;
        };
        let mut out = std::mem::take(&mut self.redacted);
        out.clear();
        let index = self.streams[i].stream.index();
        take(r, index, &mut out);
        self.streams[i].release_at = r
            .holds(index)
            .then(|| Instant::now() + REDACT_RELEASE_AFTER);
        self.deliver_pieces(i, &out);
        self.redacted = out;
    }

    /// Gives out what the redactor holds for streams silent for
    /// [`REDACT_RELEASE_AFTER`] (unless their terminal copy is still full).
    fn release_held(&mut self, now: Instant) {
        for i in 0..self.streams.len() {
            let s = &self.streams[i];
            if s.pending.is_some() || s.release_at.is_none_or(|t| now < t) {
                continue;
            }
            self.streams[i].release_at = None;
            self.flush_redactor(i, false);
        }
    }

    /// Gives out everything the redactor holds for stream `i`; at the end of
    /// the stream (`end`) an open `DATABUILD_REDACT:` line ends too.
    fn flush_redactor(&mut self, i: usize, end: bool) {
        self.give_held(i, |r, s, out| {
            if end {
                r.finish(s, out);
            } else {
                r.release(s, out);
            }
        });
    }

    /// Hands `data` to the sinks in pieces of at most [`READ_SIZE`]
    /// (redaction may make a read's output longer, and the terminal copy
    /// queues whole pieces).
    fn deliver_pieces(&mut self, i: usize, data: &[u8]) {
        for piece in data.chunks(READ_SIZE) {
            self.deliver(i, piece, None);
        }
    }

    /// Hands `chunk` (non-empty or ignored) of stream `i` to the store, the
    /// marker scanner and the terminal copy.
    fn deliver(&mut self, i: usize, chunk: &[u8], stems: Option<&[usize]>) {
        let n = chunk.len();
        if n == 0 {
            return;
        }
        let s = &mut self.streams[i];
        let piece = Chunk::new(chunk, timefmt::now_us());
        if s.log_ok {
            if let Err(e) = self.sink.append(s.stream, &piece) {
                s.log_ok = false;
                if let Some(from) = s.lag_from.take() {
                    // The copy was to be read back from the log, which now
                    // ends short of this chunk: what it holds of the lag goes
                    // to the copy now, so this chunk and the rest (in the
                    // copy only) follow it in order.
                    let lag = self
                        .sink
                        .log_reader(s.stream, from)
                        .map(|file| tee::CatchUp {
                            file,
                            from,
                            to: s.stats.bytes,
                        });
                    if let (Some(tee), Some(lag)) = (&s.tee, lag) {
                        tee.send_from_log(&lag, self.cfg.drain_timeout);
                    }
                }
                // What the log holds: a write may have failed part way.
                let held = self
                    .sink
                    .log_reader(s.stream, 0)
                    .and_then(|f| f.metadata().ok())
                    .map_or(s.stats.bytes, |m| m.len());
                let error = format!(
                    "{}.log: write failed after {held} bytes: {e}; the rest of {} went to the terminal copy only",
                    s.stream.name(),
                    s.stream.name()
                );
                if !self.log_write_failed {
                    self.log_write_failed = true;
                    // Once per job, so the person at the terminal knows the log
                    // is short; later failures are only in metadata.json.
                    eprintln!(
                        "logwrap: {error} (the job goes on; see log_errors in metadata.json)"
                    );
                }
                self.meta.log_errors.push(error);
            }
        }
        s.stats.bytes += n as u64;
        s.stats.lines += piece.newlines();
        s.ends_with_newline = chunk[n - 1] == b'\n';
        let before = self.markers.len();
        s.scanner
            .feed_counted(chunk, piece.newlines(), stems, &mut self.markers);
        s.notes
            .feed_counted(chunk, piece.newlines(), &mut self.annotations);
        let stream = s.stream;
        if let (Some(pending), Some(tee)) = (&mut s.pending, &s.tee) {
            // A second piece of one read (redaction made it longer than a
            // chunk): it queues behind the first, in order.
            if s.lag_from.is_none() && !tee.is_dead() {
                pending.extend_from_slice(chunk);
            }
        } else if let Some(tee) = &s.tee {
            if s.lag_from.is_none() && !tee.is_dead() && !tee.write_inline(chunk) {
                let copy = tee.buffer_for(chunk);
                if let Err(copy) = tee.try_send(copy) {
                    if self.child_end.is_some() && s.log_ok {
                        // The job is over: back-pressure has no one left to
                        // slow down, and would only hold up the final status.
                        s.lag_from = Some(s.stats.bytes - n as u64);
                    } else if self.draining {
                        // Not in the log: the copy is all there is, so wait
                        // for the reader while it reads.
                        tee.send_patiently(copy, self.cfg.drain_timeout);
                    } else {
                        s.pending = Some(copy);
                    }
                }
            }
        }
        self.tag_markers(before, stream);
        self.tag_annotations(stream);
        if let Some(srv) = &self.server {
            srv.notify();
        }
    }

    fn close_stream(&mut self, i: usize) {
        // What the redactor held is the stream's last output.
        self.streams[i].release_at = None;
        self.flush_redactor(i, true);
        let s = &mut self.streams[i];
        s.open = false;
        s.readable = false;
        let raw = s.fd.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        let before = self.markers.len();
        s.scanner.finish(&mut self.markers);
        s.notes.finish(&mut self.annotations);
        let stream = s.stream;
        self.tag_markers(before, stream);
        self.tag_annotations(stream);
    }

    /// Moves newly found annotations of `stream` into the metadata, within
    /// [`MAX_ANNOTATIONS`].
    fn tag_annotations(&mut self, stream: Stream) {
        for a in self.annotations.drain(..) {
            if self.meta.annotations.len() >= MAX_ANNOTATIONS {
                self.meta.annotations_dropped += 1;
                continue;
            }
            self.meta.annotations.push(crate::metadata::Annotation {
                level: a.level.to_string(),
                message: a.message,
                file: a.file,
                line: a.line,
                title: a.title,
                stream: stream.name().to_string(),
                log_line: a.log_line,
            });
        }
    }

    /// Moves newly found markers of `stream` into the metadata, within the caps
    /// ([`MAX_MISSING_DEPS_BYTES`], [`MAX_MARKER_ERRORS`]).
    fn tag_markers(&mut self, from: usize, stream: Stream) {
        for ev in self.markers.drain(from..) {
            let name = stream.name().to_string();
            let error = match ev.result {
                Ok(value) => {
                    let dep = MissingDep {
                        stream: name.clone(),
                        line: ev.line,
                        value,
                    };
                    let size = dep_size(&dep);
                    if self.missing_deps_bytes + size <= MAX_MISSING_DEPS_BYTES {
                        self.missing_deps_bytes += size;
                        self.meta.missing_deps.push(dep);
                        continue;
                    }
                    format!(
                        "marker is {size} bytes in metadata, over the total cap of \
                         {MAX_MISSING_DEPS_BYTES} bytes for all markers of a job; not recorded"
                    )
                }
                Err(error) => error,
            };
            if self.meta.marker_errors.len() < MAX_MARKER_ERRORS {
                self.meta.marker_errors.push(MarkerError {
                    stream: name,
                    line: ev.line,
                    error,
                });
            } else {
                self.meta.marker_errors_dropped += 1;
            }
        }
    }

    /// Rewrites metadata.json if markers were recorded since the last write, so
    /// a scheduler polling it sees them while the job runs; at most once per
    /// [`MARKER_PUBLISH_INTERVAL`] (the loop wakes up for a deferred one).
    fn publish_markers(&mut self) {
        let n = self.meta.missing_deps.len()
            + self.meta.marker_errors.len()
            + self.meta.annotations.len();
        if n == self.published_markers {
            return;
        }
        let now = Instant::now();
        if let Some(at) = self.last_publish.map(|t| t + MARKER_PUBLISH_INTERVAL) {
            if now < at {
                self.publish_at = Some(at);
                return;
            }
        }
        self.publish_at = None;
        self.last_publish = Some(now);
        self.published_markers = n;
        self.sync_stats();
        if let Some(sh) = &self.shipper {
            self.meta.ship = Some(sh.state());
        }
        if let Err(e) = self.sink.write_metadata(&self.meta, false) {
            // Recorded once: on a full disk every later rewrite fails too.
            if !self.metadata_write_failed {
                self.metadata_write_failed = true;
                self.meta.log_errors.push(format!("metadata.json: {e:#}"));
            }
        }
        // After the write: a shipping process reads the markers from there.
        if let Some(sh) = &mut self.shipper {
            sh.markers(&self.meta);
        }
    }

    fn sync_stats(&mut self) {
        if let Some(r) = &self.redactor {
            self.meta.redactions = r.redactions();
            self.meta.redact_skipped = r.skipped();
        }
        for stream in Stream::BOTH {
            if let Some(e) = self.sink.limit_error(stream) {
                let e = format!("{}: {e}", stream.name());
                if !self.meta.log_errors.contains(&e) {
                    self.meta.log_errors.push(e);
                }
            }
        }
        self.meta.truncated = crate::metadata::Truncated {
            stdout: self.sink.omitted(Stream::Stdout),
            stderr: self.sink.omitted(Stream::Stderr),
        };
        for s in &self.streams {
            let mut stats = s.stats;
            // A final line without a newline is still a line.
            stats.lines += u64::from(!s.ends_with_newline && stats.bytes > 0);
            match s.stream {
                Stream::Stdout => self.meta.stdout = stats,
                Stream::Stderr => self.meta.stderr = stats,
            }
        }
    }

    fn handle_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGCHLD => self.reap(),
                SIGWINCH => self.resize(),
                _ => {
                    let Ok(signal) = Signal::try_from(sig) else {
                        continue;
                    };
                    self.signal_group(signal);
                    if matches!(sig, SIGINT | SIGTERM | SIGHUP | SIGQUIT) {
                        self.continue_group();
                        if self.kill_at.is_none() {
                            self.kill_at = Some(Instant::now() + self.cfg.kill_after);
                        }
                    }
                }
            }
        }
    }

    /// Sends `sig` to the child's process group (it leads its own session). ESRCH
    /// (the group is gone) is expected near the end and not an error; anything
    /// else (EPERM: the group changed hands) is reported, as tini does.
    fn signal_group(&self, sig: Signal) {
        let sent = kill(Pid::from_raw(-self.child.as_raw()), sig);
        if let Some(problem) = signal_problem(sent, sig, self.child) {
            warn(&problem);
        }
    }

    /// Sends SIGCONT to the child's group after a signal meant to end it, as
    /// `timeout(1)` does: a stopped job would otherwise only get it (and run
    /// its handlers) once continued, and sit stopped until `--kill-after`.
    fn continue_group(&self) {
        let _ = kill(Pid::from_raw(-self.child.as_raw()), Signal::SIGCONT);
    }

    fn resize(&mut self) {
        if !self.cfg.pty || (self.cfg.cols.is_some() && self.cfg.rows.is_some()) {
            return;
        }
        let ws = initial_winsize(self.cfg);
        for s in self.streams.iter().filter(|s| s.open) {
            spawn::set_winsize(&s.fd, &ws);
        }
    }

    /// Reaps every child that has ended: the main child's status is kept; orphaned
    /// grandchildren (we are their subreaper) are just collected.
    fn reap(&mut self) {
        let target = if self.cfg.reap_orphans {
            None
        } else {
            Some(self.child)
        };
        let target = target.map_or(-1, Pid::as_raw);
        loop {
            // Decoded here, not by nix's WaitStatus: it has no name for a
            // real-time signal, and its error for one came after the kernel
            // had handed over the status, so a job killed by SIGRTMIN was
            // never seen to end and the wrapper waited forever.
            let mut status = 0;
            // SAFETY: `status` is a valid place for the kernel to write to.
            let pid = unsafe { libc::waitpid(target, &mut status, libc::WNOHANG) };
            match pid {
                0 => return, // children left, none ended
                -1 if Errno::last() == Errno::EINTR => continue,
                -1 => return, // ECHILD: none left
                _ => {}
            }
            if pid == self.child.as_raw() {
                if let Some(end) = ChildEnd::from_wait_status(status) {
                    self.child_ended(end);
                }
            }
            if target != -1 && self.child_end.is_some() {
                return;
            }
        }
    }

    fn child_ended(&mut self, end: ChildEnd) {
        self.child_end = Some(end);
        for s in self.streams.iter_mut().filter(|s| s.log_ok) {
            // Already in the log: read back from there later.
            if let Some(buf) = s.pending.take() {
                s.lag_from = Some(s.stats.bytes - buf.len() as u64);
            }
        }
        self.drain_at = Some(Instant::now() + self.cfg.drain_timeout);
    }

    fn check_deadlines(&mut self, now: Instant) {
        // Once the job has ended, a SIGKILL still due is for what it left in
        // its group (a Ctrl-C while they hold the output open), so the drain
        // does not run its whole course.
        if self.kill_at.is_some_and(|t| now >= t) && self.child_end.is_some() {
            self.kill_at = None;
            self.signal_group(Signal::SIGKILL);
        }
        if self.child_end.is_some() {
            return;
        }
        if self.timeout_at.is_some_and(|t| now >= t) {
            self.timeout_at = None;
            self.timed_out = true;
            self.signal_group(Signal::SIGTERM);
            self.continue_group();
            self.kill_at.get_or_insert(now + self.cfg.kill_after);
        }
        if self.kill_at.is_some_and(|t| now >= t) {
            self.kill_at = None;
            self.signal_group(Signal::SIGKILL);
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let alive = self.child_end.is_none();
        [
            self.timeout_at.filter(|_| alive),
            self.kill_at,
            self.drain_at,
            self.publish_at,
            self.shipper.as_ref().and_then(|s| s.due_at()),
            // A stream waiting for its terminal copy releases once that moves.
            self.streams
                .iter()
                .filter(|s| s.pending.is_none())
                .filter_map(|s| s.release_at)
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    /// After `--drain-timeout`: take what the kernel still holds, then stop
    /// reading. A grandchild holding the output open loses nothing it wrote
    /// before this point; a terminal copy that cannot keep up is read back from
    /// the log later.
    fn final_drain(&mut self) {
        self.draining = true;
        for i in 0..self.streams.len() {
            let s = &mut self.streams[i];
            if let (Some(buf), Some(tee)) = (s.pending.take(), s.tee.as_ref()) {
                tee.send_patiently(buf, self.cfg.drain_timeout);
            }
            s.readable = true;
            let mut taken = 0;
            while self.streams[i].open && self.streams[i].readable && taken < FINAL_DRAIN_LIMIT {
                let n = self.read_stream(i, 1);
                if n == 0 {
                    break;
                }
                taken += n;
            }
            if self.streams[i].open {
                self.close_stream(i);
            }
        }
    }

    /// Writes the final metadata, releases the job, waits for the terminal copy.
    fn finish(mut self) -> RunOutcome {
        self.sync_stats();
        let end = self
            .child_end
            .unwrap_or(ChildEnd::Exited(exit::WRAPPER_FAILED));
        let (status, exit_code) = match end {
            _ if self.timed_out => (Status::TimedOut, exit::TIMED_OUT),
            ChildEnd::Exited(0) => (Status::Succeeded, 0),
            ChildEnd::Exited(_) => (Status::Failed, end.exit_code()),
            ChildEnd::Signaled(_) => (Status::Killed, end.exit_code()),
        };
        self.meta.status = status;
        self.meta.wrapper_exit_code = Some(exit_code);
        match end {
            ChildEnd::Exited(code) => self.meta.exit_code = Some(code),
            ChildEnd::Signaled(sig) => self.meta.signal = Some(exit::signal_name(sig)),
        }
        stamp_end(&mut self.meta, self.started);
        if let Err(e) = self.sink.finish() {
            self.meta
                .log_errors
                .push(format!("finishing the logs: {e}"));
        }
        if let Some(mut sh) = self.shipper.take() {
            // A job shorter than the shipping's start delay: it starts now.
            sh.start(&self.meta);
            // The rest goes out now if Redis answers; while it is down the
            // wrapper does not wait (`logwrap ship` completes the job later).
            // A shipping process reads the job's end from metadata.json: the
            // final document but for the outcome of shipping, rewritten below
            // (a thread is told directly).
            if sh.reads_end_from_disk() {
                self.meta.ship = Some(sh.state());
                if let Err(e) = self.sink.write_metadata(&self.meta, false) {
                    if !self.metadata_write_failed {
                        self.metadata_write_failed = true;
                        self.meta.log_errors.push(format!("metadata.json: {e:#}"));
                    }
                }
            }
            self.meta.ship = Some(sh.finish(&self.meta));
        }
        if let Err(e) = self.sink.write_metadata(&self.meta, true) {
            eprintln!("logwrap: cannot write the final metadata.json: {e:#}");
            self.meta.log_errors.push(format!("metadata.json: {e:#}"));
        }
        if let Some(srv) = self.server.take() {
            // Followers get the last lines and `complete` before the job is let go.
            srv.shutdown(crate::serve::SHUTDOWN_GRACE);
        }
        // The terminal copy that fell behind the log is read back from it after
        // the job is released; a reader that stops reading for a whole
        // --drain-timeout is given up on.
        let catch_up: Vec<_> = self
            .streams
            .iter()
            .map(|s| {
                let from = s.lag_from?;
                let file = self.sink.log_reader(s.stream, from)?;
                Some(tee::CatchUp {
                    file,
                    from,
                    to: s.stats.bytes,
                })
            })
            .collect();
        let meta = self.meta;
        drop(self.sink);
        let mut tees: Vec<tee::Tee> = Vec::new();
        // All handles close before any is waited on: a shared copy's thread
        // ends only when both have.
        for (s, catch_up) in self.streams.into_iter().zip(catch_up) {
            if let Some(mut tee) = s.tee {
                tee.close(catch_up);
                tees.push(tee);
            }
        }
        for tee in tees {
            tee.wait(self.cfg.drain_timeout);
        }
        RunOutcome {
            exit_code,
            error: None,
            metadata: meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_to_a_page_boundary_after_the_room_asked_for() {
        for room in [0, 1, 16, HELD_FRONT, crate::redact::PAGE] {
            let (mut buf, front) = read_buffer(room);
            assert!(
                front >= room && front < room + crate::redact::PAGE,
                "{room}: {front}"
            );
            assert_eq!(buf.len(), front + READ_SIZE);
            assert_eq!(buf[front..].as_ptr() as usize % crate::redact::PAGE, 0);
            // Moved as the loop moves it (taken and put back): still there.
            let at = buf.as_ptr();
            let taken = std::mem::take(&mut buf);
            assert_eq!(taken.as_ptr(), at);
        }
    }

    #[test]
    fn only_signal_errors_other_than_esrch_are_reported() {
        let pid = Pid::from_raw(42);
        assert_eq!(signal_problem(Ok(()), Signal::SIGTERM, pid), None);
        assert_eq!(
            signal_problem(Err(Errno::ESRCH), Signal::SIGKILL, pid),
            None
        );
        let warning = signal_problem(Err(Errno::EPERM), Signal::SIGTERM, pid).unwrap();
        assert!(warning.contains("SIGTERM"), "{warning}");
        assert!(warning.contains("42"), "{warning}");
    }
    use crate::store::JobId;

    #[test]
    fn dep_size_is_what_the_entry_adds_to_metadata_json() {
        let cfg = RunConfig {
            job_run_id: JobId::parse("j").unwrap(),
            command: vec!["true".into()],
            pty: false,
            quiet: true,
            cols: None,
            rows: None,
            timeout: None,
            kill_after: Duration::ZERO,
            drain_timeout: Duration::ZERO,
            partitions: Vec::new(),
            reap_orphans: false,
            housekeeping: None,
            listen: None,
            parent: None,
            redact: None,
            max_log_size: None,
            ship: None,
        };
        let mut meta = initial_metadata(&cfg, &cfg.job_run_id);
        let dep = MissingDep {
            stream: "stdout".into(),
            line: 7,
            value: serde_json::json!({"partitions": ["a/b", "c"], "n": [1, 2, {"x": null}]}),
        };
        let one = {
            meta.missing_deps.push(dep.clone());
            meta.to_json().len()
        };
        meta.missing_deps.push(dep.clone());
        let two = meta.to_json().len();
        // The second entry adds itself and the ",\n" before it.
        assert_eq!(two - one, dep_size(&dep) + 2);
    }
}
