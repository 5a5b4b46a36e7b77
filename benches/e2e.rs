//! End-to-end benchmark: a full backfill from an emulator process into PostgreSQL and Parquet,
//! against the physical limit of the sink (the same rows loaded with one COPY per table), plus
//! the client's rate adaptation against a 20 QPS limit. Figures are ratios measured in the same
//! run, because the machine is shared and noisy.
//!
//! `cargo bench --bench e2e` (or `bench/run.sh`). Sizes: CCC_ETL_BENCH_INSTANCES (200),
//! CCC_ETL_BENCH_DAYS (180), CCC_ETL_BENCH_RATE_SECS (40); CCC_ETL_BENCH_SINKS
//! (`postgres,parquet`; one of them alone shows each sink's share); PostgreSQL from
//! CCC_ETL_TEST_PG (the COPY reference needs it whatever the sinks).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use ccc_etl::ccc::client::CccClient;
use ccc_etl::ccc::emulator::EmulatorStats;
use ccc_etl::ccc::ratelimit::AdaptivePacer;
use ccc_etl::config::{Config, Credentials, ParquetConfig, PostgresConfig, SchemaName};
use ccc_etl::pipeline::{Backfill, BackfillRequest, RangeStart, RunKind};
use ccc_etl::progress::Progress;
use ccc_etl::sink::Sink;
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

/// (utime + stime) seconds and peak RSS in MiB of this process, from /proc.
fn cpu_and_peak_rss() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm / 1024.0)
}

struct Emulator {
    child: Child,
    endpoint: String,
}

impl Emulator {
    fn start(instances: &[String], extra: &[&str]) -> Emulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ccc-etl"))
            .args([
                "-q",
                "emulator",
                "--listen",
                "127.0.0.1:0",
                "--instances",
                &instances.join(","),
            ])
            .args(extra)
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
            .stdout(Stdio::piped())
            .spawn()
            .expect("emulator starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoint = line.trim().trim_start_matches("listening on ").to_string();
        Emulator { child, endpoint }
    }

