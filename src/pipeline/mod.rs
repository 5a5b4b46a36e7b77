//! A run: the only place that wires plan, client, de-duplication, sinks and ledger together.
//!
//! [`Engine::run`] reads as its steps: `prepare` (plan, subtract what the ledger says every
//! sink has, announce the windows to the sinks), `fetch_all` (windows oldest first across
//! instances, up to `concurrency` at a time; the client's semaphore and rate limiter bound the
//! HTTP side), `flush` (the sinks write what they hold, also after a run-fatal error, so every
//! row fetched is kept) and `finish` (the summary, recorded with the run). One window's path is in
//! `window.rs`; what happened is applied to the run's [`Tally`], the one owner of window state.
//! Each sink records its own commits in the ledger.

mod claim;
mod pace;
mod summary;
mod tally;
mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::Instrument;

pub use crate::ledger::{RunKind, RunStatus};
pub use summary::{FailedWindow, RunSummary, thousands};
pub use tally::{Event, Fatal, Step, Tally};

use crate::ccc::client::CccClient;
use crate::config::Config;
use crate::coord::Coordinator;
use crate::error::InputError;
use crate::ledger::{self, Ledger, RunRecord, RunState, SinkId};
use crate::plan::{self, PlanRequest};
use crate::progress::Progress;
use crate::record::{MediaType, WindowKey, fmt_ms};
use crate::sink::{RunContext, Sink};

/// Leases behind the horizon one run deletes at most (what is left: the next runs).
const PRUNE_PER_RUN: i64 = 10_000;

/// The clock, in epoch ms; tests pass a fixed one.
pub type NowFn = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_now() -> NowFn {
    Arc::new(crate::clock::now_ms)
}

/// Where a requested range starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeStart {
    /// At this instant, epoch ms; what lies behind the horizon is reported lost.
    At(i64),
    /// At the planning horizon, computed when the run plans: "everything the API still has",
    /// with nothing reported lost.
    Horizon,
}

/// What to back-fill, validated.
#[derive(Debug, Clone)]
pub struct BackfillRequest {
    /// Instances (already validated against the config).
    pub instances: Vec<String>,
    /// Range start.
    pub from: RangeStart,
    /// Range end, epoch ms (exclusive).
    pub to_ms: i64,
    /// Fetch committed windows again.
    pub refetch: bool,
    /// Treat a range behind the horizon as an error.
    pub strict_horizon: bool,
    /// What kind of run.
    pub kind: RunKind,
    /// Nightly: also fetch again, per series, from this long before the end of its committed
    /// coverage (floored to local midnight), to pick up revisions.
    pub lookback_ms: Option<i64>,
}

impl BackfillRequest {
    /// A plain backfill of `[from_ms, to_ms)`.
    pub fn range(instances: Vec<String>, from_ms: i64, to_ms: i64) -> Self {
        Self {
            instances,
            from: RangeStart::At(from_ms),
            to_ms,
            refetch: false,
            strict_horizon: false,
            kind: RunKind::Backfill,
            lookback_ms: None,
        }
    }
}

/// The engine of every run that fetches: `backfill`, `nightly`, `demo` and `verify --repair`
/// (the request's [`RunKind`] says which).
pub struct Engine {
    config: Config,
    client: Arc<CccClient>,
    sinks: Vec<Arc<dyn Sink>>,
    ledger: Arc<dyn Ledger>,
    now: NowFn,
    progress: Progress,
    /// Instances the service said do not exist, during the current run.
    unknown_instances: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The run's id when the caller chose it (and opened the run's span itself).
    run_id: Option<uuid::Uuid>,
    /// This worker's leases, when windows are claimed from PostgreSQL.
    coordinator: Option<Arc<Coordinator>>,
    /// The windows fetching now.
    fetch_gate: Arc<pace::FetchGate>,
}

/// One run in progress.
struct Run {
    id: uuid::Uuid,
    kind: RunKind,
    started_at: DateTime<Utc>,
    ctx: RunContext,
    tally: Tally,
}

