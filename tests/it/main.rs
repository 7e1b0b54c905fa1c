//! The integration tests: one binary driving the real `logwrap` in temp dirs.
//! Each module covers one capability.

#[path = "../util/mod.rs"]
mod util;

mod cli;
mod completions;
mod gc;
mod hostile;
mod joblist;
mod limit;
mod logs;
mod nest;
mod ranges;
mod reading;
mod redact;
mod redis_source;
mod remote;
mod search;
mod sections;
mod serve;
mod serve_browser;
mod serve_http;
mod ship;
mod wrapper;
