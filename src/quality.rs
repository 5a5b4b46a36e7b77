//! Data-quality checks on every fetched window. Pure. Violations are counted and reported; the
//! rows are still written, because dropping data silently is worse than flagging it.

use serde::Serialize;

use crate::record::{Report, TrendRow, WindowKey};

/// Violations found, by kind (rows, except `missing_buckets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QualityCounts {
    /// Rows with a negative count.
    pub negative_counts: u64,
    /// Rows where handled (or answered, or queued) exceeds the total.
    pub handled_above_total: u64,
    /// Inbound rows where handled plus abandoned exceeds the total.
    pub abandoned_above_total: u64,
    /// Rows whose StatsTime is off the bucket grid.
    pub misaligned_stats_time: u64,
    /// Rows outside the window: before the bucket containing its start, or after the bucket
    /// starting at its end (those two are the neighbours' boundary buckets, expected).
    pub outside_window: u64,
    /// Buckets absent from a table inside a window wholly in the past.
    pub missing_buckets: u64,
    /// Known fields absent from every row of a window's array (stored as 0), per window.
    pub missing_fields: u64,
    /// Rows carrying a field under both its current and its former name, with different
    /// values (the current name's is kept).
    #[serde(default)]
    pub conflicting_names: u64,
}

impl QualityCounts {
    /// All violations.
    pub fn total(&self) -> u64 {
        self.negative_counts
            + self.handled_above_total
            + self.abandoned_above_total
            + self.misaligned_stats_time
            + self.outside_window
            + self.missing_buckets
            + self.missing_fields
            + self.conflicting_names
    }

    /// `(kind, count)` pairs, for metrics and messages.
    pub fn kinds(&self) -> [(&'static str, u64); 8] {
        [
            ("negative_counts", self.negative_counts),
            ("handled_above_total", self.handled_above_total),
            ("abandoned_above_total", self.abandoned_above_total),
            ("misaligned_stats_time", self.misaligned_stats_time),
            ("outside_window", self.outside_window),
            ("missing_buckets", self.missing_buckets),
            ("missing_fields", self.missing_fields),
            ("conflicting_names", self.conflicting_names),
        ]
    }
}

impl QualityCounts {
    /// One sentence for a person: what was found, in words (empty when nothing was).
    pub fn describe(&self) -> String {
        let words = [
            (self.negative_counts, "row(s) with a negative count"),
            (
                self.handled_above_total,
                "row(s) handling (or answering, or queueing) more calls than the total",
            ),
            (
                self.abandoned_above_total,
                "row(s) where handled plus abandoned exceeds the total",
            ),
            (self.misaligned_stats_time, "row(s) off the bucket grid"),
            (
                self.outside_window,
                "row(s) far outside the requested window",
            ),
            (self.missing_buckets, "bucket(s) missing"),
            (
                self.missing_fields,
                "known field(s) absent from every row (stored as 0)",
            ),
            (
                self.conflicting_names,
                "row(s) sending a field under its current and its former name with different \
                 values (the current name's is kept)",
            ),
        ];
        words
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, w)| format!("{n} {w}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::ops::AddAssign for QualityCounts {
    fn add_assign(&mut self, o: Self) {
        self.negative_counts += o.negative_counts;
        self.handled_above_total += o.handled_above_total;
        self.abandoned_above_total += o.abandoned_above_total;
        self.misaligned_stats_time += o.misaligned_stats_time;
        self.outside_window += o.outside_window;
        self.missing_buckets += o.missing_buckets;
        self.missing_fields += o.missing_fields;
        self.conflicting_names += o.conflicting_names;
    }
}

/// The bucket length, inferred as the most common gap between distinct StatsTimes (the API does
/// not document it; one stray row cannot change the answer). `None` with fewer than two buckets.
pub fn infer_bucket_ms(report: &Report) -> Option<i64> {
    let mut times: Vec<i64> = report
        .inbound
        .iter()
        .map(|r| r.stats_time)
        .chain(report.outbound.iter().map(|r| r.stats_time))
        .chain(report.overall.iter().map(|r| r.stats_time))
        .collect();
    times.sort_unstable();
    times.dedup();
    let mut gaps: std::collections::BTreeMap<i64, usize> = Default::default();
    for w in times.windows(2) {
        *gaps.entry(w[1] - w[0]).or_default() += 1;
    }
    // Most frequent; on a tie the smaller gap.
    gaps.into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(g, _)| g)
}

/// The bucket length assumed when a response has fewer than two buckets: an hour, the API's
/// granularity for the trending report.
pub const DEFAULT_BUCKET_MS: i64 = 3_600_000;

/// A report's bucket grid, inferred once per response: its bucket length (when the report shows
/// one) and a bucket start it passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// The inferred bucket length, `None` with fewer than two buckets.
    pub bucket_ms: Option<i64>,
    /// A bucket start on the grid (the first row's; 0, a UTC hour, if none).
    pub anchor: i64,
}

