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

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use chrono::NaiveDate;
use chrono_tz::Tz;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;

use super::{CommitStats, RunContext, Sink, SinkError, Written};
use crate::config::{DEFAULT_BUFFER_ROWS, ParquetCompression};
use crate::ledger::{DayFile, SinkId};
use crate::ledger::{DurableWindow, SinkKind};
use crate::record::{Counts, Table, WindowBatch, WindowKey};
use buffer::{DayBuffer, DayJob, Settled};
use object::PutOutcome;

pub mod buffer;
pub mod layout;
pub mod migrate;
pub mod object;
pub mod reconcile;
pub mod root;

pub use layout::{DATA_FILE, Layout, Listing, LockError, RootMeta, Stray, is_temp_name};
pub use object::{ObjectRoot, Probe};
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
    /// Fields the API sent that ccc-etl does not know, as compact JSON; `None` when there are
    /// none (and in files written before the column existed).
    pub extra: Option<String>,
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
    // Unknown fields as a JSON string; null when there are none. Files written before this
    // column existed lack it, and read as null.
    fields.push(Field::new("extra", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
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
    _root_lock: RootLock,
}

/// What keeps other runs off a root while a sink writes it.
enum RootLock {
    /// The locked `_ccc_etl/lock` file.
    File(#[allow(dead_code)] File),
    /// None: several workers write an object-storage root at once, each day under its lock in
    /// PostgreSQL.
    Shared,
}

fn err(message: String, retryable: bool) -> SinkError {
    SinkError {
        sink: SinkKind::Parquet,
        message,
        retryable,
    }
}

impl ParquetSink {
    /// A sink writing under the local directory `root`, partitioning days in `timezone`. Checks
    /// the root is writable, takes its lock, and gives a new root its identity; a root whose days
    /// were cut in another zone is refused (its `dt=` partitions would not match: see
    /// `ccc-etl migrate`).
    pub fn new(root: &Path, timezone: Tz) -> Result<Self, OpenError> {
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
        let layout = Layout::new(root);
        let legacy = layout.has_state_without_meta();
        let lock = layout.lock().map_err(|e| match e {
            LockError::Held(m) => OpenError::Busy(m),
            LockError::Io(m) => OpenError::Refused(err(m, false)),
        })?;
        let meta = match layout.read_meta().map_err(|e| err(e, false))? {
            Some(meta) => {
                check_zone(&root.display().to_string(), &meta, timezone)?;
                meta
            }
            None => {
                let meta = RootMeta::new(timezone);
                layout.write_meta(&meta).map_err(|e| err(e, false))?;
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
    ) -> Result<Self, OpenError> {
        let url = root.url().clone();
        root.probe().await.map_err(|p| match p.unreachable {
            true => OpenError::Unreachable(p.message),
            false => OpenError::Refused(err(p.message, false)),
        })?;
        // Workers starting together on a new root must agree on its id: one creates it, under
        // a lock in PostgreSQL, and the others read it.
        let mut tx = pool.begin().await.map_err(|e| err(e.to_string(), false))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), 2)")
            .bind(format!("ccc-etl:parquet-root:{url}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| err(format!("cannot lock {url} in PostgreSQL: {e}"), false))?;
        let meta = match root.read_meta().await.map_err(|e| err(e, false))? {
            Some(meta) => {
                check_zone(&url.to_string(), &meta, timezone)?;
                meta
            }
            None => {
                let meta = RootMeta::new(timezone);
                root.write_meta(&meta).await.map_err(|e| err(e, false))?;
                meta
            }
        };
        tx.commit().await.map_err(|e| err(e.to_string(), false))?;
        let root = root.with_day_locks(pool.clone());
        Ok(Self::with_root(
            Root::Object(Arc::new(root)),
            meta.id,
            false,
            timezone,
            RootLock::Shared,
        ))
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

    /// Writes the days, then settles their windows: durable once their last day is written.
    /// Windows whose lease this worker cannot prove it holds (several workers) are refused and
    /// fail here, their rows left out of the file.
    async fn write_days(&self, jobs: Vec<DayJob>, run: &RunContext) -> Written {
        let mut out = Written::default();
        for job in jobs {
            let (error, fenced) = self
                .write_one_day(job.day, job.batches, &mut out, run)
                .await;
            let (mut ids, mut refused) = (Vec::new(), Vec::new());
            for (i, id) in job.ids.into_iter().enumerate() {
                if fenced.contains(&i) {
                    refused.push(id);
                } else {
                    ids.push(id);
                }
            }
            let mut buffer = self.buffer.lock().expect("buffer lock");
            let mut settled = buffer.day_done(ids, error);
            if !refused.is_empty() {
                settled.extend(buffer.day_done(refused, Some(err(FENCED.into(), false))));
            }
            drop(buffer);
            absorb(&mut out, settled);
        }
        out
    }

    /// Writes one day under its lock; records its files (or the damage found) in `out`. Returns
    /// the error, and the indices of the batches refused by the lease check.
    async fn write_one_day(
        &self,
        day: NaiveDate,
        batches: Vec<Arc<WindowBatch>>,
        out: &mut Written,
        run: &RunContext,
    ) -> (Option<SinkError>, Vec<usize>) {
        let lock = self.day_lock(day);
        // The guard moves into the writing task: if this future is dropped (a run stopped by a
        // fatal error), the lock is still held until the file is written.
        let guard = lock.clone().lock_owned().await;
        let (tz, codec) = (self.timezone, self.compression);
        let result = match &self.root {
            Root::Local(layout) => {
                let layout = layout.clone();
                tokio::task::spawn_blocking(move || {
                    let r = write_day(&layout, tz, day, &batches, codec);
                    drop(guard);
                    r
                })
                .await
                .unwrap_or_else(|e| Err(DayError::Io(format!("writer task failed: {e}"))))
            }
            Root::Object(o) => {
                let (o, id, fence) = (o.clone(), self.id.clone(), run.coordinator.clone());
                tokio::spawn(async move {
                    let r =
                        write_day_object(&o, &id, tz, day, &batches, codec, fence.as_deref()).await;
                    drop(guard);
                    r
                })
                .await
                .unwrap_or_else(|e| Err(DayError::Io(format!("writer task failed: {e}"))))
            }
        };
        self.release(day, lock);
        match result {
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
                (Some(err(m, true)), vec![])
            }
            Err(DayError::Damaged { table, error }) => {
                (Some(self.set_aside(table, day, error, out).await), vec![])
            }
        }
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
            Err(e) => e,
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
        err(message, true)
    }
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
        false,
    ))
}

/// A row about to be written, borrowed from a batch or from the existing file.
#[derive(Debug, Clone, Copy)]
struct OutRow<'a> {
    instance_id: &'a str,
    media_type: &'a str,
    stats_time: i64,
    counts: &'a [i64],
    fetched_at: i64,
    request_id: &'a str,
    extra: Option<&'a str>,
}

impl OutRow<'_> {
    fn key(&self) -> (&str, &str, i64) {
        (self.instance_id, self.media_type, self.stats_time)
    }
}

