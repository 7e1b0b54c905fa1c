//! Exit codes: how a child's wait status becomes logwrap's own status, the
//! codes logwrap uses for its own failures (SPEC §1 "Exit status"), and
//! [`ExitCode`], the one place `main` turns an outcome into a process status.

use nix::sys::signal::Signal;

/// `--timeout` fired (the same code as coreutils `timeout`).
pub(crate) const TIMED_OUT: i32 = 124;
/// logwrap itself failed before the job could run (bad option, log dir, id in use).
pub(crate) const WRAPPER_FAILED: i32 = 125;
/// The command exists but could not be executed.
pub(crate) const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub(crate) const NOT_FOUND: i32 = 127;
/// Reading commands: the job, file or page asked for does not exist.
pub(crate) const NOT_FOUND_READ: i32 = 1;
/// Reading commands: the command line itself was wrong.
pub(crate) const USAGE: i32 = 2;

/// What the process exits with, by meaning rather than by number (as fd's
/// `exit_codes.rs`): `main` maps every outcome through this type once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// 0: the command did what was asked.
    Success,
    /// 1: a reading command could not find or read what was asked for.
    Failure,
    /// 2: the command line was wrong (any subcommand, or a newcomer's mistake).
    Usage,
    /// 125: the wrapper failed before the job could run.
    WrapperFailed,
    /// A status passed through: the job's own code, 124, 126, 127 or 128+N
    /// from the wrapper, or a job's status from `logs --exit-status`.
    Status(i32),
}

impl ExitCode {
    /// The number the process exits with. A status outside 0..=255 cannot be an
    /// exit status; it becomes 255 rather than wrapping, so a failure never
    /// turns into 0.
    pub fn code(self) -> u8 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Failure => NOT_FOUND_READ as u8,
            ExitCode::Usage => USAGE as u8,
            ExitCode::WrapperFailed => WRAPPER_FAILED as u8,
            ExitCode::Status(n) => u8::try_from(n).unwrap_or(u8::MAX),
        }
    }

    /// True for [`ExitCode::Success`] and a passed-through 0.
    pub fn is_success(self) -> bool {
        self.code() == 0
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> std::process::ExitCode {
        std::process::ExitCode::from(code.code())
    }
}

/// A mistake on the command line found after clap parsed it (a bad duration,
/// a listen address, a newcomer's slip): `main` exits [`ExitCode::Usage`] for
/// a subcommand and [`ExitCode::WrapperFailed`] for the wrapper (SPEC §1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Whether `e` is a [`UsageError`], anywhere in its chain.
pub fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<UsageError>())
}

/// Whether `e` comes from writing to a reader that went away (`logwrap ls |
/// head -1`): not a failure of logwrap, so `main` exits quietly with 0, as
/// ripgrep does. serde_json hides the I/O error behind its own type, so that is
/// looked into too.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let kind = c
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// How the main child ended, as recorded from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildEnd {
    /// Exited normally with this code.
    Exited(i32),
    /// Killed by the signal of this number: any, the real-time ones
    /// (`SIGRTMIN`..`SIGRTMAX`, which have no [`Signal`] name) included.
    Signaled(i32),
}

