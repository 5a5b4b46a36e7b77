//! The ledger as append-only JSON-lines files next to the Parquet data, for runs without
//! PostgreSQL.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::memory::MemoryLedger;
use super::{DayFile, Ledger, LedgerEntry, LedgerError, RunKind, RunRecord, SinkId, SinkKind};
use crate::record::{MediaType, Table};

/// A line of the file ledger's `windows.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum WindowLine {
    Entry(LedgerEntry),
    Invalidated(Invalidation),
}

/// Commits taken back (see [`Ledger::invalidate`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Invalidation {
    invalidated: Vec<(i64, i64)>,
    sink: SinkKind,
    #[serde(default)]
    target: String,
    reason: String,
    at: DateTime<Utc>,
}

/// A line of the file ledger's `files.jsonl`: a day file written, or forgotten.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileLine {
    #[serde(flatten)]
    file: DayFile,
    #[serde(default)]
    forgotten: bool,
}

/// Directory of the file ledger under a Parquet root. Starts with `_` so engines skip it.
pub const FILE_LEDGER_DIR: &str = "_ccc_etl";

/// An append-only JSON-lines ledger next to the Parquet data, for runs without PostgreSQL.
///
/// Each record is one line, written and fsynced before the call returns; a line torn by a crash
/// is ignored on reading (its window is simply fetched again). It is used together with the
/// Parquet sink, whose lock on the root keeps a second run out. It lives inside the root it
/// describes, so records written before roots had ids (empty target) belong to that root.
#[derive(Debug)]
pub struct FileLedger {
    dir: PathBuf,
    index: MemoryLedger,
    /// `windows.jsonl`, `files.jsonl`, `runs.jsonl`; `None` when opened read-only.
    files: Option<[Mutex<File>; 3]>,
}

const WINDOWS_FILE: &str = "windows.jsonl";
const FILES_FILE: &str = "files.jsonl";
const RUNS_FILE: &str = "runs.jsonl";

/// Whether a non-empty file's last byte is not a newline.
fn ends_without_newline(f: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> LedgerError {
    LedgerError {
        message: format!("{what} {}: {e}", path.display()),
        retryable: false,
    }
}

/// Applies every readable line of `path` (torn or foreign lines are skipped).
fn replay<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut apply: impl FnMut(T),
) -> Result<(), LedgerError> {
    if !path.exists() {
        return Ok(());
    }
    let f = File::open(path).map_err(|e| io_err("cannot read", path, e))?;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| io_err("cannot read", path, e))?;
        if let Ok(v) = serde_json::from_str::<T>(&line) {
            apply(v);
        }
    }
    Ok(())
}

fn open_append(p: &Path) -> Result<File, LedgerError> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(p)
        .map_err(|e| io_err("cannot open", p, e))?;
    // A line torn by a crash would swallow the next one appended: end it first.
    if ends_without_newline(&mut f).map_err(|e| io_err("cannot read", p, e))? {
        f.write_all(b"\n")
            .and_then(|_| f.sync_data())
            .map_err(|e| io_err("cannot append to", p, e))?;
    }
    Ok(f)
}

impl FileLedger {
    /// Opens (creating) the ledger under `root`.
    pub fn open(root: &Path) -> Result<Self, LedgerError> {
        let dir = root.join(FILE_LEDGER_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let mut ledger = Self::open_read_only(root)?;
        ledger.files = Some([
            Mutex::new(open_append(&dir.join(WINDOWS_FILE))?),
            Mutex::new(open_append(&dir.join(FILES_FILE))?),
            Mutex::new(open_append(&dir.join(RUNS_FILE))?),
        ]);
        Ok(ledger)
    }

    /// Reads the ledger under `root` without creating or writing anything (`status`); a root
    /// without a ledger reads as empty.
    pub fn open_read_only(root: &Path) -> Result<Self, LedgerError> {
        let dir = root.join(FILE_LEDGER_DIR);
        let index = MemoryLedger::default();
        {
            let mut ix = index.index.lock().expect("ledger lock");
            replay(&dir.join(WINDOWS_FILE), |line: WindowLine| match line {
                WindowLine::Entry(e) => ix.apply(&e),
                WindowLine::Invalidated(inv) => {
                    ix.invalidate(&SinkId::new(inv.sink, inv.target), &inv.invalidated);
                }
            })?;
            replay(&dir.join(FILES_FILE), |line: FileLine| {
                ix.apply_file(&line.file, line.forgotten)
            })?;
        }
        replay(&dir.join(RUNS_FILE), |run: RunRecord| index.note_run(&run))?;
        Ok(Self {
            dir,
            index,
            files: None,
        })
    }

    /// Where the ledger lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn append<T: Serialize>(&self, which: usize, values: &[T]) -> Result<(), LedgerError> {
        let name = [WINDOWS_FILE, FILES_FILE, RUNS_FILE][which];
        let Some(files) = &self.files else {
            return Err(LedgerError {
                message: format!("{} is open read-only", self.dir.display()),
                retryable: false,
            });
        };
        let mut lines = String::new();
        for v in values {
            lines.push_str(&serde_json::to_string(v).map_err(|e| LedgerError {
                message: e.to_string(),
                retryable: false,
            })?);
            lines.push('\n');
        }
        let mut f = files[which].lock().expect("ledger file lock");
        f.write_all(lines.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| LedgerError {
                message: format!("cannot append to {}: {e}", self.dir.join(name).display()),
                retryable: true,
            })
    }