/// What writing one day did.
#[derive(Debug, Default)]
pub struct DayWritten {
    /// Rows inserted, revised, unchanged.
    pub stats: CommitStats,
    /// Per table with a file: its ETag after the write and its rows.
    pub files: Vec<(Table, String, u64)>,
    /// Conditional writes that found the file changed by another writer (and were merged and
    /// written again).
    pub conflicts: u32,
    /// Indices of the batches left out because this worker could not prove it holds their
    /// windows' leases.
    pub fenced: Vec<usize>,

    /// Rows of the old files dropped as not belonging to the day (another day's, a repeated
    /// key).
    pub dropped: u64,
}

/// Why a window's rows were left out of a day file.
const FENCED: &str = "fenced: this worker no longer holds the window's lease (taken over by another worker, or expired)";

/// Why a day could not be written.
enum DayError {
    /// The file system failed; a later attempt may succeed.
    Io(String),
    /// The existing file cannot be read as this table's file.
    Damaged { table: Table, error: ReadError },
}

/// Merges one day's rows of every table into its files; returns what changed.
fn write_day(
    layout: &Layout,
    tz: Tz,
    day: NaiveDate,
    batches: &[Arc<WindowBatch>],
    codec: Compression,
) -> Result<DayWritten, DayError> {
    let (from, to) = Layout::day_range(tz, day);
    let mut out = DayWritten::default();
    for table in Table::ALL {
        let slices = slices(table, batches, from, to);
        if slices.is_empty() {
            continue;
        }
        let path = layout.day_file(table, day);
        let old = if path.exists() {
            read_file(&path, table).map_err(|error| day_error(table, error))?
        } else {
            vec![]
        };
        let (merged, s, dropped) = merge_table(table, batches, &slices, &old, (from, to));
        if s.inserted + s.revised > 0 || dropped > 0 {
            write_rows_atomic(&path, table, &merged, codec).map_err(DayError::Io)?;
        }
        foreign_rows(&path.display().to_string(), dropped);
        let etag = layout::etag(&path)
            .map_err(|e| DayError::Io(format!("cannot stat {}: {e}", path.display())))?;
        out.files.push((table, etag, merged.len() as u64));
        out.stats += s;
        out.dropped += dropped;
    }
    Ok(out)
}

