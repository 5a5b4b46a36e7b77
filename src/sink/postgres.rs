//! The PostgreSQL sink and ledger.
//!
//! Every table lives in the configured schema; connections set `search_path` to it, so all SQL
//! below is text fixed at compile time (or built once from the compile-time column lists) with
//! bound values, and the only identifier ever put into SQL from configuration is the validated,
//! quoted schema name in `CREATE SCHEMA`. A window's rows (one `INSERT ... SELECT FROM UNNEST
//! ... ON CONFLICT DO UPDATE` per table) and its ledger row commit in one transaction. Changed
//! rows are updated and counted as revisions; unchanged rows are not rewritten. A window whose
//! range holds no row yet (the common case of a backfill) is written with a plain insert, which
//! skips the conflict checks and halves the index work.
//!
//! Concurrency: the upserts are safe for any number of concurrent runs (the primary key decides);
//! a transaction-scoped advisory lock per (instance, media type) series serializes commits of the
//! same series so revision counts stay exact. Several workers can share this ledger.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres, Row};

use super::{CommitStats, RunContext, Sink, SinkError, SinkKind, Written};
use crate::config::SchemaName;
use crate::ledger::{DayFile, Ledger, LedgerEntry, LedgerError, RunRecord, SinkId, WindowStatus};
use crate::record::{MediaType, Table, WindowBatch, WindowKey};

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A connection pool bound to one schema, migrated.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: SchemaName,
    describe: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("at", &self.describe)
            .field("schema", &self.schema)
            .finish()
    }
}

/// Why PostgreSQL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server is unreachable or refused: exit 1.
    #[error("{0}")]
    Server(String),
    /// The configuration does not fit the database (a bad URL, another zone, not migrated):
    /// exit 2.
    #[error("{0}")]
    Input(String),
    /// A read-only command found the schema never written (no migration ever ran): it holds
    /// nothing, which `plan` and `status` read as "nothing committed".
    #[error("{0}")]
    NeverWritten(String),
}

impl PgError {
    /// As an error that keeps its exit code (input: 2, server: 1).
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            PgError::Input(m) => crate::error::InputError::new(m).into(),
            PgError::NeverWritten(m) => crate::error::InputError::new(format!(
                "{m}: run `ccc-etl migrate` or a backfill first"
            ))
            .into(),
            server @ PgError::Server(_) => server.into(),
        }
    }
}

/// `postgres://user@host:port/db`, never the password.
pub fn describe(opts: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    )
}

/// A database error as an operator needs to read it: a pool that gave no connection in time
/// says why that happens.
pub fn explain(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::PoolTimedOut => format!(
            "no PostgreSQL connection within {} s: the server is down or unreachable, or at \
             max_connections",
            ACQUIRE_TIMEOUT.as_secs()
        ),
        other => other.to_string(),
    }
}

/// How long a statement waits for a pooled connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        // SQLSTATE class 42 (syntax, undefined object, privileges) and 22 (data) will fail again.
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            !(code.starts_with("42") || code.starts_with("22") || code.starts_with("23"))
        }
        _ => true,
    }
}

/// What a command may do to the database when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Runs: create the schema, apply migrations, record the zone of a new database.
    Write,
    /// `status`, `verify`: change nothing; the schema must be migrated already.
    ReadOnly,
    /// `migrate`: as `Write`, and set the views' zone to the configured one.
    Migrate,
    /// `migrate` with no configuration file: the migrations only; the recorded zone is kept (a
    /// new database gets the default one).
    MigrateKeepZone,
}

fn unreachable(describe: &str, e: sqlx::Error) -> PgError {
    PgError::Server(format!(
        "cannot connect to PostgreSQL at {describe}: {e} (is the server running? \
         on Debian: pg_ctlcluster --skip-systemctl-redirect 15 main start)"
    ))
}

/// One connection, within 15 s, or an error naming the server (never the password).
async fn first_connection(
    base: &PgConnectOptions,
    describe: &str,
) -> Result<sqlx::PgConnection, PgError> {
    tokio::time::timeout(Duration::from_secs(15), base.connect())
        .await
        .map_err(|_| {
            PgError::Server(format!(
                "cannot connect to PostgreSQL at {describe}: timed out after 15 s"
            ))
        })?
        .map_err(|e| unreachable(describe, e))
}

