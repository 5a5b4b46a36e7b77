//! The orchestrator files in `deploy/`, run by the orchestrators themselves, offline, against the
//! emulator and PostgreSQL: Apache Airflow's DAGs (`airflow dags test`, SQLite metadata) with
//! ccc-etl's exit codes deciding retries, and two daily intervals at once as two workers of one
//! job; Dagster's daily-partitioned asset through Dagster Pipes (`dagster asset materialize`),
//! two partitions one after the other and two at once. After each, both sinks are exact: the
//! day's hours once each, and `verify` finds PostgreSQL and Parquet equal.

use std::path::{Path, PathBuf};

use ccc_etl::ccc::emulator::Faults;

use crate::common::{self, ConfigToml, TestDb, output_text};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A tool's command with what ccc-etl needs when the tool starts it: the binary, the tests'
/// clock, the emulator's AccessKey, the database, the S3 server (for a root in a bucket).
fn with_ccc_etl(
    mut c: tokio::process::Command,
    cfg: &Path,
    db: &TestDb,
) -> tokio::process::Command {
    c.envs(common::s3::server().env())
        .env("CCC_ETL_BIN", common::ccc_etl_path())
        .env("CCC_ETL_CONFIG", cfg)
        .envs(common::clock_env())
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    c
}

/// Apache Airflow, from PyPI into `target/airflow-venv`, with a home of its own (SQLite).
struct Airflow {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Airflow {
    async fn new() -> Airflow {
        let python = common::venv_python(
            "airflow-venv",
            "import airflow",
            &["apache-airflow==3.1.8"],
            "Apache Airflow runs deploy/airflow/ccc_etl_dag.py",
        );
        let airflow = Airflow {
            bin: python.parent().unwrap().join("airflow"),
            home: tempfile::tempdir().unwrap(),
        };
        let out = airflow
            .cmd()
            .args(["db", "migrate"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "airflow db migrate: {}",
            output_text(&out)
        );
        airflow
    }

    fn cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.env("AIRFLOW_HOME", self.home.path())
            .env(
                "AIRFLOW__CORE__DAGS_FOLDER",
                format!("{ROOT}/deploy/airflow"),
            )
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("CCC_ETL_RETRY_DELAY_SECONDS", "0")
            .kill_on_drop(true);
        c
    }

    /// `airflow dags test DAG RUN_AFTER`: its output and the states its task went through.
    async fn dags_test(
        &self,
        dag: &str,
        run_after: &str,
        cfg: &Path,
        db: &TestDb,
        retries: u32,
    ) -> (std::process::Output, Vec<String>) {
        let mut c = with_ccc_etl(self.cmd(), cfg, db);
        c.env("CCC_ETL_RETRIES", retries.to_string())
            .args(["dags", "test", dag, run_after]);
        let out = c.output().await.unwrap();
        let text = output_text(&out);
        let states = regex::Regex::new(r"new_state=([a-z_]+)")
            .unwrap()
            .captures_iter(&text)
            .map(|c| c[1].to_string())
            .collect();
        (out, states)
    }
}

/// Both sinks agree (`ccc-etl verify`), and each of `days` holds every hour of every instance
/// once, in PostgreSQL.
async fn assert_exact(cfg: &Path, db: &TestDb, instances: usize, days: &[chrono::NaiveDate]) {
    let out = common::ccc_etl_at(cfg, Some(&db.url))
        .envs(common::s3::server().env())
        .arg("verify")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "verify: {}", output_text(&out));
    let pool = db.pool().await;
    for day in days {
        for table in ["inbound_trend", "outbound_trend", "overall_trend"] {
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM ccc.{table} WHERE (stats_time AT TIME ZONE 'Asia/Shanghai')::date = $1"
            ))
            .bind(day)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(n, 24 * instances as i64, "{table} on {day}");
        }
    }
    pool.close().await;
}

/// A job of `instances` writing PostgreSQL and the Parquet root `root`.
fn config(dir: &Path, name: &str, endpoint: &str, instances: &[&str], root: &str) -> PathBuf {
    let cfg = dir.join(name);
    ConfigToml::new(endpoint, instances)
        .set("source", "max_qps", 200)
        .set("source", "max_attempts", 1)
        .postgres()
        .parquet(root)
        .write(&cfg);
    cfg
}

/// A Parquet root in a fresh bucket: partitions at once are workers of one job, as a local root
/// (one writer at a time) does not allow.
async fn bucket_root() -> String {
    format!("s3://{}/wh", common::s3::server().bucket().await)
}

