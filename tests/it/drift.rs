//! Schema drift end to end: the emulator's response changes shape as the real API's has, and a
//! real `ccc-etl backfill` names every field it does not know (summary, metrics, one warning per
//! field), counts known fields that disappeared as a data-quality violation, and fails the
//! windows whose known field changed type, naming the field, without writing them.

use crate::common;
use std::path::Path;
use std::process::Output;

use crate::common::{ConfigToml, metric, output_text};
use ccc_etl::ccc::emulator::{DriftOptions, RunningEmulator};

async fn backfill(emu: &RunningEmulator, dir: &Path) -> (Output, String) {
    let cfg = dir.join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-b"])
        .set("source", "max_qps", 200)
        .set("source", "max_attempts", 2)
        .set("source", "backoff_base_ms", 5)
        .parquet(dir.join("wh").display())
        .write(&cfg);
    let metrics = dir.join("m.prom");
    let out = crate::common::ccc_etl_cmd()
        .arg("--config")
        .arg(&cfg)
        .args(common::args(&[
            "backfill",
            "--from",
            "2026-10-01",
            "--to",
            "2026-10-31",
        ]))
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
    let t = output_text(&out);
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
    // A field of the items is kept in `extra`; an array the API added is counted, not kept.
    for (field, says) in [
        (
            "new field from the API: Inbound.CallsOverflowed",
            "keep it in their `extra` column",
        ),
        ("new data from the API: Data.SkillGroups", "it is counted"),
    ] {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(field)).collect();
        assert_eq!(lines.len(), 1, "one warning per field per run: {stderr}");
        assert!(lines[0].contains(says), "{}", lines[0]);
    }
    assert!(
        !stderr.contains("SkillGroups is not a field ccc-etl knows; rows keep it"),
        "{stderr}"
    );
    assert_eq!(
        metric(
            &m,
            "ccc_etl_quality_violations{command=\"backfill\",kind=\"missing_fields\"}"
        ),
        0.0
    );
    // `status` names them, from the runs the ledger recorded.
    let status = crate::common::ccc_etl_cmd()
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
            "NEW FIELDS from the API since the schema last changed (items' fields kept in \
             `extra`): \
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
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "max_qps", 200)
        .postgres()
        .write(&cfg);
    let run = |args: &'static [&'static str]| {
        crate::common::ccc_etl_cmd()
            .arg("--config")
            .arg(&cfg)
            .args(common::args(args))
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
            .env("DATABASE_URL", &db.url)
            .env("NO_COLOR", "1")
            .output()
    };
    let out = run(&["backfill", "--from", "2026-11-01", "--to", "2026-11-03"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
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
    let t = output_text(&out);
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
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("Data.Outbound.TotalCalls: invalid type: map, expected an integer"),
        "the field is named: {t}"
    );
    // The same answer would come again: each window was asked once, not retried.
    let stats = emu.stats().await.unwrap();
    let mut asked = std::collections::BTreeMap::new();
    for c in &stats.calls {
        *asked
            .entry((c.instance_id.clone(), c.start_ms))
            .or_insert(0) += 1;
    }
    assert!(!asked.is_empty());
    assert!(asked.values().all(|n| *n == 1), "retried: {asked:?}");
    assert_eq!(
        metric(&m, "ccc_etl_windows{command=\"backfill\",status=\"ok\"}"),
        0.0
    );
    assert!(
        !dir.path().join("wh/outbound_trend").exists(),
        "nothing was written"
    );
}

/// A config over PostgreSQL (`db_url` given to the process) and a local Parquet root.
fn both_sinks(dir: &Path, endpoint: &str) -> std::path::PathBuf {
    let cfg = dir.join(format!("both-{}.toml", uuid::Uuid::new_v4().simple()));
    ConfigToml::new(endpoint, &["ccc-a"])
        .set("source", "max_qps", 200)
        .postgres()
        .parquet(dir.join("wh").display())
        .write(&cfg);
    cfg
}

