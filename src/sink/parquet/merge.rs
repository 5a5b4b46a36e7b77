//! Writing a day: its rows merged with the file already there (one row per key, newer fetch
//! wins, rows outside the day or repeated dropped), encoded and replaced, on a local disk or on
//! object storage under the day's lock and the fence of every window whose rows it holds.

use std::sync::Arc;

use chrono::NaiveDate;
use chrono_tz::Tz;
use parquet::basic::Compression;

use super::file::{
    OutRow, ReadError, StoredRow, codec, encode_rows, read_file, read_rows, write_rows_atomic,
};
use super::object::PutOutcome;
use super::{Layout, ObjectRoot, layout, object};
use crate::ledger::DayFile;
use crate::record::{Counts, Table, WindowBatch, WindowKey};
use crate::sink::CommitStats;

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
    /// The day's lock was found lost once the writes had landed (the process was stopped or cut
    /// off from PostgreSQL while writing): another worker may have written the day since.
    pub late: bool,

    /// Rows of the old files dropped as not belonging to the day (another day's, a repeated
    /// key).
    pub dropped: u64,
}

/// Why a day could not be written.
pub(super) enum DayError {
    /// The file system failed; a later attempt may succeed.
    Io(String),
    /// The existing file cannot be read as this table's file.
    Damaged { table: Table, error: ReadError },
    /// The store refuses this configuration (permissions, a missing bucket): the run stops.
    Refused(String),
}

impl From<super::RootError> for DayError {
    fn from(e: super::RootError) -> Self {
        if e.refuses() {
            DayError::Refused(e.message)
        } else {
            DayError::Io(e.message)
        }
    }
}

/// Merges one day's rows of every table into its files; returns what changed.
pub(super) fn write_day(
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
            write_rows_atomic(&path, table, &merged, codec)?;
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
pub(super) fn foreign_rows(location: &str, dropped: u64) {
    if dropped > 0 {
        tracing::warn!(
            file = %location,
            rows = dropped,
            "the day file held rows of another day or repeated keys (copied or edited by hand): \
             dropped as the day was written again"
        );
    }
}

pub(super) fn day_error(table: Table, error: ReadError) -> DayError {
    match error {
        ReadError::Io { refused: true, .. } => DayError::Refused(error.to_string()),
        ReadError::Io { .. } => DayError::Io(error.to_string()),
        ReadError::Damaged { .. } => DayError::Damaged { table, error },
    }
}

/// One table's rows of the day `[from, to)`: the incoming rows merged over the old file's, what
/// changed, and how many of the old file's rows were dropped. A day file is a function of the
/// day's keys: old rows outside the day, and every repeat of a key after its first row, are
/// dropped (a file copied from another day, or edited by hand).
pub(super) fn merge_table<'a>(
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
pub(super) struct Encoded {
    pub(super) body: Option<Vec<u8>>,
    pub(super) rows: u64,
    pub(super) stats: CommitStats,
    pub(super) dropped: u64,
}

pub(super) fn merge_encode(
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
        Some(
            encode_rows(Vec::new(), table, &merged, codec)
                .map_err(|e| DayError::Io(e.to_string()))?,
        )
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
        DayError::Io(m) | DayError::Refused(m) => m,
        DayError::Damaged { error, .. } => error.to_string(),
    })
}

/// Merges one day's rows of every table into its objects, under the day's lock in PostgreSQL
/// and, where the store has them, with conditional writes: a write that finds the object
/// changed since it was read reads, merges and writes again. The day's tables are read, merged
/// and written at once.
///
/// A file the manifest does not list (a new day) is not read first: it is created with
/// `If-None-Match: *`, and if it exists after all (written by hand, or the manifest lost) the
/// create fails and the file is read and merged like one changed by another writer. Without
/// conditional writes (OSS) every file is read first.
///
/// With several workers (`fence`), the lease of every window whose rows would go into a file is
/// checked under the day's lock, in the transaction that records the files' ETags, before each
/// write: the rows of a window this worker cannot prove it holds are left out (a worker stopped
/// past its lease and resumed writes nothing another worker has taken over). While the lock is
/// held the transaction shows it is alive; a frozen holder's is ended by the server
/// (`idle_in_transaction_session_timeout`), and its writes stop at the next check.
pub(super) async fn write_day_object(
    root: &ObjectRoot,
    root_id: &str,
    tz: Tz,
    day: NaiveDate,
    batches: &[Arc<WindowBatch>],
    codec: Compression,
    fence: Option<&dyn crate::coord::Fence>,
) -> Result<DayWritten, DayError> {
    let mut lock = DayLock {
        tx: root.lock_day(root_id, day).await.map_err(DayError::Io)?,
        day,
        every: root.keepalive(),
        fence,
        spoke: tokio::time::Instant::now(),
    };
    let listed = lock.listed(root_id).await?;
    let target = DayObject {
        root,
        day,
        range: Layout::day_range(tz, day),
        codec,
    };
    let mut out = DayWritten::default();
    let mut kept = lock.fence(batches).await?;
    let pending = Table::ALL
        .iter()
        .map(|&t| {
            (
                t,
                !root.conditional() || listed.as_ref().is_none_or(|l| l.contains(&t)),
            )
        })
        .collect();
    target
        .write_tables(&mut lock, pending, &mut kept, &mut out)
        .await?;
    // Indices into `batches`, as the caller knows them.
    out.fenced = (0..batches.len())
        .filter(|i| !kept.iter().any(|k| Arc::ptr_eq(k, &batches[*i])))
        .collect();
    lock.release(root_id, &mut out).await?;
    Ok(out)
}

