//! The PostgreSQL sink, over the connections of [`crate::db`]; its commits record their windows
//! through [`crate::ledger::PgLedger`]'s statements, in the same transaction.
//!
//! Every table lives in the configured schema (the connections' `search_path`), so all SQL
//! below is text fixed at compile time (or built once from the compile-time column lists) with
//! bound values.
//!
//! Writing: fetched windows wait in a small group (up to 32 windows or 16,384 rows, or 0.5 s),
//! and a group commits in one transaction with the ledger rows of its windows: the series locks,
//! one check of which windows' ranges already hold rows, one binary `COPY` per table for those
//! that do not (the common case of a backfill: no conflict check, rows inserted in batches), an
//! `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO UPDATE` per table for those that do
//! (changed rows are updated and counted as revisions, unchanged rows are not rewritten), and
//! one statement for the ledger rows. A crash before the commit loses no committed window: the
//! group's windows are fetched again.
//!
//! Concurrency: a transaction-scoped advisory lock per (instance, media type) series, taken in
//! the order of the lock keys, serializes commits of the same series across runs and workers, so
//! a range found empty stays empty until the commit and revision counts stay exact. A writer
//! outside ccc-etl that inserts meanwhile makes the `COPY` fail on the primary key; the group is
//! then written again the careful way. Several workers can share this ledger.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row};

use super::pgcopy::BinaryCopy;
use super::{CommitStats, RunContext, Sink, SinkError, Written};
use crate::db::{ACQUIRE_TIMEOUT, PgStore, explain, is_retryable};
use crate::ledger::{DurableWindow, SinkKind, upsert_windows};
use crate::ledger::{LedgerEntry, SinkId};
use crate::record::{MediaType, Table, WindowBatch, WindowKey};

fn ts(ms: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(|| {
        sqlx::Error::Encode(format!("{ms} ms is outside the range of a timestamp").into())
    })
}

/// The two ways a window's rows of one table are written, built once from the compile-time
/// column lists (no runtime input ever reaches the SQL text). Parameters: `$1` instance, `$2`
/// media type, `$3` bucket starts, then one array per count column, then fetched_at and
/// request_id.
struct TableSql {
    /// Insert or update: one row per key; rows whose counts changed are updated (revisions),
    /// unchanged rows are not rewritten. Returns the inserted and revised counts.
    upsert: String,
    /// Binary `COPY` of whole rows, for ranges of a series that hold no row yet (checked under
    /// the series lock): no conflict check, and the server inserts rows in batches.
    copy: String,
}

impl TableSql {
    fn new(table: Table) -> Self {
        let name = table.name();
        let counts = table.count_columns();
        let n = counts.len();
        let cols = counts.join(", ");
        let arrays: Vec<String> = (0..n).map(|i| format!("${}::bigint[]", i + 4)).collect();
        let (fetched, request, extra) = (n + 4, n + 5, n + 6);
        let select = format!(
            "SELECT $1, $2, stats_time, {cols}, ${fetched}, ${request}, extra::jsonb \
             FROM UNNEST($3::timestamptz[], {}, ${extra}::text[]) AS r(stats_time, {cols}, extra)",
            arrays.join(", ")
        );
        let target = format!(
            "{name} AS t (instance_id, media_type, stats_time, {cols}, fetched_at, request_id, extra)"
        );
        let set: Vec<String> = counts
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        // A change of the unknown fields is a revision too.
        let old: Vec<String> = counts
            .iter()
            .map(|c| format!("t.{c}"))
            .chain(["t.extra".to_string()])
            .collect();
        let new: Vec<String> = counts
            .iter()
            .map(|c| format!("EXCLUDED.{c}"))
            .chain(["EXCLUDED.extra".to_string()])
            .collect();
        Self {
            upsert: format!(
                "WITH written AS (INSERT INTO {target} {select} \
                 ON CONFLICT (instance_id, media_type, stats_time) DO UPDATE SET {}, \
                 fetched_at = EXCLUDED.fetched_at, request_id = EXCLUDED.request_id, \
                 extra = EXCLUDED.extra \
                 WHERE ({}) IS DISTINCT FROM ({}) RETURNING (xmax = 0) AS inserted) \
                 SELECT count(*) FILTER (WHERE inserted) AS inserted, \
                 count(*) FILTER (WHERE NOT inserted) AS revised FROM written",
                set.join(", "),
                old.join(", "),
                new.join(", ")
            ),
            copy: format!(
                "COPY {name} (instance_id, media_type, stats_time, {cols}, fetched_at, request_id, \
                 extra) FROM STDIN (FORMAT binary)"
            ),
        }
    }
}

