//! The ledger in PostgreSQL (the `windows`, `parquet_files` and `runs` tables), over the
//! connections of [`crate::db`]. The PostgreSQL sink records its windows with
//! [`upsert_windows`] in the transaction that writes their rows.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Postgres, Row};

use super::{
    DayFile, Ledger, LedgerEntry, LedgerError, RunKind, RunRecord, RunStatus, SinkId, WindowStatus,
};
use crate::db::{PgStore, explain, is_retryable};
use crate::record::{MediaType, Table, WindowKey};

/// Records ledger entries, one RequestId each; a failed refetch does not undo an earlier commit.
const UPSERT_WINDOWS: &str = r#"
INSERT INTO windows AS w (instance_id, media_type, start_ms, end_ms, sink, target, status, attempts, last_error, rows, request_ids, run_id)
SELECT instance_id, media_type, start_ms, end_ms, sink, target, status, attempts, last_error, rows,
       CASE WHEN request_id IS NULL THEN ARRAY[]::text[] ELSE ARRAY[request_id] END, run_id
FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::int[],
            $8::text[], $9::bigint[], $10::text[], $11::uuid[], $12::text[])
    AS r(instance_id, media_type, start_ms, end_ms, sink, status, attempts, last_error, rows, request_id, run_id, target)
ON CONFLICT (instance_id, media_type, start_ms, end_ms, sink, target) DO UPDATE SET
    status = CASE WHEN w.status = 'committed' AND EXCLUDED.status = 'failed' THEN w.status ELSE EXCLUDED.status END,
    rows = CASE WHEN EXCLUDED.status = 'committed' THEN EXCLUDED.rows ELSE w.rows END,
    request_ids = CASE WHEN EXCLUDED.status = 'committed' THEN EXCLUDED.request_ids ELSE w.request_ids END,
    attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, run_id = EXCLUDED.run_id, updated_at = now()
"#;

/// Records day files; the latest write of a file wins.
const UPSERT_FILES: &str = r#"
INSERT INTO parquet_files AS f (target, table_name, day, etag, rows)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::text[], $5::bigint[])
ON CONFLICT (target, table_name, day) DO UPDATE SET etag = EXCLUDED.etag, rows = EXCLUDED.rows, written_at = now()
"#;

/// Takes back the commits of a sink overlapping any range; they stay as failed rows, with why.
const INVALIDATE_WINDOWS: &str = r#"
UPDATE windows AS w SET status = 'failed', last_error = $5, updated_at = now()
FROM UNNEST($3::bigint[], $4::bigint[]) AS r(start_ms, end_ms)
WHERE w.sink = $1 AND w.target = $2 AND w.status = 'committed'
  AND w.start_ms < r.end_ms AND r.start_ms < w.end_ms
RETURNING w.start_ms, w.end_ms
"#;

/// Records day files in the manifest (`parquet_files`).
pub(crate) async fn upsert_files<'e, E: sqlx::Executor<'e, Database = Postgres>>(
    exec: E,
    files: &[DayFile],
) -> Result<(), sqlx::Error> {
    if files.is_empty() {
        return Ok(());
    }
    sqlx::query(UPSERT_FILES)
        .bind(files.iter().map(|f| f.target.as_str()).collect::<Vec<_>>())
        .bind(files.iter().map(|f| f.table.name()).collect::<Vec<_>>())
        .bind(files.iter().map(|f| f.day).collect::<Vec<NaiveDate>>())
        .bind(files.iter().map(|f| f.etag.as_str()).collect::<Vec<_>>())
        .bind(files.iter().map(|f| f.rows as i64).collect::<Vec<i64>>())
        .execute(exec)
        .await
        .map(|_| ())
}

/// The tables whose file of `day` the manifest (`parquet_files`) lists for the root `target`.
pub(crate) async fn listed_tables<'e, E: sqlx::Executor<'e, Database = Postgres>>(
    exec: E,
    target: &str,
    day: NaiveDate,
) -> Result<Vec<Table>, sqlx::Error> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT table_name FROM parquet_files WHERE target = $1 AND day = $2")
            .bind(target)
            .bind(day)
            .fetch_all(exec)
            .await?;
    Ok(names.iter().filter_map(|n| Table::from_name(n)).collect())
}

fn status_str(s: WindowStatus) -> &'static str {
    match s {
        WindowStatus::Committed => "committed",
        WindowStatus::Failed => "failed",
    }
}

