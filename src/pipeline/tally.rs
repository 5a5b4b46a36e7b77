//! The run's tally: the state of every window between its fetch and its last sink's report, and
//! the summary it adds up to. Synchronous and pure: the pipeline turns what happens into
//! [`Event`]s and applies them here, in whatever order they come.
//!
//! A window is ok once it was fetched and *each* configured sink reported it durable (a sink
//! reporting twice does not stand in for another), and it counts once. A window any sink failed is
//! failed, once, whatever else arrives for it.

use std::collections::{BTreeSet, HashMap};

use super::summary::{FailedWindow, RunSummary};
use crate::dedup::DedupCounts;
use crate::ledger::SinkKind;
use crate::quality::QualityCounts;
use crate::record::{Table, WindowKey};
use crate::sink::CommitStats;

/// What happened to a window (or a sink) during the run.
#[derive(Debug, Clone)]
pub enum Event {
    /// The window's rows were fetched and handed to every sink.
    Fetched {
        /// The window as fetched.
        key: WindowKey,
        /// Rows per table.
        rows: [u64; 3],
        /// What de-duplication found.
        dedup: DedupCounts,
        /// The part of the window that aged out before it was sent.
        lost: Option<WindowKey>,
        /// Data-quality findings.
        quality: QualityCounts,
        /// Fields the API sent that ccc-etl does not know, and known ones it did not send.
        drift: crate::record::Drift,
    },
    /// A sink made these windows durable and recorded them.
    Durable {
        /// The sink.
        sink: SinkKind,
        /// The windows.
        keys: Vec<WindowKey>,
    },
    /// What a sink's writes inserted, revised and left unchanged.
    Stats {
        /// The sink.
        sink: SinkKind,
        /// The counts.
        stats: CommitStats,
    },
    /// The fetch failed for good.
    FetchFailed(FailedWindow),
    /// A sink could not make the window durable.
    SinkFailed(FailedWindow),
    /// The window aged out of the horizon before it was sent.
    Lost(WindowKey),
    /// The service says this instance does not exist.
    UnknownInstance(String),
    /// Every further request or write would fail: stop the run.
    Fatal(Fatal),
    /// Another worker of the job did this window.
    DoneElsewhere(WindowKey),
    /// Rows dropped from day files they did not belong in (another day's, a repeated key).
    ForeignRows(u64),
    /// This worker lost the window's lease (taken over, or expired) before it was written: it is
    /// another worker's to do, or this one's once it claims it back.
    LeaseLost(WindowKey),
    /// A sink refused the window's write: this worker no longer holds its lease. Like
    /// `LeaseLost`, after the fetch.
    Fenced(WindowKey),
    /// A sink's write landed after this worker had lost the window's lease: not recorded, and
    /// the run does not end ok (the store may hold rows older than the new holder's).
    Late {
        /// The sink written.
        sink: SinkKind,
        /// The window.
        key: WindowKey,
    },
}

/// Why a run stops before its end: no further request, or no further write, can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// The API refuses this configuration (credentials, permissions, a disabled service), with
    /// what to do about it when known.
    #[error("{err}{hint}", err = .0, hint = .0.hint().map(|h| format!(": {h}")).unwrap_or_default())]
    Api(crate::ccc::error::ApiError),
    /// A sink's store refuses every write (permissions, a missing bucket).
    #[error(transparent)]
    Sink(crate::sink::SinkError),
    /// The job's coordination in PostgreSQL failed: no window can be claimed.
    #[error("{0}")]
    Coordination(String),
}

/// What applying an event means for the caller (progress, stopping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to show.
    Quiet,
    /// A window is done with the network (fetched with these rows, failed, or lost).
    WindowDone {
        /// Rows it delivered.
        rows: u64,
    },
    /// The run must stop.
    Stop(Fatal),
}

/// One window between fetch and its last sink's report.
#[derive(Debug, Default)]
struct Pending {
    rows: Option<[u64; 3]>,
    reported: BTreeSet<SinkKind>,
    failed: bool,
    /// The worker lost its lease: done once claimed back and written, or done elsewhere.
    lost: bool,
}

/// The run's windows in flight and its summary.
#[derive(Debug)]
pub struct Tally {
    sinks: BTreeSet<SinkKind>,
    windows: HashMap<WindowKey, Pending>,
    summary: RunSummary,
    /// Windows counted ok since the last [`Tally::take_ok`].
    ok: Vec<WindowKey>,
    /// Windows whose lease was lost since the last [`Tally::take_lost`].
    newly_lost: Vec<WindowKey>,
}

