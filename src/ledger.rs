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
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::record::{MediaType, Table, WindowKey};
use crate::sink::SinkKind;

/// A sink and the destination its commits went to: the ledger's key for "committed where".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SinkId {
    /// The kind of sink.
    pub kind: SinkKind,
    /// The destination within the sink kind: a Parquet root's id (`_ccc_etl/root.json`); empty
    /// for PostgreSQL, whose ledger lives in the same database as its rows.
    pub target: String,
}

impl SinkId {
    /// A sink writing to `target`.
    pub fn new(kind: SinkKind, target: impl Into<String>) -> Self {
        Self {
            kind,
            target: target.into(),
        }
    }
}

impl std::fmt::Display for SinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.as_str())
    }
}

/// One Parquet day file as the sink wrote it: what a listing must find again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayFile {
    /// The root's id.
    pub target: String,
    /// The table.
    pub table: Table,
    /// The local day (`dt=`).
    pub day: NaiveDate,
    /// The file's ETag when written (local files: modification time and size).
    pub etag: String,
    /// Rows in the file.
    pub rows: u64,
}

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
    /// Which sink.
    pub sink: SinkKind,
    /// Where the sink wrote (see [`SinkId::target`]); empty in records of older versions.
    #[serde(default)]
    pub target: String,
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

impl LedgerEntry {
    /// A window whose rows `sink` made durable, covering only its final part (up to the bucket
    /// that was still in progress); `None` when no part of it is final yet.
    pub fn committed(
        sink: &SinkId,
        durable: &crate::sink::DurableWindow,
        run_id: uuid::Uuid,
    ) -> Option<Self> {
        if durable.final_end_ms <= durable.key.start_ms {
            return None;
        }
        Some(Self {
            key: WindowKey {
                end_ms: durable.final_end_ms,
                ..durable.key.clone()
            },
            sink: sink.kind,
            target: sink.target.clone(),
            status: WindowStatus::Committed,
            rows: durable.rows,
            request_id: Some(durable.request_id.clone()),
            attempts: durable.attempts,
            error: None,
            run_id,
            at: Utc::now(),
        })
    }

    /// A window `sink` could not make durable.
    pub fn failed(
        sink: &SinkId,
        key: &WindowKey,
        error: &str,
        attempts: u32,
        run_id: uuid::Uuid,
    ) -> Self {
        Self {
            key: key.clone(),
            sink: sink.kind,
            target: sink.target.clone(),
            status: WindowStatus::Failed,
            rows: 0,
            request_id: None,
            attempts,
            error: Some(error.to_string()),
            run_id,
            at: Utc::now(),
        }
    }