/// Says that a day file held rows that did not belong in it, now dropped.
fn foreign_rows(location: &str, dropped: u64) {
    if dropped > 0 {
        tracing::warn!(
            file = %location,
            rows = dropped,
            "the day file held rows of another day or repeated keys (copied or edited by hand): \
             dropped as the day was written again"
        );
    }
}

fn day_error(table: Table, error: ReadError) -> DayError {
    match error {
        ReadError::Io { .. } => DayError::Io(error.to_string()),
        ReadError::Damaged { .. } => DayError::Damaged { table, error },
    }
}

/// One table's rows of the day `[from, to)`: the incoming rows merged over the old file's, what
/// changed, and how many of the old file's rows were dropped. A day file is a function of the
/// day's keys: old rows outside the day, and every repeat of a key after its first row, are
/// dropped (a file copied from another day, or edited by hand).
fn merge_table<'a>(
    table: Table,
    batches: &'a [Arc<WindowBatch>],
    slices: &'a Slices,
    old: &'a [StoredRow],
    (from, to): (i64, i64),
) -> (Vec<OutRow<'a>>, CommitStats, u64) {
    let new = incoming_rows(table, batches, slices);
    let mut old_sorted: Vec<OutRow> = old
        .iter()
        .filter(|r| from <= r.stats_time && r.stats_time < to)
        .map(StoredRow::as_out)
        .collect();
    // Stable: of rows with one key, the first in the file stays.
    old_sorted.sort_by(|a, b| a.key().cmp(&b.key()));
    old_sorted.dedup_by(|later, first| later.key() == first.key());
    let dropped = (old.len() - old_sorted.len()) as u64;
    let mut s = CommitStats::default();
    let merged = merge_sorted(&old_sorted, &new, &mut s);
    (merged, s, dropped)
}

/// One table's day on object storage, merged and encoded: the new file (none if nothing
/// changed), its rows and what changed.
struct Encoded {
    body: Option<Vec<u8>>,
    rows: u64,
    stats: CommitStats,
    dropped: u64,
}

fn merge_encode(
    table: Table,
    batches: &[Arc<WindowBatch>],
    (from, to): (i64, i64),
    old: Option<bytes::Bytes>,
    location: &str,
    codec: Compression,
) -> Result<Option<Encoded>, DayError> {
    let slices = slices(table, batches, from, to);
    if slices.is_empty() {
        return Ok(None);
    }
    let old = match old {
        Some(b) => read_rows(b, location, table).map_err(|error| day_error(table, error))?,
        None => vec![],
    };
    let (merged, stats, dropped) = merge_table(table, batches, &slices, &old, (from, to));
    let body = if stats.inserted + stats.revised > 0 || dropped > 0 {
        Some(encode_rows(Vec::new(), table, &merged, codec).map_err(DayError::Io)?)
    } else {
        None
    };
    Ok(Some(Encoded {
        body,
        rows: merged.len() as u64,
        stats,
        dropped,
    }))
}

