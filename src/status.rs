//! What is covered, what is missing, and what is about to age out of the API for good.
//!
//! Per instance and media type: the ranges every configured sink has committed, the gaps that a
//! nightly run can still fill, the gaps already lost behind the 180-day horizon, and the aging-out
//! alert: uncovered time that falls behind the horizon within `alert_days`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::ledger::SinkKind;
use crate::ledger::{Ledger, LedgerError, SinkId};
use crate::plan::DAY_MS;
use crate::ranges::{intersect, subtract, union};
use crate::record::{MediaType, Table};

/// A half-open range, with readable ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    /// Start, epoch ms.
    pub start_ms: i64,
    /// End, epoch ms.
    pub end_ms: i64,
    /// Start, RFC 3339 in the configured zone (with its offset).
    pub start: String,
    /// End, RFC 3339 in the configured zone (with its offset).
    pub end: String,
}

/// An instant as RFC 3339 in `tz`, with its offset: `2026-11-01T00:00:00+08:00`.
pub fn local_rfc3339(ms: i64, tz: Tz) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&tz)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// An instant as people in `tz` read it: `2026-11-01 00:00`.
fn local_short(ms: i64, tz: Tz) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

impl Span {
    /// A range as a span in `tz`.
    pub fn new((s, e): (i64, i64), tz: Tz) -> Self {
        Self {
            start_ms: s,
            end_ms: e,
            start: local_rfc3339(s, tz),
            end: local_rfc3339(e, tz),
        }
    }
}

/// One instance and media type.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesStatus {
    /// Instance.
    pub instance_id: String,
    /// Media type.
    pub media_type: MediaType,
    /// Committed by every configured sink.
    pub covered: Vec<Span>,
    /// Not covered, still inside the horizon: a nightly run fills these.
    pub recoverable_gaps: Vec<Span>,
    /// Not covered and already behind the horizon (since the first covered window).
    pub lost_gaps: Vec<Span>,
    /// Not covered and behind the horizon within the alert period.
    pub aging_out: Vec<Span>,
    /// Rows per sink.
    pub rows: BTreeMap<String, u64>,
    /// Rows per sink and table.
    pub rows_by_table: BTreeMap<String, BTreeMap<String, u64>>,
}

