//! `ccc-etl status`: coverage, gaps, the aging-out alert. Read-only.

use super::open::{open_read_only, parquet_sink_id};
use crate::cli::OutputFormat;
use crate::config::Config;
use crate::error::{EXIT_CHECK, EXIT_OK};
use crate::ledger::SinkId;
use crate::ledger::SinkKind;
use crate::pipeline::NowFn;
use crate::plan;
use std::collections::BTreeMap;

use anyhow::Context as _;

use crate::db::PgStore;
use crate::ledger::Ledger;
use crate::record::{MediaType, Table};
use crate::sink::parquet::{Root, RootCount, reconcile};

/// `ccc-etl status`: the report as a table or JSON, the headroom metrics if asked; exit 4 on the
/// aging-out alert.
pub(crate) async fn run_status(
    config: &Config,
    format: OutputFormat,
    alert_days: Option<u32>,
    metrics_file: Option<&std::path::Path>,
    now: NowFn,
) -> anyhow::Result<u8> {
    if let Some(path) = metrics_file {
        super::check_metrics_file(path)?;
    }
    let days = alert_days.unwrap_or(config.pipeline.aging_alert_days);
    let report = status_report(config, days, now()).await?;
    if let Some(path) = metrics_file {
        let text = crate::metrics::render_headroom("status", &report);
        crate::metrics::write_atomic(path, &text)
            .with_context(|| format!("cannot write the metrics file {}", path.display()))?;
    }
    match format {
        OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(&report)?)?,
        OutputFormat::Table => crate::output::print(&report.render())?,
    }
    Ok(if report.alert { EXIT_CHECK } else { EXIT_OK })
}

/// Builds the `status` report: read-only, it takes no lock, writes nothing and sends no API
/// request. Parquet coverage is what the ledger recorded minus the days whose files are missing,
/// changed or damaged; rows are counted on disk.
pub async fn status_report(
    config: &Config,
    alert_days: u32,
    now_ms: i64,
) -> anyhow::Result<crate::status::StatusReport> {
    report(config, alert_days, now_ms, true).await
}

/// Coverage and the alert only, without counting rows (the nightly run's headroom metrics): the
/// ledger and one listing per Parquet table.
pub async fn coverage_report(
    config: &Config,
    alert_days: u32,
    now_ms: i64,
) -> anyhow::Result<crate::status::StatusReport> {
    report(config, alert_days, now_ms, false).await
}

type Series = Vec<(String, MediaType)>;
type Rows = BTreeMap<(String, MediaType, SinkKind, Table), u64>;

async fn report(
    config: &Config,
    alert_days: u32,
    now_ms: i64,
    count_rows: bool,
) -> anyhow::Result<crate::status::StatusReport> {
    let (store, ledger) = open_read_only(config).await?;
    report_on(
        config,
        store.as_ref(),
        ledger.as_ref(),
        (alert_days, now_ms),
        count_rows,
    )
    .await
}

/// [`coverage_report`] on a store and ledger the caller has open already.
pub(crate) async fn coverage_report_on(
    config: &Config,
    store: Option<&PgStore>,
    ledger: &dyn Ledger,
    alert_days: u32,
    now_ms: i64,
) -> anyhow::Result<crate::status::StatusReport> {
    report_on(config, store, ledger, (alert_days, now_ms), false).await
}

