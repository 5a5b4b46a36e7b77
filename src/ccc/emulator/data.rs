//! Deterministic, call-center-shaped report data for the emulator.
//!
//! Counts are a pure function of (seed, instance, media type, bucket start, bucket length), so
//! any test can compute the value the emulator serves. A bucket younger than the revision window
//! is served scaled down by how far it is through that window, the way late-arriving records fill
//! a real report in: a later fetch sees larger numbers, and a lookback has something to find.
//! Scaling every count by the same factor and flooring keeps every row consistent
//! (handled + abandoned <= total).

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::record::{InboundRow, MediaType, OutboundRow, OverallRow};

/// What the generator needs besides the bucket.
#[derive(Debug, Clone)]
pub struct DataModel {
    /// Seed for every count.
    pub seed: u64,
    /// Bucket length, ms.
    pub bucket_ms: i64,
    /// Buckets younger than this (measured from their end) are still being revised, ms.
    pub revise_ms: i64,
    /// Zone of the daily rhythm.
    pub timezone: Tz,
}

/// One bucket's rows in all three tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRows {
    /// Inbound row.
    pub inbound: InboundRow,
    /// Outbound row.
    pub outbound: OutboundRow,
    /// Overall row.
    pub overall: OverallRow,
}

/// SplitMix64: a tiny, well-known mixing function; enough for reproducible noise.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Uniform in [0, 1) from a key and a salt.
fn unit(key: u64, salt: u64) -> f64 {
    (mix(key ^ mix(salt)) >> 11) as f64 / (1u64 << 53) as f64
}

/// Relative traffic by local hour: quiet nights, a morning and an afternoon peak.
fn hourly_curve(hour: u32) -> f64 {
    const CURVE: [f64; 24] = [
        0.04, 0.03, 0.02, 0.02, 0.02, 0.04, 0.10, 0.30, 0.65, 0.90, 1.00, 0.95, 0.70, 0.80, 0.95,
        1.00, 0.90, 0.75, 0.50, 0.35, 0.25, 0.15, 0.08, 0.05,
    ];
    CURVE[hour as usize % 24]
}

impl DataModel {
    /// The final (fully revised) rows of one bucket.
    pub fn final_rows(&self, instance: &str, media: MediaType, bucket_start: i64) -> BucketRows {
        let key =
            mix(self.seed ^ hash_str(instance)) ^ mix(media as u64 + 1) ^ mix(bucket_start as u64);
        let local = self.timezone.from_utc_datetime(
            &DateTime::<Utc>::from_timestamp_millis(bucket_start)
                .unwrap_or_default()
                .naive_utc(),
        );
        let weekend = local.weekday().number_from_monday() >= 6;
        let size = 30.0 + 170.0 * unit(mix(self.seed ^ hash_str(instance)), 1);
        let media_factor = match media {
            MediaType::Audio => 1.0,
            MediaType::Chat => 0.45,
            MediaType::Video => 0.08,
        };
        let rhythm = hourly_curve(local.hour()) * if weekend { 0.4 } else { 1.0 };
        let scale = self.bucket_ms as f64 / 3_600_000.0;
        let noise = 0.8 + 0.4 * unit(key, 2);
        let total = (size * media_factor * rhythm * scale * noise).round() as i64;

        let ivr = (total as f64 * 0.10 * unit(key, 3)).floor() as i64;
        let queued = total - ivr;
        let in_queue = (queued as f64 * 0.12 * unit(key, 4)).floor() as i64;
        let rang = queued - in_queue;
        let in_ring = (rang as f64 * 0.05 * unit(key, 5)).floor() as i64;
        let handled = rang - in_ring;

        let out_total = (size * 0.4 * media_factor * rhythm * scale * (0.8 + 0.4 * unit(key, 6)))
            .round() as i64;
        let answered = (out_total as f64 * (0.4 + 0.3 * unit(key, 7))).floor() as i64;
        let agents = ((size / 8.0) * (0.2 + 0.8 * rhythm) * media_factor).ceil() as i64;

        BucketRows {
            inbound: InboundRow {
                stats_time: bucket_start,
                total_calls: total,
                calls_handled: handled,
                calls_queued: queued,
                calls_abandoned_in_ivr: ivr,
                calls_abandoned_in_queue: in_queue,
                calls_abandoned_in_ring: in_ring,
            },
            outbound: OutboundRow {
                stats_time: bucket_start,
                total_calls: out_total,
                calls_answered: answered,
            },
            overall: OverallRow {
                stats_time: bucket_start,
                max_logged_in_agents: agents,
            },
        }
    }

    /// How complete a bucket is at `now_ms`, in (0, 1].
    pub fn completeness(&self, bucket_start: i64, now_ms: i64) -> f64 {
        let age = now_ms - (bucket_start + self.bucket_ms);
        if self.revise_ms <= 0 || age >= self.revise_ms {
            1.0
        } else {
            // Half of the final figures are known when the bucket closes; the rest trickles in.
            let progress = (age.max(-self.bucket_ms) + self.bucket_ms) as f64
                / (self.revise_ms + self.bucket_ms) as f64;
            (0.5 + 0.5 * progress).clamp(0.5, 1.0)
        }
    }

