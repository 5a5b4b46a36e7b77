//! The Parquet sink's day buffer: which windows wait for which local days, and when a day can be
//! written. Pure and synchronous; the sink around it does the I/O.
//!
//! The run announces its windows ([`DayBuffer::expect`]). A window's rows are held until every
//! announced window touching their days has arrived or will not come; then those days are handed
//! out as [`DayJob`]s, once each. A window is settled (durable, or failed if one of its days
//! failed) when its last day is reported written ([`DayBuffer::day_done`]). When more than the
//! bound of rows is held, the oldest days are handed out early; a day can then be handed out
//! again later with the rest of its rows, and the file merge makes that harmless.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::NaiveDate;
use chrono_tz::Tz;

use crate::record::{WindowBatch, WindowKey};
use crate::sink::SinkError;

/// One day's held windows, taken out of the buffer to be written.
#[derive(Debug)]
pub struct DayJob {
    /// The local day.
    pub day: NaiveDate,
    /// Ids of the held windows with rows on that day (for [`DayBuffer::day_done`]).
    pub ids: Vec<u64>,
    /// Their batches, in arrival order (a later one wins on a repeated key).
    pub batches: Vec<Arc<WindowBatch>>,
}

/// How the write of a day ended for the windows it held.
#[derive(Debug, Clone)]
pub enum DayOutcome {
    /// Written.
    Written,
    /// Not written: the sink failed.
    Failed(SinkError),
    /// Not written for this window: this worker no longer holds its lease.
    Fenced,
    /// Written, but after the day's lock was lost: not to be recorded.
    Late,
}

/// A window whose days are all written, or one of them was not.
#[derive(Debug)]
pub enum Settled {
    /// Every day of the window is written.
    Durable(Arc<WindowBatch>),
    /// A day failed: the window is not durable here.
    Failed(WindowKey, SinkError),
    /// A day refused the window: its lease is another worker's now (or expired).
    Fenced(WindowKey),
    /// A day's write of the window landed after the day's lock was lost.
    Late(WindowKey),
}

/// A window whose rows are held.
#[derive(Debug)]
struct Held {
    batch: Arc<WindowBatch>,
    /// Days of the window not written yet.
    days_left: usize,
    /// The first error writing one of its days.
    /// The first day that was not written for it, and why.
    failed: Option<DayOutcome>,
}

/// What waits in memory.
#[derive(Debug)]
pub struct DayBuffer {
    tz: Tz,
    bound: usize,
    /// Announced windows (planned keys) not arrived or skipped yet.
    expected: HashSet<WindowKey>,
    /// Per day, announced windows touching it that have not arrived.
    pending: BTreeMap<NaiveDate, usize>,
    /// Per day, held windows (ids) whose rows of that day are not written.
    days: BTreeMap<NaiveDate, Vec<u64>>,
    held: HashMap<u64, Held>,
    next_id: u64,
    held_rows: usize,
}

impl DayBuffer {
    /// A buffer cutting days in `tz`, holding about `bound` rows at most (at least 1).
    pub fn new(tz: Tz, bound: usize) -> Self {
        Self {
            tz,
            bound: bound.max(1),
            expected: HashSet::new(),
            pending: BTreeMap::new(),
            days: BTreeMap::new(),
            held: HashMap::new(),
            next_id: 0,
            held_rows: 0,
        }
    }

    /// Rows held.
    pub fn held_rows(&self) -> usize {
        self.held_rows
    }

    /// The local days `[start, end)` touches.
    pub fn days_of(&self, key: &WindowKey) -> Vec<NaiveDate> {
        if key.end_ms <= key.start_ms {
            return vec![];
        }
        let day = |ms: i64| crate::plan::local_date(self.tz, ms);
        let (first, last) = (day(key.start_ms), day(key.end_ms - 1));
        first.iter_days().take_while(|d| *d <= last).collect()
    }

    /// Announces windows the run will write or skip.
    pub fn expect(&mut self, windows: &[WindowKey]) {
        for w in windows {
            if self.expected.insert(w.clone()) {
                for d in self.days_of(w) {
                    *self.pending.entry(d).or_default() += 1;
                }
            }
        }
    }

