//! The binary as a user runs it: `plan` for the ranges that matter, and bad input that must give
//! one clear line and exit code 2.

use crate::common;
use crate::common::{ConfigToml, DAY, H};

use std::path::Path;
use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use serde_json::Value;

fn bin() -> Command {
    let mut c = crate::common::ccc_etl_std_cmd();
    c.env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        .env_remove("ALIBABA_CLOUD_SECURITY_TOKEN")
        .env_remove("DATABASE_URL")
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
        .env("NO_COLOR", "1");
    c
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// Two instances behind an endpoint nothing listens on, a relative root.
fn base(tz: &str) -> ConfigToml {
    ConfigToml::new("http://127.0.0.1:9", &["ccc-a", "ccc-b"])
        .set("pipeline", "timezone", tz)
        .parquet("wh")
}

fn base_config(tz: &str) -> String {
    base(tz).text()
}

fn plan_json(tz: &str, from: &str, to: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &base_config(tz));
    let out = bin()
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "plan",
            "--from",
            from,
            "--to",
            to,
            "--instance",
            "ccc-a",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn spans(v: &Value) -> Vec<(i64, i64)> {
    v["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["start_ms"].as_i64().unwrap(),
                w["end_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn now() -> i64 {
    crate::common::now().timestamp_millis()
}

#[test]
fn plan_of_one_hour_is_one_window() {
    let to = now() / H * H - DAY;
    let v = plan_json("UTC", &(to - H).to_string(), &to.to_string());
    assert_eq!(spans(&v), vec![(to - H, to)]);
    assert_eq!(v["windows"][0]["instance_id"], "ccc-a");
    assert_eq!(v["windows"][0]["media_type"], "Audio");
    assert_eq!(v["lost"].as_array().unwrap().len(), 0);
}

#[test]
fn plan_of_exactly_7_days_is_one_window_and_8_days_two() {
    let to = now() / DAY * DAY - DAY;
    assert_eq!(
        spans(&plan_json(
            "UTC",
            &(to - 7 * DAY).to_string(),
            &to.to_string()
        )),
        vec![(to - 7 * DAY, to)]
    );
    let s = spans(&plan_json(
        "UTC",
        &(to - 8 * DAY).to_string(),
        &to.to_string(),
    ));
    assert_eq!(s, vec![(to - 8 * DAY, to - DAY), (to - DAY, to)]);
}

#[test]
fn plan_of_180_and_400_days_is_clamped_to_the_horizon_and_reports_the_loss() {
    for days in [180, 400] {
        let v = plan_json(
            "Asia/Shanghai",
            &(now() - days * DAY).to_string(),
            &(now() - DAY).to_string(),
        );
        let s = spans(&v);
        let horizon = v["horizon_ms"].as_i64().unwrap();
        assert_eq!(
            s.first().unwrap().0,
            horizon,
            "{days}: starts at the horizon"
        );
        assert!(s.iter().all(|(a, b)| b - a <= 7 * DAY));
        assert!(s.windows(2).all(|w| w[0].1 == w[1].0));
        let expected = ((s.last().unwrap().1 - horizon) + 7 * DAY - 1) / (7 * DAY);
        assert_eq!(s.len() as i64, expected, "{days}: minimal");
        let lost = v["lost"].as_array().unwrap();
        assert_eq!(lost.len(), 1, "{days}");
        assert_eq!(lost[0]["end_ms"].as_i64().unwrap(), horizon);
        // Every inner boundary is a Shanghai midnight (16:00 UTC).
        for (a, _) in &s[1..] {
            assert_eq!(
                a.rem_euclid(DAY),
                16 * H,
                "{days}: {}",
                DateTime::<Utc>::from_timestamp_millis(*a).unwrap()
            );
        }
    }
}

#[test]
fn plan_trims_the_future_to_now() {
    let start = now() - DAY;
    let v = plan_json("UTC", &start.to_string(), &(now() + 3 * DAY).to_string());
    let s = spans(&v);
    assert_eq!(s.len(), 1);
    assert!(s[0].1 <= now() && s[0].1 > now() - 60_000);
    assert!(v["future_trimmed"].is_array());
}

#[test]
fn plan_in_a_daylight_saving_zone_cuts_at_local_midnights() {
    // New York from 2026-10-25 through 2026-11-10, planned as of 2026-12-04 (a fixed clock: the
    // case stays inside the horizon whenever the test runs). 2026-11-01 is the fall-back day
    // (25 hours); boundaries stay on local midnights.
    let ny: chrono_tz::Tz = chrono_tz::America::New_York;
    let midnight = |d: &str| {
        ccc_etl::plan::local_day_start(
            ny,
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap(),
        )
    };
    let mut config =
        ccc_etl::config::Config::for_emulator("http://127.0.0.1:9", vec!["ccc-a".into()]);
    config.pipeline.timezone = ny;
    let (from, to) = (midnight("2026-10-25"), midnight("2026-11-11"));
    let req = common::request(&["ccc-a"], from, to);
    let now = "2026-12-04T12:00:00Z"
        .parse::<DateTime<Utc>>()
        .unwrap()
        .timestamp_millis();
    let plan = ccc_etl::pipeline::plan_for(&config, &req, now);
    assert!(plan.lost.is_empty(), "{:?}", plan.lost);
    let s: Vec<(i64, i64)> = plan
        .windows
        .iter()
        .map(|w| (w.start_ms, w.end_ms))
        .collect();
    assert_eq!(s.first().map(|w| w.0), Some(from));
    assert_eq!(s.last().map(|w| w.1), Some(to));
    assert!(s.windows(2).all(|w| w[0].1 == w[1].0), "contiguous: {s:?}");
    for (a, _) in &s[1..] {
        let local = DateTime::<Utc>::from_timestamp_millis(*a)
            .unwrap()
            .with_timezone(&ny);
        assert_eq!(local.format("%H:%M").to_string(), "00:00", "{local}");
    }
    assert!(s.iter().all(|(a, b)| b - a <= 7 * DAY));
    assert_eq!(s.len(), 3, "17 local days need 3 windows: {s:?}");
    // The window holding the fall-back day is an hour longer than its local days.
    assert!(s.iter().any(|(a, b)| (b - a) % DAY == H), "{s:?}");
}

fn run_bad(config: Option<&str>, args: &[&str], with_creds: bool) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut c = bin();
    c.current_dir(dir.path());
    if let Some(body) = config {
        let p = write_config(dir.path(), body);
        c.args(["--config", p.to_str().unwrap()]);
    }
    if with_creds {
        c.env("ALIBABA_CLOUD_ACCESS_KEY_ID", "id")
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "very-secret-value");
    }
    let out = c.args(common::args(args)).output().unwrap();
    assert!(
        !dir.path().join("wh").exists(),
        "nothing written for {args:?}"
    );
    out
}

#[test]
fn bad_input_gives_one_clear_line_and_exit_code_2() {
    let ok = base_config("UTC");
    let with = |c: ConfigToml| Some(c.text());
    let cases: Vec<(Option<String>, Vec<&str>, bool, &str)> = vec![
        (
            Some("[pipeline\n".into()),
            vec!["plan", "--from", "2026-11-01"],
            true,
            "pipeline.toml:1:",
        ),
        (
            with(base("UTC").set("parquet", "colour", 1)),
            vec!["plan", "--from", "2026-11-01"],
            true,
            "unknown field `colour`",
        ),
        (
            with(base("Mars/Base")),
            vec!["plan", "--from", "2026-11-01"],
            true,
            "unknown time zone",
        ),
        (
            with(base("UTC").set("source", "max_qps", 0)),
            vec!["plan", "--from", "2026-11-01"],
            true,
            "must be > 0",
        ),
        (
            Some(ok.clone()),
            vec!["backfill", "--from", "2026-11-01"],
            false,
            "no credentials found",
        ),
        (
            Some(ok.clone()),
            vec!["plan", "--from", "2026-11-05", "--to", "2026-11-01"],
            true,
            "is not before --to",
        ),
        (
            Some(ok.clone()),
            vec!["plan", "--from", "2026-02-30"],
            true,
            "not a real calendar date",
        ),
        (
            Some(ok.clone()),
            vec!["plan", "--from", "last tuesday"],
            true,
            "expected a date YYYY-MM-DD",
        ),
        (
            Some(ok.clone()),
            vec!["plan", "--from", "2026-11-01", "--instance", "ccc-zzz"],
            true,
            "not a configured instance",
        ),
        (
            with(base("UTC").instances(&[])),
            vec!["plan", "--from", "2026-11-01"],
            true,
            "instance list is empty",
        ),
        (
            with(base("UTC").set("source", "endpoint", "http://ccc.example.com")),
            vec!["plan", "--from", "2026-11-01"],
            true,
            "plain HTTP",
        ),
        (
            None,
            vec!["plan", "--from", "2026-11-01"],
            true,
            "cannot read config file",
        ),
    ];
    for (cfg, args, creds, expect) in cases {
        let out = run_bad(cfg.as_deref(), &args, creds);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in {stderr:?}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {stderr:?}"
        );
        assert!(!stderr.contains("very-secret-value"));
    }
}