    /// The sink and destination of this record.
    pub fn sink_id(&self) -> SinkId {
        SinkId::new(self.sink, self.target.clone())
    }
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
        sink: &SinkId,
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
    /// Records day files written, then the windows they made durable (files first: a crash in
    /// between leaves a file whose windows are simply fetched again).
    async fn record_durable(
        &self,
        files: &[DayFile],
        entries: &[LedgerEntry],
    ) -> Result<(), LedgerError> {
        self.record_files(files).await?;
        self.record_many(entries).await
    }
    /// Records the day files a Parquet sink wrote (the latest record of a file wins).
    async fn record_files(&self, files: &[DayFile]) -> Result<(), LedgerError>;
    /// The day files recorded for a Parquet root.
    async fn day_files(&self, target: &str) -> Result<Vec<DayFile>, LedgerError>;
    /// Takes back the commits of `sink` overlapping any of `ranges` (every series), because what
    /// the sink holds there is gone or damaged, and forgets the named day files. Those windows
    /// are fetched again by the next run. Returns how many windows were taken back.
    async fn invalidate(
        &self,
        sink: &SinkId,
        ranges: &[(i64, i64)],
        files: &[(Table, NaiveDate)],
        reason: &str,
    ) -> Result<u64, LedgerError>;
    /// Hands the commits recorded by older versions without a destination to `sink` (a root
    /// written before roots had ids). Returns how many.
    async fn adopt_legacy(&self, sink: &SinkId) -> Result<u64, LedgerError>;
    /// Records a run's start or end.
    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError>;
    /// When a run of `command` (any command if `None`) last finished with every window committed.
    async fn last_success(
        &self,
        command: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError>;
    /// The schema drift the recorded runs met (since the schema last changed, where the ledger
    /// knows when that was): unknown fields with the rows that carried them, missing fields.
    async fn fields_seen(&self) -> Result<crate::record::Drift, LedgerError>;
}

/// The drift a recorded run's summary names.
pub fn drift_of(summary: Option<&serde_json::Value>) -> Option<crate::record::Drift> {
    serde_json::from_value(summary?.get("drift")?.clone()).ok()
}

/// Parts of `[start, end)` that at least one of `sinks` has not committed.
pub async fn missing(
    ledger: &dyn Ledger,
    instance: &str,
    media: MediaType,
    sinks: &[SinkId],
    start: i64,
    end: i64,
) -> Result<Vec<(i64, i64)>, LedgerError> {
    missing_after(
        ledger,
        instance,
        media,
        sinks,
        (start, end),
        &TakenBack::default(),
    )
    .await
}

/// Commits the next run will take back before it plans (a sink's day files found missing,
/// changed or damaged), not taken back yet: `plan` subtracts them as that run will.
#[derive(Debug, Clone, Default)]
pub struct TakenBack {
    /// Per sink, the ranges whose overlapping commits are taken back.
    pub ranges: Vec<(SinkId, Vec<(i64, i64)>)>,
}

impl TakenBack {
    fn keeps(&self, sink: &SinkId, (s, e): (i64, i64)) -> bool {
        !self
            .ranges
            .iter()
            .filter(|(k, _)| k == sink)
            .flat_map(|(_, r)| r)
            .any(|(a, b)| s < *b && *a < e)
    }
}

/// [`missing`] once the commits of `taken` are taken back.
pub async fn missing_after(
    ledger: &dyn Ledger,
    instance: &str,
    media: MediaType,
    sinks: &[SinkId],
    (start, end): (i64, i64),
    taken: &TakenBack,
) -> Result<Vec<(i64, i64)>, LedgerError> {
    let mut gaps = Vec::new();
    for sink in sinks {
        let mut done = ledger.committed(instance, media, sink).await?;
        done.retain(|w| taken.keeps(sink, *w));
        gaps.extend(crate::ranges::subtract(start, end, &done));
    }
    Ok(crate::ranges::union(gaps))
}

/// A line of the file ledger's `windows.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum WindowLine {
    Entry(LedgerEntry),
    Invalidated(Invalidation),
}

/// Commits taken back (see [`Ledger::invalidate`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Invalidation {
    invalidated: Vec<(i64, i64)>,
    sink: SinkKind,
    #[serde(default)]
    target: String,
    reason: String,
    at: DateTime<Utc>,
}

/// A line of the file ledger's `files.jsonl`: a day file written, or forgotten.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileLine {
    #[serde(flatten)]
    file: DayFile,
    #[serde(default)]
    forgotten: bool,
}

#[derive(Debug, Default)]
struct Index {
    committed: HashMap<(String, MediaType, SinkId), Vec<(i64, i64)>>,
    files: HashMap<(String, Table, NaiveDate), DayFile>,
}

impl Index {
    fn apply(&mut self, e: &LedgerEntry) {
        if e.status == WindowStatus::Committed {
            self.committed
                .entry((e.key.instance_id.clone(), e.key.media_type, e.sink_id()))
                .or_default()
                .push((e.key.start_ms, e.key.end_ms));
        }
    }