/// An explicit range must not be empty.
fn check_range(req: &BackfillRequest) -> Result<(), InputError> {
    match req.from {
        RangeStart::At(from) if from >= req.to_ms => Err(InputError::new(format!(
            "--from ({}) must be before --to ({})",
            fmt_ms(from),
            fmt_ms(req.to_ms)
        ))),
        _ => Ok(()),
    }
}

impl Engine {
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
            unknown_instances: Default::default(),
            run_id: None,
            coordinator: None,
            fetch_gate: Default::default(),
        }
    }

    /// Claims each window from PostgreSQL before fetching it, so that several workers share
    /// the job (see [`crate::coord`]).
    pub fn with_coordinator(mut self, coordinator: Arc<Coordinator>) -> Self {
        self.coordinator = Some(coordinator);
        self
    }

    /// Runs under this id; the caller has entered a `run` span with `run_id` and `command`, so
    /// that the lines it logs before the run (opening the sinks) carry them too.
    pub fn with_run_id(mut self, run_id: uuid::Uuid) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// The plan for a request, before subtracting the ledger.
    pub fn plan(&self, req: &BackfillRequest) -> plan::Plan {
        plan_for(&self.config, req, (self.now)())
    }

    /// Runs to the end (or to a run-fatal error) and returns the summary.
    pub async fn run(&self, req: &BackfillRequest) -> anyhow::Result<RunSummary> {
        self.run_until(req, std::future::pending()).await
    }

    /// Runs like [`Engine::run`], but when `stop` completes (SIGTERM, Ctrl-C) takes no new
    /// window, drops the requests in flight (their windows are not committed and are fetched
    /// again by the next run), writes what the sinks hold, and returns the summary.
    pub async fn run_until(
        &self,
        req: &BackfillRequest,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<RunSummary> {
        let run_id = self.run_id.unwrap_or_else(uuid::Uuid::new_v4);
        // Every log line of the run carries its id (and, inside a window, the window's fields).
        let span = match self.run_id {
            Some(_) => tracing::Span::none(),
            None => tracing::info_span!("run", run_id = %run_id, command = req.kind.as_str()),
        };
        async {
            let started = Instant::now();
            let (run, windows) = self.prepare(req, run_id).await?;
            let run = self.fetch_all(run, windows, stop).await;
            let run = self.flush(run).await;
            Ok(self.finish(run, started).await)
        }
        .instrument(span)
        .await
    }

    /// The coordinator's clock, when there is one (see `Coordinator::db_now`).
    async fn coordinator_now(&self) -> anyhow::Result<Option<DateTime<Utc>>> {
        match &self.coordinator {
            Some(c) => Ok(Some(c.db_now().await?)),
            None => Ok(None),
        }
    }

    /// With several workers, queues the plan's windows as leases, and deletes leases behind the
    /// horizon.
    async fn queue(
        &self,
        windows: &[WindowKey],
        horizon_ms: i64,
        planned_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        let (Some(c), Some(planned_at)) = (&self.coordinator, planned_at) else {
            return Ok(());
        };
        c.enqueue(windows, planned_at).await?;
        // Maintenance: a failure is logged, and the run goes on.
        match c.prune(horizon_ms, PRUNE_PER_RUN).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(leases = n, "leases behind the horizon deleted"),
            Err(e) => tracing::warn!("could not delete leases behind the horizon: {e:#}"),
        }
        Ok(())
    }

    /// Plans, subtracts what is committed, records the run's start and announces the windows.
    async fn prepare(
        &self,
        req: &BackfillRequest,
        run_id: uuid::Uuid,
    ) -> anyhow::Result<(Run, Vec<WindowKey>)> {
        check_range(req)?;
        let plan = self.plan(req);
        let mut summary = RunSummary {
            run_id: run_id.to_string(),
            ..Default::default()
        };
        report_lost(&plan, req.strict_horizon, &mut summary)?;
        let ids = window::sink_ids(&self.sinks);
        // Before the ledger is read: a window another worker finishes after this instant is
        // queued again by nobody (see `Coordinator::enqueue`), on the coordinator's clock.
        let planned_at = self.coordinator_now().await?;
        let (windows, skipped) = pending_windows(
            &self.config,
            self.ledger.as_ref(),
            &ids,
            req,
            &plan,
            &Default::default(),
        )
        .await?;
        summary.windows_skipped_committed = skipped;
        summary.windows_planned = windows.len() as u64;
        let started_at = Utc::now();
        self.ledger
            .record_run(&RunRecord::started(run_id, req.kind, started_at))
            .await?;
        tracing::info!(run_id = %run_id, windows = windows.len(), skipped = summary.windows_skipped_committed, "run started");
        self.queue(&windows, plan.horizon_ms, planned_at).await?;
        self.progress.start(windows.len() as u64);
        for sink in &self.sinks {
            sink.expect(&windows);
        }
        let run = Run {
            id: run_id,
            kind: req.kind,
            started_at,
            ctx: RunContext {
                run_id,
                ledger: self.ledger.clone(),
                fence: self
                    .coordinator
                    .clone()
                    .map(|c| c as Arc<dyn crate::coord::Fence>),
            },
            tally: Tally::new(self.sinks.iter().map(|s| s.kind()), summary),
        };
        Ok((run, windows))
    }

    /// Windows to keep fetching now: as many as the allowed rate needs at the latency the
    /// service shows, at most `concurrency` ([`CccClient::in_flight_target`]).
    fn in_flight_target(&self) -> usize {
        self.client
            .in_flight_target(self.config.source.concurrency.max(1))
    }

    /// Whether another window may start beside `in_flight` ones: fewer are fetching than
    /// [`Self::in_flight_target`], and fewer than `concurrency` are in flight in all.
    fn may_start(&self, in_flight: usize) -> bool {
        in_flight < self.config.source.concurrency.max(1)
            && self.fetch_gate.fetching() < self.in_flight_target()
    }

    /// One window's way through fetch and commit, in its span, counted among the windows
    /// fetching from now on.
    fn start_window<'a>(
        &'a self,
        w: WindowKey,
        ctx: &'a crate::sink::RunContext,
    ) -> impl std::future::Future<Output = Vec<tally::Event>> + Send + 'a {
        let span = window_span(&w);
        let slot = self.fetch_gate.enter();
        self.process(w, ctx, slot).instrument(span)
    }

    /// Fetches every window, as many at a time as [`Self::may_start`] allows, until done, a
    /// run-fatal error, or `stop`.
    async fn fetch_all(
        &self,
        mut run: Run,
        windows: Vec<WindowKey>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Run {
        if let Some(c) = self.coordinator.clone() {
            return self.fetch_claimed(run, windows, stop, c).await;
        }
        let total = windows.len() as u64;
        let ctx = run.ctx.clone();
        let mut queue = windows.into_iter();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        tokio::pin!(stop);
        let mut done = 0u64;
        'windows: loop {
            while self.may_start(in_flight.len())
                && let Some(w) = queue.next()
            {
                in_flight.push(self.start_window(w, &ctx));
            }
            let events = tokio::select! {
                next = in_flight.next() => match next {
                    Some(events) => events,
                    None => break,
                },
                // A window went on to its commit: another may start fetching.
                () = self.fetch_gate.a_fetch_ended() => continue,
                // The target grows while the first answers are awaited: look again soon.
                () = tokio::time::sleep(pace::RECHECK), if queue.len() > 0 => continue,
                () = &mut stop => {
                    let left = total - done;
                    tracing::warn!(windows_left = left, "stopping on a signal: no new window; writing what is held");
                    run.tally.interrupt(left);
                    break;
                }
            };
            done += 1;
            for event in events {
                if let Some(fatal) = self.apply(&mut run.tally, event) {
                    run.tally.stop(fatal);
                    break 'windows;
                }
            }
        }
        run
    }

    /// Whatever a sink still holds is written, also after a fatal error: every row fetched is
    /// kept.
    async fn flush(&self, mut run: Run) -> Run {
        self.write_held(&mut run, false).await;
        run
    }

    /// Has every sink write what it holds and applies what it reports: all of it at the end of
    /// the run (`Sink::flush`), or, while the run waits for other workers, what a sink holds only
    /// to write it together (`Sink::idle`).
    async fn write_held(&self, run: &mut Run, idle: bool) {
        for sink in &self.sinks {
            let written = if idle {
                sink.idle(&run.ctx).await
            } else {
                sink.flush(&run.ctx).await
            };
            for event in window::report(sink.as_ref(), written) {
                let _ = self.apply(&mut run.tally, event);
            }
        }
    }

    /// Completes the summary and records the end of the run.
    async fn finish(&self, run: Run, started: Instant) -> RunSummary {
        self.progress.finish();
        let mut summary = run.tally.into_summary();
        let stats = self.client.stats();
        summary.requests = stats.requests.load(Ordering::Relaxed);
        summary.retries = stats.retries.load(Ordering::Relaxed);
        summary.throttled = stats.throttled.load(Ordering::Relaxed);
        summary.responses_by_code = stats.by_code();
        let credentials = self.client.credentials();
        summary.credentials = Some(credentials.label().to_string());
        summary.credential_refreshes = credentials.refreshes();
        summary.duration_secs = started.elapsed().as_secs_f64();
        summary.windows_failed.sort_by(|a, b| a.key.cmp(&b.key));
        summary.revisions = summary.sinks.values().map(|c| c.revised).max().unwrap_or(0);
        let record = RunRecord {
            run_id: run.id,
            command: run.kind,
            started_at: run.started_at,
            finished_at: Some(Utc::now()),
            status: RunState::Ended(summary.status()),
            summary: serde_json::to_value(&summary).ok(),
        };
        if let Err(e) = self.ledger.record_run(&record).await {
            tracing::warn!(error = %e, "could not record the end of the run");
        }
        summary
    }

    /// Applies an event to the tally and the progress display; returns a run-fatal error.
    fn apply(&self, tally: &mut Tally, event: Event) -> Option<Fatal> {
        let event = match (event, &self.coordinator) {
            // A sink failed a window whose lease this worker lost meanwhile (its transaction
            // ended while the process was stopped): not this worker's failure; it claims the
            // window back with the others it lost.
            (Event::SinkFailed(f), Some(c)) if c.is_lost(&f.key) => Event::Fenced(f.key),
            (event, _) => event,
        };
        let step = tally.apply(event);
        if let Some(c) = &self.coordinator {
            for key in tally.take_ok() {
                c.finished(key);
            }
        }
        match step {
            Step::Quiet => None,
            Step::WindowDone { rows } => {
                self.progress.window_done(rows, &self.client);
                None
            }
            Step::Stop(fatal) => Some(fatal),
        }
    }
}

