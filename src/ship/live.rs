//! The wrapper's shipper as a process of its own: `logwrap ship --live ID`,
//! started by the wrapper beside the job at the lowest CPU priority (nice 19),
//! so that neither the job nor the wrapper ever wait for the CPU it uses
//! (issue 10: `--ship` costs at most 1.1x), and the wrapper's exit never waits
//! for it (a process exits only once each of its threads has run; a separate
//! process is not one of them).
//!
//! # The two pipes
//!
//! The process's stdin is the wrapper's control pipe, one byte a message,
//! written without blocking (a full pipe already holds a wake-up):
//!
//! - `M`: metadata.json changed. The process reads it: new markers go to the
//!   jobs stream; a finished status is the job's end, and the rest and the end
//!   entry are shipped.
//! - `D`: the wrapper stops waiting for the end and leaves the rest to the
//!   process (detached): it sends nothing more until the wrapper has exited
//!   (its last steps do not compete with shipping for the CPU), then ships
//!   to the end (giving up at its first failure:
//!   then `logwrap ship` or the next wrapper's catch-up completes the job),
//!   and, once the wrapper has exited (it holds the job's lock until then),
//!   records the outcome in metadata.json.
//! - end of file without `D`: the wrapper is gone (killed mid-job) or gave up
//!   on a failing Redis; the process stops, and `logwrap ship` or the next
//!   catch-up completes the job.
//!
//! Its stdout is the answer: one line after its first attempt to ship the
//! end, `done` or `fail`. The shipping state itself is read from `ship.json`,
//! which the process keeps up to date (at least once a second and at every
//! failure), so nothing else needs to cross.

use super::shipper::{self, lock, Outcome, Shared, Shipper};
use super::ShipConfig;
use crate::metadata::{ShipState, Status};
use crate::store::{FileStore, JobId};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::process::{ChildStdin, ChildStdout};
use std::time::Instant;

/// Niceness of the shipping process: the lowest, so it uses only CPU time
/// the job, the wrapper and everything else on the machine leave; it catches
/// up when the job pauses or ends. Unlike a thread of the wrapper, it cannot
/// hold up the wrapper's exit however little CPU it gets. `SCHED_IDLE`
/// instead cost the job more (`seq 1 5000000`, 61 pairs: 1.13x against
/// 1.10x), likely because the scheduler counts a CPU that runs only
/// idle-class work as idle and wakes the job and the wrapper onto it.
const NICENESS: i32 = 19;

/// The shipping process's first attempt to connect gives up after this long
/// (later ones take up to 2 s): a local or nearby Redis answers in well under
/// it. It comes before `up`; a wrapper whose job ends before `up` does not
/// wait for it.
const FIRST_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

/// The wrapper's handle on its shipping process.
pub(crate) struct Process {
    control: Option<ChildStdin>,
    answer: ChildStdout,
    /// Bytes of the answer pipe not yet taken as words.
    heard: Vec<u8>,
    /// The process has said `up`.
    up: bool,
    pid: u32,
    store: FileStore,
    id: JobId,
    /// The state before the process has written one.
    initial: ShipState,
}

impl Process {
    /// Starts `program ship --live` for job `id`, with the URL (and its
    /// password) in its environment, never its arguments.
    pub(crate) fn spawn(
        program: &std::path::Path,
        store: &FileStore,
        id: &JobId,
        cfg: &ShipConfig,
    ) -> Result<Process> {
        let mut args: Vec<std::ffi::OsString> = vec!["ship".into(), "--live".into()];
        if let Some(ca) = cfg.ca_file() {
            args.push("--redis-ca-file".into());
            args.push(ca.into());
        }
        args.extend([
            "--log-dir".into(),
            store.root().into(),
            "--ship-maxlen".into(),
            cfg.maxlen.to_string().into(),
            "--ship-ttl".into(),
            format!("{}s", cfg.ttl.as_secs()).into(),
            id.as_str().into(),
        ]);
        let (pid, control, answer) =
            spawn_alone(program, &args, ("DATABUILD_LOG_SHIP", cfg.secret_url()))
                .with_context(|| format!("starting {} ship --live", program.display()))?;
        // The wrapper never waits on a write to the control pipe.
        let flags = nix::fcntl::fcntl(&control, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&control, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Process {
            control: Some(ChildStdin::from(control)),
            answer: ChildStdout::from(answer),
            heard: Vec::new(),
            up: false,
            pid,
            store: store.clone(),
            id: id.clone(),
            initial: ShipState {
                url: cfg.public_url(),
                ..ShipState::default()
            },
        })
    }

