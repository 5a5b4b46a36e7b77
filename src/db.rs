//! The one place that talks to PostgreSQL as such: connecting (every session bounded, see
//! [`SessionLimits`]), creating the schema and running the migrations, checking privileges and
//! the zone the views were built with, and saying what went wrong in words an operator can act
//! on. The sink, the ledger, the coordination of workers, `verify` and `status` use it.
//!
//! Every table lives in the configured schema; connections set `search_path` to it, and the only
//! identifier ever put into SQL from configuration is the validated, quoted schema name in
//! `CREATE SCHEMA`.

use std::str::FromStr;
use std::time::Duration;

use chrono::NaiveDate;
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::SchemaName;
use crate::record::{MediaType, Table};

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
    /// Another ccc-etl holds the schema's migration lock for longer than the lock wait: exit 5.
    #[error("{0}")]
    Busy(String),
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
            PgError::Busy(m) => crate::error::Busy(m).into(),
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
/// SQLSTATE of a relation that does not exist.
const UNDEFINED_TABLE: &str = "42P01";
/// SQLSTATE of a missing privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// The SQLSTATE of a server's error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

pub fn explain(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::PoolTimedOut => format!(
            "no PostgreSQL connection within {} s: the server is down or unreachable, or at \
             max_connections",
            ACQUIRE_TIMEOUT.as_secs()
        ),
        // too_many_connections: a new session refused at once.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("53300") => format!(
            "{e}: the server is at max_connections (other clients hold its sessions: wait for \
             them, or raise max_connections)"
        ),
        other => other.to_string(),
    }
}

/// Bounds on what a ccc-etl session may hold, set on every connection: a worker that is frozen
/// or gone costs the others at most a lease plus a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// `idle_in_transaction_session_timeout`: a transaction idle this long (its process stopped,
    /// or lost) is ended by the server, and the locks it held are released.
    pub idle_in_transaction: Duration,
    /// `lock_timeout`: no statement waits longer than this for a lock (a row, an advisory lock).
    pub lock_wait: Duration,
}

impl SessionLimits {
    /// The limits for a job with these lease timings: idle for a lease, a lock wait of a lease
    /// plus a heartbeat.
    pub fn for_leases(lease: Duration, heartbeat: Duration) -> Self {
        Self {
            idle_in_transaction: lease,
            lock_wait: lease + heartbeat,
        }
    }

    fn options(&self) -> [(&'static str, String); 3] {
        [
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction.as_millis().to_string(),
            ),
            ("lock_timeout", self.lock_wait.as_millis().to_string()),
            ("application_name", session_tag().to_string()),
        ]
    }
}

/// The `application_name` of every session of this process: `ccc-etl/{pid}-{random}`, unique
/// on any host. `workers.session_tag` records it, so PostgreSQL itself says which workers are
/// alive (`pg_stat_activity`) and whose sessions a take-over ends.
pub fn session_tag() -> &'static str {
    static TAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("ccc-etl/{}-{}", std::process::id(), &random[..12])
    });
    &TAG
}

impl Default for SessionLimits {
    /// The limits for the default lease (60 s) and heartbeat (10 s).
    fn default() -> Self {
        Self::for_leases(Duration::from_secs(60), Duration::from_secs(10))
    }
}

