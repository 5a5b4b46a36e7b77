//! The Prometheus alert rules in `deploy/prometheus/`: their own `promtool test rules` unit tests
//! (a case that fires and one that must not, per rule), and the rules evaluated by promtool over
//! the metrics files real runs wrote, so a renamed metric or label cannot silently disarm a rule.
//! promtool comes with Debian's `prometheus` package (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, ConfigToml, output_text};
use ccc_etl::ccc::emulator::{DriftOptions, Faults};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn rules_dir() -> PathBuf {
    Path::new(ROOT).join("deploy/prometheus")
}

/// promtool, or a failure saying how to get it.
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is not installed: these tests run the alert rules with it; it comes with \
         Debian's prometheus package (`sudo apt-get install --no-install-recommends prometheus`)"
    );
    Command::new("promtool")
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = rules_dir();
    let check = promtool()
        .args(["check", "rules", "ccc-etl.rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = output_text(&check);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 9 rules found"), "{text}");
    let test = promtool()
        .args(["test", "rules", "ccc-etl.rules.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(test.status.success(), "{}", output_text(&test));
    // Every rule has a case where it fires (expected labels) in the unit tests.
    let rules = std::fs::read_to_string(dir.join("ccc-etl.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("ccc-etl.rules.test.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let case = format!("alertname: {name}\n        exp_alerts:\n          - exp_labels:");
        assert!(tests.contains(&case), "no firing case for {name}");
    }
}

/// Asserts that, fed the samples of a metrics file a run wrote (as node_exporter's textfile
/// collector exposes them, with the scrape's `instance` and `job`; the run finishing at time 0),
/// exactly the `expected` alerts are firing two hours later (`name{label="v",...}`, the scrape's
/// labels added here).
fn assert_firing(prom: &str, expected: &[&str]) {
    let finished = common::metric_value(prom, "ccc_etl_last_run_timestamp_seconds").unwrap_or(0.0);
    let mut series = String::new();
    for line in prom
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (metric, value) = line.rsplit_once(' ').unwrap();
        let mut value: f64 = value.parse().unwrap();
        if metric.contains("_timestamp_seconds{") {
            value -= finished;
        }
        let metric = metric.replacen('{', "{instance=\"etl-1:9100\",job=\"node\",", 1);
        series.push_str(&format!(
            "      - series: '{metric}'\n        values: '{value}x150'\n"
        ));
    }
    let mut samples = String::new();
    for alert in expected {
        let (name, labels) = alert.split_once('{').unwrap();
        samples.push_str(&format!(
            "          - labels: 'ALERTS{{alertname=\"{name}\",alertstate=\"firing\",\
             instance=\"etl-1:9100\",job=\"node\",{labels}'\n            value: 1\n"
        ));
    }
    if expected.is_empty() {
        samples = "          []\n".into();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        rules_dir().join("ccc-etl.rules.yml"),
        dir.path().join("rules.yml"),
    )
    .unwrap();
    let test = format!(
        "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    \
         input_series:\n{series}    promql_expr_test:\n      - expr: ALERTS{{alertstate=\"firing\"}}\n        \
         eval_time: 2h\n        exp_samples:\n{samples}"
    );
    std::fs::write(dir.path().join("test.yml"), &test).unwrap();
    let out = promtool()
        .args(["test", "rules", "test.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\nthe metrics file:\n{prom}",
        output_text(&out)
    );
}

/// Runs `ccc-etl` with the emulator's keys (or `secret`) and returns the process's output and
/// the metrics file it wrote.
async fn run(cfg: &Path, secret: &str, args: &[&str]) -> (std::process::Output, String) {
    let metrics = cfg.with_file_name(format!("{}.prom", args[0]));
    let out = common::ccc_etl_at(cfg, None)
        .args(common::args(args))
        .arg("--metrics-file")
        .arg(&metrics)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)
        .output()
        .await
        .unwrap();
    (out, std::fs::read_to_string(&metrics).unwrap_or_default())
}

#[tokio::test]
async fn drift_and_throttling_in_a_real_run_fire_their_rules_and_nothing_else() {
    let mut opts = common::options(&["ccc-a"]);
    opts.drift = DriftOptions {
        add_fields: vec!["Inbound.CallsOverflowed".into()],
        drop_fields: vec!["Inbound.CallsQueued".into()],
        ..DriftOptions::default()
    };
    opts.faults = Faults {
        throttled: 0.4,
        seed: 7,
        ..Faults::default()
    };
    let emu = common::start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "max_qps", 200)
        .set("source", "max_attempts", 30)
        .set("source", "backoff_base_ms", 1)
        .parquet(dir.path().join("wh").display())
        .write(&cfg);
    let args = ["backfill", "--from", "2026-10-01", "--to", "2026-10-31"];
    let (out, prom) = run(&cfg, common::SECRET, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let throttled = common::metric(&prom, "ccc_etl_throttled{command=\"backfill\"}");
    assert!(throttled > 0.0, "{prom}");
    assert_firing(
        &prom,
        &[
            "CccEtlUnknownFields{command=\"backfill\",section=\"Inbound\",field=\"CallsOverflowed\",severity=\"info\"}",
            "CccEtlMissingFields{command=\"backfill\",section=\"Inbound\",field=\"CallsQueued\",severity=\"warning\"}",
            "CccEtlThrottlingHigh{command=\"backfill\",severity=\"warning\"}",
        ],
    );
}

/// A first nightly run with a wrong secret: the run failed, never succeeded, and, since nothing
/// is covered, the oldest time is at the horizon's edge.
#[tokio::test]
async fn a_nightly_run_that_fails_fires_run_failed_no_recent_success_and_aging() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .parquet(dir.path().join("wh").display())
        .write(&cfg);
    let (out, prom) = run(&cfg, "not-the-secret", &["nightly"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_firing(
        &prom,
        &[
            "CccEtlRunFailed{command=\"nightly\",severity=\"critical\"}",
            "CccEtlNoRecentSuccess{command=\"nightly\",severity=\"warning\"}",
            "CccEtlAgingOut{command=\"nightly\",severity=\"warning\"}",
            "CccEtlHorizonHeadroomLow{command=\"nightly\",instance_id=\"ccc-a\",media_type=\"Audio\",severity=\"critical\"}",
        ],
    );
}

#[tokio::test]
async fn a_successful_nightly_fires_nothing_and_status_over_old_gaps_pages() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "max_qps", 200)
        .parquet(dir.path().join("wh").display())
        .write(&cfg);
    // Only the last days are fetched: the rest of the horizon is uncovered, its oldest bucket at
    // the horizon's edge.
    let args = ["backfill", "--from", "2026-11-30", "--to", "2026-12-03"];
    let (out, _) = run(&cfg, common::SECRET, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let (out, prom) = run(&cfg, common::SECRET, &["status"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", output_text(&out));
    assert_firing(
        &prom,
        &[
            "CccEtlAgingOut{command=\"status\",severity=\"warning\"}",
            "CccEtlHorizonHeadroomLow{command=\"status\",instance_id=\"ccc-a\",media_type=\"Audio\",severity=\"critical\"}",
        ],
    );
    // The nightly job fetches the whole horizon: nothing fires on its metrics file.
    let (out, prom) = run(&cfg, common::SECRET, &["nightly"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(prom.contains("ccc_etl_aging_alert{command=\"nightly\"} 0\n"));
    assert_firing(&prom, &[]);
}