    async fn stats(&self) -> EmulatorStats {
        let bytes = reqwest::get(format!("{}/_emulator/stats", self.endpoint))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fresh_database() -> (String, String) {
    let server = std::env::var("CCC_ETL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL reachable");
    let name = format!("ccc_etl_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    (format!("{server}/{name}"), name)
}

async fn drop_database(name: &str) {
    let server = std::env::var("CCC_ETL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}

/// Loads every row the pipeline wrote into a second schema with one COPY per table: the
/// physical limit of the sink for the same rows.
async fn copy_reference(url: &str) -> f64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("CREATE SCHEMA copyref")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut payloads = vec![];
    for t in ccc_etl::record::Table::ALL {
        sqlx::query(&format!(
            "CREATE TABLE copyref.{0} (LIKE ccc.{0} INCLUDING ALL)",
            t.name()
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        // Export outside the timed part.
        let mut out = Vec::new();
        let mut copy = conn
            .copy_out_raw(&format!("COPY ccc.{} TO STDOUT", t.name()))
            .await
            .unwrap();
        use futures::TryStreamExt;
        while let Some(chunk) = copy.try_next().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
        drop(copy);
        payloads.push((t.name(), out));
    }
    let start = Instant::now();
    for (name, data) in payloads {
        let mut copy = conn
            .copy_in_raw(&format!("COPY copyref.{name} FROM STDIN"))
            .await
            .unwrap();
        copy.send(data).await.unwrap();
        copy.finish().await.unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// Upserts every Parquet row into PostgreSQL (for the COPY reference of a Parquet-only run).
async fn load_from_parquet(store: &ccc_etl::sink::postgres::PgStore, root: &std::path::Path) {
    use ccc_etl::record::{InboundRow, OutboundRow, OverallRow, Table, WindowBatch, WindowKey};
    use ccc_etl::sink::parquet::read_file;
    use std::collections::BTreeMap;
    let sink = ccc_etl::sink::postgres::PostgresSink::new(store.clone());
    let mut series: BTreeMap<(String, String), WindowBatch> = BTreeMap::new();
    for table in Table::ALL {
        for day in std::fs::read_dir(root.join(table.name())).unwrap() {
            let p = day.unwrap().path().join(ccc_etl::sink::parquet::DATA_FILE);
            for r in read_file(&p, table).unwrap() {
                let b = series
                    .entry((r.instance_id.clone(), r.media_type.clone()))
                    .or_insert_with(|| WindowBatch {
                        final_end_ms: None,
                        key: WindowKey {
                            instance_id: r.instance_id.clone(),
                            media_type: r.media_type.parse().unwrap(),
                            start_ms: 0,
                            end_ms: 4_102_444_800_000,
                        },
                        request_id: r.request_id.clone(),
                        fetched_at: chrono::DateTime::from_timestamp_millis(r.fetched_at).unwrap(),
                        attempts: 1,
                        inbound: vec![],
                        outbound: vec![],
                        overall: vec![],
                        extra: Default::default(),
                    });
                let (t, c) = (r.stats_time, &r.counts);
                match table {
                    Table::Inbound => b.inbound.push(InboundRow {
                        stats_time: t,
                        total_calls: c[0],
                        calls_handled: c[1],
                        calls_queued: c[2],
                        calls_abandoned_in_ivr: c[3],
                        calls_abandoned_in_queue: c[4],
                        calls_abandoned_in_ring: c[5],
                    }),
                    Table::Outbound => b.outbound.push(OutboundRow {
                        stats_time: t,
                        total_calls: c[0],
                        calls_answered: c[1],
                    }),
                    Table::Overall => b.overall.push(OverallRow {
                        stats_time: t,
                        max_logged_in_agents: c[0],
                    }),
                }
            }
        }
    }
    let run = ccc_etl::sink::RunContext::new(
        uuid::Uuid::new_v4(),
        std::sync::Arc::new(ccc_etl::ledger::MemoryLedger::default()),
    );
    for b in series.values() {
        sink.commit(b, &run).await.unwrap();
    }
}

async fn end_to_end(instances: usize, days: i64) {
    let ids: Vec<String> = (0..instances).map(|i| format!("bench-{i:04}")).collect();
    let emu = Emulator::start(&ids, &["--revise-hours", "0"]);
    let (url, db) = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_emulator(&emu.endpoint, ids.clone());
    cfg.source.max_qps = 1_000_000.0;
    cfg.source.concurrency = 8;
    let sink_names =
        std::env::var("CCC_ETL_BENCH_SINKS").unwrap_or_else(|_| "postgres,parquet".into());
    if sink_names.contains("postgres") {
        cfg.postgres = Some(PostgresConfig {
            url: Some(SecretString::from(url.clone())),
            schema: SchemaName::parse("ccc").unwrap(),
        });
    }
    if sink_names.contains("parquet") {
        cfg.parquet = Some(ParquetConfig::at(dir.path().to_path_buf()));
    }
    let (sinks, ledger): (Vec<Arc<dyn Sink>>, _) =
        ccc_etl::commands::open_sinks(&cfg).await.unwrap();
    let client = CccClient::new(
        &cfg.source,
        Credentials::new(KEY, SECRET, None),
        Arc::new(AdaptivePacer::new(cfg.source.max_qps)),
    )
    .unwrap();
    let now = Utc::now().timestamp_millis();
    let engine = Backfill::new(
        cfg.clone(),
        Arc::new(client),
        sinks,
        ledger,
        Arc::new(move || now),
        Progress::hidden(),
    );
    let req = BackfillRequest {
        instances: ids,
        from: RangeStart::At(now - days * 86_400_000),
        to_ms: now,
        refetch: false,
        strict_horizon: false,
        kind: RunKind::Backfill,
        lookback_ms: None,
    };
    let (cpu0, _) = cpu_and_peak_rss();
    let t0 = Instant::now();
    let summary = engine.run(&req).await.unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = cpu_and_peak_rss();
    assert_eq!(summary.exit_code(), 0, "{}", summary.render());
    let rows: u64 = summary.rows.values().sum();
    if cfg.postgres.is_none() {
        // The reference needs the rows in PostgreSQL: load them there, outside the timed part.
        let store = ccc_etl::commands::connect_postgres(&Config {
            postgres: Some(PostgresConfig {
                url: Some(SecretString::from(url.clone())),
                schema: SchemaName::parse("ccc").unwrap(),
            }),
            ..cfg.clone()
        })
        .await
        .unwrap()
        .unwrap();
        load_from_parquet(&store, dir.path()).await;
    }
    let copy = copy_reference(&url).await;
    println!(
        "e2e sinks={sink_names} instances={instances} days={days}: windows={} rows={rows} wall={wall:.1}s windows/s={:.1} rows/s={:.0} cpu={:.1}s peak_rss={rss:.0}MiB copy_reference={copy:.2}s ratio_to_copy={:.2}",
        summary.windows_ok,
        summary.windows_ok as f64 / wall,
        rows as f64 / wall,
        cpu1 - cpu0,
        wall / copy
    );
    drop(engine);
    drop_database(&db).await;
}

/// One backfill of the given size into a fresh database (PostgreSQL sink only, local Parquet
/// would dominate nothing here), claiming its windows from PostgreSQL or not; the wall time.
async fn one_run(emu: &Emulator, ids: &[String], days: i64, coordinated: bool) -> f64 {
    let (url, db) = fresh_database().await;
    let mut cfg = Config::for_emulator(&emu.endpoint, ids.to_vec());
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
    let (sinks, ledger): (Vec<Arc<dyn Sink>>, _) =
        ccc_etl::commands::open_sinks(&cfg).await.unwrap();
    let pacer = Arc::new(AdaptivePacer::new(cfg.source.max_qps));
    let client = CccClient::new(
        &cfg.source,
        Credentials::new(KEY, SECRET, None),
        pacer.clone(),
    )
    .unwrap();
    let now = Utc::now().timestamp_millis();
    let mut engine = Backfill::new(
        cfg.clone(),
        Arc::new(client),
        sinks,
        ledger,
        Arc::new(move || now),
        Progress::hidden(),
    );
    let mut heartbeat = None;
    if coordinated {
        let settings = ccc_etl::coord::LeaseSettings {
            lease: std::time::Duration::from_secs(60),
            heartbeat: std::time::Duration::from_secs(10),
        };
        let c = ccc_etl::coord::Coordinator::register(store.pool().clone(), "backfill", settings)
            .await
            .unwrap()
            .with_pacers(vec![pacer], cfg.source.max_qps);
        heartbeat = Some((c.clone(), c.spawn_heartbeat()));
        engine = engine.with_coordinator(c);
    }
    let req = BackfillRequest {
        instances: ids.to_vec(),
        from: RangeStart::At(now - days * 86_400_000),
        to_ms: now,
        refetch: false,
        strict_horizon: false,
        kind: RunKind::Backfill,
        lookback_ms: None,
    };
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&mut admin).await.unwrap();
    let t0 = Instant::now();
    let summary = engine.run(&req).await.unwrap();
    if let Some((c, h)) = heartbeat {
        c.stop().await.unwrap();
        h.abort();
    }
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(summary.exit_code(), 0, "{}", summary.render());
    drop(engine);
    drop(admin);
    store.pool().close().await;
    drop_database(&db).await;
    wall
}

/// A single process claiming its windows from PostgreSQL against the same process not claiming
/// them, alternating the order over the rounds: what several-worker support costs one worker.
async fn coordination_overhead(instances: usize, days: i64, rounds: usize) {
    let ids: Vec<String> = (0..instances).map(|i| format!("bench-{i:04}")).collect();
    let emu = Emulator::start(&ids, &["--revise-hours", "0"]);
    let (mut plain, mut claimed, mut ratio) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut t = [0.0; 2];
        for coordinated in order {
            t[usize::from(coordinated)] = one_run(&emu, &ids, days, coordinated).await;
        }
        println!("round {round}: plain {:.2}s, claimed {:.2}s", t[0], t[1]);
        plain.push(t[0]);
        claimed.push(t[1]);
        ratio.push(t[1] / t[0]);
    }
    let mmm = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (p, c, r) = (mmm(&mut plain), mmm(&mut claimed), mmm(&mut ratio));
    println!(
        "coordination instances={instances} days={days} rounds={rounds}: plain min/median/max \
         {:.2}/{:.2}/{:.2}s, claimed {:.2}/{:.2}/{:.2}s, ratio claimed/plain {:.2}/{:.2}/{:.2}",
        p.0, p.1, p.2, c.0, c.1, c.2, r.0, r.1, r.2
    );
}

async fn rate_adaptation(secs: u64) {
    let ids: Vec<String> = (0..50).map(|i| format!("rate-{i:02}")).collect();
    let emu = Emulator::start(&ids, &["--throttle-qps", "20"]);
    let mut cfg = Config::for_emulator(&emu.endpoint, ids.clone());
    cfg.source.max_qps = 50.0;
    cfg.source.concurrency = 8;
    cfg.source.max_attempts = 50;
    let client = Arc::new(
        CccClient::new(
            &cfg.source,
            Credentials::new(KEY, SECRET, None),
            Arc::new(AdaptivePacer::new(cfg.source.max_qps)),
        )
        .unwrap(),
    );
    let now = Utc::now().timestamp_millis();
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    let mut tasks = vec![];
    for w in 0..cfg.source.concurrency {
        let (client, ids) = (client.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let req = ccc_etl::ccc::client::TrendingRequest {
                    instance_id: ids[i % ids.len()].clone(),
                    media_type: ccc_etl::record::MediaType::Audio,
                    start_ms: now - (i as i64 % 170 + 2) * 86_400_000,
                    end_ms: now - (i as i64 % 170 + 1) * 86_400_000,
                };
                let _ = client.get_trending_report(&req).await;
                i += cfg.source.concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = emu.stats().await;
    let calls = &stats.calls;
    let first = calls.first().map(|c| c.received_ms).unwrap_or(0);
    let steady: Vec<_> = calls
        .iter()
        .filter(|c| c.received_ms >= first + 10_000)
        .collect();
    let span = (steady.last().map(|c| c.received_ms).unwrap_or(first)
        - steady.first().map(|c| c.received_ms).unwrap_or(first)) as f64
        / 1000.0;
    let ok = steady.iter().filter(|c| c.code == "OK").count() as f64;
    let throttled = steady
        .iter()
        .filter(|c| c.code.starts_with("Throttling"))
        .count() as f64;
    println!(
        "rate limit 20 qps, max_qps 50, after the first 10 s: sustained {:.1} ok/s ({:.2} of the limit), throttled {:.1}% of {} requests",
        ok / span.max(1e-9),
        ok / span.max(1e-9) / 20.0,
        100.0 * throttled / steady.len().max(1) as f64,
        steady.len()
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects one part.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if filter.is_empty() || "e2e".contains(&filter) {
            let instances = env_or("CCC_ETL_BENCH_INSTANCES", 200) as usize;
            let days = env_or("CCC_ETL_BENCH_DAYS", 180) as i64;
            end_to_end(instances, days).await;
        }
        if filter.is_empty() || "coordination".contains(&filter) {
            let instances = env_or("CCC_ETL_BENCH_INSTANCES", 200) as usize;
            let days = env_or("CCC_ETL_BENCH_DAYS", 180) as i64;
            coordination_overhead(instances, days, env_or("CCC_ETL_BENCH_ROUNDS", 3) as usize)
                .await;
        }
        if filter.is_empty() || "rate".contains(&filter) {
            rate_adaptation(env_or("CCC_ETL_BENCH_RATE_SECS", 40)).await;
        }
    });
}
