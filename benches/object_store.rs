//! The same backfill into a Parquet root on a local disk, in memory (`object_store`'s in-memory
//! store: the object-storage code path with no store behind it), on an S3 server (moto on
//! loopback), and on that server through a proxy that delivers every chunk 15 ms after it read
//! it, each way (a bucket a 30 ms round trip away), in the same process and the same run. Each
//! run starts from a fresh database and an empty root after a `CHECKPOINT`; the targets rotate
//! their order from round to round. Parquet only, with the PostgreSQL ledger for all (an
//! object-storage root needs it), so the difference is the store.
//!
//! The in-memory run is the object-storage path (the day locks and the manifest in PostgreSQL,
//! the writes in flight) without a store's own cost; moto's cost is shown apart by creating the
//! S3 run's files again, alone, with the same client (its "replay"); the proxy run against the
//! S3 run is the cost of the round trips.
//!
//! `CCC_ETL_BENCH_SCALES` (instances, default `40,200`), `CCC_ETL_BENCH_DAYS` (180),
//! `CCC_ETL_BENCH_ROUNDS` (3), `CCC_ETL_BENCH_DELAY_MS` (15), `CCC_ETL_BENCH_REPORT` (a file the
//! markdown table rows are appended to). Needs PostgreSQL (CCC_ETL_TEST_PG, as for the tests)
//! and the S3 test server, installed on first use into `target/s3-venv`.

mod common;

#[allow(dead_code)]
#[path = "../tests/it/common/s3.rs"]
mod s3;

#[allow(dead_code)]
#[path = "../tests/it/common/latency.rs"]
mod latency;

use std::sync::Arc;
use std::time::Instant;

use ccc_etl::ccc::client::CccClient;
use ccc_etl::ccc::emulator::{self, EmulatorOptions};
use ccc_etl::ccc::ratelimit::AdaptivePacer;
use ccc_etl::config::{Config, ObjectUrl, PostgresConfig, SchemaName, StoreKind};
use ccc_etl::credentials::Credentials;
use ccc_etl::ledger::Ledger;
use ccc_etl::ledger::PgLedger;
use ccc_etl::pipeline::{BackfillRequest, Engine, RangeStart, RunKind};
use ccc_etl::progress::Progress;
use ccc_etl::sink::Sink;
use ccc_etl::sink::parquet::{ObjectRoot, ParquetSink};
use chrono::Utc;
use secrecy::SecretString;
use sqlx::Connection;

use common::{env_or, mmm, report};

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret";

fn server() -> String {
    std::env::var("CCC_ETL_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&format!("{}/postgres", server()))
        .await
        .expect("PostgreSQL reachable")
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Local,
    Memory,
    S3,
    /// Through the latency proxy at this endpoint.
    Proxy,
}

const TARGETS: [Target; 4] = [Target::Local, Target::Memory, Target::S3, Target::Proxy];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Local => "local",
            Target::Memory => "memory",
            Target::S3 => "s3",
            Target::Proxy => "s3 + proxy",
        }
    }
}

/// One timed backfill into a fresh database and an empty root; returns (seconds, rows).
async fn one_run(
    target: Target,
    endpoint: &str,
    proxy: &str,
    ids: &[String],
    days: i64,
) -> (f64, u64, Option<f64>) {
    let name = format!("ccc_etl_bench_{}", uuid::Uuid::new_v4().simple());
    let mut a = admin().await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut a)
        .await
        .unwrap();
    let url = format!("{}/{name}", server());
    let mut cfg = Config::for_emulator(endpoint, ids.to_vec());
    cfg.source.max_qps = 1_000_000.0;
    cfg.source.concurrency = 8;
    cfg.postgres = Some(PostgresConfig {
        url: Some(SecretString::from(url.clone())),
        schema: SchemaName::parse("ccc").unwrap(),
    });
    let store = ccc_etl::commands::connect_postgres(&cfg)
        .await
        .unwrap()
        .unwrap();
    let tz = cfg.pipeline.timezone;
    let dir = tempfile::tempdir().unwrap();
    let mut bucket_used = None;
    let sink: Arc<dyn Sink> = match target {
        Target::Local => Arc::new(ParquetSink::new(dir.path(), tz).unwrap()),
        Target::Memory | Target::S3 | Target::Proxy => {
            let s3 = s3::server();
            let bucket = s3.bucket().await;
            let url = ObjectUrl {
                kind: StoreKind::S3,
                bucket: bucket.clone(),
                prefix: "warehouse".into(),
            };
            let objects: Arc<dyn object_store::ObjectStore> = match target {
                Target::Memory => Arc::new(object_store::memory::InMemory::new()),
                Target::Proxy => s3.store_via(proxy, &bucket, true),
                _ => s3.store(&bucket, true),
            };
            let root = ObjectRoot::with_store(objects, url, true);
            bucket_used = Some(bucket);
            Arc::new(
                ParquetSink::open_object(root, tz, store.pool(), Default::default())
                    .await
                    .unwrap(),
            )
        }
    };
    let ledger: Arc<dyn Ledger> = Arc::new(PgLedger::new(store.clone()));
    let client = CccClient::new(
        &cfg.source,
        Credentials::new(KEY, SECRET, None),
        Arc::new(AdaptivePacer::new(cfg.source.max_qps)),
    )
    .unwrap();
    let now = Utc::now().timestamp_millis();
    let engine = Engine::new(
        cfg.clone(),
        Arc::new(client),
        vec![sink],
        ledger,
        Arc::new(move || now),
        Progress::hidden(),
    );
    let req = BackfillRequest {
        instances: ids.to_vec(),
        from: RangeStart::At(now - days * 86_400_000),
        to_ms: now,
        refetch: false,
        strict_horizon: false,
        kind: RunKind::Backfill,
        lookback_ms: None,
    };
    sqlx::query("CHECKPOINT").execute(&mut a).await.unwrap();
    let t0 = Instant::now();
    let summary = engine.run(&req).await.unwrap();
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(summary.exit_code(), 0, "{}", summary.render());
    let rows: u64 = summary.rows.values().sum();
    drop(engine);
    store.pool().close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut a)
        .await;
    let replayed = match (target, bucket_used) {
        (Target::S3, Some(bucket)) => Some(replay(&bucket).await),
        _ => None,
    };
    (wall, rows, replayed)
}

