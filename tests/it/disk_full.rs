//! A Parquet root on a small tmpfs that fills mid-run (the tests run as root: they mount it, and
//! unmount it when done). ENOSPC is a clear error naming the root; no partial or temporary file
//! is left where engines read; no window is recorded whose rows were not written; once space is
//! freed, the next run completes the job to exactly what a run on a roomy disk writes. Both with
//! the ledger in PostgreSQL and with the file ledger (whose own writes hit the full disk too).

use crate::common;
use crate::common::ConfigToml;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::sinks::parquet_contents;
use crate::common::{DAY, H};
use ccc_etl::record::Table;
use ccc_etl::sink::parquet::{Layout, Root, read_file};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} ({}): the disk-full tests mount one and need root \
             (CI runs as root; run `sudo -E cargo test --test it disk_full::`)",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills `dir` with a file until `leave` bytes stay free.
fn fill_leaving(dir: &Path, leave: u64) -> PathBuf {
    let stat = rustix::fs::statvfs(dir).unwrap();
    let free = stat.f_bavail * stat.f_frsize;
    let filler = dir.join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    f.set_len(0).unwrap();
    use std::io::Write;
    let mut w = std::io::BufWriter::new(f);
    let chunk = vec![0u8; 64 << 10];
    let mut left = free.saturating_sub(leave);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    w.flush().unwrap();
    filler
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                files(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
}

/// Every file an engine would read (not starting with `.` or `_`, outside `_` directories) is a
/// complete Parquet file.
fn engines_read_only_whole_files(root: &Path) {
    let mut all = vec![];
    files(root, &mut all);
    for f in all {
        let rel = f.strip_prefix(root).unwrap();
        let hidden = rel.components().any(|c| {
            let s = c.as_os_str().to_string_lossy();
            s.starts_with('.') || s.starts_with('_')
        });
        if hidden {
            continue;
        }
        assert_eq!(
            f.extension().and_then(|e| e.to_str()),
            Some("parquet"),
            "{} is visible to engines",
            rel.display()
        );
        let table = Table::ALL
            .into_iter()
            .find(|t| rel.starts_with(t.name()))
            .unwrap();
        read_file(&f, table).unwrap_or_else(|e| panic!("{} is partial: {e}", rel.display()));
    }
}

struct Run<'a> {
    endpoint: &'a str,
    from: i64,
    to: i64,
}

impl Run<'_> {
    fn config(&self, dir: &Path, root: &Path, postgres: bool) -> PathBuf {
        let path = dir.join(format!("pipeline-{}.toml", uuid::Uuid::new_v4().simple()));
        let toml = ConfigToml::new(self.endpoint, &["ccc-a", "ccc-b", "ccc-c"])
            .set("source", "max_qps", 200)
            .parquet(root.display())
            .set("parquet", "buffer_rows", 2000);
        if postgres { toml.postgres() } else { toml }.write(&path);
        path
    }

    async fn backfill(&self, config: &Path, db_url: Option<&str>) -> Output {
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
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL");
        if let Some(u) = db_url {
            c.env("DATABASE_URL", u);
        }
        c.output().await.unwrap()
    }
}

async fn disk_fills_mid_run(postgres: bool) {
    let mut opts = common::options(&["ccc-a", "ccc-b", "ccc-c"]);
    opts.revise_ms = 0;
    let emu = common::start(opts).await;
    let to = crate::common::now().timestamp_millis() / H * H - 4 * H;
    let run = Run {
        endpoint: &emu.endpoint(),
        from: to - 90 * DAY,
        to,
    };
    let scratch = tempfile::tempdir().unwrap();
    // The same job on a roomy disk.
    let roomy = scratch.path().join("roomy");
    let reference_db = common::TestDb::create().await;
    let out = run
        .backfill(
            &run.config(scratch.path(), &roomy, postgres),
            postgres.then_some(reference_db.url.as_str()),
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let reference = parquet_contents(&Root::Local(Layout::new(&roomy))).await;

    // A tmpfs with room for a part of it.
    let fs = Tmpfs::mount("4m");
    let root = fs.path().join("wh");
    let filler = fill_leaving(fs.path(), 200 << 10);
    let db = common::TestDb::create().await;
    let config = run.config(scratch.path(), &root, postgres);
    let db_url = postgres.then_some(db.url.as_str());
    let full = run.backfill(&config, db_url).await;
    let t = common::output_text(&full);
    let code = full.status.code();
    assert!(code == Some(3) || code == Some(1), "exit {code:?}: {t}");
    assert!(t.contains("No space left on device"), "{t}");
    for line in t.lines().filter(|l| l.contains("No space left")) {
        assert!(
            line.contains(&root.display().to_string()),
            "every such failure names the file under the root: {line}"
        );
    }
    engines_read_only_whole_files(&root);

    // Space is freed: the next run completes the job, to exactly the roomy run's contents.
    std::fs::remove_file(&filler).unwrap();
    let again = run.backfill(&config, db_url).await;
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        common::output_text(&again)
    );
    engines_read_only_whole_files(&root);
    assert_eq!(
        parquet_contents(&Root::Local(Layout::new(&root))).await,
        reference,
        "nothing lost or doubled: every window the ledger recorded was on disk"
    );
    if postgres {
        let (pool, rpool) = (db.pool().await, reference_db.pool().await);
        assert_eq!(
            common::sinks::pg_contents(&pool).await,
            common::sinks::pg_contents(&rpool).await
        );
        pool.close().await;
        rpool.close().await;
    }
    db.drop_db().await;
    reference_db.drop_db().await;
}

#[tokio::test]
async fn a_full_disk_with_the_ledger_in_postgres_loses_nothing_and_the_next_run_completes() {
    disk_fills_mid_run(true).await;
}

#[tokio::test]
async fn a_full_disk_under_the_file_ledger_loses_nothing_and_the_next_run_completes() {
    disk_fills_mid_run(false).await;
}
