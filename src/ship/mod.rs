//! Shipping jobs to Redis Streams (SPEC §9, issue 10): the key layout, the
//! shipper that reads a job's own log files by cursor and sends whole lines to
//! a per-job stream, and `logwrap ship`, which catches up jobs whose wrapper
//! could not finish shipping (Redis down, wrapper killed).
//!
//! # Key layout
//!
//! Every key of one job carries the job id in a hash tag, `{ID}`, so a job's
//! keys share one Redis Cluster slot and are written in one transaction:
//!
//! | key                  | type   | what                                            |
//! |----------------------|--------|-------------------------------------------------|
//! | `logwrap:{ID}:stdout`, `logwrap:{ID}:stderr` | stream | the job's output: one entry per run of whole lines, then an end entry |
//! | `logwrap:{ID}:meta`  | hash   | `json` (metadata.json), `host`, `status`, `stdout_end` / `stderr_end` (`"OFFSET LINE"`: shipped so far), `started`, `end` |
//! | `logwrap:{ID}:alive` | string | set while the wrapper runs (expires 15 s after its last refresh) |
//! | `logwrap:jobs`       | stream | every job's `started`, `marker` and `finished` events |
//!
//! A log entry's id is `LINE-OFFSET`: the number of its first line (from 1) and
//! the byte offset of its first byte in that stream's log, so a reader finds
//! line N with one `XREVRANGE` and Redis itself refuses a re-sent entry. Its
//! fields are `stream` (`stdout`/`stderr`), `line`, `offset`, `lines`
//! (newlines it holds), `ts` (µs since the epoch when its last line was read
//! from the child) and `data` (the bytes). `data` holds whole
//! lines, except that a line longer than 1 MiB (`MAX_ENTRY`) is sent in
//! pieces of that size (same `line`, growing `offset`, `cont` = `1` on
//! those continuing it) and that a job's last
//! line without a newline is sent when the job ends. The end entry, in both
//! streams with the id `18446744073709551615-0`, has `end` = `1`, `status`, `exit_code`, `stdout_bytes`, `stdout_lines`,
//! `stderr_bytes`, `stderr_lines`. A jobs-stream event has `event`, `id`,
//! `host`, `status`, `exit_code`, `tail_url`; a `marker` event has `event`,
//! `id`, `host`, `stream`, `line` and `value` (the marker's JSON).
//!
//! Entries and the `*_end` marks are written in one `MULTI`/`EXEC`, so the
//! marks are exactly what the stream holds: after a lost reply the shipper
//! reads them back and resumes there, never sending a line twice; a Redis that
//! lost its data (restarted without persistence) reads as empty and gets the
//! whole log again. Each write trims with `XADD ... MAXLEN ~` and sets a sliding
//! `EXPIRE` on both keys.

mod live;
pub(crate) mod shipper;
mod store;

use crate::metadata::ShipState;
use crate::store::{FileStore, JobId, LogStore, Stream};
use anyhow::{bail, Context, Result};
use std::time::Duration;

pub use shipper::LiveShipper;
pub use store::RedisStore;

/// Default `--ship-maxlen`: entries kept per job stream. An entry holds up to
/// 64 KiB of lines, so this keeps the last few GiB of a chatty job and all of
/// a normal one, while a runaway job cannot fill Redis.
pub const DEFAULT_MAXLEN: u64 = 100_000;

/// Default `--ship-ttl`: a job's keys live this long after their last write,
/// the same 7 days as local retention (SPEC §6).
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Entries kept in the global jobs stream: three events per job, so the last
/// ~30,000 jobs of a fleet, a few MiB of Redis memory.
pub(crate) const JOBS_MAXLEN: u64 = 100_000;

