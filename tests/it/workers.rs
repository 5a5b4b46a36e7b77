//! Several workers, one job: `ccc-etl backfill` processes started together against one
//! PostgreSQL share the windows through leases, within one QPS budget; a killed worker's windows
//! are taken over; a worker whose lease was taken over cannot commit; concurrent claims never hand
//! one window to two workers.
//!
//! The three-worker runs default to 30 instances x 60 days so that `cargo test` stays short; the
//! issue's scale is `CCC_ETL_WORKERS_INSTANCES=200 CCC_ETL_WORKERS_DAYS=180 cargo test --release
//! --test workers`.

use crate::common;
use crate::common::ConfigToml;
use crate::common::sinks::pg_contents;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{DAY, H};
use ccc_etl::coord::{Coordinator, Fence, LeaseSettings};
use ccc_etl::record::{MediaType, OverallRow, Table, WindowBatch, WindowKey};
use ccc_etl::sink::parquet::Root;
use ccc_etl::sink::{RunContext, Sink};
use chrono::Utc;
use rand::{Rng, SeedableRng};
use sqlx::Row;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn instances() -> Vec<String> {
    (0..env_or("CCC_ETL_WORKERS_INSTANCES", 30))
        .map(|i| format!("ccc-{i:03}"))
        .collect()
}

/// A configuration for one job: PostgreSQL schema `ccc` and a bucket on the S3 test server.
fn write_config(path: &Path, endpoint: &str, ids: &[String], bucket: &str, qps: f64) {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    ConfigToml::new(endpoint, &ids)
        .set("source", "max_qps", qps)
        .set("source", "concurrency", 4)
        .set("source", "backoff_base_ms", 50)
        .set("source", "backoff_max_ms", 1000)
        .set("pipeline", "lease_secs", 4)
        .set("pipeline", "heartbeat_secs", 1)
        .postgres()
        .parquet(format!("s3://{bucket}/warehouse"))
        .write(path);
}

/// A quiet `backfill` worker of `[from, to)`: stderr piped, stdout dropped.
fn backfill(config: &Path, db_url: &str, from: i64, to: i64) -> tokio::process::Command {
    worker(config, db_url, from, to, &["-q"])
}

