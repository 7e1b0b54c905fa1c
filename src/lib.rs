//! logwrap: wrap any job so that its stdout and stderr are kept, safely and live,
//! in a per-job directory that people and programs can read while it runs.
//!
//! The binary is a thin client of this library; a scheduler written in Rust can
//! run jobs the same way without a second process:
//!
//! ```
//! use logwrap::run::{run, RunConfig};
//! use logwrap::store::{FileStore, JobId};
//! use std::time::Duration;
//!
//! let root = std::env::temp_dir().join(format!("logwrap-doc-run-{}", std::process::id()));
//! let store = FileStore::new(&root);
//! store.ensure_writable()?;
//! let id = JobId::generate();
//! let cfg = RunConfig::new(id.clone(), vec!["sh".into(), "-c".into(), "echo built; exit 3".into()])
//!     .pty(false)
//!     .quiet(true)
//!     .timeout(Some(Duration::from_secs(3600)));
//! let outcome = run(&cfg, &store)?;
//! assert_eq!(outcome.exit_code, 3);
//! assert_eq!(outcome.metadata.stdout.lines, 1);
//! # std::fs::remove_dir_all(&root)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every reader goes through the [`store::LogStore`] trait, whichever store
//! holds the jobs; here the last 10 lines of a job's stdout, with their numbers
//! and arrival times:
//!
//! ```
//! use logwrap::reader::Start;
//! use logwrap::store::{Chunk, JobId, LogStore, MemStore, Stream};
//!
//! fn last_lines(store: &dyn LogStore, id: &JobId) -> anyhow::Result<Vec<(u64, String)>> {
//!     let mut lines = store.open_lines(id, Stream::Stdout, Start::Tail(10), 64 * 1024)?;
//!     let done = store.live_metadata(id).map_or(true, |m| m.status.is_finished());
//!     let mut out = Vec::new();
//!     while let Some(line) = lines.next_line(done)? {
//!         out.push((line.number, String::from_utf8_lossy(&line.data).into_owned()));
//!     }
//!     Ok(out)
//! }
//!
//! let store = MemStore::new();
//! let id = JobId::parse("build-42")?;
//! let mut sink = store.create_job(&id)?;
//! for i in 1..=25 {
//!     sink.append(Stream::Stdout, &Chunk::new(format!("step {i}\n").as_bytes(), i))?;
//! }
//! let tail = last_lines(&store, &id)?;
//! assert_eq!(tail.len(), 10);
//! assert_eq!(tail[0], (16, "step 16\n".to_string()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The public API is what an embedder needs: [`run`] (the wrapper), [`store`]
//! (the storage seam, the file store and an in-memory store), [`reader`] (lines
//! back out), [`metadata`], [`serve`] and [`gc`] entry points, and the reading
//! commands in [`logs`]. ARCHITECTURE.md in the repository maps the modules.

pub mod exit;
pub mod gc;
pub mod logs;
pub mod metadata;
pub mod nest;
pub(crate) mod output;
pub mod reader;
pub mod redact;
pub mod run;
pub mod search;
pub mod serve;
pub mod ship;
pub mod store;
#[cfg(test)]
mod testdir;
pub mod timefmt;
