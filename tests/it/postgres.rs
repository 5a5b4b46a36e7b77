//! The PostgreSQL sink and ledger against a real server: migrations, idempotent rewrites,
//! revisions, resume after an interruption, concurrent runs, and a database that is missing at
//! the start or lost mid-run. Each test uses a fresh database.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crate::common::*;
use async_trait::async_trait;
use ccc_etl::ccc::emulator::EmulatorOptions;
use ccc_etl::config::{Config, ParquetConfig, PostgresConfig, SchemaName, SignatureVersion};
use ccc_etl::db::PgStore;
use ccc_etl::ledger::{PgLedger, SinkKind};
use ccc_etl::pipeline::{BackfillRequest, Engine, NowFn};
use ccc_etl::progress::Progress;
use ccc_etl::record::{WindowBatch, WindowKey};
use ccc_etl::sink::postgres::PostgresSink;
use ccc_etl::sink::{RunContext, Sink, Written};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::Row;

fn pg_config(emu_cfg: &Config, db: &TestDb, schema: &str) -> Config {
    let mut c = emu_cfg.clone();
    c.postgres = Some(PostgresConfig {
        url: Some(SecretString::from(db.url.clone())),
        schema: SchemaName::parse(schema).unwrap(),
    });
    c
}

async fn store(cfg: &Config) -> PgStore {
    ccc_etl::commands::connect_postgres(cfg)
        .await
        .expect("connects")
        .expect("configured")
}

fn fixed_now(ms: i64) -> NowFn {
    Arc::new(move || ms)
}

/// Every row of the three tables, without fetch metadata, in key order.
async fn contents(pool: &sqlx::PgPool, schema: &str) -> Vec<String> {
    let mut out = vec![];
    for (table, cols) in [
        (
            "inbound_trend",
            "total_calls, calls_handled, calls_queued, calls_abandoned_in_ivr, calls_abandoned_in_queue, calls_abandoned_in_ring",
        ),
        ("outbound_trend", "total_calls, calls_answered"),
        ("overall_trend", "max_logged_in_agents"),
    ] {
        let sql = format!(
            "SELECT concat_ws('|', '{table}', instance_id, media_type, (extract(epoch from stats_time) * 1000)::bigint, {cols}) AS r \
             FROM {schema}.{table} ORDER BY instance_id, media_type, stats_time"
        );
        for row in sqlx::query(&sql).fetch_all(pool).await.unwrap() {
            out.push(row.get::<String, _>("r"));
        }
    }
    out
}

