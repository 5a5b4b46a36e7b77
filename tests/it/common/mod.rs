//! The integration tests' one harness: an emulator on port 0, a config and a client pointed at
//! it, an engine over them, a fresh PostgreSQL database dropped when its guard is, and the
//! constants every test needs.
#![allow(dead_code)]

use std::sync::Arc;

use ccc_etl::ccc::client::CccClient;
use ccc_etl::ccc::emulator::{self, EmulatorOptions, RunningEmulator};
use ccc_etl::ccc::ratelimit::AdaptivePacer;
use ccc_etl::config::{Config, SignatureVersion};
use ccc_etl::credentials::Credentials;

/// An hour and a day, in ms.
pub const H: i64 = 3_600_000;
pub const DAY: i64 = 24 * H;

pub const KEY_ID: &str = "test-key";
pub const SECRET: &str = "test-secret-do-not-print";

/// An emulator's options on the tests' clock.
pub fn options(instances: &[&str]) -> EmulatorOptions {
    clock_offset_ms();
    EmulatorOptions::new(
        instances.iter().map(|s| s.to_string()).collect(),
        KEY_ID,
        SECRET,
    )
}

pub async fn start(opts: EmulatorOptions) -> RunningEmulator {
    clock_offset_ms();
    emulator::spawn(opts)
        .await
        .expect("emulator starts on 127.0.0.1:0")
}

pub fn config(emu: &RunningEmulator, instances: &[&str], version: SignatureVersion) -> Config {
    let mut c = Config::for_emulator(
        &emu.endpoint(),
        instances.iter().map(|s| s.to_string()).collect(),
    );
    c.source.signature_version = version;
    c.source.max_qps = 1000.0;
    c.source.backoff_base_ms = 5;
    c.source.backoff_max_ms = 50;
    c.source.timeout_secs = 5;
    c
}

pub fn client(config: &Config, secret: &str) -> CccClient {
    CccClient::new(
        &config.source,
        Credentials::new(KEY_ID, secret, None),
        Arc::new(AdaptivePacer::new(config.source.max_qps)),
    )
    .expect("client builds")
}

/// A backfill engine over the emulator client, with no progress output.
pub fn engine(
    cfg: &Config,
    sinks: Vec<Arc<dyn ccc_etl::sink::Sink>>,
    ledger: Arc<dyn ccc_etl::ledger::Ledger>,
    now: ccc_etl::pipeline::NowFn,
) -> ccc_etl::pipeline::Engine {
    ccc_etl::pipeline::Engine::new(
        cfg.clone(),
        Arc::new(client(cfg, SECRET)),
        sinks,
        ledger,
        now,
        ccc_etl::progress::Progress::hidden(),
    )
}

/// An engine whose client signs with `secret`, on the tests' clock.
pub fn engine_with_secret(
    cfg: &Config,
    secret: &str,
    sinks: Vec<Arc<dyn ccc_etl::sink::Sink>>,
    ledger: Arc<dyn ccc_etl::ledger::Ledger>,
) -> ccc_etl::pipeline::Engine {
    ccc_etl::pipeline::Engine::new(
        cfg.clone(),
        Arc::new(client(cfg, secret)),
        sinks,
        ledger,
        now_fn(),
        ccc_etl::progress::Progress::hidden(),
    )
}

/// A plain backfill of `[from, to)` for `instances`.
pub fn request(instances: &[&str], from: i64, to: i64) -> ccc_etl::pipeline::BackfillRequest {
    ccc_etl::pipeline::BackfillRequest::range(
        instances.iter().map(|s| s.to_string()).collect(),
        from,
        to,
    )
}

/// The instant the tests' clock starts at. Every date a test writes is written as of it, and
/// the tests' clock, the library's in this process ([`ccc_etl::clock`]), each in-process
/// emulator and every `ccc-etl` the tests run ([`ccc_etl_std_cmd`] passes `CCC_ETL_NOW`) start
/// there and run on together, so a test means the same on any day and at any hour of it. 04:00
/// UTC is noon in Shanghai: no run of the suite crosses a midnight in either zone.
pub const TEST_NOW: &str = "2026-12-04T04:00:00Z";

/// The tests' clock, ms ahead of the system's (negative: behind); pins the library's clock in
/// this process to the same on first use.
fn clock_offset_ms() -> i64 {
    static OFFSET: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        let start: chrono::DateTime<chrono::Utc> = TEST_NOW.parse().expect("TEST_NOW parses");
        let offset = (start - chrono::Utc::now()).num_milliseconds();
        ccc_etl::clock::pin_offset_ms(offset);
        offset
    });
    *OFFSET
}

/// Now, on the tests' clock (never the system's: see [`TEST_NOW`]).
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::milliseconds(clock_offset_ms())
}

/// The system clock, for what a server checks against the wall time (a signature's timestamp,
/// as the emulator's 15-minute skew check reads it). Nothing that plans or dates data reads it.
pub fn wall_clock() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// What a child keeps when a test clears its environment: the tests' clock (`CCC_ETL_NOW`),
/// and the machine's clock as `faketime` moves it for the whole suite (CI's check that the
/// suite passes on later days).
pub fn clock_env() -> Vec<(String, String)> {
    let mut env = vec![(
        ccc_etl::clock::ENV.to_string(),
        now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )];
    env.extend(std::env::vars().filter(|(k, _)| k == "LD_PRELOAD" || k.starts_with("FAKETIME")));
    env
}

/// [`now`] in epoch ms.
pub fn now_ms() -> i64 {
    now().timestamp_millis()
}

