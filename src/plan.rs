//! Date range -> compliant windows. Pure: no I/O, no clock; `now` is a parameter.
//!
//! A window is half-open `[start, end)`, at most 7 days (604,800,000 ms, as the API measures),
//! starts no earlier than the 180-day horizon, and ends no later than `now`. Windows of a range
//! are contiguous, as few as the range needs, and cut at local midnight wherever that does not
//! cost an extra window.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::HORIZON_DAYS;
use crate::error::InputError;
use crate::record::{MediaType, WindowKey};

/// Longest window the API accepts, ms.
pub const MAX_WINDOW_MS: i64 = 7 * DAY_MS;
/// One day, ms.
pub const DAY_MS: i64 = 86_400_000;
/// Margin used when a window is checked against the horizon just before sending, ms.
pub const SEND_MARGIN_MS: i64 = 5 * 60_000;

/// The oldest instant the API serves at `now`, plus a margin.
pub fn horizon_ms(now_ms: i64, margin_ms: i64) -> i64 {
    now_ms - HORIZON_DAYS * DAY_MS + margin_ms
}

/// Start of the local calendar day `date` in `tz`, in epoch ms. Where midnight does not exist
/// (a daylight-saving jump at 00:00), the first instant of the day that does.
pub fn local_day_start(tz: Tz, date: NaiveDate) -> i64 {
    let mut t = date.and_time(NaiveTime::MIN);
    for _ in 0..4 {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.timestamp_millis();
        }
        t += chrono::Duration::minutes(30);
    }
    // No zone skips two hours at midnight; fall back to UTC midnight rather than panic.
    date.and_time(NaiveTime::MIN).and_utc().timestamp_millis()
}

/// The local calendar day in `tz` of the instant `ms`.
pub fn local_date(tz: Tz, ms: i64) -> NaiveDate {
    utc(ms).with_timezone(&tz).date_naive()
}

/// The local midnight at or before `ms`.
pub fn local_midnight_at_or_before(tz: Tz, ms: i64) -> i64 {
    let date = local_date(tz, ms);
    let m = local_day_start(tz, date);
    if m <= ms {
        m
    } else {
        local_day_start(tz, date.pred_opt().unwrap_or(date))
    }
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

/// Splits `[start, end)` into the fewest contiguous windows of at most 7 days, cutting at local
/// midnight wherever the minimal count allows.
pub fn split_range(start_ms: i64, end_ms: i64, tz: Tz) -> Vec<(i64, i64)> {
    if end_ms <= start_ms {
        return vec![];
    }
    let needed = (end_ms - start_ms + MAX_WINDOW_MS - 1) / MAX_WINDOW_MS;
    let mut out = Vec::with_capacity(needed as usize);
    let mut b = start_ms;
    for i in 0..needed {
        if end_ms - b <= MAX_WINDOW_MS {
            out.push((b, end_ms));
            break;
        }
        let limit = b + MAX_WINDOW_MS;
        let remaining = needed - i - 1;
        let midnight = local_midnight_at_or_before(tz, limit);
        // Cut at the midnight only if the rest still fits in the windows left.
        let cut = if midnight > b && end_ms - midnight <= remaining * MAX_WINDOW_MS {
            midnight
        } else {
            limit
        };
        out.push((b, cut));
        b = cut;
    }
    out
}

/// What to plan.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// Instances, in configured order.
    pub instances: Vec<String>,
    /// Media types.
    pub media_types: Vec<MediaType>,
    /// Range start, epoch ms, inclusive.
    pub from_ms: i64,
    /// Range end, epoch ms, exclusive.
    pub to_ms: i64,
    /// The present.
    pub now_ms: i64,
    /// Zone for midnight alignment.
    pub timezone: Tz,
    /// Margin added to the horizon, ms.
    pub horizon_margin_ms: i64,
}

/// The windows to fetch and the ranges that cannot be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Windows in fetch order: oldest first, then by instance and media type.
    pub windows: Vec<WindowKey>,
    /// Ranges behind the horizon, per instance and media type.
    pub lost: Vec<WindowKey>,
    /// The part of the range after `now`, dropped, if any.
    pub future_trimmed: Option<(i64, i64)>,
    /// The horizon used, epoch ms.
    pub horizon_ms: i64,
}

/// The fetchable part of `[from, to)` at `now`, and the part lost behind the horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamped {
    /// Fetchable range, possibly empty (start >= end).
    pub fetch: (i64, i64),
    /// Lost range, if any.
    pub lost: Option<(i64, i64)>,
    /// Future range, if any.
    pub future: Option<(i64, i64)>,
}

