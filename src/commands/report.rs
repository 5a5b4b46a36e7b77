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
use crate::report::{DayTotals, ReportInput, SeriesTotals, coverage::Held, day_states, page};
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
    write_report(&config, output, days, now).await?;
    Ok(EXIT_OK)
}

/// Writes the report of `config`'s job for the last `days` local days to `output`, and says so.
pub(crate) async fn write_report(
    config: &Config,
    output: &Path,
    days: u32,
    now: NowFn,
) -> anyhow::Result<()> {
    super::check_metrics_file(output)?;
    let started = Instant::now();
    let tz = config.pipeline.timezone;
    let now_ms = now();
    let local_day = |ms: i64| crate::plan::local_date(tz, ms);
    let today = local_day(now_ms);
    let first = today - Duration::days(i64::from(days) - 1);
    let shown: Vec<NaiveDate> = first.iter_days().take_while(|d| *d <= today).collect();
    let (store, ledger) = open_read_only(config).await?;
    let alert_days = config.pipeline.aging_alert_days;
    let status =
        coverage_report_on(config, store.as_ref(), ledger.as_ref(), alert_days, now_ms).await?;
    let held = match &store {
        Some(s) => held_windows(s).await?,
        None => vec![],
    };
    let kpis = match &store {
        Some(s) => kpis_from_postgres(s, first, tz).await?,
        None => kpis_from_parquet(config, &shown, tz).await?,
    };
    let (daily, per_series) = kpis.split();
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
        per_series,
        hour_of_week: kpis.grid,
        kpi_source: kpis.source,
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
    Ok(())
}

async fn held_windows(store: &PgStore) -> anyhow::Result<Vec<Held>> {
    Ok(crate::coord::leased_windows(store.pool())
        .await?
        .into_iter()
        .filter_map(|(i, m, a, b)| Some((i, m.parse::<MediaType>().ok()?, a, b)))
        .collect())
}

/// The page's figures, gathered per instance, media type and local day.
#[derive(Default)]
struct Kpis {
    by_series_day: SeriesDays,
    /// Inbound calls by ISO day of week (0 = Monday) and local hour.
    grid: [[i64; 24]; 7],
    source: String,
}

type SeriesDays = BTreeMap<(String, String, NaiveDate), DayTotals>;

/// The figures of one series on one day.
fn series_day<'a>(
    map: &'a mut SeriesDays,
    instance: &str,
    media: &str,
    day: NaiveDate,
) -> &'a mut DayTotals {
    map.entry((instance.to_string(), media.to_string(), day))
        .or_default()
}

impl Kpis {
    fn at(&mut self, instance: &str, media: &str, day: NaiveDate) -> &mut DayTotals {
        series_day(&mut self.by_series_day, instance, media, day)
    }

    /// Daily totals over the series (peaks summed: each series' peak that day), and each
    /// series' totals over the days (its highest daily peak).
    fn split(&self) -> (BTreeMap<NaiveDate, DayTotals>, Vec<SeriesTotals>) {
        let mut daily: BTreeMap<NaiveDate, DayTotals> = BTreeMap::new();
        let mut series: BTreeMap<(&str, &str), DayTotals> = BTreeMap::new();
        for ((instance, media, day), t) in &self.by_series_day {
            daily.entry(*day).or_default().add(t);
            series.entry((instance, media)).or_default().add_day(t);
        }
        let per_series = series
            .into_iter()
            .map(|((instance, media), totals)| SeriesTotals {
                instance_id: instance.to_string(),
                media_type: media.to_string(),
                totals,
            })
            .collect();
        (daily, per_series)
    }
}

async fn kpis_from_postgres(store: &PgStore, first: NaiveDate, tz: Tz) -> anyhow::Result<Kpis> {
    let from_ms = crate::plan::local_day_start(tz, first);
    let mut k = Kpis::default();
    for r in store.inbound_by_local_hour(from_ms, tz).await? {
        k.at(&r.instance_id, &r.media_type, r.day).add(&DayTotals {
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
            .and_then(|(d, h)| k.grid.get_mut(d)?.get_mut(h));
        if let Some(cell) = cell {
            *cell += r.inbound;
        }
    }
    for (instance, media, day, outbound, answered) in
        store.outbound_by_local_day(from_ms, tz).await?
    {
        let t = k.at(&instance, &media, day);
        t.outbound += outbound;
        t.answered += answered;
    }
    for (instance, media, day, peak) in store.peak_agents_by_local_day(from_ms, tz).await? {
        k.at(&instance, &media, day).peak_agents = peak;
    }
    k.source = format!("PostgreSQL (schema {})", store.schema().as_str());
    Ok(k)
}

/// The same figures from the root's day files, for a configuration without PostgreSQL.
async fn kpis_from_parquet(config: &Config, days: &[NaiveDate], tz: Tz) -> anyhow::Result<Kpis> {
    let mut k = Kpis::default();
    let Some(pq) = &config.parquet else {
        k.source = "no sink".into();
        return Ok(k);
    };
    let root = Root::open(pq, config.source.credentials).map_err(crate::error::InputError::new)?;
    for day in days {
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
                let t = series_day(&mut k.by_series_day, &r.instance_id, &r.media_type, *day);
                add_row(t, &mut k.grid, table, &r, tz)
                    .map_err(|e| anyhow::anyhow!("{} {day}: {e}", table.name()))?;
            }
        }
    }
    k.source = format!("the Parquet root {}", root.display());
    Ok(k)
}

/// Adds a stored row to its series' day `t` (a peak: the larger) and the hour-of-week grid.
fn add_row(
    t: &mut DayTotals,
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
            t.peak_agents = t.peak_agents.max(c.max_logged_in_agents);
        }
    }
    Ok(())
}
