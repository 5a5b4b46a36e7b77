//! Prometheus text exposition of a run, written atomically for node_exporter's textfile
//! collector (it reads `*.prom`; the temporary file is `.NAME.tmp`, which it ignores).
//!
//! The format is a handful of gauges; writing it needs no registry, so no metrics crate.

use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::pipeline::RunSummary;
use crate::record::Table;

/// Escapes a label value as the exposition format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

fn family(out: &mut String, name: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in samples {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {v}", l.join(","));
    }
}

/// Rows committed, by table. Counted once a window is committed to every sink: one figure per
/// table, whatever the sinks (what each sink inserted, revised or left is `ccc_etl_sink_rows`).
fn rows(out: &mut String, command: &str, s: &RunSummary) {
    let rows: Vec<_> = Table::ALL
        .iter()
        .map(|t| {
            (
                vec![
                    ("command", command.to_string()),
                    ("table", t.name().to_string()),
                ],
                s.rows.get(t.name()).copied().unwrap_or(0) as f64,
            )
        })
        .collect();
    family(
        out,
        "ccc_etl_rows",
        "Rows of the windows the last run committed to every sink, by table.",
        &rows,
    );
}

/// What each sink did with the rows it was handed: inserted, revised, or left unchanged.
fn sink_rows(out: &mut String, command: &str, s: &RunSummary) {
    let mut samples = vec![];
    for (sink, stats) in &s.sinks {
        for (outcome, n) in [
            ("inserted", stats.inserted),
            ("revised", stats.revised),
            ("unchanged", stats.unchanged),
        ] {
            samples.push((
                vec![
                    ("command", command.to_string()),
                    ("sink", sink.clone()),
                    ("outcome", outcome.to_string()),
                ],
                n as f64,
            ));
        }
    }
    family(
        out,
        "ccc_etl_sink_rows",
        "Rows each sink inserted, revised or left unchanged in the last run.",
        &samples,
    );
}

/// With several workers: which worker ran, and what the job's other workers meant for it.
fn worker_families(out: &mut String, command: &str, s: &RunSummary) {
    let Some(worker) = &s.worker else { return };
    let c = || ("command", command.to_string());
    let w = || ("worker", worker.clone());
    family(
        out,
        "ccc_etl_worker_info",
        "The worker that ran (several workers share a job through PostgreSQL).",
        &[(vec![c(), w(), ("host", crate::coord::hostname())], 1.0)],
    );
    family(
        out,
        "ccc_etl_windows_done_elsewhere",
        "Windows of this worker's plan done by other workers of the job.",
        &[(vec![c(), w()], s.windows_done_elsewhere as f64)],
    );
    family(
        out,
        "ccc_etl_leases_lost",
        "Windows this worker claimed and lost the lease of before writing them.",
        &[(vec![c(), w()], s.windows_lease_lost as f64)],
    );
    family(
        out,
        "ccc_etl_fenced_commits",
        "Commits refused because another worker had taken the window over.",
        &[(vec![c(), w()], s.fenced_commits as f64)],
    );
}

/// Schema drift the last run saw: fields the API sent that ccc-etl does not know, and known fields
/// it left out.
fn drift(out: &mut String, command: &str, s: &RunSummary) {
    let c = || ("command", command.to_string());
    let labels = |name: &str| {
        let (section, field) = name.split_once('.').unwrap_or(("response", name));
        vec![c(), ("section", section.into()), ("field", field.into())]
    };
    let unknown: Vec<_> = (s.drift.unknown.iter())
        .map(|(name, n)| (labels(name), *n as f64))
        .collect();
    family(
        out,
        "ccc_etl_unknown_fields",
        "Fields the API sent in the last run that ccc-etl does not know, by rows (items) carrying them.",
        &unknown,
    );
    let missing: Vec<_> = (s.drift.missing.iter())
        .map(|name| (labels(name), 1.0))
        .collect();
    family(
        out,
        "ccc_etl_missing_fields",
        "Known fields absent from every item of an array in the last run (1 per field).",
        &missing,
    );
}