/// A `backfill` worker of `[from, to)` with the global flags `flags`.
fn worker(
    config: &Path,
    db_url: &str,
    from: i64,
    to: i64,
    flags: &[&str],
) -> tokio::process::Command {
    let mut c = crate::common::ccc_etl_cmd();
    c.args(flags)
        .arg("--config")
        .arg(config)
        .args([
            "backfill",
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ])
        .envs(common::s3::server().env())
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
        .env("DATABASE_URL", db_url)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Every Parquet row of the job's bucket without fetch metadata, sorted.
async fn parquet_contents(bucket: &str) -> Vec<String> {
    common::sinks::parquet_contents(&job_root(bucket)).await
}

/// The job's root on the S3 test server.
fn job_root(bucket: &str) -> Root {
    let url = ccc_etl::config::ObjectUrl {
        kind: ccc_etl::config::StoreKind::S3,
        bucket: bucket.into(),
        prefix: "warehouse".into(),
    };
    Root::Object(Arc::new(common::s3::object_root(
        common::s3::server(),
        &url,
    )))
}

/// The successful fetches per window, from the emulator's log.
fn fetches(stats: &ccc_etl::ccc::emulator::EmulatorStats) -> BTreeMap<(String, i64), Vec<i64>> {
    let mut out: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for c in &stats.calls {
        if c.code == "OK" {
            out.entry((c.instance_id.clone(), c.start_ms))
                .or_default()
                .push(c.received_ms);
        }
    }
    out
}

struct Job {
    emu: ccc_etl::ccc::emulator::RunningEmulator,
    ids: Vec<String>,
    from: i64,
    to: i64,
    windows: usize,
    expected_pg: Vec<String>,
    expected_pq: Vec<String>,
    _reference: common::TestDb,
}

/// An emulator limited to 20 requests per second, and the result of one process doing the job.
async fn job() -> Job {
    let ids = instances();
    let days = env_or("CCC_ETL_WORKERS_DAYS", 60) as i64;
    let mut opts = common::options(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    opts.revise_ms = 0;
    opts.faults.qps_limit = Some(20.0);
    let emu = common::start(opts).await;
    let to = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let from = to - days * DAY;
    let work = tempfile::tempdir().unwrap();
    let db = common::TestDb::create().await;
    let bucket = common::s3::server().bucket().await;
    let cfg = work.path().join("reference.toml");
    write_config(&cfg, &emu.endpoint(), &ids, &bucket, 20.0);
    let out = within(
        backfill(&cfg, &db.url, from, to).spawn().unwrap(),
        "the reference run",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = db.pool().await;
    let expected_pg = pg_contents(&pool).await;
    pool.close().await;
    let expected_pq = parquet_contents(&bucket).await;
    let windows = fetches(&emu.stats().await.unwrap()).len();
    // Every hour of every day, less what the 180-day horizon cuts off the oldest day.
    let full = ids.len() as i64 * 3 * days * 24;
    assert!(
        expected_pg.len() as i64 <= full
            && expected_pg.len() as i64 > full - ids.len() as i64 * 3 * 24,
        "{} rows of {full}",
        expected_pg.len()
    );
    assert_eq!(expected_pq.len(), expected_pg.len());
    Job {
        emu,
        ids,
        from,
        to,
        windows,
        expected_pg,
        expected_pq,
        _reference: db,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_job_within_one_qps_budget_and_write_it_exactly_once() {
    let job = job().await;
    let calls_before = job.emu.stats().await.unwrap().calls.len();
    let db = common::TestDb::create().await;
    let bucket = common::s3::server().bucket().await;
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("p.toml");
    write_config(&cfg, &job.emu.endpoint(), &job.ids, &bucket, 20.0);
    let started = crate::common::now().timestamp_millis();
    let children: Vec<_> = (0..3)
        .map(|_| backfill(&cfg, &db.url, job.from, job.to).spawn().unwrap())
        .collect();
    for c in children {
        let out = within(c, "a worker").await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stats = job.emu.stats().await.unwrap();
    let calls = &stats.calls[calls_before..];
    // Every window fetched exactly once, across the three.
    let mut seen = BTreeMap::new();
    for c in calls.iter().filter(|c| c.code == "OK") {
        *seen.entry((c.instance_id.clone(), c.start_ms)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), job.windows);
    assert!(seen.values().all(|n| *n == 1), "a window fetched twice");
    // One budget: after the first 10 s, under 5% of requests throttled.
    let late: Vec<_> = calls
        .iter()
        .filter(|c| c.received_ms > started + 10_000)
        .collect();
    let throttled = late
        .iter()
        .filter(|c| c.code.starts_with("Throttling"))
        .count();
    assert!(
        throttled * 20 < late.len().max(1),
        "{throttled} of {} requests throttled after the first 10 s",
        late.len()
    );
    let pool = db.pool().await;
    assert_eq!(
        pg_contents(&pool).await,
        job.expected_pg,
        "PostgreSQL as one process"
    );
    assert_eq!(
        parquet_contents(&bucket).await,
        job.expected_pq,
        "Parquet as one process"
    );
    // Each window committed once per sink in the ledger, and the work spread over all three.
    let per_window: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM ccc.windows WHERE status = 'committed' \
         GROUP BY instance_id, media_type, start_ms",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_window.len(), job.windows);
    assert!(per_window.iter().all(|n| *n == 2), "one commit per sink");
    let done: Vec<i64> = sqlx::query_scalar("SELECT windows_done FROM ccc.workers ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(done.iter().sum::<i64>(), job.windows as i64);
    assert!(
        done.iter().all(|n| *n as f64 >= 0.2 * job.windows as f64),
        "each did at least 20%: {done:?}"
    );
    // The manifest names every day file as the last writer left it: a new run fetches nothing.
    let calls = job.emu.stats().await.unwrap().calls.len();
    let again = backfill(&cfg, &db.url, job.from, job.to)
        .output()
        .await
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        job.emu.stats().await.unwrap().calls.len(),
        calls,
        "nothing fetched again"
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_windows_are_taken_over_within_the_lease_and_a_heartbeat() {
    let job = job().await;
    let seed = env_or("CCC_ETL_CRASH_SEED", 20261127);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let calls_before = job.emu.stats().await.unwrap().calls.len();
    let db = common::TestDb::create().await;
    let bucket = common::s3::server().bucket().await;
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("p.toml");
    write_config(&cfg, &job.emu.endpoint(), &job.ids, &bucket, 20.0);
    let mut children: Vec<_> = (0..3)
        .map(|_| backfill(&cfg, &db.url, job.from, job.to).spawn().unwrap())
        .collect();
    let mut victim = children.remove(rng.random_range(0..3));
    let pid = victim.id().unwrap() as i32;
    // Killed mid-run: once it holds leases, at a seeded moment.
    let pool = db.pool().await;
    let t0 = Instant::now();
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ccc.leases l JOIN ccc.workers w USING (worker_id) WHERE w.pid = $1",
        )
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        if held > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the worker never claimed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(300..3_000))).await;
    victim.kill().await.unwrap();
    let killed = Instant::now();
    let killed_at = crate::common::now().timestamp_millis();
    // Its leases lapse within the lease (4 s) plus a heartbeat (1 s): then they can be taken over.
    loop {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ccc.leases l JOIN ccc.workers w USING (worker_id) \
             WHERE w.pid = $1 AND l.state = 'leased' AND l.lease_until > now()",
        )
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
        if live == 0 {
            break;
        }
        assert!(
            killed.elapsed() <= Duration::from_millis(4_000 + 1_000 + 500),
            "seed {seed}: the dead worker still holds {live} live lease(s) after {:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in children {
        let out = within(c, "a worker").await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stats = job.emu.stats().await.unwrap();
    let mut after = stats.clone();
    after.calls = stats.calls[calls_before..].to_vec();
    let fetched = fetches(&after);
    assert_eq!(
        fetched.len(),
        job.windows,
        "seed {seed}: every window fetched"
    );
    // Fetched twice: only windows the dead worker had fetched before it died.
    for (w, times) in fetched.iter().filter(|(_, t)| t.len() > 1) {
        assert_eq!(times.len(), 2, "seed {seed}: {w:?}");
        assert!(
            times[0] <= killed_at,
            "seed {seed}: {w:?} first fetched before the kill"
        );
    }
    assert_eq!(
        pg_contents(&pool).await,
        job.expected_pg,
        "seed {seed}: nothing lost or doubled"
    );
    assert_eq!(
        parquet_contents(&bucket).await,
        job.expected_pq,
        "seed {seed}: Parquet exact"
    );
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM ccc.leases WHERE state = 'leased'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(held, 0, "no lease left behind by the survivors");
    // `status` shows the dead worker as gone and the two others as stopped.
    let status = crate::common::ccc_etl_std_cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("status")
        .envs(common::s3::server().env())
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(text.matches("\nworker ").count(), 3, "{text}");
    assert_eq!(text.matches(": finished,").count(), 2, "{text}");
    assert_eq!(text.matches(": GONE").count(), 1, "{text}");
    assert!(!text.contains("NOT COVERED"), "{text}");
    pool.close().await;
    db.drop_db().await;
}

fn window(i: usize) -> WindowKey {
    WindowKey {
        instance_id: format!("i{:04}", i / 10),
        media_type: MediaType::Audio,
        start_ms: (i % 10) as i64 * DAY,
        end_ms: ((i % 10) as i64 + 1) * DAY,
    }
}

fn settings(lease_secs: u64) -> LeaseSettings {
    LeaseSettings {
        lease: Duration::from_secs(lease_secs),
        heartbeat: Duration::from_secs(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_lease_was_taken_over_cannot_commit() {
    let db = common::TestDb::create().await;
    let store = db.migrated().await;
    let pool = store.pool().clone();
    let sink = ccc_etl::sink::postgres::PostgresSink::new(store.clone());
    let w = window(0);
    let batch = |n: i64, rid: &str| WindowBatch {
        final_end_ms: None,
        key: w.clone(),
        request_id: rid.into(),
        fetched_at: crate::common::now(),
        attempts: 1,
        inbound: vec![],
        outbound: vec![],
        overall: (0..24)
            .map(|h| OverallRow {
                stats_time: w.start_ms + h * H,
                max_logged_in_agents: n,
            })
            .collect(),
        extra: Default::default(),
    };
    let ledger = Arc::new(ccc_etl::ledger::PgLedger::new(store.clone()));
    let zombie = Coordinator::register(pool.clone(), "backfill", settings(60))
        .await
        .unwrap();
    let newer = Coordinator::register(pool.clone(), "backfill", settings(60))
        .await
        .unwrap();
    zombie
        .enqueue(std::slice::from_ref(&w), zombie.db_now().await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        zombie.claim(std::slice::from_ref(&w)).await.unwrap().mine,
        vec![w.clone()]
    );
    assert!(
        newer
            .claim(std::slice::from_ref(&w))
            .await
            .unwrap()
            .busy
            .contains(&w),
        "held"
    );
    // The zombie stalls past its lease; the newer worker takes the window over.
    sqlx::query("UPDATE ccc.leases SET lease_until = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        newer.claim(std::slice::from_ref(&w)).await.unwrap().mine,
        vec![w.clone()]
    );
    let ctx = |c: &Arc<Coordinator>| RunContext {
        run_id: uuid::Uuid::new_v4(),
        ledger: ledger.clone(),
        fence: Some(c.clone()),
    };
    sink.commit(&batch(2, "newer"), &ctx(&newer)).await.unwrap();
    let refused = sink
        .commit(&batch(1, "zombie"), &ctx(&zombie))
        .await
        .unwrap_err();
    assert!(refused.message.contains("fenced"), "{refused:?}");
    assert!(!refused.is_retryable());
    assert_eq!((zombie.fenced(), newer.fenced()), (1, 0));
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT max_logged_in_agents, request_id FROM ccc.overall_trend")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 24);
    assert!(
        rows.iter().all(|r| *r == (2, "newer".to_string())),
        "the newer worker's data"
    );
    // The Parquet path is fenced too: a durable window of the zombie is not recorded.
    let recorded = ctx(&zombie)
        .record(
            &ccc_etl::ledger::SinkId::new(ccc_etl::ledger::SinkKind::Parquet, "root"),
            ccc_etl::sink::Written::durable(&batch(1, "zombie"), Default::default()),
        )
        .await;
    assert!(recorded.durable.is_empty() && recorded.failed.is_empty() && recorded.late.is_empty());
    assert_eq!(recorded.fenced, vec![w.clone()], "fenced, not failed");
    assert_eq!(zombie.fenced(), 2);

    // A Parquet day write on object storage checks the leases under the day's lock, before the
    // file is written: the zombie's rows never reach the file; the newer worker's do.
    let url = ccc_etl::config::ObjectUrl {
        kind: ccc_etl::config::StoreKind::S3,
        bucket: common::s3::server().bucket().await,
        prefix: "wh".into(),
    };
    let open = || async {
        ccc_etl::sink::parquet::ParquetSink::open_object(
            common::s3::object_root(common::s3::server(), &url),
            chrono_tz::UTC,
            &pool,
            ccc_etl::sink::parquet::RootOwner::Pipeline,
        )
        .await
        .unwrap()
    };
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        zombie.holds_now(&mut conn, &[&w]).await.unwrap(),
        vec![false]
    );
    assert_eq!(newer.holds_now(&mut conn, &[&w]).await.unwrap(), vec![true]);
    drop(conn);
    let zombie_sink = open().await;
    zombie_sink.expect(std::slice::from_ref(&w));
    let written = zombie_sink
        .write(&w, Arc::new(batch(1, "zombie")), &ctx(&zombie))
        .await;
    assert!(
        written.durable.is_empty() && written.files.is_empty() && written.failed.is_empty(),
        "{written:?}"
    );
    assert_eq!(written.fenced, vec![w.clone()], "{written:?}");
    assert_eq!(zombie.fenced(), 3);
    let root = Root::Object(Arc::new(common::s3::object_root(
        common::s3::server(),
        &url,
    )));
    let listed = root.list().await.unwrap();
    assert!(listed.is_empty(), "no day file written: {listed:?}");
    let newer_sink = open().await;
    newer_sink.expect(std::slice::from_ref(&w));
    let written = newer_sink
        .write(&w, Arc::new(batch(2, "newer")), &ctx(&newer))
        .await;
    assert_eq!(written.durable.len(), 1, "{written:?}");
    let day = chrono::DateTime::from_timestamp_millis(w.start_ms)
        .unwrap()
        .date_naive();
    let rows = root.read_rows(Table::Overall, day).await.unwrap();
    assert_eq!(rows.len(), 24);
    assert!(
        rows.iter()
            .all(|r| r.counts == vec![2] && r.request_id == "newer")
    );
    assert_eq!(newer.fenced(), 0);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_claiming_at_once_never_share_a_window() {
    let db = common::TestDb::create().await;
    let store = db.migrated().await;
    let pool = store.pool().clone();
    let all: Vec<WindowKey> = (0..2000).map(window).collect();
    let mut workers = vec![];
    for _ in 0..8 {
        workers.push(
            Coordinator::register(pool.clone(), "backfill", settings(60))
                .await
                .unwrap(),
        );
    }
    workers[0]
        .enqueue(&all, workers[0].db_now().await.unwrap())
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut tasks = vec![];
    for (n, c) in workers.into_iter().enumerate() {
        let mut order = all.clone();
        // Each worker walks the windows in its own order, in batches of 16.
        let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        tasks.push(tokio::spawn(async move {
            let mut mine = vec![];
            for chunk in order.chunks(16) {
                let claimed = c.claim(chunk).await.unwrap();
                for w in claimed.mine {
                    c.finished(w.clone());
                    mine.push(w);
                }
                c.beat().await.unwrap();
            }
            mine
        }));
    }
    let mut seen: BTreeSet<WindowKey> = BTreeSet::new();
    let mut total = 0;
    for t in tasks {
        for w in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(w.clone()), "{w} claimed twice");
        }
    }
    assert_eq!((total, seen.len()), (2000, 2000), "in {:?}", t0.elapsed());
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT attempt FROM ccc.leases")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(attempts, [1], "each window claimed once");
    pool.close().await;
    db.drop_db().await;
}

/// The statements that look up the leases of a list of windows read a few lease rows per window
/// (find, update, report), however many leases the table and the worker hold: each window by key. As plain
/// joins, planned before PostgreSQL had statistics on a freshly filled `leases`, they read every
/// lease of the worker once per window, or the whole table for every claim.
#[tokio::test]
async fn lease_lookups_read_a_few_lease_rows_per_window_however_many_are_held() {
    let db = common::TestDb::create().await;
    let store = db.migrated().await;
    let pool = store.pool().clone();
    let all: Vec<WindowKey> = (0..3000).map(window).collect();
    let c = Coordinator::register(pool.clone(), "backfill", settings(60))
        .await
        .unwrap();
    c.enqueue(&all, c.db_now().await.unwrap()).await.unwrap();
    // All leased to this worker but 50, which the claim below asks for.
    let (pending, held) = (&all[2000..2050], [&all[..2000], &all[2050..]].concat());
    for chunk in held.chunks(500) {
        assert_eq!(c.claim(chunk).await.unwrap().mine.len(), chunk.len());
    }
    let (worker, attempt): (uuid::Uuid, i32) = sqlx::query_as(
        "SELECT DISTINCT worker_id, attempt FROM leases WHERE worker_id IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for (name, sql) in [
        ("claim", ccc_etl::coord::CLAIM),
        ("still mine", ccc_etl::coord::STILL_MINE),
        ("mark done", ccc_etl::coord::MARK_DONE),
        ("held leases", ccc_etl::coord::HELD_LEASES),
    ] {
        let ask = if name == "claim" {
            pending
        } else {
            &held[1000..1050]
        };
        let ids: Vec<&str> = ask.iter().map(|w| w.instance_id.as_str()).collect();
        let media: Vec<&str> = ask.iter().map(|w| w.media_type.as_str()).collect();
        let starts: Vec<i64> = ask.iter().map(|w| w.start_ms).collect();
        let attempts = vec![attempt; ask.len()];
        let q = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
        let q = sqlx::query_scalar::<_, sqlx::types::Json<serde_json::Value>>(&q)
            .bind(&ids)
            .bind(&media)
            .bind(&starts);
        let q = if name == "claim" {
            q.bind(worker).bind(60.0)
        } else {
            q.bind(&attempts).bind(worker)
        };
        let mut tx = pool.begin().await.unwrap();
        let plan = q.fetch_one(&mut *tx).await.unwrap().0;
        tx.rollback().await.unwrap();
        let mut scans = vec![];
        lease_scans(&plan, &mut scans);
        let kinds: Vec<&str> = scans.iter().map(|s| s.0.as_str()).collect();
        assert!(
            !kinds.contains(&"Seq Scan"),
            "{name}: a sequential scan of leases: {plan:#}"
        );
        let read: f64 = scans.iter().map(|s| s.1 * s.2).sum();
        assert!(
            read >= ask.len() as f64 && read <= 3.0 * ask.len() as f64,
            "{name}: {read} lease rows read for {} windows among {} leases: {plan:#}",
            ask.len(),
            all.len()
        );
    }
    db.drop_db().await;
}

/// The plan's scans of `leases`: kind, rows returned or filtered out per loop, loops.
fn lease_scans(node: &serde_json::Value, out: &mut Vec<(String, f64, f64)>) {
    match node {
        serde_json::Value::Array(a) => a.iter().for_each(|n| lease_scans(n, out)),
        serde_json::Value::Object(o) => {
            if o.get("Relation Name").and_then(|r| r.as_str()) == Some("leases")
                && let Some(kind) = o.get("Node Type").and_then(|k| k.as_str())
                && kind != "ModifyTable"
            {
                let n = |k: &str| o.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
                out.push((
                    kind.to_string(),
                    n("Actual Rows") + n("Rows Removed by Filter"),
                    n("Actual Loops"),
                ));
            }
            o.values().for_each(|v| lease_scans(v, out));
        }
        _ => {}
    }
}

/// Every Parquet row in the format of [`pg_contents`], sorted; every key must be there once.
async fn parquet_as_pg(bucket: &str) -> Vec<String> {
    let root = job_root(bucket);
    let mut out = vec![];
    let mut keys = BTreeSet::new();
    for f in root.list().await.unwrap() {
        for r in root.read_rows(f.table, f.day).await.unwrap() {
            assert!(
                keys.insert((
                    f.table,
                    r.instance_id.clone(),
                    r.media_type.clone(),
                    r.stats_time
                )),
                "a key twice in Parquet: {} {} {}",
                f.table,
                r.instance_id,
                r.stats_time
            );
            let counts: Vec<String> = r.counts.iter().map(i64::to_string).collect();
            out.push(format!(
                "{}|{}|{}|{}|{}",
                f.table,
                r.instance_id,
                r.media_type,
                r.stats_time,
                counts.join("|")
            ));
        }
    }
    out.sort();
    out
}

/// A `backfill` worker logging JSON lines, its output piped: the run summary on stdout, the log
/// on stderr.
fn json_worker(config: &Path, db_url: &str, from: i64, to: i64) -> tokio::process::Child {
    worker(config, db_url, from, to, &["--log-format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The run summary a JSON-logging worker printed.
fn run_summary(stdout: &str) -> serde_json::Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "run summary")
        .unwrap_or_else(|| panic!("no summary: {stdout}"))
}

/// Stops (SIGSTOP) worker `pid` once the emulator has answered `n` requests: in the middle of
/// its job, holding leases.
async fn stop_after_fetches(emu: &ccc_etl::ccc::emulator::RunningEmulator, pid: u32, n: usize) {
    let t0 = Instant::now();
    while emu.stats().await.unwrap().ok_calls().len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "worker {pid} never fetched"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(pid, libc::SIGSTOP);
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// How long a worker of these jobs may take at most: a job takes well under a minute here.
const WORKER_LIMIT: Duration = Duration::from_secs(300);

/// The output of `child` once it has ended; fails the test if it runs past [`WORKER_LIMIT`]
/// (killed then, as it is dropped): no worker may wait forever.
async fn within(child: tokio::process::Child, what: &str) -> std::process::Output {
    tokio::time::timeout(WORKER_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {WORKER_LIMIT:?}"))
        .unwrap()
}

/// Runs a command of the binary with `config`, as the job's workers do; its exit code and output.
async fn ccc(config: &Path, db_url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = crate::common::ccc_etl_at(config, Some(db_url));
    cmd.args(args)
        .envs(common::s3::server().env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = within(cmd.spawn().unwrap(), &format!("ccc-etl {}", args.join(" "))).await;
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `backfill -q` of `[from, to)` with `config`: its exit code and output.
async fn quiet_backfill(config: &Path, db_url: &str, from: i64, to: i64) -> (Option<i32>, String) {
    let (from, to) = (from.to_string(), to.to_string());
    ccc(
        config,
        db_url,
        &["-q", "backfill", "--from", &from, "--to", &to],
    )
    .await
}

/// What both sinks hold, compared row by row; then `verify` agrees and `plan` has nothing left.
async fn sinks_agree(config: &Path, db: &common::TestDb, bucket: &str, from: i64, to: i64) {
    let pool = db.pool().await;
    let pg = pg_contents(&pool).await;
    pool.close().await;
    let pq = parquet_as_pg(bucket).await;
    assert!(!pg.is_empty());
    assert_eq!(pg.len(), pq.len(), "rows in PostgreSQL and in Parquet");
    assert!(pg == pq, "PostgreSQL and Parquet hold other values");
    let (code, text) = ccc(config, &db.url, &["verify"]).await;
    assert_eq!(code, Some(0), "{text}");
    let (from, to) = (from.to_string(), to.to_string());
    let (code, text) = ccc(
        config,
        &db.url,
        &["plan", "--format", "json", "--from", &from, "--to", &to],
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(plan["windows"].as_array().unwrap().len(), 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_its_lease_and_resumed_writes_nothing_another_worker_took_over() {
    let ids: Vec<String> = (0..3).map(|i| format!("ccc-z{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut first = common::options(&refs);
    first.revise_ms = 0;
    let emu_a = common::start(first).await;
    // The data as revised while the first worker was stopped: another seed.
    let mut revised = common::options(&refs);
    revised.revise_ms = 0;
    revised.seed = 7;
    let emu_b = common::start(revised).await;
    let to = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let from = to - 60 * DAY;
    let db = common::TestDb::create().await;
    let bucket = common::s3::server().bucket().await;
    let work = tempfile::tempdir().unwrap();
    let (cfg_a, cfg_b) = (work.path().join("a.toml"), work.path().join("b.toml"));
    // Worker A is slow (3 requests a second), so that it is stopped in the middle of its job.
    write_config(&cfg_a, &emu_a.endpoint(), &ids, &bucket, 3.0);
    write_config(&cfg_b, &emu_b.endpoint(), &ids, &bucket, 50.0);
    let a = json_worker(&cfg_a, &db.url, from, to);
    let pid = a.id().unwrap();
    stop_after_fetches(&emu_a, pid, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_when_stopped = emu_a.stats().await.unwrap().calls.len();
    // Past its lease (4 s) and a heartbeat: worker B takes the job over, against revised data.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (code, text) = quiet_backfill(&cfg_b, &db.url, from, to).await;
    assert_eq!(code, Some(0), "{text}");
    signal(pid, libc::SIGCONT);
    let out = tokio::time::timeout(Duration::from_secs(60), a.wait_with_output())
        .await
        .expect("the resumed worker ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // It stops at once: no more than the requests it had in flight.
    let after = emu_a.stats().await.unwrap().calls.len() - calls_when_stopped;
    assert!(after <= 4, "{after} requests after it was resumed");
    let summary = run_summary(&stdout);
    let dropped = summary["windows_lease_lost"].as_u64().unwrap()
        + summary["fenced_commits"].as_u64().unwrap();
    assert!(dropped > 0, "it knew it had lost its leases: {summary}");
    // Each refused commit is logged once, with the refused window's own fields (not those of
    // the window whose write found it).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut refused = BTreeSet::new();
    for line in stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("commit refused"))
        })
    {
        let field = |k: &str| {
            line[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k}: {line}"))
                .to_string()
        };
        assert!(ids.contains(&field("instance")), "{line}");
        assert_eq!(field("media_type"), "Audio");
        let window = (field("sink"), field("instance"), field("window_start"));
        assert!(refused.insert(window), "logged twice: {line}");
    }
    // So does the line that says the window failed.
    for line in stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "window failed")
    {
        let instance = line["instance"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            line["window"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{instance}/Audio ")),
            "{line}"
        );
    }
    assert_eq!(
        refused.len() as u64,
        summary["fenced_commits"].as_u64().unwrap(),
        "{stderr}"
    );
    // The sinks hold the same rows: A wrote nothing of what B took over.
    sinks_agree(&cfg_b, &db, &bucket, from, to).await;
    db.drop_db().await;
}

/// Whether a session of this test's database holds a Parquet day's lock (only the worker being
/// caught runs there); `pid` is that worker's, for the message.
async fn holds_day_lock(pool: &sqlx::PgPool, pid: u32) -> bool {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.objid > 1000 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("worker {pid}: {e}"));
    n > 0
}

/// Whether the worker's session is in the middle of a `COPY` (its rows streaming in).
async fn in_copy(pool: &sqlx::PgPool, pid: u32) -> bool {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name LIKE $1 AND state = 'active' AND query LIKE 'COPY%'",
    )
    .bind(format!("ccc-etl/{pid}-%"))
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("worker {pid}: {e}"));
    n > 0
}

type Probe = for<'a> fn(&'a sqlx::PgPool, u32) -> futures::future::BoxFuture<'a, bool>;

/// A slow worker A (3 requests a second) frozen (SIGSTOP) at an instant `caught` holds, then
/// worker B at full speed on the same job: B finishes (whatever A held is given up within a
/// lease), A resumed ends, and the sinks agree. A run that ends before A is caught is done again
/// on a fresh database.
async fn frozen_worker_delays_the_others_by_at_most_a_lease(
    prefix: &str,
    what: &str,
    caught: Probe,
) {
    let ids: Vec<String> = (0..3).map(|i| format!("{prefix}{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut opts = common::options(&refs);
    opts.revise_ms = 0;
    let emu = common::start(opts).await;
    let to = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let from = to - 60 * DAY;
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("p.toml");
    let t0 = Instant::now();
    let (a, pid, db, bucket, pool) = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "never caught a worker {what}"
        );
        let db = common::TestDb::create().await;
        let bucket = common::s3::server().bucket().await;
        write_config(&cfg, &emu.endpoint(), &ids, &bucket, 3.0);
        let pool = db.pool().await;
        let mut a = backfill(&cfg, &db.url, from, to).spawn().unwrap();
        let pid = a.id().unwrap();
        let frozen = loop {
            if caught(&pool, pid).await {
                signal(pid, libc::SIGSTOP);
                if caught(&pool, pid).await {
                    break true;
                }
                signal(pid, libc::SIGCONT);
            }
            if a.try_wait().unwrap().is_some() {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if frozen {
            break (a, pid, db, bucket, pool);
        }
        pool.close().await;
        db.drop_db().await;
    };
    write_config(&cfg, &emu.endpoint(), &ids, &bucket, 50.0);
    let started = Instant::now();
    let (code, text) = tokio::time::timeout(
        Duration::from_secs(60),
        quiet_backfill(&cfg, &db.url, from, to),
    )
    .await
    .expect("the other worker is not stalled by the frozen one");
    assert_eq!(code, Some(0), "{text}");
    let waited = started.elapsed();
    // What A held is given up within a lease (its leases lapse, and the server ends its session
    // a lease after it went idle or its statement began); B's own work at 50 requests a second
    // takes a few seconds on this machine. Two leases, a heartbeat and 20 s for a loaded machine
    // bound it, well inside the 60 s a stalled B would reach.
    let bound = Duration::from_secs(2 * 4 + 1 + 20);
    assert!(
        waited <= bound,
        "the other worker took {waited:?} ({what}), more than {bound:?}"
    );
    assert!(
        !caught(&pool, pid).await,
        "the frozen worker no longer holds it ({what})"
    );
    signal(pid, libc::SIGCONT);
    tokio::time::timeout(Duration::from_secs(60), a.wait_with_output())
        .await
        .expect("the resumed worker ends")
        .unwrap();
    pool.close().await;
    sinks_agree(&cfg, &db, &bucket, from, to).await;
    eprintln!("the second worker finished in {waited:?}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_holding_a_day_lock_delays_the_others_by_at_most_a_lease() {
    // Its transaction, idle, is ended by the server after a lease; its leases lapse as long after.
    frozen_worker_delays_the_others_by_at_most_a_lease(
        "ccc-f",
        "holding a day's lock",
        |p, pid| Box::pin(holds_day_lock(p, pid)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_in_the_middle_of_a_copy_delays_the_others_by_at_most_a_lease() {
    // Its transaction is not idle (the server waits for the COPY's rows) and holds the lease rows
    // of its windows: the statement is cancelled a lease after it began.
    frozen_worker_delays_the_others_by_at_most_a_lease(
        "ccc-c",
        "in the middle of a COPY",
        |p, pid| Box::pin(in_copy(p, pid)),
    )
    .await;
}

/// Every PostgreSQL row against the emulator's final (fully revised) values; how many rows.
async fn pg_equals_final(
    pool: &sqlx::PgPool,
    model: &ccc_etl::ccc::emulator::data::DataModel,
) -> usize {
    use ccc_etl::record::TrendRow;
    let mut n = 0;
    for t in Table::ALL {
        let sql = format!(
            "SELECT instance_id, media_type, (extract(epoch from stats_time) * 1000)::bigint AS t, {} FROM ccc.{}",
            t.count_columns().join(", "),
            t.name()
        );
        for row in sqlx::query(&sql).fetch_all(pool).await.unwrap() {
            let (i, m, at): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
            let counts: Vec<i64> = (0..t.count_columns().len())
                .map(|c| row.get::<i64, _>(3 + c))
                .collect();
            let f = model.final_rows(&i, m.parse().unwrap(), at);
            let want = match t {
                Table::Inbound => f.inbound.counts(),
                Table::Outbound => f.outbound.counts(),
                Table::Overall => f.overall.counts(),
            };
            assert_eq!(counts, want, "{t} {i} {m} {at}: not the final value");
            n += 1;
        }
    }
    n
}

/// The chaos run: four workers on one `s3://` root while the emulator revises recent hours; one
/// is killed (SIGKILL) and started again, one terminated (SIGTERM) and started again, one stopped
/// (SIGSTOP) past its lease and resumed, at seeded instants (`CCC_ETL_CHAOS_SEED` replays a run).
/// Then PostgreSQL and Parquet hold the same rows, each key once; once the emulator's values are
/// final and the range is fetched again, they hold exactly its final values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_workers_killed_terminated_and_stopped_past_their_lease_leave_both_sinks_exact() {
    let seed = env_or("CCC_ETL_CHAOS_SEED", 20261204);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ids: Vec<String> = (0..24).map(|i| format!("ccc-c{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut opts = common::options(&refs);
    // Every bucket of the range is still being revised, so a window fetched again a moment later
    // holds other values (a stale write would show).
    opts.revise_ms = 40 * DAY;
    let t0 = crate::common::now().timestamp_millis() / H * H;
    let clock = Arc::new(std::sync::atomic::AtomicI64::new(t0));
    let c = clock.clone();
    opts.clock = Arc::new(move || {
        chrono::DateTime::<Utc>::from_timestamp_millis(c.load(std::sync::atomic::Ordering::SeqCst))
            .unwrap()
    });
    let model = opts.data_model();
    let revise_ms = opts.revise_ms;
    let emu = common::start(opts).await;
    let to = t0 - H;
    let from = to - 30 * DAY;
    let db = common::TestDb::create().await;
    let bucket = common::s3::server().bucket().await;
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("p.toml");
    write_config(&cfg, &emu.endpoint(), &ids, &bucket, 20.0);
    // Each worker's stderr is read from the start, so that no worker ever blocks writing to a
    // full pipe (which would stall it, and the job, for reasons of the test's own).
    let spawn = || {
        let mut child = backfill(&cfg, &db.url, from, to).spawn().unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let said = tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text).await;
            text
        });
        (child, said)
    };
    let mut workers: Vec<(tokio::process::Child, tokio::task::JoinHandle<String>)> =
        (0..4).map(|_| spawn()).collect();
    // The emulator revises recent hours while the job runs: 20 minutes a tick.
    let ticking = clock.clone();
    let ticker = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ticking.fetch_add(20 * 60_000, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let pick = |rng: &mut rand::rngs::StdRng, lo: u64, hi: u64| {
        Duration::from_millis(rng.random_range(lo..hi))
    };
    // Which worker gets what: a seeded order.
    let mut roles = [0usize, 1, 2, 3];
    for i in (1..roles.len()).rev() {
        roles.swap(i, rng.random_range(0..=i));
    }
    let (stopped, killed, terminated) = (roles[0], roles[1], roles[2]);
    tokio::time::sleep(pick(&mut rng, 500, 2_000)).await;
    let stopped_pid = workers[stopped].0.id().unwrap();
    signal(stopped_pid, libc::SIGSTOP);
    let stopped_at = Instant::now();
    tokio::time::sleep(pick(&mut rng, 200, 1_000)).await;
    workers[killed].0.start_kill().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    workers.push(spawn());
    tokio::time::sleep(pick(&mut rng, 200, 1_000)).await;
    if let Some(pid) = workers[terminated].0.id() {
        common::send_sigterm(pid);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    workers.push(spawn());
    // Resumed past its lease (4 s) and a heartbeat.
    let lease = Duration::from_secs(4 + 1 + 1);
    tokio::time::sleep(lease.saturating_sub(stopped_at.elapsed())).await;
    signal(stopped_pid, libc::SIGCONT);
    for (i, (mut w, said)) in workers.into_iter().enumerate() {
        let status = tokio::time::timeout(Duration::from_secs(180), w.wait()).await;
        let Ok(status) = status else {
            let _ = w.kill().await;
            let text = said.await.unwrap();
            panic!("seed {seed}: worker {i} never ended; it said:\n{text}");
        };
        let text = said.await.unwrap();
        if i != killed && i != terminated && i != stopped {
            assert!(status.unwrap().success(), "seed {seed}: worker {i}: {text}");
        }
    }
    ticker.await.unwrap();
    // What the chaos left undone, one clean run does; nothing is done twice or left stale.
    let (code, text) = quiet_backfill(&cfg, &db.url, from, to).await;
    assert_eq!(code, Some(0), "seed {seed}: {text}");
    sinks_agree(&cfg, &db, &bucket, from, to).await;
    // The emulator's values final, and the range fetched again.
    clock.fetch_add(revise_ms + H, std::sync::atomic::Ordering::SeqCst);
    let (code, text) = ccc(
        &cfg,
        &db.url,
        &[
            "-q",
            "backfill",
            "--refetch",
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "seed {seed}: {text}");
    sinks_agree(&cfg, &db, &bucket, from, to).await;
    let pool = db.pool().await;
    let rows = pg_equals_final(&pool, &model).await;
    assert_eq!(
        rows,
        ids.len() * 3 * 30 * 24,
        "seed {seed}: every hour of every table"
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_worker_stopped_past_its_lease_takes_its_windows_back_and_finishes_the_job() {
    let ids: Vec<String> = (0..3).map(|i| format!("ccc-l{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut opts = common::options(&refs);
    opts.revise_ms = 0;
    let emu = common::start(opts).await;
    let to = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let from = to - 60 * DAY;
    let db = common::TestDb::create().await;
    let bucket = common::s3::server().bucket().await;
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("p.toml");
    write_config(&cfg, &emu.endpoint(), &ids, &bucket, 3.0);
    let a = json_worker(&cfg, &db.url, from, to);
    let pid = a.id().unwrap();
    // Stopped past its lease (4 s) with nobody to take its windows over, then resumed: it
    // drops them, hands them back, claims them again and finishes the job itself.
    stop_after_fetches(&emu, pid, 5).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(pid, libc::SIGCONT);
    let out = tokio::time::timeout(Duration::from_secs(120), a.wait_with_output())
        .await
        .expect("it ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = run_summary(&stdout);
    assert!(
        summary["windows_lease_lost"].as_u64().unwrap() > 0,
        "it noticed its leases had expired: {summary}"
    );
    sinks_agree(&cfg, &db, &bucket, from, to).await;
    let pool = db.pool().await;
    assert_eq!(pg_contents(&pool).await.len(), ids.len() * 3 * 60 * 24);
    pool.close().await;
    db.drop_db().await;
}

/// Rows of the lease queue deleted by hand in the middle of a two-worker job, in each state
/// (pending, leased, done): the worker that finds a window of its request missing from the queue
/// queues it again, so the job completes within a lease, a heartbeat and 30 s of the deletion,
/// and both sinks hold every hour once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_rows_deleted_mid_job_in_any_state_never_stall_the_workers() {
    let ids: Vec<String> = (0..4).map(|i| format!("ccc-{i:03}")).collect();
    let days = 150;
    let mut opts = common::options(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    opts.revise_ms = 0;
    let emu = common::start(opts).await;
    let to = crate::common::now_ms() / DAY * DAY - 2 * DAY;
    let from = to - days * DAY;
    for state in ["pending", "leased", "done"] {
        let work = tempfile::tempdir().unwrap();
        let db = common::TestDb::create().await;
        let bucket = common::s3::server().bucket().await;
        let cfg = work.path().join("job.toml");
        write_config(&cfg, &emu.endpoint(), &ids, &bucket, 20.0);
        let calls = emu.stats().await.unwrap().ok_calls().len();
        let workers: Vec<_> = (0..2)
            .map(|_| backfill(&cfg, &db.url, from, to).spawn().unwrap())
            .collect();
        // Mid-job: a few windows fetched, and rows in that state to delete.
        let pool = db.pool().await;
        let t0 = Instant::now();
        loop {
            let fetched = emu.stats().await.unwrap().ok_calls().len() - calls;
            let in_state: i64 =
                sqlx::query_scalar("SELECT count(*) FROM ccc.leases WHERE state = $1")
                    .bind(state)
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            if fetched >= 8 && in_state > 0 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{state}: never seen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deleted = sqlx::query("DELETE FROM ccc.leases WHERE state = $1")
            .bind(state)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        let at = Instant::now();
        assert!(deleted > 0, "{state}: the deletion found rows");
        for w in workers {
            let out = tokio::time::timeout(Duration::from_secs(4 + 1 + 30), w.wait_with_output())
                .await
                .unwrap_or_else(|_| panic!("{state}: a worker still runs 35 s after the deletion"))
                .unwrap();
            assert!(
                out.status.success(),
                "{state}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(at.elapsed() <= Duration::from_secs(35), "{state}");
        let rows = pg_contents(&pool).await;
        pool.close().await;
        assert_eq!(
            rows.len() as i64,
            ids.len() as i64 * 3 * days * 24,
            "{state}: every hour of every instance once in each table"
        );
        sinks_agree(&cfg, &db, &bucket, from, to).await;
        db.drop_db().await;
    }
}

/// What PostgreSQL says of workers decides, on any host: a new worker hands back at once the
/// leases of a worker PostgreSQL shows no session of (its process gone, on another host), and a
/// live worker's heartbeat ends the `COPY` of a worker that stopped heartbeating, but neither a
/// long `COPY` of another job nor one of a live worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_take_over_go_by_the_workers_sessions_in_postgres() {
    use sqlx::ConnectOptions;
    let db = common::TestDb::create().await;
    let store = db.migrated().await;
    let pool = store.pool().clone();
    // A worker gone on another host, holding a lease that runs for an hour yet.
    let gone = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO ccc.workers (worker_id, host, pid, command, session_tag) \
         VALUES ($1, 'another-host', 1, 'backfill', 'ccc-etl/1-gone')",
    )
    .bind(gone)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ccc.leases (instance_id, media_type, start_ms, end_ms, state, worker_id, \
         lease_until, attempt, planned_at) \
         VALUES ('i', 'Audio', 0, 1, 'leased', $1, now() + interval '1 hour', 1, now())",
    )
    .bind(gone)
    .execute(&pool)
    .await
    .unwrap();
    // Three sessions in a long `COPY`: another job's (no worker of this job), a frozen worker's
    // (no heartbeat for an hour), a live worker's (a heartbeat now).
    let mut copying = vec![];
    for (tag, heartbeat) in [
        ("ccc-etl/2-otherjob", None),
        ("ccc-etl/3-frozen", Some("now() - interval '1 hour'")),
        ("ccc-etl/4-live", Some("now()")),
    ] {
        if let Some(at) = heartbeat {
            sqlx::query(&format!(
                "INSERT INTO ccc.workers (worker_id, host, pid, command, session_tag, heartbeat_at) \
                 VALUES ($1, 'h', 2, 'backfill', $2, {at})"
            ))
            .bind(uuid::Uuid::new_v4())
            .bind(tag)
            .execute(&pool)
            .await
            .unwrap();
        }
        let opts = (*pool.connect_options()).clone().application_name(tag);
        copying.push((tag, opts.connect().await.unwrap()));
    }
    let mut copies = vec![];
    for (_, conn) in copying.iter_mut() {
        copies.push(
            conn.copy_in_raw("COPY ccc.overall_trend FROM STDIN")
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // The live worker heartbeats (its COPY has now run longer than the lease).
    sqlx::query("UPDATE ccc.workers SET heartbeat_at = now() WHERE session_tag = 'ccc-etl/4-live'")
        .execute(&pool)
        .await
        .unwrap();

    let c = Coordinator::register(pool.clone(), "backfill", settings(2))
        .await
        .unwrap();
    let state: String = sqlx::query_scalar("SELECT state FROM ccc.leases")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        state, "pending",
        "the gone worker's lease is handed back at once"
    );
    c.beat().await.unwrap();
    let copying: Vec<String> = sqlx::query_scalar(
        "SELECT application_name FROM pg_stat_activity \
         WHERE datname = current_database() AND state = 'active' AND query LIKE 'COPY %' \
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        copying,
        vec![
            "ccc-etl/2-otherjob".to_string(),
            "ccc-etl/4-live".to_string()
        ],
        "only the frozen worker's COPY is ended"
    );
    drop(copies);
    pool.close().await;
    db.drop_db().await;
}
