//! Does the root still hold what the ledger says was written to it?
//!
//! The ledger records each day file with the ETag it had when written. One listing per table
//! finds files that are missing (a wiped volume, a file deleted by hand) or carry another ETag
//! (edited, replaced, damaged); a changed file is read to tell a damaged one (moved aside into
//! `_ccc_etl/damaged/`, never deleted) from one that still reads. Either way every window touching
//! such a day loses its Parquet commit, so the run fetches it again: what the root holds is the
//! truth, the ledger only a cache of it.

use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;

use super::layout::{Listed, Partition, Stray};
use super::{Layout, ReadError, Root};
use crate::ledger::{DayFile, Ledger, LedgerError, SinkId};
use crate::record::Table;

/// Why a root could not be checked against its ledger (or its findings acted on).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The root could not be listed or changed.
    #[error(transparent)]
    Root(#[from] super::RootError),
    /// A day file could not be read (the store, not the file).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The ledger could not be read or written.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What is wrong with one day file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The ledger recorded it; the root does not hold it.
    Missing,
    /// It is there with another ETag, and still reads as this table's file.
    Changed,
    /// It is there with another ETag and cannot be read.
    Damaged(String),
    /// The ledger never recorded it, and its rows are not its day's keys (a file copied into
    /// another day's folder, or edited): set aside, never merged.
    NotItsKeys(String),
}

/// A day file that is not as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Table.
    pub table: Table,
    /// Local day.
    pub day: NaiveDate,
    /// What is wrong.
    pub problem: Problem,
}

impl Finding {
    /// One line for an operator.
    pub fn describe(&self, root: &Root) -> String {
        let path = root.location(self.table, self.day);
        match &self.problem {
            Problem::Missing => format!("{path} is missing (deleted, or the root was wiped)"),
            Problem::Changed => format!("{path} was changed outside ccc-etl"),
            Problem::Damaged(why) => why.clone(),
            Problem::NotItsKeys(why) => format!(
                "{path} was not written by ccc-etl and holds {why}: the next run moves it to \
                 _ccc_etl/{}/",
                super::layout::SET_ASIDE_DIR
            ),
        }
    }

    /// The file as a stray, to be set aside.
    fn as_stray(&self, root: &Root) -> Stray {
        Stray {
            table: self.table,
            partition: Partition::Day(self.day),
            name: super::DATA_FILE.to_string(),
            location: root.location(self.table, self.day),
        }
    }
}

/// What is wrong with a day file's rows, if anything: rows outside the day (in `tz`), keys more
/// than once.
pub fn not_its_keys(rows: &[super::StoredRow], tz: Tz, day: NaiveDate) -> Option<String> {
    let (from, to) = Layout::day_range(tz, day);
    let outside = rows
        .iter()
        .filter(|r| r.stats_time < from || r.stats_time >= to)
        .count();
    let mut keys: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|r| (r.instance_id.as_str(), r.media_type.as_str(), r.stats_time))
        .collect();
    keys.sort_unstable();
    let total = keys.len();
    keys.dedup();
    let repeated = total - keys.len();
    (outside + repeated > 0)
        .then(|| format!("{outside} row(s) outside the day {day}, {repeated} key(s) repeated"))
}

/// Compares the recorded files with a listing of the root ([`Root::list`]). Reads only files
/// whose ETag changed, and files the ledger never recorded (whose rows must be their day's keys).
pub async fn check(
    root: &Root,
    tz: Tz,
    listing: &[Listed],
    recorded: &[DayFile],
) -> Result<Vec<Finding>, ReconcileError> {
    let listed: std::collections::HashMap<(Table, NaiveDate), &str> = listing
        .iter()
        .map(|l| ((l.table, l.day), l.etag.as_str()))
        .collect();
    let mut out = unrecorded(root, tz, listing, recorded).await?;
    for f in recorded {
        let problem = match listed.get(&(f.table, f.day)) {
            None => Problem::Missing,
            Some(etag) if *etag == f.etag => continue,
            Some(_) => {
                match read_problem(root, f.table, f.day, |_| Some(Problem::Changed)).await? {
                    Some(p) => p,
                    None => continue,
                }
            }
        };
        out.push(Finding {
            table: f.table,
            day: f.day,
            problem,
        });
    }
    Ok(out)
}

/// The day files the ledger never recorded that are damaged or whose rows are not their day's
/// keys. In a root this pipeline writes, that is a file copied or written by hand (or a file of a
/// day whose record was lost, which reads fine).
async fn unrecorded(
    root: &Root,
    tz: Tz,
    listing: &[Listed],
    recorded: &[DayFile],
) -> Result<Vec<Finding>, ReconcileError> {
    let known: std::collections::HashSet<(Table, NaiveDate)> =
        recorded.iter().map(|f| (f.table, f.day)).collect();
    let mut out = Vec::new();
    for l in listing
        .iter()
        .filter(|l| !known.contains(&(l.table, l.day)))
    {
        let judge =
            |rows: Vec<super::StoredRow>| not_its_keys(&rows, tz, l.day).map(Problem::NotItsKeys);
        let Some(problem) = read_problem(root, l.table, l.day, judge).await? else {
            continue;
        };
        out.push(Finding {
            table: l.table,
            day: l.day,
            problem,
        });
    }
    Ok(out)
}

