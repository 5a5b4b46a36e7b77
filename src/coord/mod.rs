//! Several workers, one job, PostgreSQL the only coordinator.
//!
//! A worker ([`Coordinator`]) registers in `workers` and heartbeats. It enqueues the windows of
//! its plan into `leases` (idempotently: every worker enqueues the same plan), then claims them in
//! fetch order, a batch at a time, with `FOR UPDATE SKIP LOCKED`: a claimed window is `leased` to
//! the worker until `lease_until`, which the heartbeat extends while the window is in flight.
//! A window another worker holds is retried after the worker's own windows: if that worker died,
//! its lease expires and the window is claimed again (the rescue River and graphile-worker do with
//! their `attempted_by`/`locked_at` columns, here per window).
//!
//! Each claim increments `attempt`, the fencing token. A write counts only if the lease is still
//! the writer's, with the attempt it claimed: checked inside the PostgreSQL sink's transaction
//! ([`HELD_LEASES`], the lease rows locked until the commit), under a Parquet day's lock before
//! its file is written on object storage ([`HOLDS_NOW`]), and before the Parquet commits are
//! recorded ([`STILL_MINE`]). A slow worker whose lease was taken over cannot overwrite the newer
//! result; its refused writes are counted. Its heartbeat notices the loss (a lease taken over,
//! or every lease when no extension succeeded for a lease): those windows' requests are
//! cancelled, and the pipeline claims them again with the ones other workers hold.
//!
//! Lock order: every statement that locks several lease rows locks them in key order (instance,
//! media type, start), and a commit takes its series locks before its lease rows, so two
//! transactions never wait for each other in a circle (a group commit holds many lease rows while
//! the heartbeat extends them all).
//!
//! Lookups by key: a statement given a list of windows finds their lease rows one index lookup
//! each, in a `LATERAL` subquery the planner cannot flatten (`FOR UPDATE` or `OFFSET 0`), and
//! updates the rows it locked by their row ids (`ctid = ANY(...)`, a TID scan; they cannot move
//! while locked). `leases` is filled when a run starts, before PostgreSQL has statistics on it:
//! as plain joins, the planner took the worker's lease rows for one row and scanned the whole
//! list once for each of them, or the whole table for every claim, a cost that grew with the
//! square of the run.
//!
//! The jobs live in files of their own: `lease` (the queue and its statements), `fence`
//! (what the sinks see: [`Fence`]), `rate` (one QPS budget: each worker's pacers capped at
//! `max_qps / live workers`, a throttling answer seen by one worker slowing every other one
//! down), and `registry` (the `workers` table, liveness by PostgreSQL sessions).

mod fence;
mod lease;
mod rate;
mod registry;

pub use fence::Fence;
pub use lease::{
    CLAIM, Claimed, HELD_LEASES, HOLDS_NOW, LeaseState, MARK_DONE, STILL_MINE, leased_windows,
};
pub(crate) use lease::{columns, flags_at};
use rate::RateShare;
pub use registry::{WorkerRow, hostname, workers};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use crate::ccc::ratelimit::AdaptivePacer;
use crate::ledger::SinkKind;
use crate::record::{MediaType, WindowKey};

type Key = (String, MediaType, i64);

fn key(w: &WindowKey) -> Key {
    (w.instance_id.clone(), w.media_type, w.start_ms)
}

/// Lease timings.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long a claim holds without a heartbeat.
    pub lease: Duration,
    /// How often the heartbeat extends the leases (and re-reads the shared rate).
    pub heartbeat: Duration,
}

/// A window this worker holds: where it ends, and the attempt it was claimed with (its fencing
/// token).
#[derive(Debug, Clone, Copy)]
struct Held {
    end_ms: i64,
    attempt: i32,
}

/// The lease a window is fetched under: the start it was claimed with (a window whose start aged
/// out is sent shorter) and the attempt.
#[derive(Debug, Clone, Copy)]
struct LeaseRef {
    start_ms: i64,
    attempt: i32,
}

/// One worker of a job.
pub struct Coordinator {
    pool: PgPool,
    worker: uuid::Uuid,
    settings: LeaseSettings,
    /// The windows held, by lease key (their start): their end and the attempt they were
    /// claimed with.
    tokens: Mutex<HashMap<Key, Held>>,
    /// Windows done here, marked done in `leases` by the next heartbeat.
    done_queue: Mutex<Vec<WindowKey>>,
    fenced: AtomicU64,
    done: AtomicU64,
    /// This worker's share of the job's request rate, when it paces requests.
    rate: Option<RateShare>,
    /// When the leases were last extended (a monotonic clock, which runs on while the process
    /// is stopped): past a lease without an extension, every lease held is taken for lost.
    extended_at: Mutex<Instant>,
    /// Windows whose lease this worker lost (taken over, or expired without a heartbeat): their
    /// fetches are cancelled and their rows are written nowhere.
    lost: Mutex<HashSet<Key>>,
    /// Bumped whenever `lost` grows, to wake the fetches waiting on it.
    lost_signal: tokio::sync::watch::Sender<u64>,
    /// Windows whose commit a sink refused, counted once each.
    refusals: Mutex<HashSet<(Key, SinkKind)>>,
    /// The worker's own session, open while it lives (see `registry::rescue_dead_workers`).
    _presence: tokio::sync::Mutex<PgConnection>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

fn db(e: sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "coordination in PostgreSQL failed: {}",
        crate::db::explain(&e)
    )
}

