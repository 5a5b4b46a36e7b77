//! One window's path: check the horizon, fetch, check quality, normalize, hand the rows to every
//! sink, and turn what happened into [`Event`]s for the tally. The sinks record their own
//! commits; this path records only a failed fetch, for every sink.

use std::sync::Arc;

use chrono::Utc;

use super::Engine;
use super::summary::FailedWindow;
use super::tally::{Event, Fatal};
use crate::ccc::client::{Fetched, TrendingRequest};
use crate::ccc::error::ErrorClass;
use crate::dedup::normalize;
use crate::ledger::{LedgerEntry, SinkId};
use crate::plan::{self, SEND_MARGIN_MS};
use crate::quality;
use crate::record::{Table, WindowKey};
use crate::sink::{CommitStats, RunContext, Sink, Written};

/// How a window's fetch ended.
enum Fetch {
    /// The lease was lost before or during the fetch.
    LeaseLost,
    /// All of the window aged out of the horizon before it could be sent.
    AgedOut,
    /// The service already said it has no such instance.
    UnknownInstance(FailedWindow),
    /// Sent: the window as it was fetched, the part that aged out meanwhile, and the answer.
    Sent(
        WindowKey,
        Option<WindowKey>,
        Box<Result<Fetched, crate::ccc::client::CallFailed>>,
    ),
}

impl Engine {
    /// Fetches one planned window and hands its rows to the sinks. `fetching` is its place
    /// among the windows fetching: given back as soon as the fetch ends, however it ends, so
    /// that another window fetches while this one commits (or is skipped).
    pub(super) async fn process(
        &self,
        planned: WindowKey,
        ctx: &RunContext,
        fetching: super::pace::FetchSlot,
    ) -> Vec<Event> {
        match self.fetch(&planned, fetching).await {
            Fetch::LeaseLost => self.lease_lost(&planned, ctx).await,
            Fetch::AgedOut => {
                self.skip_all(&planned, vec![Event::Lost(planned.clone())], ctx)
                    .await
            }
            Fetch::UnknownInstance(f) => {
                self.skip_all(&planned, vec![Event::FetchFailed(f)], ctx)
                    .await
            }
            Fetch::Sent(key, lost, answer) => match *answer {
                Ok(fetched) => self.deliver(&planned, key, lost, fetched, ctx).await,
                Err(failed) => self.fetch_failed(&planned, &key, failed, ctx).await,
            },
        }
    }

    /// Sends the window's request, unless its lease is lost, it aged out or its instance is
    /// unknown. The place among the windows fetching is dropped on return.
    async fn fetch(&self, planned: &WindowKey, _fetching: super::pace::FetchSlot) -> Fetch {
        if self
            .coordinator
            .as_ref()
            .is_some_and(|c| c.is_lost(planned))
        {
            return Fetch::LeaseLost;
        }
        let Some((key, lost)) = self.still_fetchable(planned) else {
            return Fetch::AgedOut;
        };
        if self.is_unknown(&key.instance_id) {
            return Fetch::UnknownInstance(FailedWindow {
                error: format!(
                    "not fetched: the service has no instance {}",
                    key.instance_id
                ),
                key,
                retryable: false,
            });
        }
        let req = TrendingRequest {
            instance_id: key.instance_id.clone(),
            media_type: key.media_type,
            start_ms: key.start_ms,
            end_ms: key.end_ms,
        };
        let fetch = self.client.get_trending_report(&req);
        let result = match &self.coordinator {
            None => fetch.await,
            // A lease lost while the request is in flight (retries, backoff) cancels it.
            Some(c) => tokio::select! {
                r = fetch => r,
                () = c.lease_lost(planned) => return Fetch::LeaseLost,
            },
        };
        Fetch::Sent(key, lost, Box::new(result))
    }

    /// The fetch of `key` failed for good: a run-fatal error stops the run; otherwise the
    /// window failed (and, when the service has no such instance, its other windows are not
    /// fetched).
    async fn fetch_failed(
        &self,
        planned: &WindowKey,
        key: &WindowKey,
        failed: crate::ccc::client::CallFailed,
        ctx: &RunContext,
    ) -> Vec<Event> {
        let class = failed.error.class();
        if class == ErrorClass::RunFatal {
            return vec![Event::Fatal(Fatal::Api(failed.error))];
        }
        let f = FailedWindow {
            key: key.clone(),
            error: failed.to_string(),
            retryable: class == ErrorClass::Retryable,
        };
        self.record_fetch_failure(key, &f.error, failed.attempts, ctx)
            .await;
        let mut events = vec![Event::FetchFailed(f)];
        if failed.error.is_unknown_instance() && self.mark_unknown(&key.instance_id) {
            tracing::error!(
                instance = %key.instance_id,
                "the service has no CCC instance {}: fix its id in [pipeline] instances, or point [source] endpoint at its region; its other windows are not fetched",
                key.instance_id
            );
            events.push(Event::UnknownInstance(key.instance_id.clone()));
        }
        self.skip_all(planned, events, ctx).await
    }

    /// The worker lost the window's lease: nothing of it is fetched or written here.
    async fn lease_lost(&self, planned: &WindowKey, ctx: &RunContext) -> Vec<Event> {
        self.skip_all(planned, vec![Event::LeaseLost(planned.clone())], ctx)
            .await
    }