/// What the sink does for one day of a root on object storage, for tests that race writers:
/// merges `batches`' rows of `day` into its objects.
pub async fn merge_day_into(
    root: &ObjectRoot,
    root_id: &str,
    tz: Tz,
    day: NaiveDate,
    batches: &[Arc<WindowBatch>],
) -> Result<DayWritten, String> {
    write_day_object(
        root,
        root_id,
        tz,
        day,
        batches,
        codec(Default::default()),
        None,
    )
    .await
    .map_err(|e| match e {
        DayError::Io(m) => m,
        DayError::Damaged { error, .. } => error.to_string(),
    })
}

/// Merges one day's rows of every table into its objects, under the day's lock in PostgreSQL
/// and, where the store has them, with conditional writes: a write that finds the object
/// changed since it was read reads, merges and writes again.
///
/// With several workers (`fence`), the lease of every window whose rows would go into a file is
/// checked under the day's lock, in the transaction that records the files' ETags, before each
/// write: the rows of a window this worker cannot prove it holds are left out (a worker stopped
/// past its lease and resumed writes nothing another worker has taken over). While the lock is
/// held the transaction shows it is alive; a frozen holder's is ended by the server
/// (`idle_in_transaction_session_timeout`), and its writes stop at the next check.
async fn write_day_object(
    root: &ObjectRoot,
    root_id: &str,
    tz: Tz,
    day: NaiveDate,
    batches: &[Arc<WindowBatch>],
    codec: Compression,
    fence: Option<&crate::coord::Coordinator>,
) -> Result<DayWritten, DayError> {
    let mut lock = DayLock {
        tx: root.lock_day(root_id, day).await.map_err(DayError::Io)?,
        day,
        every: root.keepalive(),
        fence,
    };
    let range = Layout::day_range(tz, day);
    let mut out = DayWritten::default();
    let mut kept = lock.fence(batches).await?;
    for table in Table::ALL {
        let mut conflicts = 0;
        while !kept.is_empty() {
            let old = lock
                .hold(root.fetch(table, day))
                .await?
                .map_err(|error| day_error(table, error))?;
            let (bytes, read) = match old {
                Some(f) => (Some(f.bytes), Some(f.version)),
                None => (None, None),
            };
            let (b, location) = (kept.clone(), root.location(table, day));
            let encoding = tokio::task::spawn_blocking(move || {
                merge_encode(table, &b, range, bytes, &location, codec)
            });
            let encoded = lock
                .hold(encoding)
                .await?
                .unwrap_or_else(|e| Err(DayError::Io(format!("encoder task failed: {e}"))))?;
            let Some(encoded) = encoded else { break };
            let etag = match encoded.body {
                None => read
                    .as_ref()
                    .and_then(|v| v.e_tag.clone().or(v.version.clone()))
                    .map(|e| e.trim_matches('"').to_string())
                    .unwrap_or_default(),
                Some(body) => {
                    let put = root.put_day(table, day, body, read.as_ref());
                    match lock.hold(put).await?.map_err(DayError::Io)? {
                        PutOutcome::Written(etag) => etag,
                        PutOutcome::Conflict if conflicts + 1 < object::CONFLICT_ATTEMPTS => {
                            conflicts += 1;
                            out.conflicts += 1;
                            tracing::info!(table = %table, day = %day, "another writer changed the day file: reading and merging it again");
                            // The leases again: time has passed, and the lock may be gone.
                            kept = lock.fence(&kept).await?;
                            continue;
                        }
                        PutOutcome::Conflict => {
                            return Err(DayError::Io(format!(
                                "{} kept changing under {conflicts} conditional writes",
                                root.location(table, day)
                            )));
                        }
                    }
                }
            };
            foreign_rows(&root.location(table, day), encoded.dropped);
            out.files.push((table, etag, encoded.rows));
            out.stats += encoded.stats;
            out.dropped += encoded.dropped;
            break;
        }
    }
    // Indices into `batches`, as the caller knows them.
    out.fenced = (0..batches.len())
        .filter(|i| !kept.iter().any(|k| Arc::ptr_eq(k, &batches[*i])))
        .collect();
    if let Some(mut tx) = lock.tx {
        // Recorded under the day's lock: with several writers, the manifest names the ETag of
        // the last write, never an earlier writer's recorded late.
        let files: Vec<DayFile> = std::mem::take(&mut out.files)
            .into_iter()
            .map(|(table, etag, rows)| DayFile {
                target: root_id.to_string(),
                table,
                day,
                etag,
                rows,
            })
            .collect();
        crate::ledger::upsert_files(&mut *tx, &files)
            .await
            .map_err(|e| DayError::Io(format!("cannot record the files of day {day}: {e}")))?;
        tx.commit()
            .await
            .map_err(|e| DayError::Io(format!("cannot release the lock of day {day}: {e}")))?;
    }
    Ok(out)
}

