//! logwrap: wrap any job so that its stdout and stderr are kept, safely and live,
//! in a per-job directory that people and programs can read while it runs.
//!
//! The binary is a thin client of this library; a scheduler written in Rust can
//! run jobs the same way without a second process:
//!
//! ```no_run
//! use logwrap::run::{run, RunConfig};
//! use logwrap::store::{FileStore, JobId};
//! use std::time::Duration;
//!
//! let store = FileStore::new("/tmp/logs");
//! store.ensure_writable()?;
//! let cfg = RunConfig {
//!     job_run_id: JobId::generate(),
//!     command: vec!["make".into(), "all".into()],
//!     pty: true,
//!     quiet: false,
//!     cols: None,
//!     rows: None,
//!     timeout: Some(Duration::from_secs(3600)),
//!     kill_after: Duration::from_secs(10),
//!     drain_timeout: Duration::from_secs(2),
//!     partitions: vec![],
//!     reap_orphans: false,
//!     housekeeping: None,
//!     listen: None,
//!     parent: None,
//! };
//! let outcome = run(&cfg, &store)?;
//! println!("{} ended {:?}", outcome.metadata.job_run_id, outcome.metadata.status);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cli;
pub mod completions;
pub mod config;
pub mod exit;
pub mod gc;
pub mod logs;
pub mod metadata;
pub mod nest;
pub mod output;
pub mod reader;
pub mod run;
pub mod serve;
pub mod store;
#[cfg(test)]
mod testdir;
pub mod timefmt;
