//! `ccc-etl report`: gathers what the page shows (the status report, the latest runs, the KPIs
//! from PostgreSQL or else the Parquet root, the windows workers hold) and writes the page.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use chrono::{Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use super::open::open_read_only;
use super::status::coverage_report_on;
use crate::config::Config;
use crate::db::PgStore;
use crate::error::EXIT_OK;
use crate::pipeline::NowFn;
use crate::record::{InboundRow, MediaType, OutboundRow, OverallRow, Table};
use crate::report::{DayTotals, ReportInput, coverage::Held, day_states, page};
use crate::sink::parquet::{ReadError, Root};

/// How many runs the page lists.
const RUNS_SHOWN: usize = 20;

/// Writes the report of the last `days` local days to `output`.
pub async fn run_report(
    config_path: &Path,
    output: &Path,
    days: u32,
    now: NowFn,
) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    super::check_metrics_file(output)?;
    let started = Instant::now();
    let tz = config.pipeline.timezone;
    let now_ms = now();
    let local_day = |ms: i64| crate::plan::local_date(tz, ms);
    let today = local_day(now_ms);
    let first = today - Duration::days(i64::from(days) - 1);
    let shown: Vec<NaiveDate> = first.iter_days().take_while(|d| *d <= today).collect();
    let (store, ledger) = open_read_only(&config).await?;
    let alert_days = config.pipeline.aging_alert_days;
    let status =
        coverage_report_on(&config, store.as_ref(), ledger.as_ref(), alert_days, now_ms).await?;
    let held = match &store {
        Some(s) => held_windows(s).await?,
        None => vec![],
    };
    let (daily, hour_of_week, kpi_source) = match &store {
        Some(s) => kpis_from_postgres(s, first, tz).await?,
        None => kpis_from_parquet(&config, &shown, tz).await?,
    };
    let mut findings = status.findings.clone();
    findings.extend(status.extra_files.iter().cloned());
    let input = ReportInput {
        generated: Utc
            .timestamp_millis_opt(now_ms)
            .unwrap()
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
        tz,
        horizon_day: local_day(status.horizon_ms),
        coverage: day_states(&status, &shown, tz, &held),
        days: shown,
        today,
        daily,
        hour_of_week,
        kpi_source,
        runs: ledger.recent_runs(RUNS_SHOWN).await?,
        findings,
        drift: status.fields.clone(),
        alert: status.alert.then_some(status.alert_days),
    };
    let html = page::render(&input);
    crate::metrics::write_atomic(output, &html)
        .with_context(|| format!("cannot write the report {}", output.display()))?;
    crate::outln!(
        "wrote {} ({} KiB, {} series x {} days) in {:.1} s",
        output.display(),
        html.len() / 1024,
        input.coverage.len(),
        input.days.len(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(EXIT_OK)
}

async fn held_windows(store: &PgStore) -> anyhow::Result<Vec<Held>> {
    Ok(crate::coord::leased_windows(store.pool())
        .await?
        .into_iter()
        .filter_map(|(i, m, a, b)| Some((i, m.parse::<MediaType>().ok()?, a, b)))
        .collect())
}

type Kpis = (BTreeMap<NaiveDate, DayTotals>, [[i64; 24]; 7], String);

async fn kpis_from_postgres(store: &PgStore, first: NaiveDate, tz: Tz) -> anyhow::Result<Kpis> {
    let from_ms = crate::plan::local_day_start(tz, first);
    let mut daily: BTreeMap<NaiveDate, DayTotals> = BTreeMap::new();
    let mut grid = [[0i64; 24]; 7];
    for r in store.inbound_by_local_hour(from_ms, tz).await? {
        let t = daily.entry(r.day).or_default();
        t.add(&DayTotals {
            inbound: r.inbound,
            handled: r.handled,
            queued: r.queued,
            abandoned_ivr: r.abandoned_ivr,
            abandoned_queue: r.abandoned_queue,
            abandoned_ring: r.abandoned_ring,
            ..DayTotals::default()
        });
        let cell = usize::try_from(r.isodow - 1)
            .ok()
            .zip(usize::try_from(r.hour).ok())
            .and_then(|(d, h)| grid.get_mut(d)?.get_mut(h));
        if let Some(cell) = cell {
            *cell += r.inbound;
        }
    }
    for (day, outbound, answered) in store.outbound_by_local_day(from_ms, tz).await? {
        let t = daily.entry(day).or_default();
        t.outbound += outbound;
        t.answered += answered;
    }
    for (day, peak) in store.peak_agents_by_local_day(from_ms, tz).await? {
        daily.entry(day).or_default().peak_agents += peak;
    }
    let source = format!("PostgreSQL (schema {})", store.schema().as_str());
    Ok((daily, grid, source))
}

/// The same figures from the root's day files, for a configuration without PostgreSQL.
async fn kpis_from_parquet(config: &Config, days: &[NaiveDate], tz: Tz) -> anyhow::Result<Kpis> {
    let Some(pq) = &config.parquet else {
        return Ok((BTreeMap::new(), [[0; 24]; 7], "no sink".into()));
    };
    let root = Root::open(pq, config.source.credentials).map_err(crate::error::InputError::new)?;
    let mut daily = BTreeMap::new();
    let mut grid = [[0i64; 24]; 7];
    for day in days {
        let mut t = DayTotals::default();
        let mut peaks: BTreeMap<(String, String), i64> = BTreeMap::new();
        for table in Table::ALL {
            let rows = match root.read_rows(table, *day).await {
                Ok(rows) => rows,
                // Listed as DAMAGED among the findings (as `status` lists it), its day left out.
                Err(e @ ReadError::Damaged { .. }) => {
                    tracing::warn!("left out of the report: {e}");
                    continue;
                }
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            };
            for r in rows {
                add_row(&mut t, &mut peaks, &mut grid, table, &r, tz)
                    .map_err(|e| anyhow::anyhow!("{} {day}: {e}", table.name()))?;
            }
        }
        t.peak_agents = peaks.values().sum();
        if t != DayTotals::default() {
            daily.insert(*day, t);
        }
    }
    Ok((daily, grid, format!("the Parquet root {}", root.display())))
}

fn add_row(
    t: &mut DayTotals,
    peaks: &mut BTreeMap<(String, String), i64>,
    grid: &mut [[i64; 24]; 7],
    table: Table,
    r: &crate::sink::parquet::StoredRow,
    tz: Tz,
) -> Result<(), String> {
    let add = |sum: &mut i64, v: i64| -> Result<(), String> {
        *sum = sum.checked_add(v).ok_or_else(|| {
            format!(
                "the counts of {} at {} add up past what a 64-bit integer holds ({v})",
                r.instance_id, r.stats_time
            )
        })?;
        Ok(())
    };
    let not_its = || {
        format!(
            "a {table} row of {} at {} has {} counts",
            r.instance_id,
            r.stats_time,
            r.counts.len()
        )
    };
    match table {
        Table::Inbound => {
            let c: InboundRow = r.row().ok_or_else(not_its)?;
            add(&mut t.inbound, c.total_calls)?;
            add(&mut t.handled, c.calls_handled)?;
            add(&mut t.queued, c.calls_queued)?;
            add(&mut t.abandoned_ivr, c.calls_abandoned_in_ivr)?;
            add(&mut t.abandoned_queue, c.calls_abandoned_in_queue)?;
            add(&mut t.abandoned_ring, c.calls_abandoned_in_ring)?;
            let local = Utc
                .timestamp_millis_opt(r.stats_time)
                .single()
                .ok_or_else(|| format!("stats_time {} is not a time", r.stats_time))?
                .with_timezone(&tz);
            use chrono::{Datelike, Timelike};
            let d = local.weekday().num_days_from_monday() as usize;
            add(&mut grid[d][local.hour() as usize], c.total_calls)?;
        }
        Table::Outbound => {
            let c: OutboundRow = r.row().ok_or_else(not_its)?;
            add(&mut t.outbound, c.total_calls)?;
            add(&mut t.answered, c.calls_answered)?;
        }
        Table::Overall => {
            let c: OverallRow = r.row().ok_or_else(not_its)?;
            let peak = peaks
                .entry((r.instance_id.clone(), r.media_type.clone()))
                .or_default();
            *peak = (*peak).max(c.max_logged_in_agents);
        }
    }
    Ok(())
}