impl PgStore {
    /// Connects and checks the zone the views were built with. `Write` and `Migrate` create the
    /// schema if needed and apply the migrations; `ReadOnly` writes nothing. Fails before anything
    /// else happens if the server is unreachable.
    pub async fn connect(
        url: &SecretString,
        schema: &SchemaName,
        timezone: Tz,
        max_connections: u32,
        access: Access,
    ) -> Result<Self, PgError> {
        let base = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|_| PgError::Input("the PostgreSQL URL is not valid (postgres://user[:password]@host[:port]/database)".into()))?
            .disable_statement_logging();
        let describe = describe(&base);
        let mut conn = first_connection(&base, &describe).await?;
        if access != Access::ReadOnly {
            // Several workers start at once: one creates the schema and migrates, the others
            // wait for it on this lock (held by this connection until the checks are done).
            sqlx::query("SELECT pg_advisory_lock(hashtext($1), 1)")
                .bind(format!("ccc-etl:migrate:{}", schema.as_str()))
                .execute(&mut conn)
                .await
                .map_err(|e| unreachable(&describe, e))?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted()))
                .execute(&mut conn)
                .await
                .map_err(|e| {
                    PgError::Server(format!(
                        "cannot create schema {} at {describe}: {e}",
                        schema.as_str()
                    ))
                })?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(base.options([("search_path", schema.as_str())]))
            .await
            .map_err(|e| unreachable(&describe, e))?;
        let store = Self {
            pool,
            schema: schema.clone(),
            describe,
        };
        if access == Access::ReadOnly {
            store.check_migrated().await?;
        } else {
            MIGRATOR.run(&store.pool).await.map_err(|e| {
                PgError::Server(format!(
                    "migrations failed on {} schema {}: {e}",
                    store.describe,
                    schema.as_str()
                ))
            })?;
        }
        store.check_timezone(timezone, access).await?;
        // Closing the session releases the migration lock.
        let _ = conn.close().await;
        Ok(store)
    }

    /// A read-only command on a schema the migrations have not (all) reached is refused.
    async fn check_migrated(&self) -> Result<(), PgError> {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        let missing = MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count();
        if applied.is_empty() {
            return Err(PgError::NeverWritten(format!(
                "nothing was written to schema {} at {} yet",
                self.schema.as_str(),
                self.describe
            )));
        }
        if missing > 0 {
            return Err(PgError::Input(format!(
                "schema {} at {} lacks {missing} migration(s): run `ccc-etl migrate` (or a backfill) first",
                self.schema.as_str(),
                self.describe
            )));
        }
        Ok(())
    }

    /// The views cut days in the zone the database was first written with; a configuration in
    /// another zone is refused until `migrate` changes it deliberately.
    async fn check_timezone(&self, timezone: Tz, access: Access) -> Result<(), PgError> {
        let err = |e: sqlx::Error| {
            PgError::Server(format!(
                "cannot read the time zone on {}: {}",
                self.describe,
                explain(&e)
            ))
        };
        if access == Access::Migrate {
            sqlx::query("INSERT INTO settings (key, value) VALUES ('timezone', $1) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
                .bind(timezone.name())
                .execute(&self.pool)
                .await
                .map_err(err)?;
            return Ok(());
        }
        if matches!(access, Access::Write | Access::MigrateKeepZone) {
            sqlx::query("INSERT INTO settings (key, value) VALUES ('timezone', $1) ON CONFLICT (key) DO NOTHING")
                .bind(timezone.name())
                .execute(&self.pool)
                .await
                .map_err(err)?;
        }
        if access == Access::MigrateKeepZone {
            return Ok(());
        }
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'timezone'")
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?;
        match recorded {
            Some(z) if z != timezone.name() => Err(PgError::Input(format!(
                "the PostgreSQL schema {} at {} was built with time zone {z} (its views cut days \
                 there), the configuration says {}: set `timezone = \"{z}\"` back, or run \
                 `ccc-etl migrate` to change the views (and re-partition the Parquet root) to {}",
                self.schema.as_str(),
                self.describe,
                timezone.name(),
                timezone.name()
            ))),
            _ => Ok(()),
        }
    }

    /// The zone recorded for the views, if any.
    pub async fn recorded_timezone(&self) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'timezone'")
            .fetch_optional(&self.pool)
            .await
    }

    /// The pool (search_path set to the schema).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where it is, without the password.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Rows of one series across the three tables.
    pub async fn row_count(&self, instance: &str, media: MediaType) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM inbound_trend WHERE instance_id = $1 AND media_type = $2)
                  + (SELECT count(*) FROM outbound_trend WHERE instance_id = $1 AND media_type = $2)
                  + (SELECT count(*) FROM overall_trend WHERE instance_id = $1 AND media_type = $2)",
        )
        .bind(instance)
        .bind(media.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }
}