/// The span every line about one window carries.
fn window_span(w: &WindowKey) -> tracing::Span {
    tracing::info_span!(
        "window",
        instance = %w.instance_id,
        media_type = %w.media_type,
        window_start = %fmt_ms(w.start_ms),
        window_end = %fmt_ms(w.end_ms),
    )
}

/// The windows a run would fetch now: the plan minus what every sink has committed (unless
/// `refetch`), plus the nightly lookback, in fetch order; and how many planned windows are
/// skipped as committed. `plan` shows exactly these (passing what the run's reconcile will take
/// back first, `taken`); a run fetches them.
pub async fn pending_windows(
    config: &Config,
    ledger: &dyn Ledger,
    sinks: &[SinkId],
    req: &BackfillRequest,
    plan: &plan::Plan,
    taken: &ledger::TakenBack,
) -> anyhow::Result<(Vec<WindowKey>, u64)> {
    if req.refetch {
        return Ok((plan.windows.clone(), 0));
    }
    let mut by_series: BTreeMap<(String, MediaType), Vec<&WindowKey>> = BTreeMap::new();
    for w in &plan.windows {
        by_series
            .entry((w.instance_id.clone(), w.media_type))
            .or_default()
            .push(w);
    }
    let (mut out, mut skipped) = (Vec::new(), 0u64);
    for ((instance, media), planned) in by_series {
        let series = Series {
            instance: &instance,
            media,
            planned: &planned,
        };
        let mine = series_windows(config, ledger, req, sinks, series, taken).await?;
        let overlaps = |w: &&&WindowKey| {
            mine.iter()
                .any(|m| m.start_ms < w.end_ms && w.start_ms < m.end_ms)
        };
        skipped += planned.iter().filter(|w| !overlaps(w)).count() as u64;
        out.extend(mine);
    }
    plan::fetch_order(&mut out);
    Ok((out, skipped))
}

