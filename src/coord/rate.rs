//! One QPS budget shared by the live workers: each worker's pacers are capped at
//! `max_qps / live workers` (recomputed at every heartbeat from the `workers` table), and a
//! throttling answer seen by one worker is written to `shared_rate`, which every other worker
//! reads at its next heartbeat and slows down for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::ccc::ratelimit::AdaptivePacer;

/// A worker's share of the job's request rate.
pub(super) struct RateShare {
    /// Every region's pacer.
    pacers: Vec<Arc<AdaptivePacer>>,
    /// The per-region budget the live workers share.
    max_qps: f64,
    /// Throttling answers this worker's pacers had seen at the last heartbeat.
    throttles_seen: AtomicU64,
    /// When `shared_rate` last said a worker was throttled, as read at the last heartbeat.
    shared_throttle_seen: Mutex<Option<DateTime<Utc>>>,
}

impl RateShare {
    pub(super) fn new(pacers: Vec<Arc<AdaptivePacer>>, max_qps: f64) -> Self {
        Self {
            pacers,
            max_qps,
            throttles_seen: AtomicU64::new(0),
            shared_throttle_seen: Mutex::new(None),
        }
    }

    /// Caps the pacers at this worker's share of `live` workers, publishes a throttling answer
    /// seen here, and slows down for one another worker saw since the last heartbeat.
    pub(super) async fn share(&self, pool: &PgPool, live: i64) -> Result<(), sqlx::Error> {
        for pacer in &self.pacers {
            pacer.set_ceiling(self.max_qps / live.max(1) as f64);
        }
        let throttles: u64 = self.pacers.iter().map(|p| p.throttles()).sum();
        let before = self.throttles_seen.swap(throttles, Ordering::Relaxed);
        let shared: Option<DateTime<Utc>> = if throttles > before {
            sqlx::query_scalar(
                "UPDATE shared_rate SET throttled_at = now() WHERE id = 1 RETURNING throttled_at",
            )
            .fetch_optional(pool)
            .await?
            .flatten()
        } else {
            sqlx::query_scalar("SELECT throttled_at FROM shared_rate WHERE id = 1")
                .fetch_optional(pool)
                .await?
                .flatten()
        };
        let mut seen = self.shared_throttle_seen.lock().expect("seen");
        if let Some(at) = shared
            && seen.is_some_and(|s| at > s)
            && throttles == before
        {
            // Another worker was throttled since the last heartbeat: slow down too.
            for pacer in &self.pacers {
                pacer.slow_down();
            }
        }
        if shared.is_some() {
            *seen = shared;
        }
        Ok(())
    }
}
