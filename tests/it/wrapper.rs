//! The wrapper (issue 2): ptys and pipes, byte-exact logs, tee, markers,
//! metadata, signals, children, exit codes, failing writes, ids, memory.

use crate::util::*;
