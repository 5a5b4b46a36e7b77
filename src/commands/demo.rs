//! `ccc-etl demo`: a backfill from an in-process emulator, no credentials needed.

use anyhow::Context as _;

use super::job::{HowToRun, execute};
use super::open::open_sinks;
use super::report;
use crate::ccc::emulator::{self, EmulatorOptions};
use crate::config::Config;
use crate::credentials::Credentials;
use crate::error::InputError;
use crate::pipeline::{BackfillRequest, NowFn, RangeStart, RunKind};
use crate::plan::{self};

/// Instances the demo's emulator serves.
pub const DEMO_INSTANCES: [&str; 3] = ["demo-north", "demo-south", "demo-east"];

pub(crate) async fn run_demo(
    days: u32,
    root: &crate::config::RootUrl,
    schema: &str,
    report_path: &std::path::Path,
    quiet: bool,
    now: NowFn,
) -> anyhow::Result<u8> {
    // A throwaway key pair: the demo needs no credentials, and these never leave the process.
    let key_id = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let instances: Vec<String> = DEMO_INSTANCES.iter().map(|s| s.to_string()).collect();
    let opts = EmulatorOptions::new(instances.clone(), &key_id, &secret);
    let emu = emulator::spawn(opts)
        .await
        .context("cannot start the in-process emulator")?;
    let schema = crate::config::SchemaName::parse(schema)
        .map_err(|e| InputError::new(format!("--schema: {e}")))?;
    let config = demo_config(&emu.endpoint(), root, &schema);
    let (req, from_day) = demo_request(&config, days, now());
    crate::outln!(
        "demo: emulator on {} serving {}; back-filling {} .. now into {}{}",
        emu.endpoint(),
        DEMO_INSTANCES.join(", "),
        from_day,
        root,
        if config.postgres.is_some() {
            format!(" and PostgreSQL (DATABASE_URL, schema {})", schema.as_str())
        } else {
            String::new()
        }
    )?;
    config.check_sinks().map_err(|e| {
        InputError::new(format!(
            "--parquet-root {root}: {e}; set DATABASE_URL to use it with the demo"
        ))
    })?;
    let (sinks, ledger) = open_sinks(&config).await?;
    let summary = execute(
        &config,
        Credentials::new(&key_id, &secret, None),
        sinks,
        ledger,
        &req,
        HowToRun {
            now: now.clone(),
            quiet,
            run_id: None,
            workers: None,
        },
    )
    .await?;
    let code = report(RunKind::Demo.as_str(), &summary);
    emu.shutdown().await;
    // The report of the days the demo fetched (and today's so far).
    super::report::write_report(&config, report_path, days + 1, now).await?;
    how_to_query(root, config.postgres.is_some().then_some(&schema))?;
    Ok(code)
}

/// The emulator's config with a Parquet root, and PostgreSQL too when `DATABASE_URL` is set, in
/// a schema of its own (`ccc_demo`): demo rows never mix with a warehouse's `ccc`.
fn demo_config(
    endpoint: &str,
    root: &crate::config::RootUrl,
    schema: &crate::config::SchemaName,
) -> Config {
    let instances = DEMO_INSTANCES.iter().map(|s| s.to_string()).collect();
    let mut config = Config::for_emulator(endpoint, instances);
    // The demo fetches only its days and never runs again: nothing of its ages out.
    config.pipeline.aging_alert_days = 0;
    config.parquet = Some(crate::config::ParquetConfig {
        owner: crate::sink::parquet::RootOwner::Demo,
        ..crate::config::ParquetConfig::at(root.clone())
    });
    if std::env::var(crate::config::ENV_DATABASE_URL).is_ok_and(|v| !v.trim().is_empty()) {
        config.postgres = Some(crate::config::PostgresConfig {
            url: None,
            schema: schema.clone(),
        });
    }
    config
}

/// The last `days` local days up to `now_ms`, and the first of them.
fn demo_request(config: &Config, days: u32, now_ms: i64) -> (BackfillRequest, chrono::NaiveDate) {
    let tz = config.pipeline.timezone;
    let today = crate::plan::local_date(tz, now_ms);
    let from_day = today
        .checked_sub_days(chrono::Days::new(days as u64))
        .unwrap_or(today);
    let req = BackfillRequest {
        instances: DEMO_INSTANCES.iter().map(|s| s.to_string()).collect(),
        from: RangeStart::At(plan::local_day_start(tz, from_day)),
        to_ms: now_ms,
        refetch: false,
        strict_horizon: false,
        lookback_ms: None,
        kind: RunKind::Demo,
    };
    (req, from_day)
}

/// How to look at what the demo wrote.
fn how_to_query(
    root: &crate::config::RootUrl,
    schema: Option<&crate::config::SchemaName>,
) -> anyhow::Result<()> {
    crate::outln!(
        "\nQuery the result with DuckDB (the `duckdb` CLI from duckdb.org; from Python, `pip install duckdb` and `duckdb.sql(...)` take the same query), for example:\n  duckdb -c \"SELECT instance_id, dt AS day, sum(total_calls) AS calls, \
         sum(calls_handled) AS handled FROM read_parquet('{root}/inbound_trend/*/*.parquet', hive_partitioning = true) \
         GROUP BY ALL ORDER BY ALL LIMIT 10\""
    )?;
    if let Some(schema) = schema {
        crate::outln!(
            "and in PostgreSQL:\n  psql \"$DATABASE_URL\" -c \"SELECT * FROM {}.daily_traffic ORDER BY day DESC, instance_id LIMIT 10\"",
            schema.as_str()
        )?;
    }
    Ok(())
}