    fn get(&self, instance: &str, media: MediaType, sink: &SinkId) -> Vec<(i64, i64)> {
        self.committed
            .get(&(instance.to_string(), media, sink.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// Removes the windows of `sink` overlapping `ranges`; returns how many.
    fn invalidate(&mut self, sink: &SinkId, ranges: &[(i64, i64)]) -> u64 {
        let mut n = 0;
        for ((_, _, s), windows) in self.committed.iter_mut() {
            if s != sink {
                continue;
            }
            let before = windows.len();
            windows.retain(|(a, b)| !ranges.iter().any(|(x, y)| a < y && x < b));
            n += (before - windows.len()) as u64;
        }
        n
    }

    fn apply_file(&mut self, line: &FileLine) {
        let k = (line.file.target.clone(), line.file.table, line.file.day);
        if line.forgotten {
            self.files.remove(&k);
        } else {
            self.files.insert(k, line.file.clone());
        }
    }

    fn files_of(&self, target: &str) -> Vec<DayFile> {
        let mut v: Vec<DayFile> = self
            .files
            .values()
            .filter(|f| f.target == target)
            .cloned()
            .collect();
        v.sort_by_key(|a| (a.table, a.day));
        v
    }

    fn adopt(&mut self, sink: &SinkId) -> u64 {
        let legacy: Vec<_> = self
            .committed
            .keys()
            .filter(|(_, _, s)| s.kind == sink.kind && s.target.is_empty())
            .cloned()
            .collect();
        let mut n = 0;
        for k in legacy {
            let ranges = self.committed.remove(&k).unwrap_or_default();
            n += ranges.len() as u64;
            self.committed
                .entry((k.0, k.1, sink.clone()))
                .or_default()
                .extend(ranges);
        }
        n
    }
}

/// A ledger in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    index: Mutex<Index>,
    entries: Mutex<Vec<LedgerEntry>>,
    successes: Mutex<HashMap<String, DateTime<Utc>>>,
    drift: Mutex<crate::record::Drift>,
}

impl MemoryLedger {
    fn note_run(&self, run: &RunRecord) {
        if let Some(d) = drift_of(run.summary.as_ref()) {
            self.drift.lock().expect("ledger lock").merge(&d);
        }
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
        sink: &SinkId,
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
    async fn record_files(&self, files: &[DayFile]) -> Result<(), LedgerError> {
        let mut index = self.index.lock().expect("ledger lock");
        for f in files {
            index.apply_file(&FileLine {
                file: f.clone(),
                forgotten: false,
            });
        }
        Ok(())
    }
    async fn day_files(&self, target: &str) -> Result<Vec<DayFile>, LedgerError> {
        Ok(self.index.lock().expect("ledger lock").files_of(target))
    }
    async fn invalidate(
        &self,
        sink: &SinkId,
        ranges: &[(i64, i64)],
        files: &[(Table, NaiveDate)],
        _reason: &str,
    ) -> Result<u64, LedgerError> {
        let mut index = self.index.lock().expect("ledger lock");
        for (table, day) in files {
            index.files.remove(&(sink.target.clone(), *table, *day));
        }
        Ok(index.invalidate(sink, ranges))
    }
    async fn adopt_legacy(&self, sink: &SinkId) -> Result<u64, LedgerError> {
        Ok(self.index.lock().expect("ledger lock").adopt(sink))
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

    async fn fields_seen(&self) -> Result<crate::record::Drift, LedgerError> {
        Ok(self.drift.lock().expect("ledger lock").clone())
    }
}

/// Directory of the file ledger under a Parquet root. Starts with `_` so engines skip it.
pub const FILE_LEDGER_DIR: &str = "_ccc_etl";

/// An append-only JSON-lines ledger next to the Parquet data, for runs without PostgreSQL.
///
/// Each record is one line, written and fsynced before the call returns; a line torn by a crash
/// is ignored on reading (its window is simply fetched again). It is used together with the
/// Parquet sink, whose lock on the root keeps a second run out. It lives inside the root it
/// describes, so records written before roots had ids (empty target) belong to that root.
#[derive(Debug)]
pub struct FileLedger {
    dir: PathBuf,
    index: MemoryLedger,
    /// `windows.jsonl`, `files.jsonl`, `runs.jsonl`; `None` when opened read-only.
    files: Option<[Mutex<File>; 3]>,
}

const WINDOWS_FILE: &str = "windows.jsonl";
const FILES_FILE: &str = "files.jsonl";
const RUNS_FILE: &str = "runs.jsonl";

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

/// Applies every readable line of `path` (torn or foreign lines are skipped).
fn replay<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut apply: impl FnMut(T),
) -> Result<(), LedgerError> {
    if !path.exists() {
        return Ok(());
    }
    let f = File::open(path).map_err(|e| io_err("cannot read", path, e))?;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| io_err("cannot read", path, e))?;
        if let Ok(v) = serde_json::from_str::<T>(&line) {
            apply(v);
        }
    }
    Ok(())
}

fn open_append(p: &Path) -> Result<File, LedgerError> {
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
    Ok(f)
}

impl FileLedger {
    /// Opens (creating) the ledger under `root`.
    pub fn open(root: &Path) -> Result<Self, LedgerError> {
        let dir = root.join(FILE_LEDGER_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let mut ledger = Self::open_read_only(root)?;
        ledger.files = Some([
            Mutex::new(open_append(&dir.join(WINDOWS_FILE))?),
            Mutex::new(open_append(&dir.join(FILES_FILE))?),
            Mutex::new(open_append(&dir.join(RUNS_FILE))?),
        ]);
        Ok(ledger)
    }

    /// Reads the ledger under `root` without creating or writing anything (`status`); a root
    /// without a ledger reads as empty.
    pub fn open_read_only(root: &Path) -> Result<Self, LedgerError> {
        let dir = root.join(FILE_LEDGER_DIR);
        let index = MemoryLedger::default();
        {
            let mut ix = index.index.lock().expect("ledger lock");
            replay(&dir.join(WINDOWS_FILE), |line: WindowLine| match line {
                WindowLine::Entry(e) => ix.apply(&e),
                WindowLine::Invalidated(inv) => {
                    ix.invalidate(&SinkId::new(inv.sink, inv.target), &inv.invalidated);
                }
            })?;
            replay(&dir.join(FILES_FILE), |line: FileLine| ix.apply_file(&line))?;
        }
        replay(&dir.join(RUNS_FILE), |run: RunRecord| index.note_run(&run))?;
        Ok(Self {
            dir,
            index,
            files: None,
        })
    }

    /// Where the ledger lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn append<T: Serialize>(&self, which: usize, values: &[T]) -> Result<(), LedgerError> {
        let name = [WINDOWS_FILE, FILES_FILE, RUNS_FILE][which];
        let Some(files) = &self.files else {
            return Err(LedgerError {
                message: format!("{} is open read-only", self.dir.display()),
                retryable: false,
            });
        };
        let mut lines = String::new();
        for v in values {
            lines.push_str(&serde_json::to_string(v).map_err(|e| LedgerError {
                message: e.to_string(),
                retryable: false,
            })?);
            lines.push('\n');
        }
        let mut f = files[which].lock().expect("ledger file lock");
        f.write_all(lines.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| LedgerError {
                message: format!("cannot append to {}: {e}", self.dir.join(name).display()),
                retryable: true,
            })
    }