    /// Sends control bytes in one write (atomic, being short); a full pipe
    /// already holds a wake-up.
    fn send(&self, words: &[u8]) -> bool {
        matches!(
            self.control.as_ref().map(|mut c| c.write(words)),
            Some(Ok(n)) if n == words.len()
        )
    }

    /// metadata.json changed (markers, or the job's end).
    pub(crate) fn notify(&self) {
        self.send(b"M");
    }

    /// The state, rate and health as the process last wrote them.
    pub(crate) fn view(&self) -> (ShipState, Option<f64>, bool) {
        match shipper::read_state_file(&self.store, &self.id) {
            Some(f) => {
                let healthy = f.state.last_error.is_none();
                (f.state, f.rate, healthy)
            }
            None => (self.initial.clone(), None, true),
        }
    }

    /// The job has ended (its final metadata is on disk): waits for the
    /// process's answer until `deadline` if Redis is healthy, then lets go.
    /// A process that has not started yet (a short job, or a busy machine) is
    /// not waited for: it ships all once it does.
    pub(crate) fn finish(mut self, deadline: Instant, healthy: bool) -> Outcome {
        let mut healthy = healthy;
        if !self.up && self.next(Instant::now()) == Some(Word::Up) {
            // Judged again now that it has started.
            healthy = self.view().2;
        }
        if !self.up || (healthy && Instant::now() >= deadline) {
            // Not waited for: the end and the hand-over in one write, so
            // that the process sends nothing until the wrapper has exited.
            return self.hand_over(b"DM");
        }
        self.notify();
        let answer = if healthy {
            self.next(deadline)
        } else {
            Some(Word::Fail)
        };
        match answer {
            Some(Word::Done) => Outcome::Done(self.view().0),
            Some(Word::Fail | Word::Up) => {
                // End of file without `D`: it stops; `logwrap ship` or the
                // next wrapper's catch-up completes the job.
                self.control = None;
                Outcome::Failed(self.view().0)
            }
            None => self.hand_over(b"D"),
        }
    }

    /// Leaves the rest to the process (`D`, see the module docs).
    fn hand_over(self, words: &[u8]) -> Outcome {
        let mut state = self.view().0;
        if !self.send(words) {
            return Outcome::Failed(state);
        }
        state.last_error = Some(format!(
            "finishing in the background (logwrap ship, pid {})",
            self.pid
        ));
        Outcome::Pending(state)
    }

    /// The process's next word (`up` is remembered and passed over once the
    /// process is up); `None` at the deadline, `Fail` if it is gone.
    fn next(&mut self, deadline: Instant) -> Option<Word> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            if let Some(i) = self.heard.iter().position(|b| *b == b'\n') {
                let word = match &self.heard[..i] {
                    b"up" => Word::Up,
                    b"done" => Word::Done,
                    _ => Word::Fail,
                };
                self.heard.drain(..=i);
                if word == Word::Up {
                    let first = !self.up;
                    self.up = true;
                    if first {
                        return Some(Word::Up);
                    }
                    continue;
                }
                return Some(word);
            }
            // At the deadline, what is already there is still taken.
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.answer.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) if left.is_zero() => return None,
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(_) => return Some(Word::Fail),
            }
            let mut buf = [0u8; 64];
            match self.answer.read(&mut buf) {
                // A few short words: more is not ours to keep.
                Ok(n) if n > 0 && self.heard.len() + n <= 64 => {
                    self.heard.extend_from_slice(&buf[..n])
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                _ => return Some(Word::Fail),
            }
        }
    }
}

