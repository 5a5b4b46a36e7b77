//! Crash safety: a real `ccc-etl backfill` process writing to PostgreSQL and Parquet is killed
//! with SIGKILL at seeded moments and run again after each kill. Every `*.parquet` file is always
//! complete, no window committed before a kill is fetched again, and the final tables and
//! partitions equal those of an uninterrupted run.
//!
//! The same harness runs against a root on S3 (a real S3 server, moto): every object is old or
//! new, never partial, and the final state equals the uninterrupted run's; and with two worker
//! processes sharing one job (leases in PostgreSQL, the root on S3), each killed at its own
//! moment. Every harness prints, and asserts a minimum of, the kills that landed mid-run.
//!
//! `cargo test` runs a short version; the long one (24 kills) is
//! `CCC_ETL_CRASH_KILLS=24 cargo test --release --test crash`. `CCC_ETL_CRASH_SEED` replays a run.

use crate::common;
use crate::common::{DAY, H};

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::sinks::{committed, parquet_contents, pg_contents};
use ccc_etl::record::Table;
use ccc_etl::sink::parquet::{Layout, Root, read_file};
use rand::{Rng, SeedableRng};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn write_config(path: &Path, endpoint: &str, root: &str, qps: f64) {
    crate::common::ConfigToml::new(endpoint, &["ccc-a", "ccc-b", "ccc-c"])
        .set("source", "max_qps", qps)
        .set("source", "concurrency", 4)
        .postgres()
        .parquet(root)
        .write(path);
}

fn backfill(config: &Path, db_url: &str, from: i64, to: i64) -> tokio::process::Command {
    let mut c = crate::common::ccc_etl_cmd();
    c.args([
        "-q",
        "--config",
        config.to_str().unwrap(),
        "backfill",
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
    ])
    .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
    .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
    .env("DATABASE_URL", db_url)
    .envs(S3_ENV.get().cloned().unwrap_or_default())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    c
}

/// The S3 server's environment, for the run against a bucket.
static S3_ENV: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();

