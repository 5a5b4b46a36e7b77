//! Backfill: the only place that wires plan, client, de-duplication, sinks and ledger together.
//!
//! Windows are processed oldest first across instances, up to `concurrency` at a time (the
//! client's semaphore and rate limiter bound the HTTP side). Each window's rows go to every sink;
//! a sink reports windows durable at once (PostgreSQL) or once the partitions they touch are
//! written (Parquet, whose own bound limits what it holds), and a window is ok once every sink has
//! reported it. A window that fails for good is recorded and the others go on; a run-fatal error
//! (credentials, permissions, clock) stops the run at once, after the sinks have written what they
//! hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;
use tracing::Instrument;

use crate::ccc::client::{CccClient, TrendingRequest};
use crate::ccc::error::ErrorClass;
use crate::config::Config;
use crate::dedup::{DedupCounts, normalize};
use crate::error::InputError;
use crate::ledger::{self, Ledger, LedgerEntry, RunRecord, SinkId};
use crate::plan::{self, PlanRequest, SEND_MARGIN_MS};
use crate::progress::Progress;
use crate::quality::{self, QualityCounts};
use crate::record::{Table, WindowKey, fmt_ms};
use crate::sink::{CommitStats, RunContext, Sink, Written};

/// The clock, in epoch ms; tests pass a fixed one.
pub type NowFn = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_now() -> NowFn {
    Arc::new(|| Utc::now().timestamp_millis())
}

/// What to back-fill.
#[derive(Debug, Clone)]
pub struct BackfillRequest {
    /// Instances (already validated against the config).
    pub instances: Vec<String>,
    /// Range start, epoch ms.
    pub from_ms: i64,
    /// Range end, epoch ms (exclusive).
    pub to_ms: i64,
    /// Fetch committed windows again.
    pub refetch: bool,
    /// Treat a range behind the horizon as an error.
    pub strict_horizon: bool,
    /// `backfill`, `demo`, `nightly`: recorded with the run.
    pub command: String,
    /// Nightly: also fetch again, per series, from this long before the end of its committed
    /// coverage (floored to local midnight), to pick up revisions.
    pub lookback_ms: Option<i64>,
    /// Start at the planning horizon itself (computed at planning time), ignoring `from_ms`:
    /// "everything the API still has", with nothing reported lost.
    pub from_horizon: bool,
}

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
    /// Data-quality violations found in the fetched windows.
    pub quality: QualityCounts,
    /// Rows whose values changed since they were last written (the largest count of any sink).
    pub revisions: u64,
}

impl RunSummary {
    /// The process exit code this run deserves.
    pub fn exit_code(&self) -> u8 {
        if self.fatal.is_some() {
            crate::error::EXIT_FATAL
        } else if !self.windows_failed.is_empty() {
            crate::error::EXIT_PARTIAL
        } else {
            crate::error::EXIT_OK
        }
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
                "  boundary rows left to neighbouring windows {}\n",
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
        if let Some(f) = &self.fatal {
            s.push_str(&format!("  STOPPED: {f}\n"));
        }
        s
    }
}

/// A run-fatal error: stop everything.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFatal(pub String);

/// What processing a window (or flushing a sink) reports to the run's bookkeeping.
enum Event {
    /// The window's rows were fetched and handed to every sink.
    Fetched {
        key: WindowKey,
        rows: [u64; 3],
        dedup: DedupCounts,
        lost: Option<WindowKey>,
        quality: QualityCounts,
    },
    /// A sink made these windows durable (and they are in the ledger).
    Committed {
        keys: Vec<WindowKey>,
    },
    /// What a sink's writes inserted, revised and left unchanged.
    Stats {
        sink: &'static str,
        stats: CommitStats,
    },
    /// The fetch failed for good.
    FetchFailed(FailedWindow),
    /// A sink could not make the window durable.
    SinkFailed(FailedWindow),
    Lost(WindowKey),
    Fatal(String),
}

/// A window between fetch and its last sink's commit.
#[derive(Default)]
struct Tally {
    rows: Option<[u64; 3]>,
    committed: usize,
    failed: bool,
}

