//! Progress: a bar on a terminal (windows, rows, requests/s, retries, ETA), periodic log lines
//! otherwise, nothing when quiet.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ccc::client::CccClient;

/// How progress is shown.
pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: Option<Duration>,
    started: Mutex<Instant>,
    last_log: Mutex<Instant>,
    total: AtomicU64,
    done: AtomicU64,
    rows: AtomicU64,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines every 10 s otherwise; `quiet` shows nothing.
    pub fn auto(quiet: bool) -> Self {
        if quiet {
            return Self::build(None, None);
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} windows  {msg}  eta {eta}")
                    .expect("valid template"),
            );
            Self::build(Some(bar), None)
        } else {
            Self::build(None, Some(Duration::from_secs(10)))
        }
    }

    /// No output at all (tests).
    pub fn hidden() -> Self {
        Self::build(None, None)
    }

    fn build(bar: Option<ProgressBar>, log_every: Option<Duration>) -> Self {
        Self {
            bar,
            log_every,
            started: Mutex::new(Instant::now()),
            last_log: Mutex::new(Instant::now()),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            rows: AtomicU64::new(0),
        }
    }

    /// The run has `total` windows.
    pub fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        *self.started.lock().expect("progress lock") = Instant::now();
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// One more window is finished (committed, failed or lost).
    pub fn window_done(&self, rows: u64, client: &CccClient) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let rows = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let stats = client.stats();
        let requests = stats.requests.load(Ordering::Relaxed);
        let retries = stats.retries.load(Ordering::Relaxed);
        let elapsed = self
            .started
            .lock()
            .expect("progress lock")
            .elapsed()
            .as_secs_f64()
            .max(1e-3);
        let msg = format!(
            "{rows} rows  {:.1} req/s  {retries} retries",
            requests as f64 / elapsed
        );
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(msg);
        } else if let Some(every) = self.log_every {
            let mut last = self.last_log.lock().expect("progress lock");
            if last.elapsed() >= every {
                *last = Instant::now();
                tracing::info!(
                    done,
                    total = self.total.load(Ordering::Relaxed),
                    "progress: {msg}"
                );
            }
        }
    }

    /// The run is over.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