#[test]
fn help_shows_an_example_for_every_subcommand() {
    for sub in [
        "backfill", "nightly", "plan", "status", "verify", "migrate", "emulator", "demo",
    ] {
        let out = bin().args([sub, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example:") && text.contains(&format!("ccc-etl {sub}")),
            "{sub}: {text}"
        );
    }
}

#[test]
fn the_demo_backfills_into_parquet_with_no_credentials_and_no_config() {
    let dir = tempfile::tempdir().unwrap();
    // Output to a pipe, as under cron or systemd, and no NO_COLOR: still no colour codes.
    let out = bin()
        .current_dir(dir.path())
        .env_remove("NO_COLOR")
        .args(["demo", "--days", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !stdout.contains('\x1b'),
        "no ANSI escapes in a pipe: {stderr:?}"
    );
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
    assert!(stdout.contains(
        "read_parquet('ccc-etl-demo/inbound_trend/*/*.parquet', hive_partitioning = true)"
    ));
    assert!(
        !dir.path().join("warehouse").exists(),
        "the demo keeps off init's default root"
    );
    let parts = std::fs::read_dir(dir.path().join("ccc-etl-demo/inbound_trend"))
        .unwrap()
        .count();
    assert!(parts >= 3, "one partition per day at least: {parts}");
    // The report of the demo's days: all covered (3 instances x the 3 days and today), no
    // aging-out alert for a job that never runs again.
    assert!(
        stdout.contains("wrote ccc-etl-demo-report.html"),
        "{stdout}"
    );
    let page = std::fs::read_to_string(dir.path().join("ccc-etl-demo-report.html")).unwrap();
    assert!(
        page.contains("data-state=\"covered\" data-days=\"12\""),
        "{page:.3000}"
    );
    assert!(page.contains("data-state=\"missing\" data-days=\"0\""));
    assert!(!page.contains("aging-alert"), "no aging-out alert");
    assert_eq!(
        page.matches("<tr data-series=").count(),
        3,
        "three instances"
    );
    // What the demo suggests next, `status` and `report`, without a configuration: how to make
    // one.
    for cmd in ["status", "report"] {
        let out = bin().current_dir(dir.path()).arg(cmd).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {text}");
        assert!(
            text.contains("pipeline.toml") && text.contains("write one with `ccc-etl init`"),
            "{cmd}: {text}"
        );
    }
}

#[test]
fn the_emulator_prints_its_address_first_and_serves_until_terminated() {
    use std::io::{BufRead, BufReader};
    let mut child = bin()
        .args(["emulator", "--listen", "127.0.0.1:0", "--instances", "a,b"])
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "k")
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let stats = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(stats.is_ok());
    common::send_sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");
}

#[tokio::test]
async fn an_unreachable_postgres_fails_at_start_before_any_api_request() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set(
            "postgres",
            "url",
            "postgres://postgres:pw-secret@127.0.0.1:1/nowhere",
        )
        .write_in(dir.path());
    let out = crate::common::ccc_etl_cmd()
        .arg("--config")
        .arg(&cfg)
        .args(common::args(&["backfill", "--from", "2026-11-01"]))
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/nowhere"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pg_ctlcluster"),
        "says how to start one: {stderr}"
    );
    assert!(!stderr.contains("pw-secret") && !stderr.contains(common::SECRET));
    assert_eq!(
        emu.stats().await.unwrap().requests,
        0,
        "no API request was sent"
    );
}