static TABLE_SQL: std::sync::LazyLock<[TableSql; 3]> =
    std::sync::LazyLock::new(|| Table::ALL.map(TableSql::new));

/// Of a group's windows (`unnest` of instance, media type, start, end), the ordinals of those
/// whose series holds a row in the window's range in any table.
const STORED_RANGES: &str = r#"
SELECT w.n FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
    WITH ORDINALITY AS w(i, m, s, e, n)
WHERE EXISTS (SELECT 1 FROM inbound_trend t WHERE t.instance_id = w.i AND t.media_type = w.m AND t.stats_time >= w.s AND t.stats_time < w.e)
   OR EXISTS (SELECT 1 FROM outbound_trend t WHERE t.instance_id = w.i AND t.media_type = w.m AND t.stats_time >= w.s AND t.stats_time < w.e)
   OR EXISTS (SELECT 1 FROM overall_trend t WHERE t.instance_id = w.i AND t.media_type = w.m AND t.stats_time >= w.s AND t.stats_time < w.e)
"#;

/// The PostgreSQL sink. Fetched windows wait in a small group (see [`GROUP_WINDOWS`]) and are
/// written together: one transaction, one `COPY` per table for the ranges that hold no row yet,
/// one statement for their ledger rows. A window counts as committed once its group commits; a
/// crash before that loses nothing committed, because its window is fetched again.
#[derive(Debug, Clone)]
pub struct PostgresSink {
    store: PgStore,
    pending: Arc<std::sync::Mutex<Pending>>,
    /// Groups being written at once, at most [`GROUP_WRITERS`]: a writer that fills a group
    /// while they are busy waits, so that fetched rows do not pile up in memory.
    writers: Arc<tokio::sync::Semaphore>,
    /// Windows per group in this run (see [`PostgresSink::expect`]).
    group_windows: Arc<std::sync::atomic::AtomicUsize>,
    /// When a group last waited out [`ACQUIRE_TIMEOUT`] for a connection: for as long again,
    /// groups fail at once instead of each waiting as long (a run whose database is gone ends
    /// in seconds, not in a timeout per group).
    unreachable_since: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Windows per group, at most.
pub const GROUP_WINDOWS: usize = 32;
/// Windows per group with few series: at most the run's series over [`GROUP_WRITERS`], so that
/// the groups written at once (windows arrive oldest first across series) hold different
/// series, whose locks they would otherwise wait for.
fn group_windows(series: usize) -> usize {
    (series / GROUP_WRITERS).clamp(1, GROUP_WINDOWS)
}
/// Rows per group, at most (a 7-day hourly window has 3 x 168).
const GROUP_ROWS: usize = 16_384;
/// How long the first window of a group waits for others before the next window commits them.
const GROUP_WAIT: Duration = Duration::from_millis(500);
/// Groups written at once: a server on two cores is kept busy by two.
const GROUP_WRITERS: usize = 2;

/// Windows handed over and not yet written.
#[derive(Debug, Default)]
struct Pending {
    batches: Vec<Arc<WindowBatch>>,
    rows: usize,
    since: Option<std::time::Instant>,
}

impl Pending {
    /// Adds a window; the group to write now, when it is full or its first window has waited
    /// long enough.
    fn push(&mut self, b: Arc<WindowBatch>, windows: usize) -> Option<Vec<Arc<WindowBatch>>> {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        self.rows += b.row_count();
        self.batches.push(b);
        (self.batches.len() >= windows || self.rows >= GROUP_ROWS || since.elapsed() >= GROUP_WAIT)
            .then(|| self.take())
    }

    fn take(&mut self) -> Vec<Arc<WindowBatch>> {
        self.rows = 0;
        self.since = None;
        std::mem::take(&mut self.batches)
    }
}

impl PostgresSink {
    /// A sink over a connected store.
    pub fn new(store: PgStore) -> Self {
        Self {
            store,
            pending: Default::default(),
            writers: Arc::new(tokio::sync::Semaphore::new(GROUP_WRITERS)),
            group_windows: Arc::new(GROUP_WINDOWS.into()),
            unreachable_since: Default::default(),
        }
    }

    /// Commits one window's rows and its ledger row in one transaction, now.
    pub async fn commit(
        &self,
        b: &WindowBatch,
        run: &RunContext,
    ) -> Result<CommitStats, SinkError> {
        let mut w = self.commit_all(&[Arc::new(b.clone())], run).await;
        if !w.fenced.is_empty() {
            return Err(SinkError {
                sink: SinkKind::Postgres,
                message: "fenced: this worker no longer holds the window's lease".into(),
                kind: crate::sink::Failure::Permanent,
            });
        }
        match w.failed.pop() {
            Some((_, e)) => Err(e),
            None => Ok(w.stats),
        }
    }