    /// The rows of `planned` arrived. Returns the days to write now; a batch touching no day is
    /// settled at once (returned as durable).
    pub fn arrive(
        &mut self,
        planned: &WindowKey,
        batch: Arc<WindowBatch>,
    ) -> (Vec<DayJob>, Option<Settled>) {
        let mut complete = self.mark_arrived(planned);
        let days = self.days_of(&batch.key);
        if days.is_empty() {
            let jobs = self.take_days(complete);
            return (jobs, Some(Settled::Durable(batch)));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.held_rows += batch.row_count();
        for d in &days {
            self.days.entry(*d).or_default().push(id);
            if !self.pending.contains_key(d) {
                complete.push(*d);
            }
        }
        let days_left = days.len();
        self.held.insert(
            id,
            Held {
                batch,
                days_left,
                failed: None,
            },
        );
        (self.take_days(complete), None)
    }

    /// `planned` will not come (its fetch failed, or it aged out). Returns the days that were
    /// waiting only for it.
    pub fn skip(&mut self, planned: &WindowKey) -> Vec<DayJob> {
        let complete = self.mark_arrived(planned);
        self.take_days(complete)
    }

    /// The end of the run: every held day, whatever is still expected.
    pub fn flush(&mut self) -> Vec<DayJob> {
        self.expected.clear();
        self.pending.clear();
        let all: Vec<NaiveDate> = self.days.keys().copied().collect();
        self.take_days(all)
    }

    /// A day handed out as `ids` was written, failed, or refused them. Returns the windows that
    /// are now settled.
    pub fn day_done(&mut self, ids: Vec<u64>, outcome: DayOutcome) -> Vec<Settled> {
        let mut out = vec![];
        for id in ids {
            let Some(h) = self.held.get_mut(&id) else {
                continue;
            };
            h.days_left -= 1;
            if h.failed.is_none() && !matches!(outcome, DayOutcome::Written) {
                h.failed = Some(outcome.clone());
            }
            if h.days_left == 0 {
                let h = self.held.remove(&id).expect("held window");
                self.held_rows -= h.batch.row_count();
                out.push(match h.failed {
                    None | Some(DayOutcome::Written) => Settled::Durable(h.batch),
                    Some(DayOutcome::Failed(e)) => Settled::Failed(h.batch.key.clone(), e),
                    Some(DayOutcome::Fenced) => Settled::Fenced(h.batch.key.clone()),
                    Some(DayOutcome::Late) => Settled::Late(h.batch.key.clone()),
                });
            }
        }
        out
    }

    /// Marks `planned` as arrived; returns the days it was the last pending window of.
    fn mark_arrived(&mut self, planned: &WindowKey) -> Vec<NaiveDate> {
        let days = self.days_of(planned);
        if self.expected.remove(planned) {
            for d in &days {
                if let Some(n) = self.pending.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        self.pending.remove(d);
                    }
                }
            }
        }
        days.into_iter()
            .filter(|d| !self.pending.contains_key(d))
            .collect()
    }

    /// Takes the named days out of the buffer, plus the oldest days while more than the bound
    /// would stay held.
    fn take_days(&mut self, complete: Vec<NaiveDate>) -> Vec<DayJob> {
        let mut days: Vec<NaiveDate> = complete
            .into_iter()
            .filter(|d| self.days.contains_key(d))
            .collect();
        days.sort();
        days.dedup();
        if self.held_rows > self.bound {
            for day in self.oldest_days_to_free() {
                if !days.contains(&day) {
                    days.push(day);
                }
            }
        }
        days.into_iter()
            .filter_map(|day| {
                let ids = self.days.remove(&day)?;
                let batches = ids.iter().map(|i| self.held[i].batch.clone()).collect();
                Some(DayJob { day, ids, batches })
            })
            .collect()
    }

    /// Rows leave memory only when a window's last day is written: the oldest days whose
    /// writing completes enough windows to bring the buffer under half the bound.
    fn oldest_days_to_free(&self) -> Vec<NaiveDate> {
        let mut out = vec![];
        let mut freed = 0usize;
        let mut left: HashMap<u64, usize> = HashMap::new();
        for (day, ids) in &self.days {
            if self.held_rows - freed <= self.bound / 2 {
                break;
            }
            out.push(*day);
            for id in ids {
                let h = &self.held[id];
                let l = left.entry(*id).or_insert(h.days_left);
                *l -= 1;
                if *l == 0 {
                    freed += h.batch.row_count();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MediaType, OverallRow};
    use chrono::DateTime;
    use proptest::prelude::*;

    const H: i64 = 3_600_000;
    const DAY: i64 = 24 * H;

    fn window(instance: usize, start_h: i64, hours: i64) -> WindowKey {
        WindowKey {
            instance_id: format!("i{instance}"),
            media_type: MediaType::Audio,
            start_ms: start_h * H,
            end_ms: (start_h + hours) * H,
        }
    }

    fn batch(key: &WindowKey) -> Arc<WindowBatch> {
        Arc::new(WindowBatch {
            final_end_ms: None,
            key: key.clone(),
            request_id: "r".into(),
            fetched_at: DateTime::from_timestamp_millis(0).unwrap(),
            attempts: 1,
            inbound: vec![],
            outbound: vec![],
            overall: (key.start_ms / H..key.end_ms / H)
                .map(|h| OverallRow {
                    stats_time: h * H,
                    max_logged_in_agents: 1,
                })
                .collect(),
            extra: Default::default(),
        })
    }

    /// Plays a run: windows arrive (or are skipped) in `order`, every handed-out day is written
    /// at once; returns how often each window became durable, and the peak of held rows.
    fn play(
        windows: &[WindowKey],
        order: &[usize],
        skipped: &HashSet<usize>,
        bound: usize,
    ) -> (HashMap<WindowKey, usize>, usize, DayBuffer) {
        let mut b = DayBuffer::new(chrono_tz::Asia::Shanghai, bound);
        b.expect(windows);
        let mut durable: HashMap<WindowKey, usize> = HashMap::new();
        let mut peak = 0;
        let mut settle = |b: &mut DayBuffer, jobs: Vec<DayJob>| {
            for job in jobs {
                for s in b.day_done(job.ids, DayOutcome::Written) {
                    match s {
                        Settled::Durable(batch) => {
                            *durable.entry(batch.key.clone()).or_default() += 1
                        }
                        Settled::Failed(k, e) => panic!("{k} failed: {e}"),
                        Settled::Fenced(k) | Settled::Late(k) => panic!("{k} not written"),
                    }
                }
            }
        };
        for &i in order {
            let w = &windows[i];
            if skipped.contains(&i) {
                let jobs = b.skip(w);
                settle(&mut b, jobs);
            } else {
                let (jobs, now) = b.arrive(w, batch(w));
                assert!(now.is_none());
                settle(&mut b, jobs);
            }
            peak = peak.max(b.held_rows());
        }
        let jobs = b.flush();
        settle(&mut b, jobs);
        (durable, peak, b)
    }

    proptest! {
        #[test]
        fn every_window_becomes_durable_exactly_once_for_any_order_and_bound(
            spans in prop::collection::vec((0usize..4, 0i64..(20 * 24), 1i64..(7 * 24)), 1..24),
            seed in any::<u64>(),
            bound in 1usize..2_000,
            skip_mask in any::<u32>(),
        ) {
            let windows: Vec<WindowKey> = {
                let mut seen = HashSet::new();
                spans.iter()
                    .map(|(i, s, h)| window(*i, *s, *h))
                    .filter(|w| seen.insert(w.clone()))
                    .collect()
            };
            let mut order: Vec<usize> = (0..windows.len()).collect();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let skipped: HashSet<usize> =
                (0..windows.len()).filter(|i| skip_mask & (1 << (i % 32)) != 0).collect();
            let (durable, _, b) = play(&windows, &order, &skipped, bound);
            for (i, w) in windows.iter().enumerate() {
                let n = durable.get(w).copied().unwrap_or(0);
                prop_assert_eq!(n, usize::from(!skipped.contains(&i)), "{}", w);
            }
            prop_assert_eq!(b.held_rows(), 0);
        }
    }

    #[test]
    fn a_day_waits_for_its_last_expected_window_and_the_bound_caps_memory() {
        // Three instances, the same week: nothing is written before the last one arrives.
        let ws: Vec<WindowKey> = (0..3).map(|i| window(i, 0, 7 * 24)).collect();
        let mut b = DayBuffer::new(chrono_tz::UTC, 1_000_000);
        b.expect(&ws);
        assert!(b.arrive(&ws[0], batch(&ws[0])).0.is_empty());
        assert!(b.arrive(&ws[1], batch(&ws[1])).0.is_empty());
        let (jobs, _) = b.arrive(&ws[2], batch(&ws[2]));
        assert_eq!(jobs.len(), 7, "one job per day");
        assert!(
            jobs.iter().all(|j| j.batches.len() == 3),
            "each day holds every series"
        );
        // With a small bound the oldest days go early and memory stays near the bound.
        let order: Vec<usize> = (0..3).collect();
        let (_, peak, _) = play(&ws, &order, &HashSet::new(), 100);
        assert!(peak <= 100 + 7 * 24, "{peak}");
        assert_eq!(DAY, 24 * H);
    }

    #[test]
    fn a_failed_day_fails_every_window_on_it_and_only_those() {
        let (a, c) = (window(0, 0, 48), window(1, 48, 24));
        let mut b = DayBuffer::new(chrono_tz::UTC, 1_000_000);
        b.expect(&[a.clone(), c.clone()]);
        let (jobs, _) = b.arrive(&a, batch(&a));
        assert_eq!(jobs.len(), 2);
        let mut jobs = jobs.into_iter();
        let first = jobs.next().unwrap();
        let error = SinkError {
            sink: crate::ledger::SinkKind::Parquet,
            message: "disk full".into(),
            kind: crate::sink::Failure::Transient,
        };
        assert!(
            b.day_done(first.ids, DayOutcome::Failed(error)).is_empty(),
            "a has a day left"
        );
        let settled = b.day_done(jobs.next().unwrap().ids, DayOutcome::Written);
        assert!(
            matches!(&settled[..], [Settled::Failed(k, e)] if *k == a && e.message == "disk full")
        );
        let (jobs, _) = b.arrive(&c, batch(&c));
        let settled = b.day_done(jobs.into_iter().next().unwrap().ids, DayOutcome::Written);
        assert!(matches!(&settled[..], [Settled::Durable(x)] if x.key == c));
    }
}