    /// The sink as older versions recorded it in this root: without a target.
    fn legacy(sink: &SinkId) -> SinkId {
        SinkId::new(sink.kind, "")
    }
}

#[async_trait]
impl Ledger for FileLedger {
    async fn committed(
        &self,
        instance: &str,
        media: MediaType,
        sink: &SinkId,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        let ix = self.index.index.lock().expect("ledger lock");
        let mut v = ix.get(instance, media, sink);
        if !sink.target.is_empty() {
            v.extend(ix.get(instance, media, &Self::legacy(sink)));
        }
        Ok(v)
    }

    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.record_many(std::slice::from_ref(entry)).await
    }

    async fn record_many(&self, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        self.append(0, entries)?;
        let mut index = self.index.index.lock().expect("ledger lock");
        for e in entries {
            index.apply(e);
        }
        Ok(())
    }

    async fn record_files(&self, files: &[DayFile]) -> Result<(), LedgerError> {
        let lines: Vec<FileLine> = files
            .iter()
            .map(|f| FileLine {
                file: f.clone(),
                forgotten: false,
            })
            .collect();
        self.append(1, &lines)?;
        let mut index = self.index.index.lock().expect("ledger lock");
        for l in &lines {
            index.apply_file(l);
        }
        Ok(())
    }

    async fn day_files(&self, target: &str) -> Result<Vec<DayFile>, LedgerError> {
        self.index.day_files(target).await
    }

