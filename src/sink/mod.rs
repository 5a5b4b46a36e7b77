//! Where a window's rows go. Each sink commits a whole window or nothing; a window is done when
//! every configured sink has committed it.

pub mod memory;
pub mod parquet;
pub mod pgcopy;
pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;

use crate::ledger::{DurableWindow, Ledger, LedgerEntry, SinkId, SinkKind};
use crate::record::{WindowBatch, WindowKey};

/// What one sink did with one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommitStats {
    /// Rows that were new.
    pub inserted: u64,
    /// Rows that existed with different values and were updated (revisions).
    pub revised: u64,
    /// Rows that existed with the same values and were left alone.
    pub unchanged: u64,
}

impl std::ops::AddAssign for CommitStats {
    fn add_assign(&mut self, o: Self) {
        self.inserted += o.inserted;
        self.revised += o.revised;
        self.unchanged += o.unchanged;
    }
}

/// A sink failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{sink} sink: {message}")]
pub struct SinkError {
    /// Which sink.
    pub sink: SinkKind,
    /// What went wrong.
    pub message: String,
    /// What it means for the window and the run.
    pub kind: Failure,
}

impl SinkError {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == Failure::Transient
    }

    /// Whether no further write can succeed in this run: the run stops.
    pub fn is_fatal(&self) -> bool {
        self.kind == Failure::Refused
    }
}

/// What a sink's (or a store's) failure means for the run, decided from the error's own kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A later attempt may succeed: a lost connection, throttling, a 5xx, a timeout, a full disk
    /// being cleaned.
    Transient,
    /// Retrying in this run does not help: what the store holds, or the configuration, is
    /// wrong, and an operator must look.
    Permanent,
    /// The store refuses this configuration (permissions, credentials, a missing bucket, a
    /// read-only file system): no further write can succeed in this run, which stops.
    Refused,
}

impl Failure {
    /// `Transient` when a later attempt may succeed, else `Permanent`.
    pub fn from_retryable(retryable: bool) -> Self {
        if retryable {
            Failure::Transient
        } else {
            Failure::Permanent
        }
    }
}

/// The run a sink writes for: its id, and the ledger in which each sink records what it made
/// durable (PostgreSQL in the same transaction as the rows, other sinks once their files are
/// written). The sinks are the only writers of commit records.
#[derive(Clone)]
pub struct RunContext {
    /// The run's id.
    pub run_id: uuid::Uuid,
    /// Where commits are recorded.
    pub ledger: Arc<dyn Ledger>,
    /// The worker's leases, when several workers share the job: a commit counts only while the
    /// window's lease is still this worker's.
    pub fence: Option<Arc<dyn crate::coord::Fence>>,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl RunContext {
    /// A run's context without coordination (one worker).
    pub fn new(run_id: uuid::Uuid, ledger: Arc<dyn Ledger>) -> Self {
        Self {
            run_id,
            ledger,
            fence: None,
        }
    }

    /// Windows whose lease was taken over by another worker are not recorded: they move to
    /// `fenced`, and the newer worker's commit stands (their rows were written while the lease
    /// was this worker's: a write after it is `late`, which the sink finds); a lease that cannot
    /// be read moves them to `failed`.
    async fn keep_held(&self, c: &dyn crate::coord::Fence, sink: SinkKind, w: &mut Written) {
        let keys: Vec<WindowKey> = w.durable.iter().map(|d| d.key.clone()).collect();
        let (mine, unchecked) = match c.still_mine(&keys).await {
            Ok(m) => (m, None),
            Err(e) => {
                // Not known to be fenced: the lease could not be read. The rows are on disk; the
                // window is not recorded, so it is fetched again.
                let why = format!(
                    "cannot check the window's lease in PostgreSQL: {}",
                    crate::db::explain(&e)
                );
                tracing::error!(error = %why, "the windows are not recorded");
                (Default::default(), Some(why))
            }
        };
        let (kept, refused): (Vec<_>, Vec<_>) =
            w.durable.drain(..).partition(|d| mine.contains(&d.key));
        w.durable = kept;
        for d in refused {
            match &unchecked {
                Some(why) => w.failed.push((
                    d.key,
                    SinkError {
                        sink,
                        message: why.clone(),
                        kind: Failure::Transient,
                    },
                )),
                None => w.fenced.push(d.key),
            }
        }
    }

    /// Records what a sink made durable during one call: takes back the commits of damaged
    /// days, then records the day files and the durable windows in one step. Windows whose
    /// record fails are moved to `failed` (their rows are on disk, but a window counts only once
    /// recorded, so it is fetched again).
    pub async fn record(&self, sink: &SinkId, mut w: Written) -> Written {
        if !w.damaged.is_empty() {
            let ranges: Vec<(i64, i64)> =
                w.damaged.iter().map(|d| (d.start_ms, d.end_ms)).collect();
            let files: Vec<_> = w.damaged.iter().map(|d| (d.table, d.day)).collect();
            if let Err(e) = self
                .ledger
                .invalidate(sink, &ranges, &files, &w.damaged[0].detail)
                .await
            {
                tracing::error!(error = %e, "could not take back the commits of a damaged day");
            }
        }
        if w.durable.is_empty() && w.files.is_empty() {
            self.record_failed(sink, &w.failed).await;
            return w;
        }
        if let Some(c) = &self.fence {
            self.keep_held(c.as_ref(), sink.kind, &mut w).await;
        }
        let entries: Vec<LedgerEntry> = w
            .durable
            .iter()
            .filter_map(|d| LedgerEntry::committed(sink, d, self.run_id))
            .collect();
        if let Err(e) = self.ledger.record_durable(&w.files, &entries).await {
            let error = SinkError {
                sink: sink.kind,
                message: e.to_string(),
                kind: Failure::from_retryable(e.retryable),
            };
            let lost = std::mem::take(&mut w.durable);
            w.failed
                .extend(lost.into_iter().map(|d| (d.key, error.clone())));
        }
        self.record_failed(sink, &w.failed).await;
        w
    }

    /// Records windows a sink could not make durable, with why (best effort: the ledger may be
    /// what failed).
    pub async fn record_failed(&self, sink: &SinkId, failed: &[(WindowKey, SinkError)]) {
        if failed.is_empty() {
            return;
        }
        let entries: Vec<LedgerEntry> = failed
            .iter()
            .map(|(k, e)| LedgerEntry::failed(sink, k, &e.to_string(), 0, self.run_id))
            .collect();
        if let Err(e) = self.ledger.record_many(&entries).await {
            tracing::warn!(error = %e, "could not record failed windows in the ledger");
        }
    }
}

/// What a call into a sink made durable, and what it could not.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Windows whose rows became durable during the call (the one handed over, earlier ones
    /// a buffering sink held, or none yet).
    pub durable: Vec<DurableWindow>,
    /// Inserted, revised and unchanged rows of those writes.
    pub stats: CommitStats,
    /// Windows whose rows could not be made durable; they are not committed in this sink.
    pub failed: Vec<(WindowKey, SinkError)>,
    /// Day files written during the call, for the ledger's manifest (Parquet).
    pub files: Vec<crate::ledger::DayFile>,
    /// Day files found damaged and moved aside: every commit touching their days is gone.
    pub damaged: Vec<DamagedDay>,
    /// Rows dropped from day files they did not belong in (another day's, a repeated key).
    pub foreign_rows: u64,
    /// Windows whose write was refused because this worker no longer holds their lease: not
    /// failed here, but another worker's (or this one's again, once it claims them back).
    pub fenced: Vec<WindowKey>,
    /// Windows whose rows landed after this worker had lost the day's lock (it was stopped, or
    /// cut off from PostgreSQL, while writing): not recorded. Where the store could not refuse
    /// the write, a file may now hold rows older than another worker's; the next run's check of
    /// the root finds such a file and fetches its day again.
    pub late: Vec<WindowKey>,
}

