//! Which windows each sink has committed, so a re-run fetches only what is missing.
//!
//! [`Ledger`] is the seam. With PostgreSQL configured the ledger is a table there, written in the
//! same transaction as the rows (`sink::postgres`); without it, [`FileLedger`] keeps an
//! append-only JSON-lines file next to the Parquet data. Resume is "plan minus committed": the
//! requested range minus the ranges every configured sink has committed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::record::{MediaType, WindowKey};

/// A ledger failure.
#[derive(Debug, thiserror::Error)]
#[error("ledger: {message}")]
pub struct LedgerError {
    /// What went wrong.
    pub message: String,
    /// Whether a later attempt may succeed.
    pub retryable: bool,
}

/// Outcome of one window at one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowStatus {
    /// Rows are durable in the sink.
    Committed,
    /// The window could not be fetched or written.
    Failed,
}

/// One ledger record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The window.
    #[serde(flatten)]
    pub key: WindowKey,
    /// Which sink (`postgres`, `parquet`, ...).
    pub sink: String,
    /// Outcome.
    pub status: WindowStatus,
    /// Rows committed.
    pub rows: u64,
    /// RequestId that delivered the rows.
    pub request_id: Option<String>,
    /// Attempts the fetch took.
    pub attempts: u32,
    /// Last error, for failed windows.
    pub error: Option<String>,
    /// The run.
    pub run_id: uuid::Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

/// A run's bookkeeping record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Id.
    pub run_id: uuid::Uuid,
    /// `backfill`, `nightly`, `demo`.
    pub command: String,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End, once finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `ok`, `partial`, `failed`.
    pub status: String,
    /// The summary, as JSON.
    pub summary: Option<serde_json::Value>,
}

/// Where commits are remembered.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Ranges of `(instance, media)` that `sink` has committed, in any order.
    async fn committed(
        &self,
        instance: &str,
        media: MediaType,
        sink: &str,
    ) -> Result<Vec<(i64, i64)>, LedgerError>;
    /// Records one outcome.
    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError>;
    /// Records several outcomes, all or none where the store allows (a file ledger may keep a
    /// prefix: those windows are committed, the rest are fetched again).
    async fn record_many(&self, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        for e in entries {
            self.record(e).await?;
        }
        Ok(())
    }
    /// Records a run's start or end.
    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError>;
    /// When a run of `command` (any command if `None`) last finished with every window committed.
    async fn last_success(
        &self,
        command: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError>;
}