    /// The sink as older versions recorded it in this root: without a target.
    fn legacy(sink: &SinkId) -> SinkId {
        SinkId::new(sink.kind, "")
    }
}

#[async_trait]
impl Ledger for FileLedger {
    async fn committed(
        &self,
        instance: &str,
        media: MediaType,
        sink: &SinkId,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        let ix = self.index.index.lock().expect("ledger lock");
        let mut v = ix.get(instance, media, sink);
        if !sink.target.is_empty() {
            v.extend(ix.get(instance, media, &Self::legacy(sink)));
        }
        Ok(v)
    }

    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.record_many(std::slice::from_ref(entry)).await
    }

    async fn record_many(&self, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        self.append(0, entries)?;
        let mut index = self.index.index.lock().expect("ledger lock");
        for e in entries {
            index.apply(e);
        }
        Ok(())
    }

    async fn record_files(&self, files: &[DayFile]) -> Result<(), LedgerError> {
        let lines: Vec<FileLine> = files
            .iter()
            .map(|f| FileLine {
                file: f.clone(),
                forgotten: false,
            })
            .collect();
        self.append(1, &lines)?;
        let mut index = self.index.index.lock().expect("ledger lock");
        for l in &lines {
            index.apply_file(&l.file, l.forgotten);
        }
        Ok(())
    }

    async fn day_files(&self, target: &str) -> Result<Vec<DayFile>, LedgerError> {
        self.index.day_files(target).await
    }

    async fn invalidate(
        &self,
        sink: &SinkId,
        ranges: &[(i64, i64)],
        files: &[(Table, NaiveDate)],
        reason: &str,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        let mut lines = vec![];
        for s in [sink.clone(), Self::legacy(sink)] {
            lines.push(WindowLine::Invalidated(Invalidation {
                invalidated: ranges.to_vec(),
                sink: s.kind,
                target: s.target,
                reason: reason.to_string(),
                at: Utc::now(),
            }));
        }
        let forgotten: Vec<FileLine> = files
            .iter()
            .map(|(table, day)| FileLine {
                file: DayFile {
                    target: sink.target.clone(),
                    table: *table,
                    day: *day,
                    etag: String::new(),
                    rows: 0,
                },
                forgotten: true,
            })
            .collect();
        self.append(0, &lines)?;
        self.append(1, &forgotten)?;
        let mut index = self.index.index.lock().expect("ledger lock");
        for l in &forgotten {
            index.apply_file(&l.file, l.forgotten);
        }
        let mut taken = index.invalidate(sink, ranges);
        taken.extend(index.invalidate(&Self::legacy(sink), ranges));
        taken.sort_unstable();
        taken.dedup();
        Ok(taken)
    }

    async fn adopt_legacy(&self, _sink: &SinkId) -> Result<u64, LedgerError> {
        // Records without a target already count for this root (see `committed`).
        Ok(0)
    }

    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        self.append(2, std::slice::from_ref(run))?;
        self.index.note_run(run);
        Ok(())
    }

    async fn last_success(
        &self,
        command: Option<RunKind>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        Ok(self.index.latest_success(command))
    }

    async fn fields_seen(&self) -> Result<crate::record::Drift, LedgerError> {
        self.index.fields_seen().await
    }

    async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        Ok(self.index.latest_runs(limit))
    }

    async fn identity(&self) -> Result<String, LedgerError> {
        Ok("file".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::WindowStatus;
    use crate::ledger::tests::entry;

    #[tokio::test]
    async fn the_file_ledger_survives_reopening_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = FileLedger::open(dir.path()).unwrap();
            l.record(&entry(0, 10, SinkKind::Parquet, WindowStatus::Committed))
                .await
                .unwrap();
        }
        let path = dir.path().join(FILE_LEDGER_DIR).join("windows.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"instance_id\":\"i\",\"media_ty").unwrap();
        drop(f);
        let l = FileLedger::open(dir.path()).unwrap();
        assert_eq!(
            l.committed(
                "i",
                MediaType::Audio,
                &SinkId::new(SinkKind::Parquet, "root-1")
            )
            .await
            .unwrap(),
            vec![(0, 10)]
        );
        // A record appended after the torn line is not swallowed by it.
        l.record_many(&[
            entry(10, 20, SinkKind::Parquet, WindowStatus::Committed),
            entry(20, 30, SinkKind::Parquet, WindowStatus::Committed),
        ])
        .await
        .unwrap();
        drop(l);
        let l = FileLedger::open(dir.path()).unwrap();
        let mut got = l
            .committed(
                "i",
                MediaType::Audio,
                &SinkId::new(SinkKind::Parquet, "root-1"),
            )
            .await
            .unwrap();
        got.sort();
        assert_eq!(got, vec![(0, 10), (10, 20), (20, 30)]);
    }
}
