//! Fetching with several workers: each window is claimed from PostgreSQL before it is fetched
//! (see [`crate::coord`]). Windows are claimed in fetch order, a batch at a time; a window another
//! worker finished is skipped, one another live worker holds is tried again at every heartbeat
//! (its lease expires if that worker died, and it is taken over).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use super::tally::{Event, Fatal};
use super::{Engine, Run};
use crate::coord::Coordinator;
use crate::record::WindowKey;

/// Windows asked for per claim, per window in flight.
const CLAIM_PER_SLOT: usize = 4;

/// What a future run beside the fetches ends with: a window's events, or what the sinks did
/// about a claim's windows done or held elsewhere.
enum Finished {
    Window(Vec<Event>),
    Skipped(Vec<Event>),
}

/// A window in flight, or the sinks' part of a claim.
type Pending<'a> = futures::future::BoxFuture<'a, Finished>;

/// A claim in progress: whether it retried windows others held, and what it found.
type ClaimFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = (bool, anyhow::Result<crate::coord::Claimed>)> + Send>,
>;

impl Engine {
    /// Fetches the windows this worker claims, until every window of the plan is done here or
    /// elsewhere, a run-fatal error, or `stop`.
    pub(super) async fn fetch_claimed(
        &self,
        mut run: Run,
        windows: Vec<WindowKey>,
        stop: impl std::future::Future<Output = ()>,
        coord: Arc<Coordinator>,
    ) -> Run {
        let total = windows.len() as u64;
        let ctx = run.ctx.clone();
        let mut to_claim = ToClaim::new(windows, coord.settings().heartbeat);
        let mut in_flight: FuturesUnordered<Pending<'_>> = FuturesUnordered::new();
        tokio::pin!(stop);
        loop {
            // A window whose lease was lost (taken over, or expired while this worker was
            // stopped) is claimed again with those others hold: taken over, it is done
            // elsewhere; handed back, it is fetched here.
            to_claim.requeue(run.tally.take_lost());
            // As many windows in flight as the rate needs; claims sized to match.
            to_claim.claim_for(&coord, self.in_flight_target());
            self.start_ready(&mut to_claim.ready, &mut in_flight, &ctx);
            if in_flight.is_empty() && to_claim.is_idle() {
                if self.idle(&mut run, &to_claim, total, stop.as_mut()).await {
                    continue;
                }
                break;
            }
            tokio::select! {
                // A fetch ended, or time passed while answers are awaited: more may start.
                () = self.fetch_gate.a_fetch_ended() => {}
                () = tokio::time::sleep(super::pace::RECHECK), if !to_claim.ready.is_empty() => {}
                Some(finished) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(fatal) = self.finished(&mut run, &mut to_claim, finished) {
                        run.tally.stop(fatal);
                        break;
                    }
                }
                (retry, claimed) = to_claim.claimed(), if to_claim.claiming.is_some() => {
                    to_claim.claiming = None;
                    let Ok(c) = claimed.map_err(|e| run.tally.stop(Fatal::Coordination(format!("{e:#}")))) else {
                        break;
                    };
                    // Never awaited here: what the sinks do for the claim may wait for a day's
                    // lock or a session that a window in flight holds, and those make progress
                    // only while this loop polls them.
                    if let Some(skips) = self.take_claim(c, retry, &ctx, &mut to_claim) {
                        in_flight.push(skips);
                    }
                }
                () = &mut stop => {
                    self.stopped(&mut run, to_claim.left(total));
                    break;
                }
            }
        }
        run
    }

    /// Starts ready windows while [`Engine::may_start`] allows.
    fn start_ready<'a>(
        &'a self,
        ready: &mut VecDeque<WindowKey>,
        in_flight: &mut FuturesUnordered<Pending<'a>>,
        ctx: &'a crate::sink::RunContext,
    ) {
        while self.may_start(in_flight.len())
            && let Some(w) = ready.pop_front()
        {
            in_flight.push(Box::pin(self.start_window(w, ctx).map(Finished::Window)));
        }
    }

    /// Applies what a future in flight ended with; a window's run-fatal error is returned (the
    /// sinks' part of a claim never stops the run).
    fn finished(&self, run: &mut Run, to_claim: &mut ToClaim, finished: Finished) -> Option<Fatal> {
        match finished {
            Finished::Window(events) => {
                to_claim.done += 1;
                events
                    .into_iter()
                    .find_map(|e| self.apply(&mut run.tally, e))
            }
            Finished::Skipped(events) => {
                for event in events {
                    let _ = self.apply(&mut run.tally, event);
                }
                None
            }
        }
    }

    /// Nothing in flight, ready or to claim. With no window held elsewhere either, what the
    /// sinks hold is written now, while a window whose write is refused (its lease lost) can
    /// still be claimed back; the loop goes on only for such a window. With windows only other
    /// workers hold left, what the sinks hold is written first (another worker may be waiting
    /// for it), then a heartbeat passes before they are asked for again (or `stop`).
    async fn idle(
        &self,
        run: &mut Run,
        to_claim: &ToClaim,
        total: u64,
        stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> bool {
        if to_claim.waiting.is_empty() {
            self.write_held(run, false).await;
            return run.tally.has_lost();
        }
        self.write_held(run, true).await;
        tokio::select! {
            () = tokio::time::sleep(to_claim.heartbeat) => true,
            () = stop => {
                self.stopped(run, to_claim.left(total));
                false
            }
        }
    }

    /// What a claim found: this worker's windows are ready to fetch; the sinks stop waiting for
    /// windows held elsewhere (kept to retry), and windows done elsewhere count as such. What
    /// the sinks do about it is returned, to run beside the windows in flight.
    fn take_claim<'a>(
        &'a self,
        mut claimed: crate::coord::Claimed,
        retry: bool,
        ctx: &'a crate::sink::RunContext,
        to_claim: &mut ToClaim,
    ) -> Option<Pending<'a>> {
        to_claim.ready.extend(std::mem::take(&mut claimed.mine));
        // A day whose other windows are here is written without them; if one is taken over
        // later, its rows are merged in then.
        let busy = if retry { vec![] } else { claimed.busy.clone() };
        to_claim.waiting.extend(claimed.busy);
        to_claim.done += claimed.done.len() as u64;
        let done = claimed.done;
        if busy.is_empty() && done.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            let mut events = vec![];
            for w in &busy {
                events.extend(self.skip_all(w, vec![], ctx).await);
            }
            for w in done {
                let elsewhere = vec![Event::DoneElsewhere(w.clone())];
                events.extend(self.skip_all(&w, elsewhere, ctx).await);
            }
            Finished::Skipped(events)
        }))
    }

    fn stopped(&self, run: &mut Run, left: u64) {
        tracing::warn!(
            windows_left = left,
            "stopping on a signal: no new window; writing what is held"
        );
        run.tally.interrupt(left);
    }
}

