//! `ccc-etl`: parses the command line, sets up logging, runs, and turns the outcome into a
//! message and an exit code (see `ccc_etl::error` for the codes).

use std::process::ExitCode;

use clap::Parser;

use ccc_etl::cli::Cli;
use ccc_etl::error::exit_code_for;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    ccc_etl::telemetry::init(log_format, cli.verbose, cli.quiet);
    ccc_etl::output::set_json_lines(log_format == ccc_etl::cli::LogFormat::Json);
    match ccc_etl::clock::pinned_by_env() {
        Ok(Some(at)) => {
            ccc_etl::clock::pin(at);
            tracing::debug!(now = %at, "the clock is pinned by {}", ccc_etl::clock::ENV);
        }
        Ok(None) => {}
        Err(e) => {
            ccc_etl::telemetry::print_error(log_format, &e.to_string(), 2);
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(ccc_etl::commands::run(cli, ccc_etl::pipeline::system_now())) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code_for(&e);
            ccc_etl::telemetry::print_error(log_format, &format!("{e:#}"), code);
            ExitCode::from(code)
        }
    }
}