/// A day whose file was found damaged (unreadable, another schema) and set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedDay {
    /// The table.
    pub table: crate::record::Table,
    /// The local day.
    pub day: chrono::NaiveDate,
    /// The day's start, epoch ms.
    pub start_ms: i64,
    /// The day's end, epoch ms.
    pub end_ms: i64,
    /// What was wrong, and where the file went.
    pub detail: String,
}

impl Written {
    /// One window made durable at once.
    pub fn durable(batch: &WindowBatch, stats: CommitStats) -> Self {
        Self {
            durable: vec![DurableWindow::of(batch)],
            stats,
            ..Self::default()
        }
    }

    /// One window that failed.
    pub fn failed(key: &WindowKey, error: SinkError) -> Self {
        Self {
            failed: vec![(key.clone(), error)],
            ..Self::default()
        }
    }
}

/// A destination for window batches.
///
/// A sink either makes each window durable before `write` returns (PostgreSQL: rows and ledger
/// row in one transaction) or holds windows until the partitions they touch are complete and
/// reports them durable from a later call (Parquet: one file per table and day, written once).
/// Either way a window counts as committed only once reported in [`Written::durable`], and each
/// sink records its commits in the run's ledger itself ([`RunContext::record`], or its own
/// transaction); a crash before that loses nothing, because an uncommitted window is fetched
/// again.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Which kind of sink this is.
    fn kind(&self) -> SinkKind;

    /// The sink and the destination it writes to, as the ledger records its commits.
    fn id(&self) -> SinkId {
        SinkId::new(self.kind(), "")
    }

    /// Announces every window the run is about to write, before the first `write`; a buffering
    /// sink uses it to know when a partition has received all its rows.
    fn expect(&self, _windows: &[WindowKey]) {}

    /// Hands over the rows of `planned` (`batch.key` may be shorter, if its start aged out).
    /// Re-writing a window leaves one row per key (newer fetch wins).
    async fn write(
        &self,
        planned: &WindowKey,
        batch: Arc<WindowBatch>,
        run: &RunContext,
    ) -> Written;

    /// An expected window will not be written (its fetch failed or it aged out).
    async fn skip(&self, _planned: &WindowKey, _run: &RunContext) -> Written {
        Written::default()
    }

    /// The run has no window in flight and waits (for windows other workers hold): a sink that
    /// holds windows only to write them together writes them now, so that nobody waits for
    /// them. A sink holding rows for partitions still incomplete keeps them.
    async fn idle(&self, _run: &RunContext) -> Written {
        Written::default()
    }

    /// Makes everything still held durable; called at the end of a run, also after a fatal
    /// error, so every row fetched is kept.
    async fn flush(&self, _run: &RunContext) -> Written {
        Written::default()
    }
}