#[tokio::test]
async fn a_database_that_does_not_exist_is_named_as_such() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    // The server is up; the database in the URL is not there.
    let url = format!(
        "{}/ccc_etl_no_such_db_{}",
        common::pg_server(),
        std::process::id()
    );
    let cfg = ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("postgres", "url", url.as_str())
        .write_in(dir.path());
    for args in [&["check"][..], &["backfill", "--from", "2026-11-01"]] {
        let args = common::args(args);
        // `check` asks the API too (its credentials line); a backfill sends nothing.
        let requests = emu.stats().await.unwrap().requests;
        let out = crate::common::ccc_etl_cmd()
            .arg("--config")
            .arg(&cfg)
            .args(&args)
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", common::SECRET)
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains("the database does not exist"),
            "{args:?}: {text}"
        );
        assert!(!text.contains("is the server running"), "{args:?}: {text}");
        if args[0] == "backfill" {
            assert_eq!(emu.stats().await.unwrap().requests, requests);
        }
    }
}

#[tokio::test]
async fn the_demo_writes_to_postgres_too_when_database_url_is_set() {
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let out = crate::common::ccc_etl_cmd()
        .current_dir(dir.path())
        .args(["-q", "demo", "--days", "2"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sink postgres:") && stdout.contains("sink parquet:"),
        "{stdout}"
    );
    let pool = db.pool().await;
    assert!(
        stdout.contains("schema ccc_demo"),
        "the demo says where it writes: {stdout}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ccc_demo.inbound_trend")
        .fetch_one(&pool)
        .await
        .unwrap();
    let expected = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("inbound_trend"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap();
    assert_eq!(n, expected);
    assert!(n >= 3 * 48);
    let production: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'ccc'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(production, 0, "the production schema is left alone");
    pool.close().await;

    // `migrate` with only DATABASE_URL and no configuration file, as the README shows it.
    let out = crate::common::ccc_etl_cmd()
        .current_dir(dir.path())
        .args(["migrate"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("migrations applied: schema ccc"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.drop_db().await;
}

#[test]
fn a_closed_pipe_ends_plan_and_status_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &base_config("UTC"));
    for args in [
        &["plan", "--from", "2026-06-01", "--to", "2026-11-01"][..],
        &["status"],
    ] {
        let args = common::args(args);
        let mut child = bin()
            .arg("--config")
            .arg(&cfg)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written, as `| head -0` would.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
        assert!(
            out.status.code().is_some_and(|c| c == 0 || c == 4),
            "{args:?}: {stderr}"
        );
    }
}

async fn run_async(args: &[&str], secret: &str, db_url: &str) -> Output {
    crate::common::ccc_etl_cmd()
        .args(args)
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)
        .env("DATABASE_URL", db_url)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap()
}

#[test]
fn init_says_what_the_configuration_needs_next_and_writes_clean_comments() {
    let dir = tempfile::tempdir().unwrap();
    let init = |name: &str, args: &[&str]| {
        let out = bin()
            .current_dir(dir.path())
            .args(["--config", name, "init"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            std::fs::read_to_string(dir.path().join(name)).unwrap(),
        )
    };
    // The emulator's configuration: both instances it serves, its keys, and no DATABASE_URL yet.
    let (said, text) = init("emulator.toml", &["--emulator"]);
    assert!(
        text.contains("instances = [\"ccc-test\", \"ccc-b\"]"),
        "{text}"
    );
    for needed in [
        "export DATABASE_URL=postgres://",
        "delete the [postgres] section",
        "ALIBABA_CLOUD_ACCESS_KEY_ID=demo ALIBABA_CLOUD_ACCESS_KEY_SECRET=demo-secret ccc-etl emulator --listen 127.0.0.1:8080 --instances ccc-test,ccc-b",
        "export ALIBABA_CLOUD_ACCESS_KEY_ID=demo",
        "ccc-etl --config emulator.toml check",
    ] {
        assert!(said.contains(needed), "{needed:?} in {said}");
    }
    // The endpoint line is whole: one comment, and the template's continuation line gone.
    let endpoint: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("127.0.0.1:8080"))
        .collect();
    assert_eq!(endpoint.len(), 1, "{text}");
    assert!(endpoint[0].starts_with("endpoint = \"http://127.0.0.1:8080\"  # "));
    assert_eq!(endpoint[0].matches('#').count(), 1, "{}", endpoint[0]);
    assert!(
        !text.contains("#                          # plain HTTP only"),
        "{text}"
    );
    // A real instance: credentials to export, instances as given.
    let (said, text) = init("real.toml", &["--instances", "ccc-prod-1,ccc-prod-2"]);
    assert!(text.contains("instances = [\"ccc-prod-1\", \"ccc-prod-2\"]"));
    assert!(
        said.contains("credentials: export ALIBABA_CLOUD_ACCESS_KEY_ID"),
        "{said}"
    );
    assert!(!said.contains("emulator"), "{said}");
}

#[tokio::test]
async fn init_writes_a_configuration_and_check_verifies_it_without_writing_anything() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let db = common::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    let c = cfg.to_str().unwrap();
    let out = run_async(
        &["--config", c, "init", "--instances", "ccc-a", "--emulator"],
        common::SECRET,
        &db.url,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("instances = [\"ccc-a\"]") && text.contains("http://127.0.0.1:8080"),
        "{text}"
    );
    assert!(
        text.contains("# Credentials are never read from this file"),
        "commented"
    );
    let again = run_async(&["--config", c, "init"], common::SECRET, &db.url).await;
    assert_eq!(again.status.code(), Some(2), "never overwrites");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);

    std::fs::write(&cfg, text.replace("http://127.0.0.1:8080", &emu.endpoint())).unwrap();
    let out = run_async(&["--config", c, "check"], common::SECRET, &db.url).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["ok    credentials", "ok    postgres", "ok    parquet"] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(
        !dir.path().join("warehouse").exists(),
        "no root was created"
    );
    let pool = db.pool().await;
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'ccc'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(schemas, 0, "no schema was created");
    pool.close().await;

    let wrong = run_async(&["--config", c, "check"], "not-the-secret", &db.url).await;
    let stdout = String::from_utf8_lossy(&wrong.stdout);
    assert_eq!(wrong.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  credentials") && stdout.contains("SignatureDoesNotMatch"),
        "{stdout}"
    );
    assert!(!stdout.contains("not-the-secret"));
    db.drop_db().await;
}

