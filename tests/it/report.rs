//! `ccc-etl report`: after a real backfill into PostgreSQL and Parquet, the page is one file that
//! fetches nothing, holds every chart, and shows the figures the database holds (and, from a
//! configuration without PostgreSQL, the same figures read from the Parquet root); headless
//! Chromium renders it at desktop and phone widths without a console message, and its
//! screenshots are kept under `target/report-screenshots/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, ConfigToml, TestDb, output_text};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A day of `daily_traffic` summed over the series.
type DailyRow = (
    chrono::NaiveDate,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
);
const CHARTS: [&str; 6] = [
    "chart-coverage",
    "chart-calls",
    "chart-weeks",
    "chart-rates",
    "chart-agents",
    "chart-hour-of-week",
];

use crate::common::ccc_etl_on as ccc_etl;

/// The daily figures table of a page: day -> the row's numbers.
fn daily_rows(html: &str) -> BTreeMap<String, Vec<i64>> {
    html.split("<tr data-day=\"")
        .skip(1)
        .map(|chunk| {
            let (day, rest) = chunk.split_once('"').unwrap();
            let row = &rest[..rest.find("</tr>").unwrap()];
            let cells: Vec<i64> = row
                .split("<td>")
                .skip(2)
                .map(|c| {
                    c[..c.find("</td>").unwrap()]
                        .replace(',', "")
                        .parse()
                        .unwrap()
                })
                .collect();
            (day.to_string(), cells)
        })
        .collect()
}

/// The numbers of the rows of table `id` whose `tr` carries `key`: key -> `data-` figures.
fn figures(html: &str, id: &str, key: &str) -> BTreeMap<String, Vec<i64>> {
    let at = html
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("{id}"));
    let table = &html[at..at + html[at..].find("</table>").unwrap()];
    table
        .split(&format!("<tr {key}=\""))
        .skip(1)
        .map(|row| {
            let (k, rest) = row.split_once('"').unwrap();
            let numbers = rest
                .split(" data-")
                .skip(1)
                .map(|a| {
                    let v = a.split('"').nth(1).unwrap();
                    v.parse().unwrap_or_else(|_| panic!("{a}"))
                })
                .collect();
            (k.to_string(), numbers)
        })
        .collect()
}

/// The per-instance table: "instance|media" -> inbound, handled, outbound, peak agents.
fn per_instance(html: &str) -> BTreeMap<String, Vec<i64>> {
    figures(html, "per-instance", "data-series")
}

/// The same from `daily_traffic`: sums per series, and its highest daily peak.
async fn per_instance_of(pool: &sqlx::PgPool) -> BTreeMap<String, Vec<i64>> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT instance_id || '|' || media_type, sum(inbound_calls)::bigint, \
                sum(calls_handled)::bigint, sum(outbound_calls)::bigint, \
                max(max_logged_in_agents)::bigint \
         FROM ccc.daily_traffic GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "two series");
    rows.into_iter()
        .map(|(k, a, b, c, d)| (k, vec![a, b, c, d]))
        .collect()
}

/// The weekly table: Monday -> inbound, handled, outbound.
fn weeks(html: &str) -> BTreeMap<String, Vec<i64>> {
    figures(html, "weeks", "data-week")
}

/// The weeks, Monday to Sunday, whose seven days all have rows and are over before `today`,
/// summed from the daily figures.
fn complete_weeks(daily: &BTreeMap<String, Vec<i64>>, today: &str) -> BTreeMap<String, Vec<i64>> {
    use chrono::Datelike;
    let mut out = BTreeMap::new();
    for day in daily.keys() {
        let monday: chrono::NaiveDate = day.parse().unwrap();
        if monday.weekday() != chrono::Weekday::Mon {
            continue;
        }
        let week: Vec<String> = monday.iter_days().take(7).map(|d| d.to_string()).collect();
        if week
            .iter()
            .all(|d| daily.contains_key(d) && d.as_str() < today)
        {
            let sum = |i: usize| week.iter().map(|d| daily[d][i]).sum::<i64>();
            out.insert(day.clone(), vec![sum(0), sum(1), sum(6)]);
        }
    }
    assert!(
        out.len() >= 4,
        "four complete weeks in 2026-11-01..12-03: {out:?}"
    );
    out
}

/// The value of a summary card.
fn card(html: &str, id: &str) -> String {
    let at = html.find(&format!("data-figure=\"{id}\"")).unwrap();
    let rest = &html[at..];
    let b = rest.find("<b>").unwrap() + 3;
    rest[b..b + rest[b..].find("</b>").unwrap()].to_string()
}

fn chromium() -> Command {
    let found = Command::new("chromium").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "chromium is not installed: the report test renders the page in it (Debian: `sudo \
         apt-get install --no-install-recommends chromium`)"
    );
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    c
}

