//! PostgreSQL failing for real, under a real `ccc-etl backfill` process: a throwaway cluster
//! (`initdb` + `pg_ctl`, `fsync=on`) restarted with `pg_ctl restart -m fast` and killed with
//! SIGKILL mid-run, full at `max_connections`, and a statement timeout while a table is locked.
//! Each time: a clear message, exit 3 (or 1 when nothing could start), nothing lost or doubled in
//! either sink, and the next run completes the job to exactly what an undisturbed run writes.

use crate::common;
use crate::common::ConfigToml;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::cluster::Cluster;
use crate::common::sinks::{parquet_contents, pg_contents};
use crate::common::{DAY, H};
use ccc_etl::sink::parquet::{Layout, Root};

const INSTANCES: [&str; 3] = ["ccc-a", "ccc-b", "ccc-c"];

struct Job {
    cluster: Cluster,
    _emu: ccc_etl::ccc::emulator::RunningEmulator,
    dir: tempfile::TempDir,
    endpoint: String,
    from: i64,
    to: i64,
}

impl Job {
    /// A cluster with `settings`, an emulator that answers each request after 50 ms, and 60 days
    /// of three instances (27 windows).
    async fn new(settings: &[(&str, &str)]) -> Job {
        let cluster = tokio::task::spawn_blocking({
            let settings: Vec<(String, String)> = settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move || {
                let s: Vec<(&str, &str)> = settings
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                Cluster::start(&s)
            }
        })
        .await
        .unwrap();
        let mut opts = common::options(&INSTANCES);
        opts.revise_ms = 0;
        opts.faults.slow = 1.0;
        opts.faults.slow_ms = 50;
        let emu = common::start(opts).await;
        let to = crate::common::now().timestamp_millis() / H * H - 4 * H;
        Job {
            endpoint: emu.endpoint(),
            cluster,
            _emu: emu,
            dir: tempfile::tempdir().unwrap(),
            from: to - 60 * DAY,
            to,
        }
    }

