//! The ledger in memory (tests), and the index the file ledger keeps of its lines.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    DayFile, Ledger, LedgerEntry, LedgerError, RunKind, RunRecord, RunState, RunStatus, SinkId,
    WindowStatus, drift_of,
};
use crate::record::{MediaType, Table};

#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) committed: HashMap<(String, MediaType, SinkId), Vec<(i64, i64)>>,
    pub(super) files: HashMap<(String, Table, NaiveDate), DayFile>,
}

impl Index {
    pub(super) fn apply(&mut self, e: &LedgerEntry) {
        if e.status == WindowStatus::Committed {
            self.committed
                .entry((e.key.instance_id.clone(), e.key.media_type, e.sink_id()))
                .or_default()
                .push((e.key.start_ms, e.key.end_ms));
        }
    }

    pub(super) fn get(&self, instance: &str, media: MediaType, sink: &SinkId) -> Vec<(i64, i64)> {
        self.committed
            .get(&(instance.to_string(), media, sink.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// Removes the windows of `sink` overlapping `ranges`; returns how many.
    /// Takes back `sink`'s windows overlapping `ranges`; returns their spans.
    pub(super) fn invalidate(&mut self, sink: &SinkId, ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
        let mut taken = vec![];
        for ((_, _, s), windows) in self.committed.iter_mut() {
            if s != sink {
                continue;
            }
            windows.retain(|&(a, b)| {
                let overlaps = ranges.iter().any(|&(x, y)| a < y && x < b);
                if overlaps {
                    taken.push((a, b));
                }
                !overlaps
            });
        }
        taken.sort_unstable();
        taken.dedup();
        taken
    }

    pub(super) fn apply_file(&mut self, file: &DayFile, forgotten: bool) {
        let k = (file.target.clone(), file.table, file.day);
        if forgotten {
            self.files.remove(&k);
        } else {
            self.files.insert(k, file.clone());
        }
    }

    pub(super) fn files_of(&self, target: &str) -> Vec<DayFile> {
        let mut v: Vec<DayFile> = self
            .files
            .values()
            .filter(|f| f.target == target)
            .cloned()
            .collect();
        v.sort_by_key(|a| (a.table, a.day));
        v
    }

    pub(super) fn adopt(&mut self, sink: &SinkId) -> u64 {
        let legacy: Vec<_> = self
            .committed
            .keys()
            .filter(|(_, _, s)| s.kind == sink.kind && s.target.is_empty())
            .cloned()
            .collect();
        let mut n = 0;
        for k in legacy {
            let ranges = self.committed.remove(&k).unwrap_or_default();
            n += ranges.len() as u64;
            self.committed
                .entry((k.0, k.1, sink.clone()))
                .or_default()
                .extend(ranges);
        }
        n
    }
}

/// A ledger in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    pub(super) index: Mutex<Index>,
    entries: Mutex<Vec<LedgerEntry>>,
    successes: Mutex<HashMap<RunKind, DateTime<Utc>>>,
    drift: Mutex<crate::record::Drift>,
    /// Every run as last recorded, in the order they started.
    runs: Mutex<Vec<RunRecord>>,
}

impl MemoryLedger {
    pub(super) fn note_run(&self, run: &RunRecord) {
        {
            let mut runs = self.runs.lock().expect("ledger lock");
            match runs.iter_mut().find(|r| r.run_id == run.run_id) {
                Some(r) => *r = run.clone(),
                None => runs.push(run.clone()),
            }
        }
        if let Some(d) = drift_of(run.summary.as_ref()) {
            self.drift.lock().expect("ledger lock").merge(&d);
        }
        if let (Some(done), RunState::Ended(RunStatus::Ok)) = (run.finished_at, run.status) {
            let mut m = self.successes.lock().expect("ledger lock");
            let e = m.entry(run.command).or_insert(done);
            *e = (*e).max(done);
        }
    }

    pub(super) fn latest_runs(&self, limit: usize) -> Vec<RunRecord> {
        let mut runs = self.runs.lock().expect("ledger lock").clone();
        runs.sort_by_key(|r| std::cmp::Reverse(r.started_at));
        runs.truncate(limit);
        runs
    }

    pub(super) fn latest_success(&self, command: Option<RunKind>) -> Option<DateTime<Utc>> {
        let m = self.successes.lock().expect("ledger lock");
        match command {
            Some(c) => m.get(&c).copied(),
            None => m.values().max().copied(),
        }
    }
}

impl MemoryLedger {
    /// Every entry recorded.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.entries.lock().expect("ledger lock").clone()
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn committed(
        &self,
        instance: &str,
        media: MediaType,
        sink: &SinkId,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        Ok(self
            .index
            .lock()
            .expect("ledger lock")
            .get(instance, media, sink))
    }
    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.index.lock().expect("ledger lock").apply(entry);
        self.entries
            .lock()
            .expect("ledger lock")
            .push(entry.clone());
        Ok(())
    }
    async fn record_files(&self, files: &[DayFile]) -> Result<(), LedgerError> {
        let mut index = self.index.lock().expect("ledger lock");
        for f in files {
            index.apply_file(f, false);
        }
        Ok(())
    }
    async fn day_files(&self, target: &str) -> Result<Vec<DayFile>, LedgerError> {
        Ok(self.index.lock().expect("ledger lock").files_of(target))
    }
    async fn invalidate(
        &self,
        sink: &SinkId,
        ranges: &[(i64, i64)],
        files: &[(Table, NaiveDate)],
        _reason: &str,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        let mut index = self.index.lock().expect("ledger lock");
        for (table, day) in files {
            index.files.remove(&(sink.target.clone(), *table, *day));
        }
        Ok(index.invalidate(sink, ranges))
    }
    async fn adopt_legacy(&self, sink: &SinkId) -> Result<u64, LedgerError> {
        Ok(self.index.lock().expect("ledger lock").adopt(sink))
    }
    async fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        self.note_run(run);
        Ok(())
    }

    async fn last_success(
        &self,
        command: Option<RunKind>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        Ok(self.latest_success(command))
    }

    async fn fields_seen(&self) -> Result<crate::record::Drift, LedgerError> {
        Ok(self.drift.lock().expect("ledger lock").clone())
    }

    async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        Ok(self.latest_runs(limit))
    }

    async fn identity(&self) -> Result<String, LedgerError> {
        Ok("memory".into())
    }
}
