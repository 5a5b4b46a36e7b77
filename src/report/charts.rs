//! The report's charts as SVG text, drawn with plotters' SVG backend (no font files: text is
//! SVG `<text>`, laid out by the browser). Each chart scales to its container (`viewBox`).

use chrono::NaiveDate;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::coverage::{DayState, SeriesDays};

/// The colour of a coverage state.
pub fn state_colour(s: DayState) -> RGBColor {
    match s {
        DayState::Outside => RGBColor(236, 239, 241),
        DayState::Covered => RGBColor(46, 125, 50),
        DayState::Missing => RGBColor(249, 168, 37),
        DayState::Lost => RGBColor(198, 40, 40),
        DayState::InProgress => RGBColor(21, 101, 192),
    }
}

/// The CSS hex of a colour, for the legend.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

const FONT: (&str, u32) = ("sans-serif", 13);

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a chart failed: {e}")
}

/// plotters writes fixed `width`/`height` next to its `viewBox`; without them the page scales
/// the chart (one `viewBox`: the SVG stays valid XML when copied out of the page).
fn scalable(svg: String, (w, h): (u32, u32)) -> String {
    svg.replacen(
        &format!("<svg width=\"{w}\" height=\"{h}\" "),
        "<svg preserveAspectRatio=\"xMinYMin meet\" ",
        1,
    )
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A chart of `size` px drawn by `draw` on a white area, as scalable SVG text.
fn svg_chart(
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<(), String>,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(scalable(svg, size))
}

fn day_label(days: &[NaiveDate], i: i32) -> String {
    usize::try_from(i)
        .ok()
        .and_then(|i| days.get(i))
        .map(|d| d.format("%m-%d").to_string())
        .unwrap_or_default()
}

/// Instances x days, one cell per day coloured by its state (runs of one state drawn as one
/// rectangle), and the horizon's edge as a vertical line.
pub fn coverage_heatmap(
    rows: &[SeriesDays],
    days: &[NaiveDate],
    horizon: NaiveDate,
) -> Result<String, String> {
    let (n, m) = (days.len() as i32, rows.len().max(1) as i32);
    let cell = (640 / m).clamp(4, 18) as u32;
    let size = (1000, 60 + cell * m as u32);
    svg_chart(size, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(150)
            .build_cartesian_2d(0..n, (0..m - 1).into_segmented())
            .map_err(err)?;
        let label = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => rows
                .get((m - 1 - i) as usize)
                .map(|r| r.label.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(10)
            .x_label_formatter(&|i| day_label(days, *i))
            .y_labels(rows.len().min(40))
            .y_label_formatter(&label)
            .label_style(FONT)
            .draw()
            .map_err(err)?;
        let mut cells = vec![];
        for (r, row) in rows.iter().enumerate() {
            let y = m - 1 - r as i32;
            let mut start = 0;
            for i in 1..=row.states.len() {
                if i == row.states.len() || row.states[i] != row.states[start] {
                    let c = state_colour(row.states[start]).filled();
                    let (a, b) = (SegmentValue::Exact(y), SegmentValue::Exact(y + 1));
                    cells.push(Rectangle::new([(start as i32, a), (i as i32, b)], c));
                    start = i;
                }
            }
        }
        chart.draw_series(cells).map_err(err)?;
        if let Some(x) = days.iter().position(|d| *d == horizon) {
            let edge = vec![
                (x as i32, SegmentValue::Exact(0)),
                (x as i32, SegmentValue::Exact(m)),
            ];
            chart
                .draw_series([PathElement::new(edge, BLACK.stroke_width(3))])
                .map_err(err)?;
        }
        Ok(())
    })
}

/// One line of a line chart: its name, colour and a value per day (`None`: no data).
pub struct Line<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Colour.
    pub colour: RGBColor,
    /// One per day.
    pub values: Vec<Option<f64>>,
}

/// How large a chart is drawn: for a desk, or for a phone (fewer, larger labels: a phone shows
/// the narrow one at about its own width, so its text stays legible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// About 1000 px wide.
    Wide,
    /// About 420 px wide.
    Narrow,
}

impl Fit {
    fn line_size(self) -> (u32, u32) {
        match self {
            Fit::Wide => (1000, 320),
            Fit::Narrow => (420, 280),
        }
    }

    fn font(self) -> (&'static str, u32) {
        match self {
            Fit::Wide => FONT,
            Fit::Narrow => ("sans-serif", 14),
        }
    }

    /// At most this many day labels on the x axis.
    fn day_labels(self) -> usize {
        match self {
            Fit::Wide => 10,
            Fit::Narrow => 4,
        }
    }
}

/// A count with thousands separators (`12,345`).
pub fn thousands(v: i64) -> String {
    use num_format::{Locale, ToFormattedString};
    v.to_formatted_string(&Locale::en)
}

/// The days labelled on an axis of `n` days: about `most` of them, evenly spread, always the
/// first and the last.
fn day_ticks(n: i32, most: usize) -> Vec<i32> {
    if n <= 1 {
        return vec![0];
    }
    let step = ((n - 1) as usize)
        .div_ceil(most.saturating_sub(1).max(1))
        .max(1) as i32;
    let mut ticks: Vec<i32> = (0..n).step_by(step as usize).collect();
    // The last day is always labelled; a tick too close before it gives way.
    if let Some(&last) = ticks.last()
        && last != n - 1
    {
        if n - 1 - last < step / 2 {
            ticks.pop();
        }
        ticks.push(n - 1);
    }
    ticks
}

