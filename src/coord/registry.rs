//! The worker registry: who works on the job (`workers`), from which session of PostgreSQL, with
//! what progress, and which workers are gone: their leases are handed back, their frozen
//! `COPY`s ended. Liveness comes from PostgreSQL itself (`pg_stat_activity`, by each worker's
//! `session_tag`), so it holds wherever the workers run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::lease::HAND_BACK;

/// A worker's figures, as its heartbeat records them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    /// Windows held now.
    pub in_flight: usize,
    /// Windows done so far.
    pub done: u64,
    /// Commits refused by fencing so far.
    pub fenced: u64,
}

/// Records a new worker running `command` on this host, tagged with this process's session tag.
pub(super) async fn insert(
    pool: &PgPool,
    worker: uuid::Uuid,
    host: &str,
    command: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workers (worker_id, host, pid, command, session_tag) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(worker)
    .bind(host)
    .bind(std::process::id() as i32)
    .bind(command)
    .bind(crate::db::session_tag())
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a worker's heartbeat and progress; returns how many workers are live (a heartbeat
/// within `lease`), this one included.
pub(super) async fn heartbeat(
    pool: &PgPool,
    worker: uuid::Uuid,
    p: Progress,
    lease: Duration,
) -> Result<i64, sqlx::Error> {
    let live: i64 = sqlx::query_scalar(
        "WITH me AS (UPDATE workers SET heartbeat_at = now(), windows_in_flight = $2, \
         progress_at = CASE WHEN windows_done <> $3 THEN now() ELSE progress_at END, \
         windows_done = $3, fenced = $4 WHERE worker_id = $1) \
         SELECT count(*) FROM workers WHERE stopped_at IS NULL \
         AND heartbeat_at > now() - make_interval(secs => $5)",
    )
    .bind(worker)
    .bind(p.in_flight as i32)
    .bind(p.done as i64)
    .bind(p.fenced as i64)
    .bind(lease.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(live.max(1))
}

/// Records the end of a worker's run.
pub(super) async fn deregister(
    pool: &PgPool,
    worker: uuid::Uuid,
    p: Progress,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE workers SET stopped_at = now(), heartbeat_at = now(), windows_in_flight = 0, \
         windows_done = $2, fenced = $3 WHERE worker_id = $1",
    )
    .bind(worker)
    .bind(p.done as i64)
    .bind(p.fenced as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Terminates the sessions of this database in the middle of a `COPY` for longer than `$1`
/// seconds that belong to workers that have not heartbeaten for as long (frozen, or cut off):
/// another job's `COPY`, or a slow one of a live worker, is left alone. Returns how many.
const END_FROZEN_COPIES: &str = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() \
       AND state = 'active' AND query LIKE 'COPY %' \
       AND query_start < now() - make_interval(secs => $1) \
       AND application_name IN (SELECT session_tag FROM workers WHERE session_tag IS NOT NULL \
           GROUP BY session_tag \
           HAVING bool_and(stopped_at IS NOT NULL OR heartbeat_at < now() - make_interval(secs => $1)))";

/// Ends the `COPY` of a worker frozen in its middle. Such a session is not idle in its
/// transaction (the server waits for the rows), so no timeout ends it, and it keeps the lease
/// rows of its windows locked: no other worker could take them over. A `COPY` of a group takes
/// well under a second; one that has run for a lease is a stopped process's, and its session is
/// terminated (its transaction rolls back; the process, if it resumes, finds its leases gone).
/// Best effort: a database role that may not signal the others' sessions logs it.
pub(super) async fn end_frozen_copies(pool: &PgPool, lease: Duration) {
    let ended = sqlx::query_scalar::<_, i64>(END_FROZEN_COPIES)
        .bind(lease.as_secs_f64())
        .fetch_one(pool)
        .await;
    match ended {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            sessions = n,
            "ended the COPY of a worker stopped in its middle for longer than a lease"
        ),
        Err(e) => {
            tracing::warn!(error = %crate::db::explain(&e), "cannot end a frozen worker's COPY")
        }
    }
}

/// A worker whose process is gone (killed, crashed, its host lost) holds its leases until they
/// expire; a new worker need not wait: PostgreSQL shows no session of it (`pg_stat_activity`,
/// by its `session_tag`), so its leases are handed back at once. A stopped (frozen) process keeps
/// its sessions: its leases expire as usual. Workers of older versions (no tag) are left to expire.
pub(super) async fn rescue_dead_workers(pool: &PgPool) -> Result<(), sqlx::Error> {
    let dead: Vec<(uuid::Uuid, String, i32)> = sqlx::query_as(
        "SELECT worker_id, host, pid FROM workers w \
         WHERE stopped_at IS NULL AND session_tag IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = w.session_tag)",
    )
    .fetch_all(pool)
    .await?;
    for (worker, host, pid) in dead {
        let n = sqlx::query(HAND_BACK)
            .bind(worker)
            .execute(pool)
            .await?
            .rows_affected();
        if n > 0 {
            tracing::warn!(worker = %worker, host = %host, pid, windows = n, "a worker died holding windows (PostgreSQL shows no session of it): handed back");
        }
    }
    Ok(())
}
/// This machine's name, for `status`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// A live or recently seen worker, for `status` (read by column name).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    /// Id.
    pub worker_id: String,
    /// Host.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// Command.
    pub command: String,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Windows in flight at the last heartbeat.
    pub windows_in_flight: i32,
    /// Windows done.
    pub windows_done: i64,
    /// Commits refused by fencing.
    pub fenced: i64,
    /// Whether its heartbeat is recent (within a lease).
    pub live: bool,
    /// Whether it ended its run (else, if not live, it died).
    pub stopped: bool,
    /// Whether it has had nothing in flight and finished no window for longer than a lease:
    /// live and idle is stalled.
    pub idle: bool,
}

/// Workers seen in the last day (live first: a heartbeat within `lease`), and how many leases
/// have expired without being taken over.
pub async fn workers(pool: &PgPool, lease: Duration) -> Result<(Vec<WorkerRow>, i64), sqlx::Error> {
    let rows: Vec<WorkerRow> = sqlx::query_as(
        "SELECT worker_id::text AS worker_id, host, pid, command, started_at, heartbeat_at, windows_in_flight, \
         windows_done, fenced, (stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)) AS live, \
         stopped_at IS NOT NULL AS stopped, \
         (windows_in_flight = 0 AND progress_at < now() - make_interval(secs => $1)) AS idle \
         FROM workers WHERE heartbeat_at > now() - interval '1 day' \
         ORDER BY live DESC, started_at DESC LIMIT 50",
    )
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let expired = super::lease::expired(pool).await?;
    Ok((rows, expired))
}