/// The README's order in one directory: `demo`, then a real configuration pointed at the demo's
/// `./ccc-etl-demo`. The real run refuses the demo's root (exit 2, saying what to do) and writes
/// nothing into it; the demo refuses a pipeline's root the same way; a demo's own root takes
/// the demo again.
#[tokio::test]
async fn the_demo_and_a_real_pipeline_never_write_into_each_others_root() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let dir = tempfile::tempdir().unwrap();
    let demo = || {
        common::ccc_etl_cmd()
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .args(["-q", "demo", "--days", "2"])
            .output()
    };
    let out = demo().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let listing = |root: &Path| {
        let mut files: Vec<String> = walkdir(root);
        files.sort();
        files
    };
    let wh = dir.path().join("ccc-etl-demo");
    let before = listing(&wh);
    let cfg = dir.path().join("pipeline.toml");
    let backfill = || {
        common::ccc_etl_at(&cfg, None)
            .args(["backfill", "--from", "2026-11-20", "--to", "2026-11-21"])
            .output()
    };
    common::ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .parquet("ccc-etl-demo")
        .write(&cfg);
    let real = backfill().await.unwrap();
    let text = common::output_text(&real);
    assert_eq!(real.status.code(), Some(2), "{text}");
    assert!(
        text.contains("holds the sample data `ccc-etl demo` wrote")
            && text.contains("point `[parquet] root` at another directory"),
        "{text}"
    );
    assert_eq!(listing(&wh), before, "nothing written into the demo's root");
    // The demo again on its own root: fine, with PostgreSQL too (another ledger: the demo's
    // sample data belongs to no pipeline's ledger).
    let again = demo().await.unwrap();
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        common::output_text(&again)
    );
    let db = common::TestDb::create().await;
    let with_pg = common::ccc_etl_cmd()
        .current_dir(dir.path())
        .env("DATABASE_URL", &db.url)
        .args(["-q", "demo", "--days", "2"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        with_pg.status.code(),
        Some(0),
        "{}",
        common::output_text(&with_pg)
    );
    db.drop_db().await;

    // A pipeline's root: the demo refuses it.
    let real_root = dir.path().join("real");
    common::ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .parquet(real_root.display())
        .write(&cfg);
    let real = backfill().await.unwrap();
    assert_eq!(
        real.status.code(),
        Some(0),
        "{}",
        common::output_text(&real)
    );
    let before = listing(&real_root);
    let out = common::ccc_etl_cmd()
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .args(["-q", "demo", "--days", "2", "--parquet-root"])
        .arg(&real_root)
        .output()
        .await
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("holds a pipeline's data: `ccc-etl demo` never writes into it"),
        "{text}"
    );
    assert_eq!(
        listing(&real_root),
        before,
        "nothing written into the real root"
    );
}