/// Default `--ship-wait`: longest the wrapper waits at the job's end for the
/// rest of the output and the end entry to reach a Redis that answers (it
/// waits a twentieth of the job's duration, and only for what the shipping rate
/// gets there in that time, see [`LiveShipper::finish`]): a healthy Redis takes
/// milliseconds for an ordinary job; the rest of a burst, or a slow Redis, is
/// left to the shipping process to finish in the background rather than hold
/// up the job's exit. While Redis is down the wrapper does not wait at all.
/// A shipping process not started yet when a short job ends is waited for
/// this long too.
pub const DEFAULT_FINISH_WAIT: Duration = Duration::from_secs(2);

/// The global jobs stream.
pub(crate) const JOBS_KEY: &str = "logwrap:jobs";

/// Where and how to ship.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    url: String,
    /// `XADD ... MAXLEN ~` of each job's log stream.
    pub maxlen: u64,
    /// Sliding expiry of a job's keys.
    pub ttl: Duration,
    /// The `logwrap` program, to ship from a process of its own at the lowest
    /// priority (`logwrap ship --live`), which also finishes in the background
    /// what is left when the job ends (see [`LiveShipper::finish`]); `None`
    /// ships from a thread of the wrapper and leaves what is left at the end
    /// to `logwrap ship`.
    pub handoff: Option<std::path::PathBuf>,
    /// Longest the wrapper waits at the job's end (`--ship-wait`); zero
    /// leaves all that is left to the shipping process.
    pub finish_wait: Duration,
    /// The CA certificates a `rediss://` server is checked against instead
    /// of the system's (`--redis-ca-file`): its path and PEM contents.
    ca: Option<CaFile>,
}

/// A CA file given with `--redis-ca-file`, read once.
#[derive(Debug, Clone)]
pub struct CaFile {
    path: std::path::PathBuf,
    pem: Vec<u8>,
}

/// Most bytes of a CA file: a bundle of a few hundred certificates.
const MAX_CA_BYTES: u64 = 1 << 20;

impl CaFile {
    /// Reads the PEM certificates at `path` (bounded), so a wrong path fails
    /// before the job runs.
    pub fn read(path: &std::path::Path) -> Result<CaFile> {
        use std::io::Read;
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CA_BYTES + 1).read_to_end(&mut pem))
            .with_context(|| format!("reading the CA file {}", path.display()))?;
        if pem.len() as u64 > MAX_CA_BYTES {
            bail!("the CA file {} is over 1 MiB", path.display());
        }
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            bail!("{} holds no PEM certificate", path.display());
        }
        Ok(CaFile {
            path: path.to_path_buf(),
            pem,
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// A client for `url`: `redis://`, `redis+unix://`, or `rediss://` (TLS,
/// checked against the system's CA certificates, or `ca`'s when given).
pub(crate) fn redis_client(url: &str, ca: Option<&CaFile>) -> Result<redis::Client> {
    let bad = |e: redis::RedisError| {
        anyhow::anyhow!(
            "invalid Redis URL {}: {e}; use redis://HOST:PORT[/DB], rediss://HOST:PORT[/DB] (TLS) \
             or redis+unix:///PATH",
            public_url(url)
        )
    };
    match ca {
        Some(ca) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.pem.clone()),
            },
        )
        .map_err(bad),
        _ => redis::Client::open(url).map_err(bad),
    }
}

impl ShipConfig {
    /// Shipping to `url` (`redis://[user:password@]HOST:PORT[/DB]`,
    /// `rediss://...` for TLS, or `redis+unix:///path/to/socket`), checked now
    /// so a typo fails before the job runs.
    pub fn new(url: &str, maxlen: u64, ttl: Duration) -> Result<ShipConfig> {
        redis_client(url, None)?;
        if maxlen == 0 {
            bail!("--ship-maxlen must be at least 1");
        }
        if ttl.as_secs() == 0 {
            bail!("--ship-ttl must be at least 1s");
        }
        Ok(ShipConfig {
            url: url.to_string(),
            maxlen,
            ttl,
            handoff: None,
            finish_wait: DEFAULT_FINISH_WAIT,
            ca: None,
        })
    }