    /// Commits a group of windows. One window whose rows the database refuses (a data error)
    /// fails alone: the group is then written window by window. A server that is down or a lost
    /// connection fails the whole group at once.
    async fn commit_all(&self, group: &[Arc<WindowBatch>], run: &RunContext) -> Written {
        let since = *self.unreachable_since.lock().expect("unreachable lock");
        let result = match since {
            Some(t) if t.elapsed() < ACQUIRE_TIMEOUT => Err(sqlx::Error::PoolTimedOut),
            _ => {
                let result = self.commit_group(group, run).await;
                *self.unreachable_since.lock().expect("unreachable lock") = match &result {
                    Err(sqlx::Error::PoolTimedOut) => Some(std::time::Instant::now()),
                    _ => None,
                };
                result
            }
        };
        match result {
            Ok(w) => w,
            Err(e) if group.len() > 1 && !is_retryable(&e) => {
                let mut all = Written::default();
                for b in group {
                    let one = match self.commit_group(std::slice::from_ref(b), run).await {
                        Ok(w) => w,
                        Err(e) => Written::failed(&b.key, sink_err(e)),
                    };
                    all.durable.extend(one.durable);
                    all.failed.extend(one.failed);
                    all.fenced.extend(one.fenced);
                    all.stats += one.stats;
                }
                all
            }
            Err(e) => {
                let error = sink_err(e);
                Written {
                    failed: group
                        .iter()
                        .map(|b| (b.key.clone(), error.clone()))
                        .collect(),
                    ..Written::default()
                }
            }
        }
    }

    async fn commit_group(
        &self,
        group: &[Arc<WindowBatch>],
        run: &RunContext,
    ) -> Result<Written, sqlx::Error> {
        match self.commit_once(group, run, true).await {
            // Rows appeared that the check did not see (a writer outside ccc-etl, which does
            // not take the series lock): write the group again the careful way.
            Err(e) if is_unique_violation(&e) => self.commit_once(group, run, false).await,
            other => other,
        }
    }

    /// One transaction: the series locks (and, with several workers, the leases), the ranges
    /// that hold no row yet by binary `COPY`, the others by upsert, and the ledger rows.
    async fn commit_once(
        &self,
        group: &[Arc<WindowBatch>],
        run: &RunContext,
        fast_path: bool,
    ) -> Result<Written, sqlx::Error> {
        let mut tx = self.store.pool().begin().await?;
        lock_series(&mut tx, group).await?;
        let mut written = Written::default();
        let kept = fence(&mut tx, group, run, &mut written).await?;
        if kept.is_empty() {
            return Ok(written);
        }
        // Under the series locks no other ccc-etl run writes these series: a range empty in
        // every table takes a plain COPY, exact and without conflict checks.
        let stored = if fast_path {
            stored_ranges(&mut tx, &kept).await?
        } else {
            vec![true; kept.len()]
        };
        let (fresh, known): (Vec<_>, Vec<_>) =
            kept.iter().zip(&stored).partition(|(_, stored)| !**stored);
        let fresh: Vec<&WindowBatch> = fresh.into_iter().map(|(b, _)| b.as_ref()).collect();
        for (table, sql) in Table::ALL.iter().zip(TABLE_SQL.iter()) {
            written.stats.inserted += copy_rows(&mut tx, *table, &sql.copy, &fresh).await?;
            for (b, _) in &known {
                written.stats += upsert_rows(&mut tx, b, *table, &sql.upsert).await?;
            }
        }
        let entries: Vec<LedgerEntry> = kept
            .iter()
            .filter_map(|b| {
                LedgerEntry::committed(
                    &SinkId::new(SinkKind::Postgres, ""),
                    &DurableWindow::of(b),
                    run.run_id,
                )
            })
            .collect();
        upsert_windows(&mut *tx, &entries).await?;
        tx.commit().await?;
        written
            .durable
            .extend(kept.iter().map(|b| DurableWindow::of(b)));
        Ok(written)
    }
}

/// The windows of `group` this worker may still commit, their lease rows locked until the
/// transaction ends (every window without several workers); the refused ones go to
/// `written.fenced`.
async fn fence<'a>(
    tx: &mut sqlx::PgConnection,
    group: &'a [Arc<WindowBatch>],
    run: &RunContext,
    written: &mut Written,
) -> Result<Vec<&'a Arc<WindowBatch>>, sqlx::Error> {
    let Some(c) = &run.fence else {
        return Ok(group.iter().collect());
    };
    let keys: Vec<&WindowKey> = group.iter().map(|b| &b.key).collect();
    let held = c.holds_for_commit(tx, &keys).await?;
    let (kept, refused): (Vec<_>, Vec<_>) = group.iter().enumerate().partition(|(i, _)| held[*i]);
    for (_, b) in refused {
        c.refused(&b.key, SinkKind::Postgres);
        written.fenced.push(b.key.clone());
    }
    Ok(kept.into_iter().map(|(_, b)| b).collect())
}