/// Whether a statement gave up waiting for a lock (`lock_timeout`).
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// How long a statement waits for a pooled connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a failed statement may succeed when tried again (not a syntax, privilege or data
/// error).
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
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
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("3D000")
    {
        return PgError::Server(format!(
            "cannot connect to PostgreSQL at {describe}: the database does not exist \
             (create it: createdb -h HOST -U USER DATABASE, or CREATE DATABASE … in psql)"
        ));
    }
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
        Self::connect_limited(
            url,
            schema,
            timezone,
            max_connections,
            access,
            SessionLimits::default(),
        )
        .await
    }

    /// [`PgStore::connect`], every session bounded by `limits`.
    pub async fn connect_limited(
        url: &SecretString,
        schema: &SchemaName,
        timezone: Tz,
        max_connections: u32,
        access: Access,
        limits: SessionLimits,
    ) -> Result<Self, PgError> {
        let base = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|_| PgError::Input("the PostgreSQL URL is not valid (postgres://user[:password]@host[:port]/database)".into()))?
            .disable_statement_logging()
            .options(limits.options());
        let describe = describe(&base);
        let mut conn = first_connection(&base, &describe).await?;
        if access != Access::ReadOnly {
            // Several workers start at once: one creates the schema and migrates, the others
            // wait for it on this lock (held by this connection until the checks are done), at
            // most the lock wait: a holder frozen or stuck longer is reported as busy.
            sqlx::query("SELECT pg_advisory_lock(hashtext($1), 1)")
                .bind(format!("ccc-etl:migrate:{}", schema.as_str()))
                .execute(&mut conn)
                .await
                .map_err(|e| {
                    if is_lock_timeout(&e) {
                        PgError::Busy(format!(
                            "another ccc-etl has been migrating schema {} at {describe} for more \
                             than {} s (its migration lock is held): try again when it is done",
                            schema.as_str(),
                            limits.lock_wait.as_secs()
                        ))
                    } else {
                        unreachable(&describe, e)
                    }
                })?;
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

    /// A read-only command on a schema the migrations have not (all) reached is refused. A
    /// schema that does not exist, or has no migration table, was never written: it holds
    /// nothing. A schema or table this role may not read is an error that says so (exit 1),
    /// never "nothing written".
    async fn check_migrated(&self) -> Result<(), PgError> {
        let schema = self.schema.as_str();
        let usage: Option<bool> = sqlx::query_scalar(
            "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace WHERE nspname = $1",
        )
        .bind(schema)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.read_error("the schema list", &e))?;
        match usage {
            None => return Err(self.never_written()),
            Some(false) => {
                return Err(PgError::Server(format!(
                    "permission denied: this role lacks USAGE on schema {schema} at {}, so it \
                     cannot read what ccc-etl wrote there: GRANT USAGE ON SCHEMA {schema} TO \
                     the role, and SELECT ON ALL TABLES IN SCHEMA {schema}",
                    self.describe
                )));
            }
            Some(true) => {}
        }
        let applied: Vec<i64> = match sqlx::query_scalar(&format!(
            "SELECT version FROM {}._sqlx_migrations WHERE success",
            self.schema.quoted()
        ))
        .fetch_all(&self.pool)
        .await
        {
            Ok(v) => v,
            Err(e) if sqlstate(&e).as_deref() == Some(UNDEFINED_TABLE) => vec![],
            Err(e) => return Err(self.read_error("_sqlx_migrations", &e)),
        };
        if applied.is_empty() {
            return Err(self.never_written());
        }
        let missing = MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count();
        if missing > 0 {
            return Err(PgError::Input(format!(
                "schema {schema} at {} lacks {missing} migration(s): run `ccc-etl migrate` (or a backfill) first",
                self.describe
            )));
        }
        Ok(())
    }

    fn never_written(&self) -> PgError {
        PgError::NeverWritten(format!(
            "nothing was written to schema {} at {} yet",
            self.schema.as_str(),
            self.describe
        ))
    }

    /// A read that failed, in words: a missing privilege named with the grant that gives it.
    fn read_error(&self, what: &str, e: &sqlx::Error) -> PgError {
        let schema = self.schema.as_str();
        if sqlstate(e).as_deref() == Some(INSUFFICIENT_PRIVILEGE) {
            return PgError::Server(format!(
                "permission denied: this role cannot read {what} in schema {schema} at {} ({}): \
                 GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO the role",
                self.describe,
                explain(e)
            ));
        }
        PgError::Server(format!(
            "cannot read {what} in schema {schema} at {}: {}",
            self.describe,
            explain(e)
        ))
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

    /// The instances whose windows the ledger records as committed to PostgreSQL (one scan of
    /// the ledger, not of the trend tables).
    pub async fn ledger_instances(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT instance_id FROM windows \
             WHERE sink = 'postgres' AND status = 'committed' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Rows of one series in each of the three tables.
    pub async fn row_counts(
        &self,
        instance: &str,
        media: MediaType,
    ) -> Result<[(Table, u64); 3], sqlx::Error> {
        let (inbound, outbound, overall): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM inbound_trend WHERE instance_id = $1 AND media_type = $2),
                    (SELECT count(*) FROM outbound_trend WHERE instance_id = $1 AND media_type = $2),
                    (SELECT count(*) FROM overall_trend WHERE instance_id = $1 AND media_type = $2)",
        )
        .bind(instance)
        .bind(media.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok([
            (Table::Inbound, inbound as u64),
            (Table::Outbound, outbound as u64),
            (Table::Overall, overall as u64),
        ])
    }

    /// Inbound figures since `from_ms` per series, local day and hour in `tz` (day, ISO day of
    /// week 1-7, hour, inbound, handled, queued, abandoned in IVR, queue, ring). One scan of the
    /// table (what `daily_traffic` adds up, without its joins).
    pub async fn inbound_by_local_hour(
        &self,
        from_ms: i64,
        tz: Tz,
    ) -> Result<Vec<InboundHourRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT instance_id, media_type, t::date AS day, extract(isodow FROM t)::int AS isodow, \
                    extract(hour FROM t)::int AS hour, sum(total_calls)::bigint AS inbound, \
                    sum(calls_handled)::bigint AS handled, sum(calls_queued)::bigint AS queued, \
                    sum(calls_abandoned_in_ivr)::bigint AS abandoned_ivr, \
                    sum(calls_abandoned_in_queue)::bigint AS abandoned_queue, \
                    sum(calls_abandoned_in_ring)::bigint AS abandoned_ring \
             FROM (SELECT stats_time AT TIME ZONE $2 AS t, * FROM inbound_trend \
                   WHERE stats_time >= to_timestamp($1 / 1000.0)) x \
             GROUP BY 1, 2, 3, 4, 5",
        )
        .bind(from_ms)
        .bind(tz.name())
        .fetch_all(&self.pool)
        .await
    }

    /// Outbound calls and answers since `from_ms` per series and local day in `tz`: (instance,
    /// media type, day, calls, answered).
    pub async fn outbound_by_local_day(
        &self,
        from_ms: i64,
        tz: Tz,
    ) -> Result<Vec<(String, String, NaiveDate, i64, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT instance_id, media_type, (stats_time AT TIME ZONE $2)::date, \
                    sum(total_calls)::bigint, sum(calls_answered)::bigint \
             FROM outbound_trend WHERE stats_time >= to_timestamp($1 / 1000.0) GROUP BY 1, 2, 3",
        )
        .bind(from_ms)
        .bind(tz.name())
        .fetch_all(&self.pool)
        .await
    }

    /// Each series' peak logged-in agents per local day in `tz` since `from_ms`: (instance,
    /// media type, day, peak).
    pub async fn peak_agents_by_local_day(
        &self,
        from_ms: i64,
        tz: Tz,
    ) -> Result<Vec<(String, String, NaiveDate, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT instance_id, media_type, (stats_time AT TIME ZONE $2)::date, \
                    max(max_logged_in_agents) \
             FROM overall_trend WHERE stats_time >= to_timestamp($1 / 1000.0) GROUP BY 1, 2, 3",
        )
        .bind(from_ms)
        .bind(tz.name())
        .fetch_all(&self.pool)
        .await
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

/// A row of [`PgStore::inbound_by_local_hour`]: one local hour of one day of one series (read
/// by column name).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboundHourRow {
    /// The instance.
    pub instance_id: String,
    /// The media type.
    pub media_type: String,
    /// The local day.
    pub day: NaiveDate,
    /// ISO day of the week, 1 (Monday) to 7.
    pub isodow: i32,
    /// The local hour, 0 to 23.
    pub hour: i32,
    /// `total_calls`.
    pub inbound: i64,
    /// `calls_handled`.
    pub handled: i64,
    /// `calls_queued`.
    pub queued: i64,
    /// `calls_abandoned_in_ivr`.
    pub abandoned_ivr: i64,
    /// `calls_abandoned_in_queue`.
    pub abandoned_queue: i64,
    /// `calls_abandoned_in_ring`.
    pub abandoned_ring: i64,
}