/// Whether PostgreSQL at `url` is reachable and lets this user run ccc-etl in `schema`: create it
/// (or use and create in it, when it exists). Reads only.
pub async fn check_privileges(url: &SecretString, schema: &SchemaName) -> Result<String, PgError> {
    let base = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|_| PgError::Input("the PostgreSQL URL is not valid".into()))?
        .disable_statement_logging();
    let describe = describe(&base);
    let mut conn = first_connection(&base, &describe).await?;
    let err = |e: sqlx::Error| PgError::Server(format!("{describe}: {e}"));
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema.as_str())
            .fetch_one(&mut conn)
            .await
            .map_err(err)?;
    let allowed: bool = if exists {
        sqlx::query_scalar(
            "SELECT has_schema_privilege($1, 'USAGE') AND has_schema_privilege($1, 'CREATE')",
        )
        .bind(schema.as_str())
        .fetch_one(&mut conn)
        .await
        .map_err(err)?
    } else {
        sqlx::query_scalar("SELECT has_database_privilege(current_database(), 'CREATE')")
            .fetch_one(&mut conn)
            .await
            .map_err(err)?
    };
    let _ = conn.close().await;
    match (allowed, exists) {
        (true, true) => Ok(format!("{describe}: schema {} is usable", schema.as_str())),
        (true, false) => Ok(format!(
            "{describe}: schema {} does not exist yet and may be created",
            schema.as_str()
        )),
        (false, true) => Err(PgError::Server(format!(
            "{describe}: this user may not use and create tables in schema {} (GRANT USAGE, CREATE ON SCHEMA {} TO …)",
            schema.as_str(),
            schema.as_str()
        ))),
        (false, false) => Err(PgError::Server(format!(
            "{describe}: schema {} does not exist and this user may not create it (GRANT CREATE ON DATABASE … TO …)",
            schema.as_str()
        ))),
    }
}

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

/// The two ways a window's rows of one table are written, built once from the compile-time
/// column lists (no runtime input ever reaches the SQL text). Parameters: `$1` instance, `$2`
/// media type, `$3` bucket starts, then one array per count column, then fetched_at and
/// request_id.
struct TableSql {
    /// Insert or update: one row per key; rows whose counts changed are updated (revisions),
    /// unchanged rows are not rewritten. Returns the inserted and revised counts.
    upsert: String,
    /// Plain insert, for a range of a series that holds no row yet (checked under the series
    /// lock): half the index work of the upsert.
    insert: String,
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
            insert: format!("INSERT INTO {target} {select}"),
        }
    }
}

static TABLE_SQL: std::sync::LazyLock<[TableSql; 3]> =
    std::sync::LazyLock::new(|| Table::ALL.map(TableSql::new));

/// Whether a series holds any row in `[$3, $4)` of any table.
const ANY_ROWS: &str = r#"
SELECT EXISTS (SELECT 1 FROM inbound_trend WHERE instance_id = $1 AND media_type = $2 AND stats_time >= $3 AND stats_time < $4)
    OR EXISTS (SELECT 1 FROM outbound_trend WHERE instance_id = $1 AND media_type = $2 AND stats_time >= $3 AND stats_time < $4)
    OR EXISTS (SELECT 1 FROM overall_trend WHERE instance_id = $1 AND media_type = $2 AND stats_time >= $3 AND stats_time < $4)
