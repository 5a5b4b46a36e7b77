//! The built-in CCC emulator: a local GetInstanceTrendingReport server that verifies signatures
//! and enforces the API's rules as Alibaba Cloud does, serves deterministic call-center data, and
//! fails on demand.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind `127.0.0.1:0`;
//! [`spawn`] does that for them and returns a handle.
//!
//! # Which buckets a request returns
//! For `StartTime = s`, `EndTime = e` and bucket length `b`: every bucket start `t` with
//! `t < e`, `t <= now`, from `floor(s / b) * b` (the bucket containing `s`, the default, as the
//! real API may do) or, with `floor_start = false`, from the first bucket starting at or after `s`.
//!
//! # Errors it answers with
//! Unknown `Action`: HTTP 404 `InvalidAction.NotFound`; unknown `Version`: HTTP 400
//! `InvalidVersion` (what Alibaba Cloud's gateway answers for RPC APIs); the rest as in the
//! README's table.

mod auth;
pub mod data;
mod handler;
mod sts;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use auth::{KeyPair, MAX_SKEW_SECS, Rejection};
use data::DataModel;
pub use sts::StsOptions;

use crate::config::HORIZON_DAYS;
use crate::record::MediaType;

/// The clock the emulator reads; tests substitute a fixed or shifted one.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The longest window the API accepts, ms.
pub const MAX_WINDOW_MS: i64 = 7 * 86_400_000;

/// Failures to inject, each drawn per request from a seeded generator.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Requests per second above which the answer is HTTP 400 `Throttling.User`.
    pub qps_limit: Option<f64>,
    /// Fraction answered HTTP 400 `Throttling.User` regardless of the rate.
    pub throttled: f64,
    /// Fraction answered HTTP 503 `ServiceUnavailable`.
    pub unavailable: f64,
    /// Fraction answered HTTP 500 `InternalError`.
    pub internal_error: f64,
    /// Fraction answered only after `slow_ms` (beyond a client's timeout, if it is shorter).
    pub slow: f64,
    /// Delay of a slow answer, ms.
    pub slow_ms: u64,
    /// Fraction answered with a body cut in half.
    pub truncated: f64,
    /// Fraction answered with an HTML page instead of JSON.
    pub non_json: f64,
    /// Seed of the fault draws, so a failing run can be replayed.
    pub seed: u64,
    /// Instances whose every request fails with HTTP 500 (to leave gaps on purpose).
    pub failing_instances: Vec<String>,
    /// Sent as `x-acs-retry-after` (ms) with every throttling answer.
    pub retry_after_ms: Option<u64>,
}

/// How the served response departs from the shape ccc-etl knows: fields and arrays added,
/// known fields left out or sent as another type. Names are `Section.Field` (`Inbound.X`).
#[derive(Debug, Clone, Default)]
pub struct DriftOptions {
    /// Fields added to every item of their section; the value is a count derived from the
    /// bucket ([`drift_value`]).
    pub add_fields: Vec<String>,
    /// Arrays added under `Data`, with one item per inbound row.
    pub add_arrays: Vec<String>,
    /// Known fields left out of every item.
    pub drop_fields: Vec<String>,
    /// Known fields sent as an object (`{"Value": n}`) instead of a number.
    pub retype_fields: Vec<String>,
    /// Added to every added field's value: a later change of the value (a revision).
    pub value_offset: i64,
}

/// The value an added field carries in the bucket starting at `stats_time` (before
/// [`DriftOptions::value_offset`]).
pub fn drift_value(stats_time: i64) -> i64 {
    (stats_time / 3_600_000).rem_euclid(97) + 1
}

impl DriftOptions {
    /// Whether the served shape is the known one.
    fn is_none(&self) -> bool {
        self.add_fields.is_empty()
            && self.add_arrays.is_empty()
            && self.drop_fields.is_empty()
            && self.retype_fields.is_empty()
    }

    fn apply(&self, section: &str, items: &mut [Value]) {
        let mine = |list: &[String]| -> Vec<String> {
            list.iter()
                .filter_map(|n| n.strip_prefix(section)?.strip_prefix('.'))
                .map(str::to_string)
                .collect()
        };
        let (add, drop, retype) = (
            mine(&self.add_fields),
            mine(&self.drop_fields),
            mine(&self.retype_fields),
        );
        if add.is_empty() && drop.is_empty() && retype.is_empty() {
            return;
        }
        for item in items.iter_mut() {
            let Value::Object(m) = item else { continue };
            let t = m.get("StatsTime").and_then(Value::as_i64).unwrap_or(0);
            for f in &add {
                m.insert(f.clone(), json!(drift_value(t) + self.value_offset));
            }
            for f in &drop {
                m.remove(f);
            }
            for f in &retype {
                if let Some(v) = m.remove(f) {
                    m.insert(f.clone(), json!({ "Value": v }));
                }
            }
        }
    }
}