/// The top of a count axis: above the largest value, at least 5 (so that every tick is a whole
/// count), rounded up to a round number.
fn count_top(top: f64) -> f64 {
    let want = (top * 1.1).max(5.0);
    let magnitude = 10f64.powf(want.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= want)
        .unwrap_or(want)
}

/// Days on x, `lines` on y (from 0 to a round number above their maximum, or to 1 for rates):
/// a line per run of days with a value, a point on every day (a lone day shows), the first and
/// the last day labelled. The legend is the page's (HTML, next to the chart).
pub fn line_chart(
    days: &[NaiveDate],
    lines: &[Line<'_>],
    rate: bool,
    fit: Fit,
) -> Result<String, String> {
    let n = days.len().max(1) as i32;
    let top = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .fold(0f64, |a, b| a.max(*b));
    let y_max = if rate { 1.0 } else { count_top(top) };
    let ticks = day_ticks(n, fit.day_labels());
    svg_chart(fit.line_size(), |root| {
        let x = (-1..n).with_key_points(ticks);
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(if fit == Fit::Wide { 64 } else { 52 })
            .build_cartesian_2d(x, 0f64..y_max)
            .map_err(err)?;
        let y_fmt = |v: &f64| {
            if rate {
                format!("{:.0}%", v * 100.0)
            } else {
                thousands(v.round() as i64)
            }
        };
        chart
            .configure_mesh()
            .x_label_formatter(&|i| day_label(days, *i))
            .y_labels(6)
            .y_label_formatter(&y_fmt)
            .label_style(fit.font())
            .light_line_style(RGBColor(240, 240, 240))
            .draw()
            .map_err(err)?;
        for line in lines {
            let colour = line.colour;
            for segment in segments(&line.values) {
                let points = segment.clone();
                chart
                    .draw_series(LineSeries::new(segment, colour.stroke_width(2)))
                    .map_err(err)?;
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 3, colour.filled())),
                    )
                    .map_err(err)?;
            }
        }
        Ok(())
    })
}

/// Runs of present values as point lists.
fn segments(values: &[Option<f64>]) -> Vec<Vec<(i32, f64)>> {
    let mut out: Vec<Vec<(i32, f64)>> = vec![];
    let mut current = vec![];
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => current.push((i as i32, *v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Inbound calls by ISO weekday (rows, Monday on top) and local hour (columns), darker for more.
pub fn hour_of_week(grid: &[[i64; 24]; 7], fit: Fit) -> Result<String, String> {
    let size = match fit {
        Fit::Wide => (1000, 300),
        Fit::Narrow => (420, 240),
    };
    let every = if fit == Fit::Wide { 1 } else { 3 };
    let max = grid.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    svg_chart(size, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d((0..23).into_segmented(), (0..6).into_segmented())
            .map_err(err)?;
        let weekday = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => chrono::Weekday::try_from((6 - *i) as u8)
                .map(|d| format!("{d}"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let hour = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(h) if h % every == 0 => format!("{h:02}"),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(24)
            .y_labels(7)
            .x_label_formatter(&hour)
            .y_label_formatter(&weekday)
            .label_style(fit.font())
            .draw()
            .map_err(err)?;
        let cells = grid.iter().enumerate().flat_map(|(d, hours)| {
            hours.iter().enumerate().map(move |(h, n)| {
                let t = *n as f64 / max;
                let shade = RGBColor(
                    (247.0 - t * 239.0) as u8,
                    (251.0 - t * 203.0) as u8,
                    (255.0 - t * 148.0) as u8,
                );
                let y = 6 - d as i32;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(h as i32), SegmentValue::Exact(y)),
                        (
                            SegmentValue::Exact(h as i32 + 1),
                            SegmentValue::Exact(y + 1),
                        ),
                    ],
                    shade.filled(),
                )
            })
        });
        chart.draw_series(cells).map_err(err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One SVG document that parses as XML (a repeated attribute does not), with one `viewBox`
    /// and no fixed size: the page scales it.
    fn scales_and_parses(svg: &str) {
        let doc = roxmltree::Document::parse(svg).expect("valid XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert!(root.attribute("viewBox").is_some(), "{}", &svg[..200]);
        assert!(root.attribute("width").is_none(), "{}", &svg[..200]);
        assert_eq!(svg.matches("viewBox").count(), 1);
    }

    #[test]
    fn every_chart_is_one_valid_svg_document_that_scales() {
        let days: Vec<NaiveDate> = (1..=3)
            .map(|d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap())
            .collect();
        let lines = [Line {
            name: "inbound",
            colour: RGBColor(0, 0, 255),
            values: vec![Some(1.0), None, Some(3.0)],
        }];
        let mut grid = [[0i64; 24]; 7];
        grid[2][13] = 5;
        for fit in [Fit::Wide, Fit::Narrow] {
            scales_and_parses(&line_chart(&days, &lines, false, fit).unwrap());
            scales_and_parses(&hour_of_week(&grid, fit).unwrap());
        }
    }
}
