//! What each subcommand does: validated arguments in, a run and its exit code out. One file per
//! subcommand; `open` decides what a command works on, `job` runs backfills and nightly runs.

mod adopt;
mod check;
mod ddl;
mod demo;
mod emulator;
mod init;
mod job;
mod migrate;
mod notify;
mod open;
mod plan;
mod report;
mod status;
mod verify;

use crate::cli::{Cli, Command};
use crate::config::{Config, validate_instances};
use crate::error::{EXIT_OK, InputError};
use crate::pipeline::{NowFn, RunSummary};

pub use demo::DEMO_INSTANCES;
use demo::run_demo;
use emulator::run_emulator;
use job::{JobOutput, run_job};
pub use job::{backfill_request, execute, nightly_request, preflight_endpoint};
use migrate::run_migrate;
pub use open::{connect_postgres, connect_postgres_with, open_sinks, pool_size};
pub use plan::run_plan;
pub use status::{coverage_report, status_report};
use verify::run_repair;
pub use verify::run_verify;

/// Runs the parsed command line on the clock `now` (the one `main` pinned, see [`crate::clock`]);
/// returns the exit code. Every command reads "now" from it and from nowhere else.
pub async fn run(cli: Cli, now: NowFn) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Emulator(args) => run_emulator(args).await,
        Command::Demo {
            days,
            parquet_root,
            schema,
            report,
        } => run_demo(*days, parquet_root, schema, report, cli.quiet, now).await,
        Command::Plan { range, format, all } => {
            let config = Config::load(&cli.config)?;
            run_plan(&config, range, *format, *all, now).await
        }
        Command::Backfill {
            range,
            refetch,
            strict_horizon,
            metrics_file,
            format,
        } => {
            let config = Config::load(&cli.config)?;
            let req = backfill_request(&config, range, *refetch, *strict_horizon, now.clone())?;
            let out = JobOutput::new(metrics_file.as_deref(), *format, cli.quiet);
            run_job(&config, &req, now, out).await
        }
        Command::Nightly {
            instances,
            metrics_file,
            format,
        } => {
            let config = Config::load(&cli.config)?;
            let instances = resolve_instances(&config, instances)?;
            let req = nightly_request(&config, instances, now());
            let out = JobOutput::new(metrics_file.as_deref(), *format, cli.quiet);
            run_job(&config, &req, now, out).await
        }
        Command::Status {
            format,
            alert_days,
            metrics_file,
        } => {
            let config = Config::load(&cli.config)?;
            status::run_status(&config, *format, *alert_days, metrics_file.as_deref(), now).await
        }
        Command::Verify {
            repair,
            metrics_file,
        } => verify_then_repair(&cli, *repair, metrics_file.as_deref(), now).await,
        Command::Init {
            instances,
            emulator,
        } => init::run_init(&cli.config, instances, *emulator),
        Command::Check { send_test_alert } => {
            let config = Config::load(&cli.config)?;
            check::run_check(&config, *send_test_alert, now).await
        }
        Command::Report { output, days } => {
            report::run_report(&cli.config, output, *days, now).await
        }
        Command::Ddl { engine, schema } => ddl::run_ddl(&cli.config, *engine, schema.as_deref()),
        Command::AdoptRoot => adopt::run_adopt(&Config::load(&cli.config)?).await,
        Command::Migrate => {
            let (config, access) = migrate::migrate_config(&cli.config)?;
            run_migrate(&config, access).await
        }
    }
}

/// `verify`, and with `--repair` the run that fetches again what differs.
async fn verify_then_repair(
    cli: &Cli,
    repair: bool,
    metrics_file: Option<&std::path::Path>,
    now: NowFn,
) -> anyhow::Result<u8> {
    let config = Config::load(&cli.config)?;
    let (code, found) = verify::verify(&config, &cli.config).await?;
    if repair && code != EXIT_OK {
        return run_repair(&config, &cli.config, found, metrics_file, cli.quiet, now).await;
    }
    Ok(code)
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

/// A metrics file that cannot be written is bad input, found before any request rather than after
/// the data is committed: its directory must be a directory that takes a new file, and the file
/// itself not a directory.
pub fn check_metrics_file(path: &std::path::Path) -> Result<(), InputError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let fail = |why: String| InputError::new(format!("--metrics-file {}: {why}", path.display()));
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(fail(format!(
                "cannot write in {}: it is not a directory",
                dir.display()
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(fail(format!("cannot write in {}: {e}", dir.display()))),
    }
    if path.is_dir() {
        return Err(fail("it is a directory; name a file in it".into()));
    }
    may_create_in(dir).map_err(|e| fail(format!("cannot write in {}: {e}", dir.display())))
}

/// Whether this process may create files in `dir`, asked of the kernel (access(2)), which writes
/// nothing.
pub(crate) fn may_create_in(dir: &std::path::Path) -> std::io::Result<()> {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).map_err(std::io::Error::from)
}

/// Instances from `--instance`, checked against the configuration, or all configured ones.
pub fn resolve_instances(config: &Config, requested: &[String]) -> Result<Vec<String>, InputError> {
    if requested.is_empty() {
        return Ok(config.pipeline.instance_ids());
    }
    validate_instances(requested).map_err(|e| InputError::new(format!("--instance: {e}")))?;
    let configured = config.pipeline.instance_ids();
    for id in requested {
        if !configured.contains(id) {
            return Err(InputError::new(format!(
                "--instance {id:?} is not a configured instance (configured: {})",
                configured.join(", ")
            )));
        }
    }
    Ok(requested.to_vec())
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives in between is not lost (and does not kill
/// the process with the default action).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (mut int, mut term) = streams;
            let recv = |s: &mut Option<tokio::signal::unix::Signal>| {
                let s = s.take();
                async move {
                    match s {
                        Some(mut s) => {
                            s.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::select! {
                _ = recv(&mut int) => {},
                _ = recv(&mut term) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
