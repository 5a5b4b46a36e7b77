//! Parquet on object storage, against a real S3 server (moto) and Azure's emulator (Azurite),
//! both started by the tests on loopback: a backfill into `s3://` or `az://` equals the same
//! backfill into a local root, file for file (and reads back with pyarrow from S3); a deleted
//! file is fetched again; racing writers lose no rows, with conditional writes (S3, Azure) and
//! with the PostgreSQL day lock (OSS mode); large files go up in parts and leave none behind;
//! errors name the root and never a secret.

use crate::common;
use crate::common::ConfigToml;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::azure;
use crate::common::latency::{LatencyProxy, Request};
use crate::common::s3::{self, S3Server};
use crate::common::{DAY, H};
use ccc_etl::config::{ObjectUrl, StoreKind};
use ccc_etl::record::{MediaType, OverallRow, Table, WindowBatch, WindowKey};
use ccc_etl::sink::parquet::{Layout, ObjectRoot, Root, merge_day_into};
use chrono::NaiveDate;

/// An in-process view of a bucket on the test server.
fn object_root(s3: &S3Server, bucket: &str, prefix: &str, conditional: bool) -> ObjectRoot {
    let url = ObjectUrl {
        kind: StoreKind::S3,
        bucket: bucket.into(),
        prefix: prefix.into(),
    };
    ObjectRoot::with_store(s3.store(bucket, conditional), url, conditional)
}

/// Every row of a root, without fetch metadata, keyed by file.
async fn contents(root: &Root) -> BTreeMap<(Table, NaiveDate), Vec<String>> {
    let mut out = BTreeMap::new();
    for f in root.list().await.unwrap() {
        let rows = root
            .read_rows(f.table, f.day)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out.insert(
            (f.table, f.day),
            rows.iter()
                .map(|r| {
                    format!(
                        "{}|{}|{}|{:?}",
                        r.instance_id, r.media_type, r.stats_time, r.counts
                    )
                })
                .collect(),
        );
    }
    out
}