impl SeriesStatus {
    /// Seconds until its oldest uncovered time leaves the horizon (`horizon_ms` at `now_ms`);
    /// with no gap, the headroom of time fetched now.
    pub fn headroom_secs(&self, horizon_ms: i64, now_ms: i64) -> i64 {
        let oldest = (self.recoverable_gaps.iter().map(|g| g.start_ms).min()).unwrap_or(now_ms);
        (oldest - horizon_ms).max(0) / 1000
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The zone times are shown in.
    pub timezone: String,
    /// When it was made, epoch ms.
    pub now_ms: i64,
    /// The horizon used, epoch ms.
    pub horizon_ms: i64,
    /// Days of the aging-out alert.
    pub alert_days: u32,
    /// When a run last committed every window.
    pub last_success: Option<String>,
    /// Per series.
    pub series: Vec<SeriesStatus>,
    /// Whether any series has time aging out.
    pub alert: bool,
    /// What a sink was found not to hold although the ledger says so (missing, changed or
    /// damaged day files); those days count as not covered.
    pub findings: Vec<String>,
    /// Files in the Parquet root's day directories besides the day's file: engines read them as
    /// part of the table (a day counted twice); the next run moves them aside.
    #[serde(default)]
    pub extra_files: Vec<String>,
    /// Instances the sinks hold rows of that the configuration no longer lists: history, kept
    /// as it is (PostgreSQL's from the ledger, Parquet's from the files).
    #[serde(default)]
    pub history: Vec<String>,
    /// Workers seen in the last day, live ones first (PostgreSQL only).
    pub workers: Vec<crate::coord::WorkerRow>,
    /// Leases whose worker stopped heartbeating and that no worker has taken over yet.
    pub expired_leases: i64,
    /// Fields the API sent that ccc-etl does not know, and known fields it stopped sending, as
    /// the runs since the schema last changed met them.
    pub fields: crate::record::Drift,
}

/// Ranges of one series: (covered, recoverable gaps, lost gaps, aging out).
pub type Coverage = (
    Vec<(i64, i64)>,
    Vec<(i64, i64)>,
    Vec<(i64, i64)>,
    Vec<(i64, i64)>,
);

/// Coverage of one series from the per-sink committed ranges. Pure.
pub fn classify(
    committed_by_sink: &[Vec<(i64, i64)>],
    now_ms: i64,
    horizon_ms: i64,
    alert_days: u32,
) -> Coverage {
    let earliest = committed_by_sink
        .iter()
        .flatten()
        .map(|r| r.0)
        .min()
        .unwrap_or(horizon_ms);
    let lo = earliest.min(horizon_ms);
    let mut gaps = Vec::new();
    for done in committed_by_sink {
        gaps.extend(subtract(lo, now_ms, done));
    }
    let mut gaps = union(gaps);
    // The bucket in progress is never final, so coverage stops at its start: not a gap.
    gaps.retain(|(a, b)| !(*b == now_ms && now_ms - a < crate::quality::DEFAULT_BUCKET_MS));
    let covered = subtract(lo, now_ms, &gaps);
    let recoverable = intersect(&gaps, horizon_ms, now_ms);
    let lost = intersect(&gaps, lo, horizon_ms);
    let aging = intersect(&gaps, horizon_ms, horizon_ms + alert_days as i64 * DAY_MS);
    (covered, recoverable, lost, aging)
}

/// A series' rows, per sink and table.
fn rows_of(
    rows: &BTreeMap<(String, MediaType, SinkKind, Table), u64>,
    instance: &str,
    media: MediaType,
    sinks: &[SinkId],
) -> BTreeMap<String, BTreeMap<String, u64>> {
    sinks
        .iter()
        .map(|s| {
            let tables = Table::ALL
                .iter()
                .map(|t| {
                    let key = (instance.to_string(), media, s.kind, *t);
                    (t.name().to_string(), rows.get(&key).copied().unwrap_or(0))
                })
                .collect();
            (s.kind.as_str().to_string(), tables)
        })
        .collect()
}

/// Builds the report from the ledger; `not_covered` removes what a sink was found not to hold
/// (days whose Parquet files are missing or damaged) from what its ledger says; `rows` gives each
/// sink's row count for a series.
#[allow(clippy::too_many_arguments)]
pub async fn build(
    ledger: &dyn Ledger,
    series: &[(String, MediaType)],
    sinks: &[SinkId],
    not_covered: &BTreeMap<SinkId, Vec<(i64, i64)>>,
    rows: BTreeMap<(String, MediaType, SinkKind, Table), u64>,
    now_ms: i64,
    horizon_ms: i64,
    alert_days: u32,
    tz: Tz,
) -> Result<StatusReport, LedgerError> {
    let mut out = Vec::new();
    for (instance, media) in series {
        let mut by_sink = Vec::new();
        for sink in sinks {
            let mut done = ledger.committed(instance, *media, sink).await?;
            if let Some(gone) = not_covered.get(sink) {
                done = union(done)
                    .into_iter()
                    .flat_map(|(a, b)| subtract(a, b, gone))
                    .collect();
            }
            by_sink.push(done);
        }
        let (covered, recoverable, lost, aging) =
            classify(&by_sink, now_ms, horizon_ms, alert_days);
        out.push(SeriesStatus {
            instance_id: instance.clone(),
            media_type: *media,
            covered: union(covered)
                .into_iter()
                .map(|r| Span::new(r, tz))
                .collect(),
            recoverable_gaps: recoverable.into_iter().map(|r| Span::new(r, tz)).collect(),
            lost_gaps: lost.into_iter().map(|r| Span::new(r, tz)).collect(),
            aging_out: aging.into_iter().map(|r| Span::new(r, tz)).collect(),
            rows_by_table: rows_of(&rows, instance, *media, sinks),
            rows: BTreeMap::new(),
        });
        let last = out.last_mut().expect("just pushed");
        last.rows = last
            .rows_by_table
            .iter()
            .map(|(sink, tables)| (sink.clone(), tables.values().sum()))
            .collect();
    }
    let alert = out.iter().any(|s| !s.aging_out.is_empty());
    Ok(StatusReport {
        timezone: tz.name().to_string(),
        now_ms,
        horizon_ms,
        alert_days,
        last_success: ledger
            .last_success(None)
            .await?
            .map(|t| local_rfc3339(t.timestamp_millis(), tz)),
        series: out,
        alert,
        findings: vec![],
        extra_files: vec![],
        history: vec![],
        workers: vec![],
        expired_leases: 0,
        fields: ledger.fields_seen().await?,
    })
}

impl StatusReport {
    /// A table for people, in the configured zone.
    pub fn render(&self) -> String {
        let tz: Tz = self.timezone.parse().unwrap_or(chrono_tz::UTC);
        let t = |ms: i64| local_short(ms, tz);
        let mut s = format!(
            "times in {}; horizon {} (the API keeps 180 days); last successful run: {}\n",
            self.timezone,
            t(self.horizon_ms),
            self.last_success.as_deref().unwrap_or("never")
        );
        for f in &self.findings {
            s.push_str(&format!("NOT COVERED: {f}\n"));
        }
        for f in &self.extra_files {
            s.push_str(&format!("{f}\n"));
        }
        if !self.history.is_empty() {
            s.push_str(&format!(
                "history: rows of instances the configuration no longer lists, kept as they are: \
                 {}\n",
                self.history.join(", ")
            ));
        }
        self.render_fields(&mut s);
        for w in &self.workers {
            s.push_str(&render_worker(w, &t));
        }
        if self.expired_leases > 0 {
            s.push_str(&format!(
                "{} expired lease(s): their worker stopped heartbeating; the next worker takes them over\n",
                self.expired_leases
            ));
        }
        for x in &self.series {
            s.push_str(&self.render_series(x, &t));
        }
        s
    }

