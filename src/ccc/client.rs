//! The GetInstanceTrendingReport client: signs, paces, sends, classifies, retries.
//!
//! One [`CccClient`] serves a whole run. Every attempt waits for the shared [`RateLimiter`] and
//! holds one permit of the in-flight semaphore (`concurrency`), so neither limit can be
//! exceeded however many windows are being fetched at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::ratelimit::RateLimiter;
use super::sign;
use super::wire::{Body, parse_body};
use crate::config::{Endpoint, SignatureVersion, SourceConfig};
use crate::credentials::{CredentialSource, Credentials};
use crate::record::{MediaType, Report};

/// The API action this client calls.
pub const ACTION: &str = "GetInstanceTrendingReport";
/// The API version.
pub const API_VERSION: &str = "2020-07-01";

/// One request: one instance, one media type, one window in epoch ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrendingRequest {
    /// Call-center instance.
    pub instance_id: String,
    /// Media type.
    pub media_type: MediaType,
    /// `StartTime`, epoch ms.
    pub start_ms: i64,
    /// `EndTime`, epoch ms.
    pub end_ms: i64,
}

impl TrendingRequest {
    /// The action's own parameters, as strings.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("InstanceId", self.instance_id.clone()),
            ("MediaType", self.media_type.as_str().to_string()),
            ("StartTime", self.start_ms.to_string()),
            ("EndTime", self.end_ms.to_string()),
        ]
    }
}

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, first included.
    pub max_attempts: u32,
    /// First delay ceiling.
    pub base: Duration,
    /// Largest delay ceiling.
    pub cap: Duration,
}

impl RetryPolicy {
    /// Full jitter: uniform in `[0, min(cap, base * 2^(retry-1))]`, retry counted from 1.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(30)))
            .min(self.cap);
        ceiling.mul_f64(rng.random::<f64>())
    }
}

/// Counters a run reports: requests, retries, throttling, answers by code.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// HTTP requests sent.
    pub requests: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// Throttling answers.
    pub throttled: AtomicU64,
    by_code: Mutex<BTreeMap<String, u64>>,
    /// How long the service takes to answer, a moving average in µs (0: no answer yet).
    latency_us: AtomicU64,
    /// When the first request was sent.
    first_sent: std::sync::OnceLock<std::time::Instant>,
}

/// The weight of the newest answer in the moving average of latency.
const LATENCY_WEIGHT: f64 = 0.2;
/// Requests in flight are the rate times the latency (Little's law) times this, plus
/// [`IN_FLIGHT_SPARE`]: room for a slower answer and for the windows being committed.
const IN_FLIGHT_MARGIN: f64 = 1.5;
/// See [`IN_FLIGHT_MARGIN`].
const IN_FLIGHT_SPARE: usize = 2;
/// The latency assumed before the first answer (it is measured within one answer's time).
const FIRST_LATENCY: Duration = Duration::from_millis(250);

impl ClientStats {
    /// Takes one more answer's latency into the moving average.
    fn observe_latency(&self, took: Duration) {
        let new = took.as_micros().min(u64::MAX as u128) as u64;
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    new.max(1)
                } else {
                    ((1.0 - LATENCY_WEIGHT) * old as f64 + LATENCY_WEIGHT * new as f64) as u64
                })
            });
    }

    /// The moving average of the service's answer time, once it has answered.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The latency to plan with: the moving average once the service has answered; before
    /// that, at least [`FIRST_LATENCY`] and at least as long as the first request has waited
    /// (so that a slow first answer lets more windows start while it is awaited).
    fn planning_latency(&self) -> Duration {
        self.latency().unwrap_or_else(|| {
            let waited = self.first_sent.get().map(|t| t.elapsed());
            waited.unwrap_or_default().max(FIRST_LATENCY)
        })
    }

    fn count_code(&self, code: &str) {
        *self
            .by_code
            .lock()
            .expect("stats lock")
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// Answers by code (`OK`, error codes, `Timeout`, `NetworkError`, `MalformedResponse`).
    pub fn by_code(&self) -> BTreeMap<String, u64> {
        self.by_code.lock().expect("stats lock").clone()
    }
}