    /// Checks a `rediss://` server against the certificates of `ca` instead
    /// of the system's (a self-signed or private CA).
    pub fn with_ca(mut self, ca: Option<CaFile>) -> ShipConfig {
        self.ca = ca;
        self
    }

    /// The URL without its password: what metadata, messages and files show.
    pub fn public_url(&self) -> String {
        public_url(&self.url)
    }

    /// The URL as given, password included: only for a child `logwrap ship`,
    /// through its environment (never its arguments, which `ps` shows).
    pub(crate) fn secret_url(&self) -> &str {
        &self.url
    }

    pub(crate) fn client(&self) -> Result<redis::Client> {
        redis_client(&self.url, self.ca.as_ref())
    }

    /// The CA file given for a `rediss://` server, if any.
    pub(crate) fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca.as_ref().map(CaFile::path)
    }
}

/// `url` with its password replaced by `***`, so it can be written down:
/// the one of its user part (`user:password@`) and a `pass=` or `password=`
/// query parameter (`redis+unix:///run/r.sock?user=u&pass=p`, which the client
/// takes too).
pub fn public_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The user part ends at the last `@` before the path (a password may
    // hold `?` or `@` itself).
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (user, after) = match rest[..authority_end].rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    match user.map(|u| u.split_once(':')) {
        None => {}
        Some(Some((name, _))) => out.push_str(&format!("{name}:***@")),
        Some(None) if user == Some("") => out.push('@'),
        // `redis://password@host` is how some clients spell a lone password.
        Some(None) => out.push_str("***@"),
    }
    let (place, query) = match after.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (after, None),
    };
    out.push_str(place);
    if let Some(q) = query {
        let secret = |k: &str| ["pass", "password"].contains(&k.to_ascii_lowercase().as_str());
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if secret(k) => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// The file store and job id of the job directory `dir`
/// (`<root>/job_runs/<id>`), when it is one: the shipper reads a job's own
/// files, so only a file store's jobs can be shipped.
pub(crate) fn file_job(dir: &std::path::Path) -> Option<(FileStore, JobId)> {
    let id = JobId::parse(dir.file_name()?.to_str()?).ok()?;
    let store = FileStore::new(dir.parent()?.parent()?);
    (store.job_dir(&id) == dir).then_some((store, id))
}

/// `logwrap:{ID}:stdout` or `logwrap:{ID}:stderr`.
pub(crate) fn stream_key(id: &JobId, stream: Stream) -> String {
    format!("logwrap:{{{id}}}:{}", stream.name())
}

/// `logwrap:{ID}:alive`: set (with a short expiry) while the job's wrapper
/// runs, so readers tell a running job from an abandoned one.
pub(crate) fn alive_key(id: &JobId) -> String {
    format!("logwrap:{{{id}}}:alive")
}

/// The entry id of an entry whose first line is `line` and first byte is at
/// `offset`: both only grow along a stream, so ids are ordered as Redis needs,
/// a reader finds line N with one `XREVRANGE`, and a re-send is refused.
pub(crate) fn entry_id(line: u64, offset: u64) -> String {
    format!("{line}-{offset}")
}

/// The entry id of the end entry: after every other.
pub(crate) const END_ID: &str = "18446744073709551615-0";

/// `logwrap:{ID}:meta`.
pub(crate) fn meta_key(id: &JobId) -> String {
    format!("logwrap:{{{id}}}:meta")
}

/// Options of `logwrap ship`.
#[derive(Debug, Clone)]
pub struct ShipOptions {
    pub ship: ShipConfig,
    /// These jobs; empty with `all` for every job.
    pub ids: Vec<String>,
    pub all: bool,
    /// First wait for each job's wrapper to exit (the background hand-off of
    /// a wrapper whose job ended with lines still to ship).
    pub wait_for_writer: bool,
    /// Ship the one job named while its wrapper runs, as the wrapper's
    /// shipping process (`--live`: told about the job through stdin).
    pub live: bool,
}

/// How catching up one job went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUp {
    /// Shipped to the end (this many bytes were new).
    Shipped(u64),
    /// Already complete there: nothing sent.
    UpToDate,
    /// Its wrapper is running: it ships the job itself.
    Busy,
}