    /// A config over database `db` and Parquet root `name`, at `qps`.
    fn config(&self, name: &str, qps: f64) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        ConfigToml::new(&self.endpoint, &["ccc-a", "ccc-b", "ccc-c"])
            .set("source", "max_qps", qps)
            .set("source", "concurrency", 4)
            .set("source", "backoff_base_ms", 20)
            .set("source", "backoff_max_ms", 200)
            .postgres()
            .parquet(self.root(name).display())
            .write(&path);
        path
    }

    fn root(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("wh-{name}"))
    }

    fn backfill(&self, config: &Path, db_url: &str) -> tokio::process::Command {
        let mut c = crate::common::ccc_etl_cmd();
        c.args(["--config", config.to_str().unwrap(), "backfill"])
            .args([
                "--from",
                &self.from.to_string(),
                "--to",
                &self.to.to_string(),
            ])
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
            .env("DATABASE_URL", db_url)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// An undisturbed run into database `reference`: what every disturbed job must end with.
    async fn reference(&self) -> (Vec<String>, Vec<String>) {
        let url = self.cluster.create_db("reference").await;
        let out = self
            .backfill(&self.config("reference", 200.0), &url)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
        self.contents(&url, "reference").await
    }

    async fn contents(&self, url: &str, name: &str) -> (Vec<String>, Vec<String>) {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let pg = pg_contents(&pool).await;
        pool.close().await;
        let pq = parquet_contents(&Root::Local(Layout::new(self.root(name)))).await;
        (pg, pq)
    }

    /// Committed windows, or `None` while the database is unreachable.
    async fn committed(&self, url: &str) -> Option<i64> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(2))
            .connect(url)
            .await
            .ok()?;
        let n = sqlx::query_scalar("SELECT count(*) FROM ccc.windows WHERE status = 'committed'")
            .fetch_one(&pool)
            .await
            .ok();
        pool.close().await;
        n
    }

    /// Waits until the run has committed `n` windows.
    async fn until_committed(&self, url: &str, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.committed(url).await.unwrap_or(0) < n {
            assert!(Instant::now() < deadline, "the run committed nothing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The disturbed run ended as it should (`codes`), saying why (`says`); the next run completes
/// the job; both sinks equal the undisturbed run's.
async fn then_the_next_run_completes(
    job: &Job,
    disturbed: Output,
    codes: &[i32],
    says: &[&str],
    reference: &(Vec<String>, Vec<String>),
) {
    let t = common::output_text(&disturbed);
    let code = disturbed.status.code().unwrap_or(-1);
    assert!(codes.contains(&code), "exit {code}: {t}");
    if code != 0 {
        assert!(
            says.iter().any(|s| t.contains(s)),
            "the message says what happened ({says:?}): {t}"
        );
    }
    let url = job.cluster.url("job");
    let rerun = job
        .backfill(&job.config("job", 200.0), &url)
        .output()
        .await
        .unwrap();
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        common::output_text(&rerun)
    );
    let got = job.contents(&url, "job").await;
    assert!(!got.0.is_empty());
    assert_eq!(got.0, reference.0, "PostgreSQL: nothing lost or doubled");
    assert_eq!(got.1, reference.1, "Parquet: nothing lost or doubled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_restart_mid_run_loses_and_doubles_nothing() {
    let job = Job::new(&[]).await;
    let reference = job.reference().await;
    let url = job.cluster.create_db("job").await;
    let child = job
        .backfill(&job.config("job", 10.0), &url)
        .spawn()
        .unwrap();
    job.until_committed(&url, 3).await;
    let started = Instant::now();
    // `pg_ctl restart -m fast` closes every connection and is back within a second or two.
    tokio::task::block_in_place(|| job.cluster.restart_fast());
    let out = child.wait_with_output().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    then_the_next_run_completes(
        &job,
        out,
        &[0, 3],
        &["postgres sink", "PostgreSQL"],
        &reference,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_postmaster_mid_run_fails_the_run_clearly_and_the_next_run_completes_it() {
    let job = Job::new(&[]).await;
    let reference = job.reference().await;
    let url = job.cluster.create_db("job").await;
    let child = job
        .backfill(&job.config("job", 10.0), &url)
        .spawn()
        .unwrap();
    job.until_committed(&url, 3).await;
    tokio::task::block_in_place(|| job.cluster.kill_postmaster());
    let started = Instant::now();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "the run ends on its own when the database is gone; it took {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::task::block_in_place(|| job.cluster.start_again());
    then_the_next_run_completes(
        &job,
        out,
        &[1, 3],
        &["no PostgreSQL connection within"],
        &reference,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_at_max_connections_is_a_clear_error_before_any_request() {
    // As many sessions as a run's pool may open (`pool_size(4)`, 10) and two for the test's
    // own reads: the undisturbed reference run never meets the limit, however slow the machine.
    let max = ccc_etl::commands::pool_size(4) as usize + 2;
    let job = Job::new(&[
        ("max_connections", &max.to_string()),
        ("superuser_reserved_connections", "0"),
    ])
    .await;
    let reference = job.reference().await;
    let url = job.cluster.create_db("job").await;
    // Someone else holds every connection.
    let mut held = Vec::new();
    for _ in 0..max {
        use sqlx::Connection;
        held.push(sqlx::PgConnection::connect(&url).await.unwrap());
    }
    let out = job
        .backfill(&job.config("job", 200.0), &url)
        .output()
        .await
        .unwrap();
    let t = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("too many clients"), "{t}");
    assert_eq!(
        t.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "one line: {t}"
    );
    assert!(
        !job.root("job").join("inbound_trend").exists(),
        "nothing written"
    );
    // Fewer free connections than the run needs: a statement that needs one
    // more waits 10 s, then the run stops saying why; nothing half-written stays.
    held.truncate(max - 3);
    let crowded = job
        .backfill(&job.config("job", 200.0), &url)
        .output()
        .await
        .unwrap();
    drop(held);
    then_the_next_run_completes(&job, crowded, &[0, 1, 3], &["max_connections"], &reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_behind_a_lock_fails_windows_as_retryable_and_the_next_run_completes() {
    let job = Job::new(&[]).await;
    let reference = job.reference().await;
    let url = job.cluster.create_db("job").await;
    // The schema exists; the database times statements out at 300 ms, and an operator's
    // transaction holds a table.
    let migrate = crate::common::ccc_etl_cmd()
        .args([
            "--config",
            job.config("job", 200.0).to_str().unwrap(),
            "migrate",
        ])
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    assert_eq!(
        migrate.status.code(),
        Some(0),
        "{}",
        common::output_text(&migrate)
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("ALTER DATABASE job SET statement_timeout = '300ms'")
        .execute(&pool)
        .await
        .unwrap();
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE ccc.inbound_trend IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let out = job
        .backfill(&job.config("job", 200.0), &url)
        .output()
        .await
        .unwrap();
    locker.rollback().await.unwrap();
    sqlx::query("ALTER DATABASE job RESET statement_timeout")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    then_the_next_run_completes(&job, out, &[3], &["statement timeout"], &reference).await;
}
