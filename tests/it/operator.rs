//! Operators make mistakes: a wiped volume, a file deleted or damaged by hand, a second root, a
//! changed time zone, a re-run at the live edge. What the sinks hold is the truth; the ledger is
//! only a cache of it. Each test drives the binary (or the engine, where the clock must be
//! fixed) the way an operator would, against the emulator and a real PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::common::*;
use ccc_etl::ccc::emulator::RunningEmulator;
use ccc_etl::config::{ParquetConfig, PostgresConfig, SchemaName, SignatureVersion};
use ccc_etl::pipeline::{BackfillRequest, NowFn, RangeStart, RunKind};
use ccc_etl::record::{MediaType, Table};
use ccc_etl::sink::parquet::{Layout, read_file};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;

/// One operator's setup: an emulator, a database, a directory for roots and configs.
struct Site {
    emu: RunningEmulator,
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Site {
    async fn new() -> Self {
        Self {
            emu: start(options(&["ccc-a"])).await,
            db: TestDb::create().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config file with both sinks (`postgres: false` for Parquet alone).
    fn config(&self, name: &str, root: &str, tz: &str, postgres: bool) -> PathBuf {
        let p = self.dir.path().join(name);
        let toml = ConfigToml::new(&self.emu.endpoint(), &["ccc-a"])
            .set("source", "max_qps", 500)
            .set("pipeline", "timezone", tz)
            .parquet(self.root(root).display());
        if postgres { toml.postgres() } else { toml }.write(&p);
        p
    }

    async fn run(&self, config: &Path, args: &[&str]) -> Output {
        crate::common::ccc_etl_at(config, Some(&self.db.url))
            .args(crate::common::args(args))
            .env_remove("ALIBABA_CLOUD_SECURITY_TOKEN")
            .output()
            .await
            .unwrap()
    }

    /// Runs and checks the exit code, showing everything the command said if it differs.
    async fn run_ok(&self, config: &Path, args: &[&str], code: i32) -> String {
        let out = self.run(config, args).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{args:?}:\n{text}");
        text
    }

    async fn pg_rows(&self) -> i64 {
        let pool = self.db.pool().await;
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM ccc.inbound_trend) + (SELECT count(*) FROM ccc.outbound_trend) + (SELECT count(*) FROM ccc.overall_trend)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        n
    }
}

/// Every row under a root, as (table, instance, stats_time, counts), sorted.
fn parquet_rows(root: &Path) -> Vec<(Table, String, i64, Vec<i64>)> {
    let mut out = vec![];
    for f in Layout::new(root).list().unwrap() {
        for r in read_file(std::path::Path::new(&f.location), f.table).unwrap() {
            out.push((f.table, r.instance_id, r.stats_time, r.counts));
        }
    }
    out.sort();
    out
}

/// A day as the tests write it.
fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// A week of November; `status` then exits 4: the older part of the horizon is not covered and
/// ages out soon.
const WEEK: [&str; 5] = ["backfill", "--from", "2026-11-01", "--to", "2026-11-07"];

#[tokio::test]
async fn a_wiped_root_a_deleted_day_file_and_a_second_root_are_all_refilled() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let full = parquet_rows(&site.root("wh"));
    assert_eq!(full.len(), 3 * 7 * 24, "one row per hour and table");
    let pg = site.pg_rows().await;
    assert_eq!(pg, full.len() as i64);

    // A day file deleted by hand is noticed by the next run's listing and fetched again.
    let layout = Layout::new(site.root("wh"));
    std::fs::remove_file(layout.day_file(Table::Inbound, day("2026-11-03"))).unwrap();
    let status = site.run_ok(&cfg, &["status"], 4).await;
    assert!(
        status.contains("NOT COVERED") && status.contains("dt=2026-11-03"),
        "status tells the day is missing: {status}"
    );
    // Rows per sink and table, as they are: a day of inbound rows gone from Parquet only.
    assert!(
        status.contains(
            "ccc-a/Audio: parquet 480 rows (inbound_trend 144, outbound_trend 168, \
             overall_trend 168), postgres 504 rows (inbound_trend 168, outbound_trend 168, \
             overall_trend 168)"
        ),
        "{status}"
    );
    let out = site.run_ok(&cfg, &WEEK, 0).await;
    assert!(!out.contains(" 0 window(s) ok"), "{out}");
    assert_eq!(parquet_rows(&site.root("wh")), full);

    // The whole root wiped (a replaced volume): refilled, by the nightly job as well.
    std::fs::remove_dir_all(site.root("wh")).unwrap();
    let status = site.run_ok(&cfg, &["status", "--format", "json"], 4).await;
    let report: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        report["series"][0]["rows"]["parquet"], 0,
        "status counts what is on disk: {status}"
    );
    assert!(
        !site.root("wh").exists(),
        "status created nothing: it is read-only"
    );
    site.run_ok(&cfg, &["nightly"], 0).await;
    let after = parquet_rows(&site.root("wh"));
    for row in &full {
        assert!(after.contains(row), "{row:?} is back after the wipe");
    }
    site.run_ok(&cfg, &["verify"], 0).await;

