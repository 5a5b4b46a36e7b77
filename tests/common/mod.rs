//! Helpers shared by the integration tests: an emulator on port 0 and a client pointed at it.
#![allow(dead_code)]

use std::sync::Arc;

use ccc_etl::ccc::client::CccClient;
use ccc_etl::ccc::emulator::{self, EmulatorOptions, RunningEmulator};
use ccc_etl::ccc::ratelimit::AdaptivePacer;
use ccc_etl::config::{Config, Credentials, SignatureVersion};

pub const KEY_ID: &str = "test-key";
pub const SECRET: &str = "test-secret-do-not-print";

pub fn options(instances: &[&str]) -> EmulatorOptions {
    EmulatorOptions::new(
        instances.iter().map(|s| s.to_string()).collect(),
        KEY_ID,
        SECRET,
    )
}

pub async fn start(opts: EmulatorOptions) -> RunningEmulator {
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
) -> ccc_etl::pipeline::Backfill {
    ccc_etl::pipeline::Backfill::new(
        cfg.clone(),
        Arc::new(client(cfg, SECRET)),
        sinks,
        ledger,
        now,
        ccc_etl::progress::Progress::hidden(),
    )
}

/// Where the tests find PostgreSQL; override with CCC_ETL_TEST_PG.
pub fn pg_server() -> String {
    std::env::var("CCC_ETL_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database for one test, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub name: String,
    pub url: String,
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
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    pub async fn drop_db(self) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_server()))
            .await
            .unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}
