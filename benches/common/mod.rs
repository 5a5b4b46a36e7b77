//! What the end-to-end and object-storage benchmarks share: their settings from the
//! environment, min / median / max, and the table rows `bench/run.sh` collects.

/// The number in the variable `name`, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// min / median / max.
pub fn mmm(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Appends table rows to the file CCC_ETL_BENCH_REPORT names (`bench/run.sh` builds
/// `docs/benchmarks.md` from them).
pub fn report(rows: &str) {
    if let Ok(path) = std::env::var("CCC_ETL_BENCH_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(rows.as_bytes()).unwrap();
    }
}
