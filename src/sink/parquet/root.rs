//! A Parquet root wherever it lives: a local directory ([`Layout`]) or an object store
//! ([`ObjectRoot`]). The sink, `status`, `verify` and the reconciliation before a run read it
//! through this one type, and both fail with one error, [`RootError`], whose kind (transient,
//! refused, invalid) comes from the store's own error.
//!
//! Writing a day stays two paths (`merge::write_day` and `merge::write_day_object`), because
//! what makes a write safe differs: a local root has one writer, the holder of its lock file,
//! and a day file is replaced by a rename after the file and then its directory are fsynced; a
//! root on object storage has many writers, each day under a lock in PostgreSQL, files created
//! or replaced by conditional PUTs against the ETag read, and every window's lease checked under
//! that lock. object_store's `LocalFileSystem` (with `with_fsync`) could carry the local root
//! through the object path, at the price of a PostgreSQL lock per day for a root that has no
//! second writer. What the two paths share (merging a day, encoding, the day's keys) is one
//! code.

use std::sync::Arc;

use chrono::NaiveDate;

use super::error::RootError;
use super::layout::{Layout, Listed, Listing, RootMeta, Stray};
use super::object::ObjectRoot;
use super::{ReadError, RootCount, StoredRow};
use crate::config::{ParquetConfig, RootUrl};
use crate::record::Table;

/// A Parquet root.
#[derive(Debug, Clone)]
pub enum Root {
    /// A local directory.
    Local(Layout),
    /// A bucket and prefix on an object store.
    Object(Arc<ObjectRoot>),
}

impl Root {
    /// The root `[parquet]` configures (without any lock or PostgreSQL).
    pub fn open(pq: &ParquetConfig, credentials: crate::config::Choice) -> Result<Self, RootError> {
        Ok(match &pq.root {
            RootUrl::Local(p) => Root::Local(Layout::new(p)),
            RootUrl::Object(url) => Root::Object(Arc::new(ObjectRoot::open(pq, url, credentials)?)),
        })
    }

    /// The local layout, when the root is a directory.
    pub fn local(&self) -> Option<&Layout> {
        match self {
            Root::Local(l) => Some(l),
            Root::Object(_) => None,
        }
    }

    /// The root, for messages.
    pub fn display(&self) -> String {
        match self {
            Root::Local(l) => l.root().display().to_string(),
            Root::Object(o) => o.url().to_string(),
        }
    }

    /// Where one table's day file is, for messages.
    pub fn location(&self, table: Table, day: NaiveDate) -> String {
        match self {
            Root::Local(l) => l.day_file(table, day).display().to_string(),
            Root::Object(o) => o.location(table, day),
        }
    }

    /// The root's `root.json`, if it has one.
    pub async fn read_meta(&self) -> Result<Option<RootMeta>, RootError> {
        match self {
            Root::Local(l) => l.read_meta(),
            Root::Object(o) => o.read_meta().await,
        }
    }

    /// Writes the root's `root.json` (atomically).
    pub async fn write_meta(&self, meta: &RootMeta) -> Result<(), RootError> {
        match self {
            Root::Local(l) => l.write_meta(meta),
            Root::Object(o) => o.write_meta(meta).await,
        }
    }

    /// Whether an older version wrote here before roots had ids (local roots only: object
    /// storage came later).
    pub fn has_state_without_meta(&self) -> bool {
        match self {
            Root::Local(l) => l.has_state_without_meta(),
            Root::Object(_) => false,
        }
    }

    /// Every day file with its ETag.
    pub async fn list(&self) -> Result<Vec<Listed>, RootError> {
        match self {
            Root::Local(l) => {
                let l = l.clone();
                tokio::task::spawn_blocking(move || l.list())
                    .await
                    .map_err(|e| RootError::transient(format!("listing task failed: {e}")))?
            }
            Root::Object(o) => o.list().await,
        }
    }

    /// Every day file with its ETag, and every other file in a day's directory.
    pub async fn list_all(&self) -> Result<Listing, RootError> {
        match self {
            Root::Local(l) => {
                let l = l.clone();
                tokio::task::spawn_blocking(move || l.list_all())
                    .await
                    .map_err(|e| RootError::transient(format!("listing task failed: {e}")))?
            }
            Root::Object(o) => o.list_all().await,
        }
    }

    /// Moves a stray file where engines do not read it (never deleted); returns where it went.
    pub async fn set_aside(&self, stray: &Stray) -> Result<String, RootError> {
        match self {
            Root::Local(l) => l.set_aside(stray).map(|p| p.display().to_string()),
            Root::Object(o) => o.set_aside(stray).await,
        }
    }

    /// Every row of one table's day file (none when there is no file).
    pub async fn read_rows(
        &self,
        table: Table,
        day: NaiveDate,
    ) -> Result<Vec<StoredRow>, ReadError> {
        match self {
            Root::Local(l) => {
                let path = l.day_file(table, day);
                tokio::task::spawn_blocking(move || {
                    if path.exists() {
                        super::read_file(&path, table)
                    } else {
                        Ok(vec![])
                    }
                })
                .await
                .unwrap_or_else(|e| Err(task_failed(e)))
            }
            Root::Object(o) => {
                let location = o.location(table, day);
                match o.fetch(table, day).await? {
                    Some(f) => tokio::task::spawn_blocking(move || {
                        super::read_rows(f.bytes, &location, table)
                    })
                    .await
                    .unwrap_or_else(|e| Err(task_failed(e))),
                    None => Ok(vec![]),
                }
            }
        }
    }

    /// Rows per series in the listed files; a damaged file is a finding, not an error.
    pub async fn count_rows_by_series(&self, listing: &[Listed]) -> RootCount {
        let mut out = RootCount::default();
        for f in listing {
            let counted = match self {
                Root::Local(l) => {
                    let path = l.day_file(f.table, f.day);
                    let table = f.table;
                    tokio::task::spawn_blocking(move || super::count_file(&path, table))
                        .await
                        .unwrap_or_else(|e| Err(task_failed(e)))
                }
                Root::Object(o) => match o.fetch(f.table, f.day).await {
                    Ok(Some(got)) => {
                        let (location, table) = (f.location.clone(), f.table);
                        tokio::task::spawn_blocking(move || {
                            super::count_bytes(got.bytes, &location, table)
                        })
                        .await
                        .unwrap_or_else(|e| Err(task_failed(e)))
                    }
                    Ok(None) => Ok(Default::default()),
                    Err(e) => Err(e),
                },
            };
            match counted {
                Ok(rows) => {
                    for (k, n) in rows {
                        *out.by_table
                            .entry((k.0.clone(), k.1.clone(), f.table))
                            .or_default() += n;
                        *out.rows.entry(k).or_default() += n;
                    }
                }
                Err(e) => out.unreadable.push((f.table, f.day, e)),
            }
        }
        out
    }

    /// Moves a damaged day file where engines do not read it; returns where it went.
    pub async fn quarantine(&self, table: Table, day: NaiveDate) -> Result<String, RootError> {
        match self {
            Root::Local(l) => l.quarantine(table, day).map(|p| p.display().to_string()),
            Root::Object(o) => o.quarantine(table, day).await,
        }
    }
}

fn task_failed(e: tokio::task::JoinError) -> ReadError {
    ReadError::Io {
        refused: false,
        location: String::new(),
        detail: format!("reader task failed: {e}"),
    }
}
