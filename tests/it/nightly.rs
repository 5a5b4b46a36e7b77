//! Nightly runs, status, verify, metrics and JSON logs, end to end against the emulator.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::common::*;
use ccc_etl::ccc::emulator::{EmulatorOptions, Faults};
use ccc_etl::commands::{nightly_request, run_verify, status_report};
use ccc_etl::config::{ParquetConfig, PostgresConfig, SchemaName, SignatureVersion};
use ccc_etl::ledger::{FileLedger, Ledger, MemoryLedger};
use ccc_etl::pipeline::{BackfillRequest, Engine, NowFn, RangeStart, RunKind};
use ccc_etl::progress::Progress;
use ccc_etl::record::MediaType;
use ccc_etl::sink::Sink;
use ccc_etl::sink::memory::MemorySink;
use ccc_etl::sink::parquet::ParquetSink;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

fn shared_clock(opts: &mut EmulatorOptions, start: i64) -> Arc<AtomicI64> {
    let t = Arc::new(AtomicI64::new(start));
    let c = t.clone();
    opts.clock =
        Arc::new(move || DateTime::<Utc>::from_timestamp_millis(c.load(Ordering::SeqCst)).unwrap());
    t
}

fn now_of(t: &Arc<AtomicI64>) -> NowFn {
    let t = t.clone();
    Arc::new(move || t.load(Ordering::SeqCst))
}

#[tokio::test]
async fn after_a_backfill_nightly_fetches_only_the_lookback_and_new_windows_and_counts_revisions() {
    let instances = ["ccc-a", "ccc-b"];
    let mut opts = options(&instances);
    let t0 = crate::common::now().timestamp_millis();
    let clock = shared_clock(&mut opts, t0);
    let model = opts.data_model();
    let emu = start(opts).await;
    let cfg = config(&emu, &instances, SignatureVersion::V1);
    let sink = Arc::new(MemorySink::default());
    let ledger = Arc::new(MemoryLedger::default());
    let names: Vec<String> = instances.iter().map(|s| s.to_string()).collect();

    // First night, no history: the whole 180 days.
    let first = engine(&cfg, vec![sink.clone()], ledger.clone(), now_of(&clock))
        .run(&nightly_request(&cfg, names.clone(), t0))
        .await
        .unwrap();
    assert_eq!(first.exit_code(), 0, "{}", first.render());
    assert!(
        first.lost.is_empty(),
        "a nightly never reports its own horizon margin as lost"
    );
    assert_eq!(
        first.windows_ok,
        2 * 26,
        "180 days need 26 windows per instance"
    );
    let calls_after_first = emu.stats().await.unwrap().ok_calls().len();

    // The next night.
    let t1 = t0 + DAY;
    clock.store(t1, Ordering::SeqCst);
    let second = engine(&cfg, vec![sink.clone()], ledger.clone(), now_of(&clock))
        .run(&nightly_request(&cfg, names.clone(), t1))
        .await
        .unwrap();
    assert_eq!(second.exit_code(), 0, "{}", second.render());
    let stats = emu.stats().await.unwrap();
    let calls = &stats.ok_calls()[calls_after_first..];
    assert_eq!(
        calls.len(),
        2,
        "one window per instance: the lookback plus the new day"
    );
    let lookback_floor = t0 - 3 * DAY;
    for c in calls {
        assert!(
            c.start_ms >= lookback_floor && c.start_ms <= t0 - 2 * DAY,
            "{c:?}"
        );
        assert!(c.end_ms == t1, "{c:?}");
    }
    assert!(
        second.revisions > 0,
        "buckets still being revised at the first fetch were updated: {}",
        second.render()
    );
    assert!(second.render().contains("revisions found"));
    // The revised bucket now holds its final value.
    let b = (t0 / H - 1) * H;
    let tables = sink.snapshot();
    assert_eq!(
        tables.inbound[&("ccc-a".to_string(), MediaType::Audio, b)],
        model.final_rows("ccc-a", MediaType::Audio, b).inbound
    );
}