/// Starts `program` with `args`, and the wrapper's environment with `var`
/// set, as the shipping process: its stdin and stdout are pipes to the
/// wrapper (returned as the control pipe's write end and the answer pipe's
/// read end, with its pid), its stderr `/dev/null`, in a process group of
/// its own (a Ctrl-C at the terminal is the job's).
///
/// Nothing else of the wrapper's crosses: above all no end of the job's
/// output pipes or pty, nor a descriptor the wrapper was given without
/// close-on-exec, which a detached shipping process would otherwise hold
/// open after the wrapper has exited. `posix_spawn` does this with a
/// close-from file action (glibc 2.34 or later; where it fails, on a kernel
/// before 5.9 without `/proc`, the spawn fails and a shipping thread takes
/// over), without a `fork` of the wrapper: a fork copies its page tables and
/// write-protects its pages, so every page its loop writes next takes a fault
/// while the job's output streams in (on `seq 1 5000000` that made `--ship`
/// cost ~2% more, in paired runs).
fn spawn_alone(
    program: &std::path::Path,
    args: &[std::ffi::OsString],
    var: (&str, &str),
) -> std::io::Result<(u32, std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::ffi::CString;
    use std::io::Error;
    use std::os::unix::ffi::OsStrExt;
    let text =
        |b: &[u8]| CString::new(b).map_err(|_| Error::from(std::io::ErrorKind::InvalidInput));
    let path = text(program.as_os_str().as_bytes())?;
    let mut argv = vec![path.clone()];
    for a in args {
        argv.push(text(a.as_bytes())?);
    }
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k.as_bytes() != var.0.as_bytes() {
            envp.push(text(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
        }
    }
    envp.push(text(format!("{}={}", var.0, var.1).as_bytes())?);
    let argv_ptrs = nul_terminated(&argv);
    let envp_ptrs = nul_terminated(&envp);
    // Above the standard three, so that no dup2 onto 0 or 1 in the child
    // overwrites the other pipe's end before it is moved.
    let (control_r, control_w) = pipe_above_stdio()?;
    let (answer_r, answer_w) = pipe_above_stdio()?;
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::from_raw_os_error(rc))
        }
    };
    let null = c"/dev/null";
    let mut pid: libc::pid_t = 0;
    // SAFETY: the attribute and file-action objects are initialised before
    // use and destroyed once, after the spawn; every pointer handed over
    // (paths, the NULL-terminated argv and envp arrays) outlives the call;
    // the descriptors named are open until it returns.
    unsafe {
        let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        check(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        if let Err(e) = check(libc::posix_spawnattr_init(attr.as_mut_ptr())) {
            libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
            return Err(e);
        }
        let (fa, at) = (actions.as_mut_ptr(), attr.as_mut_ptr());
        let mut defaults = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        let mut mask = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(defaults.as_mut_ptr());
        libc::sigaddset(defaults.as_mut_ptr(), libc::SIGPIPE);
        libc::sigemptyset(mask.as_mut_ptr());
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        let spawned = check(libc::posix_spawn_file_actions_adddup2(
            fa,
            control_r.as_raw_fd(),
            0,
        ))
        .and_then(|()| {
            check(libc::posix_spawn_file_actions_adddup2(
                fa,
                answer_w.as_raw_fd(),
                1,
            ))
        })
        .and_then(|()| {
            check(libc::posix_spawn_file_actions_addopen(
                fa,
                2,
                null.as_ptr(),
                libc::O_WRONLY,
                0,
            ))
        })
        .and_then(|()| check(libc::posix_spawn_file_actions_addclosefrom_np(fa, 3)))
        .and_then(|()| check(libc::posix_spawnattr_setflags(at, flags as libc::c_short)))
        .and_then(|()| check(libc::posix_spawnattr_setpgroup(at, 0)))
        // As a `Command` does: no signal blocked, and SIGPIPE (which
        // the Rust runtime ignores) back to its default.
        .and_then(|()| check(libc::posix_spawnattr_setsigmask(at, mask.as_ptr())))
        .and_then(|()| check(libc::posix_spawnattr_setsigdefault(at, defaults.as_ptr())))
        .and_then(|()| {
            check(libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                fa,
                at,
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
            ))
        });
        libc::posix_spawnattr_destroy(at);
        libc::posix_spawn_file_actions_destroy(fa);
        spawned?;
    }
    // The child's ends are its own now.
    drop((control_r, answer_w));
    Ok((pid as u32, control_w, answer_r))
}

/// The pointers of `items` followed by a NULL, as `execve` takes them.
fn nul_terminated(items: &[std::ffi::CString]) -> Vec<*mut libc::c_char> {
    items
        .iter()
        .map(|c| c.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// A close-on-exec pipe whose two ends are above the standard descriptors
/// (where one of those is closed, a new descriptor would take its number).
fn pipe_above_stdio() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let lift = |fd: std::os::fd::OwnedFd| -> std::io::Result<std::os::fd::OwnedFd> {
        if fd.as_raw_fd() > 2 {
            return Ok(fd);
        }
        let raised = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
        // SAFETY: a descriptor fcntl just made, owned by nothing else.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(raised) })
    };
    Ok((lift(r)?, lift(w)?))
}

/// What the shipping process says on its stdout, a line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    /// Started: it holds the job's ship lock.
    Up,
    /// All shipped, end entry included.
    Done,
    /// The attempt to ship the end failed (or the process is gone).
    Fail,
}

