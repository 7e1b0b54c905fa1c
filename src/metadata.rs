//! metadata.json: its fields (SPEC §3), the atomic write (temp file + rename, so a
//! reader never sees a torn document) and the read.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Where a job stands. `Abandoned` is never written by a live wrapper: readers
/// derive it from a `running` document whose writer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    Killed,
    TimedOut,
    Abandoned,
}

impl Status {
    /// Every status, in the order a job can reach them.
    pub const ALL: [Status; 6] = [
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Killed,
        Status::TimedOut,
        Status::Abandoned,
    ];

    /// The status named `name` (as in JSON), if any.
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Killed => "killed",
            Status::TimedOut => "timed_out",
            Status::Abandoned => "abandoned",
        }
    }

    /// True once the job will write nothing more.
    pub fn is_finished(self) -> bool {
        self != Status::Running
    }
}

/// Byte and line counts of one stream, as read from the child.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    pub bytes: u64,
    /// Lines, counting a final line without a newline.
    pub lines: u64,
}

/// What `--max-log-size` left out of one stream (issue 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Omitted {
    pub omitted_bytes: u64,
    pub omitted_lines: u64,
}

/// The streams `--max-log-size` cut, and how much of each it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<Omitted>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<Omitted>,
}

/// A valid `DATABUILD_MISSING_DEPS_JSON:` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingDep {
    pub stream: String,
    pub line: u64,
    pub value: serde_json::Value,
}

/// A marker line whose payload could not be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkerError {
    pub stream: String,
    pub line: u64,
    pub error: String,
}

/// A GitHub Actions style annotation line (`::error file=F,line=L::msg`,
/// `::warning`, `::notice`) the job printed (issue 11, point 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// `error`, `warning` or `notice`.
    pub level: String,
    pub message: String,
    /// The source file and line the annotation is about, if it names them.
    pub file: Option<String>,
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Where it is in the log: the stream and the line number there.
    pub stream: String,
    pub log_line: u64,
}

/// Shipping to Redis Streams (`--ship`, SPEC §9), as the shipper last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    /// Where to, with any password replaced by `***`.
    pub url: String,
    /// Bytes of both streams shipped.
    pub bytes: u64,
    /// Lines of both streams shipped.
    pub lines: u64,
    /// The last failure (connecting, writing), or null once shipping works again.
    pub last_error: Option<String>,
    /// Everything, the end entry included, is in Redis.
    pub complete: bool,
}

/// The whole metadata.json document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub job_run_id: String,
    /// The job this one ran inside (a logwrap started by another logwrapped
    /// job in the same root, issue 13), or null for a top-level job. Always
    /// written, so a reader need not tell "absent" from "none"; documents
    /// written before the field existed read as null.
    #[serde(default)]
    pub parent_job_run_id: Option<String>,
    pub command: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    /// The wrapper's pid.
    pub pid: u32,
    pub child_pid: Option<u32>,
    pub pty: bool,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub status: Status,
    /// The child's own exit code; null while running or when a signal ended it.
    pub exit_code: Option<i32>,
    /// Name of the signal that ended the child (`SIGKILL`), or null.
    pub signal: Option<String>,
    /// The status the wrapper itself exited with (124 on timeout, 128+N on a
    /// signal, 125-127 when the job could not start); null while running.
    #[serde(default)]
    pub wrapper_exit_code: Option<i32>,
    pub stdout: StreamStats,
    pub stderr: StreamStats,
    pub missing_deps: Vec<MissingDep>,
    pub marker_errors: Vec<MarkerError>,
    /// Marker lines neither recorded in `missing_deps` nor in `marker_errors`,
    /// because both were full (the wrapper's caps keep metadata.json small).
    #[serde(default)]
    pub marker_errors_dropped: u64,
    /// Annotation lines, in order, at most the wrapper's cap (documents written
    /// before the field existed read as none).
    #[serde(default)]
    pub annotations: Vec<Annotation>,
    /// Annotation lines past that cap, only counted.
    #[serde(default)]
    pub annotations_dropped: u64,
    pub building_partitions: Vec<String>,
    pub log_errors: Vec<String>,
    pub tail_url: Option<String>,
    /// Why the job could not start (command not found, ...), or null.
    #[serde(default)]
    pub error: Option<String>,
    /// Secrets replaced by `[REDACTED]` so far, in the logs and in this
    /// document (issue 12); 0 with redaction off or nothing to hide.
    #[serde(default)]
    pub redactions: u64,
    /// Values that were not redacted, by name and reason (too short, too
    /// long), never by value.
    #[serde(default)]
    pub redact_skipped: Vec<String>,
    /// What `--max-log-size` left out of each stream (issue 12); empty when
    /// nothing was cut.
    #[serde(default)]
    pub truncated: Truncated,
    pub logwrap_version: String,
    /// Shipping to Redis (`--ship`), or null when the job is not shipped.
    #[serde(default)]
    pub ship: Option<ShipState>,
}