/// A day's lock in PostgreSQL (none without a pool), and the worker whose leases fence the
/// writes made under it.
struct DayLock<'a> {
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    day: NaiveDate,
    /// How often the transaction shows it is alive.
    every: std::time::Duration,
    fence: Option<&'a crate::coord::Coordinator>,
}

impl DayLock<'_> {
    /// Of `batches`, those whose windows' leases this worker can prove it holds, checked in the
    /// lock's transaction; the others are refused (counted, logged).
    async fn fence(
        &mut self,
        batches: &[Arc<WindowBatch>],
    ) -> Result<Vec<Arc<WindowBatch>>, DayError> {
        let (Some(tx), Some(c)) = (self.tx.as_mut(), self.fence) else {
            return Ok(batches.to_vec());
        };
        let keys: Vec<&WindowKey> = batches.iter().map(|b| &b.key).collect();
        let held = c.holds_now(tx, &keys).await.map_err(|e| {
            DayError::Io(format!(
                "cannot check the leases of day {} in PostgreSQL: {}",
                self.day,
                crate::db::explain(&e)
            ))
        })?;
        let mut kept = Vec::with_capacity(batches.len());
        for (b, h) in batches.iter().zip(held) {
            if h {
                kept.push(b.clone());
            } else {
                c.refused(&b.key, "parquet");
            }
        }
        Ok(kept)
    }

    /// Runs `work` while the lock is held, with a trivial statement every `every` so that the
    /// transaction is not ended as idle. If the session is gone (ended by the server while the
    /// process was stopped), so is the lock: the work is dropped and the day fails.
    async fn hold<F: std::future::Future>(&mut self, work: F) -> Result<F::Output, DayError> {
        let Some(tx) = self.tx.as_mut() else {
            return Ok(work.await);
        };
        tokio::pin!(work);
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                _ = tick.tick() => {
                    if let Err(e) = sqlx::query("SELECT 1").execute(&mut **tx).await {
                        return Err(DayError::Io(format!(
                            "lost the lock of day {} in PostgreSQL (its session ended): {}",
                            self.day,
                            crate::db::explain(&e)
                        )));
                    }
                }
            }
        }
    }
}

/// One table's rows of `[from, to)` in each batch (index, rows), batches without any left out.
type Slices = Vec<(usize, Vec<(i64, Counts)>)>;

fn slices(table: Table, batches: &[Arc<WindowBatch>], from: i64, to: i64) -> Slices {
    batches
        .iter()
        .enumerate()
        .map(|(i, b)| (i, b.rows_between(table, from, to)))
        .filter(|(_, r)| !r.is_empty())
        .collect()
}

/// The rows of `slices`, one per key, sorted; on a repeated key the later batch (fetched later)
/// wins.
fn incoming_rows<'a>(
    table: Table,
    batches: &'a [Arc<WindowBatch>],
    slices: &'a Slices,
) -> Vec<OutRow<'a>> {
    let n = table.count_columns().len();
    let mut incoming: Vec<(OutRow, usize)> = Vec::new();
    for (i, rows) in slices {
        let b = &batches[*i];
        for (t, c) in rows {
            incoming.push((
                OutRow {
                    instance_id: &b.key.instance_id,
                    media_type: b.key.media_type.as_str(),
                    stats_time: *t,
                    counts: &c[..n],
                    fetched_at: b.fetched_at.timestamp_millis(),
                    request_id: &b.request_id,
                    extra: b.extra(table, *t),
                },
                *i,
            ));
        }
    }
    incoming.sort_by(|a, b| a.0.key().cmp(&b.0.key()).then(a.1.cmp(&b.1)));
    let mut new: Vec<OutRow> = Vec::with_capacity(incoming.len());
    for (r, _) in incoming {
        match new.last_mut() {
            Some(last) if last.key() == r.key() => *last = r,
            _ => new.push(r),
        }
    }
    new
}

