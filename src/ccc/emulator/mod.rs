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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use auth::{IncomingRequest, verify};
pub use auth::{KeyPair, MAX_SKEW_SECS, Rejection};
use data::DataModel;

use crate::ccc::client::{ACTION, API_VERSION};
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
            clock: Arc::new(Utc::now),
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
    /// When the request arrived, epoch ms (system clock, for spacing checks).
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

fn error_response(status: u16, code: &str, message: &str, request_id: &str) -> Response {
    let body = json!({
        "RequestId": request_id,
        "HostId": "ccc.cn-shanghai.aliyuncs.com",
        "Code": code,
        "Message": message,
        "Recommend": format!("https://api.aliyun.com/troubleshoot?q={code}&product=CCC"),
    });
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// Decodes `application/x-www-form-urlencoded` pairs (query strings too: `+` is a space).
fn decode_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    let received_ms = Utc::now().timestamp_millis();
    shared.stats.lock().expect("stats lock").requests += 1;
    let query = decode_pairs(query.as_deref().unwrap_or("").as_bytes());
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form = if is_form { decode_pairs(&body) } else { vec![] };
    let header_list: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    let incoming = IncomingRequest {
        method: method.as_str(),
        query: &query,
        form: &form,
        headers: &header_list,
        body: &body,
    };
    let auth_now = (shared.opts.auth_clock)();
    let now = (shared.opts.clock)();
    let verified = match verify(&incoming, &shared.opts.keys, auth_now) {
        Ok(v) => v,
        Err(r) => {
            let action = param(&query, &form, "Action")
                .or_else(|| {
                    header_list
                        .iter()
                        .find(|(k, _)| k == "x-acs-action")
                        .map(|(_, v)| v.as_str())
                })
                .unwrap_or("")
                .to_string();
            shared.count(&action, r.code);
            return error_response(r.status, r.code, &r.message, &request_id);
        }
    };
    let action = verified.action.clone();
    if !shared.fresh_nonce(&verified.nonce, auth_now) {
        shared.count(&action, "SignatureNonceUsed");
        return error_response(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
            &request_id,
        );
    }
    if action != ACTION {
        shared.count(&action, "InvalidAction.NotFound");
        return error_response(
            404,
            "InvalidAction.NotFound",
            &format!(
                "Specified api is not found, please check your url and method. Action: {action}"
            ),
            &request_id,
        );
    }
    if verified.api_version != API_VERSION {
        shared.count(&action, "InvalidVersion");
        return error_response(
            400,
            "InvalidVersion",
            &format!(
                "Specified parameter Version is not valid: {}",
                verified.api_version
            ),
            &request_id,
        );
    }
    let params = |name: &str| param(&query, &form, name).map(str::to_string);
    let call = |code: &str| ServedCall {
        instance_id: params("InstanceId").unwrap_or_default(),
        media_type: params("MediaType").unwrap_or_else(|| "Audio".into()),
        start_ms: params("StartTime")
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1),
        end_ms: params("EndTime").and_then(|s| s.parse().ok()).unwrap_or(-1),
        code: code.to_string(),
        received_ms,
    };
    let log = |c: ServedCall| {
        let mut s = shared.stats.lock().expect("stats lock");
        if s.calls.len() >= MAX_CALL_LOG {
            s.calls.remove(0);
        }
        s.calls.push(c);
    };
    if shared.over_limit() {
        shared.count(&action, "Throttling.User");
        log(call("Throttling.User"));
        let mut resp = error_response(
            400,
            "Throttling.User",
            "Request was denied due to user flow control.",
            &request_id,
        );
        if let Some(ms) = shared.opts.faults.retry_after_ms {
            resp.headers_mut().insert("x-acs-retry-after", ms.into());
        }
        return resp;
    }
    // One draw per request decides its fault, so the sequence replays from the seed.
    let draw: f64 = shared.rng.lock().expect("rng lock").random();
    let f = &shared.opts.faults;
    let failing = params("InstanceId").is_some_and(|i| f.failing_instances.contains(&i));
    let mut edge = 0.0;
    let mut hit = |p: f64| {
        let h = draw >= edge && draw < edge + p;
        edge += p;
        h
    };
    if hit(f.throttled) {
        shared.count(&action, "Throttling.User");
        log(call("Throttling.User"));
        return error_response(
            400,
            "Throttling.User",
            "Request was denied due to user flow control.",
            &request_id,
        );
    }
    if hit(f.unavailable) {
        shared.count(&action, "ServiceUnavailable");
        log(call("ServiceUnavailable"));
        return error_response(
            503,
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
            &request_id,
        );
    }
    if failing || hit(f.internal_error) {
        shared.count(&action, "InternalError");
        log(call("InternalError"));
        return error_response(
            500,
            "InternalError",
            "The request processing has failed due to some unknown error.",
            &request_id,
        );
    }
    let slow = hit(f.slow);
    let truncated = hit(f.truncated);
    let non_json = hit(f.non_json);
    if slow {
        tokio::time::sleep(Duration::from_millis(f.slow_ms)).await;
    }
    let result = report(&shared.opts, &params, now, &request_id);
    let (status, code, body) = match result {
        Ok((body, rows)) => {
            shared.stats.lock().expect("stats lock").rows_served += rows;
            (200, "OK".to_string(), body)
        }
        Err(r) => {
            shared.count(&action, r.code);
            log(call(r.code));
            return error_response(r.status, r.code, &r.message, &request_id);
        }
    };
    if non_json {
        shared.count(&action, "NonJsonBody");
        log(call("NonJsonBody"));
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response();
    }
    if truncated {
        shared.count(&action, "TruncatedBody");
        log(call("TruncatedBody"));
        let cut = body.len() / 2;
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
            body[..cut].to_string(),
        )
            .into_response();
    }
    shared.count(&action, &code);
    log(call(&code));
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body,
    )
        .into_response()
}

fn param<'a>(
    query: &'a [(String, String)],
    form: &'a [(String, String)],
    name: &str,
) -> Option<&'a str> {
    query
        .iter()
        .chain(form.iter())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
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
    let num = |v: i64| -> Value {
        if opts.numbers_as_strings {
            Value::String(v.to_string())
        } else {
            json!(v)
        }
    };
    let ring = if opts.legacy_ring_name {
        "CallsAbandonedInRinging"
    } else {
        "CallsAbandonedInRing"
    };
    let mut inbound = Vec::with_capacity(starts.len());
    let mut outbound = Vec::with_capacity(starts.len());
    let mut overall = Vec::with_capacity(starts.len());
    for t in &starts {
        let r = model.rows_at(&instance, media, *t, now_ms);
        let i = r.inbound;
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
        outbound.push(json!({"StatsTime": num(*t), "TotalCalls": num(r.outbound.total_calls), "CallsAnswered": num(r.outbound.calls_answered)}));
        overall.push(
            json!({"StatsTime": num(*t), "MaxLoggedInAgents": num(r.overall.max_logged_in_agents)}),
        );
    }
    let rows = (starts.len() * 3) as u64;
    let body = json!({
        "RequestId": request_id,
        "Code": "OK",
        "HttpStatusCode": num(200),
        "Message": "",
        "Data": {"Inbound": inbound, "Outbound": outbound, "Overall": overall},
    });
    Ok((body.to_string(), rows))
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
    });
    {
        // Start with a full bucket: one second's worth.
        let mut t = shared.throttle.lock().expect("throttle lock");
        t.0 = shared.opts.faults.qps_limit.unwrap_or(0.0).max(1.0);
    }
    let app = Router::new()
        .route("/_emulator/stats", get(stats))
        .route("/", any(handle))
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