/// [`now`] as a clock for an engine.
pub fn now_fn() -> ccc_etl::pipeline::NowFn {
    std::sync::Arc::new(now_ms)
}

/// Command-line arguments as owned strings.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The `ccc-etl` binary under test, as a tokio command.
pub fn ccc_etl_cmd() -> tokio::process::Command {
    ccc_etl_std_cmd().into()
}

/// The path of the `ccc-etl` binary under test, for a tool that starts it (an orchestrator);
/// give that tool [`clock_env`] too.
pub fn ccc_etl_path() -> &'static str {
    env!("CARGO_BIN_EXE_ccc-etl")
}

/// The `ccc-etl` binary under test, as a blocking command.
/// It starts on the tests' clock ([`TEST_NOW`]).
pub fn ccc_etl_std_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ccc-etl"));
    c.envs(clock_env());
    c
}

/// `ccc-etl --config CFG` as most tests run it, blocking: the emulator's AccessKey,
/// `DATABASE_URL` set (or removed, so the configuration decides), no colour, no `RUST_LOG` from
/// the test's environment. Add the command's arguments with [`args`].
pub fn ccc_etl_std_at(cfg: &std::path::Path, database_url: Option<&str>) -> std::process::Command {
    let mut c = ccc_etl_std_cmd();
    c.arg("--config")
        .arg(cfg)
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    match database_url {
        Some(url) => c.env("DATABASE_URL", url),
        None => c.env_remove("DATABASE_URL"),
    };
    c
}

/// [`ccc_etl_std_at`] as a tokio command.
pub fn ccc_etl_at(cfg: &std::path::Path, database_url: Option<&str>) -> tokio::process::Command {
    ccc_etl_std_at(cfg, database_url).into()
}

/// `ccc-etl --config CFG ARGS` with `db`'s `DATABASE_URL` ([`ccc_etl_at`]), run to its end.
pub async fn ccc_etl_on(cfg: &std::path::Path, db: &TestDb, args: &[&str]) -> std::process::Output {
    ccc_etl_at(cfg, Some(&db.url))
        .args(args)
        .output()
        .await
        .unwrap()
}

/// Sends SIGTERM to a process, as Kubernetes and systemd do to stop one.
pub fn send_sigterm(pid: u32) {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

/// Where the tests find PostgreSQL; override with CCC_ETL_TEST_PG.
pub fn pg_server() -> String {
    std::env::var("CCC_ETL_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database for one test, dropped when the guard is (also when an assertion fails), or
/// by [`TestDb::drop_db`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    dropped: bool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        use sqlx::Connection;
        let server = pg_server();
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {server}: {e}. Start it (Debian: \
                 `pg_ctlcluster --skip-systemctl-redirect 15 main start`) or point CCC_ETL_TEST_PG at a server \
                 where user postgres may create databases."
            )
        });
        let name = format!("ccc_etl_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        TestDb {
            url: format!("{server}/{name}"),
            name,
            dropped: false,
        }
    }

    /// The database with the schema `ccc` migrated, as a run leaves it.
    pub async fn migrated(&self) -> ccc_etl::db::PgStore {
        let mut cfg = Config::for_emulator("http://127.0.0.1:1", vec![]);
        cfg.postgres = Some(ccc_etl::config::PostgresConfig {
            url: Some(self.url.clone().into()),
            schema: ccc_etl::config::SchemaName::parse("ccc").unwrap(),
        });
        ccc_etl::commands::connect_postgres(&cfg)
            .await
            .expect("migrate the test database")
            .expect("PostgreSQL is configured")
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    pub async fn drop_db(mut self) {
        drop_database(&self.name).await;
        self.dropped = true;
    }
}

async fn drop_database(name: &str) {
    use sqlx::Connection;
    let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{}/postgres", pg_server())).await
    else {
        return;
    };
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // A test that panicked before `drop_db`: drop the database from a thread of its own,
        // since this may run inside the test's runtime.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&name));
            }
        })
        .join();
    }
}
pub mod azure;
pub mod cluster;
pub mod config;
pub use config::ConfigToml;
pub mod latency;
pub mod proxy;
pub mod s3;
pub mod sinks;

/// A process's stdout then stderr, as text.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The value of the first line of Prometheus text starting with `prefix` (`None` if absent).
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

/// [`metric_value`], which must be there.
pub fn metric(text: &str, prefix: &str) -> f64 {
    metric_value(text, prefix).unwrap_or_else(|| panic!("no {prefix} in {text}"))
}

/// A Python with DuckDB, set up under `target/` on first use (from PyPI), so this stays one
/// `cargo test` on a fresh machine.
pub fn duckdb_python() -> std::path::PathBuf {
    venv_python(
        "readme-venv",
        "import duckdb",
        &["duckdb"],
        "DuckDB runs the documented queries",
    )
}

/// The Python of a virtual environment under `target/{dir}` in which `probe` runs, made on
/// first use with `pip install {install}` (from PyPI), so tests that need a Python tool stay one
/// `cargo test` on a fresh machine. Tests asking at once wait for the one setting it up.
pub fn venv_python(dir: &str, probe: &str, install: &[&str], why: &str) -> std::path::PathBuf {
    static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(dir);
    let python = venv.join("bin/python");
    let ready = |p: &std::path::Path| {
        std::process::Command::new(p)
            .args(["-c", probe])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return python;
    }
    let run = |cmd: &mut std::process::Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({why}; it needs python3 with venv, and PyPI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv),
        "python3 -m venv",
    );
    run(
        std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(install),
        &format!("pip install {}", install.join(" ")),
    );
    python
}
