//! Backfill end to end against the emulator: every bucket exactly once with the emulator's
//! values, resume without refetching, failures that do not stop the run, fatal errors that do.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::common::*;
use ccc_etl::ccc::emulator::Faults;
use ccc_etl::config::{ParquetConfig, SignatureVersion};

use ccc_etl::ledger::{FileLedger, MemoryLedger};
use ccc_etl::record::{MediaType, Table};
use ccc_etl::sink::memory::MemorySink;
use ccc_etl::sink::parquet::{ParquetSink, read_file};

#[tokio::test]
async fn a_30_day_backfill_of_3_instances_yields_every_bucket_once_with_the_emulator_values() {
    let instances = ["ccc-a", "ccc-b", "ccc-c"];
    let mut opts = options(&instances);
    opts.revise_ms = 0; // every bucket final, so values can be compared exactly
    // EndTime inclusive, as the real API may treat it: every window also gets its neighbour's
    // first bucket, which is expected, not a violation.
    opts.inclusive_end = true;
    let model = opts.data_model();
    let emu = start(opts).await;
    let cfg = config(&emu, &instances, SignatureVersion::V1);
    // An unaligned start: the emulator floors it, and the pipeline must not take that bucket.
    let to = crate::common::now().timestamp_millis() / H * H - 2 * H;
    let from = to - 30 * DAY + 25 * 60_000;
    let sink = Arc::new(MemorySink::default());
    let ledger = Arc::new(MemoryLedger::default());
    let e = engine_with_secret(&cfg, SECRET, vec![sink.clone()], ledger.clone());
    let summary = e.run(&request(&instances, from, to)).await.unwrap();
    assert_eq!(summary.exit_code(), 0, "{}", summary.render());
    assert_eq!(
        summary.windows_ok,
        3 * 5,
        "30 days need 5 windows per instance"
    );
    let tables = sink.snapshot();
    let first_bucket = (from + H - 1) / H * H;
    let expected_buckets = ((to - first_bucket) / H) as usize;
    for inst in instances {
        let times: Vec<i64> = tables
            .inbound
            .keys()
            .filter(|k| k.0 == inst)
            .map(|k| k.2)
            .collect();
        assert_eq!(times.len(), expected_buckets, "{inst}");
        assert_eq!(times.first(), Some(&first_bucket));
        assert_eq!(times.last(), Some(&(to - H)));
        for t in &times {
            let expect = model.final_rows(inst, MediaType::Audio, *t);
            let key = (inst.to_string(), MediaType::Audio, *t);
            assert_eq!(tables.inbound[&key], expect.inbound);
            assert_eq!(tables.outbound[&key], expect.outbound);
            assert_eq!(tables.overall[&key], expect.overall);
        }
    }
    assert_eq!(
        summary.rows[Table::Inbound.name()] as usize,
        3 * expected_buckets
    );
    assert_eq!(
        summary.sinks["memory"].inserted as usize,
        9 * expected_buckets
    );
    assert_eq!(summary.duplicate_rows + summary.conflicting_rows, 0);
    assert_eq!(
        summary.quality.total(),
        0,
        "a healthy run has no violations: {}",
        summary.render()
    );
    assert_eq!(summary.outside_window_rows, 0);
    assert_eq!(
        summary.boundary_rows,
        3 * 3 * (1 + 5),
        "per instance and table: the floored first bucket and the bucket at each window's end"
    );
    assert!(summary.render().contains(
        "54 row(s) at a window's edge left to the neighbouring window they belong to (normal)"
    ));
    let stats = emu.stats().await.unwrap();
    assert_eq!(stats.count("GetInstanceTrendingReport", "OK"), 15);
    // Windows were contiguous and oldest first.
    let calls = stats.ok_calls();
    assert!(
        calls
            .windows(2)
            .all(|w| w[0].start_ms <= w[1].start_ms + 7 * DAY)
    );
    let starts: BTreeSet<i64> = calls.iter().map(|c| c.start_ms).collect();
    assert_eq!(starts.len(), 5);
}