    // A second configuration on the same database, with another root, fills its own root.
    let other = site.config("other.toml", "wh2", "Asia/Shanghai", true);
    let out = site.run_ok(&other, &WEEK, 0).await;
    assert!(!out.contains(" 0 window(s) ok"), "{out}");
    assert_eq!(parquet_rows(&site.root("wh2")), full);
    assert_eq!(
        site.pg_rows().await as usize,
        after.len(),
        "nothing doubled"
    );
    site.db.drop_db().await;
}

#[tokio::test]
async fn without_postgres_a_deleted_day_file_is_refilled_through_the_file_ledger() {
    let site = Site::new().await;
    let cfg = site.config("pq.toml", "wh", "Asia/Shanghai", false);
    site.run_ok(&cfg, &WEEK, 0).await;
    let full = parquet_rows(&site.root("wh"));
    let layout = Layout::new(site.root("wh"));
    std::fs::remove_file(layout.day_file(Table::Overall, day("2026-11-05"))).unwrap();
    let out = site.run_ok(&cfg, &WEEK, 0).await;
    assert!(!out.contains(" 0 window(s) ok"), "{out}");
    assert_eq!(parquet_rows(&site.root("wh")), full);
    site.db.drop_db().await;
}

#[tokio::test]
async fn a_damaged_day_file_is_a_finding_for_status_and_verify_and_the_next_run_refetches_it() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let full = parquet_rows(&site.root("wh"));
    let layout = Layout::new(site.root("wh"));
    let damaged = layout.day_file(Table::Outbound, day("2026-11-04"));
    std::fs::write(&damaged, b"PAR1 this is not a parquet file PAR1").unwrap();

    // status still computes everything, the day is not covered in Parquet.
    let status = site.run_ok(&cfg, &["status", "--format", "json"], 4).await;
    let report: serde_json::Value = serde_json::from_str(&status).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{status}");
    assert!(
        findings[0].as_str().unwrap().contains("damaged"),
        "{status}"
    );
    let gaps = report["series"][0]["recoverable_gaps"].as_array().unwrap();
    assert!(
        gaps.iter()
            .any(|g| g["start"] == "2026-11-04T00:00:00+08:00"),
        "the local day 2026-11-04 is a gap: {status}"
    );
    // verify lists it and exits 4.
    let out = site.run_ok(&cfg, &["verify"], 4).await;
    assert!(
        out.contains("DAMAGED") && out.contains("dt=2026-11-04"),
        "{out}"
    );

    // The next run moves it aside (evidence is kept) and fetches the day again.
    site.run_ok(&cfg, &WEEK, 0).await;
    assert_eq!(parquet_rows(&site.root("wh")), full);
    let aside: Vec<PathBuf> = walk(&layout.state_dir().join("damaged"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        b"PAR1 this is not a parquet file PAR1"
    );
    site.run_ok(&cfg, &["verify"], 0).await;
    site.db.drop_db().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn a_changed_time_zone_is_refused_until_migrate_moves_the_views_and_the_partitions() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let before = parquet_rows(&site.root("wh"));
    let utc = site.config("utc.toml", "wh", "UTC", true);
    for args in [&WEEK[..], &["status"], &["verify"], &["nightly"]] {
        let out = site.run_ok(&utc, args, 2).await;
        assert!(
            out.contains("Asia/Shanghai") && out.contains("UTC") && out.contains("ccc-etl migrate"),
            "{args:?}: {out}"
        );
    }
    assert_eq!(
        parquet_rows(&site.root("wh")),
        before,
        "nothing was written"
    );
    let pool = site.db.pool().await;
    let tz: String = sqlx::query_scalar("SELECT value FROM ccc.settings WHERE key = 'timezone'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        tz, "Asia/Shanghai",
        "no command but migrate changes the views' zone"
    );
    pool.close().await;
    // A Parquet-only configuration over the same root is refused the same way.
    let utc_pq = site.config("utc-pq.toml", "wh", "UTC", false);
    let out = site.run_ok(&utc_pq, &WEEK, 2).await;
    assert!(
        out.contains("cuts its dt= days in time zone Asia/Shanghai"),
        "{out}"
    );

    // The documented migration: every row moves to its UTC day, once.
    let out = site.run_ok(&utc, &["migrate"], 0).await;
    assert!(out.contains("re-partitioned for UTC"), "{out}");
    let after = parquet_rows(&site.root("wh"));
    assert_eq!(after, before, "the same rows, none doubled");
    let layout = Layout::new(site.root("wh"));
    for f in layout.list().unwrap() {
        for r in read_file(std::path::Path::new(&f.location), f.table).unwrap() {
            let d = DateTime::<Utc>::from_timestamp_millis(r.stats_time)
                .unwrap()
                .date_naive();
            assert_eq!(d, f.day, "{} holds a row of another UTC day", f.location);
        }
    }
    site.run_ok(&utc, &["verify"], 0).await;
    // The same dates are other instants in UTC: only the 8 hours not yet covered are fetched.
    let out = site.run_ok(&utc, &WEEK, 0).await;
    assert!(out.contains("1 window(s) ok"), "{out}");
    let again = parquet_rows(&site.root("wh"));
    assert_eq!(again.len(), before.len() + 3 * 8, "{out}");
    let mut keys: Vec<_> = again
        .iter()
        .map(|(t, i, st, _)| (*t, i.clone(), *st))
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), again.len(), "no row twice");
    let pool = site.db.pool().await;
    let tz: String = sqlx::query("SELECT value FROM ccc.settings WHERE key = 'timezone'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("value");
    assert_eq!(tz, "UTC");
    pool.close().await;
    site.db.drop_db().await;
}

