//! Where a window's rows go. Each sink commits a whole window or nothing; a window is done when
//! every configured sink has committed it.

pub mod memory;
pub mod parquet;
pub mod postgres;

use async_trait::async_trait;

use crate::record::WindowBatch;

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
#[derive(Debug, thiserror::Error)]
#[error("{sink} sink: {message}")]
pub struct SinkError {
    /// Which sink.
    pub sink: &'static str,
    /// What went wrong.
    pub message: String,
    /// Whether a later attempt may succeed (a lost connection, a full disk being cleaned).
    pub retryable: bool,
}

/// Context of the run committing a window, for the ledger entry.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The run's id.
    pub run_id: uuid::Uuid,
}

/// A destination for window batches.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Short name, also the ledger's sink column: `postgres`, `parquet`, `memory`.
    fn name(&self) -> &'static str;

    /// Commits all rows of one window, idempotently: re-committing the same window leaves one
    /// row per key. Returns only once the rows are durable.
    async fn commit(&self, batch: &WindowBatch, run: &RunContext)
    -> Result<CommitStats, SinkError>;

    /// Whether `commit` records the window in the ledger itself, in the same transaction as the
    /// rows. Sinks that cannot (files) return false and the pipeline records them after commit.
    fn records_own_commit(&self) -> bool {
        false
    }
}