/// A root records the ledger that writes it: a configuration whose ledger is another (a second
/// database) is refused and writes nothing; `adopt-root` takes the root over on purpose, and the
/// next run fills what the new ledger does not know. The first ledger is then the other one.
#[tokio::test]
async fn a_root_written_by_another_ledger_is_refused_until_adopted() {
    let emu = common::start(common::options(&["ccc-a"])).await;
    let (first, second) = (
        common::TestDb::create().await,
        common::TestDb::create().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    let wh = dir.path().join("wh");
    common::ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "max_qps", 500)
        .parquet(wh.display())
        .postgres()
        .write(&cfg);
    let run = |db: &common::TestDb, args: &[&str], code: i32| {
        let cmd = common::ccc_etl_at(&cfg, Some(&db.url))
            .args(common::args(args))
            .output();
        async move {
            let out = cmd.await.unwrap();
            let text = common::output_text(&out);
            assert_eq!(out.status.code(), Some(code), "{text}");
            text
        }
    };
    let backfill = ["backfill", "--from", "2026-11-20", "--to", "2026-11-22"];
    run(&first, &backfill, 0).await;
    let meta = std::fs::read_to_string(wh.join("_ccc_etl/root.json")).unwrap();
    assert!(meta.contains("\"ledger\": \"postgresql:"), "{meta}");
    let before = walkdir(&wh);

    let text = run(&second, &backfill, 2).await;
    assert!(
        text.contains("is written by another pipeline") && text.contains("ccc-etl adopt-root"),
        "{text}"
    );
    assert_eq!(walkdir(&wh), before, "nothing written");

    let text = run(&second, &["adopt-root"], 0).await;
    assert!(
        text.contains("is now written by the ledger postgresql:"),
        "{text}"
    );
    let text = run(&second, &["adopt-root"], 0).await;
    assert!(text.contains("is already this ledger's"), "{text}");
    run(&second, &backfill, 0).await;
    run(&second, &["verify"], 0).await;
    let text = run(&first, &backfill, 2).await;
    assert!(text.contains("is written by another pipeline"), "{text}");
    first.drop_db().await;
    second.drop_db().await;
}

/// Every file under `root`, relative, with its size.
fn walkdir(root: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let len = std::fs::metadata(&path).unwrap().len();
                out.push(format!(
                    "{} {len}",
                    path.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    out
}

/// `check` asks for every configured instance: a misspelled second id fails its own line with
/// the hint `backfill` gives, and the credentials stay ok.
#[tokio::test]
async fn check_tries_every_instance_and_names_an_unknown_one() {
    let emu = common::start(common::options(&["ccc-test"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    common::ConfigToml::new(&emu.endpoint(), &["ccc-test", "ccc-tset"])
        .parquet(dir.path().join("wh").display())
        .write(&cfg);
    let out = common::ccc_etl_at(&cfg, None)
        .arg("check")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
    assert!(stdout.contains("ok    credentials"), "{stdout}");
    assert!(
        stdout.contains("ok    instance     ccc-test answered at"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  instance     ccc-tset: the service has no CCC instance ccc-tset: fix its id in [pipeline] instances"),
        "{stdout}"
    );
}