/// Clamps a range to `[horizon, now)`.
pub fn clamp_range(from_ms: i64, to_ms: i64, now_ms: i64, horizon: i64) -> Clamped {
    let end = to_ms.min(now_ms);
    let future = (to_ms > now_ms).then_some((from_ms.max(now_ms), to_ms));
    let start = from_ms.max(horizon);
    let lost = (from_ms < horizon)
        .then_some((from_ms, end.min(horizon)))
        .filter(|(a, b)| a < b);
    Clamped {
        fetch: (start, end.max(start)),
        lost,
        future: future.filter(|(a, b)| a < b),
    }
}

/// Plans windows for every instance and media type over the same range.
pub fn plan(req: &PlanRequest) -> Plan {
    let horizon = horizon_ms(req.now_ms, req.horizon_margin_ms);
    let c = clamp_range(req.from_ms, req.to_ms, req.now_ms, horizon);
    let spans = split_range(c.fetch.0, c.fetch.1, req.timezone);
    let mut windows = Vec::with_capacity(spans.len() * req.instances.len() * req.media_types.len());
    let mut lost = Vec::new();
    for (s, e) in &spans {
        for inst in &req.instances {
            for m in &req.media_types {
                windows.push(key(inst, *m, *s, *e));
            }
        }
    }
    if let Some((s, e)) = c.lost {
        for inst in &req.instances {
            for m in &req.media_types {
                lost.push(key(inst, *m, s, e));
            }
        }
    }
    Plan {
        windows,
        lost,
        future_trimmed: c.future,
        horizon_ms: horizon,
    }
}

fn key(instance: &str, media_type: MediaType, start_ms: i64, end_ms: i64) -> WindowKey {
    WindowKey {
        instance_id: instance.to_string(),
        media_type,
        start_ms,
        end_ms,
    }
}

/// Sorts windows into fetch order: oldest first (they age out next), then instance, media type.
pub fn fetch_order(windows: &mut [WindowKey]) {
    windows.sort_by(|a, b| {
        (a.start_ms, &a.instance_id, a.media_type, a.end_ms).cmp(&(
            b.start_ms,
            &b.instance_id,
            b.media_type,
            b.end_ms,
        ))
    });
}

/// Which end of a range a time argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `--from`: a date means the start of that day.
    From,
    /// `--to`: a date means the end of that day (inclusive), i.e. the next midnight.
    To,
}

