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