/// Little's law with a margin: windows in flight for `qps` at `latency`, from 1 to `ceiling`.
pub fn in_flight_for(qps: f64, latency: Duration, ceiling: usize) -> usize {
    let busy = (qps * latency.as_secs_f64() * IN_FLIGHT_MARGIN).ceil();
    let want = if busy.is_finite() {
        busy as usize
    } else {
        ceiling
    };
    want.saturating_add(IN_FLIGHT_SPARE)
        .clamp(1, ceiling.max(1))
}

/// A report and what it took to get it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The typed report.
    pub report: Report,
    /// Attempts made, 1 if the first succeeded.
    pub attempts: u32,
}

/// A call that failed for good, and after how many attempts.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error} (after {attempts} attempt{})", if *.attempts == 1 { "" } else { "s" })]
pub struct CallFailed {
    /// The last error.
    pub error: ApiError,
    /// Attempts made.
    pub attempts: u32,
}

/// Where one region's requests go, and its own rate budget (QPS limits are per region).
struct Route {
    endpoint: Endpoint,
    limiter: Arc<dyn RateLimiter>,
}

/// What [`CccClient::new`] takes as credentials: a fixed key pair, or a shared source that
/// renews temporary ones.
pub trait IntoCredentialSource {
    /// The shared source.
    fn into_source(self) -> Arc<CredentialSource>;
}

impl IntoCredentialSource for Credentials {
    fn into_source(self) -> Arc<CredentialSource> {
        Arc::new(CredentialSource::fixed(self))
    }
}

impl IntoCredentialSource for Arc<CredentialSource> {
    fn into_source(self) -> Arc<CredentialSource> {
        self
    }
}

/// The client. Cheap to share behind an `Arc`.
pub struct CccClient {
    http: reqwest::Client,
    /// `[source] region`'s route, for instances in no other region.
    default_route: Route,
    /// Other regions' routes, and which instances are in which region.
    routes: HashMap<String, Route>,
    instance_region: HashMap<String, String>,
    version: SignatureVersion,
    credentials: Arc<CredentialSource>,
    inflight: Arc<Semaphore>,
    retry: RetryPolicy,
    timeout_secs: u64,
    stats: Arc<ClientStats>,
}

