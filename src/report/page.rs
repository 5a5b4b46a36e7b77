//! The report as one HTML page: inline CSS and SVG, no script, nothing fetched at view time.

use chrono_tz::Tz;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::charts::{self, Fit, Line};
use super::coverage::DayState;
use super::{DayTotals, ReportInput, SeriesTotals};
use crate::ledger::RunRecord;

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:12px;color:#212121}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
.meta{color:#616161;font-size:.9em}.alert{background:#ffebee;border-left:4px solid #c62828;padding:8px 12px;margin:10px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{flex:1 1 150px;border:1px solid #e0e0e0;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:1.4em}.card span{color:#616161;font-size:.85em}
figure{margin:0}figure svg{width:100%;height:auto;display:block}figure svg.narrow{display:none}
@media (max-width:600px){figure svg.wide{display:none}figure svg.narrow{display:block}body{padding:8px}
.wide-only{display:none}th,td{padding:4px 4px}th{white-space:normal}}
.scale{display:inline-block;width:120px;height:10px;vertical-align:middle;margin:0 6px;background:linear-gradient(to right,#f7fbff,#08306b)}
.legend span{display:inline-block;margin-right:14px;font-size:.9em}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9em;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}th:first-child,td:first-child{text-align:left}
.ok{color:#2e7d32}.partial{color:#ef6c00}.failed{color:#c62828}.running{color:#1565c0}
";

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// A chart drawn twice, for a desk and for a phone; the page shows the one that fits.
fn figure_fits(id: &str, draw: impl Fn(Fit) -> Result<String, String>) -> Markup {
    let drawn = |fit: Fit, class: &str| {
        draw(fit).map(|svg| svg.replacen("<svg ", &format!("<svg class=\"{class}\" "), 1))
    };
    html! {
        figure id=(id) {
            @match (drawn(Fit::Wide, "wide"), drawn(Fit::Narrow, "narrow")) {
                (Ok(wide), Ok(narrow)) => { (PreEscaped(wide)) (PreEscaped(narrow)) }
                (Err(e), _) | (_, Err(e)) => { p { (e) } }
            }
        }
    }
}

/// The legend of a line chart.
fn legend(id: &str, lines: &[Line<'_>]) -> Markup {
    html! {
        p.legend id=(id) {
            @for l in lines {
                span { i style={ "background:" (charts::hex(l.colour)) } {} (l.name) }
            }
        }
    }
}

fn figure(id: &str, svg: Result<String, String>) -> Markup {
    html! {
        figure id=(id) {
            @match svg {
                Ok(svg) => (PreEscaped(svg)),
                Err(e) => p { (e) },
            }
        }
    }
}

/// The whole page.
pub fn render(input: &ReportInput) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "ccc-etl report" }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "Contact center traffic and data coverage" }
                p.meta {
                    "Generated " (input.generated) " · days and hours in " (input.tz.name())
                    " · figures from " (input.kpi_source)
                }
                @if let Some(days) = input.alert {
                    p.alert id="aging-alert" {
                        "Aging-out alert: time not yet fetched leaves the API's 180-day horizon within "
                        (days) " days. Run the nightly job (or a backfill) before then."
                    }
                }
                (summary(input))
                (coverage(input))
                (daily_charts(input))
                (weekly_chart(input))
                (per_series(input))
                h2 { "Inbound calls by hour of the week" }
                (hour_of_week_scale(&input.hour_of_week))
                (figure_fits("chart-hour-of-week", |fit| charts::hour_of_week(&input.hour_of_week, fit)))
                (runs(&input.runs, input.tz))
                (findings(input))
                (daily_table(input))
            }
        }
    }
    .into_string()
}

fn totals(input: &ReportInput) -> DayTotals {
    let mut t = DayTotals::default();
    for d in input.daily.values() {
        t.add(d);
    }
    t.peak_agents = input
        .daily
        .values()
        .map(|d| d.peak_agents)
        .max()
        .unwrap_or(0);
    t
}

fn summary(input: &ReportInput) -> Markup {
    let t = totals(input);
    let cards = [
        ("inbound", charts::thousands(t.inbound), "inbound calls"),
        ("answer-rate", pct(t.answer_rate()), "answered (inbound)"),
        (
            "abandon-rate",
            pct(t.abandon_rate()),
            "abandoned (IVR, queue, ring)",
        ),
        ("outbound", charts::thousands(t.outbound), "outbound calls"),
        ("connect-rate", pct(t.connect_rate()), "outbound connected"),
        (
            "peak-agents",
            charts::thousands(t.peak_agents),
            "peak logged-in agents (a day)",
        ),
    ];
    html! {
        h2 { "The period: " (input.days.first().map(|d| d.to_string()).unwrap_or_default())
             " to " (input.days.last().map(|d| d.to_string()).unwrap_or_default()) }
        div.cards id="summary" {
            @for (id, value, what) in cards {
                div.card data-figure=(id) { b { (value) } span { (what) } }
            }
        }
    }
}

