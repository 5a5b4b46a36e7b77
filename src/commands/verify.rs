//! `ccc-etl verify` (read-only) and `verify --repair`, which fetches again what `verify` found.

use std::path::Path;

use chrono::NaiveDate;

use super::job::{HowToRun, execute, finish_run};
use super::open::{connect_postgres_with, open_sinks, parquet_sink_id};
use crate::config::Config;
use crate::db::Access;
use crate::error::{EXIT_CHECK, EXIT_OK, InputError};
use crate::ledger::Ledger;
use crate::pipeline::{BackfillRequest, NowFn, RangeStart, RunKind};
use crate::record::Table;
use crate::sink::Sink;
use crate::sink::parquet::{Layout, Root};
use crate::verify::Difference;

/// What `verify` found: the partitions that differ and the day files that cannot be read.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    differences: Vec<Difference>,
    unreadable: Vec<(Table, NaiveDate)>,
    /// Day files with rows of other days or repeated keys.
    malformed: Vec<(Table, NaiveDate)>,
    /// Other files in day directories.
    strays: usize,
}

impl Findings {
    /// Every day to fetch again: the differing partitions, the damaged and the malformed
    /// files'.
    fn days(&self) -> Vec<(Table, NaiveDate)> {
        let differing = self.differences.iter().filter_map(|d| {
            Some((
                Table::from_name(&d.table)?,
                NaiveDate::parse_from_str(&d.dt, "%Y-%m-%d").ok()?,
            ))
        });
        let mut days: Vec<(Table, NaiveDate)> = self
            .unreadable
            .iter()
            .chain(&self.malformed)
            .copied()
            .chain(differing)
            .collect();
        days.sort();
        days.dedup();
        days
    }

    /// Whether anything was found.
    fn any(&self) -> bool {
        !(self.differences.is_empty()
            && self.unreadable.is_empty()
            && self.malformed.is_empty()
            && self.strays == 0)
    }
}

/// `ccc-etl verify`: compares the sinks per table and day, and lists day files that cannot be
/// read. Read-only.
pub async fn run_verify(config: &Config, config_path: &Path) -> anyhow::Result<u8> {
    Ok(verify(config, config_path).await?.0)
}

/// [`run_verify`], returning what it found too.
pub(crate) async fn verify(config: &Config, config_path: &Path) -> anyhow::Result<(u8, Findings)> {
    let (Some(pq), Some(_)) = (&config.parquet, &config.postgres) else {
        return Err(InputError::new(
            "verify compares the two sinks: configure both [postgres] and [parquet]",
        )
        .into());
    };
    let store = connect_postgres_with(config, Access::ReadOnly)
        .await?
        .expect("checked above");
    let root = Root::open(pq, config.source.credentials).map_err(InputError::new)?;
    parquet_sink_id(&root, config.pipeline.timezone).await?;
    let pg = crate::verify::pg_digests(&store, config.pipeline.timezone).await?;
    let scan = crate::verify::parquet_digests(&root, config.pipeline.timezone)
        .await
        .map_err(anyhow::Error::msg)?;
    let partitions = pg
        .keys()
        .chain(scan.digests.keys())
        .map(|(table, dt, _)| (table, dt))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    for (_, _, e) in &scan.unreadable {
        crate::outln!("verify: DAMAGED {e}")?;
    }
    for (_, _, why) in &scan.malformed {
        crate::outln!("verify: NOT ONE ROW PER KEY OF ITS DAY {why}")?;
    }
    for s in &scan.strays {
        crate::outln!("verify: {}", s.describe())?;
    }
    let (differences, history) = split_history(
        crate::verify::compare(&pg, &scan.digests),
        &config.pipeline.instance_ids(),
    );
    print_history(&history)?;
    let found = Findings {
        differences,
        unreadable: scan.unreadable.iter().map(|(t, d, _)| (*t, *d)).collect(),
        malformed: scan.malformed.iter().map(|(t, d, _)| (*t, *d)).collect(),
        strays: scan.strays.len(),
    };
    if !found.any() {
        crate::outln!("verify: PostgreSQL and Parquet agree on {partitions} partition(s)")?;
        return Ok((EXIT_OK, found));
    }
    print_differences(&found.differences, partitions)?;
    crate::outln!(
        "to fetch those days again: ccc-etl --config {} verify --repair",
        config_path.display()
    )?;
    Ok((EXIT_CHECK, found))
}

/// Splits the differences into those of configured instances, which `--repair` fetches again,
/// and those of instances the configuration no longer lists: their rows are history, kept as
/// they are and never fetched, so they are named but not counted.
fn split_history(
    diffs: Vec<Difference>,
    configured: &[String],
) -> (Vec<Difference>, Vec<Difference>) {
    let mut current = vec![];
    let mut history = vec![];
    for d in diffs {
        let (ours, old): (Vec<String>, Vec<String>) = d
            .instances
            .iter()
            .cloned()
            .partition(|i| configured.contains(i));
        if !old.is_empty() {
            history.push(Difference {
                instances: old,
                ..d.clone()
            });
        }
        if !ours.is_empty() {
            current.push(Difference {
                instances: ours,
                ..d
            });
        }
    }
    (current, history)
}

fn print_history(history: &[Difference]) -> std::io::Result<()> {
    let mut instances: Vec<&str> = history
        .iter()
        .flat_map(|d| d.instances.iter().map(String::as_str))
        .collect();
    instances.sort_unstable();
    instances.dedup();
    if !instances.is_empty() {
        crate::outln!(
            "verify: HISTORY {} partition(s) differ only in rows of instances the configuration \
             no longer lists ({}): kept as they are, not counted, and not fetched by --repair \
             (list the instance again in [pipeline] instances to repair it)",
            history.len(),
            instances.join(", ")
        )?;
    }
    Ok(())
}

