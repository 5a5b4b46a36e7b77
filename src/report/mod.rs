//! `ccc-etl report`: one self-contained HTML file for operators and managers. What it shows is
//! gathered by `commands::report` (the status report, the ledger's runs, the KPIs from a sink);
//! this module turns it into the page (pure): [`coverage`] classifies each instance x day,
//! [`charts`] draws the charts as inline SVG (plotters), [`page`] lays out the HTML (maud).

pub mod charts;
pub mod coverage;
pub mod page;

use std::collections::BTreeMap;

use chrono::NaiveDate;

use crate::ledger::RunRecord;
use crate::record::Drift;
pub use coverage::{DayState, SeriesDays, day_states};

/// Totals over every instance and media type of one local day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayTotals {
    /// Inbound calls.
    pub inbound: i64,
    /// Inbound calls an agent answered.
    pub handled: i64,
    /// Inbound calls that entered a queue.
    pub queued: i64,
    /// Hung up in the IVR.
    pub abandoned_ivr: i64,
    /// Hung up while queued.
    pub abandoned_queue: i64,
    /// Hung up while ringing.
    pub abandoned_ring: i64,
    /// Outbound calls.
    pub outbound: i64,
    /// Outbound calls answered.
    pub answered: i64,
    /// The sum over series of each series' peak logged-in agents that day.
    pub peak_agents: i64,
}

impl DayTotals {
    /// Adds another series' (or bucket's) figures; peaks add up across series.
    pub fn add(&mut self, o: &DayTotals) {
        self.inbound += o.inbound;
        self.handled += o.handled;
        self.queued += o.queued;
        self.abandoned_ivr += o.abandoned_ivr;
        self.abandoned_queue += o.abandoned_queue;
        self.abandoned_ring += o.abandoned_ring;
        self.outbound += o.outbound;
        self.answered += o.answered;
        self.peak_agents += o.peak_agents;
    }

    /// Adds another day of the same series: counts add up, the peak is the larger one.
    pub fn add_day(&mut self, o: &DayTotals) {
        let peak = self.peak_agents.max(o.peak_agents);
        self.add(o);
        self.peak_agents = peak;
    }

    /// handled / inbound.
    pub fn answer_rate(&self) -> Option<f64> {
        ratio(self.handled, self.inbound)
    }

    /// Every abandoned inbound call (IVR, queue, ring) / inbound.
    pub fn abandon_rate(&self) -> Option<f64> {
        ratio(
            self.abandoned_ivr + self.abandoned_queue + self.abandoned_ring,
            self.inbound,
        )
    }

    /// answered / outbound.
    pub fn connect_rate(&self) -> Option<f64> {
        ratio(self.answered, self.outbound)
    }
}

fn ratio(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// One instance and media type over the days shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesTotals {
    /// The instance.
    pub instance_id: String,
    /// The media type, as the API names it.
    pub media_type: String,
    /// Its counts summed over the days; `peak_agents` is its highest daily peak.
    pub totals: DayTotals,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct ReportInput {
    /// When it was made, local, for the heading.
    pub generated: String,
    /// The report zone (the configuration's `timezone`).
    pub tz: chrono_tz::Tz,
    /// The local days shown, oldest first.
    pub days: Vec<NaiveDate>,
    /// The local day in progress (today): its figures so far are in the table, and left out of
    /// the line charts, where they would read as a drop.
    pub today: NaiveDate,
    /// The oldest local day the API still serves (its 180-day horizon).
    pub horizon_day: NaiveDate,
    /// Coverage per instance and media type, one state per day of `days`.
    pub coverage: Vec<SeriesDays>,
    /// Daily totals (days with rows only).
    pub daily: BTreeMap<NaiveDate, DayTotals>,
    /// Per instance and media type, over the days shown (series with rows only), by instance.
    pub per_series: Vec<SeriesTotals>,
    /// Inbound calls by ISO day of week (0 = Monday) and local hour.
    pub hour_of_week: [[i64; 24]; 7],
    /// Where the figures come from (`PostgreSQL view daily_traffic`, `the Parquet root …`).
    pub kpi_source: String,
    /// The latest runs, newest first.
    pub runs: Vec<RunRecord>,
    /// What a sink was found not to hold although the ledger says so, and stray files.
    pub findings: Vec<String>,
    /// Fields met since the schema last changed.
    pub drift: Drift,
    /// Whether `status` raises the aging-out alert, and its period in days.
    pub alert: Option<u32>,
}
