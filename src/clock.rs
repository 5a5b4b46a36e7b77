//! The pipeline's one clock for data time: what "now" is when a run plans its windows, for the
//! 180-day horizon, `nightly`'s range, `status`'s coverage, the report's days and the emulator's
//! data.
//!
//! It is the system clock unless pinned: `CCC_ETL_NOW=2026-12-04T04:00:00Z` makes a process start
//! at that instant and run on from it in real time (to reproduce a past night, and so tests mean
//! the same on every day). `main` pins it once, before anything reads it, and hands the one clock
//! to `commands::run`, which passes it down to every command (a codebase test fails on a read
//! anywhere else; the emulator, which stands in for the API's own clock, aside); a test harness
//! pins its own process the same way. When things happen (a run's start and end, a commit, `fetched_at`),
//! signatures, credential expiry and log timestamps stay on the wall clock, as PostgreSQL's
//! `now()` does: they are compared with each other, never with data time.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

/// The environment variable that pins the clock.
pub const ENV: &str = "CCC_ETL_NOW";

/// A clock: the system clock plus an offset set at most once.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: OnceLock<i64>,
}

impl Clock {
    /// Makes this clock read `at` now and run on from there. Only the first pin counts (the
    /// clock never jumps); returns whether this one did.
    pub fn pin(&self, at: DateTime<Utc>) -> bool {
        self.pin_offset_ms((at - Utc::now()).num_milliseconds())
    }

    /// Pins this clock `offset_ms` ahead of the system clock (negative: behind). Only the first
    /// pin counts; returns whether this one did.
    pub fn pin_offset_ms(&self, offset_ms: i64) -> bool {
        self.offset_ms.set(offset_ms).is_ok()
    }

    /// Whether this clock is pinned.
    pub fn is_pinned(&self) -> bool {
        self.offset_ms.get().is_some()
    }

    /// Now, on this clock.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(*self.offset_ms.get().unwrap_or(&0))
    }
}

/// `CCC_ETL_NOW` is set but not an RFC 3339 instant.
#[derive(Debug, thiserror::Error)]
#[error("{ENV}={value:?} is not an RFC 3339 instant (for example 2026-12-04T04:00:00Z): {reason}")]
pub struct BadPin {
    value: String,
    reason: chrono::ParseError,
}

/// The instant a `CCC_ETL_NOW` value names (blank: none).
pub fn parse_pin(value: &str) -> Result<Option<DateTime<Utc>>, BadPin> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|reason| BadPin {
            value: value.to_string(),
            reason,
        })
}

/// The instant `CCC_ETL_NOW` names, if it is set.
pub fn pinned_by_env() -> Result<Option<DateTime<Utc>>, BadPin> {
    parse_pin(&std::env::var(ENV).unwrap_or_default())
}

/// The process's clock.
static CLOCK: Clock = Clock {
    offset_ms: OnceLock::new(),
};

/// Pins the process's clock at `at` (see [`Clock::pin`]).
pub fn pin(at: DateTime<Utc>) -> bool {
    CLOCK.pin(at)
}

/// Pins the process's clock by an offset (see [`Clock::pin_offset_ms`]).
pub fn pin_offset_ms(offset_ms: i64) -> bool {
    CLOCK.pin_offset_ms(offset_ms)
}

/// Now, on the process's clock.
pub fn now() -> DateTime<Utc> {
    CLOCK.now()
}

/// Now, on the process's clock, in epoch ms.
pub fn now_ms() -> i64 {
    now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_moves_the_clock_once_and_it_runs_on() {
        let clock = Clock::default();
        assert!(!clock.is_pinned());
        let at: DateTime<Utc> = "2026-12-04T04:00:00Z".parse().unwrap();
        assert!(clock.pin(at));
        let first = clock.now();
        assert!(
            (first - at).num_milliseconds().abs() < 1_000,
            "{first} vs {at}"
        );
        // A second pin is refused: the clock never jumps.
        assert!(!clock.pin("2020-01-01T00:00:00Z".parse().unwrap()));
        assert!(clock.now() >= first);
        assert!(clock.is_pinned());
    }

    #[test]
    fn a_pin_is_an_rfc3339_instant_or_blank() {
        assert_eq!(
            parse_pin("2026-12-04T12:00:00+08:00").unwrap(),
            Some("2026-12-04T04:00:00Z".parse().unwrap())
        );
        assert_eq!(parse_pin(" ").unwrap(), None);
        let e = parse_pin("2026-12-04").unwrap_err().to_string();
        assert!(e.contains("CCC_ETL_NOW") && e.contains("RFC 3339"), "{e}");
    }
}