impl std::fmt::Debug for CccClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CccClient")
            .field("endpoint", &self.default_route.endpoint.to_string())
            .field("regions", &self.routes.keys().collect::<Vec<_>>())
            .field("version", &self.version)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl CccClient {
    /// Builds a client from `[source]` (its `region`'s endpoint), the credentials and the run's
    /// shared limiter. Instances in other regions are added with [`CccClient::with_region`].
    pub fn new(
        source: &SourceConfig,
        credentials: impl IntoCredentialSource,
        limiter: Arc<dyn RateLimiter>,
    ) -> Result<Self, reqwest::Error> {
        let endpoint = source.endpoint_for(&source.region);
        // Every endpoint was checked when parsed: plain HTTP only to loopback.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(source.timeout_secs))
            .connect_timeout(Duration::from_secs(source.timeout_secs.min(10)))
            .user_agent(concat!("ccc-etl/", env!("CARGO_PKG_VERSION")))
            .https_only(
                source.endpoint_for(&source.region).url().scheme() == "https"
                    && source
                        .endpoints
                        .values()
                        .all(|e| e.url().scheme() == "https"),
            )
            .build()?;
        Ok(Self {
            http,
            default_route: Route { endpoint, limiter },
            routes: HashMap::new(),
            instance_region: HashMap::new(),
            version: source.signature_version,
            credentials: credentials.into_source(),
            inflight: Arc::new(Semaphore::new(source.concurrency)),
            retry: RetryPolicy {
                max_attempts: source.max_attempts,
                base: Duration::from_millis(source.backoff_base_ms),
                cap: Duration::from_millis(source.backoff_max_ms.max(source.backoff_base_ms)),
            },
            timeout_secs: source.timeout_secs,
            stats: Arc::new(ClientStats::default()),
        })
    }

    /// Sends `instances`' requests to `endpoint`, paced by `limiter` (the region's own budget).
    pub fn with_region(
        mut self,
        region: &str,
        endpoint: Endpoint,
        limiter: Arc<dyn RateLimiter>,
        instances: impl IntoIterator<Item = String>,
    ) -> Self {
        for i in instances {
            self.instance_region.insert(i, region.to_string());
        }
        self.routes
            .insert(region.to_string(), Route { endpoint, limiter });
        self
    }

    fn route(&self, instance: &str) -> &Route {
        self.instance_region
            .get(instance)
            .and_then(|r| self.routes.get(r))
            .unwrap_or(&self.default_route)
    }

    /// The run's counters.
    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    /// The credentials the client signs with.
    pub fn credentials(&self) -> &Arc<CredentialSource> {
        &self.credentials
    }

    /// The default region's rate limiter.
    pub fn limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.default_route.limiter
    }

    /// How many windows to keep in flight, at most `ceiling` (`concurrency`): as many as keep
    /// every region's allowed rate busy at the latency the service shows (Little's law: in
    /// flight = rate x latency), with a margin. The QPS limit, not the ceiling, sets the pace;
    /// a throttled (slower) rate needs fewer.
    pub fn in_flight_target(&self, ceiling: usize) -> usize {
        let qps: f64 = std::iter::once(&self.default_route)
            .chain(self.routes.values())
            .map(|r| r.limiter.current_qps())
            .sum();
        in_flight_for(qps, self.stats.planning_latency(), ceiling)
    }

    /// Fetches one report, retrying what is retryable with capped, fully jittered exponential
    /// backoff (at least `x-acs-retry-after` when the service sends it). Each attempt is signed
    /// afresh: new nonce, new timestamp.
    pub async fn get_trending_report(&self, req: &TrendingRequest) -> Result<Fetched, CallFailed> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if attempt > 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let route = self.route(&req.instance_id);
            let (credentials, outcome) = {
                let _permit = self
                    .inflight
                    .acquire()
                    .await
                    .expect("semaphore never closed");
                route.limiter.acquire().await;
                // Taken at the last moment: a request that waited for its slot does not sign
                // with credentials that expired meanwhile.
                let credentials = match self.credentials.get().await {
                    Ok(c) => c,
                    Err(e) => {
                        return Err(CallFailed {
                            error: ApiError::Credentials(e.to_string()),
                            attempts: attempt,
                        });
                    }
                };
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let sent = std::time::Instant::now();
                self.stats.first_sent.get_or_init(|| sent);
                let outcome = self.send_once(req, route, &credentials).await;
                self.stats.observe_latency(sent.elapsed());
                (credentials, outcome)
            };
            match outcome {
                Ok(report) => {
                    self.stats.count_code("OK");
                    return Ok(Fetched {
                        report,
                        attempts: attempt,
                    });
                }
                Err((error, retry_after)) => {
                    self.stats.count_code(error.code());
                    if error.code() == "InvalidSecurityToken.Expired"
                        && self.credentials.renewable()
                        && attempt < self.retry.max_attempts
                    {
                        // Renewed once for every request that met the same expiry; then
                        // this one goes again at once.
                        if let Err(e) = self.credentials.expired(&credentials).await {
                            return Err(CallFailed {
                                error: ApiError::Credentials(e.to_string()),
                                attempts: attempt,
                            });
                        }
                        continue;
                    }
                    if error.is_throttling() {
                        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                        route.limiter.on_throttled();
                    }
                    if !error.is_retryable() || attempt >= self.retry.max_attempts {
                        return Err(CallFailed {
                            error,
                            attempts: attempt,
                        });
                    }
                    let jitter = self.retry.delay(attempt, &mut rand::rng());
                    let delay = retry_after.map_or(jitter, |ra| ra.max(jitter));
                    tracing::debug!(
                        instance = %req.instance_id, code = error.code(), attempt,
                        delay_ms = delay.as_millis() as u64, "retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One signed HTTP exchange.
    async fn send_once(
        &self,
        req: &TrendingRequest,
        route: &Route,
        credentials: &Credentials,
    ) -> Result<Report, (ApiError, Option<Duration>)> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let now = Utc::now();
        let builder = match self.version {
            SignatureVersion::V1 => {
                let url = sign_v1_url(
                    route.endpoint.url(),
                    "GET",
                    &req.params(),
                    credentials,
                    &nonce,
                    &now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                );
                self.http.get(url)
            }
            SignatureVersion::V3 => {
                let (url, headers) = sign_v3_request(
                    route.endpoint.url(),
                    &route.endpoint.authority(),
                    &req.params(),
                    credentials,
                    &nonce,
                    &now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                );
                let mut b = self.http.post(url);
                for (k, v) in headers {
                    b = b.header(k, v);
                }
                b
            }
        };
        let resp = builder
            .send()
            .await
            .map_err(|e| (self.transport(e, &route.endpoint), None))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("x-acs-retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        let header_request_id = resp
            .headers()
            .get("x-acs-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| (self.transport(e, &route.endpoint), retry_after))?;
        interpret(status, &bytes, header_request_id, credentials).map_err(|e| (e, retry_after))
    }

    /// A transport failure, worded without the signed URL.
    fn transport(&self, e: reqwest::Error, endpoint: &Endpoint) -> ApiError {
        if e.is_timeout() {
            ApiError::Timeout(self.timeout_secs)
        } else {
            // The URL carries the signature (not a secret, but noise); keep the cause only.
            let e = e.without_url();
            let mut msg = e.to_string();
            let mut certificate = false;
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                certificate |= text.contains("certificate");
                msg.push_str(": ");
                msg.push_str(&text);
                source = s.source();
            }
            if certificate {
                return ApiError::Certificate {
                    host: endpoint.authority(),
                    detail: msg,
                };
            }
            ApiError::Network(msg)
        }
    }
}

/// Turns an answer into a report or an error. Every text the server sent passes through the
/// redactor first: a `SignatureDoesNotMatch` message quotes the AccessKeyId, the STS token and
/// the signature.
fn interpret(
    status: u16,
    bytes: &[u8],
    header_request_id: Option<String>,
    credentials: &Credentials,
) -> Result<Report, ApiError> {
    // Only error texts are scrubbed: a successful answer builds no redactor.
    let scrub = |s: String| credentials.redactor().scrub(&s);
    match parse_body(bytes) {
        Ok(Body::Ok(report)) if status == 200 => Ok(report),
        Ok(Body::Ok(report)) => Err(ApiError::Service {
            http_status: status,
            code: format!("HTTP{status}"),
            message: "non-200 status with a success body".into(),
            request_id: Some(report.request_id).filter(|r| !r.is_empty()),
        }),
        Ok(Body::Error {
            code,
            message,
            request_id,
        }) => Err(ApiError::Service {
            http_status: status,
            code: scrub(code),
            message: scrub(message),
            request_id: request_id.or(header_request_id),
        }),
        Err(malformed) if status >= 400 => Err(ApiError::Service {
            http_status: status,
            code: format!("HTTP{status}"),
            message: scrub(malformed.detail),
            request_id: header_request_id,
        }),
        Err(malformed) => Err(ApiError::Malformed {
            http_status: status,
            detail: scrub(malformed.detail),
            request_id: header_request_id,
            permanent: malformed.permanent,
        }),
    }
}

/// The V1 common parameters plus `params`, signed, as a full URL (GET: everything in the query).
pub fn sign_v1_url(
    base: &reqwest::Url,
    method: &str,
    params: &[(&str, String)],
    credentials: &Credentials,
    nonce: &str,
    timestamp: &str,
) -> reqwest::Url {
    sign::v1_url(
        base,
        (ACTION, API_VERSION),
        method,
        params,
        credentials.signing_key(),
        (nonce, timestamp),
    )
}

/// A V3-signed POST: the URL with the action's parameters in the query, and the headers to send.
pub fn sign_v3_request(
    base: &reqwest::Url,
    authority: &str,
    params: &[(&str, String)],
    credentials: &Credentials,
    nonce: &str,
    timestamp: &str,
) -> (reqwest::Url, Vec<(&'static str, String)>) {
    sign::v3_request(
        base,
        authority,
        (ACTION, API_VERSION),
        params,
        credentials.signing_key(),
        (nonce, timestamp),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_in_flight_follow_the_rate_times_the_latency_up_to_the_ceiling() {
        let ms = Duration::from_millis;
        // 20 per second: 1.5 x rate x latency, plus 2 for the commits.
        assert_eq!(in_flight_for(20.0, ms(50), 32), 4);
        assert_eq!(in_flight_for(20.0, ms(150), 32), 7);
        assert_eq!(in_flight_for(20.0, ms(400), 32), 14);
        assert_eq!(in_flight_for(20.0, ms(1000), 32), 32);
        // The ceiling, a throttled rate, an API that does not answer.
        assert_eq!(in_flight_for(20.0, ms(1000), 4), 4);
        assert_eq!(in_flight_for(5.0, ms(400), 32), 5);
        assert_eq!(in_flight_for(20.0, Duration::from_secs(30), 32), 32);
        assert_eq!(in_flight_for(0.0, ms(400), 32), 2);
        assert_eq!(in_flight_for(f64::INFINITY, ms(400), 32), 32);
    }

    #[test]
    fn the_latency_is_a_moving_average_of_the_answers() {
        let stats = ClientStats::default();
        assert_eq!(stats.latency(), None);
        assert_eq!(stats.planning_latency(), FIRST_LATENCY);
        // A first request awaited longer than that counts as that long.
        let long_ago = std::time::Instant::now() - Duration::from_secs(2);
        stats.first_sent.get_or_init(|| long_ago);
        assert!(stats.planning_latency() >= Duration::from_secs(2));
        stats.observe_latency(Duration::from_millis(100));
        assert_eq!(stats.latency(), Some(Duration::from_millis(100)));
        for _ in 0..50 {
            stats.observe_latency(Duration::from_millis(400));
        }
        let settled = stats.latency().unwrap().as_millis();
        assert!((399..=400).contains(&settled), "{settled}");
    }
    use rand::SeedableRng;

    #[test]
    fn full_jitter_stays_under_the_capped_exponential_ceiling() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for retry in 1..=8u32 {
            let ceiling = (100u64 << (retry - 1)).min(1000);
            let mut max_seen = Duration::ZERO;
            for _ in 0..200 {
                let d = p.delay(retry, &mut rng);
                assert!(d <= Duration::from_millis(ceiling), "retry {retry}: {d:?}");
                max_seen = max_seen.max(d);
            }
            assert!(
                max_seen > Duration::from_millis(ceiling / 2),
                "jitter spans the range"
            );
        }
    }

    #[test]
    fn v1_url_carries_every_common_parameter_and_a_verifiable_signature() {
        let creds = Credentials::new("key", "secret", Some("tok en"));
        let base = reqwest::Url::parse("http://127.0.0.1:1").unwrap();
        let req = TrendingRequest {
            instance_id: "ccc-test".into(),
            media_type: MediaType::Chat,
            start_ms: 1,
            end_ms: 2,
        };
        let url = sign_v1_url(
            &base,
            "GET",
            &req.params(),
            &creds,
            "n1",
            "2026-01-01T00:00:00Z",
        );
        let pairs: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["Action"], ACTION);
        assert_eq!(pairs["SecurityToken"], "tok en");
        assert_eq!(pairs["MediaType"], "Chat");
        let to_sign =
            sign::v1_string_to_sign("GET", pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(pairs["Signature"], sign::v1_signature("secret", &to_sign));
        assert!(url.query().unwrap().contains("SecurityToken=tok%20en"));
    }
}