#[tokio::test]
async fn a_rerun_fetches_nothing_already_committed_and_refetch_changes_no_row_count() {
    let opts = options(&["ccc-a", "ccc-b"]);
    let model = opts.data_model();
    let emu = start(opts).await;
    let mut cfg = config(&emu, &["ccc-a", "ccc-b"], SignatureVersion::V3);
    let dir = tempfile::tempdir().unwrap();
    cfg.parquet = Some(ParquetConfig::at(dir.path().to_path_buf()));
    let to = crate::common::now().timestamp_millis() / H * H - 8 * H;
    let from = to - 10 * DAY;
    let run = |refetch: bool| {
        let cfg = cfg.clone();
        let root = dir.path().to_path_buf();
        async move {
            let sink = Arc::new(ParquetSink::new(&root, cfg.pipeline.timezone).unwrap());
            let ledger = Arc::new(FileLedger::open(&root).unwrap());
            let mut req = request(&["ccc-a", "ccc-b"], from, to);
            req.refetch = refetch;
            engine_with_secret(&cfg, SECRET, vec![sink], ledger)
                .run(&req)
                .await
                .unwrap()
        }
    };
    let first = run(false).await;
    assert_eq!(first.exit_code(), 0);
    assert_eq!(first.windows_ok, 4);
    let count_rows = || {
        let mut n = 0;
        for entry in walk(dir.path()) {
            if entry.extension().is_some_and(|e| e == "parquet")
                && entry.to_string_lossy().contains("inbound_trend")
            {
                n += read_file(&entry, Table::Inbound).unwrap().len();
            }
        }
        n
    };
    let rows = count_rows();
    // One file per table and local day, each holding every instance of that day.
    let files: Vec<std::path::PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(
        files
            .iter()
            .all(|p| p.file_name().unwrap() == ccc_etl::sink::parquet::DATA_FILE),
        "{files:?}"
    );
    let tz = cfg.pipeline.timezone;
    let local = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .with_timezone(&tz)
            .date_naive()
    };
    let days = (local(to - 1) - local(from)).num_days() as usize + 1;
    assert_eq!(files.len(), 3 * days, "{files:?}");
    let middle = dir
        .path()
        .join("inbound_trend")
        .join(format!("dt={}", local(from + 5 * DAY).format("%Y-%m-%d")));
    let instances: BTreeSet<String> = read_file(
        &middle.join(ccc_etl::sink::parquet::DATA_FILE),
        Table::Inbound,
    )
    .unwrap()
    .into_iter()
    .map(|r| r.instance_id)
    .collect();
    assert_eq!(instances, BTreeSet::from(["ccc-a".into(), "ccc-b".into()]));
    // Values read back from the files are the emulator's, in every table.
    let mut checked = 0;
    for f in walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
    {
        let table = Table::ALL
            .into_iter()
            .find(|t| f.starts_with(dir.path().join(t.name())))
            .unwrap();
        for r in read_file(&f, table).unwrap() {
            let m = ccc_etl::record::MediaType::Audio;
            let expect = model.final_rows(&r.instance_id, m, r.stats_time);
            let counts = match table {
                Table::Inbound => ccc_etl::record::TrendRow::counts(&expect.inbound),
                Table::Outbound => ccc_etl::record::TrendRow::counts(&expect.outbound),
                Table::Overall => ccc_etl::record::TrendRow::counts(&expect.overall),
            };
            assert_eq!(r.counts, counts, "{}", f.display());
            assert_eq!(r.media_type, "Audio");
            assert!(!r.request_id.is_empty());
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * rows);
    assert_eq!(rows as i64, 2 * (to - from) / H);
    let second = run(false).await;
    assert_eq!(second.windows_planned, 0, "{}", second.render());
    assert_eq!(second.windows_skipped_committed, 4);
    assert_eq!(
        emu.stats()
            .await
            .unwrap()
            .count("GetInstanceTrendingReport", "OK"),
        4,
        "nothing fetched again"
    );
    let third = run(true).await;
    assert_eq!(third.windows_ok, 4);
    assert_eq!(third.sinks["parquet"].inserted, 0);
    assert_eq!(
        third.sinks["parquet"].unchanged as i64,
        3 * 2 * (to - from) / H
    );
    assert_eq!(count_rows(), rows, "a refetch leaves one row per key");
    assert!(
        walk(dir.path())
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".tmp")),
        "no temporary file left"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_failing_instance_does_not_stop_the_others_and_the_run_exits_3() {
    let mut opts = options(&["ccc-a", "ccc-bad"]);
    opts.faults = Faults {
        failing_instances: vec!["ccc-bad".into()],
        ..Default::default()
    };
    let emu = start(opts).await;
    let mut cfg = config(&emu, &["ccc-a", "ccc-bad"], SignatureVersion::V1);
    cfg.source.max_attempts = 2;
    let sink = Arc::new(MemorySink::default());
    let ledger = Arc::new(MemoryLedger::default());
    let to = crate::common::now().timestamp_millis() / H * H - 8 * H;
    let summary = engine_with_secret(&cfg, SECRET, vec![sink.clone()], ledger.clone())
        .run(&request(&["ccc-a", "ccc-bad"], to - 9 * DAY, to))
        .await
        .unwrap();
    assert_eq!(summary.exit_code(), 3);
    assert_eq!(summary.windows_ok, 2);
    assert_eq!(summary.windows_failed.len(), 2);
    assert!(
        summary
            .windows_failed
            .iter()
            .all(|f| f.key.instance_id == "ccc-bad" && f.retryable)
    );
    assert!(summary.render().contains("FAILED ccc-bad/Audio"));
    assert_eq!(sink.snapshot().inbound.len() as i64, 9 * 24);
    let failed = ledger
        .entries()
        .iter()
        .filter(|e| e.status == ccc_etl::ledger::WindowStatus::Failed)
        .count();
    assert_eq!(failed, 2, "failures are recorded in the ledger");
}