impl Grid {
    /// The grid of a report.
    pub fn of(report: &Report) -> Self {
        Self {
            bucket_ms: infer_bucket_ms(report),
            anchor: report
                .inbound
                .first()
                .map(|r| r.stats_time)
                .or(report.outbound.first().map(|r| r.stats_time))
                .or(report.overall.first().map(|r| r.stats_time))
                .unwrap_or(0),
        }
    }

    /// The start of the bucket in progress at `now_ms` (hourly buckets when the report cannot
    /// tell). Rows from this bucket on are not final.
    pub fn open_bucket_start(&self, now_ms: i64) -> i64 {
        let bucket = self
            .bucket_ms
            .filter(|b| *b > 0)
            .unwrap_or(DEFAULT_BUCKET_MS);
        now_ms - (now_ms - self.anchor).rem_euclid(bucket)
    }
}

/// The start of the bucket in progress at `now_ms` on the report's grid ([`Grid`]).
pub fn open_bucket_start(report: &Report, now_ms: i64) -> i64 {
    Grid::of(report).open_bucket_start(now_ms)
}

fn grid_checks<R: TrendRow>(
    rows: &[R],
    key: &WindowKey,
    grid: Option<(i64, i64)>,
    past: bool,
    q: &mut QualityCounts,
) {
    for r in rows {
        if r.counts().iter().any(|c| *c < 0) {
            q.negative_counts += 1;
        }
    }
    let Some((bucket, anchor)) = grid else {
        return;
    };
    let first_bucket = key.start_ms - (key.start_ms - anchor).rem_euclid(bucket);
    let mut owned = std::collections::BTreeSet::new();
    for r in rows {
        let t = r.stats_time();
        let aligned = (t - anchor).rem_euclid(bucket) == 0;
        if !aligned {
            q.misaligned_stats_time += 1;
        }
        // The bucket at `end` is the neighbour's, returned by an API whose EndTime is
        // inclusive: expected, not a violation (de-duplication leaves it to the neighbour).
        if t < first_bucket || t > key.end_ms {
            q.outside_window += 1;
        }
        if aligned && key.owns(t) {
            owned.insert(t);
        }
    }
    if past && !rows.is_empty() {
        let first_owned = if first_bucket < key.start_ms {
            first_bucket + bucket
        } else {
            first_bucket
        };
        let expected = if first_owned < key.end_ms {
            (key.end_ms - first_owned + bucket - 1) / bucket
        } else {
            0
        };
        q.missing_buckets += (expected as u64).saturating_sub(owned.len() as u64);
    }
}

/// Checks one response for `key` at `now_ms`.
pub fn check(key: &WindowKey, report: &Report, now_ms: i64) -> QualityCounts {
    check_on(&Grid::of(report), key, report, now_ms)
}