/// What the API answered: answers by code, retries, throttling.
fn requests(out: &mut String, command: &str, s: &RunSummary) {
    let c = || ("command", command.to_string());
    let codes: Vec<_> = s
        .responses_by_code
        .iter()
        .map(|(code, n)| (vec![c(), ("code", code.clone())], *n as f64))
        .collect();
    family(
        out,
        "ccc_etl_requests",
        "API answers of the last run, by code.",
        &codes,
    );
    family(
        out,
        "ccc_etl_retries",
        "Retries in the last run.",
        &[(vec![c()], s.retries as f64)],
    );
    family(
        out,
        "ccc_etl_throttled",
        "Throttling answers in the last run.",
        &[(vec![c()], s.throttled as f64)],
    );
}

/// How the run ended: its duration, exit code, end, the last success, and peak memory.
fn run_end(
    out: &mut String,
    command: &str,
    duration_secs: f64,
    exit_code: u8,
    (finished, last_success): (DateTime<Utc>, Option<DateTime<Utc>>),
) {
    let c = || ("command", command.to_string());
    family(
        out,
        "ccc_etl_run_duration_seconds",
        "Duration of the last run.",
        &[(vec![c()], duration_secs)],
    );
    family(
        out,
        "ccc_etl_last_run_exit_code",
        "Exit code of the last run.",
        &[(vec![c()], exit_code as f64)],
    );
    family(
        out,
        "ccc_etl_last_run_timestamp_seconds",
        "When the last run finished.",
        &[(vec![c()], finished.timestamp() as f64)],
    );
    if let Some(t) = last_success {
        family(
            out,
            "ccc_etl_last_success_timestamp_seconds",
            "When a run last committed every window.",
            &[(vec![c()], t.timestamp() as f64)],
        );
    }
    if let Some(peak) = peak_rss_bytes() {
        family(
            out,
            "ccc_etl_peak_rss_bytes",
            "Peak resident memory of the process until the run ended (its memory limit's floor).",
            &[(vec![c()], peak)],
        );
    }
}

/// Renders the metrics of one run of `command`.
pub fn render(
    command: &str,
    s: &RunSummary,
    exit_code: u8,
    finished: DateTime<Utc>,
    last_success: Option<DateTime<Utc>>,
) -> String {
    let c = || ("command", command.to_string());
    let mut out = String::new();
    family(
        &mut out,
        "ccc_etl_windows",
        "Windows of the last run by status.",
        &[
            (vec![c(), ("status", "ok".into())], s.windows_ok as f64),
            (
                vec![c(), ("status", "failed".into())],
                s.windows_failed.len() as f64,
            ),
            (
                vec![c(), ("status", "skipped_committed".into())],
                s.windows_skipped_committed as f64,
            ),
            (vec![c(), ("status", "lost".into())], s.lost.len() as f64),
        ],
    );
    rows(&mut out, command, s);
    sink_rows(&mut out, command, s);
    worker_families(&mut out, command, s);
    requests(&mut out, command, s);
    drift(&mut out, command, s);
    family(
        &mut out,
        "ccc_etl_credential_refreshes",
        "Temporary credentials renewed during the last run.",
        &[(vec![c()], s.credential_refreshes as f64)],
    );
    family(
        &mut out,
        "ccc_etl_revisions",
        "Rows whose values changed since last written.",
        &[(vec![c()], s.revisions as f64)],
    );
    let quality: Vec<_> = s
        .quality
        .kinds()
        .iter()
        .map(|(k, n)| (vec![c(), ("kind", k.to_string())], *n as f64))
        .collect();
    family(
        &mut out,
        "ccc_etl_quality_violations",
        "Data-quality violations in the last run, by kind.",
        &quality,
    );
    run_end(
        &mut out,
        command,
        s.duration_secs,
        exit_code,
        (finished, last_success),
    );
    out
}

/// The process's peak resident set (`VmHWM`), where the system tells it (Linux).
pub fn peak_rss_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

