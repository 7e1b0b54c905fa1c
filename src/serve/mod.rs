//! `logwrap serve` (issue 4) — being written.

use crate::cli::ServeArgs;
use anyhow::{bail, Result};

pub fn serve_cmd(_args: ServeArgs) -> Result<i32> {
    bail!("serve: not written yet")
}