impl Tally {
    /// A tally for a run writing to `sinks`, adding to `summary`.
    pub fn new(sinks: impl IntoIterator<Item = SinkKind>, summary: RunSummary) -> Self {
        Self {
            sinks: sinks.into_iter().collect(),
            windows: HashMap::new(),
            summary,
            ok: Vec::new(),
            newly_lost: Vec::new(),
        }
    }

    /// Whether windows whose lease was lost wait to be claimed again.
    pub fn has_lost(&self) -> bool {
        !self.newly_lost.is_empty()
    }

    /// The windows whose lease this worker lost since the last call: to claim again.
    pub fn take_lost(&mut self) -> Vec<WindowKey> {
        std::mem::take(&mut self.newly_lost)
    }

    /// The windows counted ok since the last call.
    pub fn take_ok(&mut self) -> Vec<WindowKey> {
        std::mem::take(&mut self.ok)
    }

    /// The summary so far.
    pub fn summary(&self) -> &RunSummary {
        &self.summary
    }

    /// A signal stopped the run with `windows_left` windows not done.
    pub fn interrupt(&mut self, windows_left: u64) {
        self.summary.interrupted = Some(windows_left);
    }

    /// A run-fatal error stopped the run: logged once at ERROR, as the summary says it. The
    /// first one counts (the windows still in flight may fail the same way).
    pub fn stop(&mut self, fatal: Fatal) {
        if self.summary.fatal.is_some() {
            return;
        }
        tracing::error!("the run stops: {fatal}");
        self.summary.fatal = Some(fatal.to_string());
    }

    /// The summary, once the run is over: a window whose lease was lost, and that was neither
    /// claimed back and written nor done elsewhere, failed (the next run fetches it).
    pub fn into_summary(mut self) -> RunSummary {
        let mut lost: Vec<WindowKey> = self
            .windows
            .iter()
            .filter(|(_, p)| p.lost && !p.failed)
            .map(|(k, _)| k.clone())
            .collect();
        lost.sort();
        for key in lost {
            self.summary.windows_failed.push(FailedWindow {
                key,
                error: "this worker lost the window's lease and could not claim it back; the \
                        next run fetches it"
                    .into(),
                retryable: true,
            });
        }
        self.summary
    }

    /// The worker lost `key`'s lease (again, perhaps: each claim is an attempt of its own).
    /// A window whose fetch failed for good.
    fn fetch_failed(&mut self, f: FailedWindow) -> Step {
        log_failed(&f);
        self.windows.entry(f.key.clone()).or_default().failed = true;
        self.summary.windows_failed.push(f);
        Step::WindowDone { rows: 0 }
    }

    /// `sink`'s write of `key` landed after the lease was lost: the window is lost, and the run
    /// is not ok.
    fn late(&mut self, sink: SinkKind, key: WindowKey) {
        tracing::error!(
            sink = %sink,
            window = %key,
            "written after this worker lost the window's lease (it was stopped or cut off from \
             PostgreSQL for longer than a lease): not recorded; the run does not end ok, and the \
             next run checks the root and fetches the day again if its file changed"
        );
        self.summary.late_writes += 1;
        self.lose(key);
    }

    fn lose(&mut self, key: WindowKey) {
        self.windows.entry(key.clone()).or_default().lost = true;
        if !self.newly_lost.contains(&key) {
            self.newly_lost.push(key);
        }
    }

    /// What `sink` did with rows, added up.
    fn add_stats(&mut self, sink: SinkKind, stats: CommitStats) {
        *self
            .summary
            .sinks
            .entry(sink.as_str().to_string())
            .or_default() += stats;
    }

    /// `sink` made `key`'s rows durable.
    fn durable(&mut self, sink: SinkKind, key: &WindowKey) {
        self.windows
            .entry(key.clone())
            .or_default()
            .reported
            .insert(sink);
        self.settle(key);
    }

    /// A sink failed a window: logged and counted once, however many sinks failed it.
    fn sink_failed(&mut self, f: FailedWindow) {
        let p = self.windows.entry(f.key.clone()).or_default();
        if !p.failed {
            log_failed(&f);
            p.failed = true;
            self.summary.windows_failed.push(f);
        }
    }

    /// `k` aged out of the horizon before it was sent.
    fn aged_out(&mut self, k: WindowKey) {
        tracing::warn!(window = %k, "LOST: the window aged out of the 180-day horizon before it was sent");
        self.summary.lost.push(k);
    }

    /// Another worker finished `key`: a window this worker lost and another finished is
    /// nobody's failure.
    fn done_elsewhere(&mut self, key: &WindowKey) {
        self.windows.remove(key);
        self.summary.windows_done_elsewhere += 1;
    }

    /// The lease of `key` was lost while it was fetched.
    fn lease_lost(&mut self, key: WindowKey) {
        self.summary.windows_lease_lost += 1;
        self.lose(key);
    }

