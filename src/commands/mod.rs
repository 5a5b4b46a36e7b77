//! What each subcommand does: validated arguments in, a run and its exit code out. One file per
//! subcommand; `open` decides what a command works on, `job` runs backfills and nightly runs.

mod check;
mod demo;
mod emulator;
mod init;
mod job;
mod migrate;
mod open;
mod plan;
mod status;
mod verify;

use crate::cli::{Cli, Command, OutputFormat};
use crate::config::{Config, validate_instances};
use crate::error::{EXIT_CHECK, EXIT_OK, InputError};
use crate::pipeline::{RunSummary, system_now};

pub use demo::DEMO_INSTANCES;
use demo::run_demo;
use emulator::run_emulator;
use job::run_job;
pub use job::{backfill_request, execute, nightly_request, preflight_endpoint};
use migrate::run_migrate;
pub use open::{connect_postgres, connect_postgres_with, open_sinks};
pub use plan::run_plan;
pub use status::status_report;
use verify::run_repair;
pub use verify::run_verify;

/// Runs the parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Emulator(args) => run_emulator(args).await,
        Command::Demo {
            days,
            parquet_root,
            schema,
        } => run_demo(*days, parquet_root, schema, cli.quiet).await,
        Command::Plan { range, format, all } => {
            let config = Config::load(&cli.config)?;
            run_plan(&config, range, *format, *all, system_now()).await
        }
        Command::Backfill {
            range,
            refetch,
            strict_horizon,
            metrics_file,
        } => {
            let config = Config::load(&cli.config)?;
            let req = backfill_request(&config, range, *refetch, *strict_horizon, system_now())?;
            run_job(
                &config,
                &req,
                system_now(),
                metrics_file.as_deref(),
                cli.quiet,
            )
            .await
        }
        Command::Nightly {
            instances,
            metrics_file,
        } => {
            let config = Config::load(&cli.config)?;
            let instances = resolve_instances(&config, instances)?;
            let now = system_now();
            let req = nightly_request(&config, instances, now());
            run_job(&config, &req, now, metrics_file.as_deref(), cli.quiet).await
        }
        Command::Status {
            format,
            alert_days,
            metrics_file,
        } => {
            let config = Config::load(&cli.config)?;
            if let Some(path) = metrics_file {
                job::check_metrics_file(path)?;
            }
            let report = status_report(
                &config,
                alert_days.unwrap_or(config.pipeline.aging_alert_days),
                system_now()(),
            )
            .await?;
            if let Some(path) = metrics_file {
                let text = crate::metrics::render_headroom("status", &report);
                crate::metrics::write_atomic(path, &text).map_err(|e| {
                    anyhow::anyhow!("cannot write the metrics file {}: {e}", path.display())
                })?;
            }
            match format {
                OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(&report)?)?,
                OutputFormat::Table => crate::output::print(&report.render())?,
            }
            Ok(if report.alert { EXIT_CHECK } else { EXIT_OK })
        }
        Command::Verify {
            repair,
            metrics_file,
        } => {
            let config = Config::load(&cli.config)?;
            let code = run_verify(&config, &cli.config).await?;
            if *repair && code != EXIT_OK {
                return run_repair(&config, metrics_file.as_deref(), cli.quiet).await;
            }
            Ok(code)
        }
        Command::Init {
            instances,
            emulator,
        } => init::run_init(&cli.config, instances, *emulator),
        Command::Check => {
            let config = Config::load(&cli.config)?;
            check::run_check(&config).await
        }
        Command::Migrate => {
            let (config, access) = migrate_config(&cli.config)?;
            run_migrate(&config, access).await
        }
    }
}

/// The configuration `migrate` works with: the file, or, when there is no file at all and
/// `DATABASE_URL` is set, that database with the default schema and zone (what the README's
/// `DATABASE_URL=… ccc-etl migrate` means).
fn migrate_config(
    path: &std::path::Path,
) -> anyhow::Result<(Config, crate::sink::postgres::Access)> {
    use crate::sink::postgres::Access;
    let url_set =
        std::env::var(crate::config::ENV_DATABASE_URL).is_ok_and(|v| !v.trim().is_empty());
    if path.exists() || !url_set {
        return Ok((Config::load(path)?, Access::Migrate));
    }
    tracing::info!(
        "no {}: migrating the database of DATABASE_URL, schema ccc",
        path.display()
    );
    let mut config = Config::for_emulator("https://ccc.cn-shanghai.aliyuncs.com", vec![]);
    config.parquet = None;
    config.postgres = Some(crate::config::PostgresConfig {
        url: None,
        schema: crate::config::SchemaName::parse("ccc").expect("valid schema name"),
    });
    Ok((config, Access::MigrateKeepZone))
}

/// Prints the summary to stdout (one JSON line in JSON mode, with `run_id` and `command` at the
/// top) and returns its exit code.
pub(crate) fn report(command: &str, summary: &RunSummary) -> u8 {
    let text = if crate::output::json_lines() {
        let mut line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": if summary.exit_code() == EXIT_OK { "INFO" } else { "ERROR" },
            "message": "run summary",
            "command": command,
            "exit_code": summary.exit_code(),
        });
        if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
            (line.as_object_mut(), serde_json::to_value(summary))
        {
            obj.extend(fields);
        }
        format!("{line}\n")
    } else {
        summary.render()
    };
    if let Err(e) = crate::output::print(&text) {
        tracing::error!(error = %e, "cannot print the run summary");
    }
    summary.exit_code()
}

/// Instances from `--instance`, checked against the configuration, or all configured ones.
pub fn resolve_instances(config: &Config, requested: &[String]) -> Result<Vec<String>, InputError> {
    if requested.is_empty() {
        return Ok(config.pipeline.instances.clone());
    }
    validate_instances(requested).map_err(|e| InputError::new(format!("--instance: {e}")))?;
    for id in requested {
        if !config.pipeline.instances.contains(id) {
            return Err(InputError::new(format!(
                "--instance {id:?} is not a configured instance (configured: {})",
                config.pipeline.instances.join(", ")
            )));
        }
    }
    Ok(requested.to_vec())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
