//! Re-cutting a root's day partitions for another time zone (`ccc-etl migrate`).
//!
//! A `dt=` day is a local day in the zone the root was built with, so changing `timezone` would
//! put the same row in two days. `migrate` moves every row to its day in the new zone: the new
//! partitions are written under `_ccc_etl/repartition/` first, then each table directory is
//! swapped in by two renames, with a marker so that a run interrupted half-way is completed by
//! the next `migrate`, and `root.json` takes the new zone last. Call it under the root's lock.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::error::RootError;
use super::{Layout, StoredRow, read_file, write_file_atomic};
use crate::config::ParquetCompression;
use crate::record::Table;

const STAGING: &str = "repartition";
const OLD: &str = "repartition-old";
const MARKER: &str = "repartition.json";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    from: String,
    to: String,
}

/// What a re-partitioning did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repartitioned {
    /// Rows moved (every row of the root).
    pub rows: u64,
    /// Day files before.
    pub files_before: usize,
    /// Day files after.
    pub files_after: usize,
}

fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> RootError {
    RootError::io(format!("cannot {what} {}", path.display()), e)
}

/// Moves every row of the root to its local day in `to`. Does nothing when the root already cuts
/// its days in `to`, or has no `root.json` yet.
pub fn repartition(
    layout: &Layout,
    to: Tz,
    compression: ParquetCompression,
) -> Result<Repartitioned, RootError> {
    let state = layout.state_dir();
    let marker = state.join(MARKER);
    let Some(mut meta) = layout.read_meta()? else {
        return Ok(Repartitioned::default());
    };
    if !marker.exists() {
        if meta.timezone == to.name() {
            return Ok(Repartitioned::default());
        }
        let report = stage(layout, to, compression)?;
        let text = serde_json::to_vec(&Marker {
            from: meta.timezone.clone(),
            to: to.name().into(),
        })
        .expect("a marker encodes");
        std::fs::write(&marker, text).map_err(|e| io("write", &marker, e))?;
        swap(layout)?;
        meta.timezone = to.name().to_string();
        layout.write_meta(&meta)?;
        cleanup(layout)?;
        return Ok(report);
    }
    // An interrupted migration: finish it.
    let m: Marker =
        serde_json::from_slice(&std::fs::read(&marker).map_err(|e| io("read", &marker, e))?)
            .map_err(|e| RootError::invalid(format!("{} is damaged: {e}", marker.display())))?;
    if m.to != to.name() {
        return Err(RootError::invalid(format!(
            "an interrupted migration of {} to time zone {} must finish first: run `ccc-etl migrate` with timezone = \"{}\"",
            layout.root().display(),
            m.to,
            m.to
        )));
    }
    swap(layout)?;
    meta.timezone = to.name().to_string();
    layout.write_meta(&meta)?;
    cleanup(layout)?;
    Ok(Repartitioned::default())
}

/// Writes every table's rows, re-cut by day in `to`, under the staging directory.
fn stage(
    layout: &Layout,
    to: Tz,
    compression: ParquetCompression,
) -> Result<Repartitioned, RootError> {
    let staging = Layout::new(layout.state_dir().join(STAGING));
    if staging.root().exists() {
        std::fs::remove_dir_all(staging.root()).map_err(|e| io("remove", staging.root(), e))?;
    }
    let mut report = Repartitioned::default();
    let listed = layout.list()?;
    report.files_before = listed.len();
    for table in Table::ALL {
        let mut by_day: BTreeMap<NaiveDate, Vec<StoredRow>> = BTreeMap::new();
        for f in listed.iter().filter(|f| f.table == table) {
            for r in read_file(&layout.day_file(table, f.day), table).map_err(|e| {
                RootError::invalid(format!(
                    "{e}: run `ccc-etl nightly` (which sets damaged files aside) before migrating"
                ))
            })? {
                let day = DateTime::<Utc>::from_timestamp_millis(r.stats_time)
                    .ok_or_else(|| {
                        RootError::invalid(format!(
                            "{}: stats_time {} is out of range",
                            layout.day_file(table, f.day).display(),
                            r.stats_time
                        ))
                    })?
                    .with_timezone(&to)
                    .date_naive();
                by_day.entry(day).or_default().push(r);
            }
        }
        for (day, mut rows) in by_day {
            rows.sort_by(|a, b| {
                (&a.instance_id, &a.media_type, a.stats_time).cmp(&(
                    &b.instance_id,
                    &b.media_type,
                    b.stats_time,
                ))
            });
            report.rows += rows.len() as u64;
            report.files_after += 1;
            write_file_atomic(&staging.day_file(table, day), table, &rows, compression)?;
        }
    }
    Ok(report)
}

