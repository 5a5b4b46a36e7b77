//! Schema drift end to end: the emulator's response changes shape as the real API's has, and a
//! real `ccc-etl backfill` names every field it does not know (summary, metrics, one warning per
//! field), counts known fields that disappeared as a data-quality violation, and fails the
//! windows whose known field changed type, naming the field, without writing them.

mod common;

use std::path::Path;
use std::process::Output;

use ccc_etl::ccc::emulator::{DriftOptions, RunningEmulator};

async fn backfill(emu: &RunningEmulator, dir: &Path) -> (Output, String) {
    let cfg = dir.join("pipeline.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\nendpoint = \"{}\"\nmax_qps = 200\nmax_attempts = 2\nbackoff_base_ms = 5\n\
             [pipeline]\ninstances = [\"ccc-a\", \"ccc-b\"]\n[parquet]\nroot = \"{}\"\n",
            emu.endpoint(),
            dir.join("wh").display()
        ),
    )
    .unwrap();
    let metrics = dir.join("m.prom");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccc-etl"))
        .arg("--config")
        .arg(&cfg)
        .args(["backfill", "--from", "2026-10-01", "--to", "2026-10-31"])
        .arg("--metrics-file")
        .arg(&metrics)
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    (out, std::fs::read_to_string(&metrics).unwrap_or_default())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn metric(m: &str, prefix: &str) -> f64 {
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no {prefix} in {m}"))
        .parse()
        .unwrap()
}

async fn emulator(drift: DriftOptions) -> RunningEmulator {
    let mut opts = common::options(&["ccc-a", "ccc-b"]);
    opts.drift = drift;
    common::start(opts).await
}

#[tokio::test]
async fn new_fields_and_arrays_are_named_in_the_summary_the_metrics_and_one_warning_each() {
    let emu = emulator(DriftOptions {
        add_fields: vec!["Inbound.CallsOverflowed".into()],
        add_arrays: vec!["SkillGroups".into()],
        ..DriftOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (out, m) = backfill(&emu, dir.path()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    // Every inbound item served carried the field, and every response the array.
    let served = emu.stats().await.unwrap().rows_served / 3;
    let rows = metric(
        &m,
        "ccc_etl_unknown_fields{command=\"backfill\",section=\"Inbound\",field=\"CallsOverflowed\"}",
    );
    assert_eq!(rows, served as f64, "{m}");
    let items = metric(
        &m,
        "ccc_etl_unknown_fields{command=\"backfill\",section=\"Data\",field=\"SkillGroups\"}",
    );
    assert_eq!(items, served as f64);
    let served_fmt = ccc_etl::pipeline::thousands(served);
    assert!(
        t.contains(&format!(
            "new fields from the API: Data.SkillGroups ({served_fmt} items), \
             Inbound.CallsOverflowed ({served_fmt} rows)"
        )),
        "{t}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for field in ["Inbound.CallsOverflowed", "Data.SkillGroups"] {
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.contains(&format!("new field from the API: {field}")))
                .count(),
            1,
            "one warning per field per run: {stderr}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "ccc_etl_quality_violations{command=\"backfill\",kind=\"missing_fields\"}"
        ),
        0.0
    );
    // `status` names them, from the runs the ledger recorded.
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccc-etl"))
        .arg("--config")
        .arg(dir.path().join("pipeline.toml"))
        .arg("status")
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let st = String::from_utf8_lossy(&status.stdout);
    assert!(
        st.contains(&format!(
            "NEW FIELDS from the API since the schema last changed, not stored: \
             Data.SkillGroups ({served_fmt}), Inbound.CallsOverflowed ({served_fmt})"
        )),
        "{st}{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[tokio::test]
async fn status_names_the_new_fields_from_the_runs_in_postgresql() {
    let emu = emulator(DriftOptions {
        add_fields: vec!["Overall.PeakAgents".into()],
        drop_fields: vec!["Inbound.CallsQueued".into()],
        ..DriftOptions::default()
    })
    .await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\nendpoint = \"{}\"\nmax_qps = 200\n[pipeline]\ninstances = [\"ccc-a\"]\n\
             [postgres]\nschema = \"ccc\"\n",
            emu.endpoint()
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ccc-etl"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
            .env("DATABASE_URL", &db.url)
            .env("NO_COLOR", "1")
            .output()
    };
    let out = run(&["backfill", "--from", "2026-11-01", "--to", "2026-11-03"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status = run(&["status"]).await.unwrap();
    let st = String::from_utf8_lossy(&status.stdout);
    assert!(st.contains("NEW FIELDS from the API"), "{st}");
    assert!(
        st.contains("Overall.PeakAgents (72)"),
        "three days of hourly rows: {st}"
    );
    assert!(
        st.contains("fields the API stopped sending: Inbound.CallsQueued"),
        "{st}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn a_known_field_that_disappears_is_a_quality_violation_not_a_crash() {
    let emu = emulator(DriftOptions {
        drop_fields: vec!["Inbound.CallsQueued".into()],
        ..DriftOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (out, m) = backfill(&emu, dir.path()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("fields the API stopped sending: Inbound.CallsQueued (stored as 0)"),
        "{t}"
    );
    let windows = metric(&m, "ccc_etl_windows{command=\"backfill\",status=\"ok\"}");
    assert_eq!(
        metric(
            &m,
            "ccc_etl_quality_violations{command=\"backfill\",kind=\"missing_fields\"}"
        ),
        windows,
        "one violation per window"
    );
}

#[tokio::test]
async fn a_known_field_whose_type_changes_fails_its_windows_naming_it_and_writes_nothing() {
    let emu = emulator(DriftOptions {
        retype_fields: vec!["Outbound.TotalCalls".into()],
        ..DriftOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (out, m) = backfill(&emu, dir.path()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("Data.Outbound.TotalCalls: invalid type: map, expected an integer"),
        "the field is named: {t}"
    );
    assert_eq!(
        metric(&m, "ccc_etl_windows{command=\"backfill\",status=\"ok\"}"),
        0.0
    );
    assert!(
        !dir.path().join("wh/outbound_trend").exists(),
        "nothing was written"
    );
}
