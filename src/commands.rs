//! What each subcommand does: turns validated arguments into a run and its exit code.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;

use crate::ccc::client::CccClient;
use crate::ccc::emulator::{self, EmulatorOptions, Faults, KeyPair};
use crate::ccc::ratelimit::AdaptivePacer;
use crate::cli::{Cli, Command, EmulatorArgs, OutputFormat, RangeArgs};
use crate::config::{Config, Credentials, validate_instances};
use crate::error::{EXIT_CHECK, EXIT_OK, InputError};
use crate::ledger::{DayFile, FileLedger, Ledger, SinkId};
use crate::pipeline::{Backfill, BackfillRequest, NowFn, RunSummary, system_now};
use crate::plan::{self, Bound};
use crate::progress::Progress;
use crate::record::fmt_ms;
use crate::sink::Sink;
use crate::sink::parquet::{Layout, ParquetSink, check_zone, count_rows_by_series, reconcile};
use crate::sink::postgres::{Access, PgError, PgLedger, PgStore, PostgresSink};

/// Runs the parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Emulator(args) => run_emulator(args).await,
        Command::Demo { days, parquet_root } => run_demo(*days, parquet_root, cli.quiet).await,
        Command::Plan { range, format } => {
            let config = Config::load(&cli.config)?;
            run_plan(&config, range, *format, system_now())
        }
        Command::Backfill {
            range,
            refetch,
            strict_horizon,
            metrics_file,
        } => {
            let config = Config::load(&cli.config)?;
            let req = backfill_request(&config, range, *refetch, *strict_horizon, system_now())?;
            run_job(
                &config,
                &req,
                system_now(),
                metrics_file.as_deref(),
                cli.quiet,
            )
            .await
        }
        Command::Nightly {
            instances,
            metrics_file,
        } => {
            let config = Config::load(&cli.config)?;
            let instances = resolve_instances(&config, instances)?;
            let now = system_now();
            let req = nightly_request(&config, instances, now());
            run_job(&config, &req, now, metrics_file.as_deref(), cli.quiet).await
        }
        Command::Status { format, alert_days } => {
            let config = Config::load(&cli.config)?;
            let report = status_report(
                &config,
                alert_days.unwrap_or(config.pipeline.aging_alert_days),
                system_now()(),
            )
            .await?;
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Table => print!("{}", report.render()),
            }
            Ok(if report.alert { EXIT_CHECK } else { EXIT_OK })
        }
        Command::Verify {
            repair,
            metrics_file,
        } => {
            let config = Config::load(&cli.config)?;
            let code = run_verify(&config).await?;
            if *repair && code != EXIT_OK {
                return run_repair(&config, metrics_file.as_deref(), cli.quiet).await;
            }
            Ok(code)
        }
        Command::Migrate => {
            let config = Config::load(&cli.config)?;
            run_migrate(&config).await
        }
    }
}

/// The request a nightly run makes at `now_ms`: from just inside the horizon to now, every gap,
/// plus `lookback_days` before the end of each series' coverage.
pub fn nightly_request(config: &Config, instances: Vec<String>, now_ms: i64) -> BackfillRequest {
    let margin = config.pipeline.horizon_margin_minutes as i64 * 60_000;
    BackfillRequest {
        instances,
        from_ms: plan::horizon_ms(now_ms, margin),
        to_ms: now_ms,
        refetch: false,
        strict_horizon: false,
        command: "nightly".into(),
        lookback_ms: Some(config.pipeline.lookback_days as i64 * plan::DAY_MS),
        from_horizon: true,
    }
}