#[tokio::test]
async fn a_gap_left_by_an_injected_failure_is_filled_by_the_next_nightly() {
    let instances = ["ccc-a", "ccc-b"];
    let t0 = crate::common::now().timestamp_millis();
    let mut failing = options(&instances);
    failing.faults = Faults {
        failing_instances: vec!["ccc-b".into()],
        ..Default::default()
    };
    let emu_bad = start(failing).await;
    let mut cfg = config(&emu_bad, &instances, SignatureVersion::V1);
    cfg.source.max_attempts = 2;
    let sink = Arc::new(MemorySink::default());
    let ledger = Arc::new(MemoryLedger::default());
    let names: Vec<String> = instances.iter().map(|s| s.to_string()).collect();
    let fixed: NowFn = Arc::new(move || t0);
    let first = engine(&cfg, vec![sink.clone()], ledger.clone(), fixed.clone())
        .run(&nightly_request(&cfg, names.clone(), t0))
        .await
        .unwrap();
    assert_eq!(first.exit_code(), 3);
    assert_eq!(first.windows_failed.len(), 26);
    assert!(sink.snapshot().inbound.keys().all(|k| k.0 == "ccc-a"));

    // The service recovers (same data, no faults): the next nightly fills ccc-b and only that.
    let emu_good = start(options(&instances)).await;
    let cfg = config(&emu_good, &instances, SignatureVersion::V1);
    let second = engine(&cfg, vec![sink.clone()], ledger.clone(), fixed)
        .run(&nightly_request(&cfg, names, t0))
        .await
        .unwrap();
    assert_eq!(second.exit_code(), 0, "{}", second.render());
    let stats = emu_good.stats().await.unwrap();
    let b_calls = stats
        .ok_calls()
        .iter()
        .filter(|c| c.instance_id == "ccc-b")
        .count();
    let a_calls = stats
        .ok_calls()
        .iter()
        .filter(|c| c.instance_id == "ccc-a")
        .count();
    assert_eq!(b_calls, 26, "every window of the gap");
    assert_eq!(a_calls, 1, "ccc-a only gets its lookback");
    let per_instance = |inst: &str| {
        sink.snapshot()
            .inbound
            .keys()
            .filter(|k| k.0 == inst)
            .count()
    };
    assert_eq!(per_instance("ccc-b"), per_instance("ccc-a"));
}

