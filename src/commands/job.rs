//! `backfill` and `nightly`: the request, the checks before any work, the run, the summary and
//! the metrics file.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use tracing::Instrument as _;

use super::open::open_sinks_and_store;
use super::{notify, report, resolve_instances};
use crate::ccc::client::CccClient;
use crate::ccc::ratelimit::AdaptivePacer;
use crate::cli::{RangeArgs, SummaryFormat};
use crate::config::{AlertEvent, Config};
use crate::coord::{Coordinator, LeaseSettings};
use crate::error::{EXIT_OK, InputError};
use crate::ledger::{Ledger, RunStatus};
use crate::pipeline::{BackfillRequest, Engine, NowFn, RangeStart, RunKind, RunSummary};
use crate::plan::{self, Bound};
use crate::progress::Progress;
use crate::sink::Sink;
use crate::status::StatusReport;
use std::time::Duration;

/// The request a nightly run makes at `now_ms`: from just inside the horizon to now, every gap,
/// plus `lookback_days` before the end of each series' coverage.
pub fn nightly_request(config: &Config, instances: Vec<String>, now_ms: i64) -> BackfillRequest {
    BackfillRequest {
        instances,
        from: RangeStart::Horizon,
        to_ms: now_ms,
        refetch: false,
        strict_horizon: false,
        kind: RunKind::Nightly,
        lookback_ms: Some(config.pipeline.lookback_days as i64 * plan::DAY_MS),
    }
}

/// The range as typed: `--date DAY` is `--from DAY --to DAY`; `None` when neither is given.
pub fn typed_range(range: &RangeArgs) -> Result<Option<(String, Option<String>)>, InputError> {
    match (&range.date, &range.from) {
        (Some(day), _) => {
            chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| {
                InputError::new(format!("--date {day} is not a calendar day (YYYY-MM-DD)"))
            })?;
            Ok(Some((day.clone(), Some(day.clone()))))
        }
        (None, Some(from)) => Ok(Some((from.clone(), range.to.clone()))),
        (None, None) => Ok(None),
    }
}

/// `--from` must come before `--to` (or now): said with the dates as the user typed them, and
/// "in the future" when that is what is wrong.
fn check_order(
    range: &(String, Option<String>),
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
    tz: chrono_tz::Tz,
) -> Result<(), InputError> {
    if from_ms < to_ms {
        return Ok(());
    }
    let local = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| ms.to_string())
    };
    let (from, to) = range;
    if from_ms >= now_ms {
        return Err(InputError::new(format!(
            "--from {from} is in the future (it is {} in {tz} now): there is nothing to fetch yet",
            local(now_ms)
        )));
    }
    Err(InputError::new(match to {
        Some(to) => format!("--from {from} is not before --to {to}"),
        None => format!(
            "--from {from} is not before --to (now, {} in {tz})",
            local(to_ms)
        ),
    }))
}

/// Validates a range and instances into a request.
pub fn backfill_request(
    config: &Config,
    range: &RangeArgs,
    refetch: bool,
    strict_horizon: bool,
    now: NowFn,
) -> Result<BackfillRequest, InputError> {
    let tz = config.pipeline.timezone;
    let typed = typed_range(range)?.ok_or_else(|| {
        InputError::new("backfill needs --from WHEN (and --to WHEN), or --date YYYY-MM-DD")
    })?;
    let from_ms = plan::parse_time_arg(&typed.0, tz, Bound::From)?;
    let to_ms = match &typed.1 {
        Some(t) => plan::parse_time_arg(t, tz, Bound::To)?,
        None => now(),
    };
    check_order(&typed, from_ms, to_ms, now(), tz)?;
    Ok(BackfillRequest {
        instances: resolve_instances(config, &range.instances)?,
        from: RangeStart::At(from_ms),
        to_ms,
        refetch,
        strict_horizon,
        kind: RunKind::Backfill,
        lookback_ms: None,
    })
}

