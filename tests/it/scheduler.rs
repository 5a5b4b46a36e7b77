//! What a scheduler sees of a run: `plan` with no range previews `nightly` (the very windows it
//! then sends), `backfill --date DAY` is one local day's windows, and `--format json` prints one
//! JSON document with the outcome, windows, rows per table and the horizon's headroom, also
//! when the run stops before fetching.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{self, ConfigToml, TestDb, output_text};

use crate::common::ccc_etl_on as ccc_etl;

/// The one JSON document a `--format json` run prints on stdout.
fn document(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one line: {}", output_text(out));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The windows of a `plan --format json`: (instance, start, end).
fn planned(out: &std::process::Output) -> BTreeSet<(String, i64, i64)> {
    assert_eq!(out.status.code(), Some(0), "{}", output_text(out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["instance_id"].as_str().unwrap().to_string(),
                w["start_ms"].as_i64().unwrap(),
                w["end_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn plan_with_no_range_previews_exactly_what_nightly_then_sends() {
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-b"])
        .set("source", "max_qps", 200)
        .postgres()
        .parquet(dir.path().join("wh").display())
        .write(&cfg);
    // Some history, so that nightly has gaps before it and a lookback after it.
    let from = (common::now() - chrono::Duration::days(40))
        .date_naive()
        .to_string();
    let to = (common::now() - chrono::Duration::days(20))
        .date_naive()
        .to_string();
    let out = ccc_etl(&cfg, &db, &["backfill", "--from", &from, "--to", &to]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let before = emu.stats().await.unwrap().ok_calls().len();

    let preview = planned(&ccc_etl(&cfg, &db, &["plan", "--format", "json"]).await);
    assert!(
        preview.len() > 2 * 20,
        "the gaps of 180 days: {}",
        preview.len()
    );
    let out = ccc_etl(&cfg, &db, &["nightly", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let doc = document(&out);
    assert_eq!(doc["command"], "nightly");
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["windows_ok"].as_u64().unwrap() as usize, preview.len());
    let stats = emu.stats().await.unwrap();
    let sent: BTreeSet<(String, i64, i64)> = stats.ok_calls()[before..]
        .iter()
        .map(|c| (c.instance_id.clone(), c.start_ms, c.end_ms))
        .collect();
    // The same windows; the first starts at the horizon and the last ends at now, both of
    // which moved on by the time between the two commands.
    assert_eq!(sent.len(), preview.len(), "{sent:?}\n{preview:?}");
    for (s, p) in sent.iter().zip(&preview) {
        let close = s.0 == p.0 && (s.1 - p.1).abs() < 60_000 && (s.2 - p.2).abs() < 60_000;
        assert!(close, "nightly sent {s:?} where plan showed {p:?}");
    }
    // Everything inside the horizon is covered now: the headroom is the full horizon's.
    let headroom = doc["horizon_headroom_secs"].as_i64().unwrap();
    assert!(headroom > 179 * 86_400, "{doc}");
    assert_eq!(doc["aging_alert"], false);
    let rows: i64 = ["inbound_trend", "outbound_trend", "overall_trend"]
        .iter()
        .map(|t| doc["rows"][t].as_i64().unwrap())
        .sum();
    assert!(rows > 0, "{doc}");
    db.drop_db().await;
}

#[tokio::test]
async fn backfill_date_fetches_one_local_day_and_prints_one_json_document() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "max_qps", 200)
        .postgres()
        .write(&cfg);
    let day = (common::now() - chrono::Duration::days(3)).date_naive();
    let date = day.to_string();
    let tz = chrono_tz::Asia::Shanghai;
    let start = ccc_etl::plan::local_day_start(tz, day);
    let end = ccc_etl::plan::local_day_start(tz, day.succ_opt().unwrap());
    let preview =
        planned(&ccc_etl(&cfg, &db, &["plan", "--date", &date, "--format", "json"]).await);
    assert_eq!(preview, BTreeSet::from([("ccc-a".to_string(), start, end)]));

    let out = ccc_etl(
        &cfg,
        &db,
        &["backfill", "--date", &date, "--format", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let doc = document(&out);
    assert_eq!(
        (&doc["command"], &doc["status"], &doc["exit_code"]),
        (
            &Value::from("backfill"),
            &Value::from("ok"),
            &Value::from(0)
        )
    );
    assert_eq!(doc["windows_ok"], 1);
    assert_eq!(
        doc["horizon_headroom_secs"],
        Value::Null,
        "only after nightly"
    );
    let pool = db.pool().await;
    let (n, first, last): (
        i64,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    ) = sqlx::query_as("SELECT count(*), min(stats_time), max(stats_time) FROM ccc.inbound_trend")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, doc["rows"]["inbound_trend"].as_i64().unwrap());
    assert_eq!(first.timestamp_millis(), start, "the day's first hour");
    assert!(last.timestamp_millis() < end, "nothing of the next day");
    pool.close().await;

    // --date is one calendar day and no range besides.
    let out = ccc_etl(&cfg, &db, &["backfill", "--date", "2026-02-30"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("--date 2026-02-30 is not a calendar day"));
    let out = ccc_etl(&cfg, &db, &["backfill", "--date", &date, "--from", &date]).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let out = ccc_etl(&cfg, &db, &["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("backfill needs --from"));
    db.drop_db().await;
}

#[tokio::test]
async fn a_failed_run_prints_its_json_document_too() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    // A wrong secret: the API refuses every request, the run stops with its summary.
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .postgres()
        .write(&cfg);
    let out = common::ccc_etl_at(&cfg, Some(&db.url))
        .args(["nightly", "--format", "json"])
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let doc = document(&out);
    assert_eq!(
        (&doc["status"], &doc["exit_code"]),
        (&Value::from("failed"), &Value::from(1))
    );
    assert!(
        !doc.to_string().contains("not-the-secret"),
        "no secret in {doc}"
    );
    // An endpoint that refuses connections: the run stops before its summary.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cfg = dir.path().join("closed.toml");
    ConfigToml::new(&endpoint, &["ccc-a"])
        .postgres()
        .write(&cfg);
    let out = ccc_etl(
        &cfg,
        &db,
        &["backfill", "--date", "2026-12-01", "--format", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let doc = document(&out);
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["exit_code"], 1);
    assert!(
        doc["error"].as_str().unwrap().contains("127.0.0.1"),
        "{doc}"
    );
    db.drop_db().await;
}