"#;

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

fn status_str(s: WindowStatus) -> &'static str {
    match s {
        WindowStatus::Committed => "committed",
        WindowStatus::Failed => "failed",
    }
}

async fn upsert_windows<'e, E: sqlx::Executor<'e, Database = Postgres>>(
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

/// The PostgreSQL sink.
#[derive(Debug, Clone)]
pub struct PostgresSink {
    store: PgStore,
}

impl PostgresSink {
    /// A sink over a connected store.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    /// Commits one window's rows and its ledger row in one transaction.
    pub async fn commit(
        &self,
        b: &WindowBatch,
        run: &RunContext,
    ) -> Result<CommitStats, SinkError> {
        match self.commit_once(b, run, true).await {
            // Rows appeared that the check did not see (a writer outside ccc-etl, which does
            // not take the series lock): write the window again the careful way.
            Err(e) if is_unique_violation(&e) => {
                self.commit_once(b, run, false).await.map_err(sink_err)
            }
            other => other.map_err(sink_err),
        }
    }

    async fn commit_once(
        &self,
        b: &WindowBatch,
        run: &RunContext,
        fast_path: bool,
    ) -> Result<CommitStats, sqlx::Error> {
        let mut tx = self.store.pool.begin().await?;
        lock_series(&mut tx, b, run).await?;
        let (inst, media) = (&b.key.instance_id, b.key.media_type.as_str());
        // Under the series lock no other ccc-etl run writes this series: if the window's range
        // is empty in every table, a plain insert is exact and skips the conflict checks.
        let fresh = fast_path
            && !sqlx::query_scalar::<_, bool>(ANY_ROWS)
                .bind(inst)
                .bind(media)
                .bind(ts(b.key.start_ms))
                .bind(ts(b.key.end_ms))
                .fetch_one(&mut *tx)
                .await?;
        let mut stats = CommitStats::default();
        for (table, sql) in Table::ALL.iter().zip(TABLE_SQL.iter()) {
            let (times, counts) = b.columns(*table);
            let total = times.len() as u64;
            if total == 0 {
                continue;
            }
            let extra: Vec<Option<&str>> = times.iter().map(|t| b.extra(*table, *t)).collect();
            let mut q = sqlx::query(if fresh { &sql.insert } else { &sql.upsert })
                .bind(inst)
                .bind(media)
                .bind(times.into_iter().map(ts).collect::<Vec<_>>());
            for c in counts {
                q = q.bind(c);
            }
            q = q.bind(b.fetched_at).bind(&b.request_id).bind(extra);
            if fresh {
                stats.inserted += q.execute(&mut *tx).await?.rows_affected();
            } else {
                let row = q.fetch_one(&mut *tx).await?;
                let ins = row.get::<i64, _>("inserted") as u64;
                let rev = row.get::<i64, _>("revised") as u64;
                stats.inserted += ins;
                stats.revised += rev;
                stats.unchanged += total - ins - rev;
            }
        }
        let entry = LedgerEntry::committed(
            &SinkId::new(SinkKind::Postgres, ""),
            &super::DurableWindow::of(b),
            run.run_id,
        );
        upsert_windows(&mut *tx, entry.as_slice()).await?;
        tx.commit().await?;
        Ok(stats)
    }
}

/// Takes the series lock in the commit's transaction; with several workers, in the same round
/// trip, checks that this worker still holds the window's lease (refused: the `FENCED` error).
async fn lock_series(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    b: &WindowBatch,
    run: &RunContext,
) -> Result<(), sqlx::Error> {
    let series = format!("ccc-etl:{}:{}", b.key.instance_id, b.key.media_type);
    match &run.coordinator {
        None => {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(&series)
                .execute(&mut **tx)
                .await?;
        }
        // Several workers: the series lock and the fencing check in one round trip.
        Some(c) => {
            let Some((worker, start, attempt)) = c.held(&b.key) else {
                c.refused(&b.key);
                return Err(sqlx::Error::Protocol(FENCED.into()));
            };
            let held: i64 = sqlx::query_scalar(&format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM leases WHERE {} FOR UPDATE) f) \
                     FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) l",
                crate::coord::Coordinator::HELD
            ))
            .bind(&series)
            .bind(&b.key.instance_id)
            .bind(b.key.media_type.as_str())
            .bind(start)
            .bind(worker)
            .bind(attempt)
            .fetch_one(&mut **tx)
            .await?;
            if held == 0 {
                c.refused(&b.key);
                return Err(sqlx::Error::Protocol(FENCED.into()));
            }
        }
    }
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Why a commit of a window whose lease was taken over is refused.
const FENCED: &str = "fenced: the window's lease was taken over by another worker";