/// Records ledger entries (the latest of each window, sink and target).
pub(crate) async fn upsert_windows<'e, E: sqlx::Executor<'e, Database = Postgres>>(
    exec: E,
    entries: &[LedgerEntry],
) -> Result<(), sqlx::Error> {
    // Several entries of one window and sink would make ON CONFLICT touch a row twice.
    let mut latest: std::collections::BTreeMap<(&WindowKey, &str, &str), &LedgerEntry> =
        std::collections::BTreeMap::new();
    for e in entries {
        latest.insert((&e.key, e.sink.as_str(), e.target.as_str()), e);
    }
    let es: Vec<&LedgerEntry> = latest.into_values().collect();
    if es.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&LedgerEntry) -> String| es.iter().map(|e| f(e)).collect::<Vec<_>>();
    sqlx::query(UPSERT_WINDOWS)
        .bind(col(&|e| e.key.instance_id.clone()))
        .bind(col(&|e| e.key.media_type.to_string()))
        .bind(es.iter().map(|e| e.key.start_ms).collect::<Vec<i64>>())
        .bind(es.iter().map(|e| e.key.end_ms).collect::<Vec<i64>>())
        .bind(col(&|e| e.sink.as_str().to_string()))
        .bind(col(&|e| status_str(e.status).to_string()))
        .bind(es.iter().map(|e| e.attempts as i32).collect::<Vec<i32>>())
        .bind(
            es.iter()
                .map(|e| e.error.clone())
                .collect::<Vec<Option<String>>>(),
        )
        .bind(es.iter().map(|e| e.rows as i64).collect::<Vec<i64>>())
        .bind(
            es.iter()
                .map(|e| e.request_id.clone())
                .collect::<Vec<Option<String>>>(),
        )
        .bind(es.iter().map(|e| e.run_id).collect::<Vec<uuid::Uuid>>())
        .bind(col(&|e| e.target.clone()))
        .execute(exec)
        .await
        .map(|_| ())
}

/// The ledger in PostgreSQL: tracks every sink's commits, Parquet's included.
#[derive(Debug, Clone)]
pub struct PgLedger {
    store: PgStore,
}

