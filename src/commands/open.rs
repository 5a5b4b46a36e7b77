//! Opening what a command works on: PostgreSQL (with what it may change), the sinks, and the
//! ledger that goes with them. Decided once, here.

use std::sync::Arc;

use crate::config::Config;
use crate::config::RootUrl;
use crate::db::{Access, PgError, PgStore, SessionLimits};
use crate::error::InputError;
use crate::ledger::{FileLedger, Ledger, SinkId};
use crate::ledger::{PgLedger, SinkKind};
use crate::sink::Sink;
use crate::sink::parquet::{ObjectRoot, OpenError, ParquetSink, Root, check_zone, reconcile};
use crate::sink::postgres::PostgresSink;

/// The ledger that goes with the configured sinks: PostgreSQL's when it is configured (it then
/// tracks the Parquet commits too), else the file ledger under the Parquet root.
pub(crate) fn open_ledger(
    config: &Config,
    store: Option<&PgStore>,
    read_only: bool,
) -> anyhow::Result<Arc<dyn Ledger>> {
    Ok(match (store, &config.parquet) {
        (Some(store), _) => Arc::new(PgLedger::new(store.clone())),
        (None, Some(pq)) => {
            let Some(root) = pq.local_root() else {
                return Err(InputError::new(format!(
                    "the Parquet root {} is on object storage, which needs [postgres] for the \
                     ledger",
                    pq.root
                ))
                .into());
            };
            let opened = if read_only {
                FileLedger::open_read_only(root)
            } else {
                FileLedger::open(root)
            };
            Arc::new(opened.map_err(|e| InputError::new(e.to_string()))?)
        }
        (None, None) => {
            return Err(InputError::new(
                "no sink is configured: add a [parquet] and/or a [postgres] section",
            )
            .into());
        }
    })
}

/// Connects to PostgreSQL as `[postgres]` says and applies the migrations.
pub async fn connect_postgres(config: &Config) -> anyhow::Result<Option<PgStore>> {
    connect_postgres_with(config, Access::Write).await
}

/// Windows of a run that commit at once at most; more in flight wait for a session (a commit
/// is short beside a request).
pub const COMMIT_SESSIONS: usize = 4;

/// The PostgreSQL pool of a run of `concurrency`: a session per window committing (at most
/// [`COMMIT_SESSIONS`]), one per day being written to an object-storage root (its lock, see
/// [`DAYS_IN_FLIGHT`](crate::sink::parquet::DAYS_IN_FLIGHT)), and two for the ledger and the
/// leases. Sessions are opened as they are needed.
pub fn pool_size(concurrency: usize) -> u32 {
    (2 * concurrency.min(COMMIT_SESSIONS) + 2) as u32
}

/// Connects to PostgreSQL as `[postgres]` says, with what the command may change.
pub async fn connect_postgres_with(
    config: &Config,
    access: Access,
) -> anyhow::Result<Option<PgStore>> {
    let Some(pg) = &config.postgres else {
        return Ok(None);
    };
    let url = pg.resolve_url()?;
    let store = PgStore::connect_limited(
        &url,
        &pg.schema,
        config.pipeline.timezone,
        pool_size(config.source.concurrency),
        access,
        session_limits(config),
    )
    .await
    .map_err(PgError::into_anyhow)?;
    Ok(Some(store))
}

/// The bounds on every PostgreSQL session of a run, from its lease timings.
pub(crate) fn session_limits(config: &Config) -> SessionLimits {
    SessionLimits::for_leases(
        std::time::Duration::from_secs(config.pipeline.lease_secs),
        std::time::Duration::from_secs(config.pipeline.heartbeat_secs),
    )
}

/// What the read-only commands (`plan`, `status`) read: PostgreSQL when it is configured and was
/// ever written, and the ledger that goes with the sinks. A database never written to holds
/// nothing: it reads as an empty ledger, so a new user's `plan` and `status` work before the
/// first run.
pub(crate) async fn open_read_only(
    config: &Config,
) -> anyhow::Result<(Option<PgStore>, Arc<dyn Ledger>)> {
    let Some(pg) = &config.postgres else {
        return Ok((None, open_ledger(config, None, true)?));
    };
    let url = pg.resolve_url()?;
    match PgStore::connect_limited(
        &url,
        &pg.schema,
        config.pipeline.timezone,
        2,
        Access::ReadOnly,
        session_limits(config),
    )
    .await
    {
        Ok(store) => {
            let ledger = open_ledger(config, Some(&store), true)?;
            Ok((Some(store), ledger))
        }
        Err(PgError::NeverWritten(m)) => {
            tracing::info!("{m}: nothing is committed there");
            Ok((None, Arc::new(crate::ledger::MemoryLedger::default())))
        }
        Err(e) => Err(e.into_anyhow()),
    }
}

/// Opens the configured sinks and the ledger that goes with them: the PostgreSQL ledger when
/// PostgreSQL is configured (it then tracks the Parquet commits too), else the file ledger under
/// the Parquet root. Everything is checked here, before any API request is sent.
pub async fn open_sinks(config: &Config) -> anyhow::Result<(Vec<Arc<dyn Sink>>, Arc<dyn Ledger>)> {
    let (sinks, ledger, _) = open_sinks_and_store(config).await?;
    Ok((sinks, ledger))
}