/// The engine for one run.
pub struct Backfill {
    config: Config,
    client: Arc<CccClient>,
    sinks: Vec<Arc<dyn Sink>>,
    ledger: Arc<dyn Ledger>,
    now: NowFn,
    progress: Progress,
}

impl Backfill {
    /// Wires the parts.
    pub fn new(
        config: Config,
        client: Arc<CccClient>,
        sinks: Vec<Arc<dyn Sink>>,
        ledger: Arc<dyn Ledger>,
        now: NowFn,
        progress: Progress,
    ) -> Self {
        Self {
            config,
            client,
            sinks,
            ledger,
            now,
            progress,
        }
    }

    /// The plan for a request, before subtracting the ledger.
    pub fn plan(&self, req: &BackfillRequest) -> plan::Plan {
        let now_ms = (self.now)();
        let margin = self.config.pipeline.horizon_margin_minutes as i64 * 60_000;
        plan::plan(&PlanRequest {
            instances: req.instances.clone(),
            media_types: self.config.pipeline.media_types.clone(),
            from_ms: if req.from_horizon {
                plan::horizon_ms(now_ms, margin)
            } else {
                req.from_ms
            },
            to_ms: req.to_ms,
            now_ms,
            timezone: self.config.pipeline.timezone,
            horizon_margin_ms: margin,
        })
    }

    /// Runs the backfill to the end (or to a run-fatal error) and returns its summary.
    pub async fn run(&self, req: &BackfillRequest) -> anyhow::Result<RunSummary> {
        let run_id = uuid::Uuid::new_v4();
        // Every log line of the run carries its id (and, inside a window, the window's fields).
        let span = tracing::info_span!("run", run_id = %run_id, command = %req.command);
        self.run_with_id(req, run_id).instrument(span).await
    }