/// [`check`] on a grid already inferred from the report.
pub fn check_on(grid: &Grid, key: &WindowKey, report: &Report, now_ms: i64) -> QualityCounts {
    let mut q = QualityCounts {
        missing_fields: report.drift.missing.len() as u64,
        conflicting_names: report.conflicting_names.values().sum(),
        ..QualityCounts::default()
    };
    let grid = grid.bucket_ms.map(|b| (b, grid.anchor));
    let past = key.end_ms <= now_ms;
    grid_checks(&report.inbound, key, grid, past, &mut q);
    grid_checks(&report.outbound, key, grid, past, &mut q);
    grid_checks(&report.overall, key, grid, past, &mut q);
    for r in &report.inbound {
        if r.calls_handled > r.total_calls || r.calls_queued > r.total_calls {
            q.handled_above_total += 1;
        }
        let abandoned =
            r.calls_abandoned_in_ivr + r.calls_abandoned_in_queue + r.calls_abandoned_in_ring;
        if r.calls_handled + abandoned > r.total_calls {
            q.abandoned_above_total += 1;
        }
    }
    for r in &report.outbound {
        if r.calls_answered > r.total_calls {
            q.handled_above_total += 1;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{InboundRow, MediaType, OverallRow};

    const H: i64 = 3_600_000;

    fn key(start: i64, end: i64) -> WindowKey {
        WindowKey {
            instance_id: "i".into(),
            media_type: MediaType::Audio,
            start_ms: start,
            end_ms: end,
        }
    }

    fn inbound(t: i64, total: i64, handled: i64, ivr: i64) -> InboundRow {
        InboundRow {
            stats_time: t,
            total_calls: total,
            calls_handled: handled,
            calls_queued: handled,
            calls_abandoned_in_ivr: ivr,
            calls_abandoned_in_queue: 0,
            calls_abandoned_in_ring: 0,
        }
    }

    fn report(inbound: Vec<InboundRow>) -> Report {
        Report {
            inbound,
            ..Default::default()
        }
    }

    #[test]
    fn the_open_bucket_is_the_one_containing_now_on_the_reports_grid() {
        let r = report(vec![inbound(0, 1, 1, 0), inbound(H, 1, 1, 0)]);
        assert_eq!(open_bucket_start(&r, 10 * H + 30 * 60_000 + 5_000), 10 * H);
        assert_eq!(open_bucket_start(&r, 10 * H), 10 * H);
        let half = report(vec![inbound(H / 2, 1, 1, 0), inbound(3 * H / 2, 1, 1, 0)]);
        assert_eq!(open_bucket_start(&half, 10 * H + 1), 9 * H + H / 2);
        assert_eq!(open_bucket_start(&report(vec![]), 10 * H + 7), 10 * H);
    }

    #[test]
    fn the_neighbours_boundary_buckets_are_not_violations() {
        // The floored bucket before an unaligned start and the bucket at an inclusive end.
        let r = report((0..=4).map(|h| inbound(h * H, 10, 8, 2)).collect());
        let q = check(&key(H / 2, 4 * H), &r, 10 * H);
        assert_eq!(q, QualityCounts::default(), "{}", q.describe());
        let far = report(vec![inbound(0, 1, 1, 0), inbound(6 * H, 1, 1, 0)]);
        let q = check(&key(0, 4 * H), &far, 10 * H);
        assert_eq!(q.outside_window, 1);
        assert!(
            q.describe()
                .starts_with("1 row(s) far outside the requested window"),
            "{}",
            q.describe()
        );
    }

    #[test]
    fn a_clean_response_has_no_violations() {
        let r = Report {
            inbound: (0..4).map(|h| inbound(h * H, 10, 8, 2)).collect(),
            ..Default::default()
        };
        assert_eq!(check(&key(0, 4 * H), &r, 10 * H), QualityCounts::default());
    }

    #[test]
    fn each_kind_of_violation_is_counted() {
        let r = Report {
            inbound: vec![
                inbound(0, 1, 1, 0),              // the floored bucket before start: fine
                inbound(H, 5, 4, -1),             // negative
                inbound(2 * H, 5, 6, 0),          // handled above total, so abandoned too
                inbound(3 * H, 5, 4, 3),          // handled + abandoned above total
                inbound(3 * H + 60_000, 1, 1, 0), // off the grid
                inbound(6 * H, 1, 1, 0),          // outside the window
            ],
            overall: vec![OverallRow {
                stats_time: 0,
                max_logged_in_agents: 1,
            }],
            ..Default::default()
        };
        assert_eq!(infer_bucket_ms(&r), Some(H));
        let q = check(&key(H / 2, 5 * H), &r, 10 * H);
        assert_eq!(q.negative_counts, 1);
        assert_eq!(q.handled_above_total, 1);
        assert_eq!(q.abandoned_above_total, 2);
        assert_eq!(q.misaligned_stats_time, 1);
        assert_eq!(q.outside_window, 1);
        // inbound owns H, 2H, 3H of H..5H (4H missing); overall owns none of the 4
        assert_eq!(q.missing_buckets, 1 + 4);
        assert_eq!(q.total(), 11);
    }

    #[test]
    fn missing_buckets_are_not_counted_for_a_window_reaching_into_the_present() {
        let r = Report {
            inbound: vec![inbound(0, 1, 1, 0), inbound(H, 1, 1, 0)],
            ..Default::default()
        };
        assert_eq!(check(&key(0, 5 * H), &r, 4 * H).missing_buckets, 0);
        assert_eq!(check(&key(0, 5 * H), &r, 5 * H).missing_buckets, 3);
    }
}