/// Everything the emulator serves and how.
#[derive(Clone)]
pub struct EmulatorOptions {
    /// Known instances; others get `NotExists.InstanceId`.
    pub instances: Vec<String>,
    /// Accepted AccessKeyIds.
    pub keys: HashMap<String, KeyPair>,
    /// Bucket length, ms.
    pub bucket_ms: i64,
    /// Seed of the data.
    pub seed: u64,
    /// How long a bucket keeps being revised after it closes, ms.
    pub revise_ms: i64,
    /// Zone of the daily rhythm, and of "start of today" when `StartTime` is omitted.
    pub timezone: Tz,
    /// Send every number as a JSON string, as older documents show.
    pub numbers_as_strings: bool,
    /// Name the ring-abandon field `CallsAbandonedInRinging`, as older documents do.
    pub legacy_ring_name: bool,
    /// Return the bucket containing `StartTime` even when it starts before it.
    pub floor_start: bool,
    /// Treat `EndTime` as inclusive: also return the bucket that starts at it (the next
    /// window's), as the real API may.
    pub inclusive_end: bool,
    /// Failures to inject.
    pub faults: Faults,
    /// STS, the ECS metadata service and the credentials URI: what they accept and issue.
    pub sts: StsOptions,
    /// Changes to the response's shape, as the API's own changes would be.
    pub drift: DriftOptions,
    /// The report service's notion of now: which buckets exist and how revised they are.
    pub clock: Clock,
    /// The clock signatures are checked against (15 minutes of skew allowed). Separate from
    /// `clock` so tests can move report time without tripping the skew check.
    pub auth_clock: Clock,
}

impl std::fmt::Debug for EmulatorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorOptions")
            .field("instances", &self.instances)
            .field("keys", &self.keys.len())
            .field("bucket_ms", &self.bucket_ms)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl EmulatorOptions {
    /// Defaults: hourly buckets, 6 hours of revisions, seed 1, no faults, system clock.
    pub fn new(instances: Vec<String>, access_key_id: &str, secret: &str) -> Self {
        let mut keys = HashMap::new();
        keys.insert(
            access_key_id.to_string(),
            KeyPair {
                secret: secret.to_string(),
                security_token: None,
                expires: None,
            },
        );
        Self {
            instances,
            keys,
            bucket_ms: 3_600_000,
            seed: 1,
            revise_ms: 6 * 3_600_000,
            timezone: chrono_tz::Asia::Shanghai,
            numbers_as_strings: false,
            legacy_ring_name: false,
            floor_start: true,
            inclusive_end: false,
            faults: Faults::default(),
            sts: StsOptions::new(std::time::Duration::from_secs(3600)),
            drift: DriftOptions::default(),
            clock: Arc::new(crate::clock::now),
            auth_clock: Arc::new(Utc::now),
        }
    }

    /// The data model these options describe, to compute expected values.
    pub fn data_model(&self) -> DataModel {
        DataModel {
            seed: self.seed,
            bucket_ms: self.bucket_ms,
            revise_ms: self.revise_ms,
            timezone: self.timezone,
        }
    }
}

/// One served GetInstanceTrendingReport call, for tests that count what a job fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedCall {
    /// InstanceId.
    pub instance_id: String,
    /// MediaType.
    pub media_type: String,
    /// StartTime, ms.
    pub start_ms: i64,
    /// EndTime, ms.
    pub end_ms: i64,
    /// The code answered.
    pub code: String,
    /// When the request arrived, epoch ms (the pipeline's clock, as the tests read it).
    pub received_ms: i64,
}

/// Counters, as `GET /_emulator/stats` returns them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmulatorStats {
    /// HTTP requests received (stats requests excluded).
    pub requests: u64,
    /// Answers by Action, then by Code.
    pub by_action: BTreeMap<String, BTreeMap<String, u64>>,
    /// `Throttling.User` answers.
    pub throttled: u64,
    /// Rows served across all three arrays.
    pub rows_served: u64,
    /// The most recent GetInstanceTrendingReport calls (at most 100,000).
    pub calls: Vec<ServedCall>,
    /// `AssumeRoleWithOIDC` calls by the index of the accepted token they sent.
    #[serde(default)]
    pub oidc_token_uses: BTreeMap<usize, u64>,
}