fn day_arg(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// A `ccc-etl` process against the emulator, with the S3 server's environment.
fn ccc_etl(s3: &S3Server, config: &Path, db_url: &str, args: &[&str]) -> std::process::Output {
    ccc_etl_with(s3.env(), config, db_url, args)
}

/// A `ccc-etl` process against the emulator, with a store's environment.
fn ccc_etl_with(
    store_env: Vec<(&'static str, String)>,
    config: &Path,
    db_url: &str,
    args: &[&str],
) -> std::process::Output {
    common::ccc_etl_std_at(config, Some(db_url))
        .args(common::args(args))
        .envs(store_env)
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const PYARROW_SUMMARY: &str = r#"
import os, json, pyarrow.fs as pafs, pyarrow.parquet as pq
host = os.environ["ENDPOINT"].removeprefix("http://")
fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1")
out = {}
for info in fs.get_file_info(pafs.FileSelector(os.environ["BUCKET"] + "/warehouse", recursive=True)):
    if not info.path.endswith("/part-00000.parquet"):
        continue
    table, dt = info.path.split("/")[-3:-1]
    t = pq.read_table(info.path, filesystem=fs)
    counts = [c for c in t.column_names if c not in ("instance_id", "media_type", "stats_time", "fetched_at", "request_id", "extra")]
    total = sum(sum(v for v in t.column(c).to_pylist()) for c in counts)
    out[table + "/" + dt] = [t.num_rows, total, sorted(set(t.column("instance_id").to_pylist()))]
print(json.dumps(out, sort_keys=True))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_into_s3_equals_the_same_backfill_into_a_local_root_file_for_file() {
    let s3 = s3::server();
    let bucket = s3.bucket().await;
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let today = crate::common::now().timestamp_millis() / DAY * DAY;
    // Ending two days back: the last hours are past the emulator's 6-hour revision at any time
    // of day, so a second run has nothing to fetch again.
    let (from, to) = (day_arg(today - 10 * DAY), day_arg(today - 2 * DAY));
    let local_root = dir.path().join("local");
    let local_cfg = dir.path().join("local.toml");
    let two = ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-b"]);
    two.clone().parquet(local_root.display()).write(&local_cfg);
    let s3_cfg = dir.path().join("s3.toml");
    two.postgres()
        .parquet(format!("s3://{bucket}/warehouse"))
        .write(&s3_cfg);
    let backfill = ["backfill", "--from", from.as_str(), "--to", to.as_str()];
    let local = ccc_etl(s3, &local_cfg, &db.url, &backfill);
    assert!(local.status.success(), "{}", text(&local));
    let remote = ccc_etl(s3, &s3_cfg, &db.url, &backfill);
    assert!(remote.status.success(), "{}", text(&remote));
    assert!(
        !dir.path().join("s3:").exists() && !Path::new("s3:").exists(),
        "nothing is written to a local directory named after the scheme"
    );

    let local_root = Root::Local(Layout::new(&local_root));
    let s3_root = Root::Object(Arc::new(object_root(s3, &bucket, "warehouse", true)));
    let expected = contents(&local_root).await;
    let got = contents(&s3_root).await;
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "the same day files"
    );
    assert!(expected.len() >= 3 * 8, "{} files", expected.len());
    assert_eq!(got, expected, "file for file, the same rows");

    // An independent reader: pyarrow's S3 filesystem against the same server.
    let summary: BTreeMap<String, (u64, i64, Vec<String>)> =
        serde_json::from_str(&s3.python(&bucket, PYARROW_SUMMARY)).unwrap();
    assert_eq!(summary.len(), expected.len());
    for ((table, day), rows) in &expected {
        let key = format!("{}/dt={}", table.name(), day.format("%Y-%m-%d"));
        let stored = local_root.read_rows(*table, *day).await.unwrap();
        let total: i64 = stored.iter().flat_map(|r| r.counts.iter()).sum();
        let mut instances: Vec<String> = stored.iter().map(|r| r.instance_id.clone()).collect();
        instances.sort();
        instances.dedup();
        assert_eq!(
            summary.get(&key),
            Some(&(rows.len() as u64, total, instances)),
            "{key} as pyarrow reads it"
        );
    }

    // status and verify read the bucket; a second run fetches nothing and rewrites nothing.
    let etags = |l: Vec<ccc_etl::sink::parquet::layout::Listed>| {
        l.into_iter()
            .map(|f| (f.table, f.day, f.etag))
            .collect::<Vec<_>>()
    };
    let before = etags(s3_root.list().await.unwrap());
    let status = ccc_etl(s3, &s3_cfg, &db.url, &["status"]);
    // Exit 4: the rest of the 180 days is not back-filled, and status says so.
    assert_eq!(status.status.code(), Some(4), "{}", text(&status));
    for instance in ["ccc-a", "ccc-b"] {
        let of = |table: Option<Table>| {
            expected
                .iter()
                .filter(|((t, _), _)| table.is_none_or(|x| x == *t))
                .flat_map(|(_, rows)| rows)
                .filter(|r| r.starts_with(&format!("{instance}|")))
                .count()
        };
        let each: Vec<String> = Table::ALL
            .iter()
            .map(|t| format!("{} {}", t.name(), of(Some(*t))))
            .collect();
        let sink = |name: &str| format!("{name} {} rows ({})", of(None), each.join(", "));
        assert!(
            String::from_utf8_lossy(&status.stdout).contains(&format!(
                "{instance}/Audio: {}, {}",
                sink("parquet"),
                sink("postgres")
            )),
            "{}",
            text(&status)
        );
    }
    let verify = ccc_etl(s3, &s3_cfg, &db.url, &["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("agree"),
        "{}",
        text(&verify)
    );
    let calls = emu.stats().await.unwrap().calls.len();
    let again = ccc_etl(s3, &s3_cfg, &db.url, &backfill);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        emu.stats().await.unwrap().calls.len(),
        calls,
        "nothing fetched again"
    );
    assert_eq!(
        etags(s3_root.list().await.unwrap()),
        before,
        "no file rewritten"
    );

    // A file deleted from the bucket is noticed and fetched again, as on a local root.
    let Root::Object(o) = &s3_root else {
        unreachable!()
    };
    let (table, day) = *expected.keys().nth(3).unwrap();
    let store = s3.store(&bucket, true);
    object_store::ObjectStoreExt::delete(&*store, &o.day_key(table, day))
        .await
        .unwrap();
    let repaired = ccc_etl(s3, &s3_cfg, &db.url, &backfill);
    assert!(repaired.status.success(), "{}", text(&repaired));
    assert!(
        emu.stats().await.unwrap().calls.len() > calls,
        "the deleted day is fetched again: {}",
        text(&repaired)
    );
    assert_eq!(
        contents(&s3_root).await,
        expected,
        "the deleted day is back"
    );

    // A second object in a day's folder (a copy) is a finding, and the next run moves it under
    // `_ccc_etl/set-aside/` (a copy, then a delete), leaving the day as it was.
    let (table, day) = *expected.keys().nth(5).unwrap();
    let file = o.day_key(table, day);
    let copy = object_store::path::Path::from(
        file.as_ref()
            .replace("part-00000.parquet", "part-00001.parquet"),
    );
    object_store::ObjectStoreExt::copy(&*store, &file, &copy)
        .await
        .unwrap();
    let verify = ccc_etl(s3, &s3_cfg, &db.url, &["verify"]);
    assert_eq!(verify.status.code(), Some(4), "{}", text(&verify));
    assert!(
        text(&verify).contains("EXTRA FILE") && text(&verify).contains("part-00001.parquet"),
        "{}",
        text(&verify)
    );
    let status = ccc_etl(s3, &s3_cfg, &db.url, &["status"]);
    assert!(text(&status).contains("EXTRA FILE"), "{}", text(&status));
    let moved = ccc_etl(s3, &s3_cfg, &db.url, &backfill);
    assert!(moved.status.success(), "{}", text(&moved));
    let listing = s3_root.list_all().await.unwrap();
    assert!(listing.strays.is_empty(), "{:?}", listing.strays);
    let aside: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(object_store::ObjectStore::list(
            &*store,
            Some(&object_store::path::Path::from(
                "warehouse/_ccc_etl/set-aside",
            )),
        ))
        .await
        .unwrap();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(contents(&s3_root).await, expected);
    let verify = ccc_etl(s3, &s3_cfg, &db.url, &["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    db.drop_db().await;
}

/// The day files `requests` asked for with `method` (path-style `/{bucket}/{key}`), sorted.
fn day_paths(requests: &[Request], method: &str) -> Vec<String> {
    let mut v: Vec<String> = requests
        .iter()
        .filter(|r| r.method == method && r.path.ends_with("/part-00000.parquet"))
        .map(|r| r.path.replace("%3D", "="))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_day_is_created_unread_and_a_file_the_manifest_does_not_list_is_merged() {
    let s3 = s3::server();
    let bucket = s3.bucket().await;
    let upstream = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = LatencyProxy::start(upstream, Duration::from_millis(2)).await;
    let mut opts = common::options(&["ccc-a"]);
    opts.revise_ms = 0;
    let emu = common::start(opts).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let today = crate::common::now().timestamp_millis() / DAY * DAY;
    let (from, to) = (day_arg(today - 6 * DAY), day_arg(today - DAY));
    let cfg = dir.path().join("s3.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .postgres()
        .parquet(format!("s3://{bucket}/warehouse"))
        .write(&cfg);
    let env: Vec<_> = s3
        .env()
        .into_iter()
        .map(|(k, v)| match k {
            "AWS_ENDPOINT_URL" => (k, proxy.endpoint()),
            _ => (k, v),
        })
        .collect();

    // A day file nobody recorded (written by hand, or by a run whose ledger is gone): another
    // instance's overall rows of the second day, in the configured zone (UTC+8).
    let root = object_root(s3, &bucket, "warehouse", true);
    let hand_day = date((today - 5 * DAY) / DAY);
    let start = (today - 5 * DAY) - 8 * H;
    merge_day_into(
        &root,
        "hand",
        chrono_tz::Asia::Shanghai,
        hand_day,
        &[batch_from("by-hand", 7, start)],
    )
    .await
    .unwrap();
    let hand_key = format!("/{bucket}/{}", root.day_key(Table::Overall, hand_day));

    let backfill = ["backfill", "--from", from.as_str(), "--to", to.as_str()];
    let run = ccc_etl_with(env.clone(), &cfg, &db.url, &backfill);
    assert!(run.status.success(), "{}", text(&run));
    let root = Root::Object(Arc::new(root));
    let mut files: Vec<String> = root
        .list()
        .await
        .unwrap()
        .iter()
        .map(|f| f.location.trim_start_matches("s3:/").to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 3 * 6, "{files:?}");
    // Only the unrecorded file was read: once before the run, which checks that its rows are
    // its day's keys (they are: it stays), once to merge it after its create failed. Every other
    // file was created without a read.
    let seen = proxy.requests();
    assert_eq!(
        day_paths(&seen, "GET"),
        vec![hand_key.clone(), hand_key.clone()]
    );
    let mut puts = day_paths(&seen, "PUT");
    assert_eq!(puts.len(), files.len() + 1, "{puts:?}");
    puts.dedup();
    assert_eq!(
        puts, files,
        "each file created once (the unrecorded one tried twice)"
    );
    // The run's one window completes its six days at once: they were written together (the
    // default `concurrency`, 4, days in flight, each with its three tables), so the client
    // opened a connection per request in flight.
    assert!(
        proxy.connections() >= 6,
        "{} connections",
        proxy.connections()
    );
    let hand_rows = root.read_rows(Table::Overall, hand_day).await.unwrap();
    let mut instances: Vec<&str> = hand_rows.iter().map(|r| r.instance_id.as_str()).collect();
    instances.dedup();
    assert_eq!(
        instances,
        ["by-hand", "ccc-a"],
        "the file's rows kept, the run's added"
    );

    // Once recorded, a file is read before it is merged: a refetch reads each file once and
    // writes none (nothing changed).
    let before = proxy.requests().len();
    let again = ccc_etl_with(
        env,
        &cfg,
        &db.url,
        &[&backfill[..], &["--refetch"]].concat(),
    );
    assert!(again.status.success(), "{}", text(&again));
    let after = proxy.requests().split_off(before);
    assert_eq!(day_paths(&after, "GET"), files, "{}", text(&again));
    assert_eq!(day_paths(&after, "PUT"), Vec::<String>::new());
    db.drop_db().await;
}

const DAY0: i64 = 20_400; // 2025-11-08, days since the epoch

fn date(day: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(day)
}

/// One instance's day of hourly overall rows.
fn batch(instance: &str, n: i64) -> Arc<WindowBatch> {
    batch_from(instance, n, DAY0 * DAY)
}

/// One instance's 24 hours of overall rows from `start_ms`.
fn batch_from(instance: &str, n: i64, start_ms: i64) -> Arc<WindowBatch> {
    let key = WindowKey {
        instance_id: instance.into(),
        media_type: MediaType::Audio,
        start_ms,
        end_ms: start_ms + DAY,
    };
    Arc::new(WindowBatch {
        final_end_ms: None,
        request_id: format!("r-{instance}"),
        fetched_at: crate::common::now(),
        attempts: 1,
        inbound: vec![],
        outbound: vec![],
        overall: (0..24)
            .map(|h| OverallRow {
                stats_time: start_ms + h * H,
                max_logged_in_agents: n,
            })
            .collect(),
        key,
        extra: Default::default(),
    })
}

async fn instances_in(root: &ObjectRoot) -> Vec<String> {
    instances_of(Root::Object(Arc::new(clone_root(root)))).await
}

/// The instances of the race day's file.
async fn instances_of(root: Root) -> Vec<String> {
    let mut v: Vec<String> = root
        .read_rows(Table::Overall, date(DAY0))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.instance_id)
        .collect();
    v.dedup();
    v
}

fn clone_root(r: &ObjectRoot) -> ObjectRoot {
    // A second client on the same bucket: what another process would see.
    let s3 = s3::server();
    object_root(s3, &r.url().bucket, &r.url().prefix, r.conditional())
}

/// `writers` tasks, each with its own client, merge their own instance into the same day at
/// once; returns the conflicts the conditional writes saw.
async fn race(roots: Vec<ObjectRoot>) -> u32 {
    let mut tasks = vec![];
    for (i, root) in roots.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            merge_day_into(
                &root,
                "race",
                chrono_tz::UTC,
                date(DAY0),
                &[batch(&format!("w{i:02}"), i as i64)],
            )
            .await
            .unwrap()
            .conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    conflicts
}

/// Conditional writes on a store: a stale replace and a second create are refused, and eight
/// writers racing on one day, with no lock, keep every writer's rows. `client(bucket)` is a new
/// client of a bucket (another process, as it were); `buckets` two empty ones.
async fn conditional_writes_keep_every_writers_rows(
    client: impl Fn(&str) -> ObjectRoot,
    buckets: [String; 2],
) {
    let of = |bucket: &str| {
        let root = Root::Object(Arc::new(client(bucket)));
        async move { instances_of(root).await }
    };
    let (a, b) = (client(&buckets[0]), client(&buckets[0]));
    // Deterministic: A reads, B writes, A's write (If-Match on what it read) is refused.
    merge_day_into(&a, "r", chrono_tz::UTC, date(DAY0), &[batch("first", 1)])
        .await
        .unwrap();
    let read = a.fetch(Table::Overall, date(DAY0)).await.unwrap().unwrap();
    merge_day_into(&b, "r", chrono_tz::UTC, date(DAY0), &[batch("second", 2)])
        .await
        .unwrap();
    let stale = a
        .put_day(
            Table::Overall,
            date(DAY0),
            read.bytes.to_vec(),
            Some(&read.version),
        )
        .await
        .unwrap();
    assert!(
        matches!(stale, ccc_etl::sink::parquet::object::PutOutcome::Conflict),
        "{stale:?}"
    );
    assert_eq!(of(&buckets[0]).await, ["first", "second"]);
    // A new file is written with If-None-Match: a second creator is refused too.
    let created = a
        .put_day(Table::Inbound, date(DAY0), b"x".to_vec(), None)
        .await
        .unwrap();
    assert!(matches!(
        created,
        ccc_etl::sink::parquet::object::PutOutcome::Written(_)
    ));
    let again = b
        .put_day(Table::Inbound, date(DAY0), b"y".to_vec(), None)
        .await
        .unwrap();
    assert!(matches!(
        again,
        ccc_etl::sink::parquet::object::PutOutcome::Conflict
    ));

    // Eight writers at once, no lock: conditional writes alone keep every writer's rows.
    let conflicts = race((0..8).map(|_| client(&buckets[1])).collect()).await;
    let want: Vec<String> = (0..8).map(|i| format!("w{i:02}")).collect();
    assert_eq!(
        of(&buckets[1]).await,
        want,
        "no writer's rows lost ({conflicts} conflicts merged again)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_writes_keep_every_racing_writers_rows() {
    let s3 = s3::server();
    let buckets = [s3.bucket().await, s3.bucket().await];
    conditional_writes_keep_every_writers_rows(|b| object_root(s3, b, "wh", true), buckets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_conditional_writes_the_postgres_day_lock_keeps_every_writers_rows() {
    let s3 = s3::server();
    let db = common::TestDb::create().await;
    // The schema's tables (the manifest is recorded under the day's lock).
    let pool = db.migrated().await.pool().clone();
    // What the lock prevents: a stale unconditional write overwrites another writer's rows.
    let bucket = s3.bucket().await;
    let a = object_root(s3, &bucket, "wh", false);
    let b = object_root(s3, &bucket, "wh", false);
    merge_day_into(&a, "r", chrono_tz::UTC, date(DAY0), &[batch("first", 1)])
        .await
        .unwrap();
    let read = a.fetch(Table::Overall, date(DAY0)).await.unwrap().unwrap();
    merge_day_into(&b, "r", chrono_tz::UTC, date(DAY0), &[batch("second", 2)])
        .await
        .unwrap();
    a.put_day(
        Table::Overall,
        date(DAY0),
        read.bytes.to_vec(),
        Some(&read.version),
    )
    .await
    .unwrap();
    assert_eq!(instances_in(&a).await, ["first"], "the lost update is real");

    // The day lock: a second writer waits until the first one's transaction ends.
    let locked = a.clone_with_locks(&pool);
    let held = locked.lock_day("root", date(DAY0)).await.unwrap().unwrap();
    let other = b.clone_with_locks(&pool);
    let waiter = tokio::spawn(async move {
        let tx = other.lock_day("root", date(DAY0)).await.unwrap();
        drop(tx);
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiter.is_finished(), "the second writer waits for the day");
    let _ = locked
        .lock_day("root", date(DAY0 + 1))
        .await
        .unwrap()
        .unwrap();
    drop(held);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("released with the transaction")
        .unwrap();

    // Eight writers at once, as on OSS: no conditional writes, the lock keeps every row.
    let bucket = s3.bucket().await;
    let roots = (0..8)
        .map(|_| object_root(s3, &bucket, "wh", false).with_day_locks(pool.clone()))
        .collect();
    assert_eq!(race(roots).await, 0, "no conditional writes on this store");
    let want: Vec<String> = (0..8).map(|i| format!("w{i:02}")).collect();
    assert_eq!(
        instances_in(&object_root(s3, &bucket, "wh", false)).await,
        want
    );
    pool.close().await;
    db.drop_db().await;
}

trait WithLocks {
    fn clone_with_locks(&self, pool: &sqlx::PgPool) -> ObjectRoot;
}

impl WithLocks for ObjectRoot {
    fn clone_with_locks(&self, pool: &sqlx::PgPool) -> ObjectRoot {
        clone_root(self).with_day_locks(pool.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oss_mode_and_multipart_uploads_write_the_same_files_and_leave_no_parts() {
    let s3 = s3::server();
    let emu = common::start(common::options(&["ccc-a"])).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let today = crate::common::now().timestamp_millis() / DAY * DAY;
    let (from, to) = (day_arg(today - 5 * DAY), day_arg(today - DAY));
    let backfill = ["backfill", "--from", from.as_str(), "--to", to.as_str()];
    let mut roots = vec![];
    for (name, root, extra) in [
        // OSS's S3 API on the same server, path-style: no conditional writes, the day lock.
        ("oss", "oss", ("region", toml::Value::from("cn-hangzhou"))),
        // Every file uploaded in parts.
        (
            "multipart",
            "s3",
            ("multipart_threshold_mib", toml::Value::from(0)),
        ),
    ] {
        let bucket = s3.bucket().await;
        let cfg = dir.path().join(format!("{name}.toml"));
        ConfigToml::new(&emu.endpoint(), &["ccc-a"])
            .set("postgres", "schema", name)
            .parquet(format!("{root}://{bucket}/warehouse"))
            .set("parquet", "endpoint", s3.endpoint.as_str())
            .set("parquet", extra.0, extra.1)
            .write(&cfg);
        let out = ccc_etl(s3, &cfg, &db.url, &backfill);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let verify = ccc_etl(s3, &cfg, &db.url, &["verify"]);
        assert!(verify.status.success(), "{name}: {}", text(&verify));
        roots.push((name, bucket));
    }
    let oss = contents(&Root::Object(Arc::new(object_root(
        s3,
        &roots[0].1,
        "warehouse",
        false,
    ))))
    .await;
    let parts = contents(&Root::Object(Arc::new(object_root(
        s3,
        &roots[1].1,
        "warehouse",
        false,
    ))))
    .await;
    assert!(oss.len() >= 3 * 4, "{}", oss.len());
    assert_eq!(oss, parts, "both modes write the same files");
    // Multipart ETags carry the part count; no upload is left open.
    let listed = Root::Object(Arc::new(object_root(s3, &roots[1].1, "warehouse", false)))
        .list()
        .await
        .unwrap();
    assert!(listed.iter().all(|l| l.etag.ends_with("-1")), "{listed:?}");
    let open = s3.python(
        &roots[1].1,
        "import os, boto3\n\
         s3 = boto3.client('s3', endpoint_url=os.environ['ENDPOINT'])\n\
         print(len(s3.list_multipart_uploads(Bucket=os.environ['BUCKET']).get('Uploads', [])))",
    );
    assert_eq!(open.trim(), "0");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_name_the_root_and_never_a_secret() {
    let s3 = s3::server();
    let emu = common::start(common::options(&["ccc-a"])).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    let write = |bucket: &str| {
        ConfigToml::new(&emu.endpoint(), &["ccc-a"])
            .postgres()
            .parquet(format!("s3://{bucket}/wh"))
            .write(&cfg);
    };
    let today = crate::common::now().timestamp_millis() / DAY * DAY;
    let (from, to) = (day_arg(today - 2 * DAY), day_arg(today - DAY));
    let backfill = ["backfill", "--from", from.as_str(), "--to", to.as_str()];
    write("no-such-bucket");
    let out = ccc_etl(s3, &cfg, &db.url, &backfill);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("s3://no-such-bucket/wh"), "{all}");
    // The store's XML error body is reduced to its code, on the error's one line.
    let line = all
        .lines()
        .find(|l| l.contains("s3://no-such-bucket/wh"))
        .unwrap();
    assert!(line.contains("NoSuchBucket"), "{line}");
    assert!(!all.contains("<?xml") && !all.contains("<Error>"), "{all}");
    assert!(!all.contains(s3::SECRET_ACCESS_KEY), "{all}");
    assert!(!all.contains(s3::ACCESS_KEY_ID), "{all}");
    assert!(
        emu.stats().await.unwrap().calls.is_empty(),
        "refused before any request"
    );

    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_and_check_work_against_a_bucket() {
    let s3 = s3::server();
    let db = common::TestDb::create().await;
    let bucket = s3.bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let demo = crate::common::ccc_etl_std_cmd()
        .current_dir(dir.path())
        .args(["-q", "demo", "--days", "2", "--parquet-root"])
        .arg(format!("s3://{bucket}/demo"))
        .envs(s3.env())
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(demo.status.success(), "{}", text(&demo));
    // Nothing written to the working directory but the demo's report page.
    let written: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(written, ["ccc-etl-demo-report.html"]);
    let root = Root::Object(Arc::new(object_root(s3, &bucket, "demo", true)));
    let listed = root.list().await.unwrap();
    assert!(listed.len() >= 3 * 2, "{listed:?}");
    let rows: usize = contents(&root).await.values().map(Vec::len).sum();
    let pool = db.pool().await;
    let in_pg: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM ccc_demo.inbound_trend) + \
         (SELECT count(*) FROM ccc_demo.outbound_trend) + (SELECT count(*) FROM ccc_demo.overall_trend)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows as i64, in_pg, "the bucket holds what PostgreSQL holds");
    pool.close().await;

    // Without DATABASE_URL a bucket is refused: its ledger needs PostgreSQL.
    let refused = crate::common::ccc_etl_std_cmd()
        .current_dir(dir.path())
        .args(["-q", "demo", "--days", "2", "--parquet-root"])
        .arg(format!("s3://{bucket}/demo2"))
        .envs(s3.env())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("DATABASE_URL"),
        "{}",
        text(&refused)
    );

    // `check` probes the bucket with a write and a delete.
    let emu = common::start(common::options(&["ccc-a"])).await;
    let cfg = dir.path().join("p.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .postgres()
        .parquet(format!("s3://{bucket}/checked"))
        .write(&cfg);
    let check = ccc_etl(s3, &cfg, &db.url, &["check"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains(&format!("s3://{bucket}/checked is writable")),
        "{}",
        text(&check)
    );
    let checked = Root::Object(Arc::new(object_root(s3, &bucket, "checked", true)));
    assert!(
        checked.list().await.unwrap().is_empty(),
        "the probe is deleted"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_answers_fails_the_run_at_start_within_its_timeout() {
    let s3 = s3::server();
    let emu = common::start(common::options(&["ccc-a"])).await;
    let db = common::TestDb::create().await;
    // Accepts connections, reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .postgres()
        .parquet("s3://silent/wh")
        .set("parquet", "endpoint", format!("http://{addr}"))
        .set("parquet", "timeout_secs", 2)
        .write(&cfg);
    let started = std::time::Instant::now();
    let out = ccc_etl(
        s3,
        &cfg,
        &db.url,
        &["backfill", "--from", "2026-11-01", "--to", "2026-11-02"],
    );
    let took = started.elapsed();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "unreachable at start: {all}");
    assert!(
        took < Duration::from_secs(20),
        "within its timeout: {took:?}"
    );
    let line = all
        .lines()
        .find(|l| l.contains("cannot reach the Parquet root s3://silent/wh"))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(line.contains("error: cannot reach"), "{all}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1,
        "one line: {all}"
    );
    assert!(
        emu.stats().await.unwrap().calls.is_empty(),
        "no API request"
    );
    silent.abort();
    db.drop_db().await;
}

/// An in-process view of a container on the test Azurite.
fn azure_root(az: &azure::Azurite, container: &str, prefix: &str) -> ObjectRoot {
    let url = ObjectUrl {
        kind: StoreKind::Azure,
        bucket: container.into(),
        prefix: prefix.into(),
    };
    ObjectRoot::with_store(az.store(container), url, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_into_azure_equals_a_local_one_and_a_deleted_blob_is_fetched_again() {
    let az = azure::server();
    let container = az.container();
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let today = crate::common::now().timestamp_millis() / DAY * DAY;
    let (from, to) = (day_arg(today - 9 * DAY), day_arg(today - DAY));
    let local_cfg = dir.path().join("local.toml");
    let two = ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-b"]);
    two.clone()
        .parquet(dir.path().join("local").display())
        .write(&local_cfg);
    let az_cfg = dir.path().join("az.toml");
    two.postgres()
        .parquet(format!("az://{container}/warehouse"))
        .write(&az_cfg);
    let backfill = ["backfill", "--from", from.as_str(), "--to", to.as_str()];
    let local = ccc_etl_with(az.env(), &local_cfg, &db.url, &backfill);
    assert!(local.status.success(), "{}", text(&local));
    let remote = ccc_etl_with(az.env(), &az_cfg, &db.url, &backfill);
    assert!(remote.status.success(), "{}", text(&remote));

    let local_root = Root::Local(Layout::new(dir.path().join("local")));
    let az_root = Root::Object(Arc::new(azure_root(az, &container, "warehouse")));
    let expected = contents(&local_root).await;
    assert!(expected.len() >= 3 * 8, "{} files", expected.len());
    assert_eq!(
        contents(&az_root).await,
        expected,
        "file for file, the same rows"
    );
    let verify = ccc_etl_with(az.env(), &az_cfg, &db.url, &["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));

    // A blob deleted from the container is noticed and fetched again.
    let calls = emu.stats().await.unwrap().calls.len();
    let Root::Object(o) = &az_root else {
        unreachable!()
    };
    let (table, day) = *expected.keys().nth(3).unwrap();
    object_store::ObjectStoreExt::delete(&*az.store(&container), &o.day_key(table, day))
        .await
        .unwrap();
    let repaired = ccc_etl_with(az.env(), &az_cfg, &db.url, &backfill);
    assert!(repaired.status.success(), "{}", text(&repaired));
    assert!(
        emu.stats().await.unwrap().calls.len() > calls,
        "fetched again"
    );
    assert_eq!(
        contents(&az_root).await,
        expected,
        "the deleted day is back"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_writes_keep_every_racing_writers_rows_on_azure() {
    let az = azure::server();
    let containers = [az.container(), az.container()];
    conditional_writes_keep_every_writers_rows(|c| azure_root(az, c, "wh"), containers).await;
}

/// The store refusing this configuration in the middle of a run (every request answered 403, as
/// when the bucket policy is revoked): the run stops at once with one line saying why, exit 1;
/// it does not go on failing window after window, and it retries nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_mid_run_stops_the_run_with_one_fatal_line() {
    let private = s3::private_server();
    let s3 = &private.0;
    let bucket = s3.bucket().await;
    let emu = common::start(common::options(&["ccc-a"])).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s3.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "max_qps", 500)
        .postgres()
        .parquet(format!("s3://{bucket}/wh"))
        .write(&cfg);
    // The start (the probe, root.json, the listings) and a few day files pass; then 403s.
    s3.refuse_after(16).await;
    let today = crate::common::now().timestamp_millis() / DAY * DAY;
    let (from, to) = (day_arg(today - 60 * DAY), day_arg(today - DAY));
    let run = ccc_etl(
        s3,
        &cfg,
        &db.url,
        &["backfill", "--from", from.as_str(), "--to", to.as_str()],
    );
    let said = text(&run);
    assert_eq!(run.status.code(), Some(1), "{said}");
    let stops: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("the run stops"))
        .collect();
    assert_eq!(stops.len(), 1, "{said}");
    assert!(
        stops[0].contains("the store refuses this configuration") && stops[0].contains("403"),
        "{said}"
    );
    assert!(!said.contains("retrying"), "nothing retried: {said}");
    let pool = db.pool().await;
    let committed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ccc.windows WHERE sink = 'parquet' AND status = 'committed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let windows = 60 / 7 + 1;
    assert!(committed < windows, "stopped before the end: {committed}");
    pool.close().await;
    db.drop_db().await;
}
