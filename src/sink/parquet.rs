//! The Parquet sink: Hive-partitioned files a warehouse can read, replaced atomically.
//!
//! Layout: `{root}/{table}/dt=YYYY-MM-DD/part-{instance}-{media}.parquet`, `dt` being the local
//! date of `stats_time` in the configured zone. One file per series and day keeps a window's
//! commit proportional to its own rows, however many instances share the day.
//!
//! A commit merges the window's rows into each file it touches (newer fetch wins, unchanged rows
//! keep their original `fetched_at`), writes `.part-….tmp` in the same directory, fsyncs it,
//! renames it over the old file and fsyncs the directory. A crash leaves the old file or the new
//! one, never a partial one; temporary names start with `.` and do not end in `.parquet`, so no
//! engine (Spark, Hive, Trino, DuckDB's `*.parquet` glob) reads them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{CommitStats, RunContext, Sink, SinkError};
use crate::ledger::FILE_LEDGER_DIR;
use crate::record::{MediaType, Table, WindowBatch};

/// One stored row of any table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// Instance.
    pub instance_id: String,
    /// Media type.
    pub media_type: String,
    /// Bucket start, epoch ms.
    pub stats_time: i64,
    /// Counts, in [`Table::count_columns`] order.
    pub counts: Vec<i64>,
    /// When the row was fetched, epoch ms.
    pub fetched_at: i64,
    /// RequestId that delivered it.
    pub request_id: String,
}

/// The Arrow schema of a table's files.
pub fn schema(table: Table) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("instance_id", DataType::Utf8, false),
        Field::new("media_type", DataType::Utf8, false),
        Field::new("stats_time", ts.clone(), false),
    ];
    for c in table.count_columns() {
        fields.push(Field::new(*c, DataType::Int64, false));
    }
    fields.push(Field::new("fetched_at", ts, false));
    fields.push(Field::new("request_id", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// The sink. Holds an exclusive lock on `{root}/_ccc_etl/lock` while it lives, so two runs never
/// merge into the same files at once.
pub struct ParquetSink {
    root: PathBuf,
    timezone: Tz,
    file_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    _root_lock: File,
}

/// Takes the root's exclusive lock, or says which run holds it.
fn lock_root(root: &Path) -> Result<File, SinkError> {
    let dir = root.join(FILE_LEDGER_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display()), false))?;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| err(format!("cannot open {}: {e}", path.display()), false))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(err(
            format!(
                "another ccc-etl run is writing to {} (lock {} is held); wait for it to finish",
                root.display(),
                path.display()
            ),
            false,
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(err(format!("cannot lock {}: {e}", path.display()), false))
        }
    }
}

