//! The Parquet sink: Hive-partitioned files a warehouse can read, each written once per run.
//!
//! Layout: `{root}/{table}/dt=YYYY-MM-DD/part-00000.parquet`, one file per table and local day (in
//! the configured zone) holding every series of that day, sorted by `(instance_id, media_type,
//! stats_time)`. Few, well-filled files are what query engines read fastest, and what object
//! storage charges least for.
//!
//! Writes are buffered by day. The pipeline announces the run's windows ([`Sink::expect`]); a
//! window's rows wait in memory until every announced window touching their day has arrived or
//! will not come, then the day is written once for all series: its rows are merged into the
//! existing file (one row per key, newer fetch wins, unchanged rows keep their original
//! `fetched_at`), written to `.part-….tmp` in the same directory, fsynced, renamed over the old
//! file, and the directory fsynced. A window is reported durable once every day it touches has
//! been written; only then is it recorded in the ledger. A crash loses at most buffered rows,
//! whose windows are not in the ledger and are fetched again; files are the old or the new,
//! never partial. Temporary names start with `.` and do not end in `.parquet`, so no engine
//! (Spark, Hive, Trino, DuckDB's `*.parquet` glob) reads them.
//!
//! Memory is bounded: when more than `buffer_rows` rows are held, the oldest days are written
//! early and merged again when the rest of their rows arrive.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::NaiveDate;
use chrono_tz::Tz;
use futures::StreamExt;
use parquet::basic::Compression;

use super::{RunContext, Sink, SinkError, Written};
use crate::config::{DEFAULT_BUFFER_ROWS, ParquetCompression};
use crate::ledger::{DayFile, SinkId};
use crate::ledger::{DurableWindow, SinkKind};
use crate::record::{Table, WindowBatch, WindowKey};
use buffer::{DayBuffer, DayJob, DayOutcome, Settled};

pub mod buffer;
pub mod error;
mod file;
pub mod layout;
mod merge;
pub mod migrate;
pub mod object;
pub mod reconcile;
pub mod root;

pub use error::{Failure, RootError};
use file::codec;
pub use file::{
    ReadError, RootCount, SeriesRows, StoredRow, read_file, read_rows, schema, write_file_atomic,
};
pub(crate) use file::{count_bytes, count_file};
pub use layout::{
    DATA_FILE, Layout, Listing, LockError, Partition, RootMeta, RootOwner, Stray, is_temp_name,
};
use merge::{DayError, write_day, write_day_object};
pub use merge::{DayWritten, merge_day_into};
pub use object::ObjectRoot;
pub use reconcile::not_its_keys;
pub use root::Root;

/// Why a Parquet root cannot be opened for writing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// Another run holds the root's lock.
    #[error("{0}")]
    Busy(String),
    /// The root cannot be used as configured (not writable, another zone, not a root).
    #[error("{0}")]
    Refused(#[from] SinkError),
    /// The store could not be reached at start, or failed (the network, the service).
    #[error("{0}")]
    Unreachable(String),
}

/// The sink. On a local root it holds the root's exclusive lock (`_ccc_etl/lock`) while it
/// lives, so two runs never merge into the same files at once; on object storage several
/// workers write at once, each day under its lock in PostgreSQL (and a conditional write).
pub struct ParquetSink {
    root: Root,
    /// The root's id (`_ccc_etl/root.json`): the ledger's target for its commits.
    id: String,
    /// Whether an older ccc-etl wrote this root before roots had ids: its commits in the ledger
    /// carry no target and are adopted once.
    legacy: bool,
    timezone: Tz,
    buffer: Mutex<DayBuffer>,
    /// The codec of the files written.
    compression: Compression,
    /// One writer per day at a time (a day written early may be written again while the first
    /// write is still running); entries are removed once released.
    day_locks: Mutex<HashMap<NaiveDate, Arc<tokio::sync::Mutex<()>>>>,
    /// Places for days being written at once (each holds a PostgreSQL session on object
    /// storage).
    in_flight: Arc<tokio::sync::Semaphore>,
    _root_lock: RootLock,
}

