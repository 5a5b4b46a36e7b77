//! Command-line definitions only (clap). Nothing here does work.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Ingests Alibaba Cloud Contact Center trending reports into PostgreSQL and Parquet.
#[derive(Debug, Parser)]
#[command(name = "ccc-etl", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "pipeline.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors; no progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output format of `plan` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// One JSON object.
    Json,
}

/// Output format of a run's summary (`backfill`, `nightly`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// Lines for people (with `--log-format json`: one JSON log line).
    Text,
    /// One JSON document, the scheduler's contract (docs/running.md).
    Json,
}

/// The range and instances of a run.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// Start: YYYY-MM-DD (start of that day in the configured zone), RFC 3339, or epoch ms.
    /// (`plan` without --from or --date previews `nightly`.)
    #[arg(long, value_name = "WHEN")]
    pub from: Option<String>,
    /// End: YYYY-MM-DD (inclusive: end of that day), RFC 3339, or epoch ms. Default: now.
    #[arg(long, value_name = "WHEN", requires = "from")]
    pub to: Option<String>,
    /// One local day, start to end, in the configured zone: a scheduler's daily partition
    /// (the same as --from DAY --to DAY).
    #[arg(long, value_name = "YYYY-MM-DD", conflicts_with_all = ["from", "to"])]
    pub date: Option<String>,
    /// Instance to fetch (repeatable). Default: every configured instance.
    #[arg(long = "instance", value_name = "ID")]
    pub instances: Vec<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch a date range into the configured sinks, skipping windows already committed.
    #[command(
        after_help = "Example:\n  ccc-etl backfill --from 2026-05-01 --to 2026-05-31 --instance ccc-test"
    )]
    Backfill {
        /// Range and instances.
        #[command(flatten)]
        range: RangeArgs,
        /// Fetch windows again even if they were committed.
        #[arg(long)]
        refetch: bool,
        /// Fail instead of clamping when part of the range is older than the 180-day horizon.
        #[arg(long)]
        strict_horizon: bool,
        /// Write Prometheus metrics to this file at the end of the run.
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// The summary on stdout: text, or one JSON document for a scheduler (docs/running.md).
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        format: SummaryFormat,
    },
    /// Fetch what is new since the last run, the lookback, and any gaps.
    #[command(after_help = "Example:\n  ccc-etl nightly --config /etc/ccc-etl/pipeline.toml")]
    Nightly {
        /// Instance (repeatable). Default: every configured instance.
        #[arg(long = "instance", value_name = "ID")]
        instances: Vec<String>,
        /// Write Prometheus metrics to this file at the end of the run.
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// The summary on stdout: text, or one JSON document for a scheduler (docs/running.md).
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        format: SummaryFormat,
    },
    /// Print the windows a backfill would fetch, without fetching.
    #[command(
        after_help = "Example:\n  ccc-etl plan --from \"$(date -d '-30 days' +%F)\" --format json"
    )]
    Plan {
        /// Range and instances.
        #[command(flatten)]
        range: RangeArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// The whole plan of the range, committed windows included (by default: only the
        /// requests a backfill would send now).
        #[arg(long)]
        all: bool,
    },
    /// Coverage, gaps and the aging-out alert per instance and media type.
    #[command(after_help = "Example:\n  ccc-etl status --format json")]
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Alert on uncovered time leaving the horizon within this many days (default: config).
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..180))]
        alert_days: Option<u32>,
        /// Write the horizon headroom and the alert as Prometheus metrics to this file.
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// Check that PostgreSQL and Parquet hold the same rows, and that every day file reads.
    #[command(after_help = "Example:\n  ccc-etl verify\n  ccc-etl verify --repair")]
    Verify {
        /// Fetch again every day that differs or whose file is damaged (needs credentials).
        #[arg(long)]
        repair: bool,
        /// With --repair: write Prometheus metrics of the repair run to this file.
        #[arg(long, value_name = "PATH", requires = "repair")]
        metrics_file: Option<PathBuf>,
    },
    /// Apply the PostgreSQL migrations; with a changed `timezone`, move the views and the
    /// Parquet root's day partitions to it.
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://postgres@127.0.0.1/ccc ccc-etl migrate"
    )]
    Migrate,
    /// Make the configured Parquet root this configuration's ledger's: for the same pipeline
    /// after its ledger was rebuilt or replaced (a new database, a wiped schema). Its rows stay;
    /// the next run fetches what the new ledger does not know.
    #[command(
        name = "adopt-root",
        after_help = "Example:
  ccc-etl --config /etc/ccc-etl/pipeline.toml adopt-root"
    )]
    AdoptRoot,
    /// Write one self-contained HTML report: coverage, daily KPIs, hour-of-week traffic, runs,
    /// findings.
    #[command(after_help = "Example:\n  ccc-etl report --output /var/www/ccc-etl/report.html")]
    Report {
        /// Where to write the page.
        #[arg(long, value_name = "PATH", default_value = "ccc-etl-report.html")]
        output: std::path::PathBuf,
        /// Local days shown, ending today (the API keeps 180).
        #[arg(long, value_name = "DAYS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=3660))]
        days: u32,
    },
    /// Print the statements that register the Parquet root's tables in a query engine.
    #[command(
        after_help = "Example:\n  ccc-etl ddl --engine duckdb > tables.sql\n  ccc-etl ddl --engine athena --schema contact_center"
    )]
    Ddl {
        /// The engine: duckdb, spark, trino, starrocks, athena or maxcompute.
        #[arg(long, value_enum)]
        engine: crate::ddl::Engine,
        /// The schema (database) for the tables; for Trino `catalog.schema`. Default: `ccc`
        /// (Trino `hive.ccc`; DuckDB's current schema, MaxCompute's current project).
        #[arg(long, value_name = "NAME")]
        schema: Option<String>,
    },
    /// Write a commented pipeline.toml to start from (never overwrites one).
    #[command(
        after_help = "Example:\n  ccc-etl init --instances ccc-prod-1,ccc-prod-2\n  ccc-etl init --emulator"
    )]
    Init {
        /// Instance ids for `[pipeline] instances`.
        #[arg(long, value_delimiter = ',', value_name = "ID,...")]
        instances: Vec<String>,
        /// Point `[source] endpoint` at a local emulator (`ccc-etl emulator`, port 8080).
        #[arg(long)]
        emulator: bool,
    },
    /// Check, without writing, that the credentials work (one API call), PostgreSQL is reachable
    /// with the privileges needed, and the Parquet root is writable.
    #[command(
        after_help = "Example:\n  ccc-etl --config /etc/ccc-etl/pipeline.toml check\n  ccc-etl check --send-test-alert"
    )]
    Check {
        /// Also send a test message to every `[alerts]` target.
        #[arg(long)]
        send_test_alert: bool,
    },
    /// Run the built-in CCC emulator (credentials from ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET).
    #[command(
        after_help = "Example:\n  ALIBABA_CLOUD_ACCESS_KEY_ID=demo ALIBABA_CLOUD_ACCESS_KEY_SECRET=demo-secret \\\n    ccc-etl emulator --listen 127.0.0.1:8080 --instances ccc-test,ccc-b"
    )]
    Emulator(EmulatorArgs),
    /// Back-fill the last N days from an in-process emulator: no credentials, no config needed.
    #[command(after_help = "Example:\n  ccc-etl demo --days 30")]
    Demo {
        /// Days to back-fill.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=180))]
        days: u32,
        /// Parquet root: a local directory (or file:// URL), or an object-storage URL such as
        /// s3://bucket/prefix (which needs DATABASE_URL: its ledger lives in PostgreSQL).
        #[arg(long, default_value = "ccc-etl-demo", value_name = "DIR|URL", value_parser = crate::config::parse_parquet_root)]
        parquet_root: crate::config::RootUrl,
        /// PostgreSQL schema for the demo's rows (with DATABASE_URL): kept apart from the
        /// production schema `ccc`.
        #[arg(long, default_value = "ccc_demo", value_name = "NAME")]
        schema: String,
        /// Where to write the report of the demo's days (as `ccc-etl report` writes it).
        #[arg(long, value_name = "PATH", default_value = "ccc-etl-demo-report.html")]
        report: std::path::PathBuf,
    },
}