#[tokio::test]
async fn a_re_run_completes_the_bucket_that_was_in_progress_when_the_last_run_ended() {
    let mut opts = options(&["ccc-a"]);
    // Closed buckets are final at once; the bucket in progress is served partly filled.
    opts.revise_ms = 1;
    let t1 = (crate::common::now().timestamp_millis() - 2 * DAY) / H * H + 30 * 60_000 + 5_000;
    let clock = Arc::new(AtomicI64::new(t1));
    let c = clock.clone();
    opts.clock =
        Arc::new(move || DateTime::<Utc>::from_timestamp_millis(c.load(Ordering::SeqCst)).unwrap());
    let model = opts.data_model();
    let emu = start(opts).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    cfg.parquet = Some(ParquetConfig::at(dir.path().to_path_buf()));
    cfg.postgres = Some(PostgresConfig {
        url: Some(secrecy::SecretString::from(db.url.clone())),
        schema: SchemaName::parse("ccc").unwrap(),
    });
    let now: NowFn = {
        let c = clock.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    };
    let req = |to_ms| BackfillRequest {
        instances: vec!["ccc-a".into()],
        from: RangeStart::At(t1 - DAY),
        to_ms,
        refetch: false,
        strict_horizon: false,
        kind: RunKind::Backfill,
        lookback_ms: None,
    };
    let run = |to_ms: i64| {
        let (cfg, now, req) = (cfg.clone(), now.clone(), req(to_ms));
        async move {
            let (sinks, ledger) = ccc_etl::commands::open_sinks(&cfg).await.unwrap();
            engine(&cfg, sinks, ledger, now).run(&req).await.unwrap()
        }
    };
    let first = run(t1).await;
    assert_eq!(first.exit_code(), 0, "{}", first.render());
    // Two hours later, the same backfill again.
    let t2 = t1 + 2 * H;
    clock.store(t2, Ordering::SeqCst);
    let second = run(t2).await;
    assert_eq!(second.exit_code(), 0, "{}", second.render());

    let open_bucket = t1 / H * H;
    let expected = model
        .final_rows("ccc-a", MediaType::Audio, open_bucket)
        .inbound
        .total_calls;
    let pool = db.pool().await;
    let in_pg: i64 = sqlx::query_scalar(
        "SELECT total_calls FROM ccc.inbound_trend WHERE instance_id = 'ccc-a' AND media_type = 'Audio' AND stats_time = $1",
    )
    .bind(DateTime::<Utc>::from_timestamp_millis(open_bucket).unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_pg, expected, "PostgreSQL holds the completed bucket");
    let in_parquet: Vec<i64> = parquet_rows(dir.path())
        .into_iter()
        .filter(|(t, _, st, _)| *t == Table::Inbound && *st == open_bucket)
        .map(|(_, _, _, c)| c[0])
        .collect();
    assert_eq!(
        in_parquet,
        vec![expected],
        "Parquet holds the completed bucket"
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn verify_repair_fetches_again_the_days_where_the_sinks_differ() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let rows = site.pg_rows().await;
    // Rows lost from PostgreSQL behind ccc-etl's back: the ledger still says "committed".
    let pool = site.db.pool().await;
    let deleted = sqlx::query(
        "DELETE FROM ccc.outbound_trend WHERE stats_time >= '2026-11-05T00:00:00+08' AND stats_time < '2026-11-05T06:00:00+08'",
    )
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(deleted, 6);
    pool.close().await;
    let out = site.run_ok(&cfg, &WEEK, 0).await;
    assert!(
        out.contains("0 window(s) ok"),
        "a plain re-run trusts the ledger: {out}"
    );
    let out = site.run_ok(&cfg, &["verify"], 4).await;
    assert!(out.contains("outbound_trend dt=2026-11-05"), "{out}");
    assert!(
        out.contains("; instances ccc-a"),
        "names the instance: {out}"
    );
    assert!(
        out.contains("verify --repair"),
        "prints the command that repairs: {out}"
    );

    let before = site.emu.stats().await.unwrap().ok_calls().len();
    let out = site.run_ok(&cfg, &["verify", "--repair"], 0).await;
    // It says how many windows it fetches again, and fetches that many.
    let announced: usize = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("repair: ")?
                .strip_suffix(" window(s) to fetch again")
        })
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    assert!(announced > 0, "{out}");
    assert_eq!(sent_since(&site, before).await.len(), announced, "{out}");
    assert_eq!(site.pg_rows().await, rows, "{out}");
    site.run_ok(&cfg, &["verify"], 0).await;
    site.db.drop_db().await;
}

