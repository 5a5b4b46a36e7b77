//! `ccc-etl plan`: the requests a backfill would send now, or the whole plan.

use super::job::backfill_request;
use super::open::{open_read_only, parquet_sink_id};
use crate::cli::{OutputFormat, RangeArgs};
use crate::config::Config;
use crate::error::EXIT_OK;
use crate::ledger::SinkKind;
use crate::ledger::{SinkId, TakenBack};
use crate::pipeline::NowFn;
use crate::record::fmt_ms;
use crate::sink::parquet::{Root, reconcile};

/// `ccc-etl plan`: the requests a `backfill` of the same range would send now (the plan minus
/// what every sink has committed, read-only), or the whole plan with `--all`.
pub async fn run_plan(
    config: &Config,
    range: &RangeArgs,
    format: OutputFormat,
    all: bool,
    now: NowFn,
) -> anyhow::Result<u8> {
    // No range: what `nightly` would send now.
    let req = match super::job::typed_range(range)? {
        Some(_) => backfill_request(config, range, false, false, now.clone())?,
        None => {
            let instances = super::resolve_instances(config, &range.instances)?;
            super::job::nightly_request(config, instances, now())
        }
    };
    let mut p = crate::pipeline::plan_for(config, &req, now());
    let mut found = Vec::new();
    if !all {
        let (_, ledger) = open_read_only(config).await?;
        let mut sinks = Vec::new();
        if config.postgres.is_some() {
            sinks.push(SinkId::new(SinkKind::Postgres, ""));
        }
        let mut taken = TakenBack::default();
        if let Some(pq) = &config.parquet {
            let root =
                Root::open(pq, config.source.credentials).map_err(crate::error::InputError::new)?;
            let id = parquet_sink_id(&root, config.pipeline.timezone).await?;
            // What the run's reconcile will find first, read-only: the windows of days whose
            // files are missing, changed or damaged are fetched again.
            let seen =
                reconcile::inspect(&root, config.pipeline.timezone, ledger.as_ref(), &id.target)
                    .await
                    .map_err(anyhow::Error::msg)?;
            let ranges = reconcile::ranges(config.pipeline.timezone, &seen.findings);
            found.extend(
                seen.findings
                    .iter()
                    .map(|f| format!("NOT COVERED: {}", f.describe(&root))),
            );
            found.extend(seen.strays.iter().map(|s| s.describe()));
            taken.ranges.push((id.clone(), ranges));
            sinks.push(id);
        }
        let (pending, _) =
            crate::pipeline::pending_windows(config, ledger.as_ref(), &sinks, &req, &p, &taken)
                .await?;
        p.windows = pending;
    }
    match format {
        OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(&p)?)?,
        OutputFormat::Table => print_table(&p, &found)?,
    }
    Ok(EXIT_OK)
}

/// The plan as a table, then what the reconcile found, what is lost and what was trimmed.
fn print_table(p: &crate::plan::Plan, found: &[String]) -> anyhow::Result<()> {
    crate::outln!(
        "{:<24} {:<6} {:<21} {:<21} {:>7}",
        "INSTANCE",
        "MEDIA",
        "START (UTC)",
        "END (UTC)",
        "HOURS"
    )?;
    for w in &p.windows {
        crate::outln!(
            "{:<24} {:<6} {:<21} {:<21} {:>7.1}",
            w.instance_id,
            w.media_type.as_str(),
            fmt_ms(w.start_ms),
            fmt_ms(w.end_ms),
            (w.end_ms - w.start_ms) as f64 / 3_600_000.0
        )?;
    }
    crate::outln!("{} window(s)", p.windows.len())?;
    for f in found {
        crate::outln!("{f}")?;
    }
    for l in &p.lost {
        crate::outln!(
            "LOST (behind the 180-day horizon): {}/{} {} .. {}",
            l.instance_id,
            l.media_type,
            fmt_ms(l.start_ms),
            fmt_ms(l.end_ms)
        )?;
    }
    if let Some((a, b)) = p.future_trimmed {
        crate::outln!("trimmed (in the future): {} .. {}", fmt_ms(a), fmt_ms(b))?;
    }
    Ok(())
}