/// Reads a day file and asks `judge` what is wrong with its rows (`None`: nothing); a file that
/// cannot be read as this table's is damaged, and a read that fails is an error.
async fn read_problem(
    root: &Root,
    table: Table,
    day: NaiveDate,
    judge: impl FnOnce(Vec<super::StoredRow>) -> Option<Problem>,
) -> Result<Option<Problem>, ReconcileError> {
    match root.read_rows(table, day).await {
        Ok(rows) => Ok(judge(rows)),
        Err(e @ ReadError::Damaged { .. }) => Ok(Some(Problem::Damaged(e.to_string()))),
        Err(e @ ReadError::Io { .. }) => Err(e.into()),
    }
}

/// What a look at a root found, read-only: the day files that are not as the ledger recorded
/// them, and the other files in day directories.
#[derive(Debug, Default)]
pub struct Inspection {
    /// The day files listed (those whose rows are not their day's keys aside).
    pub files: Vec<Listed>,
    /// Day files missing, changed or damaged.
    pub findings: Vec<Finding>,
    /// Files in day directories other than the day's file.
    pub strays: Vec<Stray>,
}

/// Lists the root once and compares it with the ledger's manifest for `target`, changing
/// nothing: what the next run's [`before_run`] will act on (`plan` and `status` show it).
pub async fn inspect(
    root: &Root,
    tz: Tz,
    ledger: &dyn Ledger,
    target: &str,
) -> Result<Inspection, ReconcileError> {
    let recorded = ledger.day_files(target).await?;
    let mut listing = root.list_all().await?;
    let findings = check(root, tz, &listing.files, &recorded).await?;
    listing.files.retain(|l| {
        !findings.iter().any(|f| {
            (f.table, f.day) == (l.table, l.day) && matches!(f.problem, Problem::NotItsKeys(_))
        })
    });
    Ok(Inspection {
        findings,
        files: listing.files,
        strays: listing.strays,
    })
}

/// The epoch-ms ranges of the findings' days.
pub fn ranges(tz: Tz, findings: &[Finding]) -> Vec<(i64, i64)> {
    crate::ranges::union(
        findings
            .iter()
            .map(|f| Layout::day_range(tz, f.day))
            .collect(),
    )
}

/// Moves damaged files aside and takes back every Parquet commit touching the findings' days.
/// Returns the windows taken back.
pub async fn repair(
    root: &Root,
    tz: Tz,
    ledger: &dyn Ledger,
    sink: &SinkId,
    findings: &[Finding],
) -> Result<u64, LedgerError> {
    if findings.is_empty() {
        return Ok(0);
    }
    for f in findings {
        let mut line = f.describe(root);
        let moved = match f.problem {
            Problem::Damaged(_) => Some(root.quarantine(f.table, f.day).await),
            Problem::NotItsKeys(_) => Some(root.set_aside(&f.as_stray(root)).await),
            Problem::Missing | Problem::Changed => None,
        };
        match moved {
            Some(Ok(to)) => line.push_str(&format!("; moved to {to}")),
            Some(Err(e)) => line.push_str(&format!("; {e}")),
            None => {}
        }
        tracing::warn!(table = %f.table, day = %f.day, "{line}: the day is fetched again");
    }
    let files: Vec<(Table, NaiveDate)> = findings.iter().map(|f| (f.table, f.day)).collect();
    ledger
        .invalidate(
            sink,
            &ranges(tz, findings),
            &files,
            "the Parquet day file was missing, changed or damaged",
        )
        .await
        .map(|taken| taken.len() as u64)
}

/// Before a run: gives an older root's commits to it, then checks the root against the ledger and
/// repairs what differs (other files in day directories are moved aside, never deleted).
/// Returns the findings.
pub async fn before_run(
    root: &Root,
    tz: Tz,
    ledger: &dyn Ledger,
    sink: &SinkId,
    legacy: bool,
) -> Result<Vec<Finding>, ReconcileError> {
    if legacy {
        adopt(root, ledger, sink).await?;
    }
    let Inspection {
        findings, strays, ..
    } = inspect(root, tz, ledger, &sink.target).await?;
    for stray in &strays {
        let moved = root.set_aside(stray).await?;
        tracing::warn!(
            table = %stray.table,
            partition = %stray.partition,
            "{}: moved to {moved}",
            stray.describe()
        );
    }
    let taken = repair(root, tz, ledger, sink, &findings).await?;
    if taken > 0 {
        tracing::warn!(
            windows = taken,
            root = %root.display(),
            "Parquet commits taken back: their windows are fetched again"
        );
    }
    Ok(findings)
}

/// Records every day file of the root as it is now in the ledger's manifest (an adopted root, a
/// re-partitioned one). Returns how many.
pub async fn record_listing(
    root: &Root,
    ledger: &dyn Ledger,
    target: &str,
) -> Result<usize, ReconcileError> {
    let files: Vec<DayFile> = root
        .list()
        .await?
        .into_iter()
        .map(|l| DayFile {
            target: target.to_string(),
            table: l.table,
            day: l.day,
            etag: l.etag,
            rows: 0,
        })
        .collect();
    ledger.record_files(&files).await?;
    Ok(files.len())
}

/// A root written before roots had ids: its commits and its files, as they are now, become its
/// own.
async fn adopt(root: &Root, ledger: &dyn Ledger, sink: &SinkId) -> Result<(), ReconcileError> {
    let n = ledger.adopt_legacy(sink).await?;
    let files = record_listing(root, ledger, &sink.target).await?;
    tracing::info!(
        windows = n,
        files,
        root = %root.display(),
        at = %Utc::now(),
        "adopted a Parquet root written by an earlier version"
    );
    Ok(())
}
