//! How many windows a run starts: as many fetching at once as the allowed rate needs at the
//! API's latency (Little's law, [`CccClient::in_flight_target`]); a window being committed no
//! longer counts, and `concurrency` bounds every window in flight.
//!
//! [`CccClient::in_flight_target`]: crate::ccc::client::CccClient::in_flight_target

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// How often a run with windows waiting looks again at how many may fetch: the target grows
/// while the first answers are awaited, before any fetch ends to say so.
pub(super) const RECHECK: Duration = Duration::from_millis(100);

/// The windows of a run that are fetching (waiting for the rate, or their answer).
#[derive(Debug, Default)]
pub(super) struct FetchGate {
    fetching: AtomicUsize,
    ended: Notify,
}

/// One window's place among those fetching; given back when dropped (its fetch is over).
#[derive(Debug)]
pub(super) struct FetchSlot(Arc<FetchGate>);

impl FetchGate {
    /// A window starts fetching.
    pub(super) fn enter(self: &Arc<Self>) -> FetchSlot {
        self.fetching.fetch_add(1, Ordering::SeqCst);
        FetchSlot(self.clone())
    }

    /// Windows fetching now.
    pub(super) fn fetching(&self) -> usize {
        self.fetching.load(Ordering::SeqCst)
    }

    /// Until a window's fetch ends (at once if one ended since the last call).
    pub(super) async fn a_fetch_ended(&self) {
        self.ended.notified().await;
    }
}

impl Drop for FetchSlot {
    fn drop(&mut self) {
        self.0.fetching.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_place_is_given_back_when_its_fetch_ends_and_the_loop_hears_of_it() {
        let gate = Arc::new(FetchGate::default());
        let (a, b) = (gate.enter(), gate.enter());
        assert_eq!(gate.fetching(), 2);
        drop(a);
        assert_eq!(gate.fetching(), 1);
        // The end was stored: the loop that was busy elsewhere hears of it.
        tokio::time::timeout(std::time::Duration::from_secs(1), gate.a_fetch_ended())
            .await
            .expect("heard");
        drop(b);
        assert_eq!(gate.fetching(), 0);
    }
}