impl Coordinator {
    /// Registers a worker running `command`.
    pub async fn register(
        pool: PgPool,
        command: &str,
        settings: LeaseSettings,
    ) -> anyhow::Result<Arc<Self>> {
        let worker = uuid::Uuid::new_v4();
        let host = hostname();
        // A session of the worker's own for as long as it lives: what `pg_stat_activity` shows
        // of it however idle its pool is.
        let presence = PgConnection::connect_with(&pool.connect_options())
            .await
            .map_err(db)?;
        registry::insert(&pool, worker, &host, command)
            .await
            .map_err(db)?;
        tracing::info!(worker = %worker, host = %host, "worker registered");
        registry::rescue_dead_workers(&pool).await.map_err(db)?;
        let c = Arc::new(Self {
            pool,
            worker,
            settings,
            tokens: Mutex::new(HashMap::new()),
            done_queue: Mutex::new(Vec::new()),
            fenced: AtomicU64::new(0),
            done: AtomicU64::new(0),
            rate: None,
            extended_at: Mutex::new(Instant::now()),
            lost: Mutex::new(HashSet::new()),
            lost_signal: tokio::sync::watch::Sender::new(0),
            refusals: Mutex::new(HashSet::new()),
            _presence: tokio::sync::Mutex::new(presence),
        });
        Ok(c)
    }

    /// Shares each region's `max_qps` with the other live workers through that region's pacer.
    pub fn with_pacers(
        mut self: Arc<Self>,
        pacers: Vec<Arc<AdaptivePacer>>,
        max_qps: f64,
    ) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("set before the coordinator is shared")
            .rate = Some(RateShare::new(pacers, max_qps));
        self
    }

    /// This worker's id.
    pub fn worker_id(&self) -> uuid::Uuid {
        self.worker
    }

    /// The lease timings.
    pub fn settings(&self) -> LeaseSettings {
        self.settings
    }

    /// Commits refused because the lease had been taken over.
    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The coordinator's clock, PostgreSQL's: the one `planned_at` and `done_at` are compared on
    /// (the pipeline's clock, which `CCC_ETL_NOW` may pin, is for data time).
    pub async fn db_now(&self) -> anyhow::Result<DateTime<Utc>> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    /// Whether this worker lost the lease of the planned window `w`.
    pub fn is_lost(&self, w: &WindowKey) -> bool {
        self.lost.lock().expect("lost").contains(&key(w))
    }

    /// Completes when this worker loses the lease of the planned window `w` (never, if it
    /// keeps it).
    pub async fn lease_lost(&self, w: &WindowKey) {
        let mut signal = self.lost_signal.subscribe();
        loop {
            if self.is_lost(w) {
                return;
            }
            if signal.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Forgets the leases of `keys`: their fetches are cancelled, their rows written nowhere.
    fn lose(&self, keys: Vec<Key>, why: &str) {
        if keys.is_empty() {
            return;
        }
        let n = keys.len();
        {
            let mut tokens = self.tokens.lock().expect("tokens");
            let mut lost = self.lost.lock().expect("lost");
            for k in keys {
                tokens.remove(&k);
                lost.insert(k);
            }
        }
        self.lost_signal.send_modify(|g| *g += 1);
        tracing::warn!(
            windows = n,
            "{why}: their fetches are cancelled and their rows are written nowhere"
        );
    }

    /// A window is done here (every sink has it): marked done by the next heartbeat.
    pub fn finished(&self, w: WindowKey) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.done_queue.lock().expect("done queue").push(w);
    }

    /// Windows held now.
    pub fn in_flight(&self) -> usize {
        self.tokens.lock().expect("tokens").len()
    }

    /// Extends this worker's leases, marks finished windows done, records liveness, and shares
    /// the rate; runs every `heartbeat` until the returned handle is aborted.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.settings.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.beat().await {
                    tracing::warn!(error = %e, "heartbeat failed; retrying at the next one");
                }
            }
        })
    }

    /// This worker's figures, for its row in `workers`.
    fn progress(&self) -> registry::Progress {
        registry::Progress {
            in_flight: self.in_flight(),
            done: self.done.load(Ordering::Relaxed),
            fenced: self.fenced(),
        }
    }

    /// One heartbeat.
    pub async fn beat(&self) -> anyhow::Result<()> {
        self.extend().await?;
        self.flush_done().await?;
        registry::end_frozen_copies(&self.pool, self.settings.lease).await;
        let live = registry::heartbeat(
            &self.pool,
            self.worker,
            self.progress(),
            self.settings.lease,
        )
        .await
        .map_err(db)?;
        match &self.rate {
            Some(rate) => rate.share(&self.pool, live).await.map_err(db),
            None => Ok(()),
        }
    }

    /// The end of this worker's run: marks what it finished done, hands back what it still
    /// holds (another worker takes it at once instead of after the lease), and deregisters.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.flush_done().await?;
        sqlx::query(lease::HAND_BACK)
            .bind(self.worker)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        registry::deregister(&self.pool, self.worker, self.progress())
            .await
            .map_err(db)?;
        self.tokens.lock().expect("tokens").clear();
        Ok(())
    }
}