/// moto's own cost of a run's writes: the day files the S3 run wrote, created again under
/// another prefix with the same client, conditional create and 8 in flight, and no ccc-etl
/// around them (the bodies read first, untimed). Seconds.
async fn replay(bucket: &str) -> f64 {
    use futures::{StreamExt, TryStreamExt};
    use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
    let store = s3::server().store(bucket, true);
    let files: Vec<_> = store
        .list(Some(&"warehouse".into()))
        .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".parquet")))
        .try_collect()
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for f in &files {
        let body = store.get(&f.location).await.unwrap().bytes().await.unwrap();
        let key = object_store::path::Path::from(format!("replay/{}", f.location));
        bodies.push((key, body));
    }
    let t0 = Instant::now();
    futures::stream::iter(bodies)
        .map(|(key, body)| {
            let store = store.clone();
            async move {
                let mode = PutOptions::from(PutMode::Create);
                store
                    .put_opts(&key, PutPayload::from(body), mode)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    t0.elapsed().as_secs_f64()
}

/// One scale's rounds: every target once per round, in rotating order. Returns each target's
/// wall times, and the replays of the S3 runs' writes last.
async fn scale(instances: usize, days: i64, rounds: usize, proxy: &str) -> Vec<Vec<f64>> {
    let ids: Vec<String> = (0..instances).map(|i| format!("bench-{i:04}")).collect();
    let mut opts = EmulatorOptions::new(ids.clone(), KEY, SECRET);
    opts.revise_ms = 0;
    let emu = emulator::spawn(opts).await.unwrap();
    let mut times = vec![vec![]; TARGETS.len() + 1];
    for round in 0..rounds {
        // Rotate the order, so no target always runs on a warmer machine.
        for k in 0..TARGETS.len() {
            let i = (round + k) % TARGETS.len();
            let (wall, rows, replayed) =
                one_run(TARGETS[i], &emu.endpoint(), proxy, &ids, days).await;
            println!(
                "instances {instances} round {round}: {:<10} {wall:.2}s ({rows} rows)",
                TARGETS[i].name()
            );
            times[i].push(wall);
            if let Some(r) = replayed {
                println!(
                    "instances {instances} round {round}: its writes replayed to moto {r:.2}s"
                );
                times[TARGETS.len()].push(r);
            }
        }
    }
    emu.shutdown().await;
    times
}

fn triple(v: &[f64]) -> String {
    let (a, b, c) = mmm(v);
    format!("{b:.2} ({a:.2}-{c:.2})")
}

fn ratios(num: &[f64], den: &[f64]) -> Vec<f64> {
    num.iter().zip(den).map(|(n, d)| n / d).collect()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let scales: Vec<usize> = std::env::var("CCC_ETL_BENCH_SCALES")
            .unwrap_or_else(|_| "40,200".into())
            .split(',')
            .map(|s| s.trim().parse().expect("CCC_ETL_BENCH_SCALES: numbers"))
            .collect();
        let days = env_or("CCC_ETL_BENCH_DAYS", 180) as i64;
        let rounds = env_or("CCC_ETL_BENCH_ROUNDS", 3) as usize;
        let delay = std::time::Duration::from_millis(env_or("CCC_ETL_BENCH_DELAY_MS", 15));
        let s3 = s3::server();
        let upstream = s3.endpoint.trim_start_matches("http://").parse().unwrap();
        let proxy = latency::LatencyProxy::start(upstream, delay).await;
        let mut table = String::new();
        for instances in scales {
            let t = scale(instances, days, rounds, &proxy.endpoint()).await;
            let (local, memory, s3, via, moto) = (&t[0], &t[1], &t[2], &t[3], &t[4]);
            let line = format!(
                "| {instances} x {days} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                triple(local),
                triple(memory),
                triple(s3),
                triple(moto),
                triple(via),
                triple(&ratios(memory, local)),
                triple(&ratios(s3, local)),
                triple(&ratios(via, s3)),
            );
            print!("object_store {line}");
            table.push_str(&line);
        }
        report(&table);
    });
}
