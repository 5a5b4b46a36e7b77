//! A day file: its Arrow schema per table, encoding rows into Parquet (sorted, one row group
//! per series run, written to a temporary name, fsynced, renamed), and reading one back, whole or
//! counted per series.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use chrono::NaiveDate;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;

use super::error::RootError;
use crate::config::ParquetCompression;
use crate::record::Table;

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

impl StoredRow {
    /// The row as its table's type, with named counts; `None` when it is another table's (its
    /// counts are not one per column of `R`'s table).
    pub fn row<R: crate::record::TrendRow>(&self) -> Option<R> {
        R::from_counts(self.stats_time, &self.counts)
    }
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

/// A row about to be written, borrowed from a batch or from the existing file.
#[derive(Debug, Clone, Copy)]
pub(super) struct OutRow<'a> {
    pub(super) instance_id: &'a str,
    pub(super) media_type: &'a str,
    pub(super) stats_time: i64,
    pub(super) counts: &'a [i64],
    pub(super) fetched_at: i64,
    pub(super) request_id: &'a str,
    pub(super) extra: Option<&'a str>,
}

impl OutRow<'_> {
    pub(super) fn key(&self) -> (&str, &str, i64) {
        (self.instance_id, self.media_type, self.stats_time)
    }
}

impl StoredRow {
    pub(super) fn as_out(&self) -> OutRow<'_> {
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
        /// Whether the store refuses this configuration (permissions, a missing bucket): no
        /// later attempt in this run can succeed.
        refused: bool,
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

pub(super) fn damaged(path: &str, detail: impl ToString) -> ReadError {
    ReadError::Damaged {
        location: path.to_string(),
        detail: detail.to_string(),
    }
}

pub(super) fn open_local(path: &Path) -> Result<File, ReadError> {
    File::open(path).map_err(|e| ReadError::Io {
        location: path.display().to_string(),
        detail: e.to_string(),
        refused: e.kind() == std::io::ErrorKind::PermissionDenied,
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
    for batch in reader {
        let batch = batch.map_err(|e| damaged(path, e))?;
        batch_rows(&batch, table, &mut out).map_err(|e| damaged(path, e))?;
    }
    Ok(out)
}

/// A value every row must have: a null key or count is no row of this pipeline (a file edited
/// by hand, or by another tool), never read as `''` or 0.
fn no_nulls(name: &str, column: &dyn Array) -> Result<(), String> {
    match column.null_count() {
        0 => Ok(()),
        n => Err(format!("{n} row(s) have no {name} (null)")),
    }
}

/// The rows of one record batch of a `table` file, appended to `out`; what is wrong when the
/// batch does not have the table's schema, or a row lacks a key or a count.
fn batch_rows(batch: &RecordBatch, table: Table, out: &mut Vec<StoredRow>) -> Result<(), String> {
    let schema = || format!("it does not have the {} schema", table.name());
    let (inst, media, st, counts, fa, rid, extra) =
        batch_columns(batch, table).ok_or_else(schema)?;
    no_nulls("instance_id", inst)?;
    no_nulls("media_type", media)?;
    no_nulls("stats_time", st)?;
    for (name, c) in table.count_columns().iter().zip(&counts) {
        no_nulls(name, *c)?;
    }
    out.extend((0..batch.num_rows()).map(|r| {
        StoredRow {
            instance_id: inst.value(r).to_string(),
            media_type: media.value(r).to_string(),
            stats_time: st.value(r),
            counts: counts.iter().map(|c| c.value(r)).collect(),
            fetched_at: fa.value(r),
            request_id: rid.value(r).to_string(),
            extra: extra
                .filter(|e| !e.is_null(r))
                .map(|e| e.value(r).to_string()),
        }
    }));
    Ok(())
}

/// The columns of a batch of a `table` file, typed; `None` when it does not have the schema.
type Columns<'a> = (
    &'a StringArray,
    &'a StringArray,
    &'a TimestampMillisecondArray,
    Vec<&'a Int64Array>,
    &'a TimestampMillisecondArray,
    &'a StringArray,
    Option<&'a StringArray>,
);

fn batch_columns(batch: &RecordBatch, table: Table) -> Option<Columns<'_>> {
    let ncounts = table.count_columns().len();
    let s = |i: usize| batch.column(i).as_string_opt::<i32>();
    let t = |i: usize| {
        batch
            .column(i)
            .as_primitive_opt::<TimestampMillisecondType>()
    };
    // Files written before the `extra` column existed have one column less.
    let with_extra = match batch.num_columns() {
        c if c == 5 + ncounts => false,
        c if c == 6 + ncounts => true,
        _ => return None,
    };
    let (inst, media, st) = (s(0)?, s(1)?, t(2)?);
    let counts: Vec<&Int64Array> = (0..ncounts)
        .map(|i| batch.column(3 + i).as_primitive_opt::<Int64Type>())
        .collect::<Option<_>>()?;
    let (fa, rid) = (t(3 + ncounts)?, s(4 + ncounts)?);
    let extra = if with_extra {
        Some(s(5 + ncounts)?)
    } else {
        None
    };
    Some((inst, media, st, counts, fa, rid, extra))
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

/// Rows per `(instance_id, media_type)` in one file, reading only the key columns (a row
/// without a key makes the file damaged, as reading it does).
pub(super) fn count_reader<R: ChunkReader + 'static>(
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
    let mask = ProjectionMask::roots(builder.parquet_schema(), [0, 1, 2]);
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
        no_nulls("instance_id", inst)
            .and_then(|()| no_nulls("media_type", media))
            .and_then(|()| no_nulls("stats_time", batch.column(2)))
            .map_err(|e| damaged(path, e))?;
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
    /// Rows per `(instance_id, media_type, table)`.
    pub by_table: HashMap<(String, String, Table), u64>,
    /// Files that could not be read, with their table and day.
    pub unreadable: Vec<(Table, NaiveDate, ReadError)>,
}

/// Writes rows (sorted by instance, media, stats_time) to `path` atomically.
pub fn write_file_atomic(
    path: &Path,
    table: Table,
    rows: &[StoredRow],
    compression: ParquetCompression,
) -> Result<(), RootError> {
    let rows: Vec<OutRow> = rows.iter().map(StoredRow::as_out).collect();
    write_rows_atomic(path, table, &rows, codec(compression))
}

pub(super) fn write_rows_atomic(
    path: &Path,
    table: Table,
    rows: &[OutRow],
    codec: Compression,
) -> Result<(), RootError> {
    let dir = path
        .parent()
        .ok_or_else(|| RootError::invalid(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| RootError::io(format!("cannot create {}", dir.display()), e))?;
    crate::atomic::write_atomic(path, |f| {
        encode_rows(f, table, rows, codec).map_err(std::io::Error::other)
    })
    .map_err(|e| {
        let full = match e.kind() {
            std::io::ErrorKind::StorageFull => " (the disk is full: free space, then run again)",
            _ => "",
        };
        RootError::io(format!("cannot write {}{full}", path.display()), e)
    })
}

/// The Parquet codec of a configured compression.
pub(super) fn codec(compression: ParquetCompression) -> Compression {
    match compression {
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")),
        ParquetCompression::Lz4Raw => Compression::LZ4_RAW,
        ParquetCompression::None => Compression::UNCOMPRESSED,
    }
}

/// Encodes rows as one Parquet file of `table` into `out`; returns `out`.
pub(super) fn encode_rows<W: std::io::Write + Send>(
    out: W,
    table: Table,
    rows: &[OutRow],
    codec: Compression,
) -> Result<W, ParquetError> {
    let props = WriterProperties::builder().set_compression(codec).build();
    let schema = schema(table);
    let mut w = ArrowWriter::try_new(out, schema.clone(), Some(props))?;
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
    let batch = RecordBatch::try_new(schema, cols)?;
    w.write(&batch)?;
    w.into_inner()
}