    /// The rows of one bucket as served at `now_ms`.
    pub fn rows_at(
        &self,
        instance: &str,
        media: MediaType,
        bucket_start: i64,
        now_ms: i64,
    ) -> BucketRows {
        let f = self.completeness(bucket_start, now_ms);
        let mut r = self.final_rows(instance, media, bucket_start);
        if f < 1.0 {
            let s = |v: i64| (v as f64 * f).floor() as i64;
            let i = &mut r.inbound;
            (i.total_calls, i.calls_handled, i.calls_queued) =
                (s(i.total_calls), s(i.calls_handled), s(i.calls_queued));
            (
                i.calls_abandoned_in_ivr,
                i.calls_abandoned_in_queue,
                i.calls_abandoned_in_ring,
            ) = (
                s(i.calls_abandoned_in_ivr),
                s(i.calls_abandoned_in_queue),
                s(i.calls_abandoned_in_ring),
            );
            r.outbound.total_calls = s(r.outbound.total_calls);
            r.outbound.calls_answered = s(r.outbound.calls_answered);
        }
        r
    }

    /// The bucket starts a request for `[start, end)` returns at `now_ms`: from the bucket that
    /// contains `start` (floored) or the first bucket starting at or after it, up to but not
    /// including `end`, and never a bucket that starts after `now_ms`.
    pub fn bucket_starts(&self, start: i64, end: i64, now_ms: i64, floor_start: bool) -> Vec<i64> {
        let b = self.bucket_ms;
        let first = if floor_start {
            start.div_euclid(b) * b
        } else {
            (start + b - 1).div_euclid(b) * b
        };
        let mut out = Vec::new();
        let mut t = first;
        while t < end && t <= now_ms {
            out.push(t);
            t += b;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> DataModel {
        DataModel {
            seed: 42,
            bucket_ms: 3_600_000,
            revise_ms: 6 * 3_600_000,
            timezone: chrono_tz::Asia::Shanghai,
        }
    }

    #[test]
    fn counts_are_deterministic_and_always_consistent() {
        let m = model();
        let t0 = 1_764_547_200_000; // 2025-12-01T00:00Z
        for h in 0..24 * 14 {
            let t = t0 + h * 3_600_000;
            let a = m.final_rows("ccc-a", MediaType::Audio, t);
            assert_eq!(a, m.final_rows("ccc-a", MediaType::Audio, t));
            let i = a.inbound;
            assert!(i.total_calls >= 0 && i.calls_handled >= 0);
            assert_eq!(
                i.calls_handled
                    + i.calls_abandoned_in_ivr
                    + i.calls_abandoned_in_queue
                    + i.calls_abandoned_in_ring,
                i.total_calls
            );
            assert!(i.calls_queued <= i.total_calls && i.calls_handled <= i.calls_queued);
            assert!(a.outbound.calls_answered <= a.outbound.total_calls);
            for f in [0.5, 0.73, 0.99] {
                let s = |v: i64| (v as f64 * f).floor() as i64;
                assert!(
                    s(i.calls_handled)
                        + s(i.calls_abandoned_in_ivr)
                        + s(i.calls_abandoned_in_queue)
                        + s(i.calls_abandoned_in_ring)
                        <= s(i.total_calls)
                );
            }
        }
    }

    #[test]
    fn nights_are_quieter_than_days() {
        let m = model();
        // 2025-12-02 is a Tuesday; 03:00 and 10:00 in Shanghai are 19:00 and 02:00 UTC.
        let night: i64 = (0..20)
            .map(|d| {
                m.final_rows(
                    "x",
                    MediaType::Audio,
                    1_764_615_600_000 + d * 86_400_000 * 7,
                )
                .inbound
                .total_calls
            })
            .sum();
        let day: i64 = (0..20)
            .map(|d| {
                m.final_rows(
                    "x",
                    MediaType::Audio,
                    1_764_640_800_000 + d * 86_400_000 * 7,
                )
                .inbound
                .total_calls
            })
            .sum();
        assert!(day > night * 5, "day {day} night {night}");
    }

    #[test]
    fn recent_buckets_grow_until_the_revision_window_has_passed() {
        let m = model();
        let b = 1_764_547_200_000;
        let early = m.rows_at("x", MediaType::Audio, b, b + 3_600_000);
        let later = m.rows_at("x", MediaType::Audio, b, b + 4 * 3_600_000);
        let done = m.rows_at("x", MediaType::Audio, b, b + 8 * 3_600_000);
        assert!(early.inbound.total_calls <= later.inbound.total_calls);
        assert!(later.inbound.total_calls <= done.inbound.total_calls);
        assert_eq!(done, m.final_rows("x", MediaType::Audio, b));
    }

    #[test]
    fn bucket_selection_floors_the_start_and_stops_before_end_and_now() {
        let m = model();
        let h = 3_600_000;
        assert_eq!(m.bucket_starts(h + 1, 3 * h, 10 * h, true), vec![h, 2 * h]);
        assert_eq!(m.bucket_starts(h + 1, 3 * h, 10 * h, false), vec![2 * h]);
        assert_eq!(
            m.bucket_starts(0, 10 * h, 2 * h + 5, true),
            vec![0, h, 2 * h]
        );
    }
}