/// Days one sink writes at once on object storage, where their round trips overlap; at most
/// `concurrency` (half the PostgreSQL pool less two, as `ccc-etl` opens it), since each day in
/// flight holds a session for its lock beside the windows' own.
pub const DAYS_IN_FLIGHT: usize = 8;

/// What keeps other runs off a root while a sink writes it.
enum RootLock {
    /// The locked `_ccc_etl/lock` file.
    File(#[allow(dead_code)] File),
    /// None: several workers write an object-storage root at once, each day under its lock in
    /// PostgreSQL.
    Shared,
}

fn err(message: String, kind: Failure) -> SinkError {
    SinkError {
        sink: SinkKind::Parquet,
        message,
        kind,
    }
}

/// A root's error as the sink's: retried when a later attempt may pass, stopping the run when the
/// store refuses this configuration.
fn root_err(e: RootError) -> SinkError {
    SinkError {
        sink: SinkKind::Parquet,
        kind: e.kind,
        message: e.message,
    }
}

impl ParquetSink {
    /// A sink writing under the local directory `root`, partitioning days in `timezone`. Checks
    /// the root is writable, takes its lock, and gives a new root its identity; a root whose days
    /// were cut in another zone is refused (its `dt=` partitions would not match: see
    /// `ccc-etl migrate`).
    pub fn new(root: &Path, timezone: Tz) -> Result<Self, OpenError> {
        Self::open_local(root, timezone, RootOwner::Pipeline)
    }

    /// [`ParquetSink::new`] for `owner`: a root another owner wrote is refused (the demo's
    /// sample data never mixes with a pipeline's).
    pub fn open_local(root: &Path, timezone: Tz, owner: RootOwner) -> Result<Self, OpenError> {
        std::fs::create_dir_all(root).map_err(|e| {
            err(
                format!("cannot create the Parquet root {}: {e}", root.display()),
                Failure::Permanent,
            )
        })?;
        let probe = root.join(format!(".write-probe-{}", uuid::Uuid::new_v4().simple()));
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| {
                err(
                    format!("the Parquet root {} is not writable: {e}", root.display()),
                    Failure::Permanent,
                )
            })?;
        let layout = Layout::new(root);
        let legacy = layout.has_state_without_meta();
        let lock = layout.lock().map_err(|e| match e {
            LockError::Held(m) => OpenError::Busy(m),
            LockError::Io(m) => OpenError::Refused(err(m, Failure::Permanent)),
        })?;
        let shown = root.display().to_string();
        let meta = match layout.read_meta().map_err(root_err)? {
            Some(meta) => {
                check_owner(&shown, meta.owner, owner)?;
                check_zone(&shown, &meta, timezone)?;
                meta
            }
            None => {
                if legacy {
                    // Written before roots described themselves: a pipeline's.
                    check_owner(&shown, RootOwner::Pipeline, owner)?;
                }
                let meta = RootMeta::new(timezone, owner);
                layout.write_meta(&meta).map_err(root_err)?;
                meta
            }
        };
        // Safe under the lock: no other run is writing here.
        let stale = layout.remove_stale_temp_files();
        if stale > 0 {
            tracing::info!(
                files = stale,
                "removed temporary files left by an interrupted run"
            );
        }
        Ok(Self::with_root(
            Root::Local(layout),
            meta.id,
            legacy,
            timezone,
            RootLock::File(lock),
        ))
    }