    async fn invalidate(
        &self,
        sink: &SinkId,
        ranges: &[(i64, i64)],
        files: &[(Table, NaiveDate)],
        reason: &str,
    ) -> Result<u64, LedgerError> {
        let mut lines = vec![];
        for s in [sink.clone(), Self::legacy(sink)] {
            lines.push(WindowLine::Invalidated(Invalidation {
                invalidated: ranges.to_vec(),
                sink: s.kind,
                target: s.target,
                reason: reason.to_string(),
                at: Utc::now(),
            }));
        }
        let forgotten: Vec<FileLine> = files
            .iter()
            .map(|(table, day)| FileLine {
                file: DayFile {
                    target: sink.target.clone(),
                    table: *table,
                    day: *day,
                    etag: String::new(),
                    rows: 0,
                },
                forgotten: true,
            })
            .collect();
        self.append(0, &lines)?;
        self.append(1, &forgotten)?;
        let mut index = self.index.index.lock().expect("ledger lock");
        for l in &forgotten {
            index.apply_file(l);
        }
        Ok(index.invalidate(sink, ranges) + index.invalidate(&Self::legacy(sink), ranges))
    }

    async fn adopt_legacy(&self, _sink: &SinkId) -> Result<u64, LedgerError> {
        // Records without a target already count for this root (see `committed`).
        Ok(0)
    }

    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        self.append(2, std::slice::from_ref(run))?;
        self.index.note_run(run);
        Ok(())
    }

    async fn last_success(
        &self,
        command: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        Ok(self.index.latest_success(command))
    }

    async fn fields_seen(&self) -> Result<crate::record::Drift, LedgerError> {
        self.index.fields_seen().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: i64, end: i64, sink: SinkKind, status: WindowStatus) -> LedgerEntry {
        LedgerEntry {
            key: WindowKey {
                instance_id: "i".into(),
                media_type: MediaType::Audio,
                start_ms: start,
                end_ms: end,
            },
            sink,
            target: String::new(),
            status,
            rows: 3,
            request_id: Some("r".into()),
            attempts: 1,
            error: None,
            run_id: uuid::Uuid::nil(),
            at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn missing_is_what_any_sink_lacks() {
        let l = MemoryLedger::default();
        l.record(&entry(0, 10, SinkKind::Postgres, WindowStatus::Committed))
            .await
            .unwrap();
        l.record(&entry(10, 20, SinkKind::Postgres, WindowStatus::Committed))
            .await
            .unwrap();
        l.record(&entry(0, 10, SinkKind::Parquet, WindowStatus::Committed))
            .await
            .unwrap();
        l.record(&entry(10, 20, SinkKind::Parquet, WindowStatus::Failed))
            .await
            .unwrap();
        let m = missing(
            &l,
            "i",
            MediaType::Audio,
            &[
                SinkId::new(SinkKind::Postgres, ""),
                SinkId::new(SinkKind::Parquet, ""),
            ],
            0,
            30,
        )
        .await
        .unwrap();
        assert_eq!(m, vec![(10, 30)]);
    }

    #[tokio::test]
    async fn the_file_ledger_survives_reopening_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = FileLedger::open(dir.path()).unwrap();
            l.record(&entry(0, 10, SinkKind::Parquet, WindowStatus::Committed))
                .await
                .unwrap();
        }
        let path = dir.path().join(FILE_LEDGER_DIR).join("windows.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"instance_id\":\"i\",\"media_ty").unwrap();
        drop(f);
        let l = FileLedger::open(dir.path()).unwrap();
        assert_eq!(
            l.committed(
                "i",
                MediaType::Audio,
                &SinkId::new(SinkKind::Parquet, "root-1")
            )
            .await
            .unwrap(),
            vec![(0, 10)]
        );
        // A record appended after the torn line is not swallowed by it.
        l.record_many(&[
            entry(10, 20, SinkKind::Parquet, WindowStatus::Committed),
            entry(20, 30, SinkKind::Parquet, WindowStatus::Committed),
        ])
        .await
        .unwrap();
        drop(l);
        let l = FileLedger::open(dir.path()).unwrap();
        let mut got = l
            .committed(
                "i",
                MediaType::Audio,
                &SinkId::new(SinkKind::Parquet, "root-1"),
            )
            .await
            .unwrap();
        got.sort();
        assert_eq!(got, vec![(0, 10), (10, 20), (20, 30)]);
    }
}
