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
//! One QPS budget: each worker's limiter is capped at `max_qps / live workers` (recomputed at every
//! heartbeat from the `workers` table), and a throttling answer seen by one worker is written to
//! `shared_rate`, which every other worker reads at its next heartbeat and slows down for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::ccc::ratelimit::AdaptivePacer;
use crate::ledger::SinkKind;
use crate::record::{MediaType, WindowKey};

type Key = (String, MediaType, i64);

fn key(w: &WindowKey) -> Key {
    (w.instance_id.clone(), w.media_type, w.start_ms)
}

/// What a claim found for the windows it asked for.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Leased to this worker now: fetch them.
    pub mine: Vec<WindowKey>,
    /// Done by another worker since this one planned: nothing to do.
    pub done: Vec<WindowKey>,
    /// Held by another live worker (or being claimed at this instant): try again later.
    pub busy: Vec<WindowKey>,
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
    live_workers: AtomicI64,
    /// Every region's pacer and `max_qps`, the per-region budget the live workers share.
    pacers: Option<(Vec<Arc<AdaptivePacer>>, f64)>,
    throttles_seen: AtomicU64,
    shared_throttle_seen: Mutex<Option<DateTime<Utc>>>,
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
    /// The worker's own session, open while it lives (see [`rescue_dead_workers`]).
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
        sqlx::query(
            "INSERT INTO workers (worker_id, host, pid, command, session_tag) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(worker)
        .bind(&host)
        .bind(std::process::id() as i32)
        .bind(command)
        .bind(crate::db::session_tag())
        .execute(&pool)
        .await
        .map_err(db)?;
        tracing::info!(worker = %worker, host = %host, "worker registered");
        rescue_dead_workers(&pool).await?;
        let c = Arc::new(Self {
            pool,
            worker,
            settings,
            tokens: Mutex::new(HashMap::new()),
            done_queue: Mutex::new(Vec::new()),
            fenced: AtomicU64::new(0),
            done: AtomicU64::new(0),
            live_workers: AtomicI64::new(1),
            pacers: None,
            throttles_seen: AtomicU64::new(0),
            shared_throttle_seen: Mutex::new(None),
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
            .pacers = Some((pacers, max_qps));
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

    /// Queues the plan's windows (a window already queued stays as it is; one done before
    /// `planned_at`, on [`Coordinator::db_now`], is queued again: a later night's plan). Two
    /// statements, neither waiting for a lease row another worker holds locked (its commit in progress, or a frozen process's):
    /// the insert does nothing on a conflict, and the update only touches rows that are `done`.
    pub async fn enqueue(
        &self,
        windows: &[WindowKey],
        planned_at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        for chunk in windows.chunks(10_000) {
            self.insert_pending(chunk, planned_at).await?;
            let (i, m, s, e) = columns(chunk);
            sqlx::query(
                "UPDATE leases l SET state = 'pending', end_ms = w.e, worker_id = NULL, lease_until = NULL, \
                     planned_at = $5, done_at = NULL \
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS w(i, m, s, e) \
                 WHERE (l.instance_id, l.media_type, l.start_ms) = (w.i, w.m, w.s) \
                   AND l.state = 'done' AND l.done_at < $5",
            )
            .bind(i)
            .bind(m)
            .bind(s)
            .bind(e)
            .bind(planned_at)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    /// Deletes at most `limit` leases whose window ends before `horizon_ms` and that nobody holds
    /// (done, pending, or a lease that expired): the API no longer serves that time, so no plan
    /// queues those windows again. And as many rows of workers that stopped before it. Bounded
    /// work per run keeps both tables at about a horizon's worth of windows. Returns the leases
    /// deleted.
    pub async fn prune(&self, horizon_ms: i64, limit: i64) -> anyhow::Result<u64> {
        let leases = sqlx::query(
            "DELETE FROM leases WHERE ctid = ANY (ARRAY( \
                 SELECT ctid FROM leases \
                 WHERE end_ms <= $1 AND (state <> 'leased' OR lease_until < now()) \
                 LIMIT $2))",
        )
        .bind(horizon_ms)
        .bind(limit)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        sqlx::query(
            "DELETE FROM workers WHERE worker_id = ANY (ARRAY( \
                 SELECT worker_id FROM workers \
                 WHERE stopped_at < to_timestamp($1 / 1000.0) LIMIT $2))",
        )
        .bind(horizon_ms)
        .bind(limit)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(leases)
    }

    /// Claims what it can of `windows`: pending ones and ones whose lease expired.
    pub async fn claim(&self, windows: &[WindowKey]) -> anyhow::Result<Claimed> {
        if windows.is_empty() {
            return Ok(Claimed::default());
        }
        let (i, m, s, _) = columns(windows);
        let rows = sqlx::query(CLAIM)
            .bind(i)
            .bind(m)
            .bind(s)
            .bind(self.worker)
            .bind(self.settings.lease.as_secs_f64())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let (mut out, missing) = self.sort_claim(windows, rows);
        if !missing.is_empty() {
            tracing::warn!(
                windows = missing.len(),
                "windows of this job were missing from the lease queue (ccc.leases rows deleted?): \
                 queued again"
            );
            self.requeue(&missing).await?;
            out.busy.extend(missing);
        }
        Ok(out)
    }

    /// What the claim's rows say of each window asked for, and the windows the queue does not
    /// hold; the windows claimed get their fencing tokens.
    fn sort_claim(
        &self,
        windows: &[WindowKey],
        rows: Vec<sqlx::postgres::PgRow>,
    ) -> (Claimed, Vec<WindowKey>) {
        let by_key: HashMap<Key, &WindowKey> = windows.iter().map(|w| (key(w), w)).collect();
        let mut out = Claimed::default();
        let mut missing = vec![];
        let mut tokens = self.tokens.lock().expect("tokens");
        for r in rows {
            let media: String = r.get(1);
            let Ok(media) = media.parse::<MediaType>() else {
                continue;
            };
            let k: Key = (r.get(0), media, r.get(2));
            let Some(w) = by_key.get(&k) else { continue };
            let attempt: Option<i32> = r.get(3);
            let state: Option<String> = r.get(4);
            match (attempt, state.as_deref().and_then(LeaseState::from_sql)) {
                (Some(a), _) => {
                    // Claimed (back): a new attempt, whose refusals would be new ones.
                    self.lost.lock().expect("lost").remove(&k);
                    let mut refusals = self.refusals.lock().expect("refusals");
                    for sink in SinkKind::ALL {
                        refusals.remove(&(k.clone(), sink));
                    }
                    drop(refusals);
                    tokens.insert(
                        k,
                        Held {
                            end_ms: w.end_ms,
                            attempt: a,
                        },
                    );
                    out.mine.push((*w).clone());
                }
                (None, Some(LeaseState::Done)) => out.done.push((*w).clone()),
                // Missing from the queue (its row deleted by hand): queued again below, and
                // claimed with the windows others hold, a heartbeat later.
                (None, None) if state.is_none() => missing.push((*w).clone()),
                (None, _) => out.busy.push((*w).clone()),
            }
        }
        (out, missing)
    }

    /// Queues windows the queue no longer holds, pending, as a plan queues them: a window in a
    /// job's request is never left to nobody.
    async fn requeue(&self, windows: &[WindowKey]) -> anyhow::Result<()> {
        let planned_at = self.db_now().await?;
        self.insert_pending(windows, planned_at).await
    }

    /// Inserts windows as pending, planned at `planned_at`; a window already queued stays as
    /// it is (the insert waits for no lease row).
    async fn insert_pending(
        &self,
        windows: &[WindowKey],
        planned_at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let (i, m, s, e) = columns(windows);
        sqlx::query(
            "INSERT INTO leases (instance_id, media_type, start_ms, end_ms, state, planned_at) \
             SELECT i, m, s, e, 'pending', $5 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS w(i, m, s, e) \
             ON CONFLICT (instance_id, media_type, start_ms) DO NOTHING",
        )
        .bind(i)
        .bind(m)
        .bind(s)
        .bind(e)
        .bind(planned_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// The lease `w` is fetched under.
    fn lease_of(&self, w: &WindowKey) -> Option<LeaseRef> {
        let tokens = self.tokens.lock().expect("tokens");
        if let Some(h) = tokens.get(&key(w)) {
            return Some(LeaseRef {
                start_ms: w.start_ms,
                attempt: h.attempt,
            });
        }
        // A window whose start aged out is sent shorter: it is still the claimed one.
        tokens
            .iter()
            .find(|((i, m, s), h)| {
                *i == w.instance_id
                    && *m == w.media_type
                    && *s <= w.start_ms
                    && w.start_ms < h.end_ms
            })
            .map(|((_, _, s), h)| LeaseRef {
                start_ms: *s,
                attempt: h.attempt,
            })
    }

    /// A commit of `w` to `sink` was refused: counted, and logged with the refused window's own
    /// fields (not those of the window whose write found it).
    pub fn refused(&self, w: &WindowKey, sink: SinkKind) {
        // Once per window and sink: a window whose rows span two days is refused by each.
        if !self
            .refusals
            .lock()
            .expect("refusals")
            .insert((key(w), sink))
        {
            return;
        }
        self.fenced.fetch_add(1, Ordering::Relaxed);
        // The event's own fields override those of the span it is logged in (the window being
        // written when the refusal was found may be another one).
        tracing::warn!(
            instance = %w.instance_id,
            media_type = %w.media_type,
            window_start = %crate::record::fmt_ms(w.start_ms),
            window_end = %crate::record::fmt_ms(w.end_ms),
            sink = %sink,
            "commit refused: this worker no longer holds the window's lease (taken over by \
             another worker, or expired)"
        );
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

    /// Of `windows` (as fetched), those whose lease this worker can prove it holds now, as flags:
    /// leased to it with the attempt it claimed and not expired, or done by it. Run inside the
    /// transaction that holds a day's lock, before the day's file is written (Parquet's fence).
    pub async fn holds_now(
        &self,
        conn: &mut sqlx::PgConnection,
        windows: &[&WindowKey],
    ) -> Result<Vec<bool>, sqlx::Error> {
        self.lease_flags(HOLDS_NOW, conn, windows).await
    }

    /// Of `windows` (as fetched), those whose lease this worker still holds with the attempt it
    /// claimed, as flags, their lease rows locked in key order until `conn`'s transaction ends
    /// (the PostgreSQL sink's fence: a take-over waits for the commit, then fetches anew).
    pub async fn holds_for_commit(
        &self,
        conn: &mut sqlx::PgConnection,
        windows: &[&WindowKey],
    ) -> Result<Vec<bool>, sqlx::Error> {
        self.lease_flags(HELD_LEASES, conn, windows).await
    }

    /// Runs a lease statement taking `($1, $2, $3)` windows, `$4` attempts and `$5` this worker,
    /// and returning the ordinals it finds: as flags over `windows`.
    async fn lease_flags(
        &self,
        statement: &'static str,
        conn: &mut sqlx::PgConnection,
        windows: &[&WindowKey],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let (i, m, _, _) = columns(windows.iter().copied());
        let (starts, attempts) = self.leases_of(windows.iter().copied());
        let rows: Vec<i64> = sqlx::query_scalar(statement)
            .bind(i)
            .bind(m)
            .bind(starts)
            .bind(attempts)
            .bind(self.worker)
            .fetch_all(conn)
            .await?;
        Ok(flags_at(windows.len(), &rows))
    }

    /// The start of the lease each window is fetched under and the attempt it was claimed with,
    /// as arrays to bind (attempt -1, which matches no lease row, for a window not held).
    fn leases_of<'a>(
        &self,
        windows: impl IntoIterator<Item = &'a WindowKey>,
    ) -> (Vec<i64>, Vec<i32>) {
        windows
            .into_iter()
            .map(|w| {
                let l = self.lease_of(w).unwrap_or(LeaseRef {
                    start_ms: w.start_ms,
                    attempt: -1,
                });
                (l.start_ms, l.attempt)
            })
            .unzip()
    }

    /// Of `windows`, those this worker still holds; the others are counted as fenced.
    pub async fn still_mine(
        &self,
        windows: &[WindowKey],
    ) -> Result<HashSet<WindowKey>, sqlx::Error> {
        if windows.is_empty() {
            return Ok(HashSet::new());
        }
        let (i, m, _, _) = columns(windows);
        let (s, tokens) = self.leases_of(windows);
        let rows = sqlx::query(STILL_MINE)
            .bind(i)
            .bind(m)
            .bind(&s)
            .bind(tokens)
            .bind(self.worker)
            .fetch_all(&self.pool)
            .await?;
        let held: HashSet<Key> = rows
            .iter()
            .filter_map(|r| {
                let media: String = r.get(1);
                Some((r.get(0), media.parse().ok()?, r.get(2)))
            })
            .collect();
        let mine: HashSet<WindowKey> = windows
            .iter()
            .zip(&s)
            .filter(|(w, start)| held.contains(&(w.instance_id.clone(), w.media_type, **start)))
            .map(|(w, _)| w.clone())
            .collect();
        let refused = windows.len() - mine.len();
        if refused > 0 {
            self.fenced.fetch_add(refused as u64, Ordering::Relaxed);
            tracing::warn!(
                windows = refused,
                "Parquet commits refused: the windows' leases were taken over by another worker"
            );
        }
        Ok(mine)
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

    /// One heartbeat.
    pub async fn beat(&self) -> anyhow::Result<()> {
        self.extend().await?;
        self.flush_done().await?;
        self.end_frozen_copies().await;
        let live: i64 = sqlx::query_scalar(
            "WITH me AS (UPDATE workers SET heartbeat_at = now(), windows_in_flight = $2, \
             progress_at = CASE WHEN windows_done <> $3 THEN now() ELSE progress_at END, \
             windows_done = $3, fenced = $4 WHERE worker_id = $1) \
             SELECT count(*) FROM workers WHERE stopped_at IS NULL \
             AND heartbeat_at > now() - make_interval(secs => $5)",
        )
        .bind(self.worker)
        .bind(self.in_flight() as i32)
        .bind(self.done.load(Ordering::Relaxed) as i64)
        .bind(self.fenced() as i64)
        .bind(self.settings.lease.as_secs_f64())
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        self.live_workers.store(live.max(1), Ordering::Relaxed);
        self.share_rate().await
    }

    /// Ends the `COPY` of a worker frozen in its middle. Such a session is not idle in its
    /// transaction (the server waits for the rows), so no timeout ends it, and it keeps the lease
    /// rows of its windows locked: no other worker could take them over. A `COPY` of a group takes
    /// well under a second; one that has run for a lease is a stopped process's, and its session
    /// is terminated (its transaction rolls back; the process, if it resumes, finds its leases
    /// gone). Best effort: a database role that may not signal the others' sessions logs it.
    async fn end_frozen_copies(&self) {
        let ended = sqlx::query_scalar::<_, i64>(END_FROZEN_COPIES)
            .bind(self.settings.lease.as_secs_f64())
            .fetch_one(&self.pool)
            .await;
        match ended {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                sessions = n,
                "ended the COPY of a worker stopped in its middle for longer than a lease"
            ),
            Err(e) => {
                tracing::warn!(error = %crate::db::explain(&e), "cannot end a frozen worker's COPY")
            }
        }
    }

    /// Extends the leases still held. A lease another worker took over is lost; so is every
    /// lease, handed back at once, when no extension succeeded for longer than a lease (the
    /// process was stopped, the database unreachable): another worker may hold them by now.
    async fn extend(&self) -> anyhow::Result<()> {
        let since = self.extended_at.lock().expect("extended").elapsed();
        let held: Vec<(Key, i32)> = self
            .tokens
            .lock()
            .expect("tokens")
            .iter()
            .map(|(k, h)| (k.clone(), h.attempt))
            .collect();
        if since > self.settings.lease {
            self.lose(
                held.into_iter().map(|(k, _)| k).collect(),
                &format!(
                    "no heartbeat for {:.1} s, longer than the lease ({} s): every window held is \
                     taken for lost",
                    since.as_secs_f64(),
                    self.settings.lease.as_secs_f64()
                ),
            );
            sqlx::query(HAND_BACK_EXPIRED)
                .bind(self.worker)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            *self.extended_at.lock().expect("extended") = Instant::now();
            return Ok(());
        }
        let sent = Instant::now();
        let extended: Vec<(String, String, i64, i32)> = sqlx::query_as(EXTEND)
            .bind(self.worker)
            .bind(self.settings.lease.as_secs_f64())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        *self.extended_at.lock().expect("extended") = sent;
        let still: HashSet<(String, String, i64, i32)> = extended.into_iter().collect();
        let lost: Vec<Key> = held
            .into_iter()
            .filter(|((i, m, s), a)| !still.contains(&(i.clone(), m.as_str().to_string(), *s, *a)))
            .map(|(k, _)| k)
            .collect();
        self.lose(lost, "leases taken over by another worker");
        Ok(())
    }

    async fn share_rate(&self) -> anyhow::Result<()> {
        let Some((pacers, max_qps)) = &self.pacers else {
            return Ok(());
        };
        let live = self.live_workers.load(Ordering::Relaxed) as f64;
        for pacer in pacers {
            pacer.set_ceiling(max_qps / live);
        }
        let throttles: u64 = pacers.iter().map(|p| p.throttles()).sum();
        let before = self.throttles_seen.swap(throttles, Ordering::Relaxed);
        let shared: Option<DateTime<Utc>> = if throttles > before {
            sqlx::query_scalar(
                "UPDATE shared_rate SET throttled_at = now() WHERE id = 1 RETURNING throttled_at",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .flatten()
        } else {
            sqlx::query_scalar("SELECT throttled_at FROM shared_rate WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?
                .flatten()
        };
        let mut seen = self.shared_throttle_seen.lock().expect("seen");
        if let Some(at) = shared
            && seen.is_some_and(|s| at > s)
            && throttles == before
        {
            // Another worker was throttled since the last heartbeat: slow down too.
            for pacer in pacers {
                pacer.slow_down();
            }
        }
        if shared.is_some() {
            *seen = shared;
        }
        Ok(())
    }

    async fn flush_done(&self) -> anyhow::Result<()> {
        let done = std::mem::take(&mut *self.done_queue.lock().expect("done queue"));
        if done.is_empty() {
            return Ok(());
        }
        let (i, m, _, _) = columns(&done);
        let (s, tokens) = self.leases_of(&done);
        sqlx::query(MARK_DONE)
            .bind(i)
            .bind(m)
            .bind(&s)
            .bind(tokens)
            .bind(self.worker)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        let mut t = self.tokens.lock().expect("tokens");
        for (w, start) in done.iter().zip(&s) {
            t.remove(&(w.instance_id.clone(), w.media_type, *start));
        }
        Ok(())
    }

    /// The end of this worker's run: marks what it finished done, hands back what it still
    /// holds (another worker takes it at once instead of after the lease), and deregisters.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.flush_done().await?;
        sqlx::query(HAND_BACK)
            .bind(self.worker)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        sqlx::query(
            "UPDATE workers SET stopped_at = now(), heartbeat_at = now(), windows_in_flight = 0, \
             windows_done = $2, fenced = $3 WHERE worker_id = $1",
        )
        .bind(self.worker)
        .bind(self.done.load(Ordering::Relaxed) as i64)
        .bind(self.fenced() as i64)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        self.tokens.lock().expect("tokens").clear();
        Ok(())
    }
}

/// Claims the windows `($1, $2, $3)` that are pending or whose lease expired for worker `$4`,
/// for `$5` seconds; returns every window asked for, with its new attempt if claimed and its
/// state before. Public, like the other lease statements, so that tests can check their plans.
pub const CLAIM: &str = "WITH want AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS w(instance_id, media_type, start_ms)), \
     c AS (SELECT x.* FROM want w CROSS JOIN LATERAL \
           (SELECT l.ctid AS row FROM leases l \
            WHERE (l.instance_id, l.media_type, l.start_ms) = (w.instance_id, w.media_type, w.start_ms) \
              AND (l.state = 'pending' OR (l.state = 'leased' AND l.lease_until < now())) \
            FOR UPDATE SKIP LOCKED) x), \
     claimed AS (UPDATE leases l SET state = 'leased', worker_id = $4, \
           lease_until = now() + make_interval(secs => $5), attempt = l.attempt + 1 \
           WHERE l.ctid = ANY (ARRAY(SELECT row FROM c)) \
           RETURNING l.instance_id, l.media_type, l.start_ms, l.attempt) \
     SELECT w.instance_id, w.media_type, w.start_ms, c.attempt, l.state \
     FROM want w LEFT JOIN claimed c USING (instance_id, media_type, start_ms) \
     LEFT JOIN LATERAL (SELECT l.state FROM leases l WHERE (l.instance_id, l.media_type, l.start_ms) \
           = (w.instance_id, w.media_type, w.start_ms) OFFSET 0) l ON true";

/// Of the windows `($1, $2, $3)` with the attempts `$4` claimed, those worker `$5` still holds
/// (leased or done).
pub const STILL_MINE: &str = "SELECT w.i, w.m, w.s FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[]) AS w(i, m, s, a) \
     CROSS JOIN LATERAL (SELECT 1 FROM leases l \
          WHERE (l.instance_id, l.media_type, l.start_ms) = (w.i, w.m, w.s) \
            AND l.worker_id = $5 AND l.attempt = w.a AND l.state IN ('leased', 'done') OFFSET 0) x";

/// Marks done the windows `($1, $2, $3)` worker `$5` still holds with the attempts `$4`, their
/// lease rows locked in key order.
pub const MARK_DONE: &str = "WITH mine AS (SELECT x.* FROM (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[]) \
          AS w(i, m, s, a) ORDER BY 1, 2, 3 OFFSET 0) w CROSS JOIN LATERAL \
          (SELECT l.ctid AS row FROM leases l \
           WHERE (l.instance_id, l.media_type, l.start_ms) = (w.i, w.m, w.s) \
             AND l.worker_id = $5 AND l.attempt = w.a AND l.state = 'leased' FOR UPDATE) x) \
     UPDATE leases l SET state = 'done', done_at = now() WHERE l.ctid = ANY (ARRAY(SELECT row FROM mine))";

/// Extends every lease worker `$1` holds by `$2` seconds; returns them with their attempts.
const EXTEND: &str = "WITH mine AS (SELECT instance_id, media_type, start_ms FROM leases \
     WHERE worker_id = $1 AND state = 'leased' ORDER BY 1, 2, 3 FOR UPDATE) \
     UPDATE leases l SET lease_until = now() + make_interval(secs => $2) FROM mine \
     WHERE (l.instance_id, l.media_type, l.start_ms) = (mine.instance_id, mine.media_type, mine.start_ms) \
     RETURNING l.instance_id, l.media_type, l.start_ms, l.attempt";

/// The ordinals of the group's windows `($1, $2, $3)` whose lease worker `$5` still holds with
/// the attempts `$4`, the lease rows locked in key order until the commit (the PostgreSQL
/// sink's fence).
pub const HELD_LEASES: &str = "SELECT w.n FROM (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[]) \
         WITH ORDINALITY AS w(i, m, s, a, n) ORDER BY 1, 2, 3 OFFSET 0) w \
     CROSS JOIN LATERAL (SELECT 1 FROM leases l \
         WHERE (l.instance_id, l.media_type, l.start_ms) = (w.i, w.m, w.s) \
           AND l.worker_id = $5 AND l.attempt = w.a AND l.state = 'leased' FOR UPDATE) x";

/// Of the windows `($1, $2, $3)` with the attempts `$4`, the ordinals worker `$5` can prove it
/// holds at this instant (`clock_timestamp()`, not the transaction's start, which may have waited
/// for a day's lock): leased with a lease not expired, or done.
pub const HOLDS_NOW: &str = "SELECT w.n FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[]) \
         WITH ORDINALITY AS w(i, m, s, a, n) \
     CROSS JOIN LATERAL (SELECT 1 FROM leases l \
         WHERE (l.instance_id, l.media_type, l.start_ms) = (w.i, w.m, w.s) \
           AND l.worker_id = $5 AND l.attempt = w.a \
           AND ((l.state = 'leased' AND l.lease_until > clock_timestamp()) OR l.state = 'done') \
         OFFSET 0) x";

/// Terminates the sessions of this database in the middle of a `COPY` for longer than `$1`
/// seconds that belong to workers that have not heartbeaten for as long (frozen, or cut off):
/// another job's `COPY`, or a slow one of a live worker, is left alone. Returns how many.
const END_FROZEN_COPIES: &str = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() \
       AND state = 'active' AND query LIKE 'COPY %' \
       AND query_start < now() - make_interval(secs => $1) \
       AND application_name IN (SELECT session_tag FROM workers WHERE session_tag IS NOT NULL \
           GROUP BY session_tag \
           HAVING bool_and(stopped_at IS NOT NULL OR heartbeat_at < now() - make_interval(secs => $1)))";

/// Hands back every lease a worker holds.
const HAND_BACK: &str = "WITH mine AS (SELECT instance_id, media_type, start_ms FROM leases \
     WHERE worker_id = $1 AND state = 'leased' ORDER BY 1, 2, 3 FOR UPDATE) \
     UPDATE leases l SET state = 'pending', worker_id = NULL, lease_until = NULL FROM mine \
     WHERE (l.instance_id, l.media_type, l.start_ms) = (mine.instance_id, mine.media_type, mine.start_ms)";

/// Hands back the leases a worker holds that have expired (not one it claimed again since).
const HAND_BACK_EXPIRED: &str = "WITH mine AS (SELECT instance_id, media_type, start_ms FROM leases \
     WHERE worker_id = $1 AND state = 'leased' AND lease_until < now() ORDER BY 1, 2, 3 FOR UPDATE) \
     UPDATE leases l SET state = 'pending', worker_id = NULL, lease_until = NULL FROM mine \
     WHERE (l.instance_id, l.media_type, l.start_ms) = (mine.instance_id, mine.media_type, mine.start_ms)";

/// A worker whose process is gone (killed, crashed, its host lost) holds its leases until they
/// expire; a new worker need not wait: PostgreSQL shows no session of it (`pg_stat_activity`,
/// by its `session_tag`), so its leases are handed back at once. A stopped (frozen) process keeps
/// its sessions: its leases expire as usual. Workers of older versions (no tag) are left to expire.
async fn rescue_dead_workers(pool: &PgPool) -> anyhow::Result<()> {
    let dead: Vec<(uuid::Uuid, String, i32)> = sqlx::query_as(
        "SELECT worker_id, host, pid FROM workers w \
         WHERE stopped_at IS NULL AND session_tag IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = w.session_tag)",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    for (worker, host, pid) in dead {
        let n = sqlx::query(HAND_BACK)
            .bind(worker)
            .execute(pool)
            .await
            .map_err(db)?
            .rows_affected();
        if n > 0 {
            tracing::warn!(worker = %worker, host = %host, pid, windows = n, "a worker died holding windows (PostgreSQL shows no session of it): handed back");
        }
    }
    Ok(())
}

/// `len` flags, set at the 1-based ordinals (`WITH ORDINALITY`) a statement returned.
pub(crate) fn flags_at(len: usize, ordinals: &[i64]) -> Vec<bool> {
    let mut flags = vec![false; len];
    for n in ordinals {
        if let Some(f) = usize::try_from(*n - 1).ok().and_then(|i| flags.get_mut(i)) {
            *f = true;
        }
    }
    flags
}

/// The instance ids, media types, starts and ends of windows, as arrays to bind.
pub(crate) fn columns<'a>(
    ws: impl IntoIterator<Item = &'a WindowKey>,
) -> (Vec<&'a str>, Vec<&'a str>, Vec<i64>, Vec<i64>) {
    let mut out = (vec![], vec![], vec![], vec![]);
    for w in ws {
        out.0.push(w.instance_id.as_str());
        out.1.push(w.media_type.as_str());
        out.2.push(w.start_ms);
        out.3.push(w.end_ms);
    }
    out
}

/// This machine's name, for `status`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// A window's state in the `leases` queue: the one mapping to the text the table stores (its
/// `CHECK` constraint lists the same three). The statements of this module are the only ones that
/// name a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Queued, nobody holds it.
    Pending,
    /// A worker holds it until `lease_until`.
    Leased,
    /// Committed to every sink.
    Done,
}

impl LeaseState {
    /// Every state.
    pub const ALL: [LeaseState; 3] = [LeaseState::Pending, LeaseState::Leased, LeaseState::Done];

    /// The text in `leases.state`.
    pub const fn as_sql(self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Leased => "leased",
            LeaseState::Done => "done",
        }
    }

    /// The state a `leases.state` text names.
    pub fn from_sql(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_sql() == s)
    }
}

/// Windows a worker holds a live lease on: (instance, media type, start ms, end ms).
pub async fn leased_windows(pool: &PgPool) -> Result<Vec<(String, String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT instance_id, media_type, start_ms, end_ms FROM leases \
         WHERE state = 'leased' AND lease_until > now()",
    )
    .fetch_all(pool)
    .await
}

/// A live or recently seen worker, for `status` (read by column name).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    /// Id.
    pub worker_id: String,
    /// Host.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// Command.
    pub command: String,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Windows in flight at the last heartbeat.
    pub windows_in_flight: i32,
    /// Windows done.
    pub windows_done: i64,
    /// Commits refused by fencing.
    pub fenced: i64,
    /// Whether its heartbeat is recent (within a lease).
    pub live: bool,
    /// Whether it ended its run (else, if not live, it died).
    pub stopped: bool,
    /// Whether it has had nothing in flight and finished no window for longer than a lease:
    /// live and idle is stalled.
    pub idle: bool,
}

/// Workers seen in the last day (live first: a heartbeat within `lease`), and how many leases
/// have expired without being taken over.
pub async fn workers(pool: &PgPool, lease: Duration) -> Result<(Vec<WorkerRow>, i64), sqlx::Error> {
    let rows: Vec<WorkerRow> = sqlx::query_as(
        "SELECT worker_id::text AS worker_id, host, pid, command, started_at, heartbeat_at, windows_in_flight, \
         windows_done, fenced, (stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)) AS live, \
         stopped_at IS NOT NULL AS stopped, \
         (windows_in_flight = 0 AND progress_at < now() - make_interval(secs => $1)) AS idle \
         FROM workers WHERE heartbeat_at > now() - interval '1 day' \
         ORDER BY live DESC, started_at DESC LIMIT 50",
    )
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM leases WHERE state = 'leased' AND lease_until < now()",
    )
    .fetch_one(pool)
    .await?;
    Ok((rows, expired))
}
