//! The request budget shared by every request of a run.
//!
//! [`RateLimiter`] is the seam: today one process paces itself with [`AdaptivePacer`]; a fleet of
//! workers sharing one account quota would plug in a limiter backed by PostgreSQL or Redis.
//!
//! The pacer spaces requests evenly (`1 / rate` apart, no bursts) and adapts the rate: on a
//! throttling answer it multiplies the rate by [`DECREASE`] (at most once per cool-down, because
//! the requests already in flight all hit the same limit), and afterwards climbs back linearly
//! towards `max_qps`. This is AIMD, as TCP does. `governor` was considered; it cannot change its
//! quota in place, which adaptation needs.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// A run-wide request budget.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Waits until one more request may be sent.
    async fn acquire(&self);
    /// The service answered with a throttling code: slow down.
    fn on_throttled(&self);
    /// The current allowed rate, requests per second.
    fn current_qps(&self) -> f64;
}

/// Factor applied to the rate on throttling.
pub const DECREASE: f64 = 0.7;

#[derive(Debug)]
struct PacerState {
    rate: f64,
    next_slot: Instant,
    last_update: Instant,
    last_decrease: Option<Instant>,
}

/// An adaptive, evenly spacing, single-process rate limiter.
#[derive(Debug)]
pub struct AdaptivePacer {
    max_qps: f64,
    /// The share of `max_qps` this process may use (several workers share one budget), as
    /// f64 bits.
    ceiling: std::sync::atomic::AtomicU64,
    throttles: std::sync::atomic::AtomicU64,
    min_qps: f64,
    recovery_per_sec: f64,
    state: Mutex<PacerState>,
}

impl AdaptivePacer {
    /// A pacer allowing at most `max_qps` requests per second (must be > 0).
    pub fn new(max_qps: f64) -> Self {
        assert!(max_qps > 0.0 && max_qps.is_finite(), "max_qps must be > 0");
        let now = Instant::now();
        Self {
            max_qps,
            ceiling: std::sync::atomic::AtomicU64::new(max_qps.to_bits()),
            throttles: std::sync::atomic::AtomicU64::new(0),
            min_qps: (max_qps / 50.0).max(0.05).min(max_qps),
            recovery_per_sec: (max_qps / 20.0).max(0.5),
            state: Mutex::new(PacerState {
                rate: max_qps,
                next_slot: now,
                last_update: now,
                last_decrease: None,
            }),
        }
    }

    fn ceiling(&self) -> f64 {
        f64::from_bits(self.ceiling.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Caps the rate at `qps` (at most `max_qps`): this process's share of a budget shared with
    /// other workers.
    pub fn set_ceiling(&self, qps: f64) {
        let qps = qps.clamp(self.min_qps, self.max_qps);
        self.ceiling
            .store(qps.to_bits(), std::sync::atomic::Ordering::Relaxed);
        let mut st = self.state.lock().expect("pacer lock");
        st.rate = st.rate.min(qps);
    }

    /// Throttling answers seen so far.
    pub fn throttles(&self) -> u64 {
        self.throttles.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn recover(&self, st: &mut PacerState, now: Instant) {
        let elapsed = now.saturating_duration_since(st.last_update).as_secs_f64();
        st.rate = (st.rate + elapsed * self.recovery_per_sec).min(self.ceiling());
        st.last_update = now;
    }
}

#[async_trait]
impl RateLimiter for AdaptivePacer {
    async fn acquire(&self) {
        let slot = {
            let mut st = self.state.lock().expect("pacer lock");
            let now = Instant::now();
            self.recover(&mut st, now);
            let slot = st.next_slot.max(now);
            st.next_slot = slot + Duration::from_secs_f64(1.0 / st.rate);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    fn on_throttled(&self) {
        self.throttles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.slow_down();
    }

    fn current_qps(&self) -> f64 {
        let mut st = self.state.lock().expect("pacer lock");
        self.recover(&mut st, Instant::now());
        st.rate
    }
}

impl AdaptivePacer {
    /// Slows down as on a throttling answer, without counting one: another worker sharing the
    /// budget was throttled.
    pub fn slow_down(&self) {
        let mut st = self.state.lock().expect("pacer lock");
        let now = Instant::now();
        self.recover(&mut st, now);
        let cooldown = Duration::from_secs_f64((2.0 / st.rate).max(0.5));
        if st
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < cooldown)
        {
            return;
        }
        st.rate = (st.rate * DECREASE).max(self.min_qps);
        st.last_decrease = Some(now);
        // Leave one empty slot at the new rate so the limit's window can drain.
        st.next_slot = st.next_slot.max(now) + Duration::from_secs_f64(1.0 / st.rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_one_over_max_qps_apart() {
        let p = AdaptivePacer::new(4.0);
        let t0 = Instant::now();
        let mut times = vec![];
        for _ in 0..5 {
            p.acquire().await;
            times.push(Instant::now() - t0);
        }
        let ms: Vec<u128> = times.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 250, 500, 750, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_lowers_the_rate_once_per_cooldown_and_it_recovers_gradually() {
        let p = AdaptivePacer::new(10.0);
        p.on_throttled();
        p.on_throttled(); // same burst: ignored
        assert!((p.current_qps() - 7.0).abs() < 1e-9, "{}", p.current_qps());
        tokio::time::advance(Duration::from_secs(1)).await;
        p.on_throttled();
        assert!(
            (p.current_qps() - 7.5 * 0.7).abs() < 1e-6,
            "{}",
            p.current_qps()
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let after = p.current_qps();
        assert!((after - (5.25 + 1.0)).abs() < 1e-6, "{after}");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            p.current_qps(),
            10.0,
            "recovers to, and never beyond, max_qps"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_pacer_spaces_requests_wider() {
        let p = AdaptivePacer::new(10.0);
        p.acquire().await;
        p.on_throttled();
        let t0 = Instant::now();
        p.acquire().await;
        p.acquire().await;
        let gap = Instant::now() - t0;
        // one empty slot at 7 qps, then two slots at about 7 qps
        assert!(gap >= Duration::from_millis(250), "{gap:?}");
    }
}
