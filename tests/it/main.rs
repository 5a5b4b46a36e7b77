//! The integration tests, one binary: each module is one area (see the README's "Testing").

mod alerts;
mod backfill;
mod bad_input;
mod cli;
mod codebase;
mod common;
mod crash;
mod credentials;
mod dbt;
mod ddl;
mod deploy;
mod disk_full;
mod drift;
mod emulator;
mod faults;
mod monitoring;
mod nightly;
mod nights;
mod object_store;
mod operator;
mod pg_faults;
mod postgres;
mod readme;
mod report;
mod secrets;
mod workers;