#[tokio::test]
async fn status_and_verify_write_nothing_not_even_migrations() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "UTC", true);
    // A database never written to holds nothing: status says so (and alerts), verify asks for a
    // first run; neither creates anything.
    let out = site.run(&cfg, &["status", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(4));
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["series"][0]["rows"]["postgres"], 0, "{out}");
    assert!(
        report["series"][0]["covered"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{out}"
    );
    let out = site.run_ok(&cfg, &["verify"], 2).await;
    assert!(
        out.contains("run `ccc-etl migrate` or a backfill first"),
        "{out}"
    );
    let pool = site.db.pool().await;
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'ccc'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(schemas, 0, "no schema was created");
    pool.close().await;
    assert!(!site.root("wh").exists(), "no Parquet root was created");
    site.run_ok(&cfg, &["migrate"], 0).await;
    site.run_ok(&cfg, &["status"], 4).await;
    site.db.drop_db().await;
}

#[tokio::test]
async fn plan_shows_exactly_the_requests_the_next_backfill_sends() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    // A partial backfill first: the plan must leave its windows out.
    site.run_ok(
        &cfg,
        &["backfill", "--from", "2026-11-03", "--to", "2026-11-05"],
        0,
    )
    .await;
    let range = ["--from", "2026-10-20", "--to", "2026-11-12"];
    let planned_json = site
        .run_ok(
            &cfg,
            &[&["plan", "--format", "json"][..], &range].concat(),
            0,
        )
        .await;
    let planned = planned_windows(&planned_json);
    let all_json = site
        .run_ok(
            &cfg,
            &[&["plan", "--all", "--format", "json"][..], &range].concat(),
            0,
        )
        .await;
    let all: serde_json::Value = serde_json::from_str(&all_json).unwrap();
    assert!(
        all["windows"].as_array().unwrap().len() >= planned.len(),
        "--all shows the whole plan"
    );
    let before = site.emu.stats().await.unwrap().ok_calls().len();
    site.run_ok(&cfg, &[&["backfill"][..], &range].concat(), 0)
        .await;
    assert_eq!(
        sent_since(&site, before).await,
        planned,
        "plan said {planned_json}"
    );
    assert!(!planned.is_empty());
    site.db.drop_db().await;
}