/// One day on object storage, the files of its tables written at once.
struct DayObject<'a> {
    root: &'a ObjectRoot,
    day: NaiveDate,
    range: (i64, i64),
    codec: Compression,
}

/// What one attempt at a table's file did.
enum Attempt {
    /// The day has no rows of the table.
    Nothing,
    /// The file as merged (written, or unchanged) and its ETag.
    Done(String, Encoded),
    /// Another writer changed the file since it was read.
    Conflict,
    /// The file must be read first: it exists though the manifest does not list it, or it is
    /// too large to be created conditionally.
    Read,
}

impl DayObject<'_> {
    /// Writes the `pending` tables (each with whether its file is read first), at once, with the
    /// `kept` windows' rows; the tables whose file another writer changed meanwhile are read
    /// and merged again, after the leases are checked again.
    async fn write_tables(
        &self,
        lock: &mut DayLock<'_>,
        mut pending: Vec<(Table, bool)>,
        kept: &mut Vec<Arc<WindowBatch>>,
        out: &mut DayWritten,
    ) -> Result<(), DayError> {
        let mut rounds = 0;
        while !pending.is_empty() && !kept.is_empty() {
            let before = out.conflicts;
            let batches: &[Arc<WindowBatch>] = kept;
            let attempts = pending
                .iter()
                .map(|&(t, read)| self.attempt(t, batches, read));
            let (results, held) = lock.hold(futures::future::join_all(attempts)).await?;
            out.late |= !held;
            let mut again = Vec::new();
            for ((table, _), result) in pending.into_iter().zip(results) {
                match result? {
                    Attempt::Nothing => {}
                    Attempt::Done(etag, encoded) => {
                        foreign_rows(&self.root.location(table, self.day), encoded.dropped);
                        out.files.push((table, etag, encoded.rows));
                        out.stats += encoded.stats;
                        out.dropped += encoded.dropped;
                    }
                    Attempt::Read => again.push((table, true)),
                    Attempt::Conflict => {
                        out.conflicts += 1;
                        tracing::info!(table = %table, day = %self.day, "another writer changed the day file: reading and merging it again");
                        again.push((table, true));
                    }
                }
            }
            if out.conflicts > before {
                rounds += 1;
                if rounds >= object::CONFLICT_ATTEMPTS {
                    return Err(DayError::Io(format!(
                        "the files of day {} kept changing under {rounds} rounds of conditional writes",
                        self.day
                    )));
                }
                // The leases again: time has passed, and the lock may be gone.
                *kept = lock.fence(kept).await?;
            }
            pending = again;
        }
        Ok(())
    }

    /// One table's file: read (if `read`), merged with `batches`' rows, written if it changed
    /// (with `If-Match` its version as read, `If-None-Match: *` if there was none).
    async fn attempt(
        &self,
        table: Table,
        batches: &[Arc<WindowBatch>],
        read: bool,
    ) -> Result<Attempt, DayError> {
        let (root, day) = (self.root, self.day);
        let old = match read {
            true => root
                .fetch(table, day)
                .await
                .map_err(|error| day_error(table, error))?,
            false => None,
        };
        let (bytes, version) = old.map(|f| (f.bytes, f.version)).unzip();
        let (b, location, range, codec) = (
            batches.to_vec(),
            root.location(table, day),
            self.range,
            self.codec,
        );
        let encoded = tokio::task::spawn_blocking(move || {
            merge_encode(table, &b, range, bytes, &location, codec)
        })
        .await
        .unwrap_or_else(|e| Err(DayError::Io(format!("encoder task failed: {e}"))))?;
        let Some(mut encoded) = encoded else {
            return Ok(Attempt::Nothing);
        };
        let Some(body) = encoded.body.take() else {
            let etag = version.map(|v| object::etag_text(v.e_tag.as_deref(), v.version));
            return Ok(Attempt::Done(etag.unwrap_or_default(), encoded));
        };
        if !read && !root.creates(body.len()) {
            return Ok(Attempt::Read);
        }
        match root.put_day(table, day, body, version.as_ref()).await {
            Ok(PutOutcome::Written(etag)) => Ok(Attempt::Done(etag, encoded)),
            Ok(PutOutcome::Conflict) if read => Ok(Attempt::Conflict),
            Ok(PutOutcome::Conflict) => {
                tracing::debug!(table = %table, day = %day, "the day file exists though the manifest does not list it: reading and merging it");
                Ok(Attempt::Read)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A day's lock in PostgreSQL (none without a pool), and the worker whose leases fence the
/// writes made under it.
pub(super) struct DayLock<'a> {
    pub(super) tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    pub(super) day: NaiveDate,
    /// How often the transaction shows it is alive.
    pub(super) every: std::time::Duration,
    pub(super) fence: Option<&'a dyn crate::coord::Fence>,
    /// When the transaction last ran a statement: a session that spoke less than `every` ago
    /// cannot have been ended as idle (the server waits a lease, at least twice as long).
    pub(super) spoke: tokio::time::Instant,
}

impl DayLock<'_> {
    /// Records the day's files in the manifest under the day's lock (with several writers, the
    /// manifest names the ETag of the last write, never an earlier writer's recorded late), then
    /// releases it. Without PostgreSQL there is nothing to record.
    async fn release(self, root_id: &str, out: &mut DayWritten) -> Result<(), DayError> {
        let (day, Some(mut tx)) = (self.day, self.tx) else {
            return Ok(());
        };
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
            .map_err(|e| DayError::Io(format!("cannot release the lock of day {day}: {e}")))
    }

    /// The tables whose file of the day the manifest lists, read under the lock (`None`
    /// without PostgreSQL: nothing is known).
    async fn listed(&mut self, root_id: &str) -> Result<Option<Vec<Table>>, DayError> {
        let Some(tx) = self.tx.as_mut() else {
            return Ok(None);
        };
        let listed = crate::ledger::listed_tables(&mut **tx, root_id, self.day).await;
        self.spoke = tokio::time::Instant::now();
        listed.map(Some).map_err(|e| {
            DayError::Io(format!(
                "cannot read the manifest of day {} in PostgreSQL: {}",
                self.day,
                crate::db::explain(&e)
            ))
        })
    }

    /// Of `batches`, those whose windows' leases this worker can prove it holds, checked in the
    /// lock's transaction; the others are refused (counted, logged).
    pub(super) async fn fence(
        &mut self,
        batches: &[Arc<WindowBatch>],
    ) -> Result<Vec<Arc<WindowBatch>>, DayError> {
        let (Some(tx), Some(c)) = (self.tx.as_mut(), self.fence) else {
            return Ok(batches.to_vec());
        };
        let keys: Vec<&WindowKey> = batches.iter().map(|b| &b.key).collect();
        let held = c.holds_now(tx, &keys).await;
        self.spoke = tokio::time::Instant::now();
        let held = held.map_err(|e| {
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
                c.refused(&b.key, crate::ledger::SinkKind::Parquet);
            }
        }
        Ok(kept)
    }

    /// Runs `work` while the lock is held, with a trivial statement every `every` so that the
    /// transaction is not ended as idle. If the session is gone (ended by the server while the
    /// process was stopped), so is the lock: the work is dropped and the day fails. Returns the
    /// work's output and whether the lock was still held once it was done (a process stopped in
    /// the middle of its writes finds, when it resumes, writes landed after the lock was lost).
    pub(super) async fn hold<F: std::future::Future>(
        &mut self,
        work: F,
    ) -> Result<(F::Output, bool), DayError> {
        let Some(tx) = self.tx.as_mut() else {
            return Ok((work.await, true));
        };
        tokio::pin!(work);
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        loop {
            tokio::select! {
                out = &mut work => {
                    // Only a process stopped (or starved) past a keepalive can have lost the
                    // lock meanwhile: only then is the session asked, not after every day.
                    let held = self.spoke.elapsed() < self.every
                        || sqlx::query("SELECT 1").execute(&mut **tx).await.is_ok();
                    return Ok((out, held));
                }
                _ = tick.tick() => {
                    if let Err(e) = sqlx::query("SELECT 1").execute(&mut **tx).await {
                        return Err(DayError::Io(format!(
                            "lost the lock of day {} in PostgreSQL (its session ended): {}",
                            self.day,
                            crate::db::explain(&e)
                        )));
                    }
                    self.spoke = tokio::time::Instant::now();
                }
            }
        }
    }
}

/// One table's rows of `[from, to)` in each batch (index, rows), batches without any left out.
pub(super) type Slices = Vec<(usize, Vec<(i64, Counts)>)>;

pub(super) fn slices(table: Table, batches: &[Arc<WindowBatch>], from: i64, to: i64) -> Slices {
    batches
        .iter()
        .enumerate()
        .map(|(i, b)| (i, b.rows_between(table, from, to)))
        .filter(|(_, r)| !r.is_empty())
        .collect()
}

/// The rows of `slices`, one per key, sorted; on a repeated key the later batch (fetched later)
/// wins.
pub(super) fn incoming_rows<'a>(
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
pub(super) fn merge_sorted<'a>(
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
