//! Window ownership and de-duplication of rows. Pure.
//!
//! A row belongs to the window whose `[start, end)` contains its StatsTime; rows outside it (a
//! bucket the API floored below `start`, a bucket at `end`) are dropped from this window because
//! its neighbour owns them. Within a window, rows sharing a StatsTime are collapsed to one:
//! identical copies are counted as duplicates, differing ones as conflicts and resolved by keeping
//! the row with the largest counts (revisions only ever add late records), whatever their order.

use chrono::{DateTime, Utc};

use crate::record::{Report, TrendRow, WindowBatch, WindowKey};

/// What normalizing one response found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupCounts {
    /// Rows of a neighbour's boundary bucket (the one at `end`, or the floored one before an
    /// unaligned `start`): expected API behaviour, left to the neighbour.
    pub boundary: u64,
    /// Other rows outside the window, dropped.
    pub outside: u64,
    /// Exact repeats of a row, dropped.
    pub duplicates: u64,
    /// Rows with the same StatsTime but different counts; one kept.
    pub conflicts: u64,
}

impl std::ops::AddAssign for DedupCounts {
    fn add_assign(&mut self, o: Self) {
        self.boundary += o.boundary;
        self.outside += o.outside;
        self.duplicates += o.duplicates;
        self.conflicts += o.conflicts;
    }
}

/// Keeps the rows `key` owns, one per StatsTime, sorted by StatsTime.
pub fn own_and_dedup<R: TrendRow>(
    key: &WindowKey,
    rows: Vec<R>,
    counts: &mut DedupCounts,
) -> Vec<R> {
    let mut owned: Vec<R> = Vec::with_capacity(rows.len());
    for r in rows {
        let t = r.stats_time();
        if key.owns(t) {
            owned.push(r);
        } else if t == key.end_ms
            || (t < key.start_ms && key.start_ms - t < crate::quality::DEFAULT_BUCKET_MS)
        {
            counts.boundary += 1;
        } else {
            counts.outside += 1;
        }
    }
    // Sort by StatsTime, then by counts descending, so the first of each run is the keeper.
    owned.sort_by(|a, b| a.stats_time().cmp(&b.stats_time()).then_with(|| b.cmp(a)));
    let mut out: Vec<R> = Vec::with_capacity(owned.len());
    let mut prev: Option<R> = None;
    for r in owned {
        match prev {
            // Identical rows sort next to each other, so comparing with the previous one tells
            // an exact repeat from a differing copy.
            Some(p) if p.stats_time() == r.stats_time() => {
                if p == r {
                    counts.duplicates += 1;
                } else {
                    counts.conflicts += 1;
                }
            }
            _ => out.push(r),
        }
        prev = Some(r);
    }
    out
}

/// Turns one response into the batch its window commits.
pub fn normalize(
    key: &WindowKey,
    report: Report,
    fetched_at: DateTime<Utc>,
) -> (WindowBatch, DedupCounts) {
    let mut counts = DedupCounts::default();
    let batch = WindowBatch {
        final_end_ms: None,
        extra: report.extra,
        key: key.clone(),
        request_id: report.request_id,
        fetched_at,
        attempts: 1,
        inbound: own_and_dedup(key, report.inbound, &mut counts),
        outbound: own_and_dedup(key, report.outbound, &mut counts),
        overall: own_and_dedup(key, report.overall, &mut counts),
    };
    (batch, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MediaType, OverallRow};
    use proptest::prelude::*;

    fn key(start: i64, end: i64) -> WindowKey {
        WindowKey {
            instance_id: "i".into(),
            media_type: MediaType::Audio,
            start_ms: start,
            end_ms: end,
        }
    }

    fn ov(t: i64, n: i64) -> OverallRow {
        OverallRow {
            stats_time: t,
            max_logged_in_agents: n,
        }
    }

    #[test]
    fn rows_outside_the_window_are_left_to_the_neighbour() {
        let mut c = DedupCounts::default();
        const H: i64 = 3_600_000;
        let rows = own_and_dedup(
            &key(10 * H, 20 * H),
            vec![
                ov(9 * H + 1, 1), // the floored bucket before the start: a boundary row
                ov(10 * H, 2),
                ov(15 * H, 3),
                ov(20 * H, 4), // the bucket at the end: a boundary row
                ov(30 * H, 5), // far outside
            ],
            &mut c,
        );
        assert_eq!(rows, vec![ov(10 * H, 2), ov(15 * H, 3)]);
        assert_eq!((c.boundary, c.outside), (2, 1));
    }

    #[test]
    fn duplicates_and_conflicts_are_counted_and_resolved_the_same_in_any_order() {
        let mut c1 = DedupCounts::default();
        let mut c2 = DedupCounts::default();
        let a = own_and_dedup(
            &key(0, 10),
            vec![ov(1, 5), ov(1, 7), ov(1, 5), ov(2, 1)],
            &mut c1,
        );
        let b = own_and_dedup(
            &key(0, 10),
            vec![ov(2, 1), ov(1, 5), ov(1, 5), ov(1, 7)],
            &mut c2,
        );
        assert_eq!(a, vec![ov(1, 7), ov(2, 1)]);
        assert_eq!(a, b);
        assert_eq!((c1.duplicates, c1.conflicts), (1, 1));
        assert_eq!(c1, c2);
    }

    proptest! {
        #[test]
        fn output_is_sorted_unique_owned_and_order_independent(
            mut rows in proptest::collection::vec((0i64..50, 0i64..5), 0..60), start in 0i64..25, len in 1i64..30,
        ) {
            let k = key(start, start + len);
            let input: Vec<OverallRow> = rows.iter().map(|(t, n)| ov(*t, *n)).collect();
            let mut c = DedupCounts::default();
            let out = own_and_dedup(&k, input.clone(), &mut c);
            prop_assert!(out.windows(2).all(|w| w[0].stats_time < w[1].stats_time));
            prop_assert!(out.iter().all(|r| k.owns(r.stats_time)));
            prop_assert_eq!(out.len() as u64 + c.boundary + c.outside + c.duplicates + c.conflicts, input.len() as u64);
            rows.reverse();
            let rev: Vec<OverallRow> = rows.iter().map(|(t, n)| ov(*t, *n)).collect();
            let mut c2 = DedupCounts::default();
            prop_assert_eq!(own_and_dedup(&k, rev, &mut c2), out);
        }
    }
}