/// The aging-out view of a status report: per instance and media type, the seconds until the
/// oldest uncovered bucket inside the horizon leaves it (the whole horizon when nothing is
/// uncovered), and whether the aging-out alert is raised.
pub fn render_headroom(command: &str, report: &crate::status::StatusReport) -> String {
    let mut out = String::new();
    let samples: Vec<(Vec<(&str, String)>, f64)> = report
        .series
        .iter()
        .map(|s| {
            (
                vec![
                    ("command", command.to_string()),
                    ("instance_id", s.instance_id.clone()),
                    ("media_type", s.media_type.to_string()),
                ],
                s.headroom_secs(report.horizon_ms, report.now_ms) as f64,
            )
        })
        .collect();
    family(
        &mut out,
        "ccc_etl_horizon_headroom_seconds",
        "Seconds until the oldest uncovered bucket leaves the API's 180-day horizon.",
        &samples,
    );
    family(
        &mut out,
        "ccc_etl_aging_alert",
        "1 when uncovered time leaves the horizon within the alert period.",
        &[(
            vec![("command", command.to_string())],
            f64::from(u8::from(report.alert)),
        )],
    );
    out
}

/// The `ccc_etl_last_success_timestamp_seconds` of `command` in an earlier metrics file.
pub fn last_success_in(text: &str, command: &str) -> Option<DateTime<Utc>> {
    let prefix = format!(
        "ccc_etl_last_success_timestamp_seconds{{command=\"{}\"}} ",
        esc(command)
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|secs| DateTime::from_timestamp(secs as i64, 0))
}

/// Writes `text` to `path` atomically ([`crate::atomic::write_atomic`]).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    crate::atomic::write_atomic(path, |mut f| f.write_all(text.as_bytes()).map(|_| f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let mut s = RunSummary {
            windows_ok: 3,
            retries: 2,
            revisions: 5,
            ..Default::default()
        };
        s.responses_by_code.insert("Throttling.User".into(), 4);
        s.sinks.insert(
            "postgres".into(),
            crate::sink::CommitStats {
                inserted: 70,
                revised: 2,
                unchanged: 0,
            },
        );
        s.rows.insert("inbound_trend".into(), 72);
        let t = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let text = render("night\"ly", &s, 0, t, Some(t));
        assert!(
            text.contains("ccc_etl_windows{command=\"night\\\"ly\",status=\"ok\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("ccc_etl_rows{command=\"night\\\"ly\",table=\"inbound_trend\"} 72\n")
        );
        assert!(text.contains(
            "ccc_etl_sink_rows{command=\"night\\\"ly\",sink=\"postgres\",outcome=\"revised\"} 2\n"
        ));
        assert!(!text.contains("ccc_etl_rows{command=\"night\\\"ly\",sink="));
        assert!(
            text.contains("ccc_etl_requests{command=\"night\\\"ly\",code=\"Throttling.User\"} 4\n")
        );
        assert!(text.contains("ccc_etl_revisions{command=\"night\\\"ly\"} 5\n"));
        assert!(text.contains(
            "ccc_etl_last_success_timestamp_seconds{command=\"night\\\"ly\"} 1800000000\n"
        ));
        assert!(text.contains("# TYPE ccc_etl_quality_violations gauge\n"));
        // This test process has touched at least a megabyte, and less than it has memory.
        let peak = text
            .lines()
            .find_map(|l| l.strip_prefix("ccc_etl_peak_rss_bytes{command=\"night\\\"ly\"} "))
            .expect("the peak RSS family")
            .parse::<f64>()
            .unwrap();
        assert!((1e6..64e9).contains(&peak), "{peak}");
    }

    #[test]
    fn the_last_success_is_read_back_from_an_earlier_file() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let text = render("nightly", &RunSummary::default(), 0, t, Some(t));
        assert_eq!(last_success_in(&text, "nightly"), Some(t));
        assert_eq!(last_success_in(&text, "backfill"), None);
        assert_eq!(last_success_in("", "nightly"), None);
    }

    #[test]
    fn the_file_is_replaced_atomically_and_no_temporary_file_remains() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ccc_etl.prom");
        write_atomic(&p, "a 1\n").unwrap();
        write_atomic(&p, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
