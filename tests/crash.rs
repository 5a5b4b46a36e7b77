//! Crash safety, short version: a real `ccc-etl backfill` process writing Parquet is killed with
//! SIGKILL at seeded moments and run again each time. Every `*.parquet` file is always complete,
//! no window committed before a kill is fetched again, and the final files equal those of an
//! uninterrupted run.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ccc_etl::record::Table;
use ccc_etl::sink::parquet::{StoredRow, read_file};
use chrono::Utc;
use rand::{Rng, SeedableRng};

const H: i64 = 3_600_000;
const DAY: i64 = 24 * H;

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

/// Every row of every table, without fetch metadata, sorted.
fn contents(root: &Path) -> Vec<String> {
    let mut rows = vec![];
    for t in Table::ALL {
        for f in files(&root.join(t.name())) {
            if f.extension().is_some_and(|e| e == "parquet") {
                let day = f
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                for r in read_file(&f, t).unwrap_or_else(|e| panic!("{}: {e}", f.display())) {
                    let StoredRow {
                        instance_id,
                        media_type,
                        stats_time,
                        counts,
                        ..
                    } = r;
                    rows.push(format!(
                        "{t}|{day}|{instance_id}|{media_type}|{stats_time}|{counts:?}"
                    ));
                }
            }
        }
    }
    rows.sort();
    rows
}

fn committed(root: &Path) -> BTreeSet<(String, i64)> {
    let text = std::fs::read_to_string(root.join("_ccc_etl/windows.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["status"] == "committed")
        .map(|v| {
            (
                v["instance_id"].as_str().unwrap().to_string(),
                v["start_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn write_config(dir: &Path, endpoint: &str, root: &Path) -> PathBuf {
    let p = dir.join("pipeline.toml");
    std::fs::write(
        &p,
        format!(
            "[source]\nendpoint = \"{endpoint}\"\nmax_qps = 12.0\nconcurrency = 4\n\
             [pipeline]\ninstances = [\"ccc-a\", \"ccc-b\", \"ccc-c\"]\n[parquet]\nroot = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    p
}

fn backfill(config: &Path, from: i64, to: i64) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccc-etl"));
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
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_seeded_moments_loses_and_doubles_nothing() {
    let mut opts = common::options(&["ccc-a", "ccc-b", "ccc-c"]);
    opts.revise_ms = 0;
    let emu = common::start(opts).await;
    let to = Utc::now().timestamp_millis() / H * H - 4 * H;
    let from = to - 120 * DAY;
    let work = tempfile::tempdir().unwrap();

    let reference = work.path().join("reference");
    let rcfg = write_config(work.path(), &emu.endpoint(), &reference);
    let status = backfill(&rcfg, from, to).status().await.unwrap();
    assert!(status.success());
    let expected = contents(&reference);
    assert_eq!(expected.len() as i64, 3 * 3 * 120 * 24);

    let root = work.path().join("crashy");
    let dir = work.path().join("crashy-config");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = write_config(&dir, &emu.endpoint(), &root);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261126);
    let mut kills = 0;
    let mut finished_early = 0;
    for _ in 0..8 {
        let before = committed(&root);
        let calls_before = emu.stats().await.unwrap().calls.len();
        let mut child = backfill(&cfg, from, to).spawn().unwrap();
        let delay = Duration::from_millis(rng.random_range(100..800));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                child.kill().await.unwrap();
                kills += 1;
            }
            status = child.wait() => {
                assert!(status.unwrap().success());
                finished_early += 1;
            }
        }
        // No window committed before this run was fetched by it.
        let stats = emu.stats().await.unwrap();
        for c in &stats.calls[calls_before..] {
            assert!(
                !before.contains(&(c.instance_id.clone(), c.start_ms)),
                "refetched committed window {c:?}"
            );
        }
        // Every file an engine would read is complete.
        for f in files(&root) {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".parquet") {
                let table = Table::ALL
                    .into_iter()
                    .find(|t| f.starts_with(root.join(t.name())))
                    .unwrap();
                read_file(&f, table).unwrap_or_else(|e| panic!("partial file after a kill: {e}"));
            } else {
                assert!(
                    name.starts_with('.') || f.starts_with(root.join("_ccc_etl")),
                    "stray file {name}"
                );
            }
        }
        if finished_early > 0 {
            break;
        }
    }
    assert!(kills >= 3, "the harness killed runs mid-flight ({kills})");
    let status = backfill(&cfg, from, to).status().await.unwrap();
    assert!(status.success());
    assert_eq!(
        contents(&root),
        expected,
        "same rows as an uninterrupted run: none missing, none doubled"
    );
    assert!(
        files(&root)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".tmp")),
        "temporary files cleaned up"
    );
}
