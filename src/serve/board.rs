//! The job events of `GET /api/events` (issue 11, point 5): what the job list
//! page needs to stay live without reloading. One board per server, kept only
//! while someone listens, turns the store into events: `started` when a job
//! appears, `status` when a running job is found abandoned, `finished` when it
//! ends, `progress` when a running job's sizes changed, `removed` when a job
//! goes away (gc). Each carries a one-line JSON summary of the job.
//!
//! The work per look is bounded by what changed, not by the size of the root:
//! the list of jobs is read again only when the store's
//! [`list_version`](crate::store::LogStore::list_version) changes, and then
//! only new jobs' metadata is read; finished jobs are never read again; only
//! running jobs are re-read, once per look. The first look at a root reads
//! every job once (to learn which run), [`SCAN_PER_TURN`] at a time.

use crate::metadata::{Metadata, Status, StreamStats};
use crate::store::{self, JobId, LogStore};
use crate::timefmt;
use serde_json::json;
use std::collections::{HashMap, HashSet};

/// Jobs whose metadata the first look reads per turn of the event loop, so a
/// root of 10,000 jobs shares the loop with the other clients meanwhile.
pub const SCAN_PER_TURN: usize = 256;

/// What the board knows of the jobs of a store.
pub struct Board {
    /// Jobs already announced (or there before anyone listened).
    known: HashSet<JobId>,
    /// Running jobs, with the sizes last announced.
    running: HashMap<JobId, [StreamStats; 2]>,
    /// The store's list version when the jobs were last listed in full.
    version: Option<u64>,
    /// Jobs the first look has still to read.
    scan: Vec<JobId>,
}

impl Board {
    /// A board over the jobs of `store` (only `only`, for a wrapper's own
    /// server), which it reads over the next calls to [`Board::step`].
    pub fn new(store: &dyn LogStore, only: Option<&JobId>) -> Board {
        // The version is taken before the listing: a job created in between
        // changes it, so the next look lists again and finds it.
        let version = store.list_version();
        let scan = jobs_of(store, only).unwrap_or_default();
        Board {
            known: HashSet::new(),
            running: HashMap::new(),
            version,
            scan,
        }
    }

    /// True while the first look has jobs left to read.
    pub fn scanning(&self) -> bool {
        !self.scan.is_empty()
    }

    /// Looks at the store and appends the events of what changed since the
    /// last look to `out`, as SSE. During the first look, reads at most
    /// [`SCAN_PER_TURN`] jobs and announces nothing (those jobs were there
    /// before the listener came).
    pub fn step(&mut self, store: &dyn LogStore, only: Option<&JobId>, out: &mut Vec<u8>) {
        if self.scanning() {
            let from = self.scan.len().saturating_sub(SCAN_PER_TURN);
            for id in self.scan.split_off(from) {
                // A job being created is not known yet: it is announced as
                // new once it has metadata.
                if let Ok(m) = store.current_metadata(&id) {
                    if m.status == Status::Running {
                        self.running.insert(id.clone(), [m.stdout, m.stderr]);
                    }
                    self.known.insert(id);
                }
            }
            if self.scanning() {
                return;
            }
        }
        let now_ms = timefmt::unix_ms(std::time::SystemTime::now());
        let version = store.list_version();
        if version.is_none() || version != self.version {
            self.version = self
                .list_again(store, only, now_ms, out)
                .then_some(version)
                .flatten();
        }
        let ids: Vec<JobId> = self.running.keys().cloned().collect();
        for id in ids {
            // Gone: the next listing says so.
            let Ok(m) = store.current_metadata(&id) else {
                continue;
            };
            if m.status != Status::Running {
                self.running.remove(&id);
                event(out, end_event(m.status), &m, now_ms);
            } else if self.running.get(&id) != Some(&[m.stdout, m.stderr]) {
                self.running.insert(id, [m.stdout, m.stderr]);
                event(out, "progress", &m, now_ms);
            }
        }
    }

    /// Lists the jobs, announces new and removed ones; false if a job had no
    /// metadata yet (being created), so the list is read again next time.
    fn list_again(
        &mut self,
        store: &dyn LogStore,
        only: Option<&JobId>,
        now_ms: i64,
        out: &mut Vec<u8>,
    ) -> bool {
        let Ok(ids) = jobs_of(store, only) else {
            return false;
        };
        let mut complete = true;
        for id in &ids {
            if self.known.contains(id) {
                continue;
            }
            match store.current_metadata(id) {
                Ok(m) => {
                    event(out, "started", &m, now_ms);
                    if m.status == Status::Running {
                        self.running.insert(id.clone(), [m.stdout, m.stderr]);
                    } else {
                        // Started and ended between two looks.
                        event(out, end_event(m.status), &m, now_ms);
                    }
                    self.known.insert(id.clone());
                }
                Err(e) if store::is_not_found(&e) => complete = false,
                // Damaged metadata: nothing to announce, now or later.
                Err(_) => {
                    self.known.insert(id.clone());
                }
            }
        }
        let present: HashSet<&JobId> = ids.iter().collect();
        let gone: Vec<JobId> = self
            .known
            .iter()
            .filter(|id| !present.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.known.remove(&id);
            self.running.remove(&id);
            push_event(out, "removed", &json!({ "id": id.as_str() }));
        }
        complete
    }
}

