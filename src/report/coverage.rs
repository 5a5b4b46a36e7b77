//! Each instance x day of the report as one state, from the status report's ranges. Pure.

use chrono::NaiveDate;
use chrono_tz::Tz;

use crate::record::MediaType;
use crate::status::{Span, StatusReport};

/// What a day of one series is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DayState {
    /// Never fetched, and not to be: before the first fetch and behind the horizon, or after now.
    Outside,
    /// Committed to every sink.
    Covered,
    /// Not (wholly) covered and still inside the horizon: the next nightly run fetches it.
    Missing,
    /// Not covered and behind the horizon: the API no longer serves it.
    Lost,
    /// Not covered, and a worker holds a lease on a window touching it.
    InProgress,
}

impl DayState {
    /// The word the page uses.
    pub fn label(self) -> &'static str {
        match self {
            DayState::Outside => "not fetched",
            DayState::Covered => "covered",
            DayState::Missing => "missing",
            DayState::Lost => "lost",
            DayState::InProgress => "in progress",
        }
    }
}

/// One row of the coverage heat map.
#[derive(Debug, Clone)]
pub struct SeriesDays {
    /// `instance/media`.
    pub label: String,
    /// One per day of the report.
    pub states: Vec<DayState>,
}

/// A window a worker holds: instance, media type, start and end (epoch ms).
pub type Held = (String, MediaType, i64, i64);

/// The epoch-ms range of a local day.
pub fn day_range(tz: Tz, day: NaiveDate) -> (i64, i64) {
    let next = day.succ_opt().unwrap_or(day);
    (
        crate::plan::local_day_start(tz, day),
        crate::plan::local_day_start(tz, next),
    )
}

fn overlaps(spans: &[Span], (a, b): (i64, i64)) -> bool {
    spans.iter().any(|s| s.start_ms < b && a < s.end_ms)
}

/// The state of every series on every one of `days` (local days in `tz`).
pub fn day_states(
    status: &StatusReport,
    days: &[NaiveDate],
    tz: Tz,
    held: &[Held],
) -> Vec<SeriesDays> {
    status
        .series
        .iter()
        .map(|s| {
            let mine: Vec<(i64, i64)> = held
                .iter()
                .filter(|h| h.0 == s.instance_id && h.1 == s.media_type)
                .map(|h| (h.2, h.3))
                .collect();
            let states = days
                .iter()
                .map(|d| {
                    let range = day_range(tz, *d);
                    let uncovered =
                        overlaps(&s.lost_gaps, range) || overlaps(&s.recoverable_gaps, range);
                    if uncovered && mine.iter().any(|&(a, b)| a < range.1 && range.0 < b) {
                        DayState::InProgress
                    } else if overlaps(&s.lost_gaps, range) {
                        DayState::Lost
                    } else if overlaps(&s.recoverable_gaps, range) {
                        DayState::Missing
                    } else if overlaps(&s.covered, range) {
                        DayState::Covered
                    } else {
                        DayState::Outside
                    }
                })
                .collect();
            SeriesDays {
                label: format!("{}/{}", s.instance_id, s.media_type),
                states,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::SeriesStatus;

    fn span(tz: Tz, from: &str, to: &str) -> Span {
        let day = |s: &str| day_range(tz, s.parse().unwrap());
        Span::new((day(from).0, day(to).0), tz)
    }

    #[test]
    fn each_day_takes_the_state_of_what_overlaps_it() {
        let tz = chrono_tz::Asia::Shanghai;
        let series = SeriesStatus {
            instance_id: "ccc-a".into(),
            media_type: MediaType::Audio,
            covered: vec![span(tz, "2026-11-03", "2026-11-06")],
            recoverable_gaps: vec![span(tz, "2026-11-06", "2026-11-08")],
            lost_gaps: vec![span(tz, "2026-11-02", "2026-11-03")],
            aging_out: vec![],
            rows: Default::default(),
            rows_by_table: Default::default(),
        };
        let status = StatusReport {
            timezone: tz.name().into(),
            now_ms: 0,
            horizon_ms: 0,
            alert_days: 7,
            last_success: None,
            series: vec![series],
            alert: false,
            findings: vec![],
            extra_files: vec![],
            history: vec![],
            workers: vec![],
            expired_leases: 0,
            fields: Default::default(),
        };
        let days: Vec<NaiveDate> = (1..=8)
            .map(|d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap())
            .collect();
        let held = [(
            "ccc-a".to_string(),
            MediaType::Audio,
            day_range(tz, days[6]).0,
            day_range(tz, days[6]).1,
        )];
        let got = &day_states(&status, &days, tz, &held)[0];
        use DayState::*;
        assert_eq!(
            got.states,
            [
                Outside, Lost, Covered, Covered, Covered, Missing, InProgress, Outside
            ]
        );
        assert_eq!(got.label, "ccc-a/Audio");
    }
}