    /// A sink writing to a root on object storage. Each day's lock is held in PostgreSQL
    /// (`pool`), so several workers may write the root at once; a probe object is written and deleted first, so missing
    /// permissions or a wrong secret are found before any API request.
    pub async fn open_object(
        root: ObjectRoot,
        timezone: Tz,
        pool: &sqlx::PgPool,
        owner: RootOwner,
    ) -> Result<Self, OpenError> {
        let url = root.url().clone();
        root.probe().await.map_err(|e| match e.kind {
            Failure::Refused => OpenError::Refused(err(e.message, Failure::Refused)),
            _ => OpenError::Unreachable(e.message),
        })?;
        // Workers starting together on a new root must agree on its id: one creates it, under
        // a lock in PostgreSQL, and the others read it.
        let mut tx = pool
            .begin()
            .await
            .map_err(|e| err(e.to_string(), Failure::Permanent))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), 2)")
            .bind(format!("ccc-etl:parquet-root:{url}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                err(
                    format!("cannot lock {url} in PostgreSQL: {e}"),
                    Failure::Permanent,
                )
            })?;
        let meta = match root.read_meta().await.map_err(root_err)? {
            Some(meta) => {
                check_owner(&url.to_string(), meta.owner, owner)?;
                check_zone(&url.to_string(), &meta, timezone)?;
                meta
            }
            None => {
                let meta = RootMeta::new(timezone, owner);
                root.write_meta(&meta).await.map_err(root_err)?;
                meta
            }
        };
        tx.commit()
            .await
            .map_err(|e| err(e.to_string(), Failure::Permanent))?;
        let root = root.with_day_locks(pool.clone());
        let mut sink = Self::with_root(
            Root::Object(Arc::new(root)),
            meta.id,
            false,
            timezone,
            RootLock::Shared,
        );
        // Each day in flight holds a session; as many are left for the windows' commits, and
        // two for the ledger and the leases (`commands::pool_size`).
        let sessions = pool.options().get_max_connections() as usize;
        let places = (sessions.saturating_sub(2) / 2).clamp(1, DAYS_IN_FLIGHT);
        sink.in_flight = Arc::new(tokio::sync::Semaphore::new(places));
        Ok(sink)
    }

    fn with_root(root: Root, id: String, legacy: bool, timezone: Tz, lock: RootLock) -> Self {
        Self {
            root,
            id,
            legacy,
            timezone,
            buffer: Mutex::new(DayBuffer::new(timezone, DEFAULT_BUFFER_ROWS)),
            compression: codec(ParquetCompression::default()),
            day_locks: Mutex::new(HashMap::new()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(DAYS_IN_FLIGHT)),
            _root_lock: lock,
        }
    }

    /// The root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Whether the root was written by an older version, before roots had ids.
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Holds at most about `rows` rows before writing the oldest days early (at least 1).
    pub fn with_buffer_rows(mut self, rows: usize) -> Self {
        self.buffer = Mutex::new(DayBuffer::new(self.timezone, rows));
        self
    }

    /// Compresses the files it writes with `compression`.
    pub fn with_compression(mut self, compression: ParquetCompression) -> Self {
        self.compression = codec(compression);
        self
    }

    /// Where one table's day file is: a path, or `scheme://bucket/key`.
    pub fn file_path(&self, table: Table, day: NaiveDate) -> PathBuf {
        PathBuf::from(self.root.location(table, day))
    }

    /// Rows held in memory (for tests and metrics).
    pub fn held_rows(&self) -> usize {
        self.buffer.lock().expect("buffer lock").held_rows()
    }

    /// Day locks held in memory (for tests).
    pub fn open_day_locks(&self) -> usize {
        self.day_locks.lock().expect("lock map").len()
    }

    fn day_lock(&self, day: NaiveDate) -> Arc<tokio::sync::Mutex<()>> {
        self.day_locks
            .lock()
            .expect("lock map")
            .entry(day)
            .or_default()
            .clone()
    }

    /// Forgets a day's lock once nobody else holds it, so the map stays as small as the set of
    /// days being written at the moment.
    fn release(&self, day: NaiveDate, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.day_locks.lock().expect("lock map");
        // Clones are only made under the map's mutex: 2 = the map's and ours.
        if Arc::strong_count(&lock) == 2 {
            map.remove(&day);
        }
    }

    /// Writes the days (on object storage up to [`DAYS_IN_FLIGHT`] at once; on a local disk
    /// one after the other, the encoding and fsync of other windows' days already overlapping
    /// the fetches), then settles their windows: durable once their last day is written. Windows whose lease this worker cannot prove it holds
    /// (several workers) are refused and fail here, their rows left out of the file.
    async fn write_days(&self, jobs: Vec<DayJob>, run: &RunContext) -> Written {
        let writes = jobs.into_iter().map(|job| async move {
            let result = self.write_one_day(job.day, job.batches, run).await;
            (job.day, job.ids, result)
        });
        let at_once = match self.root {
            Root::Local(_) => 1,
            Root::Object(_) => DAYS_IN_FLIGHT,
        };
        let mut done = futures::stream::iter(writes).buffer_unordered(at_once);
        let mut out = Written::default();
        while let Some((day, ids, result)) = done.next().await {
            let (outcome, fenced) = self.written(day, result, &mut out).await;
            let (refused, ids): (Vec<_>, Vec<_>) = ids
                .into_iter()
                .enumerate()
                .partition(|(i, _)| fenced.contains(i));
            let ids = ids.into_iter().map(|(_, id)| id).collect();
            let refused: Vec<u64> = refused.into_iter().map(|(_, id)| id).collect();
            let mut buffer = self.buffer.lock().expect("buffer lock");
            let mut settled = buffer.day_done(ids, outcome);
            if !refused.is_empty() {
                settled.extend(buffer.day_done(refused, DayOutcome::Fenced));
            }
            drop(buffer);
            absorb(&mut out, settled);
        }
        out
    }

    /// Writes one day under its lock, once one of the sink's [`DAYS_IN_FLIGHT`] places is free.
    async fn write_one_day(
        &self,
        day: NaiveDate,
        batches: Vec<Arc<WindowBatch>>,
        run: &RunContext,
    ) -> Result<DayWritten, DayError> {
        let lock = self.day_lock(day);
        // The guards move into the writing task: if this future is dropped (a run stopped by a
        // fatal error), the lock is still held until the file is written. The day's lock is
        // taken first: a place is held only by a write that can go ahead.
        let guard = lock.clone().lock_owned().await;
        let place = self.in_flight.clone().acquire_owned().await;
        let (tz, codec) = (self.timezone, self.compression);
        let result = match &self.root {
            Root::Local(layout) => {
                let layout = layout.clone();
                tokio::task::spawn_blocking(move || {
                    let r = write_day(&layout, tz, day, &batches, codec);
                    drop((guard, place));
                    r
                })
                .await
                .unwrap_or_else(|e| Err(DayError::Io(format!("writer task failed: {e}"))))
            }
            Root::Object(o) => {
                let (o, id, fence) = (o.clone(), self.id.clone(), run.fence.clone());
                tokio::spawn(async move {
                    let r =
                        write_day_object(&o, &id, tz, day, &batches, codec, fence.as_deref()).await;
                    drop((guard, place));
                    r
                })
                .await
                .unwrap_or_else(|e| Err(DayError::Io(format!("writer task failed: {e}"))))
            }
        };
        self.release(day, lock);
        result
    }

    /// Records what writing a day did in `out`: its files, or the damage found. Returns how the
    /// day ended for its windows, and the indices of the batches refused by the lease check.
    async fn written(
        &self,
        day: NaiveDate,
        result: Result<DayWritten, DayError>,
        out: &mut Written,
    ) -> (DayOutcome, Vec<usize>) {
        let (error, fenced) = match result {
            Ok(w) if w.late => {
                // Not recorded: the manifest keeps what the ledger knew, so the next run sees
                // the file changed and fetches the day again.
                tracing::error!(
                    day = %day,
                    "the day's files were written after its lock was lost (the process was \
                     stopped or cut off from PostgreSQL): not recorded"
                );
                return (DayOutcome::Late, w.fenced);
            }
            Ok(w) => {
                out.stats += w.stats;
                out.foreign_rows += w.dropped;
                out.files
                    .extend(w.files.into_iter().map(|(table, etag, rows)| DayFile {
                        target: self.id.clone(),
                        table,
                        day,
                        etag,
                        rows,
                    }));
                (None, w.fenced)
            }
            Err(DayError::Io(m)) => {
                tracing::error!(day = %day, error = %m, "cannot write a Parquet day");
                (Some(err(m, Failure::Transient)), vec![])
            }
            Err(DayError::Refused(m)) => {
                let e = err(
                    format!(
                        "{m} (the store refuses this configuration: check the credentials' permissions and the bucket)"
                    ),
                    Failure::Refused,
                );
                (Some(e), vec![])
            }
            Err(DayError::Damaged { table, error }) => {
                (Some(self.set_aside(table, day, error, out).await), vec![])
            }
        };
        (
            error.map_or(DayOutcome::Written, DayOutcome::Failed),
            fenced,
        )
    }

    /// Moves a damaged day file aside and reports the day, whose windows must all be fetched
    /// again: the rows of every series the file held are gone from the root.
    async fn set_aside(
        &self,
        table: Table,
        day: NaiveDate,
        error: ReadError,
        out: &mut Written,
    ) -> SinkError {
        let moved = match self.root.quarantine(table, day).await {
            Ok(to) => format!("moved to {to}"),
            Err(e) => e.to_string(),
        };
        let message =
            format!("{error}; {moved}; the day's windows are fetched again by the next run");
        tracing::error!(table = %table, day = %day, "{message}");
        let (start_ms, end_ms) = Layout::day_range(self.timezone, day);
        out.damaged.push(super::DamagedDay {
            table,
            day,
            start_ms,
            end_ms,
            detail: message.clone(),
        });
        err(message, Failure::Transient)
    }
}