/// Whether a file name is one of our temporary files (`.part-….tmp`).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Removes temporary files a crashed run left in the table directories; returns how many.
fn remove_stale_temp_files(root: &Path) -> usize {
    let mut removed = 0;
    for table in Table::ALL {
        let Ok(days) = std::fs::read_dir(root.join(table.name())) else {
            continue;
        };
        for day in days.flatten() {
            let Ok(files) = std::fs::read_dir(day.path()) else {
                continue;
            };
            for f in files.flatten() {
                if f.file_name().to_str().is_some_and(is_temp_name)
                    && std::fs::remove_file(f.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
    }
    removed
}

fn err(message: String, retryable: bool) -> SinkError {
    SinkError {
        sink: "parquet",
        message,
        retryable,
    }
}

impl ParquetSink {
    /// A sink writing under `root`, partitioning days in `timezone`. Checks the root is writable.
    pub fn new(root: &Path, timezone: Tz) -> Result<Self, SinkError> {
        std::fs::create_dir_all(root).map_err(|e| {
            err(
                format!("cannot create the Parquet root {}: {e}", root.display()),
                false,
            )
        })?;
        let probe = root.join(format!(".write-probe-{}", uuid::Uuid::new_v4().simple()));
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| {
                err(
                    format!("the Parquet root {} is not writable: {e}", root.display()),
                    false,
                )
            })?;
        let lock = lock_root(root)?;
        // Safe under the lock: no other run is writing here.
        let stale = remove_stale_temp_files(root);
        if stale > 0 {
            tracing::info!(
                files = stale,
                "removed temporary files left by an interrupted run"
            );
        }
        Ok(Self {
            root: root.to_path_buf(),
            timezone,
            file_locks: Mutex::new(HashMap::new()),
            _root_lock: lock,
        })
    }

    /// The file holding one series' rows of one table and day.
    pub fn file_path(
        &self,
        table: Table,
        day: NaiveDate,
        instance: &str,
        media: MediaType,
    ) -> PathBuf {
        self.root
            .join(table.name())
            .join(format!("dt={}", day.format("%Y-%m-%d")))
            .join(format!("part-{instance}-{media}.parquet"))
    }

    fn day_of(&self, ms: i64) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .unwrap_or_default()
            .with_timezone(&self.timezone)
            .date_naive()
    }

    /// Forgets a file's lock once nobody else holds it, so the map stays as small as the set
    /// of files being written at the moment, not every file ever touched.
    fn release(&self, path: &Path, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.file_locks.lock().expect("lock map");
        // Clones are only made under the map's mutex: 2 = the map's and ours.
        if Arc::strong_count(&lock) == 2 {
            map.remove(path);
        }
    }

    /// How many file locks are held in memory (for tests).
    pub fn open_file_locks(&self) -> usize {
        self.file_locks.lock().expect("lock map").len()
    }

    fn lock_for(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.file_locks
            .lock()
            .expect("lock map")
            .entry(path.to_path_buf())
            .or_default()
            .clone()
    }
}

/// Reads every row of a file.
pub fn read_file(path: &Path, table: Table) -> Result<Vec<StoredRow>, String> {
    let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    let ncounts = table.count_columns().len();
    for batch in reader {
        let batch = batch.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bad = || {
            format!(
                "{} does not have the {} schema",
                path.display(),
                table.name()
            )
        };
        let s = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(bad)
        };
        let t = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .ok_or_else(bad)
        };
        let n = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(bad)
        };
        if batch.num_columns() != 5 + ncounts {
            return Err(bad());
        }
        let (inst, media, st) = (s(0)?, s(1)?, t(2)?);
        let counts: Vec<&Int64Array> = (0..ncounts).map(|i| n(3 + i)).collect::<Result<_, _>>()?;
        let (fa, rid) = (t(3 + ncounts)?, s(4 + ncounts)?);
        for r in 0..batch.num_rows() {
            out.push(StoredRow {
                instance_id: inst.value(r).to_string(),
                media_type: media.value(r).to_string(),
                stats_time: st.value(r),
                counts: counts.iter().map(|c| c.value(r)).collect(),
                fetched_at: fa.value(r),
                request_id: rid.value(r).to_string(),
            });
        }
    }
    Ok(out)
}

/// Rows of one series across the three tables, from the files' footers (no data is read).
pub fn count_rows(root: &Path, instance: &str, media: MediaType) -> Result<u64, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let name = format!("part-{instance}-{media}.parquet");
    let mut n = 0u64;
    for table in Table::ALL {
        let Ok(days) = std::fs::read_dir(root.join(table.name())) else {
            continue;
        };
        for day in days.flatten() {
            let p = day.path().join(&name);
            if p.exists() {
                let f = File::open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
                let r = SerializedFileReader::new(f)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                n += r.metadata().file_metadata().num_rows() as u64;
            }
        }
    }
    Ok(n)
}

