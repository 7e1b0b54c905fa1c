//! Exit codes: how a child's wait status becomes logwrap's own status, and the
//! codes logwrap uses for its own failures (SPEC §1 "Exit status").

use nix::sys::signal::Signal;

/// `--timeout` fired (the same code as coreutils `timeout`).
pub const TIMED_OUT: i32 = 124;
/// logwrap itself failed before the job could run (bad option, log dir, id in use).
pub const WRAPPER_FAILED: i32 = 125;
/// The command exists but could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// Reading commands: the job, file or page asked for does not exist.
pub const NOT_FOUND_READ: i32 = 1;
/// Reading commands: the command line itself was wrong.
pub const USAGE: i32 = 2;

/// How the main child ended, as recorded from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    /// Exited normally with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(Signal),
}

impl ChildEnd {
    /// The wrapper's exit code for this end: the code itself, or 128+N for signal N
    /// (the shell convention, as tini does).
    pub fn exit_code(self) -> i32 {
        match self {
            ChildEnd::Exited(code) => code,
            ChildEnd::Signaled(sig) => 128 + sig as i32,
        }
    }
}

/// Maps an `exec` failure to 126 or 127, the way shells do.
pub fn exec_failure_code(err: &std::io::Error) -> i32 {
    match err.kind() {
        std::io::ErrorKind::NotFound => NOT_FOUND,
        _ => NOT_EXECUTABLE,
    }
}

/// Bytes of a script the kernel reads for its `#!` line (`BINPRM_BUF_SIZE`);
/// an interpreter named past them is not one the kernel would use either.
pub const SHEBANG_MAX: usize = 256;

/// The interpreter a script's `#!` line names, from the script's first bytes:
/// the first word after `#!`, as the kernel takes it. `None` if `head` does not
/// start with `#!` or names nothing.
pub fn shebang_interpreter(head: &[u8]) -> Option<&[u8]> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    line.split(|b| *b == b' ' || *b == b'\t')
        .find(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_code_is_passed_through() {
        assert_eq!(ChildEnd::Exited(0).exit_code(), 0);
        assert_eq!(ChildEnd::Exited(3).exit_code(), 3);
    }

    #[test]
    fn signal_becomes_128_plus_n() {
        assert_eq!(ChildEnd::Signaled(Signal::SIGKILL).exit_code(), 137);
        assert_eq!(ChildEnd::Signaled(Signal::SIGTERM).exit_code(), 143);
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
