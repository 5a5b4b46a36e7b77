//! The fence the sinks see: whether this worker still holds the leases of the windows whose
//! rows it is about to make durable, and a count of the commits refused. The PostgreSQL sink
//! asks inside its transaction (the lease rows stay locked until the commit), the Parquet sink
//! under a day's lock before the file is written and before the day is recorded.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use sqlx::{PgConnection, Row};

use super::lease::{HELD_LEASES, HOLDS_NOW, STILL_MINE, columns};
use super::{Coordinator, Key, key};
use crate::ledger::SinkKind;
use crate::record::WindowKey;

/// A worker's leases, as a sink checks them before its writes count.
#[async_trait::async_trait]
pub trait Fence: Send + Sync + std::fmt::Debug {
    /// Of `windows` (as fetched), those whose lease this worker can prove it holds now, as
    /// flags: leased to it with the attempt it claimed and not expired, or done by it. Run inside
    /// the transaction that holds a day's lock, before the day's file is written.
    async fn holds_now(
        &self,
        conn: &mut PgConnection,
        windows: &[&WindowKey],
    ) -> Result<Vec<bool>, sqlx::Error>;

    /// Of `windows` (as fetched), those whose lease this worker still holds with the attempt it
    /// claimed, as flags, their lease rows locked in key order until `conn`'s transaction ends
    /// (a take-over waits for the commit, then fetches anew).
    async fn holds_for_commit(
        &self,
        conn: &mut PgConnection,
        windows: &[&WindowKey],
    ) -> Result<Vec<bool>, sqlx::Error>;

    /// Of `windows`, those this worker still holds; the others are counted as refused.
    async fn still_mine(&self, windows: &[WindowKey]) -> Result<HashSet<WindowKey>, sqlx::Error>;

    /// A commit of `w` to `sink` was refused: counted once, and logged with the refused
    /// window's own fields.
    fn refused(&self, w: &WindowKey, sink: SinkKind);
}

#[async_trait::async_trait]
impl Fence for Coordinator {
    async fn holds_now(
        &self,
        conn: &mut sqlx::PgConnection,
        windows: &[&WindowKey],
    ) -> Result<Vec<bool>, sqlx::Error> {
        self.lease_flags(HOLDS_NOW, conn, windows).await
    }

    async fn holds_for_commit(
        &self,
        conn: &mut sqlx::PgConnection,
        windows: &[&WindowKey],
    ) -> Result<Vec<bool>, sqlx::Error> {
        self.lease_flags(HELD_LEASES, conn, windows).await
    }

    async fn still_mine(&self, windows: &[WindowKey]) -> Result<HashSet<WindowKey>, sqlx::Error> {
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

    fn refused(&self, w: &WindowKey, sink: SinkKind) {
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
}