/// The claim state of a run: the plan's windows not asked for yet, in fetch order; the windows
/// others held (or this worker lost), asked for again once a heartbeat has passed; the claim in
/// progress; the windows claimed and not fetched yet; how many are done here or elsewhere.
struct ToClaim {
    queue: VecDeque<WindowKey>,
    waiting: Vec<WindowKey>,
    last_retry: Instant,
    batch: usize,
    heartbeat: std::time::Duration,
    ready: VecDeque<WindowKey>,
    /// The claim of the next batch runs beside the fetches, so that no slot waits for it.
    claiming: Option<ClaimFuture>,
    done: u64,
}

impl ToClaim {
    fn new(windows: Vec<WindowKey>, heartbeat: std::time::Duration) -> Self {
        Self {
            queue: windows.into(),
            waiting: Vec::new(),
            last_retry: Instant::now(),
            batch: CLAIM_PER_SLOT,
            heartbeat,
            ready: VecDeque::new(),
            claiming: None,
            done: 0,
        }
    }

    /// Claims ahead for `target` windows in flight: batches of [`CLAIM_PER_SLOT`] windows per
    /// window in flight, until twice the target is ready.
    fn claim_for(&mut self, coord: &Arc<Coordinator>, target: usize) {
        self.batch = target * CLAIM_PER_SLOT;
        self.claim_ahead(coord, 2 * target);
    }

    /// Claims ahead while fewer than `ahead` windows are ready: the next batch of the plan, and
    /// now and then what others held.
    fn claim_ahead(&mut self, coord: &Arc<Coordinator>, ahead: usize) {
        if self.claiming.is_none()
            && self.ready.len() < ahead
            && let Some((retry_due, ask)) = self.next()
        {
            let c = coord.clone();
            self.claiming = Some(Box::pin(async move {
                let claimed = c.claim(&ask).await;
                (retry_due, claimed)
            }));
        }
    }

    /// The claim in progress (only polled while there is one).
    async fn claimed(&mut self) -> (bool, anyhow::Result<crate::coord::Claimed>) {
        self.claiming.as_mut().expect("guarded").await
    }

    /// Windows of the plan's `total` not done yet (a window lost and claimed back counts
    /// each time it is done, so this saturates).
    fn left(&self, total: u64) -> u64 {
        total.saturating_sub(self.done)
    }

    /// Nothing claimed, ready or left in the plan (windows others hold may be waiting).
    fn is_idle(&self) -> bool {
        self.claiming.is_none() && self.ready.is_empty() && self.queue.is_empty()
    }

    /// Windows to ask for again with those others hold (each once).
    fn requeue(&mut self, windows: Vec<WindowKey>) {
        for w in windows {
            if !self.waiting.contains(&w) {
                self.waiting.push(w);
            }
        }
    }

    /// The next windows to ask for, if any are due, and whether they are a retry: what others
    /// held once a heartbeat has passed since the last retry, else the plan's next batch.
    fn next(&mut self) -> Option<(bool, Vec<WindowKey>)> {
        if !self.waiting.is_empty() && self.last_retry.elapsed() >= self.heartbeat {
            self.last_retry = Instant::now();
            return Some((true, std::mem::take(&mut self.waiting)));
        }
        if self.queue.is_empty() {
            return None;
        }
        let n = self.batch.min(self.queue.len());
        Some((false, self.queue.drain(..n).collect()))
    }
}
