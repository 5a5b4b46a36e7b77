//! `ccc-etl migrate`: the PostgreSQL migrations, and a deliberate change of time zone.

use super::open::{connect_postgres_with, open_ledger};
use crate::config::Config;
use crate::db::Access;
use crate::error::{EXIT_OK, InputError};
use crate::ledger::SinkId;
use crate::ledger::SinkKind;
use crate::sink::parquet::{Layout, Root, reconcile};

/// The configuration `migrate` works with: the file, or, when there is no file at all and
/// `DATABASE_URL` is set, that database with the default schema (what the README's
/// `DATABASE_URL=… ccc-etl migrate` means), keeping the zone it has.
pub(crate) fn migrate_config(path: &std::path::Path) -> anyhow::Result<(Config, Access)> {
    let url_set =
        std::env::var(crate::config::ENV_DATABASE_URL).is_ok_and(|v| !v.trim().is_empty());
    if path.exists() || !url_set {
        return Ok((Config::load(path)?, Access::Migrate));
    }
    tracing::info!(
        "no {}: migrating the database of DATABASE_URL, schema ccc",
        path.display()
    );
    Ok((Config::database_only(), Access::MigrateKeepZone))
}

/// `ccc-etl migrate`: applies the PostgreSQL migrations and, when `timezone` changed, moves the
/// views and the Parquet root's day partitions to the configured zone.
pub(crate) async fn run_migrate(config: &Config, access: Access) -> anyhow::Result<u8> {
    if config.postgres.is_none() && config.parquet.is_none() {
        return Err(InputError::new(
            "migrate needs a [postgres] or [parquet] section in the configuration",
        )
        .into());
    }
    let tz = config.pipeline.timezone;
    if let Some(pq) = &config.parquet
        && pq.local_root().is_none()
    {
        // Checked before the database changes: an object-storage root is not re-partitioned.
        check_object_root_zone(config, pq).await?;
    }
    let store = connect_postgres_with(config, access).await?;
    if let Some(store) = &store {
        let zone = store.recorded_timezone().await?.unwrap_or_default();
        crate::outln!(
            "migrations applied: schema {} at {}; views in time zone {zone}",
            store.schema().as_str(),
            store.describe(),
        )?;
    }
    if let Some(local) = config.parquet.as_ref().and_then(|pq| pq.local_root()) {
        let layout = Layout::new(local);
        if layout.read_meta().map_err(InputError::new)?.is_some() {
            repartition(config, &layout, store.as_ref(), tz).await?;
        }
    }
    Ok(EXIT_OK)
}

/// An object-storage root must already cut its days in the configured zone.
async fn check_object_root_zone(
    config: &Config,
    pq: &crate::config::ParquetConfig,
) -> anyhow::Result<()> {
    let tz = config.pipeline.timezone;
    let root = Root::open(pq, config.source.credentials).map_err(InputError::new)?;
    if let Some(meta) = root.read_meta().await.map_err(anyhow::Error::msg)? {
        crate::sink::parquet::check_zone(&root.display(), &meta, tz).map_err(|_| {
            InputError::new(format!(
                "the Parquet root {} cuts its days in {}, the configuration says {}: \
                 migrate re-partitions local roots only; set `timezone = \"{}\"` back, \
                 or back-fill into a new prefix",
                pq.root,
                meta.timezone,
                tz.name(),
                meta.timezone
            ))
        })?;
    }
    Ok(())
}

/// A local root's day files rewritten for `tz` (nothing to do when it already cuts its days
/// there), and the ledger's manifest following the new files.
async fn repartition(
    config: &Config,
    layout: &Layout,
    store: Option<&crate::db::PgStore>,
    tz: chrono_tz::Tz,
) -> anyhow::Result<()> {
    let compression = config
        .parquet
        .as_ref()
        .map(|p| p.compression)
        .unwrap_or_default();
    // Another `migrate` (or a run) holds the root: busy, exit 5; run again when it is done.
    let _lock = layout.lock().map_err(|e| -> anyhow::Error {
        match e {
            crate::sink::parquet::LockError::Held(m) => crate::error::Busy(m).into(),
            crate::sink::parquet::LockError::Io(m) => anyhow::anyhow!(m),
        }
    })?;
    let before = layout.list().map_err(anyhow::Error::msg)?;
    let report = {
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || {
            crate::sink::parquet::migrate::repartition(&layout, tz, compression)
        })
        .await?
        .map_err(anyhow::Error::msg)?
    };
    if report.files_before == 0 && report.rows == 0 {
        return Ok(());
    }
    // The files are new: the ledger's manifest follows them (coverage is unchanged).
    let ledger = open_ledger(config, store, false)?;
    let meta = layout
        .read_meta()
        .map_err(anyhow::Error::msg)?
        .expect("checked by the caller");
    let id = SinkId::new(SinkKind::Parquet, meta.id);
    let old: Vec<_> = before.iter().map(|f| (f.table, f.day)).collect();
    ledger.invalidate(&id, &[], &old, "re-partitioned").await?;
    reconcile::record_listing(&Root::Local(layout.clone()), ledger.as_ref(), &id.target)
        .await
        .map_err(anyhow::Error::msg)?;
    crate::outln!(
        "Parquet root {} re-partitioned for {}: {} rows, {} day files (were {})",
        layout.root().display(),
        tz.name(),
        report.rows,
        report.files_after,
        report.files_before
    )?;
    Ok(())
}