    async fn run_with_id(
        &self,
        req: &BackfillRequest,
        run_id: uuid::Uuid,
    ) -> anyhow::Result<RunSummary> {
        let started = Instant::now();
        let ctx = RunContext { run_id };
        let started_at = Utc::now();
        let mut summary = RunSummary {
            run_id: run_id.to_string(),
            ..Default::default()
        };
        if req.from_ms >= req.to_ms {
            return Err(InputError::new(format!(
                "--from ({}) must be before --to ({})",
                fmt_ms(req.from_ms),
                fmt_ms(req.to_ms)
            ))
            .into());
        }
        let plan = self.plan(req);
        if !plan.lost.is_empty() {
            if req.strict_horizon {
                let l = &plan.lost[0];
                return Err(InputError::new(format!(
                    "--strict-horizon: {} .. {} is older than the API's 180-day horizon ({}) and cannot be fetched",
                    fmt_ms(l.start_ms),
                    fmt_ms(l.end_ms),
                    fmt_ms(plan.horizon_ms)
                ))
                .into());
            }
            for l in &plan.lost {
                tracing::warn!(
                    instance = %l.instance_id, media_type = %l.media_type,
                    "LOST: {} .. {} is older than the API's 180-day horizon and cannot be fetched",
                    fmt_ms(l.start_ms), fmt_ms(l.end_ms)
                );
            }
            summary.lost.extend(plan.lost.iter().cloned());
        }
        let windows = self.pending_windows(req, &plan, &mut summary).await?;
        summary.windows_planned = windows.len() as u64;
        self.ledger
            .record_run(&RunRecord {
                run_id,
                command: req.command.clone(),
                started_at,
                finished_at: None,
                status: "running".into(),
                summary: None,
            })
            .await?;
        tracing::info!(run_id = %run_id, windows = windows.len(), skipped = summary.windows_skipped_committed, "run started");
        self.progress.start(windows.len() as u64);

        for sink in &self.sinks {
            sink.expect(&windows);
        }
        let mut book = Bookkeeping {
            sinks: self.sinks.len(),
            windows: HashMap::new(),
        };
        let concurrency = self.config.source.concurrency.max(1);
        let mut stream = futures::stream::iter(windows.into_iter().map(|w| {
            let span = tracing::info_span!(
                "window",
                instance = %w.instance_id,
                media_type = %w.media_type,
                window_start = %fmt_ms(w.start_ms),
                window_end = %fmt_ms(w.end_ms),
            );
            self.process(w, &ctx).instrument(span)
        }))
        .buffer_unordered(concurrency);
        'run: while let Some(events) = stream.next().await {
            for event in events {
                if let Err(fatal) = book.apply(event, &mut summary, &self.progress, &self.client) {
                    summary.fatal = Some(fatal);
                    break 'run;
                }
            }
        }
        drop(stream);
        // Whatever a sink still holds is written, also after a fatal error: every row fetched
        // is kept.
        for sink in &self.sinks {
            let written = sink.flush(&ctx).await;
            for event in self.settle(sink.as_ref(), written, &ctx).await {
                let _ = book.apply(event, &mut summary, &self.progress, &self.client);
            }
        }
        self.progress.finish();
        let stats = self.client.stats();
        summary.requests = stats.requests.load(Ordering::Relaxed);
        summary.retries = stats.retries.load(Ordering::Relaxed);
        summary.throttled = stats.throttled.load(Ordering::Relaxed);
        summary.responses_by_code = stats.by_code();
        summary.duration_secs = started.elapsed().as_secs_f64();
        summary.windows_failed.sort_by(|a, b| a.key.cmp(&b.key));
        summary.revisions = summary.sinks.values().map(|c| c.revised).max().unwrap_or(0);
        let status = match summary.exit_code() {
            0 => "ok",
            3 => "partial",
            _ => "failed",
        };
        if let Err(e) = self
            .ledger
            .record_run(&RunRecord {
                run_id,
                command: req.command.clone(),
                started_at,
                finished_at: Some(Utc::now()),
                status: status.into(),
                summary: serde_json::to_value(&summary).ok(),
            })
            .await
        {
            tracing::warn!(error = %e, "could not record the end of the run");
        }
        Ok(summary)
    }

    /// The plan minus what every sink has committed (unless `refetch`), in fetch order.
    async fn pending_windows(
        &self,
        req: &BackfillRequest,
        plan: &plan::Plan,
        summary: &mut RunSummary,
    ) -> anyhow::Result<Vec<WindowKey>> {
        if req.refetch {
            return Ok(plan.windows.clone());
        }
        let sink_ids: Vec<SinkId> = self.sinks.iter().map(|s| s.id()).collect();
        let mut by_series: BTreeMap<(String, crate::record::MediaType), Vec<&WindowKey>> =
            BTreeMap::new();
        for w in &plan.windows {
            by_series
                .entry((w.instance_id.clone(), w.media_type))
                .or_default()
                .push(w);
        }
        let mut out = Vec::new();
        for ((instance, media), ws) in by_series {
            let start = ws.iter().map(|w| w.start_ms).min().unwrap_or_default();
            let end = ws.iter().map(|w| w.end_ms).max().unwrap_or_default();
            let gaps = ledger::missing(
                self.ledger.as_ref(),
                &instance,
                media,
                &sink_ids,
                start,
                end,
            )
            .await?;
            let mut ranges = gaps;
            if let Some(lookback) = req.lookback_ms {
                // Re-fetch the recent past of what is covered, to pick up revisions.
                let covered = plan::subtract(start, end, &ranges);
                if let Some(cov_end) = covered.iter().map(|c| c.1).max() {
                    let tz = self.config.pipeline.timezone;
                    let from = plan::local_midnight_at_or_before(tz, cov_end - lookback).max(start);
                    ranges.push((from, end));
                }
            }
            let mut mine = Vec::new();
            for (a, b) in ledger::union(ranges) {
                for (s, e) in plan::split_range(a, b, self.config.pipeline.timezone) {
                    mine.push(WindowKey {
                        instance_id: instance.clone(),
                        media_type: media,
                        start_ms: s,
                        end_ms: e,
                    });
                }
            }
            summary.windows_skipped_committed += ws
                .iter()
                .filter(|w| {
                    !mine
                        .iter()
                        .any(|m| m.start_ms < w.end_ms && w.start_ms < m.end_ms)
                })
                .count() as u64;
            out.extend(mine);
        }
        plan::fetch_order(&mut out);
        Ok(out)
    }

    async fn process(&self, planned: WindowKey, ctx: &RunContext) -> Vec<Event> {
        // Time passes between planning and sending: check the horizon again.
        let send_horizon = plan::horizon_ms((self.now)(), SEND_MARGIN_MS);
        if planned.end_ms <= send_horizon {
            let mut events = vec![Event::Lost(planned.clone())];
            events.extend(self.skip(&planned, ctx).await);
            return events;
        }
        let mut key = planned.clone();
        let mut lost = None;
        if key.start_ms < send_horizon {
            let part = WindowKey {
                end_ms: send_horizon,
                ..key.clone()
            };
            tracing::warn!(window = %part, "LOST: part of the window aged out before it was sent");
            lost = Some(part);
            key.start_ms = send_horizon;
        }
        let req = TrendingRequest {
            instance_id: key.instance_id.clone(),
            media_type: key.media_type,
            start_ms: key.start_ms,
            end_ms: key.end_ms,
        };
        let fetched = match self.client.get_trending_report(&req).await {
            Ok(f) => f,
            Err(failed) => {
                let class = failed.error.class();
                if class == ErrorClass::RunFatal {
                    let hint = failed
                        .error
                        .hint()
                        .map(|h| format!(": {h}"))
                        .unwrap_or_default();
                    return vec![Event::Fatal(format!("{}{hint}", failed.error))];
                }
                let f = FailedWindow {
                    key: key.clone(),
                    error: failed.to_string(),
                    retryable: class == ErrorClass::Retryable,
                };
                let ids: Vec<SinkId> = self.sinks.iter().map(|s| s.id()).collect();
                self.record_failure(&key, &ids, &f.error, failed.attempts, ctx)
                    .await;
                let mut events = vec![Event::FetchFailed(f)];
                events.extend(self.skip(&planned, ctx).await);
                return events;
            }
        };
        let quality = quality::check(&key, &fetched.report, (self.now)());
        if quality.total() > 0 {
            tracing::warn!(
                window = %key,
                "data quality: {} in {key}; the rows are kept, look at the source",
                quality.describe()
            );
        }
        // The bucket in progress is served partly filled: coverage stops before it, so the next
        // run's window starts at its boundary and completes it.
        let open_bucket = quality::open_bucket_start(&fetched.report, (self.now)());
        let (mut batch, dedup) = normalize(&key, fetched.report, Utc::now());
        batch.attempts = fetched.attempts;
        batch.final_end_ms = Some(open_bucket).filter(|t| *t < key.end_ms);
        let batch = Arc::new(batch);
        let mut events = vec![Event::Fetched {
            key,
            rows: Table::ALL.map(|t| batch.rows_in(t) as u64),
            dedup,
            lost,
            quality,
        }];
        for sink in &self.sinks {
            let written = sink.write(&planned, batch.clone(), ctx).await;
            events.extend(self.settle(sink.as_ref(), written, ctx).await);
        }
        events
    }

    /// Tells every sink a window will not come.
    async fn skip(&self, planned: &WindowKey, ctx: &RunContext) -> Vec<Event> {
        let mut events = vec![];
        for sink in &self.sinks {
            let written = sink.skip(planned, ctx).await;
            events.extend(self.settle(sink.as_ref(), written, ctx).await);
        }
        events
    }

    /// Records what a sink made durable in the ledger (unless the sink did) and turns it into
    /// events.
    async fn settle(&self, sink: &dyn Sink, written: Written, ctx: &RunContext) -> Vec<Event> {
        let mut events = vec![];
        if written.stats != CommitStats::default() {
            events.push(Event::Stats {
                sink: sink.name(),
                stats: written.stats,
            });
        }
        if !written.durable.is_empty() || !written.files.is_empty() {
            let recorded = if sink.records_own_commit() {
                Ok(())
            } else {
                let id = sink.id();
                let entries: Vec<LedgerEntry> = written
                    .durable
                    .iter()
                    .filter_map(|d| LedgerEntry::committed(&id, d, ctx.run_id))
                    .collect();
                self.ledger.record_durable(&written.files, &entries).await
            };
            match recorded {
                Ok(()) => events.push(Event::Committed {
                    keys: written.durable.into_iter().map(|d| d.key).collect(),
                }),
                Err(e) => events.extend(written.durable.into_iter().map(|d| {
                    Event::SinkFailed(FailedWindow {
                        key: d.key,
                        error: e.to_string(),
                        retryable: e.retryable,
                    })
                })),
            }
        }
        if !written.damaged.is_empty() {
            let ranges: Vec<(i64, i64)> = written
                .damaged
                .iter()
                .map(|d| (d.start_ms, d.end_ms))
                .collect();
            let files: Vec<_> = written.damaged.iter().map(|d| (d.table, d.day)).collect();
            let reason = written.damaged[0].detail.clone();
            if let Err(e) = self
                .ledger
                .invalidate(&sink.id(), &ranges, &files, &reason)
                .await
            {
                tracing::error!(error = %e, "could not take back the commits of a damaged day");
            }
        }
        for (key, e) in written.failed {
            let f = FailedWindow {
                key,
                error: e.to_string(),
                retryable: e.retryable,
            };
            self.record_failure(&f.key, &[sink.id()], &f.error, 0, ctx)
                .await;
            events.push(Event::SinkFailed(f));
        }
        events
    }

    async fn record_failure(
        &self,
        key: &WindowKey,
        sinks: &[SinkId],
        error: &str,
        attempts: u32,
        ctx: &RunContext,
    ) {
        let entries: Vec<LedgerEntry> = sinks
            .iter()
            .map(|sink| LedgerEntry::failed(sink, key, error, attempts, ctx.run_id))
            .collect();
        if let Err(e) = self.ledger.record_many(&entries).await {
            tracing::warn!(error = %e, window = %key, "could not record the failure in the ledger");
        }
    }
}