/// Ships what is missing of job `id` (finished or abandoned) and its end
/// entry; nothing when its shipping state says it is complete at this URL.
/// With `wait`, waits for whoever ships the job now (a wrapper's thread
/// still sending) instead of skipping it.
/// A finished job someone else is shipping (a wrapper's shipping process
/// finishing in the background, or stopping) is waited for, then looked at
/// again.
pub fn catch_up(store: &FileStore, cfg: &ShipConfig, id: &JobId, wait: bool) -> Result<CatchUp> {
    let state = shipper::read_state(store, id);
    // A hand-off (`wait`) goes on regardless: the wrapper's thread may have
    // finished after the wrapper recorded it as unfinished.
    if !wait
        && state
            .as_ref()
            .is_some_and(|s| s.complete && s.url == cfg.public_url())
    {
        return Ok(CatchUp::UpToDate);
    }
    let meta = store.live_metadata(id)?;
    if !meta.status.is_finished() {
        // Its wrapper is alive: it ships the job itself (or was not asked to).
        return Ok(CatchUp::Busy);
    }
    let mut sh = match shipper::Shipper::open(store, id, cfg, wait)? {
        Some(sh) => sh,
        None => {
            let sh = shipper::Shipper::open(store, id, cfg, true)?
                .context("the ship lock was not granted")?;
            let done = shipper::read_state(store, id)
                .is_some_and(|s| s.complete && s.url == cfg.public_url());
            if done {
                return Ok(CatchUp::UpToDate);
            }
            sh
        }
    };
    let before = sh.shipped_bytes();
    sh.connect()?;
    let mut meta = meta;
    sh.ship_to_end(&mut meta)?;
    let after = sh.shipped_bytes();
    sh.persist();
    // The writer is gone, so the document is ours to update: record the
    // shipping state where everyone reads job state.
    meta.ship = Some(sh.state().clone());
    if let Err(e) = crate::metadata::write_atomic(
        &store.metadata_path(id),
        &meta_for_disk(store, id, sh.state()),
        true,
    ) {
        eprintln!(
            "logwrap: warning: {id}: cannot record the shipping state in metadata.json: {e:#}"
        );
    }
    Ok(CatchUp::Shipped(after.saturating_sub(before)))
}

/// Largest free memory the shipping processes keep for reuse rather than
/// hand back to the kernel: a round's transaction (up to [`ROUND_BYTES`] of
/// entries, copied into the commands and packed again) is a few MiB.
/// Without it, glibc maps each round's buffers afresh and unmaps them after,
/// and the page faults of touching them anew took three quarters of
/// shipping's CPU time (0.25 s of 0.32 s for 200 MB into a local Redis).
///
/// [`ROUND_BYTES`]: shipper::ROUND_BYTES
const KEPT_FREE_MEMORY: i32 = 16 << 20;

/// Keeps freed memory up to [`KEPT_FREE_MEMORY`] in the process (see there);
/// only this process's (`logwrap ship`) allocations change, all bounded.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain allocator settings, before the threads that allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEPT_FREE_MEMORY);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEPT_FREE_MEMORY);
    }
}

/// Blocks until job `id`'s wrapper has exited: a shared flock on the job
/// directory, which the wrapper holds exclusively until after its final
/// metadata is written. A directory that cannot be opened is not waited for.
fn wait_for_writer(store: &FileStore, id: &JobId) {
    use nix::fcntl::{open, Flock, FlockArg, OFlag};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if let Ok(fd) = open(&store.job_dir(id), flags, nix::sys::stat::Mode::empty()) {
        let _ = Flock::lock(fd, FlockArg::LockShared);
    }
}