#[tokio::test]
async fn migrations_from_empty_create_the_tables_views_and_ledger_and_can_run_again() {
    let db = TestDb::create().await;
    let emu = start(options(&["ccc-a"])).await;
    let cfg = pg_config(
        &config(&emu, &["ccc-a"], SignatureVersion::V1),
        &db,
        "ccc_mig",
    );
    let s = store(&cfg).await;
    let again = store(&cfg).await;
    let pool = db.pool().await;
    let tables: Vec<String> = sqlx::query("SELECT table_name::text AS t FROM information_schema.tables WHERE table_schema = 'ccc_mig' ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("t"))
        .collect();
    assert_eq!(
        tables,
        vec![
            "_sqlx_migrations",
            "daily_traffic",
            "hourly_traffic",
            "inbound_trend",
            "leases",
            "ledger_identity",
            "outbound_trend",
            "overall_trend",
            "parquet_files",
            "runs",
            "settings",
            "shared_rate",
            "windows",
            "workers"
        ]
    );
    let applied: i64 = sqlx::query("SELECT count(*) AS n FROM ccc_mig._sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count();
    assert_eq!(applied as usize, files);
    let tz: String = sqlx::query("SELECT value FROM ccc_mig.settings WHERE key = 'timezone'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("value");
    assert_eq!(tz, "Asia/Shanghai");
    assert_eq!(s.describe(), again.describe());
    assert_eq!(
        s.describe(),
        format!("postgres://postgres@127.0.0.1:5432/{}", db.name)
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn rewrites_are_idempotent_revisions_are_counted_and_unchanged_rows_are_not_rewritten() {
    let db = TestDb::create().await;
    let t0 = crate::common::now().timestamp_millis() / H * H;
    let emu_now = Arc::new(AtomicI64::new(t0));
    let mut opts: EmulatorOptions = options(&["ccc-a"]);
    let clock = emu_now.clone();
    opts.clock = Arc::new(move || {
        DateTime::<Utc>::from_timestamp_millis(clock.load(Ordering::SeqCst)).unwrap()
    });
    let model = opts.data_model();
    let emu = start(opts).await;
    let cfg = pg_config(&config(&emu, &["ccc-a"], SignatureVersion::V3), &db, "ccc");
    let s = store(&cfg).await;
    let run = |refetch: bool| {
        let (cfg, s) = (cfg.clone(), s.clone());
        async move {
            let e = engine(
                &cfg,
                vec![Arc::new(PostgresSink::new(s.clone()))],
                Arc::new(PgLedger::new(s)),
                fixed_now(t0),
            );
            e.run(&BackfillRequest {
                refetch,
                ..request(&["ccc-a"], t0 - 2 * DAY, t0)
            })
            .await
            .unwrap()
        }
    };
    let first = run(false).await;
    assert_eq!(first.exit_code(), 0, "{}", first.render());
    let pg = &first.sinks["postgres"];
    assert_eq!((pg.inserted, pg.revised, pg.unchanged), (3 * 48, 0, 0));
    let pool = db.pool().await;
    let before = contents(&pool, "ccc").await;
    assert_eq!(before.len(), 3 * 48);
    let stamp = |pool: sqlx::PgPool| async move {
        sqlx::query("SELECT fetched_at FROM ccc.inbound_trend ORDER BY stats_time LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get::<DateTime<Utc>, _>("fetched_at")
    };
    let oldest_fetched = stamp(pool.clone()).await;

    // Time passes at the source: the last hours are revised upwards.
    emu_now.store(t0 + 3 * H, Ordering::SeqCst);
    let second = run(true).await;
    let pg = &second.sinks["postgres"];
    assert_eq!(pg.inserted, 0, "{}", second.render());
    assert!(pg.revised > 0, "recent buckets were revised");
    assert_eq!(pg.inserted + pg.revised + pg.unchanged, 3 * 48);
    let after = contents(&pool, "ccc").await;
    assert_eq!(after.len(), before.len(), "row count stable");
    let last_bucket = t0 - H;
    let row = sqlx::query("SELECT total_calls FROM ccc.inbound_trend WHERE stats_time = $1")
        .bind(DateTime::<Utc>::from_timestamp_millis(last_bucket).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    let expect = model
        .rows_at(
            "ccc-a",
            ccc_etl::record::MediaType::Audio,
            last_bucket,
            t0 + 3 * H,
        )
        .inbound
        .total_calls;
    assert_eq!(row.get::<i64, _>("total_calls"), expect);
    assert_eq!(
        stamp(pool.clone()).await,
        oldest_fetched,
        "an unchanged row keeps its fetched_at"
    );

    let third = run(true).await;
    let pg = &third.sinks["postgres"];
    assert_eq!((pg.inserted, pg.revised, pg.unchanged), (0, 0, 3 * 48));
    assert_eq!(contents(&pool, "ccc").await, after);
    pool.close().await;
    db.drop_db().await;
}

/// Commits the first `limit` windows, then hangs like a process about to be killed.
struct StallAfter {
    inner: PostgresSink,
    limit: usize,
    seen: AtomicUsize,
}

#[async_trait]
impl Sink for StallAfter {
    fn kind(&self) -> SinkKind {
        SinkKind::Postgres
    }
    fn expect(&self, windows: &[WindowKey]) {
        self.inner.expect(windows)
    }
    async fn flush(&self, run: &RunContext) -> Written {
        self.inner.flush(run).await
    }
    async fn write(&self, planned: &WindowKey, b: Arc<WindowBatch>, run: &RunContext) -> Written {
        if self.seen.fetch_add(1, Ordering::SeqCst) >= self.limit {
            std::future::pending::<()>().await;
        }
        self.inner.write(planned, b, run).await
    }
}

#[tokio::test]
async fn resume_after_an_interrupted_run_equals_an_uninterrupted_run() {
    let instances = ["ccc-a", "ccc-b", "ccc-c"];
    let mut opts = options(&instances);
    opts.revise_ms = 0;
    let emu = start(opts).await;
    let base = config(&emu, &instances, SignatureVersion::V1);
    let t0 = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let (from, to) = (t0 - 40 * DAY, t0);

    let reference = TestDb::create().await;
    let rcfg = pg_config(&base, &reference, "ccc");
    let rs = store(&rcfg).await;
    let full = engine(
        &rcfg,
        vec![Arc::new(PostgresSink::new(rs.clone()))],
        Arc::new(PgLedger::new(rs)),
        fixed_now(t0),
    )
    .run(&request(&instances, from, to))
    .await
    .unwrap();
    assert_eq!(full.windows_ok, 18);

    let db = TestDb::create().await;
    let cfg = pg_config(&base, &db, "ccc");
    let s = store(&cfg).await;
    let calls_before = emu.stats().await.unwrap().ok_calls().len();
    let stalling = StallAfter {
        inner: PostgresSink::new(s.clone()),
        limit: 7,
        seen: AtomicUsize::new(0),
    };
    let interrupted = engine(
        &cfg,
        vec![Arc::new(stalling)],
        Arc::new(PgLedger::new(s.clone())),
        fixed_now(t0),
    );
    let cut = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        interrupted.run(&request(&instances, from, to)),
    )
    .await;
    assert!(cut.is_err(), "the run was interrupted");
    let pool = db.pool().await;
    let committed: i64 =
        sqlx::query("SELECT count(*) AS n FROM ccc.windows WHERE status = 'committed'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("n");
    assert_eq!(committed, 7);
    let committed_windows: Vec<(String, i64)> =
        sqlx::query("SELECT instance_id, start_ms FROM ccc.windows")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("instance_id"), r.get("start_ms")))
            .collect();
    let fetched_first = emu.stats().await.unwrap().ok_calls().len();

    let resumed = engine(
        &cfg,
        vec![Arc::new(PostgresSink::new(s.clone()))],
        Arc::new(PgLedger::new(s)),
        fixed_now(t0),
    )
    .run(&request(&instances, from, to))
    .await
    .unwrap();
    assert_eq!(resumed.exit_code(), 0);
    assert_eq!(resumed.windows_skipped_committed, 7);
    assert_eq!(resumed.windows_ok, 11);
    let stats = emu.stats().await.unwrap();
    let rerun_calls = &stats.ok_calls()[fetched_first..];
    assert_eq!(rerun_calls.len(), 11);
    for c in rerun_calls {
        assert!(
            !committed_windows.contains(&(c.instance_id.clone(), c.start_ms)),
            "refetched a committed window: {c:?}"
        );
    }
    assert!(fetched_first - calls_before >= 7);
    let rpool = reference.pool().await;
    assert_eq!(contents(&pool, "ccc").await, contents(&rpool, "ccc").await);
    pool.close().await;
    rpool.close().await;
    db.drop_db().await;
    reference.drop_db().await;
}

#[tokio::test]
async fn two_runs_at_once_on_the_same_instances_neither_corrupt_nor_double() {
    let db = TestDb::create().await;
    let instances = ["ccc-a", "ccc-b"];
    let emu = start(options(&instances)).await;
    let cfg = pg_config(&config(&emu, &instances, SignatureVersion::V1), &db, "ccc");
    let s = store(&cfg).await;
    let t0 = crate::common::now().timestamp_millis() / H * H - 8 * H;
    let make = || {
        engine(
            &cfg,
            vec![Arc::new(PostgresSink::new(s.clone()))],
            Arc::new(PgLedger::new(s.clone())),
            fixed_now(t0),
        )
    };
    let (a, b) = (make(), make());
    let req = BackfillRequest {
        refetch: true,
        ..request(&instances, t0 - 20 * DAY, t0)
    };
    let (ra, rb) = tokio::join!(a.run(&req), b.run(&req));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!((ra.exit_code(), rb.exit_code()), (0, 0));
    let pool = db.pool().await;
    let n: i64 = sqlx::query("SELECT count(*) AS n FROM ccc.inbound_trend")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert_eq!(n, 2 * 20 * 24);
    let inserted = ra.sinks["postgres"].inserted + rb.sinks["postgres"].inserted;
    assert_eq!(
        inserted,
        3 * 2 * 20 * 24,
        "each row inserted exactly once across both runs"
    );
    let w: i64 = sqlx::query("SELECT count(*) AS n FROM ccc.windows")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert_eq!(w, 2 * 3, "one ledger row per window and sink");
    pool.close().await;
    db.drop_db().await;
}

/// Commits `limit` windows, then makes the database go away before delegating.
struct LoseDatabaseAfter {
    inner: PostgresSink,
    limit: usize,
    seen: AtomicUsize,
    db_name: String,
}

#[async_trait]
impl Sink for LoseDatabaseAfter {
    fn kind(&self) -> SinkKind {
        SinkKind::Postgres
    }
    fn expect(&self, windows: &[WindowKey]) {
        self.inner.expect(windows)
    }
    async fn flush(&self, run: &RunContext) -> Written {
        self.inner.flush(run).await
    }
    async fn write(&self, planned: &WindowKey, b: Arc<WindowBatch>, run: &RunContext) -> Written {
        if self.seen.fetch_add(1, Ordering::SeqCst) == self.limit {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_server()))
                .await
                .unwrap();
            sqlx::query(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                self.db_name
            ))
            .execute(&mut admin)
            .await
            .unwrap();
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                .bind(&self.db_name)
                .execute(&mut admin)
                .await
                .unwrap();
        }
        self.inner.write(planned, b, run).await
    }
}

#[tokio::test]
async fn postgres_lost_mid_run_fails_windows_as_retryable_and_a_rerun_completes_the_job() {
    let instances = ["ccc-a", "ccc-b"];
    let mut opts = options(&instances);
    opts.revise_ms = 0;
    let emu = start(opts).await;
    let base = config(&emu, &instances, SignatureVersion::V1);
    let t0 = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let req = request(&instances, t0 - 30 * DAY, t0);

    let reference = TestDb::create().await;
    let rcfg = pg_config(&base, &reference, "ccc");
    let rs = store(&rcfg).await;
    engine(
        &rcfg,
        vec![Arc::new(PostgresSink::new(rs.clone()))],
        Arc::new(PgLedger::new(rs)),
        fixed_now(t0),
    )
    .run(&req)
    .await
    .unwrap();

    let db = TestDb::create().await;
    let mut cfg = pg_config(&base, &db, "ccc");
    cfg.source.concurrency = 1;
    let s = store(&cfg).await;
    let losing = LoseDatabaseAfter {
        inner: PostgresSink::new(s.clone()),
        limit: 3,
        seen: AtomicUsize::new(0),
        db_name: db.name.clone(),
    };
    let summary = engine(
        &cfg,
        vec![Arc::new(losing)],
        Arc::new(PgLedger::new(s.clone())),
        fixed_now(t0),
    )
    .run(&req)
    .await
    .unwrap();
    assert_eq!(summary.exit_code(), 3, "{}", summary.render());
    assert_eq!(summary.windows_ok, 3);
    assert_eq!(summary.windows_failed.len(), 7);
    assert!(
        summary.windows_failed.iter().all(|f| f.retryable),
        "{}",
        summary.render()
    );
    drop(s);

    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_server()))
            .await
            .unwrap();
        sqlx::query(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    let s = store(&cfg).await;
    let rerun = engine(
        &cfg,
        vec![Arc::new(PostgresSink::new(s.clone()))],
        Arc::new(PgLedger::new(s)),
        fixed_now(t0),
    )
    .run(&req)
    .await
    .unwrap();
    assert_eq!(rerun.exit_code(), 0, "{}", rerun.render());
    assert_eq!(rerun.windows_ok, 7);
    assert_eq!(rerun.windows_skipped_committed, 3);
    let (pool, rpool) = (db.pool().await, reference.pool().await);
    assert_eq!(
        contents(&pool, "ccc").await,
        contents(&rpool, "ccc").await,
        "nothing lost or doubled"
    );
    pool.close().await;
    rpool.close().await;
    db.drop_db().await;
    reference.drop_db().await;
}

#[tokio::test]
async fn with_postgres_configured_the_ledger_tracks_parquet_commits_too() {
    let db = TestDb::create().await;
    let emu = start(options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pg_config(&config(&emu, &["ccc-a"], SignatureVersion::V1), &db, "ccc");
    cfg.parquet = Some(ParquetConfig::at(dir.path().to_path_buf()));
    let (sinks, ledger) = ccc_etl::commands::open_sinks(&cfg).await.unwrap();
    assert_eq!(
        sinks.iter().map(|s| s.kind()).collect::<Vec<_>>(),
        vec![SinkKind::Postgres, SinkKind::Parquet]
    );
    let t0 = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let e = Engine::new(
        cfg.clone(),
        Arc::new(client(&cfg, SECRET)),
        sinks,
        ledger,
        fixed_now(t0),
        Progress::hidden(),
    );
    let summary = e
        .run(&request(&["ccc-a"], t0 - 10 * DAY, t0))
        .await
        .unwrap();
    assert_eq!(summary.exit_code(), 0);
    let pool = db.pool().await;
    let rows: Vec<(String, i64)> = sqlx::query("SELECT sink, count(*) AS n FROM ccc.windows WHERE status = 'committed' GROUP BY sink ORDER BY sink")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("sink"), r.get("n")))
        .collect();
    assert_eq!(
        rows,
        vec![("parquet".to_string(), 2), ("postgres".to_string(), 2)]
    );
    assert!(
        !dir.path().join("_ccc_etl/windows.jsonl").exists(),
        "no file ledger when PostgreSQL holds it"
    );
    let runs: i64 = sqlx::query(
        "SELECT count(*) AS n FROM ccc.runs WHERE status = 'ok' AND finished_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("n");
    assert_eq!(runs, 1);
    let daily: i64 = sqlx::query(
        "SELECT count(*) AS n FROM ccc.daily_traffic WHERE answer_rate BETWEEN 0 AND 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("n");
    assert!(daily >= 10, "one row per local day: {daily}");
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_password_in_the_url_never_appears_in_messages() {
    let db = TestDb::create().await;
    let emu = start(options(&["ccc-a"])).await;
    let mut cfg = pg_config(&config(&emu, &["ccc-a"], SignatureVersion::V1), &db, "ccc");
    let with_pw = db.url.replace("postgres@", "postgres:hunter2-secret@");
    cfg.postgres.as_mut().unwrap().url = Some(SecretString::from(with_pw.clone()));
    let s = store(&cfg).await;
    assert!(!s.describe().contains("hunter2"));
    assert!(!format!("{s:?} {cfg:?}").contains("hunter2"));
    cfg.postgres.as_mut().unwrap().url = Some(SecretString::from(with_pw.replace("5432", "1")));
    let err = ccc_etl::commands::connect_postgres(&cfg).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    db.drop_db().await;
}

#[tokio::test]
async fn a_plain_insert_racing_an_outside_writer_falls_back_to_the_upsert() {
    use ccc_etl::record::{MediaType, OverallRow};
    use ccc_etl::sink::CommitStats;
    let db = TestDb::create().await;
    let emu = start(options(&["ccc-a"])).await;
    let cfg = pg_config(&config(&emu, &["ccc-a"], SignatureVersion::V1), &db, "ccc");
    let sink = PostgresSink::new(store(&cfg).await);
    let batch = WindowBatch {
        final_end_ms: None,
        key: WindowKey {
            instance_id: "ccc-a".into(),
            media_type: MediaType::Audio,
            start_ms: 0,
            end_ms: 2 * H,
        },
        request_id: "ours".into(),
        fetched_at: crate::common::now(),
        attempts: 1,
        inbound: vec![],
        outbound: vec![],
        overall: vec![
            OverallRow {
                stats_time: 0,
                max_logged_in_agents: 5,
            },
            OverallRow {
                stats_time: H,
                max_logged_in_agents: 6,
            },
        ],
        extra: Default::default(),
    };
    // A writer outside ccc-etl (it takes no series lock) inserts one of the keys and keeps its
    // transaction open: the sink's check sees an empty range and takes the plain insert, which
    // then waits for that row.
    let pool = db.pool().await;
    let mut outside = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO ccc.overall_trend VALUES ('ccc-a', 'Audio', to_timestamp(0), 5, now(), 'outside')")
        .execute(&mut *outside)
        .await
        .unwrap();
    let run = RunContext::new(
        uuid::Uuid::new_v4(),
        Arc::new(ccc_etl::ledger::MemoryLedger::default()),
    );
    let task = tokio::spawn(async move { sink.commit(&batch, &run).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&db.name)
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the insert never waited for the outside row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    outside.commit().await.unwrap();
    let stats = task
        .await
        .unwrap()
        .expect("the upsert path commits the window");
    assert_eq!(
        stats,
        CommitStats {
            inserted: 1,
            revised: 0,
            unchanged: 1
        }
    );
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT max_logged_in_agents, request_id FROM ccc.overall_trend ORDER BY stats_time",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![(5, "outside".to_string()), (6, "ours".to_string())],
        "the unchanged row is kept as it was"
    );
    pool.close().await;
    db.drop_db().await;
}

/// A role that may not read the schema is told so by every read-only command (exit 1, naming the
/// privilege), never "nothing was written": with no privilege at all, and with USAGE alone.
#[tokio::test]
async fn a_role_that_cannot_read_the_schema_is_told_so_never_that_there_is_no_data() {
    let emu = crate::common::start(crate::common::options(&["ccc-a"])).await;
    let db = crate::common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    crate::common::ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .postgres()
        .parquet(dir.path().join("wh").display())
        .write(&cfg);
    let owner = crate::common::ccc_etl_at(&cfg, Some(&db.url))
        .args(["backfill", "--from", "2026-11-01", "--to", "2026-11-02"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        owner.status.code(),
        Some(0),
        "{}",
        crate::common::output_text(&owner)
    );
    let pool = db.pool().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (none, usage) = (format!("ccc_none_{suffix}"), format!("ccc_usage_{suffix}"));
    for role in [&none, &usage] {
        sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(&format!("GRANT USAGE ON SCHEMA ccc TO {usage}"))
        .execute(&pool)
        .await
        .unwrap();
    let server = crate::common::pg_server();
    let host = server.split('@').nth(1).unwrap();
    for (role, privilege) in [
        (&none, "lacks USAGE on schema ccc"),
        (&usage, "GRANT SELECT"),
    ] {
        let url = format!("postgres://{role}@{host}/{}", db.name);
        let report = dir.path().join("report.html");
        for args in [
            vec!["status"],
            vec!["verify"],
            vec!["plan", "--from", "2026-11-01", "--to", "2026-11-02"],
            vec!["report", "--output", report.to_str().unwrap()],
        ] {
            let out = crate::common::ccc_etl_at(&cfg, Some(&url))
                .args(&args)
                .output()
                .await
                .unwrap();
            let text = crate::common::output_text(&out);
            assert_eq!(out.status.code(), Some(1), "{role} {args:?}: {text}");
            assert!(
                text.contains("permission denied") && text.contains(privilege),
                "{role} {args:?} names the privilege: {text}"
            );
            assert!(
                !text.contains("nothing was written") && !text.contains("never"),
                "{role} {args:?}: {text}"
            );
        }
    }
    for role in [&none, &usage] {
        sqlx::query(&format!("DROP OWNED BY {role}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    db.drop_db().await;
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    for role in [&none, &usage] {
        sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
            .execute(&admin)
            .await
            .unwrap();
    }
}