const MAX_CALL_LOG: usize = 100_000;

/// Nonces seen within the skew window, and the order they expire in.
type NonceBook = (
    HashMap<String, DateTime<Utc>>,
    VecDeque<(DateTime<Utc>, String)>,
);

struct Shared {
    opts: EmulatorOptions,
    stats: Mutex<EmulatorStats>,
    nonces: Mutex<NonceBook>,
    rng: Mutex<StdRng>,
    throttle: Mutex<(f64, tokio::time::Instant)>,
    /// STS credentials issued, by AccessKeyId.
    issued: Mutex<HashMap<String, KeyPair>>,
    /// IMDSv2 tokens handed out.
    imds_tokens: Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    fn count(&self, action: &str, code: &str) {
        let mut s = self.stats.lock().expect("stats lock");
        *s.by_action
            .entry(action.to_string())
            .or_default()
            .entry(code.to_string())
            .or_default() += 1;
        if code.starts_with("Throttling") {
            s.throttled += 1;
        }
    }

    /// Records a nonce; false if it was seen within the skew window.
    fn fresh_nonce(&self, nonce: &str, now: DateTime<Utc>) -> bool {
        let mut g = self.nonces.lock().expect("nonce lock");
        let (seen, order) = &mut *g;
        let horizon = now - chrono::Duration::seconds(MAX_SKEW_SECS);
        while order.front().is_some_and(|(t, _)| *t < horizon) {
            let (_, n) = order.pop_front().expect("front exists");
            seen.remove(&n);
        }
        if seen.contains_key(nonce) {
            return false;
        }
        seen.insert(nonce.to_string(), now);
        order.push_back((now, nonce.to_string()));
        true
    }

    /// Token bucket holding one second of `qps_limit`.
    fn over_limit(&self) -> bool {
        let Some(limit) = self.opts.faults.qps_limit else {
            return false;
        };
        let mut g = self.throttle.lock().expect("throttle lock");
        let now = tokio::time::Instant::now();
        let (tokens, last) = &mut *g;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * limit).min(limit.max(1.0));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            false
        } else {
            true
        }
    }
}

fn invalid(msg: String) -> Rejection {
    Rejection::new(400, "Parameter.Invalid", msg)
}

/// Applies the API's rules and builds the success body; returns it with its row count.
fn report(
    opts: &EmulatorOptions,
    params: &dyn Fn(&str) -> Option<String>,
    now: DateTime<Utc>,
    request_id: &str,
) -> Result<(String, u64), Rejection> {
    let instance = params("InstanceId").unwrap_or_default();
    if instance.trim().is_empty() {
        return Err(Rejection::new(
            400,
            "Parameter.Blank",
            "The parameter InstanceId must not be blank.",
        ));
    }
    if !opts.instances.contains(&instance) {
        return Err(Rejection::new(
            404,
            "NotExists.InstanceId",
            format!("The specified instance {instance} does not exist."),
        ));
    }
    let media: MediaType = match params("MediaType") {
        None => MediaType::Audio,
        Some(m) => m
            .parse()
            .map_err(|_| invalid(format!("The parameter MediaType {m:?} is invalid.")))?,
    };
    let now_ms = now.timestamp_millis();
    let ms = |name: &str, default: i64| -> Result<i64, Rejection> {
        match params(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map_err(|_| invalid(format!("The parameter {name} {v:?} is not a number."))),
        }
    };
    let today = {
        let local = now.with_timezone(&opts.timezone).date_naive();
        opts.timezone
            .from_local_datetime(&local.and_hms_opt(0, 0, 0).expect("midnight"))
            .earliest()
            .map_or(now_ms, |t| t.timestamp_millis())
    };
    let start = ms("StartTime", today)?;
    let end = ms("EndTime", now_ms)?;
    if end < start {
        return Err(invalid(
            "The parameter EndTime must not be earlier than StartTime.".into(),
        ));
    }
    if end - start > MAX_WINDOW_MS {
        return Err(invalid(
            "The time range between StartTime and EndTime must not exceed 7 days.".into(),
        ));
    }
    if start < now_ms - HORIZON_DAYS * 86_400_000 {
        return Err(invalid(
            "The parameter StartTime must not be earlier than 180 days ago.".into(),
        ));
    }
    let model = opts.data_model();
    let end = if opts.inclusive_end { end + 1 } else { end };
    let starts = model.bucket_starts(start, end, now_ms, opts.floor_start);
    let rows: Vec<data::BucketRows> = starts
        .iter()
        .map(|t| model.rows_at(&instance, media, *t, now_ms))
        .collect();
    let body = if opts.drift.is_none() {
        body_direct(opts, &rows, request_id)
    } else {
        body_value(opts, &rows, request_id)
    };
    Ok((body, (rows.len() * 3) as u64))
}

