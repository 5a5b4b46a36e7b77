//! Which windows each sink has committed, so a re-run fetches only what is missing.
//!
//! [`Ledger`] is the seam. With PostgreSQL configured the ledger is a table there, written in the
//! same transaction as the rows ([`PgLedger`], whose statements the PostgreSQL sink runs in its own transaction); without it,
//! [`FileLedger`] keeps an
//! append-only JSON-lines file next to the Parquet data. Resume is "plan minus committed": the
//! requested range minus the ranges every configured sink has committed.

mod file;
mod memory;
mod postgres;

pub use file::{FILE_LEDGER_DIR, FileLedger};
pub use memory::MemoryLedger;
pub use postgres::PgLedger;
pub(crate) use postgres::{listed_tables, upsert_files, upsert_windows};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::record::{MediaType, Table, WindowBatch, WindowKey};

/// The kinds of sink: the one name of each, for the ledger's `sink` column, `status` and the
/// metrics. Renaming one would make every commit of that sink look missing, so it exists once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// PostgreSQL tables.
    Postgres,
    /// Hive-partitioned Parquet files.
    Parquet,
    /// Memory (tests).
    Memory,
}

impl SinkKind {
    /// Every kind.
    pub const ALL: [SinkKind; 3] = [SinkKind::Postgres, SinkKind::Parquet, SinkKind::Memory];

    /// The name in the ledger, the summary and the metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            SinkKind::Postgres => "postgres",
            SinkKind::Parquet => "parquet",
            SinkKind::Memory => "memory",
        }
    }
}

impl std::fmt::Display for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A window whose rows are durable in a sink, with what its ledger entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableWindow {
    /// The window (as fetched: a window whose start aged out is shorter than planned).
    pub key: WindowKey,
    /// Rows across the three tables.
    pub rows: u64,
    /// RequestId that delivered them.
    pub request_id: String,
    /// Requests the fetch took.
    pub attempts: u32,
    /// Where its rows are final (see [`WindowBatch::final_end_ms`]): the ledger's coverage ends
    /// here.
    pub final_end_ms: i64,
}

impl DurableWindow {
    /// The entry for a batch.
    pub fn of(batch: &WindowBatch) -> Self {
        Self {
            final_end_ms: batch
                .final_end_ms
                .unwrap_or(batch.key.end_ms)
                .min(batch.key.end_ms),
            key: batch.key.clone(),
            rows: batch.row_count() as u64,
            request_id: batch.request_id.clone(),
            attempts: batch.attempts,
        }
    }
}

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
    pub fn committed(sink: &SinkId, durable: &DurableWindow, run_id: uuid::Uuid) -> Option<Self> {
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

/// What kind of run this is: recorded with it, and the `command` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// `ccc-etl backfill`.
    Backfill,
    /// `ccc-etl nightly`.
    Nightly,
    /// `ccc-etl demo`.
    Demo,
    /// `ccc-etl verify --repair`.
    Repair,
}

impl RunKind {
    /// Every kind.
    pub const ALL: [RunKind; 4] = [
        RunKind::Backfill,
        RunKind::Nightly,
        RunKind::Demo,
        RunKind::Repair,
    ];

    /// The name in the `runs` table and the metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunKind::Backfill => "backfill",
            RunKind::Nightly => "nightly",
            RunKind::Demo => "demo",
            RunKind::Repair => "repair",
        }
    }
}

/// A text read back that names no value of a type (a `runs` row written by hand, or by a newer
/// version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {what}")]
pub struct UnknownName {
    /// What the text should name.
    pub what: &'static str,
    /// The text.
    pub value: String,
}

impl std::str::FromStr for RunKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "kind of run",
                value: s.to_string(),
            })
    }
}

/// How a run ended, as the `runs` table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every planned window committed to every sink.
    Ok,
    /// Some windows failed; the next run retries them.
    Partial,
    /// A run-fatal error stopped the run.
    Failed,
}

impl RunStatus {
    /// The `runs.status` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
        }
    }

    /// The exit code (the one mapping from a run's outcome to a code).
    pub fn exit_code(self) -> u8 {
        match self {
            RunStatus::Ok => crate::error::EXIT_OK,
            RunStatus::Partial => crate::error::EXIT_PARTIAL,
            RunStatus::Failed => crate::error::EXIT_FATAL,
        }
    }
}