#[tokio::test]
async fn status_and_nightly_export_the_horizon_headroom_and_the_alert() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let status_prom = site.dir.path().join("status.prom");
    site.run_ok(
        &cfg,
        &["status", "--metrics-file", status_prom.to_str().unwrap()],
        4,
    )
    .await;
    let text = std::fs::read_to_string(&status_prom).unwrap();
    assert!(
        text.contains("ccc_etl_aging_alert{command=\"status\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("ccc_etl_horizon_headroom_seconds{command=\"status\",instance_id=\"ccc-a\",media_type=\"Audio\"} 0\n"),
        "the oldest uncovered bucket is at the horizon: {text}"
    );
    let nightly_prom = site.dir.path().join("nightly.prom");
    site.run_ok(
        &cfg,
        &["nightly", "--metrics-file", nightly_prom.to_str().unwrap()],
        0,
    )
    .await;
    let text = std::fs::read_to_string(&nightly_prom).unwrap();
    assert!(
        text.contains("ccc_etl_windows{command=\"nightly\",status=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("ccc_etl_aging_alert{command=\"nightly\"} 0\n"),
        "{text}"
    );
    let headroom: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ccc_etl_horizon_headroom_seconds{command=\"nightly\",instance_id=\"ccc-a\",media_type=\"Audio\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        headroom >= 179.0 * 86_400.0,
        "everything is covered: {headroom}"
    );
    site.db.drop_db().await;
}

/// The windows `plan --format json` lists, as (start, end), sorted.
fn planned_windows(json: &str) -> Vec<(i64, i64)> {
    let planned: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut out: Vec<(i64, i64)> = planned["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["start_ms"].as_i64().unwrap(),
                w["end_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// What the backfill sent to the emulator after `before` successful calls, sorted.
async fn sent_since(site: &Site, before: usize) -> Vec<(i64, i64)> {
    let stats = site.emu.stats().await.unwrap();
    let mut sent: Vec<(i64, i64)> = stats.ok_calls()[before..]
        .iter()
        .map(|c| (c.start_ms, c.end_ms))
        .collect();
    sent.sort();
    sent
}

#[tokio::test]
async fn a_day_file_copied_from_another_day_or_holding_a_key_twice_is_rewritten_as_its_day() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let full = parquet_rows(&site.root("wh"));
    let layout = Layout::new(site.root("wh"));
    // Another day's file copied over 2026-11-03 (an operator restoring the wrong file) ...
    let foreign = layout.day_file(Table::Inbound, day("2026-11-03"));
    std::fs::copy(layout.day_file(Table::Inbound, day("2026-11-02")), &foreign).unwrap();
    // ... and a file of 2026-11-04 holding one key twice.
    let doubled = layout.day_file(Table::Overall, day("2026-11-04"));
    let mut rows = read_file(&doubled, Table::Overall).unwrap();
    rows.insert(1, rows[0].clone());
    ccc_etl::sink::parquet::write_file_atomic(&doubled, Table::Overall, &rows, Default::default())
        .unwrap();
    assert_eq!(read_file(&doubled, Table::Overall).unwrap().len(), 25);

    let out = site.run_ok(&cfg, &["verify"], 4).await;
    assert!(
        out.contains("NOT ONE ROW PER KEY OF ITS DAY")
            && out.contains("dt=2026-11-03")
            && out.contains("24 row(s) outside the day 2026-11-03, 0 key(s) repeated"),
        "{out}"
    );
    assert!(
        out.contains("0 row(s) outside the day 2026-11-04, 1 key(s) repeated"),
        "{out}"
    );

    // The repair rewrites both days from their keys alone, then verifies what it repaired.
    let out = site.run_ok(&cfg, &["verify", "--repair"], 0).await;
    assert!(
        out.contains("repair: ") && out.contains("window(s) to fetch again"),
        "{out}"
    );
    assert!(
        out.contains("25 row(s) dropped from day files they did not belong in"),
        "24 of another day and one repeated key: {out}"
    );
    assert_eq!(parquet_rows(&site.root("wh")), full);
    assert_eq!(read_file(&foreign, Table::Inbound).unwrap().len(), 24);
    assert_eq!(read_file(&doubled, Table::Overall).unwrap().len(), 24);
    let out = site.run_ok(&cfg, &["verify"], 0).await;
    assert!(out.contains("agree"), "{out}");
    site.db.drop_db().await;
}

#[tokio::test]
async fn a_second_file_in_a_partition_is_a_finding_and_the_next_run_moves_it_aside() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let full = parquet_rows(&site.root("wh"));
    let layout = Layout::new(site.root("wh"));
    let file = layout.day_file(Table::Inbound, day("2026-11-05"));
    let copy = file.with_file_name("part-00001.parquet");
    std::fs::copy(&file, &copy).unwrap();

    let out = site.run_ok(&cfg, &["verify"], 4).await;
    assert!(
        out.contains("EXTRA FILE") && out.contains("part-00001.parquet"),
        "{out}"
    );
    let status = site.run_ok(&cfg, &["status", "--format", "json"], 4).await;
    let report: serde_json::Value = serde_json::from_str(&status).unwrap();
    let extra = report["extra_files"].as_array().unwrap();
    assert_eq!(extra.len(), 1, "{status}");
    assert!(extra[0].as_str().unwrap().contains("part-00001.parquet"));
    let text = site.run_ok(&cfg, &["status"], 4).await;
    assert!(text.contains("EXTRA FILE"), "{text}");

    // The next run moves it aside, never deletes it; the day itself is untouched.
    site.run_ok(&cfg, &WEEK, 0).await;
    assert!(!copy.exists());
    let aside = walk(&layout.state_dir().join("set-aside"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        aside[0]
            .to_string_lossy()
            .contains("inbound_trend/dt=2026-11-05/part-00001.parquet."),
        "{aside:?}"
    );
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert_eq!(parquet_rows(&site.root("wh")), full);
    site.run_ok(&cfg, &["verify"], 0).await;
    site.db.drop_db().await;
}

#[tokio::test]
async fn plan_lists_what_the_reconcile_will_find_before_the_next_backfill() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    let range = ["--from", "2026-10-20", "--to", "2026-11-12"];
    site.run_ok(&cfg, &[&["backfill"][..], &range].concat(), 0)
        .await;
    let plan_args = [&["plan", "--format", "json"][..], &range].concat();
    let plan = || site.run_ok(&cfg, &plan_args, 0);
    assert!(planned_windows(&plan().await).is_empty(), "all done");
    // One day file deleted, two corrupted, one replaced by another day's.
    let layout = Layout::new(site.root("wh"));
    std::fs::remove_file(layout.day_file(Table::Inbound, day("2026-10-22"))).unwrap();
    for d in ["2026-10-25", "2026-11-02"] {
        std::fs::write(layout.day_file(Table::Overall, day(d)), b"not parquet").unwrap();
    }
    std::fs::copy(
        layout.day_file(Table::Outbound, day("2026-11-08")),
        layout.day_file(Table::Outbound, day("2026-11-09")),
    )
    .unwrap();
    let status = site.run_ok(&cfg, &["status"], 4).await;
    assert_eq!(status.matches("NOT COVERED").count(), 4, "{status}");
    let text = site
        .run_ok(&cfg, &[&["plan"][..], &range].concat(), 0)
        .await;
    assert_eq!(text.matches("NOT COVERED").count(), 4, "{text}");
    let planned = planned_windows(&plan().await);
    assert!(!planned.is_empty());
    // Exactly what the backfill then sends, and the plan is empty again afterwards.
    let before = site.emu.stats().await.unwrap().ok_calls().len();
    site.run_ok(&cfg, &[&["backfill"][..], &range].concat(), 0)
        .await;
    assert_eq!(sent_since(&site, before).await, planned);
    assert!(planned_windows(&plan().await).is_empty());
    site.run_ok(&cfg, &["verify"], 0).await;
    site.db.drop_db().await;
}

#[tokio::test]
async fn concurrent_migrates_to_a_new_zone_leave_one_doing_it_and_the_others_busy() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let rows = parquet_rows(&site.root("wh")).len();
    let utc = site.config("pipeline.toml", "wh", "UTC", true);
    let runs: Vec<_> = (0..3).map(|_| site.run(&utc, &["migrate"])).collect();
    let mut codes = vec![];
    for out in futures::future::join_all(runs).await {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let code = out.status.code().unwrap();
        // Done, or busy (5) with the lock named: never a failure.
        assert!(
            code == 0 || (code == 5 && text.contains("lock")),
            "{code}: {text}"
        );
        codes.push(code);
    }
    assert!(codes.contains(&0), "{codes:?}");
    // Once it is done, a migrate has nothing left to do, and the root is in the new zone.
    site.run_ok(&utc, &["migrate"], 0).await;
    assert_eq!(parquet_rows(&site.root("wh")).len(), rows);
    site.run_ok(&utc, &["verify"], 0).await;
    site.db.drop_db().await;
}

/// A day file rewritten by another tool with a null `instance_id` in one row and a null
/// `media_type` in another (its schema nullable): never rows keyed `''`. `status` and `verify`
/// name the file as damaged, the next run sets it aside and fetches its day again, and both sinks
/// then hold every key once.
#[tokio::test]
async fn null_keys_in_a_day_file_are_a_finding_and_the_next_run_sets_the_file_aside() {
    use arrow::array::{Array, ArrayRef, StringArray};
    use arrow::datatypes::{Field, Schema};
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let full = parquet_rows(&site.root("wh"));
    let layout = Layout::new(site.root("wh"));
    let file = layout.day_file(Table::Inbound, day("2026-11-04"));
    let batch = {
        let f = std::fs::File::open(&file).unwrap();
        let mut r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        r.next().unwrap().unwrap()
    };
    let nulled = |col: usize, row: usize| -> ArrayRef {
        let s = batch
            .column(col)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        Arc::new(StringArray::from_iter(
            (0..s.len()).map(|i| (i != row).then(|| s.value(i).to_string())),
        ))
    };
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[0] = nulled(0, 1);
    columns[1] = nulled(1, 2);
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let edited = arrow::record_batch::RecordBatch::try_new(schema.clone(), columns).unwrap();
    {
        let f = std::fs::File::create(&file).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&edited).unwrap();
        w.close().unwrap();
    }

    for command in [&["status"][..], &["verify"][..]] {
        let out = site.run(&cfg, command).await;
        let text = crate::common::output_text(&out);
        assert_ne!(out.status.code(), Some(0), "{command:?}: {text}");
        assert!(
            text.contains("inbound_trend/dt=2026-11-04")
                && text.contains("1 row(s) have no instance_id (null)"),
            "{command:?} names the file and the null key: {text}"
        );
    }
    site.run_ok(&cfg, &WEEK, 0).await;
    let aside = site.root("wh").join("_ccc_etl/damaged");
    assert!(
        std::fs::read_dir(&aside).unwrap().count() >= 1,
        "the edited file is kept aside"
    );
    assert_eq!(
        parquet_rows(&site.root("wh")),
        full,
        "every key once, none ''"
    );
    let out = site.run_ok(&cfg, &["verify"], 0).await;
    assert!(out.contains("agree"), "{out}");
    site.db.drop_db().await;
}

