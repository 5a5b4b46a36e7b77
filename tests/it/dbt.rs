//! The dbt package in `dbt/`: `dbt build` (models and their tests) on PostgreSQL after a real
//! backfill, and on DuckDB over the same run's Parquet root; both give the same marts, and on
//! PostgreSQL the marts equal ccc-etl's own views. dbt 1.x with the postgres and duckdb adapters
//! comes from PyPI into `target/dbt-venv` on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use crate::common::{self, ConfigToml, TestDb, output_text};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

const MARTS: &[(&str, &str)] = &[
    ("ccc_kpi_hourly", "instance_id, media_type, local_hour"),
    ("ccc_kpi_daily", "instance_id, media_type, day"),
    ("ccc_kpi_weekly", "instance_id, media_type, week_start"),
    ("ccc_kpi_monthly", "instance_id, media_type, month_start"),
    (
        "ccc_busiest_hours",
        "instance_id, media_type, iso_day_of_week, local_hour_of_day",
    ),
];

fn dbt_python() -> PathBuf {
    let requirements = Path::new(ROOT).join("dbt/requirements.txt");
    common::venv_python(
        "dbt-venv",
        "import dbt.adapters.postgres, dbt.adapters.duckdb, psycopg2, duckdb",
        &["-r", requirements.to_str().unwrap()],
        "dbt builds the package in dbt/",
    )
}

/// Runs `dbt build` for `target` with `vars`, its files under `work`; asserts it passed without
/// a deprecation warning and returns its output.
fn dbt_build(work: &Path, target: &str, vars: &str, env: &[(&str, String)]) -> String {
    let python = dbt_python();
    let dbt = python.with_file_name("dbt");
    let project = Path::new(ROOT).join("dbt");
    let out = Command::new(dbt)
        .args(["build", "--target", target, "--vars", vars])
        .arg("--project-dir")
        .arg(&project)
        .arg("--profiles-dir")
        .arg(&project)
        .env("DBT_TARGET_PATH", work.join(format!("{target}-target")))
        .env("DBT_LOG_PATH", work.join(format!("{target}-logs")))
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "dbt build --target {target}:\n{text}");
    // The package uses no deprecated dbt functionality (generic tests' arguments nested under
    // `arguments`, ...).
    assert!(
        !text.contains("Deprecated functionality"),
        "dbt build --target {target} warns of deprecations:\n{text}"
    );
    text
}

/// Every mart's rows, ordered by its key, as JSON text (rates and dates as text), read by
/// Python from PostgreSQL (`pg` a DSN) or DuckDB (a database file).
fn marts(engine: &str, conn: &str, schema: &str) -> serde_json::Value {
    let script = r#"
import json, sys, decimal, datetime
engine, conn, schema, marts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if engine == "postgres":
    import psycopg2
    db = psycopg2.connect(conn)
    def rows(sql):
        cur = db.cursor(); cur.execute(sql); return [list(r) for r in cur.fetchall()]
else:
    import duckdb
    db = duckdb.connect(conn, read_only=True)
    def rows(sql):
        return [list(r) for r in db.execute(sql).fetchall()]
def norm(v):
    if v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, (float, decimal.Decimal)):
        return f"{float(v):.4f}"
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    return str(v)
out = {}
for name, key in marts:
    out[name] = [[norm(v) for v in r] for r in rows(f"SELECT * FROM {schema}.{name} ORDER BY {key}")]