/// A `backfill` or `nightly` run: credentials, endpoint, sinks (all checked before any work),
/// the run itself, then the summary and the metrics file. A run that fails before it fetches
/// (bad credentials, endpoint unreachable, database down) still writes the metrics file it was
/// asked for, so monitoring sees the failure.
pub(crate) async fn run_job(
    config: &Config,
    req: &BackfillRequest,
    now: NowFn,
    out: JobOutput<'_>,
) -> anyhow::Result<u8> {
    let JobOutput {
        metrics,
        format,
        quiet,
    } = out;
    if let Some(path) = metrics {
        super::check_metrics_file(path)?;
    }
    let pipes = crate::pipes::Session::from_env().map_err(InputError::new)?;
    if let Some(p) = &pipes {
        p.opened();
    }
    // The run's id and span from the start: every line the run logs carries them.
    let run_id = uuid::Uuid::new_v4();
    crate::output::set_run(&run_id.to_string(), req.kind.as_str());
    let span = tracing::info_span!("run", run_id = %run_id, command = req.kind.as_str());
    let mut alerts = vec![];
    let outcome = async {
        let credentials = crate::credentials::process_source(config.source.credentials).await?;
        preflight_regions(config).await?;
        let (sinks, ledger, store) = open_sinks_and_store(config).await?;
        let seen_before = ledger.fields_seen().await.unwrap_or_default();
        credentials.log_start();
        let summary = execute(
            config,
            credentials,
            sinks,
            ledger.clone(),
            req,
            HowToRun {
                now: now.clone(),
                quiet,
                run_id: Some(run_id),
                workers: store.map(|s| s.pool().clone()),
            },
        )
        .await?;
        let code = match format {
            SummaryFormat::Text => finish_run(req.kind, &summary, ledger.as_ref(), metrics).await?,
            SummaryFormat::Json => {
                record_metrics(req.kind, &summary, ledger.as_ref(), metrics).await?;
                summary.exit_code()
            }
        };
        let json = format == SummaryFormat::Json;
        let status = match req.kind {
            RunKind::Nightly => after_nightly(config, metrics, json, now()).await,
            _ => None,
        };
        let command = req.kind.as_str();
        if json {
            crate::outln!("{}", summary_document(command, &summary, status.as_ref()))?;
        }
        if let Some(p) = &pipes {
            p.report(&summary);
        }
        alerts = notify::for_run(command, code, &summary, status.as_ref(), &seen_before);
        Ok(code)
    }
    .instrument(span.clone())
    .await;
    if let Err(e) = &outcome {
        alerts = stopped_before_summary(req.kind.as_str(), e, out);
    }
    crate::alerts::notify(&config.alerts, &alerts)
        .instrument(span)
        .await;
    if let Some(p) = &pipes {
        p.closed();
    }
    outcome
}

/// A run that stopped before its summary: the metrics file and the JSON document say so (with
/// the exit code it gets), and the alerts to send.
fn stopped_before_summary(
    command: &str,
    e: &anyhow::Error,
    out: JobOutput<'_>,
) -> Vec<crate::alerts::Alert> {
    let code = crate::error::exit_code_for(e);
    if let Some(path) = out.metrics {
        write_failure_metrics(command, path, code, e);
    }
    if out.format == SummaryFormat::Json {
        let doc = serde_json::json!({
            "command": command,
            "status": RunStatus::Failed.as_str(),
            "exit_code": code,
            "error": format!("{e:#}"),
        });
        if let Err(e) = crate::output::print(&format!("{doc}\n")) {
            tracing::error!(error = %e, "cannot print the run summary");
        }
    }
    notify::for_failure(command, code, e)
}

/// The metrics of a run that stopped before its summary: its exit code and time, and the last
/// success as the previous metrics file had it (the ledger may be what is unreachable).
pub(crate) fn write_failure_metrics(command: &str, path: &Path, code: u8, error: &anyhow::Error) {
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    let last = crate::metrics::last_success_in(&previous, command);
    let summary = RunSummary {
        fatal: Some(format!("{error:#}")),
        ..RunSummary::default()
    };
    let text = crate::metrics::render(command, &summary, code, Utc::now(), last);
    if let Err(e) = crate::metrics::write_atomic(path, &text) {
        tracing::error!(error = %e, path = %path.display(), "cannot write the metrics file");
    }
}