impl PgLedger {
    /// A ledger over a connected store.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

fn ledger_err(e: sqlx::Error) -> LedgerError {
    LedgerError {
        retryable: is_retryable(&e),
        message: format!("PostgreSQL: {}", explain(&e)),
    }
}

#[async_trait]
impl Ledger for PgLedger {
    async fn committed(
        &self,
        instance: &str,
        media: MediaType,
        sink: &SinkId,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT start_ms, end_ms FROM windows WHERE instance_id = $1 AND media_type = $2 AND sink = $3 AND target = $4 AND status = 'committed'",
        )
        .bind(instance)
        .bind(media.as_str())
        .bind(sink.kind.as_str())
        .bind(&sink.target)
        .fetch_all(self.store.pool())
        .await
        .map_err(ledger_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<i64, _>("start_ms"), r.get::<i64, _>("end_ms")))
            .collect())
    }

    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.record_many(std::slice::from_ref(entry)).await
    }

    async fn record_many(&self, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        upsert_windows(self.store.pool(), entries)
            .await
            .map_err(ledger_err)
    }

    async fn record_durable(
        &self,
        files: &[DayFile],
        entries: &[LedgerEntry],
    ) -> Result<(), LedgerError> {
        let mut tx = self.store.pool().begin().await.map_err(ledger_err)?;
        upsert_files(&mut *tx, files).await.map_err(ledger_err)?;
        upsert_windows(&mut *tx, entries)
            .await
            .map_err(ledger_err)?;
        tx.commit().await.map_err(ledger_err)
    }

    async fn record_files(&self, files: &[DayFile]) -> Result<(), LedgerError> {
        upsert_files(self.store.pool(), files)
            .await
            .map_err(ledger_err)
    }

    async fn day_files(&self, target: &str) -> Result<Vec<DayFile>, LedgerError> {
        let rows = sqlx::query(
            "SELECT table_name, day, etag, rows FROM parquet_files WHERE target = $1 ORDER BY table_name, day",
        )
        .bind(target)
        .fetch_all(self.store.pool())
        .await
        .map_err(ledger_err)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(DayFile {
                    target: target.to_string(),
                    table: Table::from_name(r.get::<&str, _>("table_name"))?,
                    day: r.get("day"),
                    etag: r.get("etag"),
                    rows: r.get::<i64, _>("rows") as u64,
                })
            })
            .collect())
    }

    async fn invalidate(
        &self,
        sink: &SinkId,
        ranges: &[(i64, i64)],
        files: &[(Table, NaiveDate)],
        reason: &str,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        let mut tx = self.store.pool().begin().await.map_err(ledger_err)?;
        let mut taken: Vec<(i64, i64)> = sqlx::query_as(INVALIDATE_WINDOWS)
            .bind(sink.kind.as_str())
            .bind(&sink.target)
            .bind(ranges.iter().map(|r| r.0).collect::<Vec<i64>>())
            .bind(ranges.iter().map(|r| r.1).collect::<Vec<i64>>())
            .bind(reason)
            .fetch_all(&mut *tx)
            .await
            .map_err(ledger_err)?;
        taken.sort_unstable();
        taken.dedup();
        sqlx::query(
            "DELETE FROM parquet_files f USING UNNEST($2::text[], $3::date[]) AS d(table_name, day)
             WHERE f.target = $1 AND f.table_name = d.table_name AND f.day = d.day",
        )
        .bind(&sink.target)
        .bind(files.iter().map(|f| f.0.name()).collect::<Vec<&str>>())
        .bind(files.iter().map(|f| f.1).collect::<Vec<NaiveDate>>())
        .execute(&mut *tx)
        .await
        .map_err(ledger_err)?;
        tx.commit().await.map_err(ledger_err)?;
        Ok(taken)
    }

    async fn adopt_legacy(&self, sink: &SinkId) -> Result<u64, LedgerError> {
        // Rows another root already holds would collide: those stay with it.
        sqlx::query(
            "UPDATE windows w SET target = $2 WHERE w.sink = $1 AND w.target = ''
               AND NOT EXISTS (SELECT 1 FROM windows o WHERE o.instance_id = w.instance_id
                   AND o.media_type = w.media_type AND o.start_ms = w.start_ms
                   AND o.end_ms = w.end_ms AND o.sink = w.sink AND o.target = $2)",
        )
        .bind(sink.kind.as_str())
        .bind(&sink.target)
        .execute(self.store.pool())
        .await
        .map(|r| r.rows_affected())
        .map_err(ledger_err)
    }

    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO runs (run_id, command, started_at, finished_at, status, summary) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (run_id) DO UPDATE SET finished_at = EXCLUDED.finished_at, status = EXCLUDED.status, summary = EXCLUDED.summary",
        )
        .bind(run.run_id)
        .bind(run.command.as_str())
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(run.status.as_str())
        .bind(&run.summary)
        .execute(self.store.pool())
        .await
        .map(|_| ())
        .map_err(ledger_err)
    }

    async fn last_success(
        &self,
        command: Option<RunKind>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        sqlx::query_scalar(
            "SELECT max(finished_at) FROM runs WHERE status = $2 AND ($1::text IS NULL OR command = $1)",
        )
        .bind(command.map(RunKind::as_str))
        .bind(RunStatus::Ok.as_str())
        .fetch_one(self.store.pool())
        .await
        .map_err(ledger_err)
    }

    async fn identity(&self) -> Result<String, LedgerError> {
        let id: String = sqlx::query_scalar("SELECT id::text FROM ledger_identity")
            .fetch_one(self.store.pool())
            .await
            .map_err(ledger_err)?;
        Ok(format!("postgresql:{id}"))
    }

    async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT run_id, command, started_at, finished_at, status, summary FROM runs \
             ORDER BY started_at DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.store.pool())
        .await
        .map_err(ledger_err)?;
        rows.into_iter().map(RunRow::record).collect()
    }

    /// The drift of the runs since the last migration was applied (the schema last changed).
    async fn fields_seen(&self) -> Result<crate::record::Drift, LedgerError> {
        let summaries: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT summary FROM runs WHERE summary ? 'drift' AND started_at >= \
             (SELECT coalesce(max(installed_on), '-infinity') FROM _sqlx_migrations)",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(ledger_err)?;
        let mut drift = crate::record::Drift::default();
        for s in &summaries {
            if let Some(d) = crate::ledger::drift_of(Some(s)) {
                drift.merge(&d);
            }
        }
        Ok(drift)
    }
}

/// A row of `runs`, read by column name.
#[derive(sqlx::FromRow)]
struct RunRow {
    run_id: uuid::Uuid,
    command: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    status: String,
    summary: Option<serde_json::Value>,
}

impl RunRow {
    /// The record, or an error naming a value this version does not know.
    fn record(self) -> Result<RunRecord, LedgerError> {
        let bad = |message: crate::ledger::UnknownName| LedgerError {
            message: format!("runs row {}: {message}", self.run_id),
            retryable: false,
        };
        Ok(RunRecord {
            run_id: self.run_id,
            command: self.command.parse().map_err(bad)?,
            started_at: self.started_at,
            finished_at: self.finished_at,
            status: self.status.parse().map_err(bad)?,
            summary: self.summary,
        })
    }
}