fn coverage(input: &ReportInput) -> Markup {
    let states = [
        DayState::Covered,
        DayState::Missing,
        DayState::Lost,
        DayState::InProgress,
        DayState::Outside,
    ];
    let count = |s: DayState| {
        input
            .coverage
            .iter()
            .flat_map(|r| &r.states)
            .filter(|x| **x == s)
            .count()
    };
    html! {
        h2 { "Coverage: instance x day" }
        p.legend id="coverage-legend" {
            @for s in states {
                span data-state=(s.label()) data-days=(count(s)) {
                    i style={ "background:" (charts::hex(charts::state_colour(s))) } {}
                    (s.label()) " (" (count(s)) ")"
                }
            }
            span { i style="background:#000;width:3px" {} "the horizon's edge (" (input.horizon_day) ")" }
        }
        (figure("chart-coverage", charts::coverage_heatmap(&input.coverage, &input.days, input.horizon_day)))
    }
}

/// One figure per day shown, for a line chart: none for a day without rows, nor for the day in
/// progress.
/// The hour-of-week chart's scale: white is no call, the darkest blue the busiest hour's count.
fn hour_of_week_scale(grid: &[[i64; 24]; 7]) -> Markup {
    let max = grid.iter().flatten().copied().max().unwrap_or(0);
    html! {
        p.legend id="hour-of-week-scale" data-max=(max) {
            "0" span.scale {} (charts::thousands(max)) " inbound calls in one hour (summed over the weeks shown)"
        }
    }
}

fn chart_values(input: &ReportInput, f: &dyn Fn(&DayTotals) -> Option<f64>) -> Vec<Option<f64>> {
    input
        .days
        .iter()
        .map(|d| input.daily.get(d).filter(|_| *d < input.today).and_then(f))
        .collect()
}

fn daily_charts(input: &ReportInput) -> Markup {
    let per_day = |f: &dyn Fn(&DayTotals) -> Option<f64>| chart_values(input, f);
    let calls = [
        Line {
            name: "inbound",
            colour: plotters::style::RGBColor(21, 101, 192),
            values: per_day(&|d| Some(d.inbound as f64)),
        },
        Line {
            name: "handled",
            colour: plotters::style::RGBColor(46, 125, 50),
            values: per_day(&|d| Some(d.handled as f64)),
        },
        Line {
            name: "outbound",
            colour: plotters::style::RGBColor(142, 36, 170),
            values: per_day(&|d| Some(d.outbound as f64)),
        },
    ];
    let rates = [
        Line {
            name: "answer rate",
            colour: plotters::style::RGBColor(46, 125, 50),
            values: per_day(&DayTotals::answer_rate),
        },
        Line {
            name: "abandon rate",
            colour: plotters::style::RGBColor(198, 40, 40),
            values: per_day(&DayTotals::abandon_rate),
        },
        Line {
            name: "outbound connect rate",
            colour: plotters::style::RGBColor(142, 36, 170),
            values: per_day(&DayTotals::connect_rate),
        },
    ];
    let agents = [Line {
        name: "peak logged-in agents",
        colour: plotters::style::RGBColor(0, 131, 143),
        values: per_day(&|d| Some(d.peak_agents as f64)),
    }];
    html! {
        h2 { "Calls per day" }
        p.meta id="today-note" {
            "Today (" (input.today) ") is still in progress: its figures so far are in the table "
            "at the end, not in the charts."
            @if input.days.iter().all(|d| *d >= input.today) {
                " Only today is shown, so the charts are empty: ask for more days (" code { "--days 8" } ")."
            }
        }
        (legend("legend-calls", &calls))
        (figure_fits("chart-calls", |fit| charts::line_chart(&input.days, &calls, false, fit)))
        h2 { "Rates per day" }
        (legend("legend-rates", &rates))
        (figure_fits("chart-rates", |fit| charts::line_chart(&input.days, &rates, true, fit)))
        h2 { "Peak logged-in agents per day" }
        (legend("legend-agents", &agents))
        (figure_fits("chart-agents", |fit| charts::line_chart(&input.days, &agents, false, fit)))
    }
}

