//! Months of nights: the nightly job over 400 simulated days (the clock is injected) against the
//! emulator, with random fault rates every night and outages of random length, among them one
//! long enough to raise the aging-out alert and one longer than the 180-day horizon. After every
//! night, `status` (its coverage report) must raise the alert exactly when uncovered time is
//! about to leave the horizon; what aged out during the longest outage is listed as lost; at the
//! end both sinks hold every bucket that was inside the horizon on a night a run happened,
//! exactly once, with the emulator's final values where they could still be fetched.
//!
//! `CCC_ETL_NIGHTS=N` runs another number of nights; `CCC_ETL_NIGHTS_SEED` another seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::common::sinks::{parquet_contents, pg_contents};
use crate::common::*;
use ccc_etl::ccc::emulator::Faults;
use ccc_etl::ccc::emulator::data::DataModel;
use ccc_etl::commands::{coverage_report, nightly_request, open_sinks};
use ccc_etl::config::{ParquetConfig, PostgresConfig, SchemaName, SignatureVersion};
use ccc_etl::coord::{Coordinator, LeaseSettings};
use ccc_etl::pipeline::NowFn;
use ccc_etl::record::MediaType;
use ccc_etl::sink::parquet::{Layout, Root};
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use sqlx::Row;

const REVISE_MS: i64 = 6 * H;

const LEASES: LeaseSettings = LeaseSettings {
    lease: std::time::Duration::from_secs(60),
    heartbeat: std::time::Duration::from_secs(20),
};

