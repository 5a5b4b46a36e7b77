//! End-to-end benchmarks, every figure a ratio to a reference measured in the same run (the
//! machine is shared and noisy):
//!
//! - `e2e`: a full backfill from an emulator process into PostgreSQL and/or Parquet, timed as a
//!   `ccc-etl backfill` process (start-up and exit included) and as the engine in this process,
//!   against the same rows loaded with one `COPY` per table. Every phase starts from the same
//!   state (a fresh migrated database, an empty Parquet root, a `CHECKPOINT`), the three phases'
//!   order rotates from round to round, and each figure is min / median / max over the rounds.
//! - `coordination`: one worker claiming its windows from PostgreSQL against the same run
//!   unclaimed.
//! - `collation` (only when named): the COPY reference into the key columns as migrated against
//!   the same columns in the "C" collation.
//! - `rate`: the client's rate adaptation against a 20 QPS limit.
//! - `report`: `ccc-etl report` of a backfilled job against `ccc-etl status` on it.
//!
//! `cargo bench --bench e2e [-- e2e|coordination|rate|report]` (or `bench/run.sh`). Sizes:
//! CCC_ETL_BENCH_SCALES (instances per scale, `40,200`), CCC_ETL_BENCH_DAYS (180),
//! CCC_ETL_BENCH_ROUNDS (3), CCC_ETL_BENCH_SINKS (`both,postgres,parquet`),
//! CCC_ETL_BENCH_INSTANCES (200, coordination), CCC_ETL_BENCH_RATE_SECS (40);
//! CCC_ETL_BENCH_REPORT: a file the e2e table rows are appended to. PostgreSQL from
//! CCC_ETL_TEST_PG (the COPY reference needs it whatever the sinks).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccc_etl::ccc::client::CccClient;
use ccc_etl::ccc::emulator::EmulatorStats;
use ccc_etl::ccc::ratelimit::AdaptivePacer;
use ccc_etl::config::{Config, PostgresConfig, SchemaName};
use ccc_etl::coord::{Coordinator, LeaseSettings};
use ccc_etl::credentials::Credentials;
use ccc_etl::pipeline::{BackfillRequest, Engine, RangeStart, RunKind, thousands};
use ccc_etl::progress::Progress;
use ccc_etl::sink::Sink;
use chrono::Utc;
use secrecy::SecretString;
use sqlx::Connection;

use common::{env_or, mmm, report};

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret";

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

/// A timed phase of one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `ccc-etl backfill` as a user runs it: a process, start-up and exit included.
    Process,
    /// The engine in this process (`Engine::run`), sinks already open.
    Engine,
    /// The reference: the same rows loaded with one text `COPY` per table.
    Copy,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Process => "process",
            Phase::Engine => "engine",
            Phase::Copy => "copy",
        }
    }
}

/// What one timed phase measured.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    wall: f64,
    /// CPU seconds (the child's for a process; this process's for the engine).
    cpu: f64,
    /// Peak RSS in MiB (the child's; not measured in-process).
    rss: f64,
}

fn fmt_mmm(v: &[f64], digits: usize) -> String {
    let (a, b, c) = mmm(v);
    format!("{a:.digits$} / {b:.digits$} / {c:.digits$}")
}

/// The sink sections of one configuration: "both", "postgres" or "parquet".
fn sinks_toml(sinks: &str, root: &std::path::Path) -> String {
    let mut t = String::new();
    if sinks != "parquet" {
        t.push_str("[postgres]\nschema = \"ccc\"\n");
    }
    if sinks != "postgres" {
        t.push_str(&format!(
            "[parquet]\nroot = {:?}\n",
            root.display().to_string()
        ));
    }
    t
}

/// A registered worker and its heartbeat.
type Worker = Option<(Arc<Coordinator>, tokio::task::JoinHandle<()>)>;

/// The engine in the benchmark's process, set up as `ccc-etl backfill` sets it up.
struct InProcess;

