//! The Superset bundle (`superset/`) in a real Apache Superset: after a real backfill into
//! PostgreSQL, `superset/build_bundle.py` builds the ZIP, Superset (from PyPI, metadata in
//! SQLite under `target/superset-test/`) imports it, every chart's data asked from Superset's
//! own chart-data API equals the same figures computed here from the rows of the views, and
//! headless Chromium draws the dashboard with no chart in error (screenshot kept at
//! `target/superset-screenshots/dashboard.png`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use serde_json::Value;

use crate::common::{self, ConfigToml, TestDb, output_text};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The charts of the bundle, by name.
const CHARTS: [&str; 10] = [
    "Inbound calls",
    "Answer rate",
    "Outbound connect rate",
    "Calls per day",
    "Calls per week",
    "Peak logged-in agents per day",
    "Answer, abandonment and connect rates per day",
    "Inbound calls by hour of week",
    "Busiest hours",
    "Per instance",
];

/// A chart's rows: key columns joined by `|` -> the value columns (`None` for SQL NULL).
type Table = BTreeMap<String, Vec<Option<f64>>>;

/// The Python of a venv under `target/` with Apache Superset, as `superset/requirements.txt` pins it.
fn superset_python() -> PathBuf {
    let requirements = format!("{ROOT}/superset/requirements.txt");
    common::venv_python(
        "superset-venv",
        "import superset, psycopg2",
        &["-r", &requirements],
        "Apache Superset imports the bundle",
    )
}

/// A Superset home under `target/superset-test/`: its configuration (metadata in SQLite there;
/// anonymous visitors get the Admin role's rights, so that a headless browser can draw the
/// dashboard on this loopback-only server) and the environment to run it with.
struct Superset {
    home: PathBuf,
    bin: PathBuf,
    admin_password: String,
}

impl Superset {
    fn new() -> Superset {
        let python = superset_python();
        let home = Path::new(ROOT).join("target/superset-test");
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(
            home.join("superset_config.py"),
            format!(
                "SECRET_KEY = {:?}\nSQLALCHEMY_DATABASE_URI = {:?}\nAUTH_ROLE_PUBLIC = \"Public\"\n\
                 PUBLIC_ROLE_LIKE = \"Admin\"\nTALISMAN_ENABLED = False\n",
                uuid::Uuid::new_v4().to_string(),
                format!("sqlite:///{}", home.join("superset.db").display()),
            ),
        )
        .unwrap();
        Superset {
            bin: python.parent().unwrap().join("superset"),
            home,
            admin_password: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    fn cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.env("SUPERSET_CONFIG_PATH", self.home.join("superset_config.py"))
            .env("SUPERSET_HOME", &self.home)
            .current_dir(&self.home)
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) {
        let out = self.cmd().args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "superset {}: {}",
            args.join(" "),
            output_text(&out)
        );
    }
}

/// The bundle built by `superset/build_bundle.py` for `cfg`'s schema and the database at `url`
/// (given in `DATABASE_URL`, as a user gives it).
async fn build_bundle(cfg: &Path, url: &str, out: &Path) -> String {
    let built = tokio::process::Command::new("python3")
        .arg(format!("{ROOT}/superset/build_bundle.py"))
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .env("DATABASE_URL", url)
        .output()
        .await
        .unwrap();
    assert!(built.status.success(), "{}", output_text(&built));
    output_text(&built)
}

