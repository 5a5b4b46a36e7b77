//! Several workers, one job: `ccc-etl backfill` processes started together against one
//! PostgreSQL share the windows through leases, within one QPS budget; a killed worker's windows
//! are taken over; a worker whose lease was taken over cannot commit; concurrent claims never hand
//! one window to two workers.
//!
//! The three-worker runs default to 30 instances x 60 days so that `cargo test` stays short; the
//! issue's scale is `CCC_ETL_WORKERS_INSTANCES=200 CCC_ETL_WORKERS_DAYS=180 cargo test --release
//! --test workers`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccc_etl::coord::{Coordinator, LeaseSettings};
use ccc_etl::record::{MediaType, OverallRow, Table, WindowBatch, WindowKey};
use ccc_etl::sink::RunContext;
use ccc_etl::sink::parquet::Root;
use chrono::Utc;
use common::{DAY, H};
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
    let list: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    std::fs::write(
        path,
        format!(
            "[source]\nendpoint = \"{endpoint}\"\nmax_qps = {qps:.1}\nconcurrency = 4\n\
             backoff_base_ms = 50\nbackoff_max_ms = 1000\n\
             [pipeline]\ninstances = [{}]\nlease_secs = 4\nheartbeat_secs = 1\n\
             [postgres]\nschema = \"ccc\"\n[parquet]\nroot = \"s3://{bucket}/warehouse\"\n",
            list.join(", ")
        ),
    )
    .unwrap();
}

fn backfill(config: &Path, db_url: &str, from: i64, to: i64) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccc-etl"));
    c.args(["-q", "--config"])
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

/// Every PostgreSQL row without fetch metadata, sorted.
async fn pg_contents(pool: &sqlx::PgPool) -> Vec<String> {
    let mut out = vec![];
    for t in Table::ALL {
        let sql = format!(
            "SELECT concat_ws('|', instance_id, media_type, (extract(epoch from stats_time) * 1000)::bigint, {}) FROM ccc.{} ORDER BY 1",
            t.count_columns().join(", "),
            t.name()
        );
        for row in sqlx::query(&sql).fetch_all(pool).await.unwrap() {
            out.push(format!("{t}|{}", row.get::<String, _>(0)));
        }
    }
    out
}

/// Every Parquet row without fetch metadata, sorted.
async fn parquet_contents(bucket: &str) -> Vec<String> {
    let s3 = common::s3::server();
    let url = ccc_etl::config::ObjectUrl {
        kind: ccc_etl::config::StoreKind::S3,
        bucket: bucket.into(),
        prefix: "warehouse".into(),
    };
    let root = Root::Object(Arc::new(common::s3::object_root(s3, &url)));
    let mut out = vec![];
    for f in root.list().await.unwrap() {
        for r in root.read_rows(f.table, f.day).await.unwrap() {
            out.push(format!(
                "{}|{}|{}|{}|{}|{:?}",
                f.table, f.day, r.instance_id, r.media_type, r.stats_time, r.counts
            ));
        }
    }
    out.sort();
    out
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
    let to = Utc::now().timestamp_millis() / H * H - 4 * H;
    let from = to - days * DAY;
    let work = tempfile::tempdir().unwrap();
    let db = common::TestDb::create().await;
    let bucket = common::s3::server().bucket().await;
    let cfg = work.path().join("reference.toml");
    write_config(&cfg, &emu.endpoint(), &ids, &bucket, 20.0);
    let out = backfill(&cfg, &db.url, from, to).output().await.unwrap();
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
    let started = Utc::now().timestamp_millis();
    let children: Vec<_> = (0..3)
        .map(|_| backfill(&cfg, &db.url, job.from, job.to).spawn().unwrap())
        .collect();
    for c in children {
        let out = c.wait_with_output().await.unwrap();
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
    let killed_at = Utc::now().timestamp_millis();
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
        let out = c.wait_with_output().await.unwrap();
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
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ccc-etl"))
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
        fetched_at: Utc::now(),
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
    let ledger = Arc::new(ccc_etl::sink::postgres::PgLedger::new(store.clone()));
    let zombie = Coordinator::register(pool.clone(), "backfill", settings(60))
        .await
        .unwrap();
    let newer = Coordinator::register(pool.clone(), "backfill", settings(60))
        .await
        .unwrap();
    zombie
        .enqueue(std::slice::from_ref(&w), Utc::now())
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
        coordinator: Some(c.clone()),
    };
    sink.commit(&batch(2, "newer"), &ctx(&newer)).await.unwrap();
    let refused = sink
        .commit(&batch(1, "zombie"), &ctx(&zombie))
        .await
        .unwrap_err();
    assert!(refused.message.contains("fenced"), "{refused:?}");
    assert!(!refused.retryable);
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
            &ccc_etl::ledger::SinkId::new(ccc_etl::sink::SinkKind::Parquet, "root"),
            ccc_etl::sink::Written::durable(&batch(1, "zombie"), Default::default()),
        )
        .await;
    assert!(recorded.durable.is_empty());
    assert!(recorded.failed[0].1.message.contains("fenced"));
    assert_eq!(zombie.fenced(), 2);
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
    workers[0].enqueue(&all, Utc::now()).await.unwrap();
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
    c.enqueue(&all, Utc::now()).await.unwrap();
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
        ("held leases", ccc_etl::sink::postgres::HELD_LEASES),
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