impl InProcess {
    /// An engine over `cfg` whose clock stands at `now_ms`, its sinks open; with `claim`, it
    /// registers as a worker in PostgreSQL and claims its windows there, as the binary does
    /// (pacer shared with the coordinator, a first heartbeat, the heartbeat running).
    async fn start(cfg: &Config, now_ms: i64, claim: bool) -> (Engine, Worker) {
        let (sinks, ledger): (Vec<Arc<dyn Sink>>, _) =
            ccc_etl::commands::open_sinks(cfg).await.unwrap();
        let pacer = Arc::new(AdaptivePacer::new(cfg.source.max_qps));
        let client = CccClient::new(
            &cfg.source,
            Credentials::new(KEY, SECRET, None),
            pacer.clone(),
        )
        .unwrap();
        let engine = Engine::new(
            cfg.clone(),
            Arc::new(client),
            sinks,
            ledger,
            Arc::new(move || now_ms),
            Progress::hidden(),
        );
        if !claim {
            return (engine, None);
        }
        let store = ccc_etl::commands::connect_postgres(cfg)
            .await
            .unwrap()
            .expect("claiming needs PostgreSQL");
        let settings = LeaseSettings {
            lease: Duration::from_secs(cfg.pipeline.lease_secs),
            heartbeat: Duration::from_secs(cfg.pipeline.heartbeat_secs),
        };
        let c = Coordinator::register(store.pool().clone(), "backfill", settings)
            .await
            .unwrap()
            .with_pacers(vec![pacer], cfg.source.max_qps);
        c.beat().await.unwrap();
        let worker = Some((c.clone(), c.spawn_heartbeat()));
        (engine.with_coordinator(c), worker)
    }

    /// Hands back what the worker holds and stops its heartbeat.
    async fn stop(worker: Worker) {
        if let Some((c, h)) = worker {
            c.stop().await.unwrap();
            h.abort();
        }
    }
}

/// One scale's fixture: the emulator, the range, and the rows a run writes (exported once from
/// an untimed warm-up run, which also warms the emulator and the page cache).
struct Scale {
    emu: Emulator,
    ids: Vec<String>,
    from_ms: i64,
    to_ms: i64,
    payloads: Vec<(&'static str, Vec<u8>)>,
    rows: u64,
    /// This scale's directory (configs, Parquet roots), inside the benchmark's, which is deleted
    /// when the benchmark ends: see [`Scale::config`].
    work: std::path::PathBuf,
    /// Parquet roots handed out so far.
    roots: std::sync::atomic::AtomicUsize,
}

impl Scale {
    async fn new(instances: usize, days: i64, dir: &std::path::Path) -> Scale {
        let ids: Vec<String> = (0..instances).map(|i| format!("bench-{i:04}")).collect();
        let emu = Emulator::start(&ids, &["--revise-hours", "0"]);
        // The top of the hour, and the start a few hours inside the 180-day horizon, so that
        // every round plans the same windows however long the benchmark takes.
        let hour = 3_600_000;
        let to_ms = Utc::now().timestamp_millis() / hour * hour;
        let from_ms = to_ms - days * 86_400_000 + 4 * hour;
        let mut scale = Scale {
            emu,
            ids,
            from_ms,
            to_ms,
            payloads: vec![],
            rows: 0,
            work: tempfile::Builder::new()
                .prefix("scale-")
                .tempdir_in(dir)
                .unwrap()
                .keep(),
            roots: Default::default(),
        };
        let (url, db) = fresh_database().await;
        scale.migrate(&url);
        scale.process("both", &url);
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        for t in ccc_etl::record::Table::ALL {
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
            scale.rows += out.iter().filter(|b| **b == b'\n').count() as u64;
            scale.payloads.push((t.name(), out));
        }
        drop(conn);
        drop_database(&db).await;
        scale
    }

    /// Windows per run: at most 7 days each, per series.
    fn windows(&self) -> u64 {
        let days = ((self.to_ms - self.from_ms) as u64).div_ceil(86_400_000);
        self.ids.len() as u64 * days.div_ceil(7)
    }