/// Writes rows (sorted by instance, media, stats_time) to `path` atomically.
pub fn write_file_atomic(path: &Path, table: Table, rows: &[StoredRow]) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("part");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let f = File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .build();
        let schema = schema(table);
        let mut w =
            ArrowWriter::try_new(f, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.instance_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.media_type.as_str()),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.stats_time))
                    .with_timezone("UTC"),
            ),
        ];
        for i in 0..table.count_columns().len() {
            cols.push(Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.counts[i]),
            )));
        }
        cols.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.fetched_at))
                .with_timezone("UTC"),
        ));
        cols.push(Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.request_id.as_str()),
        )));
        let batch = RecordBatch::try_new(schema, cols).map_err(|e| e.to_string())?;
        w.write(&batch).map_err(|e| e.to_string())?;
        let f = w.into_inner().map_err(|e| e.to_string())?;
        f.sync_all()
            .map_err(|e| format!("cannot fsync {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot fsync {}: {e}", dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Merges `new` rows into `old`: one row per stats_time, newer fetch wins, an unchanged row keeps
/// its original fetch time and RequestId.
fn merge(old: Vec<StoredRow>, new: Vec<StoredRow>, stats: &mut CommitStats) -> Vec<StoredRow> {
    let mut map: BTreeMap<(String, String, i64), StoredRow> = old
        .into_iter()
        .map(|r| {
            (
                (r.instance_id.clone(), r.media_type.clone(), r.stats_time),
                r,
            )
        })
        .collect();
    for r in new {
        let k = (r.instance_id.clone(), r.media_type.clone(), r.stats_time);
        match map.get(&k) {
            None => {
                stats.inserted += 1;
                map.insert(k, r);
            }
            Some(o) if o.counts == r.counts => stats.unchanged += 1,
            Some(_) => {
                stats.revised += 1;
                map.insert(k, r);
            }
        }
    }
    map.into_values().collect()
}

#[async_trait]
impl Sink for ParquetSink {
    fn name(&self) -> &'static str {
        "parquet"
    }

    async fn commit(&self, b: &WindowBatch, _run: &RunContext) -> Result<CommitStats, SinkError> {
        let mut total = CommitStats::default();
        for table in Table::ALL {
            let mut by_day: BTreeMap<NaiveDate, Vec<StoredRow>> = BTreeMap::new();
            for (t, counts) in b.table_rows(table) {
                by_day.entry(self.day_of(t)).or_default().push(StoredRow {
                    instance_id: b.key.instance_id.clone(),
                    media_type: b.key.media_type.to_string(),
                    stats_time: t,
                    counts,
                    fetched_at: b.fetched_at.timestamp_millis(),
                    request_id: b.request_id.clone(),
                });
            }
            for (day, rows) in by_day {
                let path = self.file_path(table, day, &b.key.instance_id, b.key.media_type);
                let lock = self.lock_for(&path);
                let guard = lock.lock().await;
                let key = path.clone();
                let result = tokio::task::spawn_blocking(move || -> Result<CommitStats, String> {
                    let old = if path.exists() {
                        read_file(&path, table)?
                    } else {
                        vec![]
                    };
                    let mut s = CommitStats::default();
                    let merged = merge(old, rows, &mut s);
                    if s.inserted + s.revised > 0 {
                        write_file_atomic(&path, table, &merged)?;
                    }
                    Ok(s)
                })
                .await;
                drop(guard);
                self.release(&key, lock);
                total += result
                    .map_err(|e| err(format!("writer task failed: {e}"), true))?
                    .map_err(|m| err(m, true))?;
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: i64, n: i64, at: i64) -> StoredRow {
        StoredRow {
            instance_id: "i".into(),
            media_type: "Audio".into(),
            stats_time: t,
            counts: vec![n],
            fetched_at: at,
            request_id: format!("r{at}"),
        }
    }

    #[test]
    fn merge_counts_inserts_revisions_and_unchanged_rows() {
        let mut s = CommitStats::default();
        let out = merge(
            vec![row(1, 5, 100), row(2, 6, 100)],
            vec![row(2, 6, 200), row(3, 7, 200), row(1, 9, 200)],
            &mut s,
        );
        assert_eq!(
            s,
            CommitStats {
                inserted: 1,
                revised: 1,
                unchanged: 1
            }
        );
        assert_eq!(out, vec![row(1, 9, 200), row(2, 6, 100), row(3, 7, 200)]);
    }

    #[test]
    fn a_written_file_reads_back_identically_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("overall_trend/dt=2026-01-01/part-i-Audio.parquet");
        let rows = vec![row(1, 5, 100), row(2, 6, 100)];
        write_file_atomic(&path, Table::Overall, &rows).unwrap();
        assert_eq!(read_file(&path, Table::Overall).unwrap(), rows);
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["part-i-Audio.parquet".to_string()]);
    }

    #[test]
    fn a_second_sink_on_the_same_root_is_refused_and_stale_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("inbound_trend/dt=2026-01-01");
        std::fs::create_dir_all(&day).unwrap();
        let stale = day.join(".part-i-Audio.parquet.0123.tmp");
        std::fs::write(&stale, b"PAR1 half a file").unwrap();
        let keep = day.join("part-i-Audio.parquet");
        write_file_atomic(&keep, Table::Inbound, &[]).unwrap();
        let sink = ParquetSink::new(dir.path(), chrono_tz::UTC).unwrap();
        assert!(!stale.exists(), "a crashed run's temporary file is removed");
        assert!(keep.exists());
        let second = ParquetSink::new(dir.path(), chrono_tz::UTC)
            .err()
            .expect("locked");
        assert!(second.message.contains("another ccc-etl run"), "{second}");
        drop(sink);
        assert!(ParquetSink::new(dir.path(), chrono_tz::UTC).is_ok());
        assert!(is_temp_name(".part-x.parquet.abc.tmp"));
        assert!(!is_temp_name("part-x.parquet"));
    }

    #[tokio::test]
    async fn commits_merge_into_files_and_leave_no_lock_entries_behind() {
        use crate::record::{OverallRow, WindowKey};
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(dir.path(), chrono_tz::UTC).unwrap();
        let day = 86_400_000;
        let batch = |n: i64| WindowBatch {
            key: WindowKey {
                instance_id: "i".into(),
                media_type: MediaType::Chat,
                start_ms: 0,
                end_ms: 2 * day,
            },
            request_id: format!("r{n}"),
            fetched_at: chrono::DateTime::from_timestamp_millis(n).unwrap(),
            inbound: vec![],
            outbound: vec![],
            overall: vec![
                OverallRow {
                    stats_time: 0,
                    max_logged_in_agents: n,
                },
                OverallRow {
                    stats_time: day + 3_600_000,
                    max_logged_in_agents: 1,
                },
            ],
        };
        let run = RunContext {
            run_id: uuid::Uuid::nil(),
        };
        let first = sink.commit(&batch(5), &run).await.unwrap();
        assert_eq!(
            first,
            CommitStats {
                inserted: 2,
                revised: 0,
                unchanged: 0
            }
        );
        let second = sink.commit(&batch(6), &run).await.unwrap();
        assert_eq!(
            second,
            CommitStats {
                inserted: 0,
                revised: 1,
                unchanged: 1
            }
        );
        assert_eq!(sink.open_file_locks(), 0);
        let p = sink.file_path(
            Table::Overall,
            NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(),
            "i",
            MediaType::Chat,
        );
        let rows = read_file(&p, Table::Overall).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].counts[0], rows[0].request_id.as_str()), (6, "r6"));
        let p2 = sink.file_path(
            Table::Overall,
            NaiveDate::from_ymd_opt(1970, 1, 2).unwrap(),
            "i",
            MediaType::Chat,
        );
        assert_eq!(
            read_file(&p2, Table::Overall).unwrap()[0].request_id,
            "r5",
            "an unchanged row keeps its first fetch"
        );
    }
}