/// Merges two key-sorted runs: one row per key, a new row replaces an old one only if its counts
/// differ (an unchanged row keeps its original fetch time and RequestId).
fn merge_sorted<'a>(
    old: &[OutRow<'a>],
    new: &[OutRow<'a>],
    stats: &mut CommitStats,
) -> Vec<OutRow<'a>> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let ord = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) => o.key().cmp(&n.key()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push(old[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                stats.inserted += 1;
                out.push(new[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if old[i].counts == new[j].counts && old[i].extra == new[j].extra {
                    stats.unchanged += 1;
                    out.push(old[i]);
                } else {
                    stats.revised += 1;
                    out.push(new[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

impl StoredRow {
    fn as_out(&self) -> OutRow<'_> {
        OutRow {
            instance_id: &self.instance_id,
            media_type: &self.media_type,
            stats_time: self.stats_time,
            counts: &self.counts,
            fetched_at: self.fetched_at,
            request_id: &self.request_id,
            extra: self.extra.as_deref(),
        }
    }
}

/// Why a day file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The file system or the store failed (missing, permissions): the file may be fine.
    #[error("cannot read {location}: {detail}")]
    Io {
        /// The file: a path or `scheme://bucket/key`.
        location: String,
        /// The cause.
        detail: String,
    },
    /// The file is not a readable Parquet file of this table: a corrupt footer, a torn page,
    /// another schema.
    #[error("the Parquet file {location} is damaged: {detail}")]
    Damaged {
        /// The file: a path or `scheme://bucket/key`.
        location: String,
        /// What is wrong.
        detail: String,
    },
}

fn damaged(path: &str, detail: impl ToString) -> ReadError {
    ReadError::Damaged {
        location: path.to_string(),
        detail: detail.to_string(),
    }
}

fn open_local(path: &Path) -> Result<File, ReadError> {
    File::open(path).map_err(|e| ReadError::Io {
        location: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// Reads every row of a file.
pub fn read_file(path: &Path, table: Table) -> Result<Vec<StoredRow>, ReadError> {
    read_rows(open_local(path)?, &path.display().to_string(), table)
}

/// Reads every row of a Parquet file from `reader` (a file, or an object's bytes); `path` names
/// it in errors.
pub fn read_rows<R: ChunkReader + 'static>(
    reader: R,
    path: &str,
    table: Table,
) -> Result<Vec<StoredRow>, ReadError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(reader)
        .and_then(|b| b.build())
        .map_err(|e| damaged(path, e))?;
    let mut out = Vec::new();
    let ncounts = table.count_columns().len();
    let bad = || {
        damaged(
            path,
            format!("it does not have the {} schema", table.name()),
        )
    };
    for batch in reader {
        let batch = batch.map_err(|e| damaged(path, e))?;
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
        // Files written before the `extra` column existed have one column less.
        let with_extra = match batch.num_columns() {
            c if c == 5 + ncounts => false,
            c if c == 6 + ncounts => true,
            _ => return Err(bad()),
        };
        let (inst, media, st) = (s(0)?, s(1)?, t(2)?);
        let counts: Vec<&Int64Array> = (0..ncounts).map(|i| n(3 + i)).collect::<Result<_, _>>()?;
        let (fa, rid) = (t(3 + ncounts)?, s(4 + ncounts)?);
        let extra = if with_extra {
            Some(s(5 + ncounts)?)
        } else {
            None
        };
        for r in 0..batch.num_rows() {
            out.push(StoredRow {
                instance_id: inst.value(r).to_string(),
                media_type: media.value(r).to_string(),
                stats_time: st.value(r),
                counts: counts.iter().map(|c| c.value(r)).collect(),
                fetched_at: fa.value(r),
                request_id: rid.value(r).to_string(),
                extra: extra
                    .filter(|e| !e.is_null(r))
                    .map(|e| e.value(r).to_string()),
            });
        }
    }
    Ok(out)
}

/// Rows per series in one local file.
pub(crate) fn count_file(path: &Path, table: Table) -> Result<SeriesRows, ReadError> {
    count_reader(open_local(path)?, &path.display().to_string(), table)
}

/// Rows per series in one object's bytes.
pub(crate) fn count_bytes(
    bytes: bytes::Bytes,
    path: &str,
    table: Table,
) -> Result<SeriesRows, ReadError> {
    count_reader(bytes, path, table)
}

/// Rows per `(instance_id, media_type)`.
pub type SeriesRows = HashMap<(String, String), u64>;

/// Rows per `(instance_id, media_type)` in one file, reading only those two columns.
fn count_reader<R: ChunkReader + 'static>(
    reader: R,
    path: &str,
    table: Table,
) -> Result<SeriesRows, ReadError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| damaged(path, e))?;
    let columns = builder.schema().fields().len();
    let n = table.count_columns().len();
    if columns != 5 + n && columns != 6 + n {
        return Err(damaged(
            path,
            format!("it does not have the {} schema", table.name()),
        ));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), [0, 1]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| damaged(path, e))?;
    let mut local: HashMap<(String, String), u64> = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| damaged(path, e))?;
        let col = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| damaged(path, format!("it does not have the {table} schema")))
        };
        let (inst, media) = (col(0)?, col(1)?);
        for r in 0..batch.num_rows() {
            let (i, m) = (inst.value(r), media.value(r));
            match local.get_mut(&(i.to_string(), m.to_string())) {
                Some(n) => *n += 1,
                None => {
                    local.insert((i.to_string(), m.to_string()), 1);
                }
            }
        }
    }
    // Counted only once the whole file has read: a damaged file counts nothing.
    Ok(local)
}