    /// The configuration file of a run with these sinks and a Parquet root never used before.
    ///
    /// Old roots stay until the benchmark ends: deleting a thousand files just before a timed
    /// phase makes ext4 skip its recently freed inodes on every create (`recently_deleted`), which
    /// took a third of the process's CPU, and no nightly run starts from that state.
    fn config(&self, sinks: &str) -> std::path::PathBuf {
        let n = self
            .roots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = self.work.join(format!("warehouse-{n}"));
        let ids: Vec<String> = self.ids.iter().map(|i| format!("{i:?}")).collect();
        let text = format!(
            "[source]\nendpoint = {:?}\nmax_qps = 1000000.0\nconcurrency = 8\n\n\
             [pipeline]\ninstances = [{}]\n\n{}",
            self.emu.endpoint,
            ids.join(", "),
            sinks_toml(sinks, &root)
        );
        let path = self.work.join(format!("{sinks}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, sinks: &str, url: &str) -> Command {
        let mut c = Command::new(binary());
        c.arg("-q")
            .arg("--config")
            .arg(self.config(sinks))
            .env("DATABASE_URL", url)
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
            .stdout(Stdio::null());
        c
    }

    /// The schema, migrated (untimed: every phase starts from the same migrated database).
    fn migrate(&self, url: &str) {
        let out = self.command("both", url).arg("migrate").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One `ccc-etl backfill` process, timed from spawn to exit, with its own CPU and peak RSS
    /// (from its metrics file: a spawned child's `ru_maxrss` starts at its parent's peak).
    fn process(&self, sinks: &str, url: &str) -> Sample {
        let metrics = self.work.join("run.prom");
        let _ = std::fs::remove_file(&metrics);
        let mut cmd = self.command(sinks, url);
        cmd.args([
            "backfill",
            "--from",
            &self.from_ms.to_string(),
            "--to",
            &self.to_ms.to_string(),
            "--metrics-file",
        ])
        .arg(&metrics)
        .stderr(Stdio::piped());
        let t0 = Instant::now();
        // Reaped by `wait4` below, which also gives its resource usage.
        #[allow(clippy::zombie_processes)]
        let child = cmd.spawn().unwrap();
        let (status, usage) = wait4(child.id() as i32);
        let wall = t0.elapsed().as_secs_f64();
        let mut stderr = String::new();
        use std::io::Read;
        child.stderr.unwrap().read_to_string(&mut stderr).unwrap();
        assert_eq!(status, 0, "ccc-etl backfill failed: {stderr}");
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let peak = std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("ccc_etl_peak_rss_bytes")?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<f64>()
                    .ok()
            })
            .expect("ccc_etl_peak_rss_bytes in the metrics file");
        Sample {
            wall,
            cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
            rss: peak / (1024.0 * 1024.0),
        }
    }

    /// The engine in this process, sinks opened before the clock starts.
    async fn engine(&self, sinks: &str, url: &str) -> Sample {
        let mut cfg = Config::load(&self.config(sinks)).unwrap();
        if let Some(pg) = cfg.postgres.as_mut() {
            pg.url = Some(SecretString::from(url.to_string()));
        }
        // As the binary does: with PostgreSQL, windows are claimed there (so that other workers
        // could share the job). Registering is start-up, outside the engine's figure.
        let (engine, worker) = InProcess::start(&cfg, self.to_ms, cfg.postgres.is_some()).await;
        let req = BackfillRequest::range(self.ids.clone(), self.from_ms, self.to_ms);
        let (cpu0, _) = cpu_and_peak_rss();
        let t0 = Instant::now();
        let summary = engine.run(&req).await.unwrap();
        InProcess::stop(worker).await;
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, _) = cpu_and_peak_rss();
        assert_eq!(summary.exit_code(), 0, "{}", summary.render());
        assert_eq!(summary.rows.values().sum::<u64>(), self.rows);
        Sample {
            wall,
            cpu: cpu1 - cpu0,
            rss: 0.0,
        }
    }

    /// The reference: the rows with one text COPY per table into the migrated tables.
    async fn copy(&self, url: &str) -> Sample {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let t0 = Instant::now();
        for (name, data) in &self.payloads {
            let mut copy = conn
                .copy_in_raw(&format!("COPY ccc.{name} FROM STDIN"))
                .await
                .unwrap();
            copy.send(data.as_slice()).await.unwrap();
            copy.finish().await.unwrap();
        }
        Sample {
            wall: t0.elapsed().as_secs_f64(),
            ..Sample::default()
        }
    }

    /// One timed phase from the same state: a fresh migrated database, an empty Parquet root,
    /// and a `CHECKPOINT` just before the clock starts. Checks the rows afterwards.
    async fn phase(&self, phase: Phase, sinks: &str) -> Sample {
        let (url, db) = fresh_database().await;
        self.migrate(&url);
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("CHECKPOINT").execute(&mut admin).await.unwrap();
        let sample = match phase {
            Phase::Process => self.process(sinks, &url),
            Phase::Engine => self.engine(sinks, &url).await,
            Phase::Copy => self.copy(&url).await,
        };
        if phase == Phase::Copy || sinks != "parquet" {
            let n: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM ccc.inbound_trend) \
                      + (SELECT count(*) FROM ccc.outbound_trend) \
                      + (SELECT count(*) FROM ccc.overall_trend)",
            )
            .fetch_one(&mut admin)
            .await
            .unwrap();
            assert_eq!(n as u64, self.rows, "{phase:?} {sinks}: rows in PostgreSQL");
        }
        drop(admin);
        drop_database(&db).await;
        sample
    }
}