/// Puts each staged table directory in place of the old one (idempotent).
fn swap(layout: &Layout) -> Result<(), RootError> {
    let state = layout.state_dir();
    let old = state.join(OLD);
    std::fs::create_dir_all(&old).map_err(|e| io("create", &old, e))?;
    for table in Table::ALL {
        let staged = state.join(STAGING).join(table.name());
        let live = layout.root().join(table.name());
        let aside = old.join(table.name());
        if !staged.exists() {
            continue;
        }
        if live.exists() && !aside.exists() {
            std::fs::rename(&live, &aside).map_err(|e| io("move aside", &live, e))?;
        }
        if !live.exists() {
            std::fs::rename(&staged, &live).map_err(|e| io("move into place", &staged, e))?;
        }
    }
    sync_dir(layout.root())
}

fn cleanup(layout: &Layout) -> Result<(), RootError> {
    let state = layout.state_dir();
    for dir in [state.join(OLD), state.join(STAGING)] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io("remove", &dir, e))?;
        }
    }
    let marker: PathBuf = state.join(MARKER);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(|e| io("remove", &marker, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &std::path::Path) -> Result<(), RootError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::parquet::RootMeta;

    #[test]
    fn every_row_moves_to_its_local_day_in_the_new_zone_once() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout
            .write_meta(&RootMeta {
                id: "r".into(),
                timezone: "UTC".into(),
                created_at: Utc::now(),
                owner: Default::default(),
                ledger: None,
            })
            .unwrap();
        // 2026-11-02 in UTC: 00:00 .. 23:00. In Shanghai (+8) hours 16..23 are on 11-03.
        let day = NaiveDate::from_ymd_opt(2026, 11, 2).unwrap();
        let start = crate::plan::local_day_start(chrono_tz::UTC, day);
        let rows: Vec<StoredRow> = (0..24)
            .map(|h| StoredRow {
                instance_id: "i".into(),
                media_type: "Audio".into(),
                stats_time: start + h * 3_600_000,
                counts: vec![h],
                fetched_at: 0,
                request_id: "r".into(),
                extra: None,
            })
            .collect();
        write_file_atomic(
            &layout.day_file(Table::Overall, day),
            Table::Overall,
            &rows,
            Default::default(),
        )
        .unwrap();
        let report = repartition(&layout, chrono_tz::Asia::Shanghai, Default::default()).unwrap();
        assert_eq!(
            (report.rows, report.files_before, report.files_after),
            (24, 1, 2)
        );
        let a = read_file(&layout.day_file(Table::Overall, day), Table::Overall).unwrap();
        let b = read_file(
            &layout.day_file(Table::Overall, day.succ_opt().unwrap()),
            Table::Overall,
        )
        .unwrap();
        assert_eq!(a.len(), 16);
        assert_eq!(b.len(), 8);
        assert_eq!(b[0].counts, vec![16]);
        assert_eq!(
            layout.read_meta().unwrap().unwrap().timezone,
            "Asia/Shanghai"
        );
        assert!(!layout.state_dir().join(STAGING).exists());
        assert_eq!(
            repartition(&layout, chrono_tz::Asia::Shanghai, Default::default()).unwrap(),
            Repartitioned::default(),
            "a second migrate has nothing to do"
        );
    }
}