/// The name the inbound ring-abandonment count is sent under.
fn ring_name(opts: &EmulatorOptions) -> &'static str {
    if opts.legacy_ring_name {
        "CallsAbandonedInRinging"
    } else {
        "CallsAbandonedInRing"
    }
}

/// A report body built as a JSON tree, where drift reshapes the items.
fn body_value(opts: &EmulatorOptions, rows: &[data::BucketRows], request_id: &str) -> String {
    let num = |v: i64| -> Value {
        if opts.numbers_as_strings {
            Value::String(v.to_string())
        } else {
            json!(v)
        }
    };
    let ring = ring_name(opts);
    let mut inbound = Vec::with_capacity(rows.len());
    let mut outbound = Vec::with_capacity(rows.len());
    let mut overall = Vec::with_capacity(rows.len());
    for r in rows {
        let (i, t) = (r.inbound, r.inbound.stats_time);
        let mut row = serde_json::Map::new();
        row.insert("StatsTime".into(), num(i.stats_time));
        row.insert("TotalCalls".into(), num(i.total_calls));
        row.insert("CallsHandled".into(), num(i.calls_handled));
        row.insert("CallsQueued".into(), num(i.calls_queued));
        row.insert("CallsAbandonedInIVR".into(), num(i.calls_abandoned_in_ivr));
        row.insert(
            "CallsAbandonedInQueue".into(),
            num(i.calls_abandoned_in_queue),
        );
        row.insert(ring.into(), num(i.calls_abandoned_in_ring));
        inbound.push(Value::Object(row));
        outbound.push(json!({"StatsTime": num(t), "TotalCalls": num(r.outbound.total_calls), "CallsAnswered": num(r.outbound.calls_answered)}));
        overall.push(
            json!({"StatsTime": num(t), "MaxLoggedInAgents": num(r.overall.max_logged_in_agents)}),
        );
    }
    opts.drift.apply("Inbound", &mut inbound);
    opts.drift.apply("Outbound", &mut outbound);
    opts.drift.apply("Overall", &mut overall);
    let mut data = serde_json::Map::new();
    for name in &opts.drift.add_arrays {
        let items: Vec<Value> = rows
            .iter()
            .map(|r| r.inbound.stats_time)
            .map(|t| json!({"StatsTime": num(t), "Id": format!("sg-{}", drift_value(t))}))
            .collect();
        data.insert(name.clone(), Value::Array(items));
    }
    data.insert("Inbound".into(), Value::Array(inbound));
    data.insert("Outbound".into(), Value::Array(outbound));
    data.insert("Overall".into(), Value::Array(overall));
    json!({
        "RequestId": request_id,
        "Code": "OK",
        "HttpStatusCode": num(200),
        "Message": "",
        "Data": data,
    })
    .to_string()
}