    /// Fields the API started or stopped sending.
    fn render_fields(&self, s: &mut String) {
        if !self.fields.unknown.is_empty() {
            let named: Vec<String> = self
                .fields
                .unknown
                .iter()
                .map(|(n, c)| format!("{n} ({})", crate::pipeline::thousands(*c)))
                .collect();
            s.push_str(&format!(
                "NEW FIELDS from the API since the schema last changed (items' fields kept in `extra`): {}\n",
                named.join(", ")
            ));
        }
        if !self.fields.missing.is_empty() {
            let named: Vec<&str> = self.fields.missing.iter().map(String::as_str).collect();
            s.push_str(&format!(
                "fields the API stopped sending: {}\n",
                named.join(", ")
            ));
        }
    }

    /// One series: its rows per table, then what is covered, missing, lost and ageing out.
    fn render_series(&self, x: &SeriesStatus, t: &dyn Fn(i64) -> String) -> String {
        let rows: Vec<String> = x
            .rows_by_table
            .iter()
            .map(|(sink, tables)| {
                let each: Vec<String> = tables.iter().map(|(t, n)| format!("{t} {n}")).collect();
                format!("{sink} {} rows ({})", x.rows[sink], each.join(", "))
            })
            .collect();
        let mut s = format!("{}/{}: {}\n", x.instance_id, x.media_type, rows.join(", "));
        let mut ranges = |label: &str, list: &[Span]| {
            for g in list {
                s.push_str(&format!(
                    "  {label:<16} {} .. {}\n",
                    t(g.start_ms),
                    t(g.end_ms)
                ));
            }
        };
        ranges("covered", &x.covered);
        ranges("gap (fillable)", &x.recoverable_gaps);
        ranges("gap (LOST)", &x.lost_gaps);
        let first_covered = x.covered.first().map(|c| c.start_ms);
        for g in &x.aging_out {
            // Older than anything fetched: what a first backfill of a shorter range leaves.
            let why = if first_covered.is_some_and(|c| g.end_ms <= c) {
                " (never fetched: it is older than everything fetched so far, as after a first \
                 backfill of a shorter range)"
            } else {
                ""
            };
            s.push_str(&format!(
                "  ALERT: {} .. {} is not covered and ages out of the API within {} days{why}: run `ccc-etl nightly` now\n",
                t(g.start_ms),
                t(g.end_ms),
                self.alert_days
            ));
        }
        s
    }
}

/// One worker's line.
fn render_worker(w: &crate::coord::WorkerRow, t: &dyn Fn(i64) -> String) -> String {
    format!(
        "worker {} {} on {} pid {}: {}, started {}, last heartbeat {}, {} window(s) in flight, {} done, {} commit(s) fenced\n",
        &w.worker_id[..8.min(w.worker_id.len())],
        w.command,
        w.host,
        w.pid,
        match (w.live, w.stopped) {
            (true, _) if w.idle => {
                "STALLED (live, but nothing in flight and no window finished for longer than a \
                 lease: it waits on windows nobody holds; stop it, and the next run queues them \
                 again)"
            }
            (true, _) => "live",
            (false, true) => "finished",
            (false, false) => "GONE (no heartbeat: its leases expire and are taken over)",
        },
        t(w.started_at.timestamp_millis()),
        t(w.heartbeat_at.timestamp_millis()),
        w.windows_in_flight,
        w.windows_done,
        w.fenced
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_the_configured_zone_with_their_offset() {
        let ms = 1_793_462_400_000; // 2026-10-31T16:00:00Z
        assert_eq!(
            local_rfc3339(ms, chrono_tz::Asia::Shanghai),
            "2026-11-01T00:00:00+08:00"
        );
        assert_eq!(
            local_short(ms, chrono_tz::Asia::Shanghai),
            "2026-11-01 00:00"
        );
        assert_eq!(
            local_rfc3339(ms, chrono_tz::UTC),
            "2026-10-31T16:00:00+00:00"
        );
    }

    #[test]
    fn coverage_gaps_losses_and_aging_are_told_apart() {
        let d = DAY_MS;
        let now = 1000 * d;
        let horizon = now - 180 * d;
        // parquet has everything from horizon-10d; postgres misses [horizon+2d, horizon+3d)
        let parquet = vec![(horizon - 10 * d, now)];
        let postgres = vec![
            (horizon - 10 * d, horizon - 5 * d),
            (horizon - 4 * d, horizon + 2 * d),
            (horizon + 3 * d, now),
        ];
        let (covered, recoverable, lost, aging) = classify(&[parquet, postgres], now, horizon, 7);
        assert_eq!(
            covered,
            vec![
                (horizon - 10 * d, horizon - 5 * d),
                (horizon - 4 * d, horizon + 2 * d),
                (horizon + 3 * d, now)
            ]
        );
        assert_eq!(lost, vec![(horizon - 5 * d, horizon - 4 * d)]);
        assert_eq!(recoverable, vec![(horizon + 2 * d, horizon + 3 * d)]);
        assert_eq!(aging, vec![(horizon + 2 * d, horizon + 3 * d)]);
        let (_, _, _, aging) = classify(&[vec![(horizon - d, now)]], now, horizon, 7);
        assert!(aging.is_empty());
        let (covered, recoverable, _, _) =
            classify(&[vec![(horizon, now - 30 * 60_000)]], now, horizon, 7);
        assert_eq!(
            (covered, recoverable),
            (vec![(horizon, now)], vec![]),
            "the bucket in progress at the live edge is not a gap"
        );
        let (covered, recoverable, _, aging) = classify(&[vec![]], now, horizon, 7);
        assert!(covered.is_empty());
        assert_eq!(recoverable, vec![(horizon, now)]);
        assert_eq!(
            aging,
            vec![(horizon, horizon + 7 * d)],
            "never run: the oldest week is aging out"
        );
    }
}