/// `ccc-etl emulator` options.
#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free port (printed on the first line).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Known instance ids, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "ccc-test")]
    pub instances: Vec<String>,
    /// Bucket length, minutes.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub bucket_minutes: u32,
    /// Seed of the data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Hours during which a closed bucket keeps being revised.
    #[arg(long, default_value_t = 6)]
    pub revise_hours: u32,
    /// Send numbers as JSON strings.
    #[arg(long)]
    pub numbers_as_strings: bool,
    /// Use the older `CallsAbandonedInRinging` field name.
    #[arg(long)]
    pub legacy_ring_name: bool,
    /// Do not return the bucket containing StartTime when it starts before StartTime.
    #[arg(long)]
    pub no_floor_start: bool,
    /// Answer HTTP 400 Throttling.User above this many requests per second.
    #[arg(long, value_name = "QPS")]
    pub throttle_qps: Option<f64>,
    /// Fraction of requests answered 400 Throttling.User at random.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub throttle_fraction: f64,
    /// Fraction of requests answered 503 ServiceUnavailable.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub fail_503: f64,
    /// Fraction of requests answered 500 InternalError.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub fail_500: f64,
    /// Fraction of requests answered late.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub slow: f64,
    /// Delay of a late answer, ms.
    #[arg(long, default_value_t = 60_000)]
    pub slow_ms: u64,
    /// Fraction of requests answered with a truncated body.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub truncated: f64,
    /// Fraction of requests answered with a non-JSON body.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub non_json: f64,
    /// Seed of the fault draws.
    #[arg(long, default_value_t = 0)]
    pub fault_seed: u64,
    /// Lifetime of the STS credentials its STS, metadata service and credentials URI issue.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub sts_lifetime_secs: u64,
    /// Adds a field unknown to ccc-etl to every item of a section (`Inbound.CallsOverflowed`).
    #[arg(long, value_name = "SECTION.FIELD")]
    pub add_field: Vec<String>,
    /// Adds an array unknown to ccc-etl under `Data` (`SkillGroups`).
    #[arg(long, value_name = "NAME")]
    pub add_array: Vec<String>,
    /// Leaves a known field out of every item (`Inbound.CallsQueued`).
    #[arg(long, value_name = "SECTION.FIELD")]
    pub drop_field: Vec<String>,
    /// Sends a known field as an object instead of a number (`Outbound.TotalCalls`).
    #[arg(long, value_name = "SECTION.FIELD")]
    pub retype_field: Vec<String>,
}
