//! The end-of-run summary: what a run did, for people (`render`) and machines (JSON, the
//! `runs` table, metrics), and the exit code it deserves.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ledger::RunStatus;
use crate::quality::QualityCounts;
use crate::record::{Table, WindowKey, fmt_ms};
use crate::sink::CommitStats;

/// A window that failed for good.
#[derive(Debug, Clone, Serialize)]
pub struct FailedWindow {
    /// The window.
    #[serde(flatten)]
    pub key: WindowKey,
    /// Why.
    pub error: String,
    /// Whether a later run may succeed.
    pub retryable: bool,
}

/// The end-of-run summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Windows planned after subtracting committed ones.
    pub windows_planned: u64,
    /// Windows committed to every sink.
    pub windows_ok: u64,
    /// Windows that failed.
    pub windows_failed: Vec<FailedWindow>,
    /// Windows already committed before this run and skipped.
    pub windows_skipped_committed: u64,
    /// Windows of this run's plan that other workers of the job did.
    #[serde(default)]
    pub windows_done_elsewhere: u64,
    /// Windows this worker had claimed and lost the lease of before writing them (taken over,
    /// or expired while the process was stopped): not fetched further, not written.
    #[serde(default)]
    pub windows_lease_lost: u64,
    /// Rows dropped from Parquet day files they did not belong in (another day's rows, a repeated
    /// key: a file copied or edited by hand) when the day was written again.
    #[serde(default)]
    pub foreign_rows_dropped: u64,
    /// This worker's id, when the run claimed its windows from PostgreSQL.
    #[serde(default)]
    pub worker: Option<String>,
    /// Commits refused because the window's lease had been taken over by another worker.
    #[serde(default)]
    pub fenced_commits: u64,
    /// Writes that landed after this worker had lost the window's lease (not recorded): the run
    /// is not ok.
    #[serde(default)]
    pub late_writes: u64,
    /// Rows committed, per table.
    pub rows: BTreeMap<String, u64>,
    /// Per sink: inserted, revised, unchanged.
    pub sinks: BTreeMap<String, CommitStats>,
    /// HTTP requests sent.
    pub requests: u64,
    /// Retries.
    pub retries: u64,
    /// Throttling answers.
    pub throttled: u64,
    /// Fields the API sent that ccc-etl does not know (with rows carrying them), and known
    /// fields it stopped sending.
    #[serde(default)]
    pub drift: crate::record::Drift,
    /// Where the credentials came from (the provider, never a secret).
    #[serde(default)]
    pub credentials: Option<String>,
    /// Temporary credentials renewed during the run.
    #[serde(default)]
    pub credential_refreshes: u64,
    /// Answers by code.
    pub responses_by_code: BTreeMap<String, u64>,
    /// Rows of a neighbouring window's boundary bucket, left to it (expected).
    pub boundary_rows: u64,
    /// Rows dropped as outside their window, duplicated, or conflicting.
    pub outside_window_rows: u64,
    /// Exact duplicate rows dropped.
    pub duplicate_rows: u64,
    /// Conflicting duplicate rows resolved.
    pub conflicting_rows: u64,
    /// Ranges lost behind the 180-day horizon.
    pub lost: Vec<WindowKey>,
    /// Seconds.
    pub duration_secs: f64,
    /// Whether a run-fatal error stopped the run.
    pub fatal: Option<String>,
    /// Set when a signal (SIGTERM, Ctrl-C) stopped the run: the windows not done, which the next
    /// run fetches.
    pub interrupted: Option<u64>,
    /// Configured instances the service says do not exist; none of their windows is fetched
    /// again in this run, and the run exits 1 until the configuration is fixed.
    pub unknown_instances: std::collections::BTreeSet<String>,
    /// Data-quality violations found in the fetched windows.
    pub quality: QualityCounts,
    /// Rows whose values changed since they were last written (the largest count of any sink).
    pub revisions: u64,
}

impl RunSummary {
    /// How the run ended: failed on a run-fatal error, partial when windows failed.
    pub fn status(&self) -> RunStatus {
        if self.fatal.is_some() || !self.unknown_instances.is_empty() {
            RunStatus::Failed
        } else if !self.windows_failed.is_empty()
            || self.interrupted.is_some()
            || self.late_writes > 0
        {
            RunStatus::Partial
        } else {
            RunStatus::Ok
        }
    }

    /// The process exit code this run deserves.
    pub fn exit_code(&self) -> u8 {
        self.status().exit_code()
    }