/// After a nightly run: what ages out when, in the same metrics file, so one alerting rule on
/// `ccc_etl_horizon_headroom_seconds` needs no second job, and for the aging alert of `[alerts]`
/// (best effort: the run is done).
async fn after_nightly(
    config: &Config,
    metrics: Option<&Path>,
    json: bool,
    now: i64,
) -> Option<StatusReport> {
    let wants_aging = (config.alerts.targets.iter()).any(|t| t.events.contains(&AlertEvent::Aging));
    if metrics.is_none() && !wants_aging && !json {
        return None;
    }
    match super::status::coverage_report(config, config.pipeline.aging_alert_days, now).await {
        Ok(report) => {
            if let Some(path) = metrics {
                let mut text = std::fs::read_to_string(path).unwrap_or_default();
                text.push_str(&crate::metrics::render_headroom("nightly", &report));
                if let Err(e) = crate::metrics::write_atomic(path, &text) {
                    tracing::error!(error = %e, path = %path.display(), "cannot write the metrics file");
                }
            }
            Some(report)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot compute the horizon headroom");
            None
        }
    }
}

/// Prints the summary, writes the metrics file if asked, returns the exit code.
pub(crate) async fn finish_run(
    kind: RunKind,
    summary: &RunSummary,
    ledger: &dyn Ledger,
    metrics: Option<&Path>,
) -> anyhow::Result<u8> {
    let code = report(kind.as_str(), summary);
    record_metrics(kind, summary, ledger, metrics).await?;
    Ok(code)
}

/// Where a run's results go: the metrics file, the summary's format, progress shown or not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobOutput<'a> {
    /// The Prometheus metrics file to write at the end.
    pub metrics: Option<&'a Path>,
    /// The summary's format on stdout.
    pub format: SummaryFormat,
    /// No progress bar or progress lines.
    pub quiet: bool,
}

impl<'a> JobOutput<'a> {
    pub(crate) fn new(metrics: Option<&'a Path>, format: SummaryFormat, quiet: bool) -> Self {
        JobOutput {
            metrics,
            format,
            quiet,
        }
    }
}

/// The summary as one JSON document, the contract for schedulers (docs/running.md): `command`,
/// `status` (ok, partial, failed), `exit_code`, the summary's fields (`windows_ok`,
/// `windows_failed`, `rows` per table, ...), and after a nightly run the horizon's headroom:
/// the seconds until the oldest uncovered time of any series leaves the API's 180 days.
pub fn summary_document(
    command: &str,
    summary: &RunSummary,
    status: Option<&StatusReport>,
) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "command": command,
        "status": summary.status().as_str(),
        "exit_code": summary.exit_code(),
    });
    if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
        (doc.as_object_mut(), serde_json::to_value(summary))
    {
        obj.extend(fields);
        let headroom = status.and_then(|r| {
            (r.series.iter())
                .map(|s| s.headroom_secs(r.horizon_ms, r.now_ms))
                .min()
        });
        obj.insert("horizon_headroom_secs".into(), headroom.into());
        obj.insert("aging_alert".into(), status.map(|r| r.alert).into());
    }
    doc
}

/// Writes the metrics file of a finished run, if asked.
async fn record_metrics(
    kind: RunKind,
    summary: &RunSummary,
    ledger: &dyn Ledger,
    metrics: Option<&Path>,
) -> anyhow::Result<()> {
    let command = kind.as_str();
    let code = summary.exit_code();
    if let Some(path) = metrics {
        let now = Utc::now();
        let last = if code == EXIT_OK {
            Some(now)
        } else {
            ledger.last_success(Some(kind)).await.ok().flatten()
        };
        let text = crate::metrics::render(command, summary, code, now, last);
        crate::metrics::write_atomic(path, &text)
            .with_context(|| format!("cannot write the metrics file {}", path.display()))?;
    }
    Ok(())
}

/// How `execute` runs: the clock, whether to show progress, and the run's id when the caller
/// opened the run's span.
pub struct HowToRun {
    /// The clock.
    pub now: NowFn,
    /// No progress bar or progress lines.
    pub quiet: bool,
    /// The run's id, chosen by the caller.
    pub run_id: Option<uuid::Uuid>,
    /// PostgreSQL, where this run claims its windows so that several workers can share the job
    /// (`backfill`, `nightly`); none: the run does every window itself.
    pub workers: Option<sqlx::PgPool>,
}