    /// Applies one event.
    pub fn apply(&mut self, event: Event) -> Step {
        match event {
            Event::Fetched {
                key,
                rows,
                dedup,
                lost,
                quality,
                drift,
            } => {
                self.drift(&drift);
                self.fetched(&key, rows, dedup, lost, quality)
            }
            Event::Durable { sink, keys } => {
                keys.iter().for_each(|key| self.durable(sink, key));
                Step::Quiet
            }
            Event::Stats { sink, stats } => {
                self.add_stats(sink, stats);
                Step::Quiet
            }
            Event::FetchFailed(f) => self.fetch_failed(f),
            Event::SinkFailed(f) => {
                self.sink_failed(f);
                Step::Quiet
            }
            Event::Lost(k) => {
                self.aged_out(k);
                Step::WindowDone { rows: 0 }
            }
            Event::UnknownInstance(instance) => {
                self.summary.unknown_instances.insert(instance);
                Step::Quiet
            }
            Event::Fatal(fatal) => Step::Stop(fatal),
            Event::DoneElsewhere(key) => {
                self.done_elsewhere(&key);
                Step::WindowDone { rows: 0 }
            }
            Event::ForeignRows(n) => {
                self.summary.foreign_rows_dropped += n;
                Step::Quiet
            }
            Event::LeaseLost(key) => {
                self.lease_lost(key);
                Step::WindowDone { rows: 0 }
            }
            Event::Fenced(key) => {
                self.lose(key);
                Step::Quiet
            }
            Event::Late { sink, key } => {
                self.late(sink, key);
                Step::Quiet
            }
        }
    }

    /// What the API sent beyond, or short of, the known fields: counted for the summary and
    /// the metrics, and one warning per field per run (not per window).
    fn drift(&mut self, drift: &crate::record::Drift) {
        for name in drift.unknown.keys() {
            if self.summary.drift.unknown.contains_key(name) {
                continue;
            }
            if crate::record::Drift::is_kept(name) {
                tracing::warn!(
                    field = %name,
                    "new field from the API: {name} is not a field ccc-etl knows; rows keep it in \
                     their `extra` column (see docs/operating.md, Schema drift, to adopt it)"
                );
            } else {
                tracing::warn!(
                    field = %name,
                    "new data from the API: {name} is not part of the three reports ccc-etl stores; \
                     it is counted (status and the metrics show it), not kept"
                );
            }
        }
        for name in &drift.missing {
            if !self.summary.drift.missing.contains(name) {
                tracing::warn!(
                    field = %name,
                    "the API stopped sending {name}: rows without it are stored with 0 and \
                     counted as a data-quality violation"
                );
            }
        }
        self.summary.drift.merge(drift);
    }

    /// A window's rows arrived: what they showed goes into the summary.
    fn fetched(
        &mut self,
        key: &WindowKey,
        rows: [u64; 3],
        dedup: DedupCounts,
        lost: Option<WindowKey>,
        quality: QualityCounts,
    ) -> Step {
        let s = &mut self.summary;
        s.lost.extend(lost);
        s.quality += quality;
        s.boundary_rows += dedup.boundary;
        s.outside_window_rows += dedup.outside;
        s.duplicate_rows += dedup.duplicates;
        s.conflicting_rows += dedup.conflicts;
        self.windows.entry(key.clone()).or_default().rows = Some(rows);
        self.settle(key);
        Step::WindowDone {
            rows: rows.iter().sum(),
        }
    }

    /// Counts the window ok if it is fetched and every sink reported it, then forgets it.
    fn settle(&mut self, key: &WindowKey) {
        let Some(p) = self.windows.get(key) else {
            return;
        };
        let Some(rows) = p.rows else {
            return;
        };
        if p.failed || !self.sinks.is_subset(&p.reported) {
            return;
        }
        self.summary.windows_ok += 1;
        for (table, n) in Table::ALL.iter().zip(rows) {
            *self
                .summary
                .rows
                .entry(table.name().to_string())
                .or_default() += n;
        }
        self.windows.remove(key);
        self.ok.push(key.clone());
    }
}

