//! `logwrap logs`, `ls` and `show` (issue 3) — being written.

use crate::cli::{LogsArgs, LsArgs, ShowArgs};
use anyhow::{bail, Result};

pub fn logs_cmd(_args: LogsArgs) -> Result<i32> {
    bail!("logs: not written yet")
}

pub fn ls_cmd(_args: LsArgs) -> Result<i32> {
    bail!("ls: not written yet")
}

pub fn show_cmd(_args: ShowArgs) -> Result<i32> {
    bail!("show: not written yet")
}