/// Refuses a root another owner writes: a pipeline's run never writes into the demo's sample
/// data, and `demo` never into a pipeline's root.
pub fn check_owner(root: &str, found: RootOwner, owner: RootOwner) -> Result<(), SinkError> {
    let message = match (found, owner) {
        (a, b) if a == b => return Ok(()),
        (RootOwner::Demo, _) => format!(
            "the Parquet root {root} holds the sample data `ccc-etl demo` wrote, not this \
             pipeline's: point `[parquet] root` at another directory, or delete {root} and run again"
        ),
        (RootOwner::Pipeline, _) => format!(
            "the Parquet root {root} holds a pipeline's data: `ccc-etl demo` never writes into \
             it; give the demo a directory of its own with --parquet-root DIR"
        ),
    };
    Err(err(message, Failure::Permanent))
}

/// Refuses a root whose days were cut in another zone than `timezone`.
pub fn check_zone(root: &str, meta: &RootMeta, timezone: Tz) -> Result<(), SinkError> {
    if meta.timezone == timezone.name() {
        return Ok(());
    }
    Err(err(
        format!(
            "the Parquet root {} cuts its dt= days in time zone {}, the configuration says {}: \
             set `timezone = \"{}\"` back, or run `ccc-etl migrate` to re-partition the root (and \
             the PostgreSQL views) for {}",
            root,
            meta.timezone,
            timezone.name(),
            meta.timezone,
            timezone.name()
        ),
        Failure::Permanent,
    ))
}