/// Renders the page at `width` px: a screenshot under `target/report-screenshots/`, and the
/// DOM as the browser built it. Asserts the browser logged no console message and no failed
/// request.
fn render(page: &Path, width: u32, name: &str) -> (PathBuf, String) {
    let dir = Path::new(ROOT).join("target/report-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    // Below 500 px the page is shown in a frame of that width (see `phone_frame`).
    let (url, window) = if width < 500 {
        (
            format!("file://{}", phone_frame(page, width).display()),
            500,
        )
    } else {
        (format!("file://{}", page.display()), width)
    };
    let shot = chromium()
        .arg(format!("--window-size={window},3200"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&shot.stderr).to_string();
    assert!(shot.status.success(), "{log}");
    for bad in [":CONSOLE", "net::ERR_", "Uncaught"] {
        assert!(!log.contains(bad), "the browser logged {bad}: {log}");
    }
    let dom = chromium()
        .arg(format!("--window-size={width},3200"))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(dom.status.success(), "{}", output_text(&dom));
    (png, String::from_utf8(dom.stdout).unwrap())
}

/// The page in a frame `width` px wide, as a phone of that width lays it out (headless Chromium
/// keeps its window at least 500 px wide); the frame's document width (`scrollWidth`) becomes
/// the title. The page itself has no script.
fn phone_frame(page: &Path, width: u32) -> PathBuf {
    let html = std::fs::read_to_string(page).unwrap();
    let escaped = html.replace('&', "&amp;").replace('"', "&quot;");
    let frame = page.with_extension(format!("{width}.html"));
    std::fs::write(
        &frame,
        format!(
            "<!DOCTYPE html><html><head><title>-</title><style>body{{margin:0}}iframe{{border:0}}</style></head>\
             <body><iframe id=\"f\" width=\"{width}\" height=\"3200\" srcdoc=\"{escaped}\" \
             onload=\"document.title='width:'+this.contentDocument.documentElement.scrollWidth\">\
             </iframe></body></html>"
        ),
    )
    .unwrap();
    frame
}

/// How wide the page is laid out `width` px wide (`document.scrollWidth`): wider than that
/// scrolls sideways.
fn laid_out_width(page: &Path, width: u32) -> u32 {
    let probe = phone_frame(page, width);
    let dom = chromium()
        .arg("--window-size=600,3200")
        .arg("--dump-dom")
        .arg(format!("file://{}", probe.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8(dom.stdout).unwrap();
    let at = dom.find("<title>width:").expect("the probe ran") + "<title>width:".len();
    dom[at..at + dom[at..].find('<').unwrap()].parse().unwrap()
}

/// Every SVG of the page, each a valid XML document on its own (as copied out of the page).
fn svgs(html: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut rest = html;
    while let Some(at) = rest.find("<svg ") {
        let end = at + rest[at..].find("</svg>").unwrap() + "</svg>".len();
        out.push(&rest[at..end]);
        rest = &rest[end..];
    }
    out
}

#[tokio::test]
async fn the_report_is_one_file_with_every_chart_and_the_databases_figures() {
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("wh");
    let both = dir.path().join("both.toml");
    let cfg = ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-b"]).set("source", "max_qps", 200);
    cfg.clone().postgres().parquet(root.display()).write(&both);
    let out = ccc_etl(
        &both,
        &db,
        &["backfill", "--from", "2026-11-01", "--to", "2026-12-03"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    let page = dir.path().join("report.html");
    let out = ccc_etl(
        &both,
        &db,
        &["report", "--output", page.to_str().unwrap(), "--days", "60"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("2 series x 60 days"),
        "{}",
        output_text(&out)
    );
    let html = std::fs::read_to_string(&page).unwrap();

    // Self-contained: nothing to fetch, no script.
    for needle in ["<script", "<link", " src=", "@import", "url("] {
        assert!(!html.contains(needle), "the page holds {needle}");
    }
    let external = html
        .match_indices("http")
        .filter(|(i, _)| !html[*i..].starts_with("http://www.w3.org/"))
        .count();
    assert_eq!(external, 0, "the page names an address");
    for id in CHARTS {
        let at = html
            .find(&format!("<figure id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id}"));
        assert!(
            html[at..].starts_with(&format!("<figure id=\"{id}\"><svg")),
            "{id} is an SVG"
        );
    }

    // The figures are the database's: every day of daily_traffic, summed over the series.
    let pool = db.pool().await;
    let rows: Vec<DailyRow> = sqlx::query_as(
        "SELECT day, sum(inbound_calls)::bigint, sum(calls_handled)::bigint, \
             sum(calls_queued)::bigint, sum(abandoned_in_ivr)::bigint, \
             sum(abandoned_in_queue)::bigint, sum(abandoned_in_ring)::bigint, \
             sum(outbound_calls)::bigint, sum(outbound_answered)::bigint, \
             sum(max_logged_in_agents)::bigint FROM ccc.daily_traffic GROUP BY day",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected: BTreeMap<String, Vec<i64>> = rows
        .iter()
        .map(|r| {
            (
                r.0.to_string(),
                vec![r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9],
            )
        })
        .collect();
    assert!(expected.len() >= 33, "{}", expected.len());
    let shown = daily_rows(&html);
    assert_eq!(shown, expected);
    let inbound: i64 = expected.values().map(|v| v[0]).sum();
    let shown_inbound = card(&html, "inbound");
    assert_eq!(shown_inbound, ccc_etl::report::charts::thousands(inbound));
    assert!(
        inbound < 1000 || shown_inbound.contains(','),
        "{shown_inbound}"
    );
    // Every chart is valid SVG on its own, drawn for a desk and for a phone.
    let charts = svgs(&html);
    assert_eq!(charts.len(), 1 + 2 * 5, "coverage once, five charts twice");
    for svg in &charts {
        let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}: {svg:.300}"));
        assert!(doc.root_element().attribute("viewBox").is_some());
    }
    assert_eq!(per_instance(&html), per_instance_of(&pool).await);
    assert_eq!(weeks(&html), complete_weeks(&expected, "2026-12-04"));
    let handled: i64 = expected.values().map(|v| v[1]).sum();
    let rate = format!("{:.1}%", handled as f64 / inbound as f64 * 100.0);
    assert_eq!(card(&html, "answer-rate"), rate);
    // Coverage: the 33 days fetched are covered for both series; the rest of the 60 days is
    // inside the horizon and missing.
    assert!(
        html.contains("data-state=\"covered\" data-days=\"66\""),
        "covered days"
    );
    assert!(
        html.contains("data-state=\"missing\" data-days=\"54\""),
        "missing days"
    );
    assert!(
        html.contains("<td class=\"ok\">ok</td>"),
        "the backfill run is listed"
    );

    // The same figures from the Parquet root, for a configuration without PostgreSQL.
    let only = dir.path().join("parquet.toml");
    cfg.parquet(root.display()).write(&only);
    let page2 = dir.path().join("report2.html");
    let out = common::ccc_etl_cmd()
        .arg("--config")
        .arg(&only)
        .args([
            "report",
            "--output",
            page2.to_str().unwrap(),
            "--days",
            "60",
        ])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let html2 = std::fs::read_to_string(&page2).unwrap();
    assert_eq!(daily_rows(&html2), expected, "the Parquet root's figures");
    assert!(html2.contains("figures from the Parquet root"));

    // Rendered by a browser at desktop and phone widths.
    for (width, name) in [(1280, "desktop"), (390, "phone")] {
        let (png, dom) = render(&page, width, name);
        assert!(
            std::fs::metadata(&png).unwrap().len() > 20_000,
            "{name} screenshot"
        );
        for id in CHARTS {
            assert!(dom.contains(&format!("id=\"{id}\"")), "{name}: {id}");
        }
        assert!(
            dom.contains(&format!(
                "<b>{}</b>",
                ccc_etl::report::charts::thousands(inbound)
            )),
            "{name}: the figures"
        );
        let laid_out = laid_out_width(&page, width);
        assert!(
            laid_out <= width,
            "{name}: the page is {laid_out} px wide in a {width} px window: it scrolls sideways"
        );
    }
    pool.close().await;
    db.drop_db().await;
}

/// From the Parquet root alone: a zero-byte day file is left out and listed as damaged (as
/// `status` lists it), the page still made; counts that add up past 64 bits fail the report
/// naming the day, never a wrapped negative figure.
#[tokio::test]
async fn the_report_lists_a_damaged_day_file_and_refuses_counts_that_overflow() {
    use ccc_etl::config::ParquetCompression;
    use ccc_etl::record::Table;
    use ccc_etl::sink::parquet::{Layout, read_file, write_file_atomic};
    let emu = common::start(common::options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    let wh = dir.path().join("wh");
    common::ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .parquet(wh.display())
        .write(&cfg);
    let run = |args: Vec<String>| common::ccc_etl_at(&cfg, None).args(args).output();
    let out = run(common::args(&[
        "backfill",
        "--from",
        "2026-11-20",
        "--to",
        "2026-11-23",
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let layout = Layout::new(&wh);
    let day = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    // A zero-byte file (a copy cut short, a full disk).
    std::fs::write(layout.day_file(Table::Outbound, day("2026-11-21")), b"").unwrap();
    let page = dir.path().join("report.html");
    let report = || {
        run(common::args(&[
            "report",
            "--days",
            "30",
            "--output",
            page.to_str().unwrap(),
        ]))
    };
    let out = report().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("outbound_trend/dt=2026-11-21/part-00000.parquet is damaged"),
        "the damaged file is listed: {}",
        html.split("findings")
            .nth(1)
            .unwrap_or(&html[..html.len().min(3000)])
    );
    // Three rows whose inbound calls add up past i64::MAX.
    let file = layout.day_file(Table::Inbound, day("2026-11-22"));
    let mut rows = read_file(&file, Table::Inbound).unwrap();
    for r in rows.iter_mut().take(3) {
        r.counts[0] = i64::MAX;
    }
    write_file_atomic(&file, Table::Inbound, &rows, ParquetCompression::Snappy).unwrap();
    let out = report().await.unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("inbound_trend 2026-11-22") && text.contains("past what a 64-bit integer"),
        "{text}"
    );
}