fn sink_err(e: sqlx::Error) -> SinkError {
    if matches!(&e, sqlx::Error::Protocol(m) if m == FENCED) {
        return SinkError {
            sink: SinkKind::Postgres,
            retryable: false,
            message: FENCED.into(),
        };
    }
    SinkError {
        sink: SinkKind::Postgres,
        retryable: is_retryable(&e),
        message: explain(&e),
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Postgres
    }

    /// The commit record is written in the rows' transaction; only a failure is recorded
    /// through the run's ledger.
    async fn write(&self, _planned: &WindowKey, b: Arc<WindowBatch>, run: &RunContext) -> Written {
        match self.commit(&b, run).await {
            Ok(stats) => Written::durable(&b, stats),
            Err(e) => {
                let written = Written::failed(&b.key, e);
                run.record_failed(&self.id(), &written.failed).await;
                written
            }
        }
    }
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
        .fetch_all(&self.store.pool)
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
        upsert_windows(&self.store.pool, entries)
            .await
            .map_err(ledger_err)
    }

    async fn record_durable(
        &self,
        files: &[DayFile],
        entries: &[LedgerEntry],
    ) -> Result<(), LedgerError> {
        let mut tx = self.store.pool.begin().await.map_err(ledger_err)?;
        upsert_files(&mut *tx, files).await.map_err(ledger_err)?;
        upsert_windows(&mut *tx, entries)
            .await
            .map_err(ledger_err)?;
        tx.commit().await.map_err(ledger_err)
    }

    async fn record_files(&self, files: &[DayFile]) -> Result<(), LedgerError> {
        upsert_files(&self.store.pool, files)
            .await
            .map_err(ledger_err)
    }

    async fn day_files(&self, target: &str) -> Result<Vec<DayFile>, LedgerError> {
        let rows = sqlx::query(
            "SELECT table_name, day, etag, rows FROM parquet_files WHERE target = $1 ORDER BY table_name, day",
        )
        .bind(target)
        .fetch_all(&self.store.pool)
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
    ) -> Result<u64, LedgerError> {
        let mut tx = self.store.pool.begin().await.map_err(ledger_err)?;
        let n = sqlx::query(INVALIDATE_WINDOWS)
            .bind(sink.kind.as_str())
            .bind(&sink.target)
            .bind(ranges.iter().map(|r| r.0).collect::<Vec<i64>>())
            .bind(ranges.iter().map(|r| r.1).collect::<Vec<i64>>())
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(ledger_err)?
            .rows_affected();
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
        Ok(n)
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
        .execute(&self.store.pool)
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
        .bind(&run.command)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(&run.status)
        .bind(&run.summary)
        .execute(&self.store.pool)
        .await
        .map(|_| ())
        .map_err(ledger_err)
    }

    async fn last_success(
        &self,
        command: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        sqlx::query_scalar(
            "SELECT max(finished_at) FROM runs WHERE status = 'ok' AND ($1::text IS NULL OR command = $1)",
        )
        .bind(command)
        .fetch_one(&self.store.pool)
        .await
        .map_err(ledger_err)
    }

    /// The drift of the runs since the last migration was applied (the schema last changed).
    async fn fields_seen(&self) -> Result<crate::record::Drift, LedgerError> {
        let summaries: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT summary FROM runs WHERE summary ? 'drift' AND started_at >= \
             (SELECT coalesce(max(installed_on), '-infinity') FROM _sqlx_migrations)",
        )
        .fetch_all(&self.store.pool)
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
