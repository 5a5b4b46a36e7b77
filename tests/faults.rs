//! A run against a misbehaving service completes with complete, duplicate-free data.

mod common;

use std::sync::Arc;

use ccc_etl::ccc::emulator::Faults;
use ccc_etl::config::SignatureVersion;
use ccc_etl::ledger::MemoryLedger;
use ccc_etl::pipeline::{Backfill, BackfillRequest};
use ccc_etl::progress::Progress;
use ccc_etl::record::MediaType;
use ccc_etl::sink::memory::MemorySink;
use chrono::Utc;
use common::*;

const H: i64 = 3_600_000;
const DAY: i64 = 24 * H;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_5xx_throttling_truncated_bodies_and_timeouts_the_data_is_complete_and_unique() {
    let instances = ["ccc-a", "ccc-b", "ccc-c"];
    let mut opts = options(&instances);
    opts.revise_ms = 0;
    opts.faults = Faults {
        throttled: 0.10,
        unavailable: 0.05,
        internal_error: 0.05,
        truncated: 0.02,
        slow: 0.02,
        slow_ms: 2_500,
        seed: std::env::var("CCC_ETL_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7),
        ..Default::default()
    };
    let model = opts.data_model();
    let emu = start(opts).await;
    let mut cfg = config(&emu, &instances, SignatureVersion::V1);
    cfg.source.timeout_secs = 1;
    cfg.source.max_attempts = 12;
    cfg.source.concurrency = 4;
    let sink = Arc::new(MemorySink::default());
    let to = Utc::now().timestamp_millis() / H * H - 3 * H;
    let from = to - 150 * DAY;
    let engine = Backfill::new(
        cfg.clone(),
        Arc::new(client(&cfg, SECRET)),
        vec![sink.clone()],
        Arc::new(MemoryLedger::default()),
        Arc::new(|| Utc::now().timestamp_millis()),
        Progress::hidden(),
    );
    let req = BackfillRequest {
        instances: instances.iter().map(|s| s.to_string()).collect(),
        from_ms: from,
        to_ms: to,
        refetch: false,
        strict_horizon: false,
        command: "test".into(),
        lookback_ms: None,
        from_horizon: false,
    };
    let summary = engine.run(&req).await.unwrap();
    assert_eq!(summary.exit_code(), 0, "{}", summary.render());
    assert_eq!(summary.duplicate_rows + summary.conflicting_rows, 0);
    let stats = emu.stats().await.unwrap();
    let action = "GetInstanceTrendingReport";
    for code in [
        "Throttling.User",
        "ServiceUnavailable",
        "InternalError",
        "TruncatedBody",
    ] {
        assert!(
            stats.count(action, code) > 0,
            "the run met {code}: {:?}",
            stats.by_action
        );
    }
    assert!(
        summary
            .responses_by_code
            .get("Timeout")
            .copied()
            .unwrap_or(0)
            > 0,
        "{:?}",
        summary.responses_by_code
    );
    assert!(summary.retries > 10);
    let tables = sink.snapshot();
    let per_instance = ((to - from) / H) as usize;
    assert_eq!(
        tables.inbound.len(),
        3 * per_instance,
        "every bucket exactly once"
    );
    assert_eq!(tables.outbound.len(), 3 * per_instance);
    assert_eq!(tables.overall.len(), 3 * per_instance);
    for ((inst, media, t), row) in &tables.inbound {
        assert_eq!(*media, MediaType::Audio);
        assert_eq!(*row, model.final_rows(inst, *media, *t).inbound);
    }
}