    /// Whether the service already said this instance does not exist.
    fn is_unknown(&self, instance: &str) -> bool {
        self.unknown_instances
            .lock()
            .expect("unknown instances lock")
            .contains(instance)
    }

    /// Remembers an instance the service does not know; true the first time.
    fn mark_unknown(&self, instance: &str) -> bool {
        self.unknown_instances
            .lock()
            .expect("unknown instances lock")
            .insert(instance.to_string())
    }

    /// Time passes between planning and sending: the window as it can still be fetched, and the
    /// part that aged out meanwhile; `None` if all of it did.
    fn still_fetchable(&self, planned: &WindowKey) -> Option<(WindowKey, Option<WindowKey>)> {
        let horizon = plan::horizon_ms((self.now)(), SEND_MARGIN_MS);
        if planned.end_ms <= horizon {
            return None;
        }
        if planned.start_ms >= horizon {
            return Some((planned.clone(), None));
        }
        let lost = WindowKey {
            end_ms: horizon,
            ..planned.clone()
        };
        tracing::warn!(window = %lost, "LOST: part of the window aged out before it was sent");
        let key = WindowKey {
            start_ms: horizon,
            ..planned.clone()
        };
        Some((key, Some(lost)))
    }

    /// Checks and normalizes a response, then hands the batch to every sink.
    async fn deliver(
        &self,
        planned: &WindowKey,
        key: WindowKey,
        lost: Option<WindowKey>,
        mut fetched: Fetched,
        ctx: &RunContext,
    ) -> Vec<Event> {
        let now = (self.now)();
        let grid = quality::Grid::of(&fetched.report);
        let quality = quality::check_on(&grid, &key, &fetched.report, now);
        if quality.total() > 0 {
            tracing::warn!(
                window = %key,
                "data quality: {} in {key}; the rows are kept, look at the source",
                quality.describe()
            );
        }
        for (names, rows) in &fetched.report.conflicting_names {
            tracing::warn!(
                window = %key,
                fields = %names,
                "data quality: {rows} row(s) carry both {names} with different values; the \
                 current name's value is kept"
            );
        }
        // The bucket in progress is served partly filled: coverage stops before it, so the next
        // run's window starts at its boundary and completes it.
        let open_bucket = grid.open_bucket_start(now);
        let drift = std::mem::take(&mut fetched.report.drift);
        let (mut batch, dedup) = normalize(&key, fetched.report, Utc::now());
        batch.attempts = fetched.attempts;
        batch.final_end_ms = Some(open_bucket).filter(|t| *t < key.end_ms);
        let batch = Arc::new(batch);
        let mut events = vec![Event::Fetched {
            key,
            rows: Table::ALL.map(|t| batch.rows_in(t) as u64),
            dedup,
            lost,
            quality,
            drift,
        }];
        for sink in &self.sinks {
            let written = sink.write(planned, batch.clone(), ctx).await;
            events.extend(report(sink.as_ref(), written));
        }
        events
    }

    /// Tells every sink a window will not come, after `events`.
    pub(super) async fn skip_all(
        &self,
        planned: &WindowKey,
        mut events: Vec<Event>,
        ctx: &RunContext,
    ) -> Vec<Event> {
        for sink in &self.sinks {
            let written = sink.skip(planned, ctx).await;
            events.extend(report(sink.as_ref(), written));
        }
        events
    }

    /// A fetch that failed for good is recorded for every sink, so `status` can tell why.
    async fn record_fetch_failure(
        &self,
        key: &WindowKey,
        error: &str,
        attempts: u32,
        ctx: &RunContext,
    ) {
        let entries: Vec<LedgerEntry> = self
            .sinks
            .iter()
            .map(|s| LedgerEntry::failed(&s.id(), key, error, attempts, ctx.run_id))
            .collect();
        if let Err(e) = ctx.ledger.record_many(&entries).await {
            tracing::warn!(error = %e, window = %key, "could not record the failure in the ledger");
        }
    }
}

/// What one call into a sink reported, as events. The sink has already recorded its commits.
pub(super) fn report(sink: &dyn Sink, written: Written) -> Vec<Event> {
    let kind = sink.kind();
    let mut events = vec![];
    if written.stats != CommitStats::default() {
        events.push(Event::Stats {
            sink: kind,
            stats: written.stats,
        });
    }
    if written.foreign_rows > 0 {
        events.push(Event::ForeignRows(written.foreign_rows));
    }
    if !written.durable.is_empty() {
        events.push(Event::Durable {
            sink: kind,
            keys: written.durable.into_iter().map(|d| d.key).collect(),
        });
    }
    events.extend(written.fenced.into_iter().map(Event::Fenced));
    events.extend(
        written
            .late
            .into_iter()
            .map(|key| Event::Late { sink: kind, key }),
    );
    let mut fatal = None;
    for (key, e) in written.failed {
        if e.is_fatal() && fatal.is_none() {
            fatal = Some(Fatal::Sink(e.clone()));
        }
        events.push(Event::SinkFailed(FailedWindow {
            key,
            error: e.to_string(),
            retryable: e.is_retryable(),
        }));
    }
    // A sink no write of this run can succeed in stops the run, once.
    events.extend(fatal.map(Event::Fatal));
    events
}

/// The sinks' ids, for the ledger.
pub(super) fn sink_ids(sinks: &[Arc<dyn Sink>]) -> Vec<SinkId> {
    sinks.iter().map(|s| s.id()).collect()
}