/// Takes the series locks of a group, in the order of their lock keys: two groups sharing
/// series wait for each other, never in a circle.
async fn lock_series(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    group: &[Arc<WindowBatch>],
) -> Result<(), sqlx::Error> {
    let series: Vec<String> = group
        .iter()
        .map(|b| format!("ccc-etl:{}:{}", b.key.instance_id, b.key.media_type))
        .collect();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(s, 0) AS k \
         FROM unnest($1::text[]) AS s ORDER BY 1) AS l",
    )
    .bind(series)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// For each window of a group, whether its series already holds a row in its range in any
/// table.
async fn stored_ranges(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    group: &[&Arc<WindowBatch>],
) -> Result<Vec<bool>, sqlx::Error> {
    let (ids, media, _, _) = crate::coord::columns(group.iter().map(|b| &b.key));
    let rows: Vec<i64> = sqlx::query_scalar(STORED_RANGES)
        .bind(ids)
        .bind(media)
        .bind(
            group
                .iter()
                .map(|b| ts(b.key.start_ms))
                .collect::<Result<Vec<_>, _>>()?,
        )
        .bind(
            group
                .iter()
                .map(|b| ts(b.key.end_ms))
                .collect::<Result<Vec<_>, _>>()?,
        )
        .fetch_all(&mut **tx)
        .await?;
    Ok(crate::coord::flags_at(group.len(), &rows))
}

/// Writes the rows of `table` of windows whose ranges hold no row yet, with one binary COPY
/// sent in chunks of [`COPY_CHUNK`] bytes (memory stays flat however large the group); the rows
/// written.
async fn copy_rows(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    table: Table,
    statement: &str,
    fresh: &[&WindowBatch],
) -> Result<u64, sqlx::Error> {
    if fresh.iter().all(|b| b.rows_in(table) == 0) {
        return Ok(0);
    }
    let n_counts = table.count_columns().len();
    let mut copy = tx.copy_in_raw(statement).await?;
    let mut out = BinaryCopy::new(n_counts + 6);
    for b in fresh {
        let fetched = b.fetched_at.timestamp_micros();
        for (t, counts) in b.rows_between(table, i64::MIN, i64::MAX) {
            out.row();
            out.text(&b.key.instance_id);
            out.text(b.key.media_type.as_str());
            out.timestamptz_ms(t);
            for c in &counts[..n_counts] {
                out.int8(*c);
            }
            out.timestamptz_us(fetched);
            out.text(&b.request_id);
            out.jsonb(b.extra(table, t));
            if out.len() >= COPY_CHUNK
                && let Err(e) = copy.send(out.take()).await
            {
                return Err(abort(copy, e).await);
            }
        }
    }
    if let Err(e) = copy.send(out.finish()).await {
        return Err(abort(copy, e).await);
    }
    copy.finish().await
}

/// Bytes per `CopyData` message.
const COPY_CHUNK: usize = 64 * 1024;

/// Ends a COPY that failed half-way, so that the connection can be used (and rolled back).
async fn abort(
    copy: sqlx::postgres::PgCopyIn<&mut sqlx::PgConnection>,
    e: sqlx::Error,
) -> sqlx::Error {
    let _ = copy.abort("ccc-etl: the COPY failed").await;
    e
}