/// What is on disk under a root: rows per series across every readable day file, and the
/// files that could not be read (damaged ones are findings, not errors).
#[derive(Debug, Default)]
pub struct RootCount {
    /// Rows per `(instance_id, media_type)`.
    pub rows: HashMap<(String, String), u64>,
    /// Files that could not be read, with their table and day.
    pub unreadable: Vec<(Table, NaiveDate, ReadError)>,
}

/// Writes rows (sorted by instance, media, stats_time) to `path` atomically.
pub fn write_file_atomic(
    path: &Path,
    table: Table,
    rows: &[StoredRow],
    compression: ParquetCompression,
) -> Result<(), String> {
    let rows: Vec<OutRow> = rows.iter().map(StoredRow::as_out).collect();
    write_rows_atomic(path, table, &rows, codec(compression))
}

fn write_rows_atomic(
    path: &Path,
    table: Table,
    rows: &[OutRow],
    codec: Compression,
) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("part");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let f = File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let f = encode_rows(f, table, rows, codec)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
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
    result.map_err(|e| {
        if e.contains("os error 28") {
            format!("{e} (the disk is full: free space, then run again)")
        } else {
            e
        }
    })
}

/// The Parquet codec of a configured compression.
fn codec(compression: ParquetCompression) -> Compression {
    match compression {
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")),
        ParquetCompression::Lz4Raw => Compression::LZ4_RAW,
        ParquetCompression::None => Compression::UNCOMPRESSED,
    }
}

/// Encodes rows as one Parquet file of `table` into `out`; returns `out`.
fn encode_rows<W: std::io::Write + Send>(
    out: W,
    table: Table,
    rows: &[OutRow],
    codec: Compression,
) -> Result<W, String> {
    let props = WriterProperties::builder().set_compression(codec).build();
    let schema = schema(table);
    let mut w =
        ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.instance_id),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.media_type),
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
        rows.iter().map(|r| r.request_id),
    )));
    cols.push(Arc::new(StringArray::from_iter(
        rows.iter().map(|r| r.extra),
    )));
    let batch = RecordBatch::try_new(schema, cols).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.into_inner().map_err(|e| e.to_string())
}

/// Adds settled windows to what a call reports: a window refused by the lease check is fenced,
/// not failed.
fn absorb(out: &mut Written, settled: Vec<Settled>) {
    for s in settled {
        match s {
            Settled::Durable(batch) => out.durable.push(DurableWindow::of(&batch)),
            Settled::Failed(key, e) if e.message == FENCED => out.fenced.push(key),
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