fn local_day(days_ago: i64) -> chrono::NaiveDate {
    (common::now() - chrono::Duration::days(days_ago))
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_runs_the_nightly_dag_and_retries_as_ccc_etls_exit_code_says() {
    let mut opts = common::options(&["ccc-a", "ccc-bad"]);
    opts.faults = Faults {
        failing_instances: vec!["ccc-bad".into()],
        ..Default::default()
    };
    let emu = common::start(opts).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let airflow = Airflow::new().await;
    let run_after = local_day(0).to_string();

    // Exit 0: the task succeeds at once; the whole horizon is fetched, both sinks equal.
    let local = dir.path().join("wh").display().to_string();
    let good = config(dir.path(), "good.toml", &emu.endpoint(), &["ccc-a"], &local);
    let (out, states) = airflow
        .dags_test("ccc_etl_nightly", &run_after, &good, &db, 2)
        .await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(states, ["success"], "{}", output_text(&out));
    assert_exact(&good, &db, 1, &[local_day(2), local_day(100)]).await;

    // Exit 3 (an instance's windows fail): retried, then failed when the retries are spent.
    let partial = config(
        dir.path(),
        "partial.toml",
        &emu.endpoint(),
        &["ccc-a", "ccc-bad"],
        &local,
    );
    let (out, states) = airflow
        .dags_test("ccc_etl_nightly", &run_after, &partial, &db, 1)
        .await;
    assert!(!out.status.success());
    assert_eq!(states, ["up_for_retry", "failed"], "{}", output_text(&out));
    assert!(output_text(&out).contains("ccc-etl exited 3 (some windows failed)"));

    // Exit 2 (bad input): failed at once, no retry.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[source]\nmax_qps = 0\n").unwrap();
    let (out, states) = airflow
        .dags_test("ccc_etl_nightly", &run_after, &bad, &db, 2)
        .await;
    assert!(!out.status.success());
    assert_eq!(states, ["failed"], "{}", output_text(&out));
    assert!(output_text(&out).contains("ccc-etl exited 2 (bad input)"));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_airflow_daily_intervals_at_once_are_two_workers_and_each_day_is_exact() {
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let root = bucket_root().await;
    let cfg = config(
        dir.path(),
        "pipeline.toml",
        &emu.endpoint(),
        &["ccc-a", "ccc-b"],
        &root,
    );
    // The schema first, so that the two runs do not race to create it.
    let out = common::ccc_etl_at(&cfg, Some(&db.url))
        .arg("check")
        .output()
        .await
        .unwrap();
    assert!(out.status.code().is_some(), "{}", output_text(&out));
    let (a, b) = tokio::join!(Airflow::new(), Airflow::new());
    // A run after local day D covers day D - 1: the runs after 1 and 2 days ago.
    let (after_1, after_2) = (local_day(1).to_string(), local_day(2).to_string());
    let ((out_a, states_a), (out_b, states_b)) = tokio::join!(
        a.dags_test("ccc_etl_daily", &after_1, &cfg, &db, 0),
        b.dags_test("ccc_etl_daily", &after_2, &cfg, &db, 0),
    );
    assert_eq!(states_a, ["success"], "{}", output_text(&out_a));
    assert_eq!(states_b, ["success"], "{}", output_text(&out_b));
    assert_exact(&cfg, &db, 2, &[local_day(2), local_day(3)]).await;
    let pool = db.pool().await;
    let days: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (stats_time AT TIME ZONE 'Asia/Shanghai')::date) FROM ccc.inbound_trend",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(days, 2, "the two days, no other");
    pool.close().await;
    db.drop_db().await;
}

/// Dagster, from PyPI into `target/dagster-venv`, with an instance (`DAGSTER_HOME`) of its own.
struct Dagster {
    python: PathBuf,
    home: tempfile::TempDir,
}

impl Dagster {
    fn new() -> Dagster {
        let python = common::venv_python(
            "dagster-venv",
            "import dagster, dagster_pipes",
            &["dagster==1.13.29", "dagster-pipes==1.13.29"],
            "Dagster materializes deploy/dagster/ccc_etl_dagster.py",
        );
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("dagster.yaml"),
            "telemetry:\n  enabled: false\n",
        )
        .unwrap();
        Dagster { python, home }
    }

    fn cmd(&self, program: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        c.env("DAGSTER_HOME", self.home.path())
            .env("CCC_ETL_RETRY_DELAY_SECONDS", "0")
            .kill_on_drop(true);
        c
    }

    /// `dagster asset materialize` of one partition: its output and the events it logged.
    async fn materialize(
        &self,
        day: chrono::NaiveDate,
        cfg: &Path,
        db: &TestDb,
        retries: u32,
    ) -> (std::process::Output, Vec<String>) {
        let dagster = self.python.parent().unwrap().join("dagster");
        let mut c = with_ccc_etl(self.cmd(&dagster), cfg, db);
        c.env("CCC_ETL_RETRIES", retries.to_string())
            .args(["asset", "materialize", "-f"])
            .arg(format!("{ROOT}/deploy/dagster/ccc_etl_dagster.py"))
            .args([
                "--select",
                "ccc_etl_trends",
                "--partition",
                &day.to_string(),
            ]);
        let out = c.output().await.unwrap();
        let events = regex::Regex::new(r"\b(STEP_[A-Z_]+|ASSET_MATERIALIZATION)\b")
            .unwrap()
            .captures_iter(&output_text(&out))
            .map(|c| c[1].to_string())
            .filter(|e| !e.starts_with("STEP_WORKER"))
            .collect();
        (out, events)
    }

    /// The metadata of each partition's latest materialization, as this instance stored it.
    async fn metadata(&self) -> serde_json::Value {
        let script = "import json, dagster as dg\n\
             inst = dg.DagsterInstance.get()\n\
             recs = inst.fetch_materializations(dg.AssetKey('ccc_etl_trends'), limit=100).records\n\
             out = {}\n\
             for r in reversed(recs):\n\
             \x20   m = r.asset_materialization\n\
             \x20   out[m.partition] = {k: v.value for k, v in m.metadata.items()}\n\
             print(json.dumps(out))\n";
        let out = self
            .cmd(&self.python)
            .args(["-c", script])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dagster_materializes_daily_partitions_through_pipes_one_by_one_and_at_once() {
    let mut opts = common::options(&["ccc-a", "ccc-b", "ccc-bad"]);
    opts.faults = Faults {
        failing_instances: vec!["ccc-bad".into()],
        ..Default::default()
    };
    let emu = common::start(opts).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let root = bucket_root().await;
    let cfg = config(
        dir.path(),
        "pipeline.toml",
        &emu.endpoint(),
        &["ccc-a", "ccc-b"],
        &root,
    );
    let (one, two) = (Dagster::new(), Dagster::new());

    // One partition: materialized, with ccc-etl's figures as its metadata.
    let first = local_day(4);
    let (out, events) = one.materialize(first, &cfg, &db, 0).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        events.contains(&"ASSET_MATERIALIZATION".to_string()),
        "{events:?}"
    );
    // Two partitions at once: two workers of one job.
    let (a, b) = (local_day(3), local_day(2));
    let ((out_a, _), (out_b, _)) = tokio::join!(
        one.materialize(a, &cfg, &db, 0),
        two.materialize(b, &cfg, &db, 0)
    );
    assert!(out_a.status.success(), "{}", output_text(&out_a));
    assert!(out_b.status.success(), "{}", output_text(&out_b));
    assert_exact(&cfg, &db, 2, &[first, a, b]).await;
    let meta = one.metadata().await;
    for day in [first, a] {
        let m = &meta[day.to_string()];
        assert_eq!(m["rows_inbound_trend"], 48, "{day}: {meta}");
        assert_eq!(m["rows_overall_trend"], 48, "{day}: {meta}");
        assert_eq!(m["windows_ok"], 2, "{day}: {meta}");
    }
    let meta_b = two.metadata().await;
    assert_eq!(
        meta_b[b.to_string()]["rows_outbound_trend"],
        48,
        "{b}: {meta_b}"
    );

    // Exit 3 (an instance's windows fail): a retry, then the step fails.
    let partial = config(
        dir.path(),
        "partial.toml",
        &emu.endpoint(),
        &["ccc-a", "ccc-bad"],
        &root,
    );
    let (out, events) = one.materialize(first, &partial, &db, 1).await;
    assert!(!out.status.success());
    let retried = [
        "STEP_START",
        "STEP_UP_FOR_RETRY",
        "STEP_RESTARTED",
        "STEP_FAILURE",
    ];
    assert!(
        retried.iter().all(|e| events.contains(&e.to_string())),
        "{events:?}"
    );
    // Exit 2 (bad input): the step fails at once.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[source]\nmax_qps = 0\n").unwrap();
    let (out, events) = one.materialize(first, &bad, &db, 1).await;
    assert!(!out.status.success());
    assert!(events.contains(&"STEP_FAILURE".to_string()), "{events:?}");
    assert!(
        !events.contains(&"STEP_UP_FOR_RETRY".to_string()),
        "{events:?}"
    );
    assert!(output_text(&out).contains("ccc-etl exited 2 (bad input)"));
    db.drop_db().await;
}