/// `logwrap ship --live ID`: ships job `id` while its wrapper runs, as told
/// by the control pipe on stdin (see the module docs). Exit status 0 unless
/// it could not start.
pub(crate) fn run(store: &FileStore, cfg: &ShipConfig, id: &JobId) -> Result<i32> {
    // At the lowest priority before anything else: even connecting takes
    // only CPU time the job and the wrapper leave (nobody waits for it to
    // start). Not before exec, which the wrapper does wait for. The threads
    // started below inherit it.
    // SAFETY: a plain syscall on this thread, no memory handed over.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS);
    }
    let mut sh = Shipper::open(store, id, cfg, false)?
        .with_context(|| format!("{id}: another process is shipping it"))?;
    let mut started = store.read_metadata(id)?;
    if started.status.is_finished() {
        // A job over before this process read it: still, its first event.
        started.status = Status::Running;
        started.exit_code = None;
    }
    // A first attempt before saying `up`, so that a wrapper whose job ends
    // after it knows whether Redis answers (and says so in metadata.json);
    // kept short, as a host that drops packets delays `up` this long.
    if sh.connect_within(FIRST_CONNECT_TIMEOUT).is_err() {
        sh.persist();
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(b"up\n").and_then(|()| out.flush());
    let shared = shipper::shared(sh.state().clone());
    // Jobs whose shipping could not finish (issue 10 point 3), at this
    // process's priority.
    super::catch_up_in_background(store.clone(), cfg.clone(), id.clone());
    let theirs = shared.clone();
    let ship = std::thread::Builder::new()
        .name("logwrap-ship".into())
        .spawn(move || {
            let mut told = false;
            shipper::ship_loop(sh, &theirs, &started, &mut |ok| {
                if !told {
                    told = true;
                    let _ = out.write_all(if ok { b"done\n" } else { b"fail\n" });
                    let _ = out.flush();
                }
            })
        })
        .context("starting the shipping thread")?;
    control(&shared, store, id);
    // Its lock is held until the outcome is recorded: a `logwrap ship` of
    // this job waits, and finds it as recorded here.
    let Ok(_shipper) = ship.join() else {
        return Ok(1);
    };
    let (ended, detached, state) = {
        let ctl = lock(&shared.0);
        (ctl.end.is_some(), ctl.detached, ctl.state.clone())
    };
    if !ended {
        // The wrapper went away mid-job: `logwrap ship` completes it.
        return Ok(0);
    }
    // The wrapper writes metadata.json until it exits; then it is ours.
    super::wait_for_writer(store, id);
    record(store, id, &state, detached);
    Ok(0)
}

/// Reads the control pipe until the wrapper closes it (see the module docs).
fn control(shared: &Shared, store: &FileStore, id: &JobId) {
    let (m, cv) = &**shared;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let got = &buf[..n];
        let meta = got
            .contains(&b'M')
            .then(|| store.read_metadata(id).ok())
            .flatten();
        let mut ctl = lock(m);
        if let Some(meta) = meta {
            if !meta.status.is_finished() {
                ctl.markers = Some(meta);
            } else if ctl.end.is_none() {
                ctl.end = Some(meta);
            }
        }
        let handed_over = got.contains(&b'D');
        if handed_over {
            ctl.detached = true;
            ctl.hold = true;
        }
        // Shipping on with no end in sight would never stop.
        if n == 0 && (!ctl.detached || ctl.end.is_none()) {
            ctl.abandon = true;
        }
        cv.notify_all();
        drop(ctl);
        if handed_over {
            // The wrapper writes its final metadata and exits: shipping the
            // rest waits for that (milliseconds), rather than compete with it.
            super::wait_for_writer(store, id);
            lock(m).hold = false;
            cv.notify_all();
        }
        if n == 0 {
            return;
        }
    }
}

/// Records the final shipping state in metadata.json once the wrapper has
/// exited: always when it left the rest to us, else only when what it wrote
/// is no longer true (we completed after it stopped waiting).
fn record(store: &FileStore, id: &JobId, state: &ShipState, detached: bool) {
    if detached && !state.complete {
        super::mark_pending(store);
    }
    let Ok(mut meta) = store.read_metadata(id) else {
        return;
    };
    let theirs = meta.ship.as_ref().map(|s| s.complete);
    if detached || theirs != Some(state.complete) {
        meta.ship = Some(state.clone());
        if let Err(e) =
            crate::metadata::write_atomic(&store.metadata_path(id), &meta.to_json(), true)
        {
            eprintln!(
                "logwrap: warning: {id}: cannot record the shipping state in metadata.json: {e:#}"
            );
        }
    }
}