/// Where the killed run writes its Parquet, and how many workers share it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Local,
    S3,
    /// Two worker processes on one job (a bucket and the PostgreSQL ledger), each killed at its
    /// own seeded moment.
    TwoWorkers,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_seeded_moments_loses_and_doubles_nothing_in_either_sink() {
    let kills_wanted = env_or("CCC_ETL_CRASH_KILLS", 6) as usize;
    crash_harness(Target::Local, kills_wanted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_writing_to_s3_leaves_every_object_old_or_new() {
    let kills_wanted = env_or("CCC_ETL_CRASH_KILLS", 4) as usize;
    crash_harness(Target::S3, kills_wanted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_two_workers_sharing_a_job_loses_and_doubles_nothing() {
    let kills_wanted = env_or("CCC_ETL_CRASH_KILLS", 4) as usize;
    crash_harness(Target::TwoWorkers, kills_wanted).await;
}

async fn crash_harness(target: Target, kills_wanted: usize) {
    let seed = env_or("CCC_ETL_CRASH_SEED", 20261126);
    let mut opts = common::options(&["ccc-a", "ccc-b", "ccc-c"]);
    opts.revise_ms = 0;
    let emu = common::start(opts).await;
    let to = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let days = if kills_wanted > 8 { 170 } else { 100 };
    let from = to - days * DAY;
    let windows = (3 * ((days + 6) / 7)) as f64;
    // Slow enough that every kill lands mid-run: about 1.5 runs' worth of windows per kill.
    let qps = (windows / (kills_wanted as f64 * 0.45 * 1.5)).clamp(2.0, 12.0);
    let work = tempfile::tempdir().unwrap();

    let reference_db = common::TestDb::create().await;
    let reference_root = work.path().join("reference");
    let rcfg = work.path().join("reference.toml");
    write_config(
        &rcfg,
        &emu.endpoint(),
        &reference_root.display().to_string(),
        50.0,
    );
    assert!(
        backfill(&rcfg, &reference_db.url, from, to)
            .status()
            .await
            .unwrap()
            .success()
    );
    let rpool = reference_db.pool().await;
    let expected_pg = pg_contents(&rpool).await;
    let expected_pq = parquet_contents(&Root::Local(Layout::new(&reference_root))).await;
    assert_eq!(expected_pg.len() as i64, 3 * 3 * days * 24);
    assert_eq!(expected_pq.len(), expected_pg.len());

    let db = common::TestDb::create().await;
    let pool = db.pool().await;
    let root = work.path().join("crashy");
    let cfg = work.path().join("crashy.toml");
    let crashy = match target {
        Target::Local => {
            write_config(&cfg, &emu.endpoint(), &root.display().to_string(), qps);
            Root::Local(Layout::new(&root))
        }
        Target::S3 | Target::TwoWorkers => {
            let s3 = common::s3::server();
            S3_ENV.get_or_init(|| s3.env());
            let bucket = s3.bucket().await;
            write_config(&cfg, &emu.endpoint(), &format!("s3://{bucket}/crashy"), qps);
            // Read with the test's own client, as another engine would.
            let url = ccc_etl::config::ObjectUrl {
                kind: ccc_etl::config::StoreKind::S3,
                bucket,
                prefix: "crashy".into(),
            };
            Root::Object(std::sync::Arc::new(common::s3::object_root(s3, &url)))
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut kills, mut mid_run) = (0, 0);
    for _ in 0..kills_wanted * 3 {
        let before = committed(&pool).await;
        let calls_before = emu.stats().await.unwrap().calls.len();
        let mut child = backfill(&cfg, &db.url, from, to).spawn().unwrap();
        let delay = Duration::from_millis(rng.random_range(150..750));
        // A second worker on the same job, killed at its own moment.
        let second = (target == Target::TwoWorkers).then(|| {
            let delay = Duration::from_millis(rng.random_range(150..750));
            let mut c = backfill(&cfg, &db.url, from, to).spawn().unwrap();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {
                        c.kill().await.unwrap();
                        true
                    }
                    status = c.wait() => {
                        assert!(status.unwrap().success());
                        false
                    }
                }
            })
        });
        let finished = tokio::select! {
            _ = tokio::time::sleep(delay) => {
                child.kill().await.unwrap();
                kills += 1;
                false
            }
            status = child.wait() => {
                assert!(status.unwrap().success());
                true
            }
        };
        if let Some(second) = second
            && second.await.unwrap()
        {
            kills += 1;
        }
        let stats = emu.stats().await.unwrap();
        // A kill lands mid-run when the killed process had begun fetching.
        if !finished && stats.calls.len() > calls_before {
            mid_run += 1;
        }
        for c in &stats.calls[calls_before..] {
            assert!(
                !before.contains(&(c.instance_id.clone(), c.start_ms)),
                "seed {seed}: refetched a committed window {c:?}"
            );
        }
        // Every object or file an engine would read is complete.
        parquet_contents(&crashy).await;
        for f in files(&root) {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".parquet") {
                let table = Table::ALL
                    .into_iter()
                    .find(|t| f.starts_with(root.join(t.name())))
                    .unwrap();
                read_file(&f, table)
                    .unwrap_or_else(|e| panic!("seed {seed}: partial file after a kill: {e}"));
            } else {
                assert!(
                    name.starts_with('.') || f.starts_with(root.join("_ccc_etl")),
                    "seed {seed}: stray file {name}"
                );
            }
        }
        if finished || mid_run >= kills_wanted {
            break;
        }
    }
    println!("seed {seed}: {kills} kill(s), {mid_run} of them mid-run (after fetching began)");
    assert!(
        mid_run >= kills_wanted.min(4),
        "seed {seed}: only {mid_run} of {kills} kills landed mid-run"
    );
    assert!(
        backfill(&cfg, &db.url, from, to)
            .status()
            .await
            .unwrap()
            .success()
    );
    assert_eq!(
        pg_contents(&pool).await,
        expected_pg,
        "seed {seed}: PostgreSQL equals an uninterrupted run"
    );
    assert_eq!(
        parquet_contents(&crashy).await,
        expected_pq,
        "seed {seed}: Parquet equals an uninterrupted run"
    );
    assert!(
        files(&root)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".tmp")),
        "temporary files cleaned up"
    );
    pool.close().await;
    rpool.close().await;
    db.drop_db().await;
    reference_db.drop_db().await;
}