/// A `backfill` or `nightly` run: credentials, endpoint, sinks (all checked before any work),
/// the run itself, then the summary and the metrics file. A run that fails before it fetches
/// (bad credentials, endpoint unreachable, database down) still writes the metrics file it was
/// asked for, so monitoring sees the failure.
async fn run_job(
    config: &Config,
    req: &BackfillRequest,
    now: NowFn,
    metrics: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<u8> {
    let outcome = async {
        let credentials = Credentials::from_env()?;
        preflight_endpoint(&config.source.endpoint).await?;
        let (sinks, ledger) = open_sinks(config).await?;
        let summary = execute(config, credentials, sinks, ledger.clone(), req, now, quiet).await?;
        finish_run(&req.command, &summary, ledger.as_ref(), metrics).await
    }
    .await;
    if let (Err(e), Some(path)) = (&outcome, metrics) {
        write_failure_metrics(&req.command, path, crate::error::exit_code_for(e), e);
    }
    outcome
}

/// The metrics of a run that stopped before its summary: its exit code and time, and the last
/// success as the previous metrics file had it (the ledger may be what is unreachable).
fn write_failure_metrics(command: &str, path: &Path, code: u8, error: &anyhow::Error) {
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

/// Prints the summary, writes the metrics file if asked, returns the exit code.
async fn finish_run(
    command: &str,
    summary: &RunSummary,
    ledger: &dyn Ledger,
    metrics: Option<&Path>,
) -> anyhow::Result<u8> {
    let code = report(summary);
    if let Some(path) = metrics {
        let now = Utc::now();
        let last = if code == EXIT_OK {
            Some(now)
        } else {
            ledger.last_success(Some(command)).await.ok().flatten()
        };
        let text = crate::metrics::render(command, summary, code, now, last);
        crate::metrics::write_atomic(path, &text)
            .with_context(|| format!("cannot write the metrics file {}", path.display()))?;
    }
    Ok(code)
}

/// Builds the `status` report: read-only, it takes no lock, writes nothing and sends no API
/// request. Parquet coverage is what the ledger recorded minus the days whose files are missing,
/// changed or damaged; rows are counted on disk.
pub async fn status_report(
    config: &Config,
    alert_days: u32,
    now_ms: i64,
) -> anyhow::Result<crate::status::StatusReport> {
    let mut rows = std::collections::BTreeMap::new();
    let series: Vec<(String, crate::record::MediaType)> = config
        .pipeline
        .instances
        .iter()
        .flat_map(|i| {
            config
                .pipeline
                .media_types
                .iter()
                .map(move |m| (i.clone(), *m))
        })
        .collect();
    let mut sinks = Vec::new();
    let mut not_covered = std::collections::BTreeMap::new();
    let mut findings = Vec::new();
    let store = connect_postgres_with(config, Access::ReadOnly).await?;
    if let Some(store) = &store {
        sinks.push(SinkId::new("postgres", ""));
        for (i, m) in &series {
            rows.insert(
                (i.clone(), *m, "postgres".to_string()),
                store.row_count(i, *m).await?,
            );
        }
    }
    let ledger = open_ledger(config, store.as_ref(), true)?;
    if let Some(pq) = &config.parquet {
        let layout = Layout::new(&pq.root);
        let id = parquet_sink_id(&layout, config.pipeline.timezone)?;
        let disk = {
            let layout = layout.clone();
            tokio::task::spawn_blocking(move || count_rows_by_series(&layout))
                .await?
                .map_err(anyhow::Error::msg)?
        };
        let recorded = ledger.day_files(&id.target).await?;
        let mut found = reconcile::check(&layout, &recorded).map_err(anyhow::Error::msg)?;
        for (table, day, e) in &disk.unreadable {
            if !found.iter().any(|f| f.table == *table && f.day == *day) {
                found.push(reconcile::Finding {
                    table: *table,
                    day: *day,
                    problem: reconcile::Problem::Damaged(e.to_string()),
                });
            }
        }
        findings.extend(found.iter().map(|f| f.describe(&layout)));
        not_covered.insert(
            id.clone(),
            reconcile::ranges(config.pipeline.timezone, &found),
        );
        for (i, m) in &series {
            let n = disk
                .rows
                .get(&(i.clone(), m.to_string()))
                .copied()
                .unwrap_or(0);
            rows.insert((i.clone(), *m, "parquet".to_string()), n);
        }
        sinks.push(id);
    }
    let margin = config.pipeline.horizon_margin_minutes as i64 * 60_000;
    let mut report = crate::status::build(
        ledger.as_ref(),
        &series,
        &sinks,
        &not_covered,
        rows,
        now_ms,
        plan::horizon_ms(now_ms, margin),
        alert_days,
        config.pipeline.timezone,
    )
    .await?;
    report.findings = findings;
    Ok(report)
}

/// The ledger that goes with the configured sinks: PostgreSQL's when it is configured (it then
/// tracks the Parquet commits too), else the file ledger under the Parquet root.
fn open_ledger(
    config: &Config,
    store: Option<&PgStore>,
    read_only: bool,
) -> anyhow::Result<Arc<dyn Ledger>> {
    Ok(match (store, &config.parquet) {
        (Some(store), _) => Arc::new(PgLedger::new(store.clone())),
        (None, Some(pq)) => {
            let opened = if read_only {
                FileLedger::open_read_only(&pq.root)
            } else {
                FileLedger::open(&pq.root)
            };
            Arc::new(opened.map_err(|e| InputError::new(e.to_string()))?)
        }
        (None, None) => {
            return Err(InputError::new(
                "no sink is configured: add a [parquet] and/or a [postgres] section",
            )
            .into());
        }
    })
}

/// The ledger's name for a Parquet root, read without writing: its id; for a root an older
/// version wrote, the empty target its commits were recorded with; for a root that does not
/// exist (or was wiped), one that matches no commit.
fn parquet_sink_id(layout: &Layout, tz: chrono_tz::Tz) -> anyhow::Result<SinkId> {
    let target = match layout.read_meta().map_err(InputError::new)? {
        Some(meta) => {
            check_zone(layout, &meta, tz).map_err(|e| InputError::new(e.message))?;
            meta.id
        }
        None if layout.has_state_without_meta() => String::new(),
        None => format!("absent:{}", layout.root().display()),
    };
    Ok(SinkId::new("parquet", target))
}

/// `ccc-etl verify`: compares the sinks per table and day, and lists day files that cannot be
/// read. Read-only.
pub async fn run_verify(config: &Config) -> anyhow::Result<u8> {
    let (Some(pq), Some(_)) = (&config.parquet, &config.postgres) else {
        return Err(InputError::new(
            "verify compares the two sinks: configure both [postgres] and [parquet]",
        )
        .into());
    };
    let store = connect_postgres_with(config, Access::ReadOnly)
        .await?
        .expect("checked above");
    let layout = Layout::new(&pq.root);
    parquet_sink_id(&layout, config.pipeline.timezone)?;
    let pg = crate::verify::pg_digests(&store, config.pipeline.timezone).await?;
    let scan = tokio::task::spawn_blocking(move || crate::verify::parquet_digests(&layout))
        .await?
        .map_err(anyhow::Error::msg)?;
    let diffs = crate::verify::compare(&pg, &scan.digests);
    let partitions = pg
        .keys()
        .chain(scan.digests.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if diffs.is_empty() && scan.unreadable.is_empty() {
        println!("verify: PostgreSQL and Parquet agree on {partitions} partition(s)");
        return Ok(EXIT_OK);
    }
    for (_, _, e) in &scan.unreadable {
        println!("verify: DAMAGED {e}");
    }
    if !diffs.is_empty() {
        println!(
            "verify: {} of {partitions} partition(s) differ:",
            diffs.len()
        );
    }
    for d in &diffs {
        println!(
            "  {} dt={}: postgres {} rows (checksum {:016x}), parquet {} rows (checksum {:016x})",
            d.table, d.dt, d.postgres.rows, d.postgres.checksum, d.parquet.rows, d.parquet.checksum
        );
    }
    println!("run `ccc-etl verify --repair` to fetch those days again");
    Ok(EXIT_CHECK)
}

/// `verify --repair`: sets damaged day files aside, takes back both sinks' commits of every day
/// that differs, then runs a nightly-style job that fetches exactly those windows again.
async fn run_repair(config: &Config, metrics: Option<&Path>, quiet: bool) -> anyhow::Result<u8> {
    let credentials = Credentials::from_env()?;
    preflight_endpoint(&config.source.endpoint).await?;
    let pq = config.parquet.as_ref().expect("verify checked both sinks");
    let tz = config.pipeline.timezone;
    let store = connect_postgres(config)
        .await?
        .expect("verify checked both sinks");
    let layout = Layout::new(&pq.root);
    let scan = {
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || crate::verify::parquet_digests(&layout))
            .await?
            .map_err(anyhow::Error::msg)?
    };
    let pg = crate::verify::pg_digests(&store, tz).await?;
    let mut days: Vec<(crate::record::Table, chrono::NaiveDate)> =
        scan.unreadable.iter().map(|(t, d, _)| (*t, *d)).collect();
    for d in crate::verify::compare(&pg, &scan.digests) {
        if let (Some(t), Ok(day)) = (
            crate::record::Table::from_name(&d.table),
            chrono::NaiveDate::parse_from_str(&d.dt, "%Y-%m-%d"),
        ) {
            days.push((t, day));
        }
    }
    let (sinks, ledger) = open_sinks(config).await?;
    for (table, day, _) in &scan.unreadable {
        if layout.day_file(*table, *day).exists() {
            let to = layout
                .quarantine(*table, *day)
                .map_err(anyhow::Error::msg)?;
            println!("repair: moved the damaged file aside to {}", to.display());
        }
    }
    let ranges = crate::ledger::union(
        days.iter()
            .map(|(_, d)| Layout::day_range(tz, *d))
            .collect(),
    );
    for sink in &sinks {
        let n = ledger
            .invalidate(
                &sink.id(),
                &ranges,
                &days,
                "verify --repair: the sinks differed",
            )
            .await?;
        println!(
            "repair: {n} window(s) of the {} sink to fetch again",
            sink.name()
        );
    }
    let now = system_now();
    let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
        return Ok(EXIT_OK);
    };
    // Only the span of the days taken back: what is committed inside it is not fetched again.
    let req = BackfillRequest {
        instances: config.pipeline.instances.clone(),
        from_ms: first.0,
        to_ms: last.1.min(now()),
        refetch: false,
        strict_horizon: false,
        command: "repair".into(),
        lookback_ms: None,
        from_horizon: false,
    };
    let summary = execute(config, credentials, sinks, ledger.clone(), &req, now, quiet).await?;
    finish_run(&req.command, &summary, ledger.as_ref(), metrics).await
}

/// `ccc-etl migrate`: applies the PostgreSQL migrations and, when `timezone` changed, moves the
/// views and the Parquet root's day partitions to the configured zone.
async fn run_migrate(config: &Config) -> anyhow::Result<u8> {
    if config.postgres.is_none() && config.parquet.is_none() {
        return Err(InputError::new(
            "migrate needs a [postgres] or [parquet] section in the configuration",
        )
        .into());
    }
    let tz = config.pipeline.timezone;
    let store = connect_postgres_with(config, Access::Migrate).await?;
    if let Some(store) = &store {
        println!(
            "migrations applied: schema {} at {}; views in time zone {}",
            store.schema().as_str(),
            store.describe(),
            tz.name()
        );
    }
    if let Some(pq) = &config.parquet {
        let layout = Layout::new(&pq.root);
        if layout.read_meta().map_err(InputError::new)?.is_none() {
            return Ok(EXIT_OK);
        }
        let _lock = layout.lock().map_err(|e| anyhow::anyhow!("{e}"))?;
        let before = layout.list().map_err(anyhow::Error::msg)?;
        let report = {
            let layout = layout.clone();
            tokio::task::spawn_blocking(move || {
                crate::sink::parquet::migrate::repartition(&layout, tz)
            })
            .await?
            .map_err(anyhow::Error::msg)?
        };
        if report.files_before > 0 || report.rows > 0 {
            // The files are new: the ledger's manifest follows them (coverage is unchanged).
            let ledger = open_ledger(config, store.as_ref(), false)?;
            let meta = layout
                .read_meta()
                .map_err(anyhow::Error::msg)?
                .expect("checked above");
            let id = SinkId::new("parquet", meta.id);
            let old: Vec<_> = before.iter().map(|f| (f.table, f.day)).collect();
            ledger.invalidate(&id, &[], &old, "re-partitioned").await?;
            let files: Vec<DayFile> = layout
                .list()
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .map(|l| DayFile {
                    target: id.target.clone(),
                    table: l.table,
                    day: l.day,
                    etag: l.etag,
                    rows: 0,
                })
                .collect();
            ledger.record_files(&files).await?;
            println!(
                "Parquet root {} re-partitioned for {}: {} rows, {} day files (were {})",
                layout.root().display(),
                tz.name(),
                report.rows,
                report.files_after,
                report.files_before
            );
        }
    }
    Ok(EXIT_OK)
}

/// Prints the summary to stdout and returns its exit code.
fn report(summary: &RunSummary) -> u8 {
    print!("{}", summary.render());
    summary.exit_code()
}

/// Instances from `--instance`, checked against the configuration, or all configured ones.
pub fn resolve_instances(config: &Config, requested: &[String]) -> Result<Vec<String>, InputError> {
    if requested.is_empty() {
        return Ok(config.pipeline.instances.clone());
    }
    validate_instances(requested).map_err(|e| InputError::new(format!("--instance: {e}")))?;
    for id in requested {
        if !config.pipeline.instances.contains(id) {
            return Err(InputError::new(format!(
                "--instance {id:?} is not a configured instance (configured: {})",
                config.pipeline.instances.join(", ")
            )));
        }
    }
    Ok(requested.to_vec())
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
    let from_ms = plan::parse_time_arg(&range.from, tz, Bound::From)?;
    let to_ms = match &range.to {
        Some(t) => plan::parse_time_arg(t, tz, Bound::To)?,
        None => now(),
    };
    if from_ms >= to_ms {
        return Err(InputError::new(format!(
            "--from {} is not before --to {}",
            fmt_ms(from_ms),
            fmt_ms(to_ms)
        )));
    }
    Ok(BackfillRequest {
        instances: resolve_instances(config, &range.instances)?,
        from_ms,
        to_ms,
        refetch,
        strict_horizon,
        command: "backfill".into(),
        lookback_ms: None,
        from_horizon: false,
    })
}

/// `ccc-etl plan`.
pub fn run_plan(
    config: &Config,
    range: &RangeArgs,
    format: OutputFormat,
    now: NowFn,
) -> anyhow::Result<u8> {
    let req = backfill_request(config, range, false, false, now.clone())?;
    let p = plan::plan(&plan::PlanRequest {
        instances: req.instances.clone(),
        media_types: config.pipeline.media_types.clone(),
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        now_ms: now(),
        timezone: config.pipeline.timezone,
        horizon_margin_ms: config.pipeline.horizon_margin_minutes as i64 * 60_000,
    });
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&p)?),
        OutputFormat::Table => {
            println!(
                "{:<24} {:<6} {:<21} {:<21} {:>7}",
                "INSTANCE", "MEDIA", "START (UTC)", "END (UTC)", "HOURS"
            );
            for w in &p.windows {
                println!(
                    "{:<24} {:<6} {:<21} {:<21} {:>7.1}",
                    w.instance_id,
                    w.media_type.as_str(),
                    fmt_ms(w.start_ms),
                    fmt_ms(w.end_ms),
                    (w.end_ms - w.start_ms) as f64 / 3_600_000.0
                );
            }
            println!("{} window(s)", p.windows.len());
            for l in &p.lost {
                println!(
                    "LOST (behind the 180-day horizon): {}/{} {} .. {}",
                    l.instance_id,
                    l.media_type,
                    fmt_ms(l.start_ms),
                    fmt_ms(l.end_ms)
                );
            }
            if let Some((a, b)) = p.future_trimmed {
                println!("trimmed (in the future): {} .. {}", fmt_ms(a), fmt_ms(b));
            }
        }
    }
    Ok(EXIT_OK)
}

