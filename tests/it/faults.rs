//! A run against a misbehaving service completes with complete, duplicate-free data.

use crate::common;
use std::sync::Arc;

use crate::common::*;
use ccc_etl::ccc::emulator::Faults;
use ccc_etl::config::SignatureVersion;
use ccc_etl::ledger::MemoryLedger;
use ccc_etl::pipeline::{BackfillRequest, Engine, RangeStart, RunKind};
use ccc_etl::progress::Progress;
use ccc_etl::record::MediaType;
use ccc_etl::sink::memory::MemorySink;

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
    let to = crate::common::now().timestamp_millis() / H * H - 3 * H;
    let from = to - 150 * DAY;
    let engine = Engine::new(
        cfg.clone(),
        Arc::new(client(&cfg, SECRET)),
        vec![sink.clone()],
        Arc::new(MemoryLedger::default()),
        crate::common::now_fn(),
        Progress::hidden(),
    );
    let req = BackfillRequest {
        instances: instances.iter().map(|s| s.to_string()).collect(),
        from: RangeStart::At(from),
        to_ms: to,
        refetch: false,
        strict_horizon: false,
        kind: RunKind::Backfill,
        lookback_ms: None,
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

/// A TLS server on loopback whose certificate no one trusts (self-signed for `localhost`).
async fn untrusted_tls_server() -> u16 {
    use tokio_rustls::rustls;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // The client refuses the certificate; the handshake fails and the connection ends.
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_untrusted_tls_certificate_stops_the_run_at_once_naming_the_host() {
    let port = untrusted_tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = backfill_binary(
        dir.path(),
        ConfigToml::new(&format!("https://localhost:{port}"), &["ccc-a"]),
        "2026-11-20",
        "2026-11-21",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a permanent failure, not a retryable one:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "the TLS certificate of localhost:{port} is not trusted"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("requests 1, retries 0"),
        "not retried: {stdout}"
    );
}

#[tokio::test]
async fn a_network_that_is_down_exits_1_and_a_held_root_exits_5_neither_is_bad_input() {
    let emu = start(options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("wh");
    let write = |endpoint: &str| {
        ConfigToml::new(endpoint, &["ccc-a"])
            .parquet(root.display())
            .write_in(dir.path())
    };
    let run = |cfg: std::path::PathBuf| async move {
        crate::common::ccc_etl_cmd()
            .arg("--config")
            .arg(&cfg)
            .args(common::args(&[
                "backfill",
                "--from",
                "2026-11-20",
                "--to",
                "2026-11-21",
            ]))
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
            .env("NO_COLOR", "1")
            .output()
            .await
            .unwrap()
    };
    let down = run(write("http://127.0.0.1:9")).await;
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the endpoint http://127.0.0.1:9"),
        "{stderr}"
    );
    assert!(!root.exists(), "nothing was written");

    let held = ccc_etl::sink::parquet::ParquetSink::new(&root, chrono_tz::Asia::Shanghai).unwrap();
    let busy = run(write(&emu.endpoint())).await;
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(busy.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("another ccc-etl run is writing to"),
        "{stderr}"
    );
    assert_eq!(emu.stats().await.unwrap().requests, 0, "no API request");
    drop(held);
    assert_eq!(run(write(&emu.endpoint())).await.status.code(), Some(0));
}

#[tokio::test]
async fn an_instance_the_service_does_not_know_is_named_stops_being_fetched_and_exits_1() {
    let emu = start(options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let out = backfill_binary(
        dir.path(),
        ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-typo"]).set("source", "concurrency", 1),
        "2026-11-01",
        "2026-11-14",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not 3, retried forever: {stdout}"
    );
    assert!(
        stdout.contains("UNKNOWN INSTANCE ccc-typo") && stdout.contains("[pipeline] instances"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 window(s) ok"),
        "ccc-a is written: {stdout}"
    );
    let stats = emu.stats().await.unwrap();
    assert_eq!(
        stats.count("GetInstanceTrendingReport", "NotExists.InstanceId"),
        1,
        "its second window is not requested"
    );
}

/// Runs `ccc-etl backfill --from FROM --to TO` with `config` and a Parquet root in `dir`.
async fn backfill_binary(
    dir: &std::path::Path,
    config: ConfigToml,
    from: &str,
    to: &str,
) -> std::process::Output {
    backfill_binary_with(dir, config, &["backfill", "--from", from, "--to", to]).await
}

/// [`backfill_binary`] with the command line's arguments after `--config FILE`.
async fn backfill_binary_with(
    dir: &std::path::Path,
    config: ConfigToml,
    args: &[&str],
) -> std::process::Output {
    let cfg = config.parquet(dir.join("wh").display()).write_in(dir);
    crate::common::ccc_etl_at(&cfg, None)
        .args(common::args(args))
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_taking_windows_writes_what_is_held_and_the_next_run_completes() {
    let mut opts = options(&["ccc-a"]);
    opts.revise_ms = 0;
    opts.faults = Faults {
        slow: 1.0,
        slow_ms: 400,
        ..Default::default()
    };
    let emu = start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("wh");
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "concurrency", 1)
        .set("pipeline", "timezone", "UTC")
        .parquet(root.display())
        .write(&cfg);
    let backfill = || {
        let mut c = crate::common::ccc_etl_cmd();
        c.arg("--config")
            .arg(&cfg)
            .args(common::args(&[
                "backfill",
                "--from",
                "2026-10-01",
                "--to",
                "2026-11-19",
            ]))
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let child = backfill().spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while emu.stats().await.unwrap().ok_calls().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    common::send_sigterm(child.id().unwrap());
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("stops within a bounded time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("STOPPED by a signal"), "{stdout}");
    let written: usize = ccc_etl::sink::parquet::Layout::new(&root)
        .list()
        .unwrap()
        .iter()
        .map(|f| {
            ccc_etl::sink::parquet::read_file(std::path::Path::new(&f.location), f.table)
                .unwrap()
                .len()
        })
        .sum();
    assert!(written > 0, "what was fetched before the signal is written");

    let again = backfill().output().await.unwrap();
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let mut keys = std::collections::BTreeSet::new();
    let mut rows = 0;
    for f in ccc_etl::sink::parquet::Layout::new(&root).list().unwrap() {
        for r in
            ccc_etl::sink::parquet::read_file(std::path::Path::new(&f.location), f.table).unwrap()
        {
            rows += 1;
            keys.insert((f.table, r.instance_id, r.stats_time));
        }
    }
    assert_eq!(keys.len(), rows, "nothing doubled");
    assert_eq!(
        rows,
        3 * 50 * 24,
        "every hour of 2026-10-01 .. 2026-11-19, once, in each table"
    );
}

#[tokio::test]
async fn an_unresolvable_host_is_a_clear_error_not_a_retry_loop() {
    let dir = tempfile::tempdir().unwrap();
    let out = backfill_binary(
        dir.path(),
        ConfigToml::new("https://ccc.no-such-host.invalid", &["ccc-a"]),
        "2026-11-20",
        "2026-11-21",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the endpoint https://ccc.no-such-host.invalid"),
        "{stderr}"
    );
    assert!(!dir.path().join("wh").exists(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_cut_stalled_or_never_answered_are_retried_and_nothing_is_lost() {
    use ccc_etl::sink::parquet::{Layout, Root};
    use common::proxy::{Fault, FaultProxy};
    use common::sinks::parquet_contents;
    let mut opts = options(&["ccc-a", "ccc-b", "ccc-c"]);
    opts.revise_ms = 0;
    let emu = start(opts).await;
    // One connection in four fails, each way in turn.
    let mut schedule = vec![];
    for f in [
        Fault::ResetMidBody,
        Fault::CutInHalf,
        Fault::StallMidBody,
        Fault::NeverAnswer,
    ] {
        schedule.extend([Fault::Pass, Fault::Pass, Fault::Pass, f]);
    }
    let proxy = FaultProxy::start(emu.addr, schedule).await;
    let source = |endpoint: &str| {
        ConfigToml::new(endpoint, &["ccc-a", "ccc-b", "ccc-c"])
            .set("source", "max_qps", 200)
            .set("source", "timeout_secs", 1)
            .set("source", "max_attempts", 8)
            .set("source", "backoff_base_ms", 10)
            .set("source", "backoff_max_ms", 100)
    };
    let (direct, faulty) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = backfill_binary(
        direct.path(),
        source(&emu.endpoint()),
        "2026-09-01",
        "2026-10-31",
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let metrics = faulty.path().join("m.prom");
    let out = backfill_binary_with(
        faulty.path(),
        source(&proxy.endpoint()),
        &[
            "backfill",
            "--from",
            "2026-09-01",
            "--to",
            "2026-10-31",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
    )
    .await;
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let seen = proxy.seen();
    for f in [
        Fault::ResetMidBody,
        Fault::CutInHalf,
        Fault::StallMidBody,
        Fault::NeverAnswer,
    ] {
        assert!(seen.contains(&f), "{f:?} was injected: {seen:?}");
    }
    let m = std::fs::read_to_string(&metrics).unwrap();
    let count = |code: &str| -> f64 {
        common::metric_value(
            &m,
            &format!("ccc_etl_requests{{command=\"backfill\",code=\"{code}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(count("Timeout") >= 2.0, "stalls and silences time out: {m}");
    assert!(
        count("NetworkError") >= 2.0,
        "resets and cuts are network errors: {m}"
    );
    assert_eq!(
        parquet_contents(&Root::Local(Layout::new(faulty.path().join("wh")))).await,
        parquet_contents(&Root::Local(Layout::new(direct.path().join("wh")))).await,
        "the same rows as without the proxy: nothing lost or doubled"
    );
}