/// Merges overlapping or touching ranges.
pub fn union(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.retain(|(a, b)| a < b);
    ranges.sort();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Parts of `[start, end)` that at least one of `sinks` has not committed.
pub async fn missing(
    ledger: &dyn Ledger,
    instance: &str,
    media: MediaType,
    sinks: &[&str],
    start: i64,
    end: i64,
) -> Result<Vec<(i64, i64)>, LedgerError> {
    let mut gaps = Vec::new();
    for sink in sinks {
        let done = ledger.committed(instance, media, sink).await?;
        gaps.extend(crate::plan::subtract(start, end, &done));
    }
    Ok(union(gaps))
}

#[derive(Debug, Default)]
struct Index {
    committed: HashMap<(String, MediaType, String), Vec<(i64, i64)>>,
}

impl Index {
    fn apply(&mut self, e: &LedgerEntry) {
        if e.status == WindowStatus::Committed {
            self.committed
                .entry((e.key.instance_id.clone(), e.key.media_type, e.sink.clone()))
                .or_default()
                .push((e.key.start_ms, e.key.end_ms));
        }
    }

    fn get(&self, instance: &str, media: MediaType, sink: &str) -> Vec<(i64, i64)> {
        self.committed
            .get(&(instance.to_string(), media, sink.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

/// A ledger in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    index: Mutex<Index>,
    entries: Mutex<Vec<LedgerEntry>>,
    successes: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl MemoryLedger {
    fn note_run(&self, run: &RunRecord) {
        if let (Some(done), "ok") = (run.finished_at, run.status.as_str()) {
            let mut m = self.successes.lock().expect("ledger lock");
            let e = m.entry(run.command.clone()).or_insert(done);
            *e = (*e).max(done);
        }
    }

    fn latest_success(&self, command: Option<&str>) -> Option<DateTime<Utc>> {
        let m = self.successes.lock().expect("ledger lock");
        match command {
            Some(c) => m.get(c).copied(),
            None => m.values().max().copied(),
        }
    }
}

impl MemoryLedger {
    /// Every entry recorded.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.entries.lock().expect("ledger lock").clone()
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn committed(
        &self,
        instance: &str,
        media: MediaType,
        sink: &str,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        Ok(self
            .index
            .lock()
            .expect("ledger lock")
            .get(instance, media, sink))
    }
    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.index.lock().expect("ledger lock").apply(entry);
        self.entries
            .lock()
            .expect("ledger lock")
            .push(entry.clone());
        Ok(())
    }
    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        self.note_run(run);
        Ok(())
    }

    async fn last_success(
        &self,
        command: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        Ok(self.latest_success(command))
    }
}

/// Directory of the file ledger under a Parquet root. Starts with `_` so engines skip it.
pub const FILE_LEDGER_DIR: &str = "_ccc_etl";

/// An append-only JSON-lines ledger next to the Parquet data, for runs without PostgreSQL.
///
/// Each record is one line, written and fsynced before the call returns; a line torn by a crash
/// is ignored on reading (its window is simply fetched again). It is used together with the
/// Parquet sink, whose lock on the root keeps a second run out.
#[derive(Debug)]
pub struct FileLedger {
    dir: PathBuf,
    index: MemoryLedger,
    windows: Mutex<File>,
    runs: Mutex<File>,
}

/// Whether a non-empty file's last byte is not a newline.
fn ends_without_newline(f: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> LedgerError {
    LedgerError {
        message: format!("{what} {}: {e}", path.display()),
        retryable: false,
    }
}

impl FileLedger {
    /// Opens (creating) the ledger under `root`.
    pub fn open(root: &Path) -> Result<Self, LedgerError> {
        let dir = root.join(FILE_LEDGER_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let windows_path = dir.join("windows.jsonl");
        let index = MemoryLedger::default();
        if windows_path.exists() {
            let f =
                File::open(&windows_path).map_err(|e| io_err("cannot read", &windows_path, e))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| io_err("cannot read", &windows_path, e))?;
                if let Ok(entry) = serde_json::from_str::<LedgerEntry>(&line) {
                    index.index.lock().expect("ledger lock").apply(&entry);
                }
            }
        }
        let runs_path = dir.join("runs.jsonl");
        if runs_path.exists() {
            let f = File::open(&runs_path).map_err(|e| io_err("cannot read", &runs_path, e))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| io_err("cannot read", &runs_path, e))?;
                if let Ok(run) = serde_json::from_str::<RunRecord>(&line) {
                    index.note_run(&run);
                }
            }
        }
        let open_append = |p: &Path| {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(p)
                .map_err(|e| io_err("cannot open", p, e))?;
            // A line torn by a crash would swallow the next one appended: end it first.
            if ends_without_newline(&mut f).map_err(|e| io_err("cannot read", p, e))? {
                f.write_all(b"\n")
                    .and_then(|_| f.sync_data())
                    .map_err(|e| io_err("cannot append to", p, e))?;
            }
            Ok::<File, LedgerError>(f)
        };
        let windows = open_append(&windows_path)?;
        let runs = open_append(&dir.join("runs.jsonl"))?;
        Ok(Self {
            dir,
            index,
            windows: Mutex::new(windows),
            runs: Mutex::new(runs),
        })
    }

    /// Where the ledger lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn append<T: Serialize>(
        &self,
        file: &Mutex<File>,
        name: &str,
        values: &[T],
    ) -> Result<(), LedgerError> {
        let mut lines = String::new();
        for v in values {
            lines.push_str(&serde_json::to_string(v).map_err(|e| LedgerError {
                message: e.to_string(),
                retryable: false,
            })?);
            lines.push('\n');
        }
        let mut f = file.lock().expect("ledger file lock");
        f.write_all(lines.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| LedgerError {
                message: format!("cannot append to {}: {e}", self.dir.join(name).display()),
                retryable: true,
            })
    }
}