/// The same body as [`body_value`] without drift, byte for byte (keys in the same order),
/// written straight into one string: a backfill's load is mostly these bodies, and the
/// emulator shares the machine with the pipeline it serves.
fn body_direct(opts: &EmulatorOptions, rows: &[data::BucketRows], request_id: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(128 + rows.len() * 330);
    let q = if opts.numbers_as_strings { "\"" } else { "" };
    let item = |out: &mut String, fields: &[(&str, i64)]| {
        out.push('{');
        for (k, (name, v)) in fields.iter().enumerate() {
            let sep = if k == 0 { "" } else { "," };
            let _ = write!(out, "{sep}\"{name}\":{q}{v}{q}");
        }
        out.push('}');
    };
    let _ = write!(out, "{{\"Code\":\"OK\",\"Data\":{{\"Inbound\":[");
    let ring = ring_name(opts);
    for (n, r) in rows.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let i = r.inbound;
        item(
            &mut out,
            &[
                ("CallsAbandonedInIVR", i.calls_abandoned_in_ivr),
                ("CallsAbandonedInQueue", i.calls_abandoned_in_queue),
                (ring, i.calls_abandoned_in_ring),
                ("CallsHandled", i.calls_handled),
                ("CallsQueued", i.calls_queued),
                ("StatsTime", i.stats_time),
                ("TotalCalls", i.total_calls),
            ],
        );
    }
    out.push_str("],\"Outbound\":[");
    for (n, r) in rows.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let o = r.outbound;
        item(
            &mut out,
            &[
                ("CallsAnswered", o.calls_answered),
                ("StatsTime", r.inbound.stats_time),
                ("TotalCalls", o.total_calls),
            ],
        );
    }
    out.push_str("],\"Overall\":[");
    for (n, r) in rows.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        item(
            &mut out,
            &[
                ("MaxLoggedInAgents", r.overall.max_logged_in_agents),
                ("StatsTime", r.inbound.stats_time),
            ],
        );
    }
    let id = Value::String(request_id.to_string());
    let _ = write!(
        out,
        "]}},\"HttpStatusCode\":{q}200{q},\"Message\":\"\",\"RequestId\":{id}}}"
    );
    out
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.stats.lock().expect("stats lock").clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&s).unwrap_or_default(),
    )
        .into_response()
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    opts: EmulatorOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let seed = opts.faults.seed;
    let shared = Arc::new(Shared {
        opts,
        stats: Mutex::new(EmulatorStats::default()),
        nonces: Mutex::new((HashMap::new(), VecDeque::new())),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        throttle: Mutex::new((0.0, tokio::time::Instant::now())),
        issued: Mutex::new(HashMap::new()),
        imds_tokens: Mutex::new(Default::default()),
    });
    {
        // Start with a full bucket: one second's worth.
        let mut t = shared.throttle.lock().expect("throttle lock");
        t.0 = shared.opts.faults.qps_limit.unwrap_or(0.0).max(1.0);
    }
    let app = Router::new()
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/credentials", get(sts::credentials_uri))
        .route("/latest/api/token", put(sts::metadata_token))
        .route(
            "/latest/meta-data/ram/security-credentials/",
            get(sts::metadata_roles),
        )
        .route(
            "/latest/meta-data/ram/security-credentials/{role}",
            get(sts::metadata_role),
        )
        .route("/", any(handler::handle))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A running emulator, stopped when dropped or by [`RunningEmulator::shutdown`].
pub struct RunningEmulator {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningEmulator {
    /// `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fetches `/_emulator/stats`.
    pub async fn stats(&self) -> anyhow::Result<EmulatorStats> {
        let bytes = reqwest::get(format!("{}/_emulator/stats", self.endpoint()))
            .await?
            .bytes()
            .await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Stops serving and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Binds `127.0.0.1:0` and serves in the background.
pub async fn spawn(opts: EmulatorOptions) -> std::io::Result<RunningEmulator> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, opts, async move {
        let _ = rx.await;
    }));
    Ok(RunningEmulator {
        addr,
        stop: Some(tx),
        task: Some(task),
    })
}

impl EmulatorStats {
    /// Answers with `code` to `action`.
    pub fn count(&self, action: &str, code: &str) -> u64 {
        self.by_action
            .get(action)
            .and_then(|m| m.get(code))
            .copied()
            .unwrap_or(0)
    }

    /// Successful report calls.
    pub fn ok_calls(&self) -> Vec<&ServedCall> {
        self.calls.iter().filter(|c| c.code == "OK").collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct writer must serve what the JSON tree serves, byte for byte, in every shape
    /// option that does not reshape items.
    #[test]
    fn the_direct_body_is_the_tree_body() {
        for (strings, legacy) in [(false, false), (true, false), (false, true)] {
            let mut opts = EmulatorOptions::new(vec!["i-1".into()], "k", "s");
            opts.numbers_as_strings = strings;
            opts.legacy_ring_name = legacy;
            let model = opts.data_model();
            let start = 1_790_000_000_000 / 3_600_000 * 3_600_000;
            let rows: Vec<data::BucketRows> = (0..168)
                .map(|h| model.rows_at("i-1", MediaType::Audio, start + h * 3_600_000, i64::MAX))
                .collect();
            let id = "5E2A0C4D-\"quoted\"";
            let direct = body_direct(&opts, &rows, id);
            assert_eq!(
                direct,
                body_value(&opts, &rows, id),
                "strings={strings} legacy={legacy}"
            );
            assert!(direct.contains("\"TotalCalls\":"), "{direct}");
            assert_eq!(body_direct(&opts, &[], id), body_value(&opts, &[], id));
        }
    }
}