/// The `ccc-etl` binary the process phase runs: this build's, or CCC_ETL_BENCH_BIN (another
/// build's, to compare two builds in one session against the same emulator).
fn binary() -> String {
    std::env::var("CCC_ETL_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ccc-etl").into())
}

/// Waits for a child and returns its exit status and resource usage.
fn wait4(pid: i32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: `rusage` is plain old data, which wait4 fills for the child spawned here.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pid of our own child and valid pointers to locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    (libc::WEXITSTATUS(status), usage)
}

/// Rounds of the three phases, their order rotated each round (each phase runs first, second
/// and third equally often), for every sink configuration. Prints one markdown table row per
/// configuration and appends it to the file CCC_ETL_BENCH_REPORT names.
async fn fair_e2e(
    instances: usize,
    days: i64,
    rounds: usize,
    configs: &[String],
    dir: &std::path::Path,
) {
    let scale = Scale::new(instances, days, dir).await;
    let orders = [
        [Phase::Process, Phase::Engine, Phase::Copy],
        [Phase::Copy, Phase::Process, Phase::Engine],
        [Phase::Engine, Phase::Copy, Phase::Process],
    ];
    let mut table = String::new();
    for sinks in configs {
        let mut s: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
        let (mut ratio_p, mut ratio_e) = (vec![], vec![]);
        for round in 0..rounds {
            let mut r: BTreeMap<&str, Sample> = BTreeMap::new();
            for phase in orders[round % orders.len()] {
                r.insert(phase.name(), scale.phase(phase, sinks).await);
            }
            println!(
                "{instances} x {days} {sinks} round {round}: process {:.2}s (cpu {:.1}s, rss {:.0} MiB), engine {:.2}s, copy {:.2}s",
                r["process"].wall,
                r["process"].cpu,
                r["process"].rss,
                r["engine"].wall,
                r["copy"].wall
            );
            ratio_p.push(r["process"].wall / r["copy"].wall);
            ratio_e.push(r["engine"].wall / r["copy"].wall);
            for (k, v) in r {
                s.entry(k).or_default().push(v);
            }
        }
        let col = |k: &str, f: fn(&Sample) -> f64| s[k].iter().map(f).collect::<Vec<f64>>();
        let row = format!(
            "| {sinks} | {instances} x {days} | {} | {} | {} | {} | {} | {} | {} | **{}** | {} |\n",
            thousands(scale.windows()),
            thousands(scale.rows),
            fmt_mmm(&col("process", |x| x.wall), 2),
            fmt_mmm(&col("engine", |x| x.wall), 2),
            fmt_mmm(&col("copy", |x| x.wall), 2),
            fmt_mmm(&col("process", |x| x.cpu), 1),
            fmt_mmm(&col("process", |x| x.rss), 0),
            fmt_mmm(&ratio_p, 2),
            fmt_mmm(&ratio_e, 2),
        );
        print!("{row}");
        table.push_str(&row);
    }
    report(&table);
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
    let now = Utc::now().timestamp_millis();
    let (engine, worker) = InProcess::start(&cfg, now, coordinated).await;
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
    InProcess::stop(worker).await;
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(summary.exit_code(), 0, "{}", summary.render());
    drop(engine);
    drop(admin);
    store.pool().close().await;
    drop_database(&db).await;
    wall
}

