//! The same backfill into a Parquet root on an S3 server (moto on loopback) and into a local
//! root, in the same process and the same run: the ratio of their wall times, over several rounds
//! in alternating order, each from a fresh database and an empty root after a `CHECKPOINT`.
//! Parquet only, with the PostgreSQL ledger for both (an object-storage root needs it), so the
//! difference is the store.
//!
//! `CCC_ETL_BENCH_INSTANCES` (default 200), `CCC_ETL_BENCH_DAYS` (180), `CCC_ETL_BENCH_ROUNDS`
//! (3). Needs PostgreSQL (CCC_ETL_TEST_PG, as for the tests) and the S3 test server, installed
//! on first use into `target/s3-venv`.

#[allow(dead_code)]
#[path = "../tests/it/common/s3.rs"]
mod s3;

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

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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
    S3,
}

/// One timed backfill into a fresh database and an empty root; returns (seconds, rows).
async fn one_run(target: Target, endpoint: &str, ids: &[String], days: i64) -> (f64, u64) {
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
    let sink: Arc<dyn Sink> = match target {
        Target::Local => Arc::new(ParquetSink::new(dir.path(), tz).unwrap()),
        Target::S3 => {
            let s3 = s3::server();
            let bucket = s3.bucket().await;
            let url = ObjectUrl {
                kind: StoreKind::S3,
                bucket: bucket.clone(),
                prefix: "warehouse".into(),
            };
            let root = ObjectRoot::with_store(s3.store(&bucket, true), url, true);
            Arc::new(
                ParquetSink::open_object(root, tz, store.pool())
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
    (wall, rows)
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let instances = env_or("CCC_ETL_BENCH_INSTANCES", 200) as usize;
        let days = env_or("CCC_ETL_BENCH_DAYS", 180) as i64;
        let rounds = env_or("CCC_ETL_BENCH_ROUNDS", 3) as usize;
        let ids: Vec<String> = (0..instances).map(|i| format!("bench-{i:04}")).collect();
        let mut opts = EmulatorOptions::new(ids.clone(), KEY, SECRET);
        opts.revise_ms = 0;
        let emu = emulator::spawn(opts).await.unwrap();
        s3::server();
        let (mut local, mut remote, mut ratios) = (vec![], vec![], vec![]);
        for round in 0..rounds {
            // Alternate the order, so neither always runs on a warmer machine.
            let order = if round % 2 == 0 {
                [Target::Local, Target::S3]
            } else {
                [Target::S3, Target::Local]
            };
            let mut t = [0.0; 2];
            for target in order {
                let (wall, rows) = one_run(target, &emu.endpoint(), &ids, days).await;
                let i = usize::from(target == Target::S3);
                t[i] = wall;
                println!(
                    "round {round}: {} {wall:.2}s ({rows} rows)",
                    if i == 1 { "s3   " } else { "local" }
                );
            }
            local.push(t[0]);
            remote.push(t[1]);
            ratios.push(t[1] / t[0]);
        }
        let (l, r, q) = (stats(&local), stats(&remote), stats(&ratios));
        println!(
            "object_store instances={instances} days={days} rounds={rounds}: local min/median/max \
             {:.2}/{:.2}/{:.2}s, s3 (moto) {:.2}/{:.2}/{:.2}s, ratio s3/local {:.2}/{:.2}/{:.2}",
            l.0, l.1, l.2, r.0, r.1, r.2, q.0, q.1, q.2
        );
        emu.shutdown().await;
    });
}