/// One series and its planned windows.
struct Series<'a> {
    instance: &'a str,
    media: MediaType,
    planned: &'a [&'a WindowKey],
}

/// One series' windows to fetch: the planned span minus what every sink committed, plus the
/// nightly lookback, cut into compliant windows.
async fn series_windows(
    config: &Config,
    ledger: &dyn Ledger,
    req: &BackfillRequest,
    sinks: &[SinkId],
    Series {
        instance,
        media,
        planned,
    }: Series<'_>,
    taken: &ledger::TakenBack,
) -> anyhow::Result<Vec<WindowKey>> {
    let start = planned.iter().map(|w| w.start_ms).min().unwrap_or_default();
    let end = planned.iter().map(|w| w.end_ms).max().unwrap_or_default();
    let tz = config.pipeline.timezone;
    let mut ranges =
        ledger::missing_after(ledger, instance, media, sinks, (start, end), taken).await?;
    if let Some(lookback) = req.lookback_ms {
        // Re-fetch the recent past of what is covered, to pick up revisions.
        let covered = crate::ranges::subtract(start, end, &ranges);
        if let Some(cov_end) = covered.iter().map(|c| c.1).max() {
            let from = plan::local_midnight_at_or_before(tz, cov_end - lookback).max(start);
            ranges.push((from, end));
        }
    }
    Ok(crate::ranges::union(ranges)
        .into_iter()
        .flat_map(|(a, b)| plan::split_range(a, b, tz))
        .map(|(s, e)| WindowKey {
            instance_id: instance.to_string(),
            media_type: media,
            start_ms: s,
            end_ms: e,
        })
        .collect())
}