    /// A human-readable summary, several lines.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "run {}: {} window(s) ok, {} failed, {} already committed, in {:.1} s\n",
            self.run_id,
            self.windows_ok,
            self.windows_failed.len(),
            self.windows_skipped_committed,
            self.duration_secs
        ));
        s.push_str(&self.render_workers());
        for t in Table::ALL {
            s.push_str(&format!(
                "  {:<15} {} rows\n",
                t.name(),
                self.rows.get(t.name()).copied().unwrap_or(0)
            ));
        }
        for (name, c) in &self.sinks {
            s.push_str(&format!(
                "  sink {name}: {} inserted, {} revised, {} unchanged\n",
                c.inserted, c.revised, c.unchanged
            ));
        }
        s.push_str(&format!(
            "  requests {}, retries {}, throttled {}\n",
            self.requests, self.retries, self.throttled
        ));
        s.push_str(&self.render_drift());
        if let Some(provider) = &self.credentials {
            s.push_str(&format!(
                "  credentials: {provider}, renewed {} time{}\n",
                self.credential_refreshes,
                if self.credential_refreshes == 1 {
                    ""
                } else {
                    "s"
                }
            ));
        }
        s.push_str(&self.render_findings());
        s
    }

    /// The lines about other workers of the job: windows they did, rows and windows dropped.
    fn render_workers(&self) -> String {
        let mut s = String::new();
        if self.windows_done_elsewhere > 0 {
            s.push_str(&format!(
                "  {} window(s) done by other workers of the job\n",
                self.windows_done_elsewhere
            ));
        }
        if self.foreign_rows_dropped > 0 {
            s.push_str(&format!(
                "  {} row(s) dropped from day files they did not belong in (another day's, or a key \
                 repeated)\n",
                self.foreign_rows_dropped
            ));
        }
        if self.windows_lease_lost > 0 {
            s.push_str(&format!(
                "  {} window(s) dropped: this worker lost their leases (taken over, or expired)\n",
                self.windows_lease_lost
            ));
        }
        if self.late_writes > 0 {
            s.push_str(&format!(
                "  {} write(s) landed after this worker lost the window's lease (it was stopped \
                 or cut off): not recorded; the next run checks them\n",
                self.late_writes
            ));
        }
        s
    }

    /// The lines about fields the API started or stopped sending.
    fn render_drift(&self) -> String {
        let mut s = String::new();
        if !self.drift.unknown.is_empty() {
            let named: Vec<String> = self
                .drift
                .unknown
                .iter()
                .map(|(name, n)| {
                    let what = if name.contains('.') && !name.starts_with("Data.") {
                        "rows"
                    } else if name.starts_with("Data.") {
                        "items"
                    } else {
                        "responses"
                    };
                    format!("{name} ({} {what})", thousands(*n))
                })
                .collect();
            s.push_str(&format!(
                "  new fields from the API: {} (an item's fields are kept in its `extra` column; \
                 other arrays and top-level fields are only counted)\n",
                named.join(", ")
            ));
        }
        if !self.drift.missing.is_empty() {
            let named: Vec<&str> = self.drift.missing.iter().map(String::as_str).collect();
            s.push_str(&format!(
                "  fields the API stopped sending: {} (stored as 0)\n",
                named.join(", ")
            ));
        }
        s
    }

    /// The lines about what the data and the run met: revisions, quality, boundary rows,
    /// duplicates, losses, failures.
    fn render_findings(&self) -> String {
        let mut s = String::new();
        if self.revisions > 0 {
            s.push_str(&format!("  revisions found {}\n", self.revisions));
        }
        if self.quality.total() > 0 {
            let kinds: Vec<String> = self
                .quality
                .kinds()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            s.push_str(&format!(
                "  data-quality violations: {}\n",
                kinds.join(", ")
            ));
        }
        if self.boundary_rows > 0 {
            s.push_str(&format!(
                "  {} row(s) at a window's edge left to the neighbouring window they belong to (normal)\n",
                self.boundary_rows
            ));
        }
        if self.duplicate_rows + self.conflicting_rows > 0 {
            s.push_str(&format!(
                "  duplicates dropped {}, conflicts resolved {}\n",
                self.duplicate_rows, self.conflicting_rows
            ));
        }
        for l in &self.lost {
            s.push_str(&format!(
                "  LOST (older than the 180-day horizon): {}/{} {} .. {}\n",
                l.instance_id,
                l.media_type,
                fmt_ms(l.start_ms),
                fmt_ms(l.end_ms)
            ));
        }
        for f in &self.windows_failed {
            s.push_str(&format!("  FAILED {}: {}\n", f.key, f.error));
        }
        for i in &self.unknown_instances {
            s.push_str(&format!(
                "  UNKNOWN INSTANCE {i}: the service has no CCC instance {i} for these credentials \
                 at this endpoint; fix its id in [pipeline] instances, or point [source] endpoint \
                 at the instance's region\n"
            ));
        }
        if let Some(left) = self.interrupted {
            s.push_str(&format!(
                "  STOPPED by a signal: {left} window(s) not done (what was fetched is written); the next run fetches them\n"
            ));
        }
        if let Some(f) = &self.fatal {
            s.push_str(&format!("  STOPPED: {f}\n"));
        }
        s
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