/// Parses `YYYY-MM-DD` (a calendar day in `tz`), an RFC 3339 timestamp, or epoch milliseconds.
pub fn parse_time_arg(s: &str, tz: Tz, bound: Bound) -> Result<i64, InputError> {
    let flag = match bound {
        Bound::From => "--from",
        Bound::To => "--to",
    };
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .ok()
            .filter(|ms| DateTime::<Utc>::from_timestamp_millis(*ms).is_some())
            .ok_or_else(|| {
                InputError::new(format!("{flag} {s:?}: epoch milliseconds out of range"))
            });
    }
    if s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-' {
        let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| {
            InputError::new(format!("{flag} {s:?}: not a real calendar date ({e})"))
        })?;
        return Ok(match bound {
            Bound::From => local_day_start(tz, date),
            Bound::To => local_day_start(tz, date.checked_add_days(Days::new(1)).unwrap_or(date)),
        });
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            InputError::new(format!(
                "{flag} {s:?}: expected a date YYYY-MM-DD, an RFC 3339 timestamp \
                 (2026-05-01T08:00:00+08:00) or epoch milliseconds"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SH: Tz = chrono_tz::Asia::Shanghai;
    const NY: Tz = chrono_tz::America::New_York;
    const H: i64 = 3_600_000;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn check_cover(start: i64, end: i64, w: &[(i64, i64)]) {
        if start >= end {
            assert!(w.is_empty());
            return;
        }
        assert_eq!(w.first().unwrap().0, start);
        assert_eq!(w.last().unwrap().1, end);
        for pair in w.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "contiguous: {w:?}");
        }
        for (a, b) in w {
            assert!(a < b && b - a <= MAX_WINDOW_MS, "{a}..{b}");
        }
        let needed = (end - start + MAX_WINDOW_MS - 1) / MAX_WINDOW_MS;
        assert_eq!(w.len() as i64, needed, "minimal");
    }

    #[test]
    fn a_range_starting_at_midnight_is_cut_at_midnights() {
        let start = ms("2026-01-01T00:00:00+08:00");
        let w = split_range(start, start + 20 * DAY_MS, SH);
        assert_eq!(
            w,
            vec![
                (start, start + 7 * DAY_MS),
                (start + 7 * DAY_MS, start + 14 * DAY_MS),
                (start + 14 * DAY_MS, start + 20 * DAY_MS)
            ]
        );
    }

    #[test]
    fn an_unaligned_start_is_realigned_when_slack_allows() {
        let start = ms("2026-01-01T13:00:00+08:00");
        let w = split_range(start, start + 10 * DAY_MS, SH);
        assert_eq!(w[0], (start, ms("2026-01-08T00:00:00+08:00")));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn parses_dates_timestamps_and_epoch_ms() {
        assert_eq!(
            parse_time_arg("2026-03-01", SH, Bound::From).unwrap(),
            ms("2026-03-01T00:00:00+08:00")
        );
        assert_eq!(
            parse_time_arg("2026-03-01", SH, Bound::To).unwrap(),
            ms("2026-03-02T00:00:00+08:00")
        );
        assert_eq!(
            parse_time_arg("2026-03-01T08:00:00Z", SH, Bound::From).unwrap(),
            ms("2026-03-01T08:00:00Z")
        );
        assert_eq!(
            parse_time_arg("1764547200000", SH, Bound::To).unwrap(),
            1_764_547_200_000
        );
        let e = parse_time_arg("2026-02-30", SH, Bound::From).unwrap_err();
        assert!(e.0.contains("not a real calendar date"), "{e}");
        let e = parse_time_arg("yesterday", SH, Bound::To).unwrap_err();
        assert!(e.0.starts_with("--to \"yesterday\""), "{e}");
        // New York springs forward at 02:00, so midnight exists; the day is 23 hours long.
        let a = parse_time_arg("2026-03-08", NY, Bound::From).unwrap();
        let b = parse_time_arg("2026-03-08", NY, Bound::To).unwrap();
        assert_eq!(b - a, 23 * H);
    }

    #[test]
    fn clamping_reports_lost_and_future_parts() {
        let now = 1000 * DAY_MS;
        let hz = horizon_ms(now, H);
        let c = clamp_range(now - 400 * DAY_MS, now + DAY_MS, now, hz);
        assert_eq!(c.fetch, (hz, now));
        assert_eq!(c.lost, Some((now - 400 * DAY_MS, hz)));
        assert_eq!(c.future, Some((now, now + DAY_MS)));
        let c = clamp_range(now - 500 * DAY_MS, now - 300 * DAY_MS, now, hz);
        assert_eq!(c.fetch.0, c.fetch.1.max(c.fetch.0));
        assert!(c.fetch.0 >= c.fetch.1, "nothing fetchable");
        assert_eq!(c.lost, Some((now - 500 * DAY_MS, now - 300 * DAY_MS)));
    }

    fn zone() -> impl Strategy<Value = Tz> {
        prop_oneof![
            Just(SH),
            Just(NY),
            Just(chrono_tz::UTC),
            Just(chrono_tz::Europe::London),
            Just(chrono_tz::Australia::Lord_Howe)
        ]
    }

    proptest! {
        #[test]
        fn windows_cover_exactly_the_fetchable_range_minimally(
            now in 1_700_000_000_000i64..1_900_000_000_000,
            from_back in 0i64..(500 * DAY_MS),
            len in 1i64..(500 * DAY_MS),
            margin in 0i64..(3 * H),
            tz in zone(),
        ) {
            let from = now - from_back;
            let to = from + len;
            let p = plan(&PlanRequest {
                instances: vec!["a".into()],
                media_types: vec![MediaType::Audio],
                from_ms: from, to_ms: to, now_ms: now, timezone: tz, horizon_margin_ms: margin,
            });
            let hz = horizon_ms(now, margin);
            let (fs, fe) = (from.max(hz), to.min(now));
            let spans: Vec<(i64, i64)> = p.windows.iter().map(|w| (w.start_ms, w.end_ms)).collect();
            check_cover(fs, fe, &spans);
            for w in &p.windows {
                prop_assert!(w.start_ms >= hz && w.end_ms <= now);
            }
            let lost: i64 = p.lost.iter().map(|l| l.end_ms - l.start_ms).sum();
            let covered: i64 = spans.iter().map(|(a, b)| b - a).sum();
            let future = p.future_trimmed.map_or(0, |(a, b)| b - a);
            prop_assert_eq!(lost + covered + future, to - from, "lost + fetched + future = range");
        }

        #[test]
        fn cuts_inside_a_range_fall_on_local_midnight_when_the_range_starts_at_one(
            day in 0u64..3000, days in 1i64..120, tz in zone(),
        ) {
            let date = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap().checked_add_days(Days::new(day)).unwrap();
            let start = local_day_start(tz, date);
            let end = local_day_start(tz, date.checked_add_days(Days::new(days as u64)).unwrap());
            let w = split_range(start, end, tz);
            check_cover(start, end, &w);
            let aligned = w.iter().filter(|(a, _)| local_midnight_at_or_before(tz, *a) == *a).count();
            // Only a DST week longer than 168 h can force an unaligned cut, and then only when
            // the minimal count leaves no slack.
            prop_assert!(aligned + 2 >= w.len(), "{w:?}");
        }
    }
}