async fn ccc_etl(cfg: &Path, db_url: &str, args: &[&str]) -> Output {
    common::ccc_etl_at(cfg, Some(db_url))
        .args(common::args(args))
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn new_fields_are_kept_per_row_in_both_sinks_and_a_changed_value_is_a_revision() {
    use ccc_etl::ccc::emulator::drift_value;
    use ccc_etl::record::Table;
    use ccc_etl::sink::parquet::{Layout, Root};
    use sqlx::Row;
    let added = DriftOptions {
        add_fields: vec!["Inbound.CallsOverflowed".into()],
        add_arrays: vec!["SkillGroups".into()],
        ..DriftOptions::default()
    };
    let mut opts = common::options(&["ccc-a"]);
    opts.revise_ms = 0;
    opts.drift = added.clone();
    let emu = common::start(opts.clone()).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let range = ["backfill", "--from", "2026-11-01", "--to", "2026-11-03"];
    let out = ccc_etl(&both_sinks(dir.path(), &emu.endpoint()), &db.url, &range).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    // PostgreSQL: `extra->>'CallsOverflowed'` holds the served value on every inbound row.
    let pool = db.pool().await;
    let rows = sqlx::query(
        "SELECT (extract(epoch FROM stats_time) * 1000)::bigint AS t, \
         (extra->>'CallsOverflowed')::bigint AS v FROM ccc.inbound_trend",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 72);
    for r in &rows {
        let (t, v): (i64, Option<i64>) = (r.get("t"), r.get("v"));
        assert_eq!(v, Some(drift_value(t)), "bucket {t}");
    }
    let with_extra: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ccc.outbound_trend WHERE extra IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(with_extra, 0, "NULL where there is nothing");

    // Parquet: the `extra` column, as a JSON string, numbers as numbers.
    let root = Root::Local(Layout::new(dir.path().join("wh")));
    let mut seen = 0;
    for f in root.list().await.unwrap() {
        for r in root.read_rows(f.table, f.day).await.unwrap() {
            match f.table {
                Table::Inbound => {
                    let e: serde_json::Value =
                        serde_json::from_str(r.extra.as_deref().expect("extra")).unwrap();
                    assert_eq!(
                        e["CallsOverflowed"],
                        serde_json::json!(drift_value(r.stats_time))
                    );
                    seen += 1;
                }
                _ => assert_eq!(r.extra, None),
            }
        }
    }
    assert_eq!(seen, 72);

    // The API changes the value: a refetch counts every inbound row as revised, in both sinks.
    opts.drift.value_offset = 5;
    let changed = common::start(opts).await;
    let mut args = range.to_vec();
    args.push("--refetch");
    let out = ccc_etl(&both_sinks(dir.path(), &changed.endpoint()), &db.url, &args).await;
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("sink parquet: 0 inserted, 72 revised, 144 unchanged"),
        "{t}"
    );
    assert!(
        t.contains("sink postgres: 0 inserted, 72 revised, 144 unchanged"),
        "{t}"
    );
    let v: i64 = sqlx::query_scalar(
        "SELECT (extra->>'CallsOverflowed')::bigint FROM ccc.inbound_trend ORDER BY stats_time LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        v,
        drift_value(rows.iter().map(|r| r.get::<i64, _>("t")).min().unwrap()) + 5
    );
    // verify compares `extra` too, and the sinks agree.
    let verify = ccc_etl(
        &both_sinks(dir.path(), &changed.endpoint()),
        &db.url,
        &["verify"],
    )
    .await;
    assert_eq!(verify.status.code(), Some(0), "{}", output_text(&verify));
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn files_written_before_the_extra_column_read_together_with_new_ones() {
    use ccc_etl::record::Table;
    use ccc_etl::sink::parquet::{read_file, schema};
    let emu = emulator(DriftOptions {
        add_fields: vec!["Inbound.CallsOverflowed".into()],
        ..DriftOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = backfill(&emu, dir.path()).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    // An older day file, as ccc-etl wrote them before the column existed: same columns but
    // `extra`, same rows.
    let day = dir
        .path()
        .join("wh/inbound_trend/dt=2026-10-05/part-00000.parquet");
    let rows = read_file(&day, Table::Inbound).unwrap();
    let old_schema = {
        let s = schema(Table::Inbound);
        let fields: Vec<_> = s
            .fields()
            .iter()
            .filter(|f| f.name() != "extra")
            .cloned()
            .collect();
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields))
    };
    let full = {
        let f = std::fs::File::open(&day).unwrap();
        let mut r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        r.next().unwrap().unwrap()
    };
    let old = full
        .project(&(0..old_schema.fields().len()).collect::<Vec<_>>())
        .unwrap();
    let old_path = dir
        .path()
        .join("wh/inbound_trend/dt=2026-10-05/part-00000.parquet");
    {
        let f = std::fs::File::create(&old_path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, old_schema, None).unwrap();
        w.write(&old).unwrap();
        w.close().unwrap();
    }
    let reread = read_file(&old_path, Table::Inbound).unwrap();
    assert_eq!(reread.len(), rows.len());
    assert!(
        reread.iter().all(|r| r.extra.is_none()),
        "an old file reads with no extra"
    );
    // DuckDB reads old and new files together (`union_by_name`), as the README's query does.
    let python = common::duckdb_python();
    let q = format!(
        "SELECT count(*), count(extra), count(*) FILTER (WHERE dt = '2026-10-05' AND extra IS NULL) \
         FROM read_parquet('{}/wh/inbound_trend/*/*.parquet', hive_partitioning = true, union_by_name = true)",
        dir.path().display()
    );
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import duckdb, sys; print(duckdb.sql(sys.argv[1]).fetchall()[0])",
        ])
        .arg(&q)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (total, with_extra) = (2 * 31 * 24, 2 * 31 * 24 - 2 * 24);
    assert_eq!(
        stdout.trim(),
        format!("({total}, {with_extra}, {})", 2 * 24),
        "every row, the new ones with extra, the old day's without"
    );
}

