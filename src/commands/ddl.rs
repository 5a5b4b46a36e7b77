//! `ccc-etl ddl`: prints what registers the configured Parquet root in a query engine.

use std::path::Path;

use crate::config::{Config, RootUrl};
use crate::ddl::{Engine, Target, render, with_default_schema};
use crate::error::{EXIT_OK, InputError};

/// Prints the statements for `engine` for the configuration in `path` on stdout; a root the
/// engine cannot read is bad input.
pub fn run_ddl(path: &Path, engine: Engine, schema: Option<&str>) -> anyhow::Result<u8> {
    let config = Config::load(path)?;
    let pq = config.parquet.as_ref().ok_or_else(|| {
        InputError(
            "ddl: the configuration has no [parquet] section, so no tables to register".into(),
        )
    })?;
    // A local root as an absolute path, so the statements work from any directory.
    let root = match &pq.root {
        RootUrl::Local(p) => RootUrl::Local(std::path::absolute(p)?),
        other => other.clone(),
    };
    let account = std::env::var("AZURE_STORAGE_ACCOUNT_NAME").ok();
    let target = Target {
        root: &root,
        schema,
        region: pq.region.as_deref(),
        azure_account: account.as_deref(),
    };
    let text = render(engine, &with_default_schema(engine, target))
        .map_err(|e| InputError(format!("ddl: {e}")))?;
    print!("{text}");
    Ok(EXIT_OK)
}