/// Superset's web server on `port`, once `/health` answers.
async fn serve(superset: &Superset, port: u16) -> tokio::process::Child {
    let log = std::fs::File::create(superset.home.join("server.log")).unwrap();
    let child = superset
        .cmd()
        .args(["run", "-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--with-threads")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/health");
    for _ in 0..240 {
        if reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(superset.home.join("server.log")).unwrap_or_default();
    panic!("Superset did not answer on {health} within 120 s: {log}");
}

/// A client of Superset's REST API, logged in as the admin.
struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn login(port: u16, password: &str) -> Api {
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let login: Value = http
            .post(format!("{base}/api/v1/security/login"))
            .json(&serde_json::json!({
                "username": "admin", "password": password, "provider": "db", "refresh": false
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("login: {login}"))
            .to_string();
        Api { base, http, token }
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    /// The rows of a chart's saved query, as Superset's chart-data API returns them.
    async fn chart_rows(&self, id: i64) -> Vec<Value> {
        let body = self.get(&format!("/api/v1/chart/{id}/data/")).await;
        let result = &body["result"][0];
        assert_eq!(result["status"], "success", "chart {id}: {result}");
        result["data"].as_array().unwrap().clone()
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Null => None,
        Value::Number(n) => n.as_f64(),
        Value::String(s) => Some(s.parse().unwrap_or_else(|_| panic!("{s:?}"))),
        other => panic!("not a number: {other}"),
    }
}

/// Superset's rows as a [`Table`] keyed by `keys` (numbers printed as integers: epoch ms).
fn table(rows: &[Value], keys: &[&str], values: &[&str]) -> Table {
    let key = |r: &Value| {
        keys.iter()
            .map(|k| match &r[*k] {
                Value::String(s) => s.clone(),
                v => format!("{}", number(v).unwrap() as i64),
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    let out: Table = rows
        .iter()
        .map(|r| (key(r), values.iter().map(|v| number(&r[*v])).collect()))
        .collect();
    assert_eq!(out.len(), rows.len(), "the keys {keys:?} are unique");
    out
}

/// Equal tables, rates to 1e-9.
fn assert_tables(chart: &str, got: &Table, want: &Table) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{chart}: the rows"
    );
    for (k, w) in want {
        let g = &got[k];
        let close = g.iter().zip(w).all(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            (None, None) => true,
            _ => false,
        });
        assert!(close, "{chart} {k}: Superset {g:?}, the views {w:?}");
    }
}

/// A row of `daily_traffic`: instance, media type, day, then inbound, handled, queued,
/// abandoned in IVR, in queue, while ringing, outbound, answered, peak agents.
type Daily = (String, String, NaiveDate, [i64; 9]);

async fn daily_rows(pool: &sqlx::PgPool) -> Vec<Daily> {
    let rows: Vec<(String, String, NaiveDate, Vec<i64>)> = sqlx::query_as(
        "SELECT instance_id, media_type, day, ARRAY[inbound_calls, calls_handled, calls_queued, \
                abandoned_in_ivr, abandoned_in_queue, abandoned_in_ring, outbound_calls, \
                outbound_answered, COALESCE(max_logged_in_agents, 0)]::bigint[] \
         FROM ccc.daily_traffic",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(i, m, d, c)| (i, m, d, c.try_into().unwrap()))
        .collect()
}

/// Sums of the nine counts per key; peak agents summed too (per day: over the series).
fn sum_by(rows: &[Daily], key: impl Fn(&Daily) -> String) -> BTreeMap<String, [i64; 9]> {
    let mut out: BTreeMap<String, [i64; 9]> = BTreeMap::new();
    for r in rows {
        let acc = out.entry(key(r)).or_default();
        for (a, c) in acc.iter_mut().zip(r.3) {
            *a += c;
        }
    }
    out
}

fn ratio(a: i64, b: i64) -> Option<f64> {
    (b != 0).then(|| a as f64 / b as f64)
}

/// The five rates of the bundle from summed counts: answered, abandoned in IVR, in queue,
/// while ringing, outbound connect.
fn rates(c: &[i64; 9]) -> [Option<f64>; 5] {
    [
        ratio(c[1], c[0]),
        ratio(c[3], c[0]),
        ratio(c[4], c[2]),
        ratio(c[5], c[2] - c[4]),
        ratio(c[7], c[6]),
    ]
}

fn epoch_ms(day: NaiveDate) -> String {
    day.and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
        .to_string()
}

/// What each chart must show, computed here from the rows of `daily_traffic` and
/// `hourly_traffic`.
async fn expected(pool: &sqlx::PgPool) -> BTreeMap<&'static str, Table> {
    let daily = daily_rows(pool).await;
    let f = |v: i64| Some(v as f64);
    let all = sum_by(&daily, |_| String::new())[""];
    let per_day = sum_by(&daily, |r| epoch_ms(r.2));
    let week = |d: NaiveDate| d - chrono::Days::new(d.weekday().num_days_from_monday().into());
    let per_week = sum_by(&daily, |r| epoch_ms(week(r.2)));
    let per_series = sum_by(&daily, |r| format!("{}|{}", r.0, r.1));
    let mut peak_per_series: BTreeMap<String, i64> = BTreeMap::new();
    for r in &daily {
        let p = peak_per_series
            .entry(format!("{}|{}", r.0, r.1))
            .or_default();
        *p = (*p).max(r.3[8]);
    }
    let mut want = BTreeMap::new();
    want.insert(
        "Inbound calls",
        Table::from([(String::new(), vec![f(all[0])])]),
    );
    want.insert(
        "Answer rate",
        Table::from([(String::new(), vec![rates(&all)[0]])]),
    );
    let connect = rates(&all)[4];
    want.insert(
        "Outbound connect rate",
        Table::from([(String::new(), vec![connect])]),
    );
    let calls = |m: &BTreeMap<String, [i64; 9]>| -> Table {
        m.iter()
            .map(|(k, c)| (k.clone(), vec![f(c[0]), f(c[1]), f(c[6])]))
            .collect()
    };
    want.insert("Calls per day", calls(&per_day));
    want.insert("Calls per week", calls(&per_week));
    let peaks = per_day.iter().map(|(k, c)| (k.clone(), vec![f(c[8])]));
    want.insert("Peak logged-in agents per day", peaks.collect());
    let day_rates = per_day.iter().map(|(k, c)| (k.clone(), rates(c).to_vec()));
    want.insert(
        "Answer, abandonment and connect rates per day",
        day_rates.collect(),
    );
    let series = per_series.iter().map(|(k, c)| {
        let r = rates(c);
        let v = vec![f(c[0]), f(c[1]), r[0], r[1], r[2], r[3], f(c[6]), r[4]];
        (k.clone(), [v, vec![f(peak_per_series[k])]].concat())
    });
    want.insert("Per instance", series.collect());
    let hours = hourly(pool).await;
    let mut week_hours = Table::new();
    for (t, inbound, _) in &hours {
        let key = format!(
            "{:02}|{} {}",
            t.hour(),
            t.weekday().number_from_monday(),
            t.format("%a")
        );
        let v = week_hours.entry(key).or_insert_with(|| vec![Some(0.0)]);
        v[0] = v[0].map(|x| x + *inbound as f64);
    }
    want.insert("Inbound calls by hour of week", week_hours);
    want
}

/// `hourly_traffic` summed over the series per local hour: (hour, inbound, handled).
async fn hourly(pool: &sqlx::PgPool) -> Vec<(NaiveDateTime, i64, i64)> {
    sqlx::query_as(
        "SELECT local_time, sum(inbound_calls)::bigint, sum(calls_handled)::bigint \
         FROM ccc.hourly_traffic GROUP BY local_time",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The keys and value columns of each chart's rows in Superset's answer.
fn columns(chart: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    let calls = vec![
        "sum_inbound_calls",
        "sum_calls_handled",
        "sum_outbound_calls",
    ];
    let rates = vec![
        "rate_answered",
        "rate_abandoned_ivr",
        "rate_abandoned_queue",
        "rate_abandoned_ring",
        "rate_outbound_connect",
    ];
    match chart {
        "Inbound calls" => (vec![], vec!["sum_inbound_calls"]),
        "Answer rate" => (vec![], vec!["rate_answered"]),
        "Outbound connect rate" => (vec![], vec!["rate_outbound_connect"]),
        "Calls per day" | "Calls per week" => (vec!["day"], calls),
        "Peak logged-in agents per day" => (vec!["day"], vec!["peak_agents"]),
        "Answer, abandonment and connect rates per day" => (vec!["day"], rates),
        "Per instance" => (
            vec!["instance_id", "media_type"],
            vec![
                "sum_inbound_calls",
                "sum_calls_handled",
                "rate_answered",
                "rate_abandoned_ivr",
                "rate_abandoned_queue",
                "rate_abandoned_ring",
                "sum_outbound_calls",
                "rate_outbound_connect",
                "max_agents",
            ],
        ),
        "Inbound calls by hour of week" => {
            (vec!["hour_of_day", "weekday"], vec!["sum_inbound_calls"])
        }
        other => panic!("no columns for {other}"),
    }
}

/// "Busiest hours": ten rows, each hour's figures those of `hourly_traffic`, and their inbound
/// counts the ten largest.
fn assert_busiest_hours(rows: &[Value], hours: &[(NaiveDateTime, i64, i64)]) {
    assert_eq!(rows.len(), 10, "{rows:?}");
    let by_hour: BTreeMap<i64, (i64, i64)> = hours
        .iter()
        .map(|(t, i, h)| (t.and_utc().timestamp_millis(), (*i, *h)))
        .collect();
    for r in rows {
        let at = number(&r["local_time"]).unwrap() as i64;
        let got = (
            number(&r["sum_inbound_calls"]).unwrap() as i64,
            number(&r["sum_calls_handled"]).unwrap() as i64,
        );
        assert_eq!(Some(&got), by_hour.get(&at), "busiest hours: {r}");
    }
    let mut top: Vec<i64> = hours.iter().map(|h| h.1).collect();
    top.sort_unstable_by(|a, b| b.cmp(a));
    let shown: Vec<i64> = rows
        .iter()
        .map(|r| number(&r["sum_inbound_calls"]).unwrap() as i64)
        .collect();
    assert_eq!(shown, top[..10], "the ten busiest hours, busiest first");
}

/// The dashboard drawn by headless Chromium, as anonymous visitors see it: the screenshot's
/// path and the DOM.
async fn draw(port: u16) -> (PathBuf, String) {
    let dir = Path::new(ROOT).join("target/superset-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let found = std::process::Command::new("chromium")
        .arg("--version")
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "chromium is not installed: the Superset test draws the dashboard in it (Debian: `sudo \
         apt-get install --no-install-recommends chromium`)"
    );
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg("--window-size=1400,2300")
        // Virtual time stands still while requests are pending, so every chart's query is in.
        .arg("--virtual-time-budget=90000")
        .arg(format!("--screenshot={}", png.display()))
        .arg("--dump-dom")
        .arg(format!(
            "http://127.0.0.1:{port}/superset/dashboard/ccc-etl-traffic/?standalone=1"
        ))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    (png, String::from_utf8(out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_superset_bundle_imports_and_every_chart_shows_the_views_figures() {
    let started = std::time::Instant::now();
    let superset = Superset::new();
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a", "ccc-b"])
        .set("source", "max_qps", 200)
        .postgres()
        .write(&cfg);
    let out = common::ccc_etl_at(&cfg, Some(&db.url))
        .args(["backfill", "--from", "2026-11-01", "--to", "2026-12-03"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    let zip = superset.home.join("ccc-etl-superset.zip");
    let built = build_bundle(&cfg, &db.url, &zip).await;
    assert!(built.contains("schema ccc"), "{built}");
    assert!(!built.contains(&db.url), "the URL is not printed: {built}");
    superset.run(&["db", "upgrade"]).await;
    let password = superset.admin_password.clone();
    superset
        .run(&[
            "fab",
            "create-admin",
            "--username",
            "admin",
            "--firstname",
            "ccc",
            "--lastname",
            "etl",
            "--email",
            "admin@localhost",
            "--password",
            &password,
        ])
        .await;
    superset.run(&["init"]).await;
    let zip_arg = zip.display().to_string();
    superset
        .run(&["import-dashboards", "-p", &zip_arg, "-u", "admin"])
        .await;

    let port = common::cluster::free_port();
    let _server = serve(&superset, port).await;
    let api = Api::login(port, &password).await;
    let listed = api.get("/api/v1/chart/?q=(page_size:100)").await;
    let ids: BTreeMap<String, i64> = listed["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["slice_name"].as_str().unwrap().to_string(),
                c["id"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut names: Vec<&str> = CHARTS.to_vec();
    names.sort_unstable();
    assert_eq!(ids.keys().map(String::as_str).collect::<Vec<_>>(), names);
    let dashboard = api.get("/api/v1/dashboard/ccc-etl-traffic").await;
    let metadata: Value =
        serde_json::from_str(dashboard["result"]["json_metadata"].as_str().unwrap()).unwrap();
    let filters: Vec<&str> = metadata["native_filter_configuration"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(filters, ["Date range", "Instance", "Media type"]);

    let pool = db.pool().await;
    let want = expected(&pool).await;
    assert!(
        want["Calls per day"].len() >= 33,
        "{:?}",
        want["Calls per day"].len()
    );
    assert_eq!(want["Per instance"].len(), 2);
    for (chart, expected) in &want {
        let rows = api.chart_rows(ids[*chart]).await;
        let (keys, values) = columns(chart);
        assert_tables(chart, &table(&rows, &keys, &values), expected);
    }
    let busiest = api.chart_rows(ids["Busiest hours"]).await;
    assert_busiest_hours(&busiest, &hourly(&pool).await);

    let (png, dom) = draw(port).await;
    assert!(
        std::fs::metadata(&png).unwrap().len() > 50_000,
        "the screenshot"
    );
    let count = |needle: &str| dom.matches(needle).count();
    assert_eq!(
        count("data-test=\"chart-container\""),
        CHARTS.len(),
        "every chart drawn"
    );
    assert_eq!(count("role=\"alert\""), 0, "a chart is in error");
    assert_eq!(count("_echarts_instance_"), 5, "the five ECharts charts");
    let inbound = want["Inbound calls"][""][0].unwrap() as i64;
    assert!(
        dom.contains(&ccc_etl::report::charts::thousands(inbound)),
        "the inbound total {inbound} is shown"
    );
    eprintln!("the Superset test took {:.0?}", started.elapsed());
    pool.close().await;
    db.drop_db().await;
}