/// Checks that the endpoint resolves and accepts a TCP connection, so that a wrong host or port
/// is reported once, before anything is written, instead of as every window failing.
pub async fn preflight_endpoint(endpoint: &crate::config::Endpoint) -> Result<(), InputError> {
    let url = endpoint.url();
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let limit = std::time::Duration::from_secs(10);
    let fail = |why: String| {
        InputError::new(format!(
            "cannot reach the endpoint {endpoint}: {why} (check [source] endpoint and the network)"
        ))
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

/// Connects to PostgreSQL as `[postgres]` says and applies the migrations.
pub async fn connect_postgres(config: &Config) -> anyhow::Result<Option<PgStore>> {
    connect_postgres_with(config, Access::Write).await
}

/// Connects to PostgreSQL as `[postgres]` says, with what the command may change.
pub async fn connect_postgres_with(
    config: &Config,
    access: Access,
) -> anyhow::Result<Option<PgStore>> {
    let Some(pg) = &config.postgres else {
        return Ok(None);
    };
    let url = pg.resolve_url()?;
    let store = PgStore::connect(
        &url,
        &pg.schema,
        config.pipeline.timezone,
        config.source.concurrency as u32 + 2,
        access,
    )
    .await
    .map_err(PgError::into_anyhow)?;
    Ok(Some(store))
}

/// Opens the configured sinks and the ledger that goes with them: the PostgreSQL ledger when
/// PostgreSQL is configured (it then tracks the Parquet commits too), else the file ledger under
/// the Parquet root. Everything is checked here, before any API request is sent.
pub async fn open_sinks(config: &Config) -> anyhow::Result<(Vec<Arc<dyn Sink>>, Arc<dyn Ledger>)> {
    if config.postgres.is_none() && config.parquet.is_none() {
        return Err(InputError::new(
            "no sink is configured: add a [parquet] and/or a [postgres] section",
        )
        .into());
    }
    // Everything that is bad input is checked before anything is created.
    if let Some(pg) = &config.postgres {
        pg.resolve_url()?;
    }
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let parquet = match &config.parquet {
        Some(pq) => Some(
            ParquetSink::new(&pq.root, config.pipeline.timezone)
                .map_err(|e| InputError::new(e.to_string()))?
                .with_buffer_rows(pq.buffer_rows),
        ),
        None => None,
    };
    let store = connect_postgres(config).await?;
    if let Some(store) = &store {
        sinks.push(Arc::new(PostgresSink::new(store.clone())));
    }
    let ledger = open_ledger(config, store.as_ref(), false)?;
    if let Some(p) = parquet {
        tracing::info!(root = %p.layout().root().display(), "Parquet root");
        reconcile::before_run(
            p.layout(),
            config.pipeline.timezone,
            ledger.as_ref(),
            &p.id(),
            p.is_legacy(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot check the Parquet root against the ledger: {e}"))?;
        sinks.push(Arc::new(p));
    }
    Ok((sinks, ledger))
}

/// Builds the client and runs a backfill.
pub async fn execute(
    config: &Config,
    credentials: Credentials,
    sinks: Vec<Arc<dyn Sink>>,
    ledger: Arc<dyn Ledger>,
    req: &BackfillRequest,
    now: NowFn,
    quiet: bool,
) -> anyhow::Result<RunSummary> {
    let limiter = Arc::new(AdaptivePacer::new(config.source.max_qps));
    let client = CccClient::new(&config.source, credentials, limiter)
        .context("cannot build the HTTP client")?;
    let engine = Backfill::new(
        config.clone(),
        Arc::new(client),
        sinks,
        ledger,
        now,
        Progress::auto(quiet),
    );
    engine.run(req).await
}

fn emulator_options(
    args: &EmulatorArgs,
    credentials: &Credentials,
) -> Result<EmulatorOptions, InputError> {
    validate_instances(&args.instances)
        .map_err(|e| InputError::new(format!("--instances: {e}")))?;
    for (name, p) in [
        ("--throttle-fraction", args.throttle_fraction),
        ("--fail-503", args.fail_503),
        ("--fail-500", args.fail_500),
        ("--slow", args.slow),
        ("--truncated", args.truncated),
        ("--non-json", args.non_json),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(InputError::new(format!(
                "{name} must be a fraction between 0 and 1, got {p}"
            )));
        }
    }
    let total = args.throttle_fraction
        + args.fail_503
        + args.fail_500
        + args.slow
        + args.truncated
        + args.non_json;
    if total > 1.0 {
        return Err(InputError::new(format!(
            "the fault fractions add up to {total}, more than 1"
        )));
    }
    if args
        .throttle_qps
        .is_some_and(|q| !(q > 0.0 && q.is_finite()))
    {
        return Err(InputError::new("--throttle-qps must be > 0"));
    }
    let mut opts = EmulatorOptions::new(
        args.instances.clone(),
        &credentials.access_key_id,
        credentials.secret(),
    );
    opts.keys.insert(
        credentials.access_key_id.clone(),
        KeyPair {
            secret: credentials.secret().to_string(),
            security_token: credentials.token().map(str::to_string),
        },
    );
    opts.bucket_ms = args.bucket_minutes as i64 * 60_000;
    opts.seed = args.seed;
    opts.revise_ms = args.revise_hours as i64 * 3_600_000;
    opts.numbers_as_strings = args.numbers_as_strings;
    opts.legacy_ring_name = args.legacy_ring_name;
    opts.floor_start = !args.no_floor_start;
    opts.faults = Faults {
        qps_limit: args.throttle_qps,
        throttled: args.throttle_fraction,
        unavailable: args.fail_503,
        internal_error: args.fail_500,
        slow: args.slow,
        slow_ms: args.slow_ms,
        truncated: args.truncated,
        non_json: args.non_json,
        seed: args.fault_seed,
        failing_instances: vec![],
        retry_after_ms: None,
    };
    Ok(opts)
}

async fn run_emulator(args: &EmulatorArgs) -> anyhow::Result<u8> {
    let credentials = Credentials::from_env()?;
    let opts = emulator_options(args, &credentials)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| InputError::new(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tracing::info!(instances = ?args.instances, "emulator serving");
    emulator::serve(listener, opts, shutdown_signal()).await?;
    Ok(EXIT_OK)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Instances the demo's emulator serves.
pub const DEMO_INSTANCES: [&str; 3] = ["demo-north", "demo-south", "demo-east"];

async fn run_demo(days: u32, root: &Path, quiet: bool) -> anyhow::Result<u8> {
    // A throwaway key pair: the demo needs no credentials, and these never leave the process.
    let key_id = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let instances: Vec<String> = DEMO_INSTANCES.iter().map(|s| s.to_string()).collect();
    let opts = EmulatorOptions::new(instances.clone(), &key_id, &secret);
    let emu = emulator::spawn(opts)
        .await
        .context("cannot start the in-process emulator")?;
    let mut config = Config::for_emulator(&emu.endpoint(), instances.clone());
    config.parquet = Some(crate::config::ParquetConfig::at(root.to_path_buf()));
    // PostgreSQL too when DATABASE_URL is set (schema `ccc`).
    if std::env::var(crate::config::ENV_DATABASE_URL).is_ok_and(|v| !v.trim().is_empty()) {
        config.postgres = Some(crate::config::PostgresConfig {
            url: None,
            schema: crate::config::SchemaName::parse("ccc").expect("valid schema name"),
        });
    }
    let now = system_now();
    let tz = config.pipeline.timezone;
    let today = Utc::now().with_timezone(&tz).date_naive();
    let from_day = today
        .checked_sub_days(chrono::Days::new(days as u64))
        .unwrap_or(today);
    let req = BackfillRequest {
        instances,
        from_ms: plan::local_day_start(tz, from_day),
        to_ms: now(),
        refetch: false,
        strict_horizon: false,
        lookback_ms: None,
        from_horizon: false,
        command: "demo".into(),
    };
    println!(
        "demo: emulator on {} serving {}; back-filling {} .. now into {}{}",
        emu.endpoint(),
        DEMO_INSTANCES.join(", "),
        from_day,
        root.display(),
        if config.postgres.is_some() {
            " and PostgreSQL (DATABASE_URL, schema ccc)"
        } else {
            ""
        }
    );
    let (sinks, ledger) = open_sinks(&config).await?;
    let summary = execute(
        &config,
        Credentials::new(&key_id, &secret, None),
        sinks,
        ledger,
        &req,
        now,
        quiet,
    )
    .await?;
    let code = report(&summary);
    emu.shutdown().await;
    let root = root.display();
    println!(
        "\nQuery the result with DuckDB, for example:\n  duckdb -c \"SELECT instance_id, date_trunc('day', stats_time) AS day, sum(total_calls) AS calls, \
         sum(calls_handled) AS handled FROM read_parquet('{root}/inbound_trend/*/*.parquet', hive_partitioning = true) \
         GROUP BY ALL ORDER BY ALL LIMIT 10\""
    );
    if config.postgres.is_some() {
        println!(
            "and in PostgreSQL:\n  psql \"$DATABASE_URL\" -c \"SELECT * FROM ccc.daily_traffic ORDER BY day DESC, instance_id LIMIT 10\""
        );
    }
    Ok(code)
}
