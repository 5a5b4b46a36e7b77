//! `[source]`: the API, where it is, how requests are signed, where the key comes from, and the
//! client's manners.

use std::fmt;
use std::net::IpAddr;

use reqwest::Url;
use serde::{Deserialize, Deserializer};

use super::{positive_f64, positive_u32, positive_u64, positive_usize};

/// `[source] credentials`: the whole chain, or one provider pinned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// The default chain.
    #[default]
    Chain,
    /// `ALIBABA_CLOUD_ACCESS_KEY_ID` and friends only.
    Env,
    /// OIDC / RRSA only.
    Oidc,
    /// The CLI profile only.
    CliProfile,
    /// The credentials file only.
    CredentialsFile,
    /// The ECS instance RAM role only.
    EcsRamRole,
    /// `ALIBABA_CLOUD_CREDENTIALS_URI` only.
    CredentialsUri,
}

impl Choice {
    /// The name in `pipeline.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Choice::Chain => "chain",
            Choice::Env => "env",
            Choice::Oidc => "oidc",
            Choice::CliProfile => "cli_profile",
            Choice::CredentialsFile => "credentials_file",
            Choice::EcsRamRole => "ecs_ram_role",
            Choice::CredentialsUri => "credentials_uri",
        }
    }
}

/// `[source]`: the API endpoint and the client's manners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Base URL for every region; HTTPS, or plain HTTP to a loopback address only. Unset: each
    /// region's endpoint as the official SDK derives it.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// The region of instances that do not name one.
    #[serde(default = "default_region", deserialize_with = "region")]
    pub region: String,
    /// Endpoint per region, ahead of `endpoint` (a proxy, a private endpoint, a test server).
    #[serde(default)]
    pub endpoints: std::collections::BTreeMap<String, Endpoint>,
    /// Where credentials come from: the default chain, or one provider pinned.
    #[serde(default)]
    pub credentials: Choice,
    /// Request signing scheme.
    #[serde(default)]
    pub signature_version: SignatureVersion,
    /// Requests per second across the whole run.
    #[serde(default = "default_max_qps", deserialize_with = "positive_f64")]
    pub max_qps: f64,
    /// Windows (and requests) in flight at most: a ceiling. How many are in flight follows the
    /// allowed rate and the API's latency (Little's law), so `max_qps` sets the pace.
    #[serde(default = "default_concurrency", deserialize_with = "positive_usize")]
    pub concurrency: usize,
    /// Per-request timeout, seconds.
    #[serde(default = "default_timeout", deserialize_with = "positive_u64")]
    pub timeout_secs: u64,
    /// Attempts per window before it fails (1 = no retry).
    #[serde(default = "default_attempts", deserialize_with = "positive_u32")]
    pub max_attempts: u32,
    /// First retry delay, milliseconds (doubles each attempt, full jitter).
    #[serde(default = "default_backoff_base", deserialize_with = "positive_u64")]
    pub backoff_base_ms: u64,
    /// Longest retry delay, milliseconds.
    #[serde(default = "default_backoff_max", deserialize_with = "positive_u64")]
    pub backoff_max_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: default_region(),
            endpoints: Default::default(),
            credentials: Default::default(),
            signature_version: SignatureVersion::default(),
            max_qps: default_max_qps(),
            concurrency: default_concurrency(),
            timeout_secs: default_timeout(),
            max_attempts: default_attempts(),
            backoff_base_ms: default_backoff_base(),
            backoff_max_ms: default_backoff_max(),
        }
    }
}

pub(super) fn default_region() -> String {
    "cn-shanghai".into()
}

fn region<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    validate_region(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

/// A region id such as `cn-shanghai` or `ap-southeast-1`.
pub fn validate_region(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "invalid region {s:?}: use a region id such as \"cn-shanghai\" or \"ap-southeast-1\""
        ));
    }
    Ok(())
}

/// Regions the official CCC SDK (`alibabacloud-ccc20200701`) sends to the central endpoint;
/// every other region goes to `ccc.{region}.aliyuncs.com`.
const CENTRAL_REGIONS: &[&str] = &[
    "ap-northeast-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-5",
    "cn-beijing",
    "cn-chengdu",
    "cn-hongkong",
    "cn-huhehaote",
    "cn-qingdao",
    "cn-shenzhen",
    "cn-zhangjiakou",
    "eu-central-1",
    "eu-west-1",
    "me-east-1",
    "us-east-1",
    "us-west-1",
    "cn-hangzhou-finance",
    "cn-shenzhen-finance-1",
    "cn-shanghai-finance-1",
    "cn-north-2-gov-1",
];

/// The CCC endpoint of `region` as the official SDK derives it: its endpoint map, else the
/// regional rule.
pub fn sdk_endpoint(region: &str) -> Endpoint {
    let host = if CENTRAL_REGIONS.contains(&region) {
        "ccc.aliyuncs.com".to_string()
    } else {
        format!("ccc.{region}.aliyuncs.com")
    };
    Endpoint::parse(&format!("https://{host}")).expect("a validated region makes a valid host")
}

impl SourceConfig {
    /// Where requests for `region`'s instances go: `[source.endpoints]`, else `endpoint`, else
    /// the SDK's rule.
    pub fn endpoint_for(&self, region: &str) -> Endpoint {
        self.endpoints
            .get(region)
            .or(self.endpoint.as_ref())
            .cloned()
            .unwrap_or_else(|| sdk_endpoint(region))
    }
}
pub(super) fn default_max_qps() -> f64 {
    5.0
}
pub(super) fn default_concurrency() -> usize {
    32
}
pub(super) fn default_timeout() -> u64 {
    30
}
pub(super) fn default_attempts() -> u32 {
    6
}
pub(super) fn default_backoff_base() -> u64 {
    200
}
pub(super) fn default_backoff_max() -> u64 {
    20_000
}

/// How requests are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureVersion {
    /// HMAC-SHA1 over the query (RPC classic).
    #[default]
    V1,
    /// ACS3-HMAC-SHA256 in the `Authorization` header.
    V3,
}

/// An endpoint the client may talk to: HTTPS anywhere, plain HTTP only to loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(Url);

impl Endpoint {
    /// Parses and checks the scheme rule.
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = Url::parse(s).map_err(|e| format!("invalid endpoint URL {s:?}: {e}"))?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("endpoint {s:?} has no host"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(host) => {}
            "http" => {
                return Err(format!(
                    "endpoint {s:?} uses plain HTTP to a non-loopback host: use https:// \
                     (plain HTTP is allowed only for the local emulator on 127.0.0.1, ::1 or localhost)"
                ));
            }
            other => return Err(format!("endpoint {s:?} has unsupported scheme {other:?}")),
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(format!(
                "endpoint {s:?} must be a bare origin such as https://ccc.cn-shanghai.aliyuncs.com"
            ));
        }
        Ok(Self(url))
    }

    /// The URL.
    pub fn url(&self) -> &Url {
        &self.0
    }

    /// `host[:port]` as sent in the `host` header.
    pub fn authority(&self) -> String {
        let host = self.0.host_str().unwrap_or_default();
        match self.0.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str().trim_end_matches('/'))
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Endpoint::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `localhost` or a loopback address (IPv6 in brackets or not).
pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