/// The COPY reference into the tables as migrated against the same tables with their key
/// columns in the "C" collation (bytewise comparison instead of the database locale's), the
/// order alternating over the rounds: what the collation would save on every key comparison.
async fn collation(instances: usize, days: i64, rounds: usize, dir: &std::path::Path) {
    let scale = Scale::new(instances, days, dir).await;
    let (mut default, mut c, mut ratio) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let mut t = [0.0; 2];
        for bytewise in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let (url, db) = fresh_database().await;
            scale.migrate(&url);
            let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
            // A column a view uses cannot change type: the views go in both variants.
            sqlx::query("DROP VIEW ccc.daily_traffic, ccc.hourly_traffic")
                .execute(&mut admin)
                .await
                .unwrap();
            if bytewise {
                for table in ccc_etl::record::Table::ALL {
                    sqlx::query(&format!(
                        "ALTER TABLE ccc.{} ALTER COLUMN instance_id TYPE text COLLATE \"C\", \
                         ALTER COLUMN media_type TYPE text COLLATE \"C\"",
                        table.name()
                    ))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                }
            }
            sqlx::query("CHECKPOINT").execute(&mut admin).await.unwrap();
            t[usize::from(bytewise)] = scale.copy(&url).await.wall;
            drop(admin);
            drop_database(&db).await;
        }
        println!(
            "round {round}: database collation {:.2}s, \"C\" {:.2}s",
            t[0], t[1]
        );
        default.push(t[0]);
        c.push(t[1]);
        ratio.push(t[1] / t[0]);
    }
    let line = format!(
        "| {instances} x {days} | {} | {} | {} |\n",
        fmt_mmm(&default, 2),
        fmt_mmm(&c, 2),
        fmt_mmm(&ratio, 2)
    );
    print!("{line}");
    report(&line);
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
    let (p, c, r) = (mmm(&plain), mmm(&claimed), mmm(&ratio));
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
    let deadline = Instant::now() + Duration::from_secs(secs);
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

/// `latency`: whether the QPS limit, not `concurrency`, sets the pace. A backfill of 40
/// instances x 60 days (360 requests) at `max_qps = 20` against an emulator answering every
/// request after L ms (L = 50, 150, 400, 1000), into memory sinks (the API's pace alone): wall
/// time over the ideal, requests / `max_qps`, with `concurrency = 4` (the old default, when it
/// capped the requests in flight) and with the shipped defaults (in flight from Little's law,
/// at most `concurrency`). `rounds` rounds each, the two settings alternating.
async fn latency_pace(rounds: usize) {
    use ccc_etl::ledger::MemoryLedger;
    use ccc_etl::sink::memory::MemorySink;
    let ids: Vec<String> = (0..40).map(|i| format!("lat-{i:02}")).collect();
    let shipped = ccc_etl::config::SourceConfig::default().concurrency;
    println!(
        "| API latency | in flight at most | wall / (requests / max_qps): min / median / max | the floor: (requests / max_qps + latency) / (requests / max_qps) |"
    );
    println!("|---|---|---|---|");
    for ms in [50u64, 150, 400, 1000] {
        let emu = Emulator::start(&ids, &["--slow", "1", "--slow-ms", &ms.to_string()]);
        let mut ratios: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        // The last request's answer comes a latency after it is sent: no run ends sooner.
        let mut floor = 1.0;
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [4, shipped]
            } else {
                [shipped, 4]
            };
            for ceiling in order {
                let mut cfg = Config::for_emulator(&emu.endpoint, ids.clone());
                cfg.source.max_qps = 20.0;
                cfg.source.concurrency = ceiling;
                cfg.source.timeout_secs = 30;
                let pacer = Arc::new(AdaptivePacer::new(cfg.source.max_qps));
                let client =
                    CccClient::new(&cfg.source, Credentials::new(KEY, SECRET, None), pacer)
                        .unwrap();
                let now = Utc::now().timestamp_millis();
                let sink: Arc<dyn Sink> = Arc::new(MemorySink::default());
                let engine = Engine::new(
                    cfg,
                    Arc::new(client),
                    vec![sink],
                    Arc::new(MemoryLedger::default()),
                    Arc::new(move || now),
                    Progress::hidden(),
                );
                let req = BackfillRequest {
                    instances: ids.clone(),
                    from: RangeStart::At(now - 60 * 86_400_000),
                    to_ms: now,
                    refetch: false,
                    strict_horizon: false,
                    kind: RunKind::Backfill,
                    lookback_ms: None,
                };
                let t0 = Instant::now();
                let summary = engine.run(&req).await.unwrap();
                let secs = t0.elapsed().as_secs_f64();
                assert_eq!(summary.exit_code(), 0, "{}", summary.render());
                let ideal = summary.requests as f64 / 20.0;
                ratios.entry(ceiling).or_default().push(secs / ideal);
                floor = (ideal + ms as f64 / 1000.0) / ideal;
            }
        }
        for (ceiling, r) in &ratios {
            let label = if *ceiling == shipped {
                format!("{ceiling} (shipped: the rate x latency, x 1.5, + 2)")
            } else {
                format!("{ceiling} (the old default)")
            };
            println!("| {ms} ms | {label} | {} | {floor:.3} |", fmt_mmm(r, 2));
        }
    }
}