#[tokio::test]
async fn the_documented_adoption_fills_a_new_column_from_extra() {
    use ccc_etl::ccc::emulator::drift_value;
    use sqlx::Row;
    // The statements of docs/operating.md, as documented.
    let readme = include_str!("../../docs/operating.md");
    let start = readme
        .find("```postgresql\n")
        .expect("docs/operating.md shows how to adopt a field")
        + "```postgresql\n".len();
    let sql = &readme[start..start + readme[start..].find("```").unwrap()];
    let mut opts = common::options(&["ccc-a"]);
    opts.drift.add_fields = vec!["Inbound.CallsOverflowed".into()];
    let emu = common::start(opts).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let out = ccc_etl(
        &both_sinks(dir.path(), &emu.endpoint()),
        &db.url,
        &["backfill", "--from", "2026-11-01", "--to", "2026-11-02"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let pool = db.pool().await;
    sqlx::raw_sql(sql).execute(&pool).await.unwrap();
    let rows = sqlx::query(
        "SELECT (extract(epoch FROM stats_time) * 1000)::bigint AS t, calls_overflowed \
         FROM ccc.inbound_trend",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 48);
    for r in rows {
        let t: i64 = r.get("t");
        assert_eq!(
            r.get::<Option<i64>, _>("calls_overflowed"),
            Some(drift_value(t))
        );
    }
    // The column does not get in the way of the next run.
    let again = ccc_etl(
        &both_sinks(dir.path(), &emu.endpoint()),
        &db.url,
        &[
            "backfill",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-03",
            "--refetch",
        ],
    )
    .await;
    assert_eq!(again.status.code(), Some(0), "{}", output_text(&again));
    pool.close().await;
    db.drop_db().await;
}
