//! Starting the child: two ptys (stdout and stderr both terminals, yet separate)
//! or plain pipes, in a new session so signals reach its whole process group.

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, Winsize};
use nix::sys::termios::{
    tcgetattr, tcsetattr, LocalFlags, OutputFlags, SetArg, SpecialCharacterIndices,
};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// A started child and the read ends of its output.
pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Pipe capacity asked for in pipe mode. The default 64 KiB makes a fast child
/// wait on every read; 1 MiB lets the wrapper take bigger chunks. Failure (an
/// unprivileged process over `/proc/sys/fs/pipe-max-size`) is harmless.
const PIPE_SIZE: i32 = 1 << 20;

/// Why a job could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// The wrapper could not make what the job needs (terminals, pipes, a
    /// process): out of descriptors, processes or memory. logwrap's failure.
    Setup(io::Error),
    /// The command itself could not be executed (not found, not executable).
    Exec(io::Error),
}

impl SpawnError {
    /// A failure of `Command::spawn`: making the pipes or the process is the
    /// wrapper's part (these errors), anything else comes from `exec`.
    fn of_spawn(e: io::Error) -> SpawnError {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN) => SpawnError::Setup(e),
            _ => SpawnError::Exec(e),
        }
    }
}

/// Starts `argv` with `env` added to the inherited environment. With `pty`, the
/// child's stdout and stderr are two separate pseudo-terminals of that size.
/// `nofile` (soft, hard) is the descriptor limit the child gets back, if the
/// wrapper changed its own.
pub fn spawn(
    argv: &[OsString],
    env: &[(OsString, OsString)],
    pty: Option<Winsize>,
    nofile: Option<(u64, u64)>,
) -> Result<Spawned, SpawnError> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        // The log server's token is the wrapper's secret, not the job's: a job
        // that prints its environment would put it in the log (SPEC §5).
        .env_remove(crate::serve::TOKEN_ENV)
        .stdin(Stdio::inherit());
    let (out_read, err_read) = match pty {
        Some(ws) => {
            let keyboard = std::io::IsTerminal::is_terminal(&std::io::stdin());
            let out = open_pty(&ws, !keyboard).map_err(SpawnError::Setup)?;
            let err = open_pty(&ws, false).map_err(SpawnError::Setup)?;
            cmd.stdout(Stdio::from(out.1)).stderr(Stdio::from(err.1));
            (Some(out.0), Some(err.0))
        }
        None => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            (None, None)
        }
    };
    let make_ctty = pty.is_some();
    let nofile = nofile.map(|(soft, hard)| libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    });
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (setsid, ioctl, signal, sigprocmask, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The stdout pty becomes the controlling terminal, so the child's
            // job control and SIGWINCH behave as on a real terminal.
            if make_ctty && libc::ioctl(1, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Ignored dispositions survive exec: give back the defaults the
            // wrapper changed for itself (SIGPIPE, SIGXFSZ).
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if let Some(lim) = &nofile {
                // Lowering the soft limit back is always allowed.
                libc::setrlimit(libc::RLIMIT_NOFILE, lim);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(SpawnError::of_spawn)?;
    // Dropping `cmd` closes the parent's copies of the pty slaves; otherwise the
    // masters would never report EIO when the job's side closes.
    drop(cmd);
    let pid = child.id() as i32;
    let (stdout, stderr) = match (out_read, err_read) {
        (Some(o), Some(e)) => (o, e),
        _ => {
            let o: OwnedFd = child.stdout.take().expect("piped stdout").into();
            let e: OwnedFd = child.stderr.take().expect("piped stderr").into();
            for fd in [&o, &e] {
                // Failure only means a smaller pipe.
                let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
            }
            (o, e)
        }
    };
    if let Err(e) = set_nonblocking(&stdout).and_then(|()| set_nonblocking(&stderr)) {
        // The job runs already: it must not outlive a wrapper that gives up.
        let _ = child.kill();
        let _ = child.wait();
        return Err(SpawnError::Setup(e));
    }
    Ok(Spawned {
        pid,
        stdout,
        stderr,
    })
}

/// Opens a pty with output post-processing off, so the log holds exactly the bytes
/// the child wrote ("\n" stays "\n"). Returns (master, slave), both close-on-exec:
/// openpty does not set it, and a stray slave in the child would hold the pty open.
///
/// With `eof_on_read` (for the controlling pty when logwrap's own stdin is not a
/// terminal), reads from the pty return at once with nothing, i.e. end of file:
/// no one will ever type into it, so a `/dev/tty` prompt (a password, `git`
/// asking for a user name) fails fast, as it does without a terminal, instead
/// of waiting forever. Non-canonical mode with MIN=0 TIME=0 does this for every
/// read, and survives the `TCSAFLUSH` that password prompts do (a written ^D
/// would not).
fn open_pty(ws: &Winsize, eof_on_read: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let pty = openpty(Some(ws), None).map_err(io::Error::from)?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }
    let mut t = tcgetattr(pty.slave.as_fd()).map_err(io::Error::from)?;
    t.output_flags
        .remove(OutputFlags::OPOST | OutputFlags::ONLCR);
    if eof_on_read {
        t.local_flags.remove(LocalFlags::ICANON);
        t.control_chars[SpecialCharacterIndices::VMIN as usize] = 0;
        t.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    }
    tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t).map_err(io::Error::from)?;
    Ok((pty.master, pty.slave))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// The wrapper's own terminal size, from the first of stdin, stdout, stderr that
/// is a terminal.
pub fn own_winsize() -> Option<Winsize> {
    for fd in 0..3 {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0
            && ws.ws_col > 0
            && ws.ws_row > 0
        {
            return Some(Winsize {
                ws_row: ws.ws_row,
                ws_col: ws.ws_col,
                ws_xpixel: ws.ws_xpixel,
                ws_ypixel: ws.ws_ypixel,
            });
        }
    }
    None
}

/// Sets a pty's window size; on the controlling pty the kernel then sends SIGWINCH
/// to the child's foreground process group.
pub fn set_winsize(master: &OwnedFd, ws: &Winsize) {
    let raw = libc::winsize {
        ws_row: ws.ws_row,
        ws_col: ws.ws_col,
        ws_xpixel: ws.ws_xpixel,
        ws_ypixel: ws.ws_ypixel,
    };
    // SAFETY: TIOCSWINSZ reads the struct we pass; failure leaves the old size.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &raw) };
}