impl Metadata {
    /// Serialises the document, pretty-printed for people who `cat` it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("metadata always serialises");
        v.push(b'\n');
        v
    }
}

/// Writes `bytes` to `path` atomically: a temp file beside it, then rename. With
/// `durable`, the file and its directory are fsynced (used for the final write).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().context("metadata path has no parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("metadata.json")
    ));
    let mut f = match create_temp(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Left by a writer that died mid-write (or planted): it is ours to
            // replace, but never to open, since it may be a link.
            std::fs::remove_file(&tmp)
                .and_then(|()| create_temp(&tmp))
                .with_context(|| format!("creating {}", tmp.display()))?
        }
        other => other.with_context(|| format!("creating {}", tmp.display()))?,
    };
    let written = f
        .write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            if durable {
                f.sync_all()
                    .with_context(|| format!("syncing {}", tmp.display()))?;
            }
            Ok(())
        });
    drop(f);
    let renamed = written.and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if let Err(e) = renamed {
        // A full disk must not leave a half-written temp file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Creates the temp file with `O_EXCL | O_NOFOLLOW`: a symlink or file planted
/// under its name is never written through.
fn create_temp(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

/// Largest metadata.json a reader accepts. A real one holds the job's fields
/// plus its markers, which the wrapper caps at 1 MiB in total, so 16 MiB leaves
/// room for any document logwrap writes while a planted `/dev/zero`-sized one
/// is refused as damaged instead of being read into memory (issue 8).
pub const MAX_METADATA_BYTES: u64 = 16 << 20;

/// Reads and parses a metadata.json, never following a link, never blocking on
/// a FIFO and never reading more than [`MAX_METADATA_BYTES`].
pub fn read(path: &Path) -> Result<Metadata> {
    let bytes = crate::store::read_job_file(path, MAX_METADATA_BYTES)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Metadata {
        Metadata {
            job_run_id: "j1".into(),
            parent_job_run_id: None,
            command: vec!["true".into()],
            cwd: "/".into(),
            hostname: "h".into(),
            pid: 1,
            child_pid: None,
            pty: false,
            started_at: "2026-01-01T00:00:00.000Z".into(),
            ended_at: None,
            duration_ms: None,
            status: Status::Running,
            exit_code: None,
            signal: None,
            wrapper_exit_code: None,
            stdout: StreamStats::default(),
            stderr: StreamStats::default(),
            missing_deps: vec![],
            marker_errors: vec![],
            marker_errors_dropped: 0,
            annotations: vec![],
            annotations_dropped: 0,
            building_partitions: vec![],
            log_errors: vec![],
            tail_url: None,
            error: None,
            redactions: 0,
            redact_skipped: Vec::new(),
            truncated: Truncated::default(),
            logwrap_version: "0".into(),
            ship: None,
        }
    }

    #[test]
    fn status_names_match_the_spec() {
        let names: Vec<_> = Status::ALL
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("done"), None);
        assert_eq!(
            serde_json::Value::Array(names),
            serde_json::json!([
                "running",
                "succeeded",
                "failed",
                "killed",
                "timed_out",
                "abandoned"
            ])
        );
    }

    #[test]
    fn parent_job_run_id_is_always_written_and_optional_to_read() {
        let top = serde_json::to_value(sample()).unwrap();
        assert_eq!(top["parent_job_run_id"], serde_json::Value::Null);
        let mut child = sample();
        child.parent_job_run_id = Some("p".into());
        let doc = serde_json::to_value(&child).unwrap();
        assert_eq!(doc["parent_job_run_id"], "p");
        // A document from before the field existed still reads.
        let mut old = top.clone();
        old.as_object_mut().unwrap().remove("parent_job_run_id");
        let read: Metadata = serde_json::from_value(old).unwrap();
        assert_eq!(read, sample());
    }

    #[test]
    fn atomic_write_round_trips_and_leaves_no_temp_file() {
        let tmp = crate::testdir::TempDir::new("meta");
        let dir = tmp.path();
        let path = dir.join("metadata.json");
        let m = sample();
        write_atomic(&path, &m.to_json(), true).unwrap();
        assert_eq!(read(&path).unwrap(), m);
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("metadata.json")]);
    }

    #[test]
    fn a_planted_temp_link_is_replaced_not_followed() {
        let dir = crate::testdir::TempDir::new("meta-link");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".metadata.json.tmp")).unwrap();
        let path = dir.join("metadata.json");
        write_atomic(&path, &sample().to_json(), false).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(read(&path).unwrap(), sample());
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert!(std::fs::symlink_metadata(dir.join(".metadata.json.tmp")).is_err());
    }
}