/// One error line per failed window, with the window's own instance and media type.
fn log_failed(f: &FailedWindow) {
    tracing::error!(
        window = %f.key,
        instance = %f.key.instance_id,
        media_type = %f.key.media_type,
        error = %f.error,
        "window failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ccc::error::ApiError;
    use crate::record::MediaType;

    fn key(start: i64) -> WindowKey {
        WindowKey {
            instance_id: "i".into(),
            media_type: MediaType::Audio,
            start_ms: start,
            end_ms: start + 10,
        }
    }

    fn fetched(k: &WindowKey) -> Event {
        Event::Fetched {
            key: k.clone(),
            rows: [1, 2, 3],
            dedup: DedupCounts::default(),
            lost: None,
            quality: QualityCounts::default(),
            drift: Default::default(),
        }
    }

    fn durable(sink: SinkKind, k: &WindowKey) -> Event {
        Event::Durable {
            sink,
            keys: vec![k.clone()],
        }
    }

    fn failed(k: &WindowKey) -> FailedWindow {
        FailedWindow {
            key: k.clone(),
            error: "e".into(),
            retryable: true,
        }
    }

    fn tally() -> Tally {
        Tally::new(
            [SinkKind::Postgres, SinkKind::Parquet],
            RunSummary::default(),
        )
    }

    #[test]
    fn a_window_is_ok_once_every_sink_reported_it_in_any_order_and_counts_once() {
        let k = key(0);
        let events = [
            fetched(&k),
            durable(SinkKind::Postgres, &k),
            durable(SinkKind::Parquet, &k),
        ];
        // Every order of the three events.
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let mut t = tally();
            for i in order {
                t.apply(events[i].clone());
            }
            assert_eq!(t.summary().windows_ok, 1, "{order:?}");
            assert_eq!(t.summary().rows["overall_trend"], 3);
            // A late duplicate report does not count it again.
            t.apply(durable(SinkKind::Parquet, &k));
            assert_eq!(t.summary().windows_ok, 1);
        }
    }

    #[test]
    fn one_sink_reporting_twice_does_not_stand_in_for_another() {
        let k = key(0);
        let mut t = tally();
        t.apply(fetched(&k));
        t.apply(durable(SinkKind::Postgres, &k));
        t.apply(durable(SinkKind::Postgres, &k));
        assert_eq!(t.summary().windows_ok, 0);
        t.apply(durable(SinkKind::Parquet, &k));
        assert_eq!(t.summary().windows_ok, 1);
    }

    #[test]
    fn a_window_a_sink_failed_is_failed_once_and_never_ok() {
        let k = key(0);
        let mut t = tally();
        t.apply(fetched(&k));
        t.apply(Event::SinkFailed(failed(&k)));
        t.apply(Event::SinkFailed(failed(&k)));
        t.apply(durable(SinkKind::Postgres, &k));
        t.apply(durable(SinkKind::Parquet, &k));
        assert_eq!(t.summary().windows_ok, 0);
        assert_eq!(t.summary().windows_failed.len(), 1);
        assert_eq!(t.summary().status(), crate::ledger::RunStatus::Partial);
    }

    #[test]
    fn fetch_failures_and_losses_finish_a_window_and_fatal_stops_the_run() {
        let mut t = tally();
        assert_eq!(
            t.apply(Event::FetchFailed(failed(&key(0)))),
            Step::WindowDone { rows: 0 }
        );
        assert_eq!(t.apply(Event::Lost(key(10))), Step::WindowDone { rows: 0 });
        assert_eq!(t.apply(fetched(&key(20))), Step::WindowDone { rows: 6 });
        assert_eq!(
            t.apply(Event::Fatal(Fatal::Api(ApiError::Credentials(
                "no key".into()
            )))),
            Step::Stop(Fatal::Api(ApiError::Credentials("no key".into())))
        );
        t.stop(Fatal::Sink(crate::sink::SinkError {
            sink: SinkKind::Parquet,
            message: "access denied".into(),
            kind: crate::sink::Failure::Refused,
        }));
        t.stop(Fatal::Api(ApiError::Credentials("later".into())));
        let s = t.into_summary();
        assert_eq!(
            (s.windows_failed.len(), s.lost.len(), s.windows_ok),
            (1, 1, 0)
        );
        // The first reason is the run's.
        assert_eq!(s.fatal.as_deref(), Some("parquet sink: access denied"));
    }

    #[test]
    fn a_write_that_landed_after_the_lease_was_lost_is_not_ok_and_the_run_is_not_either() {
        let k = key(0);
        let mut t = tally();
        t.apply(fetched(&k));
        t.apply(durable(SinkKind::Postgres, &k));
        assert_eq!(
            t.apply(Event::Late {
                sink: SinkKind::Parquet,
                key: k.clone()
            }),
            Step::Quiet
        );
        assert_eq!(t.take_lost(), vec![k], "claimed back, or done elsewhere");
        let s = t.into_summary();
        assert_eq!((s.windows_ok, s.late_writes), (0, 1));
        assert_eq!(s.status(), crate::ledger::RunStatus::Partial);
        assert!(
            s.render().contains("1 write(s) landed after"),
            "{}",
            s.render()
        );
    }
}