print(json.dumps(out))
"#;
    let out = Command::new(dbt_python())
        .args(["-c", script, engine, conn, schema])
        .arg(serde_json::to_string(MARTS).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn dbt_build_passes_on_postgresql_and_duckdb_with_equal_marts_that_match_the_views() {
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("wh");
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-b"])
        .set("source", "max_qps", 200)
        .postgres()
        .parquet(root.display())
        .write(&cfg);
    let out = common::ccc_etl_cmd()
        .arg("--config")
        .arg(&cfg)
        .args(common::args(&[
            "backfill",
            "--from",
            "2026-10-20",
            "--to",
            "2026-12-02",
        ]))
        .env("DATABASE_URL", &db.url)
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    let pg = sqlx::postgres::PgConnectOptions::from_str(&db.url).unwrap();
    let pg_env = vec![
        ("CCC_DBT_PG_HOST", pg.get_host().to_string()),
        ("CCC_DBT_PG_PORT", pg.get_port().to_string()),
        ("CCC_DBT_PG_USER", pg.get_username().to_string()),
        ("CCC_DBT_PG_DATABASE", db.name.clone()),
        ("CCC_DBT_SCHEMA", "ccc_marts".to_string()),
    ];
    let text = dbt_build(
        dir.path(),
        "postgres",
        "{ccc_etl_schema: ccc, ccc_etl_timezone: Asia/Shanghai}",
        &pg_env,
    );
    assert!(text.contains("Completed successfully"), "{text}");
    let duckdb_file = dir.path().join("ccc.duckdb");
    let vars = format!(
        "{{ccc_etl_parquet_root: '{}', ccc_etl_timezone: Asia/Shanghai}}",
        root.display()
    );
    let duck_env = vec![
        ("CCC_DBT_DUCKDB_PATH", duckdb_file.display().to_string()),
        ("CCC_DBT_SCHEMA", "ccc_marts".to_string()),
    ];
    let text = dbt_build(dir.path(), "duckdb", &vars, &duck_env);
    assert!(text.contains("Completed successfully"), "{text}");

    // Both engines, the same marts, row for row.
    let dsn = format!(
        "host={} port={} user={} dbname={}",
        pg.get_host(),
        pg.get_port(),
        pg.get_username(),
        db.name
    );
    let from_pg = marts("postgres", &dsn, "ccc_marts");
    let from_duckdb = marts("duckdb", &duckdb_file.display().to_string(), "ccc_marts");
    for (name, _) in MARTS {
        let rows = from_pg[name].as_array().unwrap();
        assert!(!rows.is_empty(), "{name} is empty");
        let other = from_duckdb[name].as_array().unwrap();
        let first = rows.iter().zip(other).position(|(a, b)| a != b);
        assert!(
            first.is_none() && rows.len() == other.len(),
            "{name}: {} rows on PostgreSQL, {} on DuckDB; first difference: {:?}",
            rows.len(),
            other.len(),
            first.map(|i| (&rows[i], &other[i]))
        );
    }
    // 44 days of 2 instances: one daily row per instance and day.
    assert_eq!(from_pg["ccc_kpi_daily"].as_array().unwrap().len(), 2 * 44);

    // The views ccc-etl creates and the marts: the same rows.
    let pool = db.pool().await;
    for (mart, view, cols) in [
        (
            "ccc_marts.ccc_kpi_daily",
            "ccc.daily_traffic",
            "instance_id, media_type, day, inbound_calls, calls_handled, calls_queued, \
             abandoned_in_ivr, abandoned_in_queue, abandoned_in_ring, answer_rate, \
             ivr_abandon_rate, queue_abandon_rate, ring_abandon_rate, outbound_calls, \
             outbound_answered, outbound_connect_rate, max_logged_in_agents, buckets",
        ),
        (
            "ccc_marts.int_ccc_traffic_buckets",
            "ccc.hourly_traffic",
            "instance_id, media_type, stats_time, local_time, inbound_calls, calls_handled, \
             calls_queued, abandoned_in_ivr, abandoned_in_queue, abandoned_in_ring, \
             outbound_calls, outbound_answered, max_logged_in_agents",
        ),
    ] {
        let differ: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM ((SELECT {cols} FROM {mart} EXCEPT ALL SELECT {cols} FROM {view}) \
             UNION ALL (SELECT {cols} FROM {view} EXCEPT ALL SELECT {cols} FROM {mart})) d"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {view}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(n > 0);
        assert_eq!(differ, 0, "{mart} and {view} differ");
    }
    pool.close().await;
    db.drop_db().await;
}
