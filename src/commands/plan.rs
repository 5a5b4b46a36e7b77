//! `ccc-etl plan`: the requests a backfill would send now, or the whole plan.

use super::job::backfill_request;
use super::open::{open_read_only, parquet_sink_id};
use crate::cli::{OutputFormat, RangeArgs};
use crate::config::Config;
use crate::error::EXIT_OK;
use crate::ledger::SinkId;
use crate::pipeline::NowFn;
use crate::record::fmt_ms;
use crate::sink::SinkKind;
use crate::sink::parquet::Root;

/// `ccc-etl plan`: the requests a `backfill` of the same range would send now (the plan minus
/// what every sink has committed, read-only), or the whole plan with `--all`.
pub async fn run_plan(
    config: &Config,
    range: &RangeArgs,
    format: OutputFormat,
    all: bool,
    now: NowFn,
) -> anyhow::Result<u8> {
    let req = backfill_request(config, range, false, false, now.clone())?;
    let mut p = crate::pipeline::plan_for(config, &req, now());
    if !all {
        let (_, ledger) = open_read_only(config).await?;
        let mut sinks = Vec::new();
        if config.postgres.is_some() {
            sinks.push(SinkId::new(SinkKind::Postgres, ""));
        }
        if let Some(pq) = &config.parquet {
            let root =
                Root::open(pq, config.source.credentials).map_err(crate::error::InputError::new)?;
            sinks.push(parquet_sink_id(&root, config.pipeline.timezone).await?);
        }
        let (pending, _) =
            crate::pipeline::pending_windows(config, ledger.as_ref(), &sinks, &req, &p).await?;
        p.windows = pending;
    }
    match format {
        OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(&p)?)?,
        OutputFormat::Table => {
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
        }
    }
    Ok(EXIT_OK)
}
