//! ccc-etl: Alibaba Cloud Contact Center trending reports into PostgreSQL and Parquet.
//!
//! # Layout
//! One window's path through the code, in order:
//!
//! - [`config`]: `pipeline.toml` + environment -> validated [`config::Config`]
//! - [`plan`]: date range -> compliant windows (pure; `now` is a parameter); [`ranges`]: range
//!   arithmetic (pure)
//! - [`pipeline`]: a run, `prepare -> fetch_all -> flush -> finish`; one window's path; the
//!   [`pipeline::Tally`] that owns window state
//! - [`credentials`]: Alibaba Cloud's default credential chain, resolved once per process and
//!   renewed before expiry for the API client and an `oss://` root alike
//! - [`ccc`]: the API: [`ccc::sign`] (V1, V3), [`ccc::wire`] (JSON as sent),
//!   [`ccc::client`] (rate limit, retries),
//!   [`ccc::emulator`] (the local server); [`redact`]: the one scrubber of credentials from
//!   server text
//! - [`quality`] and [`dedup`]: checks, window ownership and de-duplication of rows (pure);
//!   [`record`]: typed rows and batches
//! - [`sink`]: the sinks a window's rows are committed to, behind one trait; each records its own
//!   commits. [`sink::parquet::buffer`] (which days wait for which windows),
//!   [`sink::parquet::layout`] (what a root holds where), [`sink::parquet::reconcile`] (the root
//!   checked against the ledger before a run), [`sink::parquet::migrate`] (a new zone)
//! - [`ledger`]: which windows are committed, where; resume = plan minus ledger
//! - [`db`]: PostgreSQL itself: connections (every session bounded), schema, migrations,
//!   privileges, errors in words; [`coord`]: several workers, one job (leases, the fencing
//!   token, one QPS budget)
//! - [`status`], [`verify`], [`metrics`], [`progress`], [`telemetry`], [`output`]: what a run
//!   tells people
//! - [`ddl`]: the statements that register a Parquet root in query engines (pure); [`report`]:
//!   the HTML report (pure: charts and page); [`alerts`]: chat webhooks; [`pipes`]: what a run
//!   tells Dagster when Dagster starts it (Dagster Pipes)
//! - [`cli`] and [`commands`]: the command line, one module per subcommand; [`error`]: exit codes;
//!   [`clock`]: the one clock for data time: planning, the horizon, status (`CCC_ETL_NOW` pins it);
//!   [`atomic`]: the one way a file is replaced

pub mod alerts;
pub mod atomic;
pub mod ccc;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod coord;
pub mod credentials;
pub mod db;
pub mod ddl;
pub mod dedup;
pub mod error;
pub mod ledger;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod pipes;
pub mod plan;
pub mod progress;
pub mod quality;
pub mod ranges;
pub mod record;
pub mod redact;
pub mod report;
pub mod sink;
pub mod status;
pub mod telemetry;
pub mod verify;
