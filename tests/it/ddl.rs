//! `ccc-etl ddl`: the statements run for real where the engine is available here (DuckDB from
//! PyPI; Spark SQL from PyPI's pyspark, on the machine's Java), reading the row counts ccc-etl's
//! own `status` reports; the other engines' text compared with checked-in statements written
//! from each engine's documentation (`tests/fixtures/ddl/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, ConfigToml, output_text};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A Python with pyspark, set up under `target/` on first use (from PyPI).
fn spark_python() -> PathBuf {
    let java = Command::new("java").arg("-version").output();
    assert!(
        java.is_ok_and(|o| o.status.success()),
        "Spark needs Java 17 (Debian: `sudo apt-get install default-jre-headless`)"
    );
    common::venv_python(
        "spark-venv",
        "import pyspark",
        &["pyspark>=3.5,<5"],
        "Spark SQL runs the Spark statements, on Java 17",
    )
}

async fn ccc_etl(cfg: &Path, args: &[&str]) -> std::process::Output {
    common::ccc_etl_at(cfg, None)
        .args(common::args(args))
        .output()
        .await
        .unwrap()
}

/// A backfilled local root and what `status` counts in it per table.
async fn backfilled(dir: &Path) -> (PathBuf, Vec<(String, u64)>) {
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let cfg = dir.join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-b"])
        .set("source", "max_qps", 200)
        .parquet(dir.join("wh").display())
        .write(&cfg);
    let out = ccc_etl(
        &cfg,
        &["backfill", "--from", "2026-11-20", "--to", "2026-12-02"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let out = ccc_etl(&cfg, &["status", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for series in status["series"].as_array().unwrap() {
        for (table, n) in series["rows_by_table"]["parquet"].as_object().unwrap() {
            *counts.entry(table.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    assert_eq!(counts.len(), 3, "{status}");
    assert!(counts.values().all(|n| *n > 0), "{counts:?}");
    (cfg, counts.into_iter().collect())
}

async fn ddl(cfg: &Path, engine: &str) -> String {
    let out = ccc_etl(cfg, &["ddl", "--engine", engine]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `script` (which prints one `table count` line per table) with `python`, the DDL as its
/// argument, from a directory other than the configuration's.
fn counts_from(python: &Path, script: &str, ddl: &str) -> Vec<(String, u64)> {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .args(["-c", script, ddl])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{ddl}", output_text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, n)| (t.to_string(), n.trim().parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn duckdb_and_spark_read_the_counts_status_reports_through_the_ddl() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, expected) = backfilled(dir.path()).await;
    let duck = ddl(&cfg, "duckdb").await;
    let got = counts_from(
        &common::duckdb_python(),
        "import duckdb, sys\n\
         con = duckdb.connect()\n\
         con.execute(sys.argv[1])\n\
         for t in ['inbound_trend', 'outbound_trend', 'overall_trend']:\n\
         \x20   n, days, extra = con.execute(f'SELECT count(*), count(DISTINCT dt), count(extra) FROM {t}').fetchone()\n\
         \x20   assert days >= 13 and extra == 0, (days, extra)\n\
         \x20   print(t, n)\n",
        &duck,
    );
    assert_eq!(got, expected, "DuckDB");
    let spark = ddl(&cfg, "spark").await;
    let got = counts_from(
        &spark_python(),
        "import sys\n\
         from pyspark.sql import SparkSession\n\
         spark = SparkSession.builder.master('local[1]').config('spark.ui.enabled', 'false')\
         .config('spark.sql.session.timeZone', 'UTC').getOrCreate()\n\
         spark.sparkContext.setLogLevel('ERROR')\n\
         for stmt in sys.argv[1].split(';\\n'):\n\
         \x20   body = '\\n'.join(l for l in stmt.splitlines() if not l.startswith('--')).strip()\n\
         \x20   if body: spark.sql(body)\n\
         for t in ['inbound_trend', 'outbound_trend', 'overall_trend']:\n\
         \x20   r = spark.sql(f'SELECT count(*), count(DISTINCT dt), count(extra) FROM ccc.{t}').first()\n\
         \x20   assert r[1] >= 13 and r[2] == 0, r\n\
         \x20   print(t, r[0])\n",
        &spark,
    );
    assert_eq!(got, expected, "Spark");
}

/// The statements for a configuration with `root` (region cn-hangzhou), as checked in.
async fn assert_like_fixture(root: &str, engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new("https://ccc.cn-shanghai.aliyuncs.com", &["ccc-a"])
        .postgres()
        .parquet(root)
        .set("parquet", "region", "cn-hangzhou")
        .write(&cfg);
    let got = ddl(&cfg, engine).await;
    let path = Path::new(ROOT).join(format!("tests/fixtures/ddl/{engine}.sql"));
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(got, want, "{}", path.display());
}

#[tokio::test]
async fn trino_starrocks_athena_and_maxcompute_statements_are_the_documented_ones() {
    assert_like_fixture("s3://ccc-lake/warehouse", "trino").await;
    assert_like_fixture("s3://ccc-lake/warehouse", "starrocks").await;
    assert_like_fixture("s3://ccc-lake/warehouse", "athena").await;
    assert_like_fixture("oss://ccc-lake/warehouse", "maxcompute").await;
}

#[tokio::test]
async fn an_engine_that_cannot_read_the_root_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new("https://ccc.cn-shanghai.aliyuncs.com", &["ccc-a"])
        .parquet(dir.path().join("wh").display())
        .write(&cfg);
    let out = ccc_etl(&cfg, &["ddl", "--engine", "athena"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("local directory"), "{err}");
    assert!(out.stdout.is_empty());
    let out = ccc_etl(&cfg, &["ddl", "--engine", "spark", "--schema", "x;drop"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}
