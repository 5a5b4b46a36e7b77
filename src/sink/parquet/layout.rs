//! Where a Parquet root keeps what, in one place for the sink, `status` and `verify`.
//!
//! ```text
//! {root}/{table}/dt=YYYY-MM-DD/part-00000.parquet   the data, one file per table and local day
//! {root}/_ccc_etl/root.json                         the root's id and the zone its days are cut in
//! {root}/_ccc_etl/lock                              held by the run writing here
//! {root}/_ccc_etl/damaged/...                       unreadable day files, moved aside, never deleted
//! {root}/_ccc_etl/set-aside/...                     files that are not this pipeline's rows
//! ```
//!
//! A day's directory holds its one file: any other file there (a copy such as
//! `part-00001.parquet`, another tool's output), and any file in a table's folder that is not a
//! day's (`dt=garbage/`), is a [`Stray`], which every engine would read as part of the table.
//! `status` and `verify` list them; the next run moves them aside.
//!
//! The id in `root.json` is what the ledger records commits against: a wiped or replaced root has
//! none (or another), so its windows are fetched again. A listing ([`Layout::list`]) is one
//! directory read per table plus one `stat` per day, and gives each file's ETag (modification
//! time and size, as object stores give theirs), which the ledger compares with the one it
//! recorded when the file was written.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::error::RootError;
pub use crate::config::RootOwner;
use crate::ledger::FILE_LEDGER_DIR;
use crate::record::Table;

/// The name of each day's file.
pub const DATA_FILE: &str = "part-00000.parquet";
const META_FILE: &str = "root.json";
pub(crate) const DAMAGED_DIR: &str = "damaged";
pub(crate) const SET_ASIDE_DIR: &str = "set-aside";

/// What a Parquet root says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    /// The root's id: the ledger's target for its commits.
    pub id: String,
    /// The IANA zone its `dt=` days are cut in.
    pub timezone: String,
    /// When the root was first written.
    pub created_at: DateTime<Utc>,
    /// Who writes it.
    #[serde(default)]
    pub owner: RootOwner,
    /// The ledger that records its commits ([`Ledger::identity`](crate::ledger::Ledger::identity)):
    /// set by the first run, changed only by `ccc-etl adopt-root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<String>,
}

impl RootMeta {
    /// A new root's description: a fresh id, days cut in `timezone`, written by `owner`.
    pub fn new(timezone: Tz, owner: RootOwner) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            timezone: timezone.name().to_string(),
            created_at: Utc::now(),
            owner,
            ledger: None,
        }
    }
}

/// A day file found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Table.
    pub table: Table,
    /// Local day.
    pub day: NaiveDate,
    /// Where it is: a path, or `scheme://bucket/key`.
    pub location: String,
    /// ETag: modification time and size.
    pub etag: String,
}

/// A folder in a table's folder: a local day's (`dt=YYYY-MM-DD`), or anything else found there.
/// The one place a partition's name is written and read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Partition {
    /// `dt=YYYY-MM-DD`.
    Day(NaiveDate),
    /// A folder whose name is not a day's (`dt=garbage`, `backup`).
    Other(String),
}

impl Partition {
    /// The folder name of a day.
    pub fn day_dir(day: NaiveDate) -> String {
        format!("dt={}", day.format("%Y-%m-%d"))
    }

    /// What a folder name is.
    pub fn parse(name: &str) -> Self {
        name.strip_prefix("dt=")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .filter(|d| Self::day_dir(*d) == name)
            .map_or_else(|| Self::Other(name.to_string()), Self::Day)
    }

    /// The folder name.
    pub fn dir(&self) -> String {
        match self {
            Self::Day(d) => Self::day_dir(*d),
            Self::Other(name) => name.clone(),
        }
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.dir())
    }
}

/// A file in a table's folder that is not a day's file: a second file in a day's folder (a
/// copy, another tool's output), a file in a folder that is not a day's, or a day file whose
/// rows are not its day's keys. Engines read it as part of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// Table.
    pub table: Table,
    /// The folder it is in.
    pub partition: Partition,
    /// The file's name in that folder.
    pub name: String,
    /// Where it is: a path, or `scheme://bucket/key`.
    pub location: String,
}

impl Stray {
    /// One line for an operator.
    pub fn describe(&self) -> String {
        let what = match &self.partition {
            Partition::Day(_) if self.name == DATA_FILE => {
                "a day file whose rows are not its day's keys"
            }
            Partition::Day(_) => "a second file in a day's folder",
            Partition::Other(_) => "a folder that is not a day's (dt=YYYY-MM-DD)",
        };
        format!(
            "EXTRA FILE {}: {what}, in {} {} (engines read it too); the next run moves it to \
             _ccc_etl/{SET_ASIDE_DIR}/",
            self.location, self.table, self.partition
        )
    }