/// A recorded run: running, or ended with a status. Stored as its text (`running`, `ok`,
/// `partial`, `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum RunState {
    /// Started, not ended (or ended without a record: killed).
    Running,
    /// Ended.
    Ended(RunStatus),
}

impl RunState {
    /// The `runs.status` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Ended(s) => s.as_str(),
        }
    }
}

impl From<RunState> for &'static str {
    fn from(s: RunState) -> Self {
        s.as_str()
    }
}

impl TryFrom<String> for RunState {
    type Error = UnknownName;
    fn try_from(s: String) -> Result<Self, UnknownName> {
        s.parse()
    }
}

impl std::str::FromStr for RunState {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        [
            RunState::Running,
            RunState::Ended(RunStatus::Ok),
            RunState::Ended(RunStatus::Partial),
            RunState::Ended(RunStatus::Failed),
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| UnknownName {
            what: "state of a run",
            value: s.to_string(),
        })
    }
}

/// A run's bookkeeping record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Id.
    pub run_id: uuid::Uuid,
    /// What kind of run.
    pub command: RunKind,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End, once finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Running, or how it ended.
    pub status: RunState,
    /// The summary, as JSON.
    pub summary: Option<serde_json::Value>,
}

impl RunRecord {
    /// A run that has just started.
    pub fn started(run_id: uuid::Uuid, command: RunKind, started_at: DateTime<Utc>) -> Self {
        Self {
            run_id,
            command,
            started_at,
            finished_at: None,
            status: RunState::Running,
            summary: None,
        }
    }
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
    /// are fetched again by the next run. Returns the windows taken back, as `[start, end)`
    /// spans, each once: what the caller must fetch again to leave no gap.
    async fn invalidate(
        &self,
        sink: &SinkId,
        ranges: &[(i64, i64)],
        files: &[(Table, NaiveDate)],
        reason: &str,
    ) -> Result<Vec<(i64, i64)>, LedgerError>;
    /// Hands the commits recorded by older versions without a destination to `sink` (a root
    /// written before roots had ids). Returns how many.
    async fn adopt_legacy(&self, sink: &SinkId) -> Result<u64, LedgerError>;
    /// Records a run's start or end.
    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError>;
    /// When a run of `command` (any command if `None`) last finished with every window committed.
    async fn last_success(
        &self,
        command: Option<RunKind>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError>;
    /// The schema drift the recorded runs met (since the schema last changed, where the ledger
    /// knows when that was): unknown fields with the rows that carried them, missing fields.
    async fn fields_seen(&self) -> Result<crate::record::Drift, LedgerError>;
    /// The `limit` latest runs, newest first, each as last recorded.
    async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, LedgerError>;
    /// Which ledger this is, as a Parquet root records its owner's: `postgresql:{id}` (an id
    /// made with the schema, kept by a dump and restore), or `file` (the ledger in the root).
    async fn identity(&self) -> Result<String, LedgerError>;
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn entry(start: i64, end: i64, sink: SinkKind, status: WindowStatus) -> LedgerEntry {
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

    #[test]
    fn a_run_record_keeps_the_text_older_records_have_and_refuses_unknown_values() {
        let mut run = RunRecord::started(uuid::Uuid::nil(), RunKind::Repair, Utc::now());
        let text = serde_json::to_string(&run).unwrap();
        assert!(
            text.contains(r#""command":"repair""#) && text.contains(r#""status":"running""#),
            "{text}"
        );
        run.status = RunState::Ended(RunStatus::Partial);
        let back: RunRecord = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(
            (back.command, back.status),
            (RunKind::Repair, RunState::Ended(RunStatus::Partial))
        );
        for kind in RunKind::ALL {
            assert_eq!(kind.as_str().parse::<RunKind>(), Ok(kind));
        }
        assert!("ok".parse::<RunState>().is_ok() && "done".parse::<RunState>().is_err());
        assert!(serde_json::from_str::<RunRecord>(&text.replace("repair", "nope")).is_err());
    }
}