fn print_differences(diffs: &[Difference], partitions: usize) -> std::io::Result<()> {
    if !diffs.is_empty() {
        crate::outln!(
            "verify: {} of {partitions} partition(s) differ:",
            diffs.len()
        )?;
    }
    for d in diffs {
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
    Ok(())
}

/// `verify --repair`: sets damaged day files aside (and, through the run's reconcile, other files
/// in day directories), takes back both sinks' commits of every day `verify` found differing,
/// announces the windows it fetches again and fetches exactly those, then verifies again: the
/// exit code is the run's, or 4 if the sinks still differ.
pub(crate) async fn run_repair(
    config: &Config,
    config_path: &Path,
    found: Findings,
    metrics: Option<&Path>,
    quiet: bool,
    now: NowFn,
) -> anyhow::Result<u8> {
    let credentials = crate::credentials::process_source(config.source.credentials).await?;
    super::job::preflight_regions(config).await?;
    let pq = config.parquet.as_ref().expect("verify checked both sinks");
    let (sinks, ledger) = open_sinks(config).await?;
    set_aside(
        &Root::open(pq, config.source.credentials).map_err(InputError::new)?,
        &found.unreadable,
    )
    .await?;
    let (days, beyond) = fetchable(config, found.days(), now());
    for (table, day) in &beyond {
        crate::outln!(
            "repair: {table} dt={day} lies outside what the API can serve (older than its 180-day \
             horizon, or in the future): kept as it is, not fetched"
        )?;
    }
    let day_ranges = crate::ranges::union(
        days.iter()
            .map(|(_, d)| Layout::day_range(config.pipeline.timezone, *d))
            .collect(),
    );
    // Whole windows are taken back: the span fetched again is theirs, so no gap is left.
    let taken = take_back(&sinks, ledger.as_ref(), &day_ranges, &days).await?;
    let ranges = crate::ranges::union(day_ranges.into_iter().chain(taken).collect());
    let mut code = EXIT_OK;
    if let (Some(first), Some(last)) = (ranges.first(), ranges.last()) {
        // Only the span of the windows taken back: what is committed inside it is not fetched
        // again.
        let req = BackfillRequest {
            instances: config.pipeline.instance_ids(),
            from: RangeStart::At(first.0),
            to_ms: last.1.min(now()),
            refetch: false,
            strict_horizon: false,
            kind: RunKind::Repair,
            lookback_ms: None,
        };
        let plan = crate::pipeline::plan_for(config, &req, now());
        let ids: Vec<_> = sinks.iter().map(|s| s.id()).collect();
        let (windows, _) = crate::pipeline::pending_windows(
            config,
            ledger.as_ref(),
            &ids,
            &req,
            &plan,
            &Default::default(),
        )
        .await?;
        crate::outln!("repair: {} window(s) to fetch again", windows.len())?;
        let how = HowToRun {
            now,
            quiet,
            run_id: None,
            workers: None,
        };
        credentials.log_start();
        let summary = execute(config, credentials, sinks, ledger.clone(), &req, how).await?;
        code = finish_run(req.kind, &summary, ledger.as_ref(), metrics).await?;
    } else {
        drop(sinks);
    }
    // What was repaired is verified: a repair that left a difference says so.
    let (after, _) = verify(config, config_path).await?;
    if after != EXIT_OK {
        crate::outln!("repair: PostgreSQL and Parquet still differ after the repair")?;
        return Ok(if code == EXIT_OK { EXIT_CHECK } else { code });
    }
    Ok(code)
}

/// Moves the damaged files still in place aside (the run that opened the sinks may have already).
async fn set_aside(root: &Root, unreadable: &[(Table, NaiveDate)]) -> anyhow::Result<()> {
    let listed = root.list().await.map_err(anyhow::Error::msg)?;
    for (table, day) in unreadable {
        if listed.iter().any(|l| l.table == *table && l.day == *day) {
            let to = root
                .quarantine(*table, *day)
                .await
                .map_err(anyhow::Error::msg)?;
            crate::outln!("repair: moved the damaged file aside to {to}")?;
        }
    }
    Ok(())
}

/// Days of tables.
type Days = Vec<(Table, NaiveDate)>;

/// Splits the days into those the API can still serve (inside the horizon, not in the future)
/// and those it cannot.
fn fetchable(config: &Config, days: Days, now_ms: i64) -> (Days, Days) {
    let horizon = crate::plan::horizon_ms(now_ms, config.pipeline.horizon_margin_ms());
    days.into_iter().partition(|(_, d)| {
        let (start, end) = Layout::day_range(config.pipeline.timezone, *d);
        start < now_ms && horizon < end
    })
}

/// Takes back every sink's commits of the days, so the run fetches them again. Returns the
/// windows taken back.
async fn take_back(
    sinks: &[std::sync::Arc<dyn Sink>],
    ledger: &dyn Ledger,
    ranges: &[(i64, i64)],
    days: &[(Table, NaiveDate)],
) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut all = vec![];
    for sink in sinks {
        let taken = ledger
            .invalidate(
                &sink.id(),
                ranges,
                days,
                "verify --repair: the sinks differed",
            )
            .await?;
        tracing::info!(
            sink = %sink.kind(),
            windows = taken.len(),
            "repair: commits taken back"
        );
        all.extend(taken);
    }
    Ok(all)
}