/// metadata.json as written (its status is not turned to `abandoned`) with
/// the new shipping state.
fn meta_for_disk(store: &FileStore, id: &JobId, state: &ShipState) -> Vec<u8> {
    match store.read_metadata(id) {
        Ok(mut m) => {
            m.ship = Some(state.clone());
            m.to_json()
        }
        Err(_) => Vec::new(),
    }
}

/// Wrappers look for jobs to catch up at most this often per root, unless a
/// wrapper ended with its job incomplete since (it marks the root): scanning
/// reads a small file per job, so a busy root pays it every 10 minutes, while
/// a job whose wrapper was SIGKILLed waits at most that long for the next
/// wrapper (or for `logwrap ship --all` from cron).
pub const CATCH_UP_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// `<root>/.ship-stamp`: its mtime is when wrappers last caught up the root;
/// flocked while one does; set to the epoch to ask for a catch-up at once.
const CATCH_UP_STAMP: &str = ".ship-stamp";

fn open_stamp(store: &FileStore) -> Result<(std::fs::File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = store.root().join(CATCH_UP_STAMP);
    // O_NOFOLLOW and O_NONBLOCK: a symlink or FIFO planted there must neither
    // lead us out of the root nor hang the thread.
    let open = |create: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
    };
    match open(true) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open(false)
            .map(|f| (f, false))
            .with_context(|| format!("opening {}", path.display())),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// Asks the next wrapper of this root to catch up at once: a job ended with
/// its shipping incomplete.
pub(crate) fn mark_pending(store: &FileStore) {
    use nix::sys::time::TimeSpec;
    if let Ok((f, _)) = open_stamp(store) {
        let epoch = TimeSpec::new(0, 0);
        let _ = nix::sys::stat::futimens(&f, &epoch, &epoch);
    }
}

/// The wrapper's background catch-up (issue 10 point 3): when due (see
/// [`CATCH_UP_INTERVAL`]) and no other wrapper is at it, ships every finished
/// job of the root whose shipping to this URL is recorded as incomplete.
/// `own` is the job of the wrapper this runs for: once it has ended nothing
/// is done (a mark its end left is for the next wrapper, which can ship it),
/// and it is never shipped from here.
pub(crate) fn maybe_catch_up(store: &FileStore, cfg: &ShipConfig, own: &JobId) -> Result<()> {
    use nix::fcntl::{Flock, FlockArg};
    let (f, created) = open_stamp(store)?;
    let Ok(stamp) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else {
        return Ok(());
    };
    if store.read_metadata(own)?.status.is_finished() {
        return Ok(());
    }
    let last = stamp.metadata().and_then(|m| m.modified())?;
    let age = std::time::SystemTime::now()
        .duration_since(last)
        .unwrap_or(CATCH_UP_INTERVAL);
    if !created && age < CATCH_UP_INTERVAL {
        return Ok(());
    }
    // Stamped first: a mark_pending during the scan is not lost.
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    nix::sys::stat::futimens(&*stamp, &now, &now)?;
    for id in store.job_ids()?.into_iter().filter(|id| id != own) {
        let pending = shipper::read_state(store, &id)
            .is_some_and(|s| !s.complete && s.url == cfg.public_url());
        if pending {
            let _ = catch_up(store, cfg, &id, false);
        }
    }
    Ok(())
}

/// Runs [`maybe_catch_up`] on a thread of its own; errors are dropped, as the
/// job beside it must never be delayed or failed (`logwrap ship` reports them).
pub(crate) fn catch_up_in_background(store: FileStore, cfg: ShipConfig, own: JobId) {
    let _ = std::thread::Builder::new()
        .name("logwrap-ship-catch-up".into())
        .spawn(move || {
            shipper::block_signals();
            let _ = maybe_catch_up(&store, &cfg, &own);
        });
}