/// The plan for a request at `now_ms`, before subtracting the ledger.
pub fn plan_for(config: &Config, req: &BackfillRequest, now_ms: i64) -> plan::Plan {
    let margin = config.pipeline.horizon_margin_ms();
    plan::plan(&PlanRequest {
        instances: req.instances.clone(),
        media_types: config.pipeline.media_types.clone(),
        from_ms: match req.from {
            RangeStart::At(ms) => ms,
            RangeStart::Horizon => plan::horizon_ms(now_ms, margin),
        },
        to_ms: req.to_ms,
        now_ms,
        timezone: config.pipeline.timezone,
        horizon_margin_ms: margin,
    })
}

/// Logs what lies behind the horizon and lists it in the summary, or refuses it when strict.
fn report_lost(
    plan: &plan::Plan,
    strict: bool,
    summary: &mut RunSummary,
) -> Result<(), InputError> {
    if let (true, Some(l)) = (strict, plan.lost.first()) {
        return Err(InputError::new(format!(
            "--strict-horizon: {} .. {} is older than the API's 180-day horizon ({}) and cannot be fetched",
            fmt_ms(l.start_ms),
            fmt_ms(l.end_ms),
            fmt_ms(plan.horizon_ms)
        )));
    }
    for l in &plan.lost {
        tracing::warn!(
            instance = %l.instance_id, media_type = %l.media_type,
            "LOST: {} .. {} is older than the API's 180-day horizon and cannot be fetched",
            fmt_ms(l.start_ms), fmt_ms(l.end_ms)
        );
    }
    summary.lost.extend(plan.lost.iter().cloned());
    Ok(())
}