#[async_trait]
impl Ledger for FileLedger {
    async fn committed(
        &self,
        instance: &str,
        media: MediaType,
        sink: &str,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        self.index.committed(instance, media, sink).await
    }

    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.record_many(std::slice::from_ref(entry)).await
    }

    async fn record_many(&self, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        self.append(&self.windows, "windows.jsonl", entries)?;
        let mut index = self.index.index.lock().expect("ledger lock");
        for e in entries {
            index.apply(e);
        }
        Ok(())
    }

    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        self.append(&self.runs, "runs.jsonl", std::slice::from_ref(run))?;
        self.index.note_run(run);
        Ok(())
    }

    async fn last_success(
        &self,
        command: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        Ok(self.index.latest_success(command))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: i64, end: i64, sink: &str, status: WindowStatus) -> LedgerEntry {
        LedgerEntry {
            key: WindowKey {
                instance_id: "i".into(),
                media_type: MediaType::Audio,
                start_ms: start,
                end_ms: end,
            },
            sink: sink.into(),
            status,
            rows: 3,
            request_id: Some("r".into()),
            attempts: 1,
            error: None,
            run_id: uuid::Uuid::nil(),
            at: Utc::now(),
        }
    }

    #[test]
    fn union_merges_overlapping_and_touching_ranges() {
        assert_eq!(
            union(vec![(5, 7), (0, 2), (2, 3), (6, 9), (20, 20)]),
            vec![(0, 3), (5, 9)]
        );
    }

    #[tokio::test]
    async fn missing_is_what_any_sink_lacks() {
        let l = MemoryLedger::default();
        l.record(&entry(0, 10, "a", WindowStatus::Committed))
            .await
            .unwrap();
        l.record(&entry(10, 20, "a", WindowStatus::Committed))
            .await
            .unwrap();
        l.record(&entry(0, 10, "b", WindowStatus::Committed))
            .await
            .unwrap();
        l.record(&entry(10, 20, "b", WindowStatus::Failed))
            .await
            .unwrap();
        let m = missing(&l, "i", MediaType::Audio, &["a", "b"], 0, 30)
            .await
            .unwrap();
        assert_eq!(m, vec![(10, 30)]);
    }

    #[tokio::test]
    async fn the_file_ledger_survives_reopening_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = FileLedger::open(dir.path()).unwrap();
            l.record(&entry(0, 10, "parquet", WindowStatus::Committed))
                .await
                .unwrap();
        }
        let path = dir.path().join(FILE_LEDGER_DIR).join("windows.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"instance_id\":\"i\",\"media_ty").unwrap();
        drop(f);
        let l = FileLedger::open(dir.path()).unwrap();
        assert_eq!(
            l.committed("i", MediaType::Audio, "parquet").await.unwrap(),
            vec![(0, 10)]
        );
        // A record appended after the torn line is not swallowed by it.
        l.record_many(&[
            entry(10, 20, "parquet", WindowStatus::Committed),
            entry(20, 30, "parquet", WindowStatus::Committed),
        ])
        .await
        .unwrap();
        drop(l);
        let l = FileLedger::open(dir.path()).unwrap();
        let mut got = l.committed("i", MediaType::Audio, "parquet").await.unwrap();
        got.sort();
        assert_eq!(got, vec![(0, 10), (10, 20), (20, 30)]);
    }
}