/// `verify --repair` takes back whole windows: it fetches each of them again, not only the days
/// that differed, so it leaves no gap where it took a commit back (a re-run has nothing to do).
#[tokio::test]
async fn verify_repair_fetches_every_window_it_takes_back_and_leaves_no_gap() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    let range = ["backfill", "--from", "2026-11-16", "--to", "2026-11-28"];
    site.run_ok(&cfg, &range, 0).await;
    let windows = sent_since(&site, 0).await;
    let rows = site.pg_rows().await;
    // One row deleted and one changed in PostgreSQL, in two windows, away from their edges.
    let pool = site.db.pool().await;
    for sql in [
        "DELETE FROM ccc.inbound_trend WHERE stats_time = '2026-11-24T10:00:00+08'",
        "UPDATE ccc.overall_trend SET max_logged_in_agents = max_logged_in_agents + 1 \
         WHERE stats_time = '2026-11-20T09:00:00+08'",
    ] {
        let n = sqlx::query(sql)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        assert!(n >= 1, "{sql}");
    }
    pool.close().await;
    let out = site.run_ok(&cfg, &["verify"], 4).await;
    assert!(
        out.contains("inbound_trend dt=2026-11-24") && out.contains("overall_trend dt=2026-11-20"),
        "{out}"
    );

    let before = site.emu.stats().await.unwrap().ok_calls().len();
    let out = site.run_ok(&cfg, &["verify", "--repair"], 0).await;
    let refetched = sent_since(&site, before).await;
    assert!(
        out.contains(&format!(
            "repair: {} window(s) to fetch again",
            refetched.len()
        )),
        "{out}"
    );
    // Every window that held a differing day is fetched whole, edges and all.
    let span = |w: &[(i64, i64)]| (w.iter().map(|x| x.0).min(), w.iter().map(|x| x.1).max());
    assert_eq!(span(&refetched), span(&windows), "{out}");
    assert_eq!(site.pg_rows().await, rows);
    site.run_ok(&cfg, &["verify"], 0).await;
    // Nothing was left behind: the same backfill again sends nothing.
    let before = site.emu.stats().await.unwrap().ok_calls().len();
    let out = site.run_ok(&cfg, &range, 0).await;
    assert!(out.contains("0 window(s) ok"), "{out}");
    assert_eq!(sent_since(&site, before).await, vec![]);
    site.db.drop_db().await;
}