#[tokio::test]
async fn status_raises_the_aging_out_alert_for_an_uncovered_old_range_until_nightly_fills_it() {
    let emu = start(options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    cfg.parquet = Some(ParquetConfig::at(dir.path().to_path_buf()));
    let now = crate::common::now().timestamp_millis();
    let fixed: NowFn = Arc::new(move || now);
    let open = || -> (Vec<Arc<dyn Sink>>, Arc<dyn Ledger>) {
        (
            vec![Arc::new(
                ParquetSink::new(dir.path(), cfg.pipeline.timezone).unwrap(),
            )],
            Arc::new(FileLedger::open(dir.path()).unwrap()),
        )
    };
    // Only the last 30 days are fetched.
    let (sinks, ledger) = open();
    let req = BackfillRequest {
        instances: vec!["ccc-a".into()],
        from: RangeStart::At(now - 30 * DAY),
        to_ms: now,
        refetch: false,
        strict_horizon: false,
        kind: RunKind::Backfill,
        lookback_ms: None,
    };
    assert_eq!(
        engine(&cfg, sinks, ledger, fixed.clone())
            .run(&req)
            .await
            .unwrap()
            .exit_code(),
        0
    );
    let report = status_report(&cfg, 7, now).await.unwrap();
    assert!(report.alert);
    let s = &report.series[0];
    assert_eq!(s.aging_out.len(), 1);
    assert_eq!(s.aging_out[0].start_ms, report.horizon_ms);
    assert_eq!(s.aging_out[0].end_ms, report.horizon_ms + 7 * DAY);
    assert_eq!(s.covered.len(), 1);
    assert_eq!(
        s.rows["parquet"],
        3 * 30 * 24,
        "one row per hour and table: {:?}",
        s.rows
    );
    let text = report.render();
    assert!(
        text.contains("ALERT") && text.contains("(never fetched: it is older than everything"),
        "the first run's alert explains itself: {text}"
    );
    assert!(report.last_success.is_some());

    let (sinks, ledger) = open();
    let night = engine(&cfg, sinks, ledger, fixed)
        .run(&nightly_request(&cfg, vec!["ccc-a".into()], now))
        .await
        .unwrap();
    assert_eq!(night.exit_code(), 0);
    let report = status_report(&cfg, 7, now).await.unwrap();
    assert!(!report.alert, "{}", report.render());
    assert!(
        report.series[0]
            .recoverable_gaps
            .iter()
            .all(|g| g.end_ms - g.start_ms <= 2 * 60_000),
        "{}",
        report.render()
    );
}

#[tokio::test]
async fn verify_catches_a_row_deleted_from_one_sink() {
    let db = TestDb::create().await;
    let emu = start(options(&["ccc-a", "ccc-b"])).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&emu, &["ccc-a", "ccc-b"], SignatureVersion::V3);
    cfg.parquet = Some(ParquetConfig::at(dir.path().to_path_buf()));
    cfg.postgres = Some(PostgresConfig {
        url: Some(SecretString::from(db.url.clone())),
        schema: SchemaName::parse("ccc").unwrap(),
    });
    let now = crate::common::now().timestamp_millis() / H * H - 8 * H;
    {
        let (sinks, ledger) = ccc_etl::commands::open_sinks(&cfg).await.unwrap();
        let e = Engine::new(
            cfg.clone(),
            Arc::new(client(&cfg, SECRET)),
            sinks,
            ledger,
            Arc::new(move || now),
            Progress::hidden(),
        );
        let req = BackfillRequest {
            instances: vec!["ccc-a".into(), "ccc-b".into()],
            from: RangeStart::At(now - 5 * DAY),
            to_ms: now,
            refetch: false,
            strict_horizon: false,
            kind: RunKind::Backfill,
            lookback_ms: None,
        };
        assert_eq!(e.run(&req).await.unwrap().exit_code(), 0);
    }
    assert_eq!(
        run_verify(&cfg, std::path::Path::new("pipeline.toml"))
            .await
            .unwrap(),
        0
    );
    let pool = db.pool().await;
    let deleted = sqlx::query(
        "DELETE FROM ccc.outbound_trend WHERE instance_id = 'ccc-b' AND stats_time = $1",
    )
    .bind(DateTime::<Utc>::from_timestamp_millis(now - 2 * DAY).unwrap())
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(deleted, 1);
    assert_eq!(
        run_verify(&cfg, std::path::Path::new("pipeline.toml"))
            .await
            .unwrap(),
        4
    );
    // A changed value is caught too, with equal counts.
    sqlx::query("UPDATE ccc.inbound_trend SET total_calls = total_calls + 1 WHERE stats_time = $1 AND instance_id = 'ccc-a'")
        .bind(DateTime::<Utc>::from_timestamp_millis(now - 3 * DAY).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let pg = ccc_etl::verify::pg_digests(
        &ccc_etl::commands::connect_postgres(&cfg)
            .await
            .unwrap()
            .unwrap(),
        cfg.pipeline.timezone,
    )
    .await
    .unwrap();
    let root = ccc_etl::sink::parquet::Root::Local(ccc_etl::sink::parquet::Layout::new(dir.path()));
    let pq = ccc_etl::verify::parquet_digests(&root, cfg.pipeline.timezone)
        .await
        .unwrap()
        .digests;
    let diffs = ccc_etl::verify::compare(&pg, &pq);
    assert_eq!(diffs.len(), 2, "{diffs:?}");
    assert!(
        diffs
            .iter()
            .any(|d| d.table == "outbound_trend" && d.postgres.rows + 1 == d.parquet.rows)
    );
    assert!(
        diffs.iter().all(|d| !d.instances.is_empty()),
        "each difference names its instances: {diffs:?}"
    );
    assert!(diffs.iter().any(|d| d.table == "inbound_trend"
        && d.postgres.rows == d.parquet.rows
        && d.postgres.checksum != d.parquet.checksum));
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn backfill_writes_a_metrics_file_and_json_logs_with_run_and_window_fields() {
    let emu = start(options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .parquet(dir.path().join("wh").display())
        .write(&cfg_path);
    let metrics = dir.path().join("ccc_etl.prom");
    let out = crate::common::ccc_etl_cmd()
        .args(crate::common::args(&[
            "--log-format",
            "json",
            "--config",
            cfg_path.to_str().unwrap(),
            "backfill",
            "--from",
            "2026-11-20",
            "--to",
            "2026-11-22",
        ]))
        .arg("--metrics-file")
        .arg(&metrics)
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    for needle in [
        "ccc_etl_windows{command=\"backfill\",status=\"ok\"} 1\n",
        "ccc_etl_rows{command=\"backfill\",table=\"inbound_trend\"} 72\n",
        "ccc_etl_requests{command=\"backfill\",code=\"OK\"} 1\n",
        "ccc_etl_retries{command=\"backfill\"} 0\n",
        "ccc_etl_last_success_timestamp_seconds{command=\"backfill\"}",
        "ccc_etl_quality_violations{command=\"backfill\",kind=\"missing_buckets\"} 0\n",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains(SECRET));
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["message"].is_string())
    );
    // Every line the run writes carries the run at the top level (those before the engine
    // starts too: opening the sinks, checking the root).
    assert!(
        lines
            .iter()
            .all(|l| l["run_id"].is_string() && l["command"] == "backfill"),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "Parquet root"),
        "{stderr}"
    );
    // The summary on stdout is JSON too, one line, with the run's fields at the top.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout is JSON: {l}: {e}")))
        .collect();
    assert_eq!(summary.len(), 1, "{stdout}");
    assert_eq!(summary[0]["command"], "backfill");
    assert_eq!(summary[0]["windows_ok"], 1);
    assert!(summary[0]["run_id"].is_string());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
            .count(),
        0
    );

    // A run that fails before fetching (the endpoint is down) still writes the file: its exit
    // code and time, and the last success of the run before.
    let success_line = text
        .lines()
        .find(|l| l.starts_with("ccc_etl_last_success_timestamp_seconds"))
        .unwrap()
        .to_string();
    let before = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        before.replace(&emu.endpoint(), "http://127.0.0.1:9"),
    )
    .unwrap();
    let down = crate::common::ccc_etl_cmd()
        .args(crate::common::args(&[
            "--log-format",
            "json",
            "--config",
            cfg_path.to_str().unwrap(),
            "backfill",
            "--from",
            "2026-11-20",
        ]))
        .arg("--metrics-file")
        .arg(&metrics)
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    let code = down.status.code().unwrap();
    assert_ne!(code, 0);
    // In JSON mode the fatal error is a JSON line too.
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&down.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stderr is JSON: {l}: {e}")))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(
        (last["level"].as_str(), last["exit_code"].as_u64()),
        (Some("ERROR"), Some(code as u64))
    );
    assert!(
        lines
            .iter()
            .all(|l| l["run_id"].is_string() && l["command"] == "backfill"),
        "every line, the last words too: {lines:?}"
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains(&format!(
            "ccc_etl_last_run_exit_code{{command=\"backfill\"}} {code}\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&success_line),
        "{success_line} kept in:\n{text}"
    );
}