/// The run's view of windows in flight: a window is ok once fetched and committed by every sink.
struct Bookkeeping {
    sinks: usize,
    windows: HashMap<WindowKey, Tally>,
}

impl Bookkeeping {
    /// Applies one event to the summary; a fatal event is returned as the error.
    fn apply(
        &mut self,
        event: Event,
        summary: &mut RunSummary,
        progress: &Progress,
        client: &CccClient,
    ) -> Result<(), String> {
        match event {
            Event::Fetched {
                key,
                rows,
                dedup,
                lost,
                quality,
            } => {
                summary.lost.extend(lost);
                summary.quality += quality;
                summary.boundary_rows += dedup.boundary;
                summary.outside_window_rows += dedup.outside;
                summary.duplicate_rows += dedup.duplicates;
                summary.conflicting_rows += dedup.conflicts;
                progress.window_done(rows.iter().sum(), client);
                self.windows.entry(key.clone()).or_default().rows = Some(rows);
                self.settle(&key, summary);
            }
            Event::Committed { keys } => {
                for key in keys {
                    self.windows.entry(key.clone()).or_default().committed += 1;
                    self.settle(&key, summary);
                }
            }
            Event::Stats { sink, stats } => {
                *summary.sinks.entry(sink.to_string()).or_default() += stats;
            }
            Event::FetchFailed(f) => {
                tracing::error!(window = %f.key, error = %f.error, "window failed");
                progress.window_done(0, client);
                summary.windows_failed.push(f);
            }
            Event::SinkFailed(f) => {
                let t = self.windows.entry(f.key.clone()).or_default();
                if !t.failed {
                    tracing::error!(window = %f.key, error = %f.error, "window failed");
                    t.failed = true;
                    summary.windows_failed.push(f);
                }
            }
            Event::Lost(k) => {
                tracing::warn!(window = %k, "LOST: the window aged out of the 180-day horizon before it was sent");
                summary.lost.push(k);
                progress.window_done(0, client);
            }
            Event::Fatal(msg) => return Err(msg),
        }
        Ok(())
    }

    fn settle(&mut self, key: &WindowKey, summary: &mut RunSummary) {
        let Some(t) = self.windows.get(key) else {
            return;
        };
        if let (Some(rows), false, true) = (t.rows, t.failed, t.committed >= self.sinks) {
            summary.windows_ok += 1;
            for (table, n) in Table::ALL.iter().zip(rows) {
                *summary.rows.entry(table.name().to_string()).or_default() += n;
            }
            self.windows.remove(key);
        }
    }
}
