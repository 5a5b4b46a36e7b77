//! What commands print on stdout. A closed pipe (`ccc-etl plan | head -2`) ends the output
//! quietly instead of panicking: the rest is dropped, the command keeps its exit code.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Makes what runs print JSON lines (`--log-format json`), so a log file holds only JSON.
pub fn set_json_lines(on: bool) {
    JSON_LINES.store(on, Ordering::Relaxed);
}

static RUN: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// Remembers the process's run (id, command), so its last words carry them too.
pub fn set_run(run_id: &str, command: &str) {
    let _ = RUN.set((run_id.to_string(), command.to_string()));
}

/// The process's run (id, command), once it has one.
pub fn run() -> Option<&'static (String, String)> {
    RUN.get()
}

/// Whether runs print JSON lines.
pub fn json_lines() -> bool {
    JSON_LINES.load(Ordering::Relaxed)
}

/// Writes `text` to stdout and flushes; a closed pipe is not an error.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `println!` for command output: a closed pipe ends it quietly (see [`print()`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