/// `report`: `ccc-etl report` on a backfilled job (PostgreSQL and Parquet), timed as a process
/// against `ccc-etl status --format json` on the same database and root, the command operators
/// already run (it lists the root and reads the ledger; the report adds the KPIs, the runs and
/// the page). Each phase after a `CHECKPOINT`, their order alternating round by round.
async fn report_page(instances: usize, days: i64, rounds: usize, dir: &std::path::Path) {
    let scale = Scale::new(instances, days, dir).await;
    let (url, db) = fresh_database().await;
    scale.migrate(&url);
    scale.process("both", &url);
    // The configuration of that run (its root); `Scale::config` would hand out a new root.
    let cfg = scale.work.join("both.toml");
    let page = scale.work.join("report.html");
    let timed = |args: &[&str]| {
        let t0 = Instant::now();
        let out = Command::new(binary())
            .arg("-q")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let code = out.status.code();
        assert!(
            matches!(code, Some(0 | 4)),
            "ccc-etl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t0.elapsed().as_secs_f64()
    };
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (mut report_s, mut status_s) = (vec![], vec![]);
    for round in 0..rounds {
        for first in [round % 2 == 0, round % 2 == 1] {
            sqlx::query("CHECKPOINT").execute(&mut conn).await.unwrap();
            if first {
                report_s.push(timed(&[
                    "report",
                    "--output",
                    page.to_str().unwrap(),
                    "--days",
                    "200",
                ]));
            } else {
                status_s.push(timed(&["status", "--format", "json"]));
            }
        }
    }
    drop(conn);
    let ratios: Vec<f64> = report_s.iter().zip(&status_s).map(|(r, s)| r / s).collect();
    let kib = std::fs::metadata(&page)
        .map(|m| m.len() / 1024)
        .unwrap_or(0);
    let row = format!(
        "| {instances} x {days} | {} | {} | {} | {kib} KiB |\n",
        fmt_mmm(&report_s, 2),
        fmt_mmm(&status_s, 2),
        fmt_mmm(&ratios, 2)
    );
    println!("report (s, min / median / max over {rounds} rounds): report | status | ratio | page");
    print!("{row}");
    report(&row);
    drop_database(&db).await;
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
    // Every scale's files, deleted only when the benchmark ends (see `Scale::config`).
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        if filter.is_empty() || "e2e".contains(&filter) {
            let days = env_or("CCC_ETL_BENCH_DAYS", 180) as i64;
            let rounds = env_or("CCC_ETL_BENCH_ROUNDS", 3) as usize;
            let configs: Vec<String> = std::env::var("CCC_ETL_BENCH_SINKS")
                .unwrap_or_else(|_| "both,postgres,parquet".into())
                .split(',')
                .map(str::to_string)
                .collect();
            let scales = std::env::var("CCC_ETL_BENCH_SCALES").unwrap_or_else(|_| "40,200".into());
            for instances in scales.split(',').filter_map(|n| n.trim().parse().ok()) {
                fair_e2e(instances, days, rounds, &configs, dir.path()).await;
            }
        }
        if filter == "collation" {
            let instances = env_or("CCC_ETL_BENCH_INSTANCES", 200) as usize;
            let days = env_or("CCC_ETL_BENCH_DAYS", 180) as i64;
            let rounds = env_or("CCC_ETL_BENCH_ROUNDS", 5) as usize;
            collation(instances, days, rounds, dir.path()).await;
        }
        if filter.is_empty() || "coordination".contains(&filter) {
            let instances = env_or("CCC_ETL_BENCH_INSTANCES", 200) as usize;
            let days = env_or("CCC_ETL_BENCH_DAYS", 180) as i64;
            coordination_overhead(instances, days, env_or("CCC_ETL_BENCH_ROUNDS", 3) as usize)
                .await;
        }
        if filter.is_empty() || "report".contains(&filter) {
            let instances = env_or("CCC_ETL_BENCH_INSTANCES", 200) as usize;
            let days = env_or("CCC_ETL_BENCH_DAYS", 180) as i64;
            let rounds = env_or("CCC_ETL_BENCH_ROUNDS", 3) as usize;
            report_page(instances, days, rounds, dir.path()).await;
        }
        if filter == "latency" {
            latency_pace(env_or("CCC_ETL_BENCH_ROUNDS", 3) as usize).await;
        }
        if filter.is_empty() || "rate".contains(&filter) {
            rate_adaptation(env_or("CCC_ETL_BENCH_RATE_SECS", 40)).await;
        }
    });
}
