//! `ccc-etl adopt-root`: the configured Parquet root becomes this configuration's ledger's, on
//! purpose (every run checks that it is: [`claim_root`](super::open::claim_root)).

use crate::config::Config;
use crate::error::{EXIT_OK, InputError};
use crate::sink::parquet::Root;

use super::open::{connect_postgres, open_ledger};

/// `ccc-etl adopt-root`.
pub async fn run_adopt(config: &Config) -> anyhow::Result<u8> {
    let Some(pq) = &config.parquet else {
        return Err(InputError::new("adopt-root needs a [parquet] root to adopt").into());
    };
    let root = Root::open(pq, config.source.credentials).map_err(InputError::new)?;
    let Some(mut meta) = root.read_meta().await.map_err(InputError::new)? else {
        return Err(InputError::new(format!(
            "{} has no _ccc_etl/root.json: there is nothing to adopt (the first run claims a new \
             root)",
            root.display()
        ))
        .into());
    };
    let store = connect_postgres(config).await?;
    let ledger = open_ledger(config, store.as_ref(), false)?;
    let ours = ledger.identity().await?;
    let before = meta.ledger.replace(ours.clone());
    if before.as_deref() == Some(ours.as_str()) {
        crate::outln!(
            "adopt-root: {} is already this ledger's ({ours})",
            root.display()
        )?;
        return Ok(EXIT_OK);
    }
    root.write_meta(&meta).await.map_err(anyhow::Error::msg)?;
    tracing::warn!(
        root = %root.display(),
        was = before.as_deref().unwrap_or("none"),
        now = %ours,
        "adopted the Parquet root"
    );
    crate::outln!(
        "adopt-root: {} is now written by the ledger {ours} (was {}); its rows stay, and the next \
         run fetches what this ledger does not know",
        root.display(),
        before.as_deref().unwrap_or("none")
    )?;
    Ok(EXIT_OK)
}