async fn report_on(
    config: &Config,
    store: Option<&PgStore>,
    ledger: &dyn Ledger,
    (alert_days, now_ms): (u32, i64),
    count_rows: bool,
) -> anyhow::Result<crate::status::StatusReport> {
    let series: Series = config
        .pipeline
        .instances
        .iter()
        .flat_map(|i| {
            config
                .pipeline
                .media_types
                .iter()
                .map(move |m| (i.id().to_string(), *m))
        })
        .collect();
    let (mut sinks, mut rows, mut not_covered) = (Vec::new(), Rows::new(), BTreeMap::new());
    if config.postgres.is_some() {
        sinks.push(SinkId::new(SinkKind::Postgres, ""));
        for (i, m) in &series {
            let counts = match (store, count_rows) {
                (Some(store), true) => store.row_counts(i, *m).await?,
                _ => Table::ALL.map(|t| (t, 0)),
            };
            for (t, n) in counts {
                rows.insert((i.clone(), *m, SinkKind::Postgres, t), n);
            }
        }
    }
    let (mut findings, mut extra_files) = (Vec::new(), Vec::new());
    let mut held: Vec<String> = match (store, count_rows) {
        (Some(store), true) => store.ledger_instances().await?,
        _ => vec![],
    };
    if let Some(pq) = &config.parquet {
        let root =
            Root::open(pq, config.source.credentials).map_err(crate::error::InputError::new)?;
        let parquet = parquet_view(config, &root, ledger, &series, count_rows).await?;
        rows.extend(parquet.rows);
        not_covered.insert(parquet.id.clone(), parquet.not_covered);
        findings = parquet.findings;
        extra_files = parquet.extra_files;
        held.extend(parquet.instances);
        sinks.push(parquet.id);
    }
    let margin = config.pipeline.horizon_margin_ms();
    let mut report = crate::status::build(
        ledger,
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
    report.extra_files = extra_files;
    let configured = config.pipeline.instance_ids();
    held.retain(|i| !configured.contains(i));
    held.sort();
    held.dedup();
    report.history = held;
    if let Some(store) = store {
        let (workers, expired) = crate::coord::workers(
            store.pool(),
            std::time::Duration::from_secs(config.pipeline.lease_secs),
        )
        .await?;
        report.workers = workers;
        report.expired_leases = expired;
    }
    Ok(report)
}

/// What the Parquet root holds, next to what the ledger says it holds.
struct ParquetView {
    id: SinkId,
    rows: Rows,
    /// Instances with rows in the files (when counted).
    instances: Vec<String>,
    /// Days whose files are missing, changed or damaged.
    not_covered: Vec<(i64, i64)>,
    findings: Vec<String>,
    /// Other files in day directories.
    extra_files: Vec<String>,
}

/// One listing of the root: rows counted in its files (when asked), and the days that differ from
/// the ledger's manifest or cannot be read.
async fn parquet_view(
    config: &Config,
    root: &Root,
    ledger: &dyn Ledger,
    series: &Series,
    count_rows: bool,
) -> anyhow::Result<ParquetView> {
    let id = parquet_sink_id(root, config.pipeline.timezone).await?;
    let seen = reconcile::inspect(root, config.pipeline.timezone, ledger, &id.target)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut found = seen.findings;
    let disk = if count_rows {
        root.count_rows_by_series(&seen.files).await
    } else {
        RootCount::default()
    };
    for (table, day, e) in &disk.unreadable {
        if !found.iter().any(|f| f.table == *table && f.day == *day) {
            found.push(reconcile::Finding {
                table: *table,
                day: *day,
                problem: reconcile::Problem::Damaged(e.to_string()),
            });
        }
    }
    let rows = series
        .iter()
        .flat_map(|(i, m)| Table::ALL.map(|t| (i, m, t)))
        .map(|(i, m, t)| {
            let n = disk
                .by_table
                .get(&(i.clone(), m.to_string(), t))
                .copied()
                .unwrap_or(0);
            ((i.clone(), *m, SinkKind::Parquet, t), n)
        })
        .collect();
    Ok(ParquetView {
        not_covered: reconcile::ranges(config.pipeline.timezone, &found),
        findings: found.iter().map(|f| f.describe(root)).collect(),
        extra_files: seen.strays.iter().map(|s| s.describe()).collect(),
        instances: disk.by_table.keys().map(|k| k.0.clone()).collect(),
        id,
        rows,
    })
}