/// The jobs in view: every job of the store, or just `only`.
fn jobs_of(store: &dyn LogStore, only: Option<&JobId>) -> anyhow::Result<Vec<JobId>> {
    match only {
        Some(id) => Ok(if store.job_exists(id) {
            vec![id.clone()]
        } else {
            Vec::new()
        }),
        None => store.job_ids(),
    }
}

/// The event that says a job stopped running: `status` when its writer died
/// without a word (abandoned), `finished` when it ended.
fn end_event(status: Status) -> &'static str {
    if status == Status::Abandoned {
        "status"
    } else {
        "finished"
    }
}

/// A job's summary as the events carry it: what a row of the job list shows.
/// `duration_ms` of a running job is how long it has run so far.
pub fn summary(m: &Metadata, now_ms: i64) -> serde_json::Value {
    let duration_ms = m.duration_ms.or_else(|| {
        let started = timefmt::parse_rfc3339_ms(&m.started_at)?;
        (m.status == Status::Running).then(|| now_ms.saturating_sub(started).max(0) as u64)
    });
    json!({
        "id": m.job_run_id,
        "status": m.status.as_str(),
        "exit_code": m.exit_code,
        "signal": m.signal,
        "started_at": m.started_at,
        "duration_ms": duration_ms,
        "command": m.command,
        "stdout": m.stdout,
        "stderr": m.stderr,
    })
}

fn event(out: &mut Vec<u8>, name: &str, m: &Metadata, now_ms: i64) {
    push_event(out, name, &summary(m, now_ms));
}

/// One event: compact JSON never holds a line break, so the data is one
/// `data:` field whatever the job's command holds.
fn push_event(out: &mut Vec<u8>, name: &str, data: &serde_json::Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::both;
    use crate::store::{Chunk, Stream};

    /// `event name` and the data's `id status` of each event in `out`.
    fn events(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
                let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                let v: serde_json::Value = serde_json::from_str(data).unwrap();
                let status = v["status"].as_str().unwrap_or("-");
                format!("{name} {} {status}", v["id"].as_str().unwrap())
            })
            .collect()
    }

    fn step(board: &mut Board, store: &dyn LogStore) -> Vec<String> {
        let mut out = Vec::new();
        board.step(store, None, &mut out);
        events(&out)
    }

    #[test]
    fn the_board_announces_what_changed_and_only_that() {
        for (name, store, _root) in both::stores("board") {
            let id = |s: &str| JobId::parse(s).unwrap();
            let meta = |s: &str, st| both::metadata(s, st, "2026-01-01T00:00:00.000Z");
            let mut old = store.create_job(&id("old")).unwrap();
            old.write_metadata(&meta("old", Status::Succeeded), true)
                .unwrap();
            drop(old);
            let mut board = Board::new(store.as_ref(), None);
            assert_eq!(
                step(&mut board, store.as_ref()),
                Vec::<String>::new(),
                "{name}"
            );

            let mut live = store.create_job(&id("live")).unwrap();
            // Being created: not announced until it has metadata.
            assert!(step(&mut board, store.as_ref()).is_empty(), "{name}");
            live.write_metadata(&meta("live", Status::Running), false)
                .unwrap();
            assert_eq!(
                step(&mut board, store.as_ref()),
                ["started live running"],
                "{name}"
            );
            assert!(
                step(&mut board, store.as_ref()).is_empty(),
                "{name}: nothing new"
            );

            live.append(Stream::Stdout, &Chunk::new(b"hello\n", 1))
                .unwrap();
            let mut out = Vec::new();
            board.step(store.as_ref(), None, &mut out);
            assert_eq!(events(&out), ["progress live running"], "{name}");
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("\"stdout\":{\"bytes\":6,\"lines\":1}"),
                "{name}: {text}"
            );

            live.write_metadata(&meta("live", Status::Failed), true)
                .unwrap();
            assert_eq!(
                step(&mut board, store.as_ref()),
                ["finished live failed"],
                "{name}"
            );

            // A wrapper that dies: running, then abandoned.
            let mut dead = store.create_job(&id("dead")).unwrap();
            dead.write_metadata(&meta("dead", Status::Running), false)
                .unwrap();
            assert_eq!(
                step(&mut board, store.as_ref()),
                ["started dead running"],
                "{name}"
            );
            drop(dead);
            assert_eq!(
                step(&mut board, store.as_ref()),
                ["status dead abandoned"],
                "{name}"
            );
            assert!(step(&mut board, store.as_ref()).is_empty(), "{name}");
        }
    }

    #[test]
    fn the_first_look_reads_a_big_root_a_part_at_a_time() {
        for (name, store, _root) in both::stores("board-scan") {
            let n = SCAN_PER_TURN * 2 + 1;
            for i in 0..n {
                let s = format!("j{i}");
                let mut sink = store.create_job(&JobId::parse(&s).unwrap()).unwrap();
                let m = both::metadata(&s, Status::Succeeded, "2026-01-01T00:00:00.000Z");
                sink.write_metadata(&m, true).unwrap();
            }
            let mut board = Board::new(store.as_ref(), None);
            let mut turns = 0;
            while board.scanning() {
                assert!(step(&mut board, store.as_ref()).is_empty(), "{name}");
                turns += 1;
            }
            assert_eq!(turns, 3, "{name}");
            assert_eq!(board.known.len(), n, "{name}");
            assert!(board.running.is_empty(), "{name}");
        }
    }
}
