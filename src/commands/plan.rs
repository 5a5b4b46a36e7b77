//! `ccc-etl plan`: the windows a backfill would fetch.

use super::job::backfill_request;
use crate::cli::{OutputFormat, RangeArgs};
use crate::config::Config;
use crate::error::EXIT_OK;
use crate::pipeline::{NowFn, RangeStart};
use crate::plan::{self};
use crate::record::fmt_ms;

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
        from_ms: match req.from {
            RangeStart::At(ms) => ms,
            RangeStart::Horizon => plan::horizon_ms(now(), config.pipeline.horizon_margin_ms()),
        },
        to_ms: req.to_ms,
        now_ms: now(),
        timezone: config.pipeline.timezone,
        horizon_margin_ms: config.pipeline.horizon_margin_ms(),
    });
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
