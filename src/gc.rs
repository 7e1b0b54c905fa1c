//! `logwrap gc` (issue 5) — being written.

use crate::cli::GcArgs;
use anyhow::{bail, Result};

pub fn gc_cmd(_args: GcArgs) -> Result<i32> {
    bail!("gc: not written yet")
}