/// The complete weeks (Monday to Sunday, every day shown, over and with rows) with each one's
/// totals, by the Monday they start on.
pub fn complete_weeks(input: &ReportInput) -> Vec<(chrono::NaiveDate, DayTotals)> {
    use chrono::Datelike;
    let shown: std::collections::BTreeSet<_> = input.days.iter().collect();
    let mut weeks = vec![];
    for monday in input
        .days
        .iter()
        .filter(|d| d.weekday() == chrono::Weekday::Mon)
    {
        let week: Vec<_> = monday.iter_days().take(7).collect();
        let days: Vec<&DayTotals> = week
            .iter()
            .filter(|d| shown.contains(d) && **d < input.today)
            .filter_map(|d| input.daily.get(d))
            .collect();
        if days.len() == 7 {
            let mut t = DayTotals::default();
            for d in days {
                t.add(d);
            }
            // A week's peak is its busiest day's, as the summary card's.
            t.peak_agents = week
                .iter()
                .filter_map(|d| input.daily.get(d))
                .map(|d| d.peak_agents)
                .max()
                .unwrap_or(0);
            weeks.push((*monday, t));
        }
    }
    weeks
}

/// Calls per complete week: the level without the weekday/weekend swing of the daily lines.
fn weekly_chart(input: &ReportInput) -> Markup {
    let weeks = complete_weeks(input);
    let mondays: Vec<_> = weeks.iter().map(|(m, _)| *m).collect();
    let line = |name, colour, f: fn(&DayTotals) -> i64| Line {
        name,
        colour,
        values: weeks.iter().map(|(_, t)| Some(f(t) as f64)).collect(),
    };
    let calls = [
        line("inbound", plotters::style::RGBColor(21, 101, 192), |t| {
            t.inbound
        }),
        line("handled", plotters::style::RGBColor(46, 125, 50), |t| {
            t.handled
        }),
        line("outbound", plotters::style::RGBColor(142, 36, 170), |t| {
            t.outbound
        }),
    ];
    html! {
        h2 { "Calls per week" }
        @if weeks.is_empty() {
            p.meta id="chart-weeks" { "No complete week (Monday to Sunday, before today) among the days shown." }
        } @else {
            p.meta { "Weeks from Monday to Sunday, labelled by their Monday; only weeks with every day fetched." }
            (legend("legend-weeks", &calls))
            (figure_fits("chart-weeks", |fit| charts::line_chart(&mondays, &calls, false, fit)))
            div.scroll {
                table id="weeks" {
                    tr { th { "week of" } th { "inbound" } th.wide-only { "handled" } th { "answered" } th { "outbound" } th { "connected" } th.wide-only { "peak agents" } }
                    @for (monday, t) in weeks.iter().rev() {
                        tr data-week=(monday) {
                            td { (monday) }
                            td data-inbound=(t.inbound) { (charts::thousands(t.inbound)) }
                            td.wide-only data-handled=(t.handled) { (charts::thousands(t.handled)) }
                            td { (pct(t.answer_rate())) }
                            td data-outbound=(t.outbound) { (charts::thousands(t.outbound)) }
                            td { (pct(t.connect_rate())) }
                            td.wide-only { (charts::thousands(t.peak_agents)) }
                        }
                    }
                }
            }
        }
    }
}

/// Each instance and media type over the days shown.
fn per_series(input: &ReportInput) -> Markup {
    html! {
        h2 { "Per instance" }
        @if input.per_series.is_empty() {
            p id="per-instance" { "No rows in the days shown." }
        } @else {
            div.scroll {
                table id="per-instance" {
                    tr { th { "instance" } th.wide-only { "media" } th { "inbound" } th.wide-only { "handled" } th { "answered" }
                         th.wide-only { "abandoned" } th.wide-only { "outbound" } th { "connected" } th { "peak agents" } }
                    @for s in &input.per_series {
                        (series_row(s))
                    }
                }
            }
        }
    }
}

fn series_row(s: &SeriesTotals) -> Markup {
    let t = &s.totals;
    html! {
        tr data-series={ (s.instance_id) "|" (s.media_type) } {
            td { (s.instance_id) }
            td.wide-only { (s.media_type) }
            td data-inbound=(t.inbound) { (charts::thousands(t.inbound)) }
            td.wide-only data-handled=(t.handled) { (charts::thousands(t.handled)) }
            td { (pct(t.answer_rate())) }
            td.wide-only { (pct(t.abandon_rate())) }
            td.wide-only data-outbound=(t.outbound) { (charts::thousands(t.outbound)) }
            td { (pct(t.connect_rate())) }
            td data-peak-agents=(t.peak_agents) { (charts::thousands(t.peak_agents)) }
        }
    }
}