/// The sinks already opened: the PostgreSQL sink and the ledger, and PostgreSQL itself.
pub type Opened = (Vec<Arc<dyn Sink>>, Arc<dyn Ledger>, Option<PgStore>);

/// [`open_sinks`], and the PostgreSQL store it connected to (workers coordinate there).
pub(crate) async fn open_sinks_and_store(config: &Config) -> anyhow::Result<Opened> {
    if config.postgres.is_none() && config.parquet.is_none() {
        return Err(InputError::new(
            "no sink is configured: add a [parquet] and/or a [postgres] section",
        )
        .into());
    }
    // Everything that is bad input is checked before anything is created.
    config.check_sinks().map_err(InputError::new)?;
    if let Some(pg) = &config.postgres {
        pg.resolve_url()?;
    }
    let opened = |e: OpenError| -> anyhow::Error {
        match e {
            OpenError::Busy(m) => crate::error::Busy(m).into(),
            OpenError::Refused(e) => InputError::new(e.to_string()).into(),
            OpenError::Unreachable(m) => anyhow::anyhow!(m),
        }
    };
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let mut parquet = match &config.parquet {
        Some(pq) => match &pq.root {
            RootUrl::Local(root) => Some(
                ParquetSink::open_local(root, config.pipeline.timezone, pq.owner)
                    .map_err(opened)?
                    .with_buffer_rows(pq.buffer_rows)
                    .with_compression(pq.compression),
            ),
            RootUrl::Object(_) => None,
        },
        None => None,
    };
    let store = connect_postgres(config).await?;
    if let (Some(pq), Some(store)) = (&config.parquet, &store)
        && let RootUrl::Object(url) = &pq.root
    {
        let root = ObjectRoot::open(pq, url, config.source.credentials).map_err(InputError::new)?;
        parquet = Some(
            ParquetSink::open_object(root, config.pipeline.timezone, store.pool(), pq.owner)
                .await
                .map_err(opened)?
                .with_buffer_rows(pq.buffer_rows)
                .with_compression(pq.compression),
        );
    }
    if let Some(store) = &store {
        sinks.push(Arc::new(PostgresSink::new(store.clone())));
    }
    let ledger = open_ledger(config, store.as_ref(), false)?;
    if let Some(p) = parquet {
        tracing::info!(root = %p.root().display(), "Parquet root");
        claim_root(p.root(), ledger.as_ref()).await?;
        reconcile::before_run(
            p.root(),
            config.pipeline.timezone,
            ledger.as_ref(),
            &p.id(),
            p.is_legacy(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot check the Parquet root against the ledger: {e}"))?;
        sinks.push(Arc::new(p));
    }
    Ok((sinks, ledger, store))
}

/// The ledger's name for a Parquet root, read without writing: its id; for a root an older
/// version wrote, the empty target its commits were recorded with; for a root that does not
/// exist (or was wiped), one that matches no commit.
pub(crate) async fn parquet_sink_id(root: &Root, tz: chrono_tz::Tz) -> anyhow::Result<SinkId> {
    let target = match root.read_meta().await.map_err(InputError::new)? {
        Some(meta) => {
            check_zone(&root.display(), &meta, tz).map_err(|e| InputError::new(e.message))?;
            meta.id
        }
        None if root.has_state_without_meta() => String::new(),
        None => format!("absent:{}", root.display()),
    };
    Ok(SinkId::new(SinkKind::Parquet, target))
}

/// Checks that the root is `ledger`'s, as its `root.json` records; a root no ledger has
/// claimed yet (new, or written before roots recorded their ledger) becomes `ledger`'s. A root
/// another ledger writes is refused (exit 2), saying how to adopt it on purpose.
pub(crate) async fn claim_root(root: &Root, ledger: &dyn Ledger) -> anyhow::Result<()> {
    let ours = ledger.identity().await?;
    let Some(mut meta) = root.read_meta().await.map_err(InputError::new)? else {
        return Ok(());
    };
    if meta.owner == crate::sink::parquet::RootOwner::Demo {
        // Sample data: `demo` writes it with whichever ledger `DATABASE_URL` gives it, and no
        // pipeline's run writes into it (its owner is checked when the root is opened).
        return Ok(());
    }
    match &meta.ledger {
        Some(theirs) if *theirs == ours => Ok(()),
        Some(theirs) => Err(InputError::new(format!(
            "the Parquet root {} is written by another pipeline: its _ccc_etl/root.json names \
             the ledger {theirs}, this configuration's is {ours}. Point `[parquet] root` at a \
             root of its own; or, if this is the same pipeline with a rebuilt or replaced ledger, \
             take the root over with `ccc-etl adopt-root` and this configuration",
            root.display()
        ))
        .into()),
        None => {
            meta.ledger = Some(ours);
            root.write_meta(&meta).await.map_err(anyhow::Error::msg)?;
            Ok(())
        }
    }
}
