//! `ccc-etl status`: coverage, gaps, the aging-out alert. Read-only.

use super::open::{open_read_only, parquet_sink_id};
use crate::config::Config;
use crate::ledger::SinkId;
use crate::plan;
use crate::sink::SinkKind;
use crate::sink::parquet::{Layout, count_rows_by_series, reconcile};

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

async fn report(
    config: &Config,
    alert_days: u32,
    now_ms: i64,
    count_rows: bool,
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
    let (store, ledger) = open_read_only(config).await?;
    if config.postgres.is_some() {
        sinks.push(SinkId::new(SinkKind::Postgres, ""));
        for (i, m) in &series {
            let n = match (&store, count_rows) {
                (Some(store), true) => store.row_count(i, *m).await?,
                _ => 0,
            };
            rows.insert((i.clone(), *m, SinkKind::Postgres), n);
        }
    }
    if let Some(pq) = &config.parquet {
        let layout = Layout::new(&pq.root);
        let id = parquet_sink_id(&layout, config.pipeline.timezone)?;
        let disk = if count_rows {
            let layout = layout.clone();
            tokio::task::spawn_blocking(move || count_rows_by_series(&layout))
                .await?
                .map_err(anyhow::Error::msg)?
        } else {
            Default::default()
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
            rows.insert((i.clone(), *m, SinkKind::Parquet), n);
        }
        sinks.push(id);
    }
    let margin = config.pipeline.horizon_margin_ms();
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