/// The API client of a run: `[source] region`'s endpoint and budget, and one more route, with
/// its own budget of `max_qps`, for every other region an instance is in. Returns the client
/// and every region's pacer.
pub fn build_client(
    config: &Config,
    credentials: impl crate::ccc::client::IntoCredentialSource,
) -> anyhow::Result<(CccClient, Vec<Arc<AdaptivePacer>>)> {
    let pacer = || Arc::new(AdaptivePacer::new(config.source.max_qps));
    let first = pacer();
    let mut pacers = vec![first.clone()];
    let mut client = CccClient::new(&config.source, credentials, first)
        .context("cannot build the HTTP client")?;
    for (region, endpoint) in config.regions() {
        if region == config.source.region {
            continue;
        }
        let instances: Vec<String> = config
            .pipeline
            .instances
            .iter()
            .filter(|i| i.region() == Some(region.as_str()))
            .map(|i| i.id().to_string())
            .collect();
        let p = pacer();
        pacers.push(p.clone());
        client = client.with_region(&region, endpoint, p, instances);
    }
    Ok((client, pacers))
}

/// [`preflight_endpoint`] for every region's endpoint.
pub async fn preflight_regions(config: &Config) -> anyhow::Result<()> {
    for endpoint in config.regions().values() {
        preflight_endpoint(endpoint).await?;
    }
    Ok(())
}

/// Builds the client and runs a backfill.
pub async fn execute(
    config: &Config,
    credentials: impl crate::ccc::client::IntoCredentialSource,
    sinks: Vec<Arc<dyn Sink>>,
    ledger: Arc<dyn Ledger>,
    req: &BackfillRequest,
    how: HowToRun,
) -> anyhow::Result<RunSummary> {
    let HowToRun {
        now,
        quiet,
        run_id,
        workers,
    } = how;
    let (client, pacers) = build_client(config, credentials)?;
    let mut engine = Engine::new(
        config.clone(),
        Arc::new(client),
        sinks,
        ledger,
        now,
        Progress::auto(quiet),
    );
    if let Some(id) = run_id {
        engine = engine.with_run_id(id);
    }
    let coordinator = match workers {
        Some(pool) => {
            let settings = LeaseSettings {
                lease: Duration::from_secs(config.pipeline.lease_secs),
                heartbeat: Duration::from_secs(config.pipeline.heartbeat_secs),
            };
            let c = Coordinator::register(pool, req.kind.as_str(), settings)
                .await?
                .with_pacers(pacers, config.source.max_qps);
            c.beat().await?;
            engine = engine.with_coordinator(c.clone());
            Some((c.clone(), c.spawn_heartbeat()))
        }
        None => None,
    };
    // SIGTERM (Kubernetes eviction, systemd stop) or Ctrl-C: stop taking windows, write what is
    // held, report. A second signal ends the process at once.
    let first = super::shutdown_signal();
    let stop = async {
        first.await;
        tokio::spawn(async {
            super::shutdown_signal().await;
            eprintln!("second signal: exiting at once");
            std::process::exit(130);
        });
    };
    let span = match &coordinator {
        Some((c, _)) => tracing::info_span!("worker", worker = %c.worker_id()),
        None => tracing::Span::none(),
    };
    let mut result = engine.run_until(req, stop).instrument(span).await;
    if let Some((c, heartbeat)) = coordinator {
        heartbeat.abort();
        if let Err(e) = c.stop().await {
            tracing::warn!(error = %e, "could not hand back the leases at the end of the run");
        }
        if let Ok(summary) = &mut result {
            summary.worker = Some(c.worker_id().to_string());
            summary.fenced_commits = c.fenced();
        }
    }
    result
}

/// Checks that the endpoint resolves and accepts a TCP connection, so that a wrong host or port
/// is reported once, before anything is written, instead of as every window failing.
pub async fn preflight_endpoint(endpoint: &crate::config::Endpoint) -> anyhow::Result<()> {
    let url = endpoint.url();
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let limit = std::time::Duration::from_secs(10);
    // A network that is down is not bad input: exit 1, with the endpoint named.
    let fail = |why: String| {
        anyhow::anyhow!(
            "cannot reach the endpoint {endpoint}: {why} (check [source] endpoint and the network)"
        )
    };
    let addrs: Vec<_> = tokio::time::timeout(limit, tokio::net::lookup_host((host.as_str(), port)))
        .await
        .map_err(|_| fail("name lookup timed out".into()))?
        .map_err(|e| fail(e.to_string()))?
        .collect();
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connection timed out"),
        }
    }
    Err(fail(last))
}