/// A day's file copied where no day of this pipeline is (`dt=1970-01-01`, `dt=9999-12-31`) or
/// into a folder that is not a day's (`dt=garbage`): `status`, `plan` and `verify` name each,
/// `status` does not count their rows, and the next run (here `verify --repair`, then a backfill)
/// moves them to `_ccc_etl/set-aside/` without fetching anything outside the configured range.
#[tokio::test]
async fn stray_partitions_are_findings_and_are_set_aside_without_fetching_outside_the_range() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let full = parquet_rows(&site.root("wh"));
    let layout = Layout::new(site.root("wh"));
    let source = layout.day_file(Table::Outbound, day("2026-11-02"));
    let strays = ["dt=1970-01-01", "dt=9999-12-31", "dt=garbage"];
    let copy_strays = || {
        for dir in strays {
            let to = site.root("wh").join("outbound_trend").join(dir);
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(&source, to.join("part-00000.parquet")).unwrap();
        }
    };
    copy_strays();

    let status = site.run_ok(&cfg, &["status", "--format", "json"], 4).await;
    let report: serde_json::Value = serde_json::from_str(&status).unwrap();
    let said = format!("{}{}", report["findings"], report["extra_files"]);
    for dir in strays {
        assert!(said.contains(dir), "{dir}: {said}");
    }
    for s in report["series"].as_array().unwrap() {
        assert_eq!(
            s["rows"]["parquet"], s["rows"]["postgres"],
            "the strays' rows are not counted: {s}"
        );
    }
    let plan = site
        .run_ok(
            &cfg,
            &["plan", "--from", "2026-11-01", "--to", "2026-11-07"],
            0,
        )
        .await;
    for dir in strays {
        assert!(plan.contains(dir), "{dir}: {plan}");
    }
    let out = site.run_ok(&cfg, &["verify"], 4).await;
    for dir in strays {
        assert!(out.contains(dir), "{dir}: {out}");
    }

    let before = site.emu.stats().await.unwrap().ok_calls().len();
    let out = site.run_ok(&cfg, &["verify", "--repair"], 0).await;
    assert_eq!(sent_since(&site, before).await, vec![], "{out}");
    let aside = walk(&layout.state_dir().join("set-aside"));
    assert_eq!(aside.len(), 3, "{aside:?}");
    for dir in strays {
        assert!(
            aside.iter().any(|p| p
                .to_string_lossy()
                .contains(&format!("outbound_trend/{dir}/"))),
            "{dir}: {aside:?}"
        );
        assert!(!site.root("wh").join("outbound_trend").join(dir).exists());
    }
    assert_eq!(parquet_rows(&site.root("wh")), full);
    site.run_ok(&cfg, &["verify"], 0).await;

    // Copied again: a plain backfill sets them aside too.
    copy_strays();
    site.run_ok(&cfg, &WEEK, 0).await;
    assert_eq!(walk(&layout.state_dir().join("set-aside")).len(), 6);
    assert_eq!(parquet_rows(&site.root("wh")), full);
    site.run_ok(&cfg, &["verify"], 0).await;
    // An engine reading the table sees each key once, as many as PostgreSQL holds.
    let q = format!(
        "SELECT count(*), count(DISTINCT (instance_id, media_type, stats_time)) FROM read_parquet(\
         '{}/outbound_trend/*/*.parquet', hive_partitioning = true, union_by_name = true)",
        site.root("wh").display()
    );
    let out = std::process::Command::new(duckdb_python())
        .args([
            "-c",
            "import duckdb, sys; print(*duckdb.sql(sys.argv[1]).fetchall()[0])",
        ])
        .arg(&q)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let pool = site.db.pool().await;
    let pg: i64 = sqlx::query_scalar("SELECT count(*) FROM ccc.outbound_trend")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{pg} {pg}")
    );
    site.db.drop_db().await;
}