/// Adds settled windows to what a call reports: a window refused by the lease check is fenced,
/// not failed.
fn absorb(out: &mut Written, settled: Vec<Settled>) {
    for s in settled {
        match s {
            Settled::Durable(batch) => out.durable.push(DurableWindow::of(&batch)),
            Settled::Fenced(key) => out.fenced.push(key),
            Settled::Late(key) => out.late.push(key),
            Settled::Failed(key, e) => out.failed.push((key, e)),
        }
    }
}

#[async_trait]
impl Sink for ParquetSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Parquet
    }

    fn id(&self) -> SinkId {
        SinkId::new(SinkKind::Parquet, self.id.clone())
    }

    fn expect(&self, windows: &[WindowKey]) {
        self.buffer.lock().expect("buffer lock").expect(windows);
    }

    async fn write(
        &self,
        planned: &WindowKey,
        batch: Arc<WindowBatch>,
        run: &RunContext,
    ) -> Written {
        let (jobs, at_once) = self
            .buffer
            .lock()
            .expect("buffer lock")
            .arrive(planned, batch);
        let mut written = self.write_days(jobs, run).await;
        absorb(&mut written, at_once.into_iter().collect());
        run.record(&self.id(), written).await
    }

    async fn skip(&self, planned: &WindowKey, run: &RunContext) -> Written {
        let jobs = self.buffer.lock().expect("buffer lock").skip(planned);
        let written = self.write_days(jobs, run).await;
        run.record(&self.id(), written).await
    }

    async fn flush(&self, run: &RunContext) -> Written {
        let jobs = self.buffer.lock().expect("buffer lock").flush();
        let written = self.write_days(jobs, run).await;
        run.record(&self.id(), written).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MediaType, OverallRow};
    use crate::sink::CommitStats;
    use file::OutRow;
    use merge::merge_sorted;
    use std::collections::BTreeMap;

    fn row(t: i64, n: i64, at: i64) -> StoredRow {
        StoredRow {
            instance_id: "i".into(),
            media_type: "Audio".into(),
            stats_time: t,
            counts: vec![n],
            fetched_at: at,
            request_id: format!("r{at}"),
            extra: None,
        }
    }

    #[test]
    fn merge_counts_inserts_revisions_and_unchanged_rows() {
        let mut s = CommitStats::default();
        let old = [row(1, 5, 100), row(2, 6, 100)];
        let new = [row(1, 9, 200), row(2, 6, 200), row(3, 7, 200)];
        let o: Vec<OutRow> = old.iter().map(StoredRow::as_out).collect();
        let n: Vec<OutRow> = new.iter().map(StoredRow::as_out).collect();
        let out: Vec<(i64, i64, i64)> = merge_sorted(&o, &n, &mut s)
            .iter()
            .map(|r| (r.stats_time, r.counts[0], r.fetched_at))
            .collect();
        assert_eq!(
            s,
            CommitStats {
                inserted: 1,
                revised: 1,
                unchanged: 1
            }
        );
        assert_eq!(out, vec![(1, 9, 200), (2, 6, 100), (3, 7, 200)]);
    }

    #[test]
    fn a_written_file_reads_back_identically_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("overall_trend/dt=2026-01-01")
            .join(DATA_FILE);
        let rows = vec![row(1, 5, 100), row(2, 6, 100)];
        write_file_atomic(&path, Table::Overall, &rows, Default::default()).unwrap();
        assert_eq!(read_file(&path, Table::Overall).unwrap(), rows);
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![DATA_FILE.to_string()]);
    }

    #[test]
    fn every_codec_writes_files_that_record_it_and_read_back() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<StoredRow> = (0..500).map(|t| row(t * 3_600_000, t % 7, 100)).collect();
        for (compression, expected) in [
            (ParquetCompression::Snappy, "SNAPPY"),
            (ParquetCompression::Zstd, "ZSTD"),
            (ParquetCompression::Lz4Raw, "LZ4_RAW"),
            (ParquetCompression::None, "UNCOMPRESSED"),
        ] {
            let path = dir.path().join(format!("{expected}.parquet"));
            write_file_atomic(&path, Table::Overall, &rows, compression).unwrap();
            assert_eq!(read_file(&path, Table::Overall).unwrap(), rows);
            let meta = SerializedFileReader::new(File::open(&path).unwrap())
                .unwrap()
                .metadata()
                .clone();
            let codecs: Vec<String> = meta
                .row_group(0)
                .columns()
                .iter()
                .map(|c| c.compression().to_string())
                .collect();
            assert!(
                codecs.iter().all(|c| c.starts_with(expected)),
                "{compression:?}: {codecs:?}"
            );
        }
    }

    #[test]
    fn a_second_sink_on_the_same_root_is_refused_and_stale_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("inbound_trend/dt=2026-01-01");
        std::fs::create_dir_all(&day).unwrap();
        let stale = day.join(".part-00000.parquet.0123.tmp");
        std::fs::write(&stale, b"PAR1 half a file").unwrap();
        let keep = day.join(DATA_FILE);
        write_file_atomic(&keep, Table::Inbound, &[], Default::default()).unwrap();
        let sink = ParquetSink::new(dir.path(), chrono_tz::UTC).unwrap();
        assert!(!stale.exists(), "a crashed run's temporary file is removed");
        assert!(keep.exists());
        let second = ParquetSink::new(dir.path(), chrono_tz::UTC)
            .err()
            .expect("locked");
        assert!(
            matches!(&second, OpenError::Busy(m) if m.contains("another ccc-etl run")),
            "{second}"
        );
        let meta = Layout::new(dir.path()).read_meta().unwrap().unwrap();
        assert_eq!(meta.timezone, "UTC");
        drop(sink);
        assert!(ParquetSink::new(dir.path(), chrono_tz::UTC).is_ok());
        assert!(is_temp_name(".part-x.parquet.abc.tmp"));
        assert!(!is_temp_name("part-x.parquet"));
    }

    const DAY: i64 = 86_400_000;
    const H: i64 = 3_600_000;

    fn key(instance: &str, start_day: i64, days: i64) -> WindowKey {
        WindowKey {
            instance_id: instance.into(),
            media_type: MediaType::Chat,
            start_ms: start_day * DAY,
            end_ms: (start_day + days) * DAY,
        }
    }

    /// A window with one overall row per hour, all equal to `n`.
    fn batch(key: &WindowKey, n: i64, fetched: i64) -> Arc<WindowBatch> {
        Arc::new(WindowBatch {
            final_end_ms: None,
            key: key.clone(),
            request_id: format!("r{fetched}"),
            fetched_at: chrono::DateTime::from_timestamp_millis(fetched).unwrap(),
            attempts: 2,
            inbound: vec![],
            outbound: vec![],
            overall: (key.start_ms / H..key.end_ms / H)
                .map(|h| OverallRow {
                    stats_time: h * H,
                    max_logged_in_agents: n,
                })
                .collect(),
            extra: Default::default(),
        })
    }

    fn run() -> RunContext {
        RunContext::new(
            uuid::Uuid::nil(),
            Arc::new(crate::ledger::MemoryLedger::default()),
        )
    }

    fn date(day: i64) -> NaiveDate {
        NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(day)
    }

    fn keys(w: &Written) -> Vec<WindowKey> {
        let mut k: Vec<WindowKey> = w.durable.iter().map(|d| d.key.clone()).collect();
        k.sort();
        k
    }

    #[tokio::test]
    async fn a_day_is_written_once_when_its_last_window_arrives_and_windows_are_durable_then() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(dir.path(), chrono_tz::UTC).unwrap();
        // a: days 0-1, b: days 0-1, c: day 2; a second run of `a` later.
        let (a, b, c) = (key("a", 0, 2), key("b", 0, 2), key("c", 2, 1));
        sink.expect(&[a.clone(), b.clone(), c.clone()]);
        let w = sink.write(&a, batch(&a, 1, 10), &run()).await;
        assert!(
            w.durable.is_empty() && w.failed.is_empty(),
            "days 0-1 wait for b"
        );
        assert!(!sink.file_path(Table::Overall, date(0)).exists());
        assert_eq!(sink.held_rows(), 48);
        let w = sink.write(&c, batch(&c, 3, 30), &run()).await;
        assert_eq!(keys(&w), vec![c.clone()], "day 2 had no other window");
        let w = sink.write(&b, batch(&b, 2, 20), &run()).await;
        assert_eq!(keys(&w), vec![a.clone(), b.clone()]);
        assert_eq!(w.stats.inserted, 96);
        assert_eq!(w.durable[0].attempts, 2);
        assert_eq!(w.durable[0].rows, 48);
        assert_eq!((sink.held_rows(), sink.open_day_locks()), (0, 0));
        let rows = read_file(&sink.file_path(Table::Overall, date(0)), Table::Overall).unwrap();
        assert_eq!(rows.len(), 48, "one file holds every series of the day");
        assert_eq!(
            rows.iter()
                .map(|r| (r.instance_id.as_str(), r.counts[0]))
                .collect::<BTreeMap<_, _>>(),
            BTreeMap::from([("a", 1), ("b", 2)])
        );
        assert!(
            rows.windows(2)
                .all(|p| p[0].as_out().key() < p[1].as_out().key())
        );
        // Without an announcement a write is written at once; the merge counts revisions and
        // keeps the first fetch of unchanged rows.
        let mut again = (*batch(&a, 1, 40)).clone();
        again.overall[5].max_logged_in_agents = 9;
        let w = sink.write(&a, Arc::new(again), &run()).await;
        assert_eq!(keys(&w), vec![a.clone()]);
        assert_eq!(
            w.stats,
            CommitStats {
                inserted: 0,
                revised: 1,
                unchanged: 47
            }
        );
        let rows = read_file(&sink.file_path(Table::Overall, date(0)), Table::Overall).unwrap();
        let a_rows: Vec<&StoredRow> = rows.iter().filter(|r| r.instance_id == "a").collect();
        assert_eq!((a_rows[5].counts[0], a_rows[5].fetched_at), (9, 40));
        assert_eq!((a_rows[4].counts[0], a_rows[4].fetched_at), (1, 10));
    }

    #[tokio::test]
    async fn a_skipped_window_releases_its_days_and_flush_writes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(dir.path(), chrono_tz::UTC).unwrap();
        let (a, b, c) = (key("a", 0, 1), key("b", 0, 1), key("c", 1, 1));
        sink.expect(&[a.clone(), b.clone(), c.clone(), key("d", 1, 1)]);
        assert!(
            sink.write(&a, batch(&a, 1, 1), &run())
                .await
                .durable
                .is_empty()
        );
        assert_eq!(keys(&sink.skip(&b, &run()).await), vec![a.clone()]);
        assert!(
            sink.write(&c, batch(&c, 1, 1), &run())
                .await
                .durable
                .is_empty()
        );
        // "d" never comes (the run stopped): the end-of-run flush writes what is held.
        assert_eq!(keys(&sink.flush(&run()).await), vec![c.clone()]);
        assert_eq!(sink.held_rows(), 0);
        assert!(sink.file_path(Table::Overall, date(1)).exists());
    }

    #[tokio::test]
    async fn the_buffer_bound_writes_the_oldest_days_early_with_the_same_result() {
        let written = |bound: usize| async move {
            let dir = tempfile::tempdir().unwrap();
            let sink = ParquetSink::new(dir.path(), chrono_tz::UTC)
                .unwrap()
                .with_buffer_rows(bound);
            let ws: Vec<WindowKey> = (0..4)
                .flat_map(|week| (0..5).map(move |i| key(&format!("i{i}"), week * 7, 7)))
                .collect();
            sink.expect(&ws);
            let mut durable = 0;
            let mut peak = 0;
            for w in &ws {
                durable += sink.write(w, batch(w, 7, 1), &run()).await.durable.len();
                peak = peak.max(sink.held_rows());
            }
            durable += sink.flush(&run()).await.durable.len();
            let mut all = vec![];
            for d in 0..28 {
                all.extend(
                    read_file(&sink.file_path(Table::Overall, date(d)), Table::Overall).unwrap(),
                );
            }
            (durable, peak, all)
        };
        let (d1, peak1, rows1) = written(1_000_000).await;
        let (d2, peak2, rows2) = written(300).await;
        assert_eq!((d1, d2), (20, 20));
        assert_eq!(rows1.len(), 4 * 5 * 7 * 24);
        assert_eq!(rows1, rows2);
        assert!(peak1 >= 4 * 168, "{peak1}");
        assert!(peak2 <= 300 + 168, "{peak2}");
    }
}