/// A pool whose sessions work in the schema `ccc`, as a worker's do.
async fn schema_pool(url: &str) -> sqlx::PgPool {
    use std::str::FromStr;
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", "ccc")]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .unwrap()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Which nights have no run: two long outages (one ends inside the alert period of the horizon,
/// one lasts beyond the horizon) and random short ones.
fn outages(nights: usize, rng: &mut impl Rng) -> Vec<bool> {
    let mut off = vec![false; nights];
    let mut mark = |from: usize, len: usize| {
        for o in off.iter_mut().skip(from).take(len) {
            *o = true;
        }
    };
    // Scaled to the number of nights; at 400: 176 nights (the alert fires on its last days, then
    // the run recovers everything) and 184 nights (4 days age out for good).
    let scale = |n: usize| n * nights / 400;
    mark(scale(20), 176.min(nights / 3));
    mark(scale(205), 184.min(nights / 2));
    let mut n = 0;
    while n < nights {
        if rng.random::<f64>() < 0.04 {
            let len = rng.random_range(1..=12);
            mark(n, len);
            n += len + 1;
        } else {
            n += 1;
        }
    }
    off[0] = false;
    off[nights - 1] = false;
    off
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_nights_with_faults_and_outages_keep_every_bucket_once_and_alert_on_time() {
    let nights = env_or("CCC_ETL_NIGHTS", 400) as usize;
    let seed = env_or("CCC_ETL_NIGHTS_SEED", 20261127);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let off = outages(nights, &mut rng);
    let alert_days = 7u32;

    // Night 0 is `nights` days ago at 02:10 UTC; each night starts within an hour of that.
    let first =
        (crate::common::now().timestamp_millis() / DAY - nights as i64) * DAY + 2 * H + 10 * 60_000;
    let clock = Arc::new(AtomicI64::new(first));
    let now: NowFn = {
        let c = clock.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    };
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut model: Option<DataModel> = None;
    // What the test knows: the end of the last run, and the spans runs covered.
    let mut last_run: Option<i64> = None;
    let mut covered: Vec<(i64, i64)> = vec![];
    let (mut alerts, mut runs, mut failed_nights) = (0, 0, 0);
    let (mut planned_windows, mut cfg_margin_ms) = (0, 0);
    for (night, &outage) in off.iter().enumerate() {
        let now_ms = first + night as i64 * DAY + rng.random_range(0..H);
        clock.store(now_ms, Ordering::SeqCst);
        let mut opts = options(&["ccc-a"]);
        opts.revise_ms = REVISE_MS;
        let c = clock.clone();
        opts.clock = Arc::new(move || {
            DateTime::<Utc>::from_timestamp_millis(c.load(Ordering::SeqCst)).unwrap()
        });
        // Tonight's weather.
        opts.faults = Faults {
            throttled: rng.random_range(0.0..0.1),
            unavailable: rng.random_range(0.0..0.08),
            internal_error: rng.random_range(0.0..0.06),
            truncated: rng.random_range(0.0..0.04),
            seed: rng.random(),
            ..Faults::default()
        };
        model.get_or_insert(opts.data_model());
        let emu = start(opts).await;
        let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
        cfg.source.max_attempts = 10;
        cfg.source.backoff_base_ms = 1;
        cfg.source.backoff_max_ms = 5;
        cfg.pipeline.aging_alert_days = alert_days;
        cfg.postgres = Some(PostgresConfig {
            url: Some(SecretString::from(db.url.clone())),
            schema: SchemaName::parse("ccc").unwrap(),
        });
        cfg.parquet = Some(ParquetConfig::at(dir.path().to_path_buf()));
        if !outage {
            let (sinks, ledger) = open_sinks(&cfg).await.unwrap();
            // As a worker of a job in PostgreSQL: its windows are leases, and each run deletes
            // the leases behind the horizon.
            let worker = Coordinator::register(schema_pool(&db.url).await, "nightly", LEASES)
                .await
                .unwrap();
            let summary = engine(&cfg, sinks, ledger, now.clone())
                .with_coordinator(worker.clone())
                .run(&nightly_request(&cfg, vec!["ccc-a".into()], now_ms))
                .await
                .unwrap();
            worker.stop().await.unwrap();
            planned_windows += summary.windows_planned;
            let code = summary.exit_code();
            assert!(
                code == 0 || code == 3,
                "night {night}: {}",
                summary.render()
            );
            if code == 3 {
                failed_nights += 1;
            }
            cfg_margin_ms = cfg.pipeline.horizon_margin_ms();
            let from = ccc_etl::plan::horizon_ms(now_ms, cfg_margin_ms);
            covered.push((from.max(last_run.unwrap_or(from)), now_ms));
            last_run = Some(now_ms);
            runs += 1;
        }
        let report = coverage_report(&cfg, alert_days, now_ms).await.unwrap();
        // The uncovered time since the last run, against the alert period after the horizon.
        let gap = (last_run.unwrap(), now_ms);
        let zone = (
            report.horizon_ms,
            report.horizon_ms + alert_days as i64 * DAY,
        );
        let overlap = gap.1.min(zone.1) - gap.0.max(zone.0);
        if overlap > 2 * H {
            assert!(
                report.alert,
                "night {night}: the alert is due: {}",
                report.render()
            );
            alerts += 1;
        } else if overlap <= 0 && failed_nights == 0 {
            assert!(
                !report.alert,
                "night {night}: no alert is due: {}",
                report.render()
            );
        }
        // Time that left the horizon uncovered is listed as lost, never silently missing.
        if gap.0 < report.horizon_ms - H {
            let lost = &report.series[0].lost_gaps;
            assert!(
                lost.iter()
                    .any(|s| s.start_ms <= gap.0 + H && s.end_ms >= report.horizon_ms - H),
                "night {night}: the aged-out gap is reported as lost: {}",
                report.render()
            );
        }
    }
    assert!(
        alerts >= 3,
        "the long outage raised the alert ({alerts} nights)"
    );
    let final_now = clock.load(Ordering::SeqCst);
    let model = model.unwrap();

    // Both sinks hold the same rows, each bucket once (PostgreSQL by its key; Parquet checked
    // against it row for row).
    let pool = db.pool().await;
    let pg = pg_contents(&pool).await;
    let pq = parquet_contents(&Root::Local(Layout::new(dir.path()))).await;
    assert_eq!(
        pg.len(),
        pq.len(),
        "Parquet holds each PostgreSQL row once, no more"
    );
    let strip = |rows: &[String]| -> Vec<String> {
        let mut v: Vec<String> = rows
            .iter()
            .map(|r| {
                r.split('|')
                    .filter(|f| !f.starts_with("dt="))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        v.sort();
        v
    };
    let pg_rows = strip(&pg);
    let mut pq_rows: Vec<String> = strip(&pq)
        .into_iter()
        .map(|r| r.replace(['[', ']'], "").replace(", ", "|"))
        .collect();
    pq_rows.sort();
    assert_eq!(pg_rows, pq_rows, "both sinks hold the same rows");

    // Every hour a run covered is present; where it could still be fetched once final, it holds
    // the emulator's final value.
    let stored: BTreeMap<i64, i64> = sqlx::query(
        "SELECT (extract(epoch FROM stats_time) * 1000)::bigint AS t, total_calls FROM ccc.inbound_trend \
         WHERE instance_id = 'ccc-a' AND media_type = 'Audio'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<i64, _>("t"), r.get::<i64, _>("total_calls")))
    .collect();
    let horizon = ccc_etl::plan::horizon_ms(final_now, 0);

    // The leases table holds about a horizon's worth of windows, not every night's: nothing
    // that ends behind the last run's horizon is left.
    let (leases, oldest_end): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), min(end_ms) FROM ccc.leases")
            .fetch_one(&pool)
            .await
            .unwrap();
    let last_horizon = ccc_etl::plan::horizon_ms(last_run.unwrap(), cfg_margin_ms);
    assert!(
        oldest_end.is_some_and(|e| e > last_horizon),
        "a lease behind the horizon is left: {oldest_end:?} <= {last_horizon}"
    );
    // Early nights queued windows that are now behind the horizon: they were deleted.
    assert!(
        covered.first().is_some_and(|(_, end)| *end < last_horizon),
        "a run happened more than a horizon before the last one"
    );
    let bound = 2 * (180 + 7);
    assert!(
        leases <= bound,
        "{leases} leases after {nights} nights ({planned_windows} windows planned; bound {bound})"
    );
    let mut checked = 0;
    for (from, to) in &covered {
        let mut t = (from + H - 1) / H * H;
        while t + H <= *to {
            let got = stored
                .get(&t)
                .unwrap_or_else(|| panic!("bucket {t} was covered by a run and is missing"));
            if t >= horizon + DAY && t + H + REVISE_MS <= final_now - 3 * DAY {
                let want = model
                    .rows_at("ccc-a", MediaType::Audio, t, final_now)
                    .inbound
                    .total_calls;
                assert_eq!(*got, want, "bucket {t}: the final value");
                checked += 1;
            }
            t += H;
        }
    }
    assert!(
        checked > 100 * 24,
        "{checked} buckets checked against final values"
    );
    eprintln!(
        "{nights} nights: {runs} runs, {} nights without a run, {alerts} alert nights, \
         {failed_nights} nights with failed windows, {} buckets stored, {checked} checked final",
        nights - runs,
        stored.len()
    );
    pool.close().await;
    db.drop_db().await;
}
