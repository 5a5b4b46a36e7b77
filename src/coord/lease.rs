//! The lease queue (`leases`): a job's windows, claimed by workers with `FOR UPDATE SKIP
//! LOCKED`, extended by the heartbeat, marked done, handed back; each claim's `attempt` is the
//! fencing token. The statements of this module are the only ones that name a lease state.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::{Coordinator, Held, Key, LeaseRef, db, key};
use crate::ledger::SinkKind;
use crate::record::{MediaType, WindowKey};

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

impl Coordinator {
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
    pub(super) fn lease_of(&self, w: &WindowKey) -> Option<LeaseRef> {
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

    /// Runs a lease statement taking `($1, $2, $3)` windows, `$4` attempts and `$5` this worker,
    /// and returning the ordinals it finds: as flags over `windows`.
    pub(super) async fn lease_flags(
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
    pub(super) fn leases_of<'a>(
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

    /// Extends the leases still held. A lease another worker took over is lost; so is every
    /// lease, handed back at once, when no extension succeeded for longer than a lease (the
    /// process was stopped, the database unreachable): another worker may hold them by now.
    pub(super) async fn extend(&self) -> anyhow::Result<()> {
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

    pub(super) async fn flush_done(&self) -> anyhow::Result<()> {
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

/// Hands back every lease a worker holds.
pub(super) const HAND_BACK: &str = "WITH mine AS (SELECT instance_id, media_type, start_ms FROM leases \
     WHERE worker_id = $1 AND state = 'leased' ORDER BY 1, 2, 3 FOR UPDATE) \
     UPDATE leases l SET state = 'pending', worker_id = NULL, lease_until = NULL FROM mine \
     WHERE (l.instance_id, l.media_type, l.start_ms) = (mine.instance_id, mine.media_type, mine.start_ms)";

/// Hands back the leases a worker holds that have expired (not one it claimed again since).
const HAND_BACK_EXPIRED: &str = "WITH mine AS (SELECT instance_id, media_type, start_ms FROM leases \
     WHERE worker_id = $1 AND state = 'leased' AND lease_until < now() ORDER BY 1, 2, 3 FOR UPDATE) \
     UPDATE leases l SET state = 'pending', worker_id = NULL, lease_until = NULL FROM mine \
     WHERE (l.instance_id, l.media_type, l.start_ms) = (mine.instance_id, mine.media_type, mine.start_ms)";
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

/// How many leases have expired without being taken over.
pub(super) async fn expired(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM leases WHERE state = 'leased' AND lease_until < now()")
        .fetch_one(pool)
        .await
}