    /// Where it goes when set aside, relative to the root: `_ccc_etl/set-aside/{table}/{folder}/
    /// {name}.{time}`.
    pub(crate) fn aside_rel(&self) -> String {
        format!(
            "{FILE_LEDGER_DIR}/{SET_ASIDE_DIR}/{}/{}/{}.{}",
            self.table.name(),
            self.partition,
            self.name,
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        )
    }
}

/// What a listing of a root found: the day files, and the other files in day directories.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Day files, by table and day.
    pub files: Vec<Listed>,
    /// Other files in day directories.
    pub strays: Vec<Stray>,
}

/// The paths of one root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// Whether a file name is one of our temporary files (`.part-….tmp`).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// A local file's ETag: its modification time (ns) and size, like `object_store`'s local store
/// without the inode, so a copy that keeps times (`cp -a`, `rsync -a`) keeps its ETags.
pub fn etag(path: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(path)?;
    let mtime = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{mtime:x}-{:x}", m.len()))
}

impl Layout {
    /// The layout of `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `{root}/_ccc_etl`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(FILE_LEDGER_DIR)
    }

    /// The file of one table's rows of one day.
    pub fn day_file(&self, table: Table, day: NaiveDate) -> PathBuf {
        self.root
            .join(table.name())
            .join(Partition::day_dir(day))
            .join(DATA_FILE)
    }

    fn meta_path(&self) -> PathBuf {
        self.state_dir().join(META_FILE)
    }

    /// The root's `root.json`, if it has one.
    pub fn read_meta(&self) -> Result<Option<RootMeta>, RootError> {
        let path = self.meta_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                RootError::invalid(format!(
                    "{} is not a ccc-etl root description: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RootError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    /// Writes `root.json` atomically (temporary file, fsync, rename, fsync the directory).
    pub fn write_meta(&self, meta: &RootMeta) -> Result<(), RootError> {
        let dir = self.state_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| RootError::io(format!("cannot create {}", dir.display()), e))?;
        let text = serde_json::to_vec_pretty(meta).expect("a root description encodes");
        let path = self.meta_path();
        crate::atomic::write_atomic(&path, |mut f| {
            std::io::Write::write_all(&mut f, &text).map(|_| f)
        })
        .map_err(|e| RootError::io(format!("cannot write {}", path.display()), e))
    }

    /// Whether an older ccc-etl wrote here before roots had ids (its `_ccc_etl/` exists).
    pub fn has_state_without_meta(&self) -> bool {
        self.state_dir().is_dir() && !self.meta_path().exists()
    }

    /// Every day file, one directory listing per table; temporary files are not listed.
    pub fn list(&self) -> Result<Vec<Listed>, RootError> {
        self.list_all().map(|l| l.files)
    }

    /// Every day file, and every other file in a day's directory (temporary files of ours
    /// aside): a listing per table and per day.
    pub fn list_all(&self) -> Result<Listing, RootError> {
        let mut out = Listing::default();
        for table in Table::ALL {
            let dir = self.root.join(table.name());
            let days = match std::fs::read_dir(&dir) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RootError::io(format!("cannot list {}", dir.display()), e)),
            };
            for entry in days.flatten() {
                let Some(partition) = entry.file_name().to_str().map(Partition::parse) else {
                    continue;
                };
                list_partition(table, partition, &entry.path(), &mut out)?;
            }
        }
        out.files.sort_by_key(|a| (a.table, a.day));
        out.strays.sort_by(|a, b| {
            (a.table, &a.partition, &a.name).cmp(&(b.table, &b.partition, &b.name))
        });
        Ok(out)
    }

    /// Moves a stray file to `_ccc_etl/set-aside/{table}/{folder}/{name}.{time}`, where engines
    /// do not read it (never deleted); its folder goes once empty. Returns the new path.
    pub fn set_aside(&self, stray: &Stray) -> Result<PathBuf, RootError> {
        let to = self.root.join(stray.aside_rel());
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| RootError::io(format!("cannot create {}", dir.display()), e))?;
        }
        std::fs::rename(&stray.location, &to).map_err(|e| {
            RootError::io(
                format!("cannot move {} to {}", stray.location, to.display()),
                e,
            )
        })?;
        if let Some(parent) = Path::new(&stray.location).parent() {
            // Only an empty folder is removed; anything else in it stays.
            if std::fs::remove_dir(parent).is_err() {
                let _ = File::open(parent).and_then(|d| d.sync_all());
            }
        }
        Ok(to)
    }

    /// Removes temporary files a crashed run left in the day directories; returns how many.
    /// Only safe under the root's lock.
    pub fn remove_stale_temp_files(&self) -> usize {
        let mut removed = 0;
        for table in Table::ALL {
            let Ok(days) = std::fs::read_dir(self.root.join(table.name())) else {
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

    /// Takes the root's exclusive lock, or says which root is held.
    pub fn lock(&self) -> Result<File, LockError> {
        let dir = self.state_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| LockError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LockError::Io(format!("cannot open {}: {e}", path.display())))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held(format!(
                "another ccc-etl run is writing to {} (lock {} is held); wait for it to finish \
                 (several workers can share a job with [postgres] and a Parquet root on object \
                 storage)",
                self.root.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(LockError::Io(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }

    /// Moves a damaged day file to `_ccc_etl/damaged/{table}/dt=…/part-00000.parquet.{time}`,
    /// where engines do not read it and an operator can still look at it. Returns the new path.
    pub fn quarantine(&self, table: Table, day: NaiveDate) -> Result<PathBuf, RootError> {
        let from = self.day_file(table, day);
        let dir = self
            .state_dir()
            .join(DAMAGED_DIR)
            .join(table.name())
            .join(Partition::day_dir(day));
        std::fs::create_dir_all(&dir)
            .map_err(|e| RootError::io(format!("cannot create {}", dir.display()), e))?;
        let to = dir.join(format!(
            "{DATA_FILE}.{}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        std::fs::rename(&from, &to).map_err(|e| {
            RootError::io(
                format!(
                    "cannot move the damaged file {} to {}",
                    from.display(),
                    to.display()
                ),
                e,
            )
        })?;
        if let Some(parent) = from.parent() {
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(to)
    }

    /// The epoch-ms range of a local day.
    pub fn day_range(tz: Tz, day: NaiveDate) -> (i64, i64) {
        (
            crate::plan::local_day_start(tz, day),
            crate::plan::local_day_start(tz, day.succ_opt().unwrap_or(day)),
        )
    }
}

/// The files of one table's folder `dir` (named `partition`): its day file, and any other file
/// as a stray (temporary files of ours aside).
fn list_partition(
    table: Table,
    partition: Partition,
    dir: &Path,
    out: &mut Listing,
) -> Result<(), RootError> {
    let files = match std::fs::read_dir(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(RootError::io(format!("cannot list {}", dir.display()), e));
        }
    };
    for f in files.flatten() {
        let path = f.path();
        let Some(file) = f.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if is_temp_name(&file) || !f.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let day = match &partition {
            Partition::Day(day) if file == DATA_FILE => *day,
            _ => {
                out.strays.push(Stray {
                    table,
                    partition: partition.clone(),
                    name: file,
                    location: path.display().to_string(),
                });
                continue;
            }
        };
        match etag(&path) {
            Ok(etag) => out.files.push(Listed {
                table,
                day,
                location: path.display().to_string(),
                etag,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RootError::io(format!("cannot stat {}", path.display()), e));
            }
        }
    }
    Ok(())
}

/// Why the root's lock could not be taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    /// Another run holds it.
    #[error("{0}")]
    Held(String),
    /// The file system refused.
    #[error("{0}")]
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_finds_day_files_with_etags_that_change_when_the_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        let day = NaiveDate::from_ymd_opt(2026, 11, 3).unwrap();
        let p = l.day_file(Table::Outbound, day);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"one").unwrap();
        std::fs::write(p.with_file_name(".part-00000.parquet.x.tmp"), b"tmp").unwrap();
        std::fs::create_dir_all(dir.path().join("outbound_trend/not-a-day")).unwrap();
        let listed = l.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].table, listed[0].day), (Table::Outbound, day));
        std::fs::write(&p, b"other content").unwrap();
        assert_ne!(l.list().unwrap()[0].etag, listed[0].etag);
        let moved = l.quarantine(Table::Outbound, day).unwrap();
        assert!(moved.starts_with(l.state_dir().join("damaged")));
        assert_eq!(std::fs::read(&moved).unwrap(), b"other content");
        assert!(l.list().unwrap().is_empty());
    }

    #[test]
    fn root_meta_round_trips_and_a_fresh_root_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        assert_eq!(l.read_meta().unwrap(), None);
        assert!(!l.has_state_without_meta());
        let meta = RootMeta {
            id: "abc".into(),
            timezone: "Asia/Shanghai".into(),
            created_at: Utc::now(),
            owner: RootOwner::Demo,
            ledger: Some("postgresql:abc".into()),
        };
        l.write_meta(&meta).unwrap();
        assert_eq!(l.read_meta().unwrap(), Some(meta));
    }

    #[test]
    fn a_partition_is_a_day_only_under_the_name_it_is_written_with() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 3).unwrap();
        assert_eq!(Partition::parse("dt=2026-11-03"), Partition::Day(day));
        assert_eq!(Partition::Day(day).dir(), "dt=2026-11-03");
        for other in [
            "dt=garbage",
            "dt=2026-11-3",
            "dt=2026-02-30",
            "2026-11-03",
            "dt=",
        ] {
            assert_eq!(
                Partition::parse(other),
                Partition::Other(other.into()),
                "{other}"
            );
            assert_eq!(Partition::parse(other).dir(), other);
        }
    }
}
