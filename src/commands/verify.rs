//! `ccc-etl verify` (read-only) and `verify --repair`.

use std::path::Path;

use super::job::{HowToRun, execute, finish_run, preflight_endpoint};
use super::open::{connect_postgres, connect_postgres_with, open_sinks, parquet_sink_id};
use crate::config::{Config, Credentials};
use crate::error::{EXIT_CHECK, EXIT_OK, InputError};
use crate::pipeline::{BackfillRequest, RangeStart, RunKind, system_now};
use crate::sink::parquet::Layout;
use crate::sink::postgres::Access;

/// `ccc-etl verify`: compares the sinks per table and day, and lists day files that cannot be
/// read. Read-only.
pub async fn run_verify(config: &Config, config_path: &std::path::Path) -> anyhow::Result<u8> {
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
        .map(|(table, dt, _)| (table, dt))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if diffs.is_empty() && scan.unreadable.is_empty() {
        crate::outln!("verify: PostgreSQL and Parquet agree on {partitions} partition(s)")?;
        return Ok(EXIT_OK);
    }
    for (_, _, e) in &scan.unreadable {
        crate::outln!("verify: DAMAGED {e}")?;
    }
    if !diffs.is_empty() {
        crate::outln!(
            "verify: {} of {partitions} partition(s) differ:",
            diffs.len()
        )?;
    }
    for d in &diffs {
        crate::outln!(
            "  {} dt={}: postgres {} rows (checksum {:016x}), parquet {} rows (checksum {:016x}); instances {}",
            d.table,
            d.dt,
            d.postgres.rows,
            d.postgres.checksum,
            d.parquet.rows,
            d.parquet.checksum,
            d.instances.join(", ")
        )?;
    }
    crate::outln!(
        "to fetch those days again: ccc-etl --config {} verify --repair",
        config_path.display()
    )?;
    Ok(EXIT_CHECK)
}

/// `verify --repair`: sets damaged day files aside, takes back both sinks' commits of every day
/// that differs, then runs a nightly-style job that fetches exactly those windows again.
pub(crate) async fn run_repair(
    config: &Config,
    metrics: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<u8> {
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
            crate::outln!("repair: moved the damaged file aside to {}", to.display())?;
        }
    }
    let ranges = crate::ranges::union(
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
        crate::outln!(
            "repair: {n} window(s) of the {} sink to fetch again",
            sink.kind()
        )?;
    }
    let now = system_now();
    let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
        return Ok(EXIT_OK);
    };
    // Only the span of the days taken back: what is committed inside it is not fetched again.
    let req = BackfillRequest {
        instances: config.pipeline.instances.clone(),
        from: RangeStart::At(first.0),
        to_ms: last.1.min(now()),
        refetch: false,
        strict_horizon: false,
        kind: RunKind::Repair,
        lookback_ms: None,
    };
    let summary = execute(
        config,
        credentials,
        sinks,
        ledger.clone(),
        &req,
        HowToRun {
            now,
            quiet,
            run_id: None,
        },
    )
    .await?;
    finish_run(req.kind.as_str(), &summary, ledger.as_ref(), metrics).await
}