impl ChildEnd {
    /// How `waitpid` reported the end (`status`), if it is one.
    pub fn from_wait_status(status: libc::c_int) -> Option<ChildEnd> {
        if libc::WIFEXITED(status) {
            Some(ChildEnd::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ChildEnd::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The wrapper's exit code for this end: the code itself, or 128+N for signal N
    /// (the shell convention, as tini does).
    pub fn exit_code(self) -> i32 {
        match self {
            ChildEnd::Exited(code) => code,
            ChildEnd::Signaled(sig) => 128 + sig,
        }
    }
}

/// The name of signal `n`, as metadata records it: `SIGTERM`, `SIGRTMIN+3`
/// for a real-time one, `SIG70` for a number with no name.
pub(crate) fn signal_name(n: i32) -> String {
    if let Ok(sig) = Signal::try_from(n) {
        return sig.as_str().to_string();
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    match n {
        _ if n == min => "SIGRTMIN".to_string(),
        _ if n == max => "SIGRTMAX".to_string(),
        _ if n > min && n < max => format!("SIGRTMIN+{}", n - min),
        _ => format!("SIG{n}"),
    }
}

/// Maps an `exec` failure to 126 or 127, the way shells do.
pub(crate) fn exec_failure_code(err: &std::io::Error) -> i32 {
    match err.kind() {
        std::io::ErrorKind::NotFound => NOT_FOUND,
        _ => NOT_EXECUTABLE,
    }
}

/// Bytes of a script the kernel reads for its `#!` line (`BINPRM_BUF_SIZE`);
/// an interpreter named past them is not one the kernel would use either.
pub(crate) const SHEBANG_MAX: usize = 256;

/// The interpreter a script's `#!` line names, from the script's first bytes:
/// the first word after `#!`, as the kernel takes it. `None` if `head` does not
/// start with `#!` or names nothing.
pub(crate) fn shebang_interpreter(head: &[u8]) -> Option<&[u8]> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    line.split(|b| *b == b' ' || *b == b'\t')
        .find(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_exit_code_has_its_documented_number() {
        assert_eq!(ExitCode::Success.code(), 0);
        assert_eq!(ExitCode::Failure.code(), 1);
        assert_eq!(ExitCode::Usage.code(), 2);
        assert_eq!(ExitCode::WrapperFailed.code(), 125);
        assert_eq!(ExitCode::Status(TIMED_OUT).code(), 124);
        assert_eq!(ExitCode::Status(NOT_EXECUTABLE).code(), 126);
        assert_eq!(ExitCode::Status(NOT_FOUND).code(), 127);
        assert_eq!(ExitCode::Status(137).code(), 137);
    }

    #[test]
    fn out_of_range_statuses_become_255_never_success() {
        assert_eq!(ExitCode::Status(256).code(), 255);
        assert_eq!(ExitCode::Status(-1).code(), 255);
        assert!(!ExitCode::Status(256).is_success());
        assert!(ExitCode::Status(0).is_success());
    }

    #[test]
    fn usage_errors_are_found_under_context() {
        let e = anyhow::Error::new(UsageError("--heartbeat: bad".into())).context("serve");
        assert!(is_usage(&e));
        assert!(!is_usage(&anyhow::anyhow!("no job x")));
    }

    #[test]
    fn broken_pipes_are_recognised_plain_and_inside_serde_json() {
        let io = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::new(io()).context("writing")));
        let json = serde_json::Error::io(io());
        assert!(is_broken_pipe(
            &anyhow::Error::new(json).context("writing JSON")
        ));
        let other = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!is_broken_pipe(&anyhow::Error::new(other)));
    }

    #[test]
    fn exited_code_is_passed_through() {
        assert_eq!(ChildEnd::Exited(0).exit_code(), 0);
        assert_eq!(ChildEnd::Exited(3).exit_code(), 3);
    }

    #[test]
    fn signal_becomes_128_plus_n() {
        assert_eq!(ChildEnd::Signaled(Signal::SIGKILL as i32).exit_code(), 137);
        assert_eq!(ChildEnd::Signaled(Signal::SIGTERM as i32).exit_code(), 143);
        let rt = libc::SIGRTMIN();
        assert_eq!(ChildEnd::Signaled(rt).exit_code(), 128 + rt);
        assert_eq!(signal_name(Signal::SIGSEGV as i32), "SIGSEGV");
        assert_eq!(signal_name(rt), "SIGRTMIN");
        assert_eq!(signal_name(rt + 2), "SIGRTMIN+2");
        assert_eq!(signal_name(libc::SIGRTMAX()), "SIGRTMAX");
        assert_eq!(signal_name(99), "SIG99");
    }

    #[test]
    fn exec_errors_map_like_a_shell() {
        let nf = std::io::Error::from(std::io::ErrorKind::NotFound);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(exec_failure_code(&nf), 127);
        assert_eq!(exec_failure_code(&denied), 126);
    }

    #[test]
    fn shebang_names_its_interpreter() {
        assert_eq!(
            shebang_interpreter(b"#!/no/such/sh -e\necho"),
            Some(&b"/no/such/sh"[..])
        );
        assert_eq!(
            shebang_interpreter(b"#! \t/bin/env python3\n"),
            Some(&b"/bin/env"[..])
        );
        assert_eq!(shebang_interpreter(b"#!\n"), None);
        assert_eq!(shebang_interpreter(b"\x7fELF"), None);
    }
}