/// `logwrap ship`: catches up the jobs named (or all, with `--all`); exit 0
/// when every job is shipped or up to date, 1 if any failed.
pub fn ship_cmd(store: &FileStore, o: ShipOptions) -> Result<i32> {
    use std::io::Write;
    keep_freed_memory();
    if o.live {
        let [id] = &o.ids[..] else {
            return Err(crate::exit::UsageError("--live ships exactly one job".into()).into());
        };
        let id = JobId::parse(id).map_err(crate::exit::UsageError)?;
        return live::run(store, &o.ship, &id);
    }
    let ids: Vec<JobId> = if o.all {
        store.job_ids()?
    } else {
        if o.ids.is_empty() {
            return Err(
                crate::exit::UsageError("name the jobs to ship, or pass --all".into()).into(),
            );
        }
        o.ids
            .iter()
            .map(|s| JobId::parse(s).map_err(crate::exit::UsageError))
            .collect::<std::result::Result<_, _>>()?
    };
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for id in ids {
        if o.wait_for_writer {
            wait_for_writer(store, &id);
        }
        let line = match catch_up(store, &o.ship, &id, o.wait_for_writer) {
            Ok(CatchUp::Shipped(n)) => format!("{id}: shipped {n} bytes, complete"),
            Ok(CatchUp::UpToDate) => format!("{id}: up to date"),
            Ok(CatchUp::Busy) => {
                format!("{id}: running or being shipped by another process; skipped")
            }
            Err(e) => {
                failed = true;
                eprintln!("logwrap: {id}: {}", shipper::error_text(&e));
                continue;
            }
        };
        writeln!(out, "{line}").context("writing to stdout")?;
    }
    Ok(i32::from(failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_the_public_url() {
        assert_eq!(
            public_url("redis://alice:s3cret@db:6379/2"),
            "redis://alice:***@db:6379/2"
        );
        assert_eq!(public_url("redis://:s3cret@db"), "redis://:***@db");
        assert_eq!(public_url("redis://s3cret@db/0"), "redis://***@db/0");
        assert_eq!(public_url("redis://db:6379"), "redis://db:6379");
        assert_eq!(
            public_url("redis+unix:///run/redis.sock"),
            "redis+unix:///run/redis.sock"
        );
        // The client also takes the password as a query parameter.
        assert_eq!(
            public_url("redis+unix:///run/r.sock?user=ro&pass=ropw&db=2"),
            "redis+unix:///run/r.sock?user=ro&pass=***&db=2"
        );
        assert_eq!(
            public_url("redis://db:6379/0?Password=pw"),
            "redis://db:6379/0?Password=***"
        );
        assert_eq!(
            public_url("redis://u:p?w@d@db?pass=x"),
            "redis://u:***@db?pass=***"
        );
        assert_eq!(public_url("redis://@db"), "redis://@db");
    }

    #[test]
    fn keys_of_one_job_share_a_hash_tag() {
        let id = JobId::parse("build-42").unwrap();
        assert_eq!(stream_key(&id, Stream::Stderr), "logwrap:{build-42}:stderr");
        assert_eq!(meta_key(&id), "logwrap:{build-42}:meta");
    }

    #[test]
    fn bad_urls_and_bounds_are_refused_before_the_job() {
        assert!(ShipConfig::new("http://x", 1, DEFAULT_TTL).is_err());
        assert!(ShipConfig::new("rediss://x:6380", 1, DEFAULT_TTL).is_ok());
        assert!(ShipConfig::new("redis://x", 0, DEFAULT_TTL).is_err());
        assert!(ShipConfig::new("redis://x", 1, Duration::ZERO).is_err());
        assert!(ShipConfig::new("redis://x:1/0", 1, DEFAULT_TTL).is_ok());
    }
}