/// Rows of an instance the configuration no longer lists are history: both sinks keep them,
/// `verify` names them, and a difference in them is neither a failure nor something
/// `--repair` tries to fetch.
#[tokio::test]
async fn rows_of_an_instance_no_longer_configured_are_kept_as_history() {
    let emu = start(options(&["ccc-a", "ccc-b"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    let root = dir.path().join("wh");
    let write = |ids: &[&str]| {
        ConfigToml::new(&emu.endpoint(), ids)
            .set("source", "max_qps", 500)
            .parquet(root.display())
            .postgres()
            .write(&cfg)
    };
    let run = |args: &'static [&'static str], code: i32| {
        let cfg = cfg.clone();
        let url = db.url.clone();
        async move {
            let out = ccc_etl_at(&cfg, Some(&url))
                .args(args)
                .output()
                .await
                .unwrap();
            let text = output_text(&out);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {text}");
            text
        }
    };
    write(&["ccc-a", "ccc-b"]);
    run(&WEEK, 0).await;
    let pool = db.pool().await;
    let n = sqlx::query("DELETE FROM ccc.inbound_trend WHERE instance_id = 'ccc-b' AND stats_time >= '2026-11-05T00:00:00+08' AND stats_time < '2026-11-05T03:00:00+08'")
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert!(n > 0);
    pool.close().await;

    write(&["ccc-a"]);
    let status = run(&["status", "--format", "json"], 4).await;
    let report: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(report["history"], serde_json::json!(["ccc-b"]), "{status}");
    let text = run(&["status"], 4).await;
    assert!(
        text.contains(
            "history: rows of instances the configuration no longer lists, kept as they are: ccc-b"
        ),
        "{text}"
    );
    let out = run(&["verify"], 0).await;
    assert!(
        out.contains("HISTORY 1 partition(s)") && out.contains("(ccc-b)"),
        "{out}"
    );
    let before = emu.stats().await.unwrap().ok_calls().len();
    let out = run(&["verify", "--repair"], 0).await;
    assert!(out.contains("HISTORY"), "{out}");
    assert_eq!(emu.stats().await.unwrap().ok_calls().len(), before, "{out}");
    assert!(
        parquet_rows(&root).iter().any(|r| r.1 == "ccc-b"),
        "the history stays in the root"
    );
    db.drop_db().await;
}

/// A worker that heartbeats with nothing in flight and has finished no window for longer than
/// a lease waits on nothing: `status` shows it as stalled, not as live.
#[tokio::test]
async fn status_shows_a_worker_that_finished_nothing_for_a_lease_as_stalled() {
    let site = Site::new().await;
    let cfg = site.config("pipeline.toml", "wh", "Asia/Shanghai", true);
    site.run_ok(&cfg, &WEEK, 0).await;
    let pool = site.db.pool().await;
    // Two live workers of one job: one finishing windows, one that stopped doing so an hour ago.
    for (id, progress) in [
        ("00000000-0000-0000-0000-00000000000a", "now()"),
        (
            "00000000-0000-0000-0000-00000000000b",
            "now() - interval '1 hour'",
        ),
    ] {
        sqlx::query(&format!(
            "INSERT INTO ccc.workers (worker_id, host, pid, command, started_at, heartbeat_at, \
             windows_in_flight, windows_done, progress_at) \
             VALUES ('{id}', 'h', 1, 'backfill', now() - interval '2 hours', now(), 0, 5, {progress})"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let text = site.run_ok(&cfg, &["status"], 4).await;
    let stalled: Vec<&str> = text.lines().filter(|l| l.contains("STALLED")).collect();
    assert_eq!(stalled.len(), 1, "{text}");
    assert!(
        stalled[0].contains("pid 1") && stalled[0].contains("5 done"),
        "{text}"
    );
    assert_eq!(text.matches(": live,").count(), 1, "{text}");
    site.db.drop_db().await;
}