fn runs(runs: &[RunRecord], tz: Tz) -> Markup {
    let num = |r: &RunRecord, k: &str| r.summary.as_ref().and_then(|s| s.get(k)).cloned();
    html! {
        h2 { "Last runs" }
        div.scroll {
            table id="runs" {
                tr { th { "started" } th { "command" } th { "status" } th.wide-only { "windows ok" } th { "failed" } th { "rows" } th.wide-only { "duration" } }
                @for r in runs {
                    @let ok = num(r, "windows_ok").and_then(|v| v.as_u64());
                    @let failed = num(r, "windows_failed").and_then(|v| v.as_array().map(Vec::len));
                    @let rows = num(r, "rows").and_then(|v| v.as_object().map(|m| m.values().filter_map(|n| n.as_u64()).sum::<u64>()));
                    @let secs = num(r, "duration_secs").and_then(|v| v.as_f64()).or_else(|| r.finished_at.map(|f| (f - r.started_at).num_milliseconds() as f64 / 1000.0));
                    tr {
                        td { (r.started_at.with_timezone(&tz).format("%Y-%m-%d %H:%M")) }
                        td { (r.command.as_str()) }
                        td class=(r.status.as_str()) { (r.status.as_str()) }
                        td.wide-only { (ok.map(|v| v.to_string()).unwrap_or_default()) }
                        td { (failed.map(|v| v.to_string()).unwrap_or_default()) }
                        td { (rows.map(|v| charts::thousands(v as i64)).unwrap_or_default()) }
                        td.wide-only { (secs.map(|s| format!("{s:.1} s")).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

fn findings(input: &ReportInput) -> Markup {
    let drift = &input.drift;
    html! {
        h2 { "Findings and schema drift" }
        @if input.findings.is_empty() && drift.unknown.is_empty() && drift.missing.is_empty() {
            p id="findings" { "Nothing found: every day file the ledger names is there and reads, and the API's answers have the shape ccc-etl knows." }
        } @else {
            ul id="findings" {
                @for f in &input.findings { li { (f) } }
                @for (name, n) in &drift.unknown { li { "New field from the API: " code { (name) } " (" (n) " rows or items)" } }
                @for name in &drift.missing { li { "Field the API stopped sending: " code { (name) } } }
            }
        }
    }
}

fn daily_table(input: &ReportInput) -> Markup {
    html! {
        h2 { "Daily figures" }
        details {
            summary { "Every day's totals (" (input.daily.len()) " days)" }
            div.scroll {
                table id="daily" {
                    tr { th { "day" } th { "inbound" } th { "handled" } th { "queued" } th { "abandoned IVR" } th { "queue" } th { "ring" } th { "outbound" } th { "answered" } th { "peak agents" } }
                    @for (day, d) in input.daily.iter().rev() {
                        tr data-day=(day) {
                            td { (day) }
                            @for v in [d.inbound, d.handled, d.queued, d.abandoned_ivr, d.abandoned_queue,
                                       d.abandoned_ring, d.outbound, d.answered, d.peak_agents] {
                                td { (charts::thousands(v)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn the_day_in_progress_and_days_without_rows_are_left_out_of_the_charts() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
        let totals = |inbound: i64| DayTotals {
            inbound,
            ..DayTotals::default()
        };
        let input = ReportInput {
            generated: String::new(),
            tz: chrono_tz::UTC,
            days: (1..=4).map(day).collect(),
            today: day(4),
            horizon_day: day(1),
            coverage: vec![],
            daily: [
                (day(1), totals(10)),
                (day(3), totals(30)),
                (day(4), totals(2)),
            ]
            .into(),
            per_series: vec![],
            hour_of_week: [[0; 24]; 7],
            kpi_source: String::new(),
            runs: vec![],
            findings: vec![],
            drift: Default::default(),
            alert: None,
        };
        let inbound = chart_values(&input, &|d| Some(d.inbound as f64));
        assert_eq!(inbound, [Some(10.0), None, Some(30.0), None]);
        let page = render(&input);
        assert!(page.contains("Today (2026-12-04) is still in progress"));
        // The table still has today's figures so far.
        assert!(page.contains("data-day=\"2026-12-04\""), "{page}");
    }
}