#[tokio::test]
async fn wrong_credentials_stop_the_run_at_once_with_one_clear_message() {
    let instances = ["a1", "a2", "a3", "a4", "a5", "a6"];
    let emu = start(options(&instances)).await;
    let mut cfg = config(&emu, &instances, SignatureVersion::V1);
    cfg.source.concurrency = 2;
    let sink = Arc::new(MemorySink::default());
    let to = crate::common::now().timestamp_millis() / H * H;
    let summary = engine_with_secret(
        &cfg,
        "not-the-secret",
        vec![sink.clone()],
        Arc::new(MemoryLedger::default()),
    )
    .run(&request(&instances, to - 60 * DAY, to))
    .await
    .unwrap();
    assert_eq!(summary.exit_code(), 1);
    let fatal = summary.fatal.clone().unwrap();
    assert!(
        fatal.contains("SignatureDoesNotMatch")
            && fatal.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
        "{fatal}"
    );
    assert!(
        summary.requests <= 2,
        "stopped at once, not after {} requests",
        summary.requests
    );
    assert!(sink.snapshot().commits.is_empty());
}

#[tokio::test]
async fn a_range_behind_the_horizon_is_clamped_and_reported_or_refused_when_strict() {
    let emu = start(options(&["ccc-a"])).await;
    let cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    let now = crate::common::now().timestamp_millis();
    let sink = Arc::new(MemorySink::default());
    let e = engine_with_secret(
        &cfg,
        SECRET,
        vec![sink.clone()],
        Arc::new(MemoryLedger::default()),
    );
    let mut req = request(&["ccc-a"], now - 185 * DAY, now - 170 * DAY);
    let summary = e.run(&req).await.unwrap();
    assert_eq!(summary.exit_code(), 0);
    assert_eq!(summary.lost.len(), 1);
    let lost = &summary.lost[0];
    assert_eq!(lost.start_ms, now - 185 * DAY);
    assert!(lost.end_ms > now - 180 * DAY && lost.end_ms < now - 179 * DAY);
    assert!(summary.render().contains("LOST"));
    assert_eq!(summary.windows_ok, 2);
    req.strict_horizon = true;
    let err = e.run(&req).await.unwrap_err();
    assert!(err.to_string().contains("--strict-horizon"), "{err}");
    assert_eq!(ccc_etl::error::exit_code_for(&err), 2);
}
