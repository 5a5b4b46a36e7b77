//! What a `backfill` or `nightly` run tells the `[alerts]` targets: a failure, data about to age
//! out, fenced commits, and drift the earlier runs had not met.

use crate::alerts::Alert;
use crate::config::AlertEvent;
use crate::error::{EXIT_BUSY, EXIT_OK};
use crate::pipeline::RunSummary;
use crate::record::Drift;
use crate::status::StatusReport;

/// The alerts of a run that ended with a summary and exit `code`; `status` is the coverage
/// report made after a nightly run, `seen_before` the drift earlier runs met.
pub(super) fn for_run(
    command: &str,
    code: u8,
    summary: &RunSummary,
    status: Option<&StatusReport>,
    seen_before: &Drift,
) -> Vec<Alert> {
    let mut out = vec![];
    if code != EXIT_OK && code != EXIT_BUSY {
        let failed = &summary.windows_failed;
        let mut text = format!(
            "{} window(s) ok, {} failed; the next run retries them.",
            summary.windows_ok,
            failed.len()
        );
        if let Some(f) = failed.first() {
            text.push_str(&format!("\nFirst: {}: {}", f.key, f.error));
        }
        out.push(Alert {
            event: AlertEvent::RunFailed,
            title: format!("ccc-etl {command} left failed windows (exit {code})"),
            text,
        });
    }
    if let Some(report) = status.filter(|r| r.alert) {
        let series: Vec<String> = report
            .series
            .iter()
            .filter(|s| !s.aging_out.is_empty())
            .map(|s| {
                format!(
                    "{}/{} from {}",
                    s.instance_id, s.media_type, s.aging_out[0].start
                )
            })
            .collect();
        out.push(Alert {
            event: AlertEvent::Aging,
            title: format!(
                "ccc-etl: data not yet fetched leaves the API's 180-day horizon within {} days",
                report.alert_days
            ),
            text: format!(
                "Uncovered and ageing out: {}.\nRun the nightly job (or a backfill) before then.",
                series.join(", ")
            ),
        });
    }
    if summary.fenced_commits > 0 {
        out.push(Alert {
            event: AlertEvent::Fenced,
            title: format!(
                "ccc-etl: {} commit(s) refused: another worker had taken the windows over",
                summary.fenced_commits
            ),
            text: "A worker was stopped past its lease (a frozen VM, a long pause). Nothing was \
                   written twice; look for what stops the worker."
                .into(),
        });
    }
    out.extend(new_drift(&summary.drift, seen_before));
    out
}

/// The drift of this run that earlier runs had not met, as one alert.
fn new_drift(drift: &Drift, seen_before: &Drift) -> Option<Alert> {
    let new: Vec<String> = (drift.unknown.keys())
        .filter(|k| !seen_before.unknown.contains_key(*k))
        .map(|k| format!("new field {k}"))
        .chain(
            (drift.missing.iter())
                .filter(|k| !seen_before.missing.contains(*k))
                .map(|k| format!("field no longer sent: {k}")),
        )
        .collect();
    (!new.is_empty()).then(|| Alert {
        event: AlertEvent::Drift,
        title: "ccc-etl: the API's response changed".into(),
        text: format!(
            "{}.\nSee docs/operating.md, \"Schema drift\".",
            new.join("; ")
        ),
    })
}

/// The alert of a run that stopped with an error (exit `code`).
pub(super) fn for_failure(command: &str, code: u8, error: &anyhow::Error) -> Vec<Alert> {
    if code == EXIT_BUSY {
        return vec![];
    }
    vec![Alert {
        event: AlertEvent::RunFailed,
        title: format!("ccc-etl {command} failed (exit {code})"),
        text: format!("{error:#}"),
    }]
}