/// Inserts or updates one window's rows of `table`: what was inserted, revised, unchanged.
async fn upsert_rows(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    b: &WindowBatch,
    table: Table,
    statement: &str,
) -> Result<CommitStats, sqlx::Error> {
    let (times, counts) = b.columns(table);
    let total = times.len() as u64;
    if total == 0 {
        return Ok(CommitStats::default());
    }
    let extra: Vec<Option<&str>> = times.iter().map(|t| b.extra(table, *t)).collect();
    let mut q = sqlx::query(statement)
        .bind(&b.key.instance_id)
        .bind(b.key.media_type.as_str())
        .bind(times.into_iter().map(ts).collect::<Result<Vec<_>, _>>()?);
    for c in counts {
        q = q.bind(c);
    }
    let row = q
        .bind(b.fetched_at)
        .bind(&b.request_id)
        .bind(extra)
        .fetch_one(&mut **tx)
        .await?;
    let inserted = row.get::<i64, _>("inserted") as u64;
    let revised = row.get::<i64, _>("revised") as u64;
    Ok(CommitStats {
        inserted,
        revised,
        unchanged: total - inserted - revised,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn sink_err(e: sqlx::Error) -> SinkError {
    SinkError {
        sink: SinkKind::Postgres,
        kind: crate::sink::Failure::from_retryable(is_retryable(&e)),
        message: explain(&e),
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Postgres
    }

    /// Sizes the groups for the run's series (see `group_windows`).
    fn expect(&self, windows: &[WindowKey]) {
        let series: std::collections::HashSet<(&str, MediaType)> = windows
            .iter()
            .map(|w| (w.instance_id.as_str(), w.media_type))
            .collect();
        self.group_windows.store(
            group_windows(series.len()),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The window joins the pending group; when the group is full (or its first window has
    /// waited long enough) the group is written, in this call. The commit records are written
    /// in the rows' transaction; only failures are recorded through the run's ledger.
    async fn write(&self, _planned: &WindowKey, b: Arc<WindowBatch>, run: &RunContext) -> Written {
        let windows = self
            .group_windows
            .load(std::sync::atomic::Ordering::Relaxed);
        let group = self.pending.lock().expect("pending lock").push(b, windows);
        match group {
            Some(group) => self.write_group(group, run).await,
            None => Written::default(),
        }
    }

    async fn idle(&self, run: &RunContext) -> Written {
        self.flush(run).await
    }

    async fn flush(&self, run: &RunContext) -> Written {
        let group = self.pending.lock().expect("pending lock").take();
        if group.is_empty() {
            return Written::default();
        }
        self.write_group(group, run).await
    }
}

impl PostgresSink {
    async fn write_group(&self, group: Vec<Arc<WindowBatch>>, run: &RunContext) -> Written {
        let _writer = self.writers.acquire().await.expect("never closed");
        let written = self.commit_all(&group, run).await;
        // The ledger is in the same database: when it is unreachable, recording why would only
        // wait out the same timeout again (the failures are logged and in the summary).
        if self
            .unreachable_since
            .lock()
            .expect("unreachable lock")
            .is_none()
        {
            run.record_failed(&self.id(), &written.failed).await;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{InboundRow, WindowBatch};

    fn batch(rows: usize) -> Arc<WindowBatch> {
        Arc::new(WindowBatch {
            key: WindowKey {
                instance_id: "i".into(),
                media_type: MediaType::Audio,
                start_ms: 0,
                end_ms: 1,
            },
            request_id: "r".into(),
            fetched_at: Utc::now(),
            attempts: 1,
            inbound: (0..rows as i64)
                .map(|t| InboundRow {
                    stats_time: t,
                    total_calls: 1,
                    calls_handled: 1,
                    calls_queued: 0,
                    calls_abandoned_in_ivr: 0,
                    calls_abandoned_in_queue: 0,
                    calls_abandoned_in_ring: 0,
                })
                .collect(),
            outbound: vec![],
            overall: vec![],
            extra: Default::default(),
            final_end_ms: None,
        })
    }

    #[test]
    fn a_group_is_written_when_full_by_windows_or_by_rows() {
        let mut p = Pending::default();
        assert!(p.push(batch(10), 3).is_none());
        assert!(p.push(batch(10), 3).is_none());
        assert_eq!(p.push(batch(10), 3).map(|g| g.len()), Some(3));
        assert!(p.batches.is_empty() && p.rows == 0 && p.since.is_none());
        // Rows: two windows of more than half the limit.
        assert!(p.push(batch(GROUP_ROWS / 2 + 1), 32).is_none());
        assert_eq!(
            p.push(batch(GROUP_ROWS / 2 + 1), 32).map(|g| g.len()),
            Some(2)
        );
    }

    #[test]
    fn a_group_whose_first_window_waited_long_enough_is_written_with_the_next() {
        let mut p = Pending::default();
        assert!(p.push(batch(1), 32).is_none());
        p.since = Some(std::time::Instant::now() - GROUP_WAIT);
        assert_eq!(p.push(batch(1), 32).map(|g| g.len()), Some(2));
    }

    #[test]
    fn groups_hold_at_most_half_the_series() {
        assert_eq!(group_windows(1), 1);
        assert_eq!(group_windows(40), 20);
        assert_eq!(group_windows(200), GROUP_WINDOWS);
        assert_eq!(group_windows(0), 1);
    }
}
