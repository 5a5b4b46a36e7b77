//! `pipeline.toml` plus the environment, turned into a validated [`Config`] before any work.
//!
//! Every value that can be wrong is parsed into its type while the TOML is read, so an error
//! names the file, the line and the key. `[source] credentials` only chooses where the key
//! comes from ([`crate::credentials`] resolves it); secrets are never part of the file.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::error::InputError;
use crate::record::MediaType;

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

/// Environment variable holding the AccessKeyId.
pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
/// Environment variable holding the AccessKeySecret.
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
/// Environment variable holding the STS token, when the key pair is temporary.
pub const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";
/// Fallback for `[postgres] url`.
pub const ENV_DATABASE_URL: &str = "DATABASE_URL";

/// The API refuses data older than this many days.
pub const HORIZON_DAYS: i64 = 180;

/// The whole validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The CCC API and how to call it.
    #[serde(default)]
    pub source: SourceConfig,
    /// What to fetch.
    pub pipeline: PipelineConfig,
    /// The PostgreSQL sink; present means on.
    pub postgres: Option<PostgresConfig>,
    /// The Parquet sink; present means on.
    pub parquet: Option<ParquetConfig>,
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
    /// Requests in flight at most.
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

fn default_region() -> String {
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
fn default_max_qps() -> f64 {
    5.0
}
fn default_concurrency() -> usize {
    4
}
fn default_timeout() -> u64 {
    30
}
fn default_attempts() -> u32 {
    6
}
fn default_backoff_base() -> u64 {
    200
}
fn default_backoff_max() -> u64 {
    20_000
}

/// `[pipeline]`: instances, media, calendar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Call-center instances: ids, or `{ id = "...", region = "..." }`.
    #[serde(deserialize_with = "instance_list")]
    pub instances: Vec<InstanceSpec>,
    /// Media types to fetch for every instance.
    #[serde(default = "default_media", deserialize_with = "media_list")]
    pub media_types: Vec<MediaType>,
    /// IANA zone for calendar dates and day partitions.
    #[serde(default = "default_tz", deserialize_with = "timezone")]
    pub timezone: Tz,
    /// Days of recent history a nightly run fetches again.
    #[serde(default = "default_lookback", deserialize_with = "lookback")]
    pub lookback_days: u32,
    /// Minutes added to the 180-day horizon when planning, because time passes before sending.
    #[serde(default = "default_margin", deserialize_with = "margin")]
    pub horizon_margin_minutes: u32,
    /// `status` raises the aging-out alert for uncovered time that leaves the horizon within
    /// this many days.
    #[serde(default = "default_alert_days", deserialize_with = "alert_days")]
    pub aging_alert_days: u32,
    /// Several workers: how long a claimed window stays a worker's without a heartbeat (a dead
    /// worker's windows are taken over after this).
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Several workers: how often a worker extends its leases and re-reads the shared rate.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
}

fn default_lease() -> u64 {
    60
}

fn default_heartbeat() -> u64 {
    10
}

/// One configured instance and, if not `[source] region`, its region.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InstanceSpec {
    /// Just the id.
    Id(String),
    /// The id and its region.
    WithRegion {
        /// Instance id.
        id: String,
        /// Region id.
        region: String,
    },
}

impl InstanceSpec {
    /// The instance id.
    pub fn id(&self) -> &str {
        match self {
            InstanceSpec::Id(id) | InstanceSpec::WithRegion { id, .. } => id,
        }
    }

    /// Its region, if it names one.
    pub fn region(&self) -> Option<&str> {
        match self {
            InstanceSpec::Id(_) => None,
            InstanceSpec::WithRegion { region, .. } => Some(region),
        }
    }
}

impl From<String> for InstanceSpec {
    fn from(id: String) -> Self {
        InstanceSpec::Id(id)
    }
}

impl PipelineConfig {
    /// The instance ids, in the configured order.
    pub fn instance_ids(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.id().to_string()).collect()
    }

    /// `horizon_margin_minutes` in milliseconds.
    pub fn horizon_margin_ms(&self) -> i64 {
        self.horizon_margin_minutes as i64 * 60_000
    }
}

fn default_alert_days() -> u32 {
    7
}

fn alert_days<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (1..HORIZON_DAYS).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be between 1 and {}, got {v}",
            HORIZON_DAYS - 1
        )))
    }
}

fn default_media() -> Vec<MediaType> {
    vec![MediaType::Audio]
}
fn default_tz() -> Tz {
    chrono_tz::Asia::Shanghai
}
fn default_lookback() -> u32 {
    2
}
fn default_margin() -> u32 {
    60
}

/// `[postgres]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL; falls back to `DATABASE_URL`. May carry a password, so it never prints.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// Schema holding the tables, views and ledger.
    #[serde(default = "default_schema")]
    pub schema: SchemaName,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_ref().map(|_| "[redacted]"))
            .field("schema", &self.schema)
            .finish()
    }
}

fn default_schema() -> SchemaName {
    SchemaName("ccc".into())
}

impl PostgresConfig {
    /// The URL from the file, else from `DATABASE_URL`.
    pub fn resolve_url(&self) -> Result<SecretString, InputError> {
        let (url, from) = match &self.url {
            Some(url) => (url.clone(), "[postgres] url"),
            None => match std::env::var(ENV_DATABASE_URL) {
                Ok(v) if !v.trim().is_empty() => (SecretString::from(v), ENV_DATABASE_URL),
                _ => {
                    return Err(InputError::new(format!(
                        "[postgres] is configured but has no url and {ENV_DATABASE_URL} is not set"
                    )));
                }
            },
        };
        // Only the scheme is shown: the rest may carry a password.
        let text = url.expose_secret();
        let scheme = text.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("postgres" | "postgresql")) {
            return Err(InputError::new(format!(
                "{from} is not a PostgreSQL URL: it must start with postgres:// or postgresql:// \
                 (postgres://user[:password]@host[:port]/database){}",
                scheme.map(|s| format!(", not {s}://")).unwrap_or_default()
            )));
        }
        Ok(url)
    }
}

/// `[parquet]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// Where the tables live: a path, a `file://` URL, or an object-storage URL (`s3://`,
    /// `oss://`, `gs://`, `az://` followed by the bucket and an optional prefix).
    #[serde(default = "default_root", deserialize_with = "parquet_root")]
    pub root: RootUrl,
    /// Rows held in memory while days wait for their last window; above it the oldest days are
    /// written early (and merged again when the rest of their rows arrive).
    #[serde(default = "default_buffer_rows", deserialize_with = "positive_usize")]
    pub buffer_rows: usize,
    /// The object store's endpoint, for S3-compatible stores and OSS (an origin; for OSS it may
    /// contain `{bucket}` for virtual-hosted style). Defaults to `AWS_ENDPOINT_URL` for `s3://`
    /// and to `https://{bucket}.oss-{region}.aliyuncs.com` for `oss://`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bucket's region (`us-east-1`, or for OSS `cn-hangzhou`).
    #[serde(default)]
    pub region: Option<String>,
    /// Whether to replace day files with conditional writes (`If-Match` on the ETag read).
    /// Defaults to on for S3, GCS and Azure; OSS does not support them.
    #[serde(default)]
    pub conditional_writes: Option<bool>,
    /// Day files larger than this many MiB are uploaded in parts (multipart upload) instead
    /// of one PUT; 0 uploads every file in parts.
    #[serde(default = "default_multipart_mib")]
    pub multipart_threshold_mib: u64,
    /// How day files are compressed: `snappy` (the default), `zstd`, `lz4_raw` or `none`.
    #[serde(default)]
    pub compression: ParquetCompression,
    /// Object storage: seconds a request may take, retries included (a store that accepts
    /// connections and never answers fails the run at start within about this long).
    #[serde(default = "default_timeout", deserialize_with = "positive_u64")]
    pub timeout_secs: u64,
}

/// The compression codec of the day files written. Files already written keep theirs until
/// they are rewritten; readers handle a mix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    /// Snappy: what Spark, pyarrow and DuckDB write by default; every engine reads it.
    #[default]
    Snappy,
    /// Zstandard, level 3: about a tenth smaller, and more CPU per file (a codec context per
    /// column, each asking the CPU for its features, which a virtual machine traps).
    Zstd,
    /// LZ4 (raw blocks): cheapest; needs a recent reader (Parquet format 2.9).
    Lz4Raw,
    /// No compression beyond the encodings (dictionary, run lengths).
    None,
}

impl ParquetConfig {
    /// Parquet under `root`, with the defaults.
    pub fn at(root: impl Into<RootUrl>) -> Self {
        Self {
            root: root.into(),
            buffer_rows: default_buffer_rows(),
            endpoint: None,
            region: None,
            conditional_writes: None,
            multipart_threshold_mib: default_multipart_mib(),
            compression: ParquetCompression::default(),
            timeout_secs: default_timeout(),
        }
    }

    /// The local directory, when the root is one.
    pub fn local_root(&self) -> Option<&Path> {
        self.root.local()
    }
}

fn default_root() -> RootUrl {
    RootUrl::Local(PathBuf::from("warehouse"))
}

fn default_multipart_mib() -> u64 {
    32
}

/// Where a Parquet root lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootUrl {
    /// A local directory.
    Local(PathBuf),
    /// A bucket and prefix on an object store.
    Object(ObjectUrl),
}

impl RootUrl {
    /// The local directory, when the root is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            RootUrl::Local(p) => Some(p),
            RootUrl::Object(_) => None,
        }
    }
}

impl From<PathBuf> for RootUrl {
    fn from(p: PathBuf) -> Self {
        RootUrl::Local(p)
    }
}

impl From<&Path> for RootUrl {
    fn from(p: &Path) -> Self {
        RootUrl::Local(p.to_path_buf())
    }
}

impl fmt::Display for RootUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootUrl::Local(p) => write!(f, "{}", p.display()),
            RootUrl::Object(o) => o.fmt(f),
        }
    }
}

/// The kinds of object store a root may live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Amazon S3 and S3-compatible stores (MinIO, Ceph, ...).
    S3,
    /// Alibaba Cloud OSS, through its S3-compatible API.
    Oss,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

impl StoreKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            StoreKind::S3 => "s3",
            StoreKind::Oss => "oss",
            StoreKind::Gcs => "gs",
            StoreKind::Azure => "az",
        }
    }
}

/// `scheme://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    /// The store.
    pub kind: StoreKind,
    /// Bucket (container on Azure).
    pub bucket: String,
    /// Key prefix, without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind.scheme(), self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// A Parquet root from a path, a `file://` URL or an object-storage URL. An unknown scheme is
/// refused: a root written as `hdfs://...` must never land in a local directory called `hdfs:`.
pub fn parse_parquet_root(s: &str) -> Result<RootUrl, String> {
    if s.trim().is_empty() {
        return Err(
            "the Parquet root is empty: name a directory (a relative one is relative to this \
             file) or an object-storage URL, or remove the key for the default `warehouse`"
                .into(),
        );
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(RootUrl::Local(PathBuf::from(s)));
    };
    let kind = match scheme {
        "file" => {
            let url = Url::parse(s).map_err(|e| format!("invalid root URL {s:?}: {e}"))?;
            return url.to_file_path().map(RootUrl::Local).map_err(|_| {
                format!("root {s:?} is not a local file URL (file:///absolute/path)")
            });
        }
        "s3" | "s3a" => StoreKind::S3,
        "oss" => StoreKind::Oss,
        "gs" => StoreKind::Gcs,
        "az" | "azure" | "abfs" => StoreKind::Azure,
        other => {
            return Err(format!(
                "root {s:?}: unknown scheme {other}://; use a local path, file:///path, \
                 s3://bucket/prefix, oss://bucket/prefix, gs://bucket/prefix or \
                 az://container/prefix"
            ));
        }
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = !bucket.is_empty()
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !bucket_ok {
        return Err(format!(
            "root {s:?}: {bucket:?} is not a bucket name (letters, digits, '-', '.', '_')"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|p| p.is_empty() && !prefix.is_empty() || p == "." || p == "..")
        || prefix.contains(['?', '#', '\\'])
    {
        return Err(format!(
            "root {s:?}: the prefix {prefix:?} must be plain path segments (no '//', '.', '..', \
             '?', '#')"
        ));
    }
    Ok(RootUrl::Object(ObjectUrl {
        kind,
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    }))
}

fn parquet_root<'de, D: Deserializer<'de>>(d: D) -> Result<RootUrl, D::Error> {
    let s = String::deserialize(d)?;
    parse_parquet_root(&s).map_err(serde::de::Error::custom)
}

/// About 40 MB of rows.
pub const DEFAULT_BUFFER_ROWS: usize = 1_000_000;

fn default_buffer_rows() -> usize {
    DEFAULT_BUFFER_ROWS
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

/// Reads an environment variable (tests pass their own).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The endpoint an object-storage root is reached at, if not the store's default: `[parquet]
/// endpoint`, else (S3) `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`/`AWS_ENDPOINT` as `env` gives
/// them (`None` reads the process environment); for OSS the regional endpoint. HTTPS, or plain
/// HTTP to loopback only. `{bucket}` in an OSS endpoint is replaced by the bucket
/// (virtual-hosted style).
pub fn object_endpoint(
    pq: &ParquetConfig,
    url: &ObjectUrl,
    env: Option<EnvLookup<'_>>,
) -> Result<Option<Endpoint>, String> {
    let from_env = |k: &str| {
        match env {
            Some(f) => f(k),
            None => std::env::var(k).ok(),
        }
        .filter(|v| !v.trim().is_empty())
    };
    let raw = match (&pq.endpoint, url.kind) {
        (Some(e), _) => Some(e.clone()),
        (None, StoreKind::S3) => ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|k| from_env(k)),
        (None, StoreKind::Oss) => match &pq.region {
            Some(r) => Some(format!("https://{{bucket}}.oss-{r}.aliyuncs.com")),
            None => {
                return Err(format!(
                    "[parquet] root = \"{url}\" needs `region` (for example \"cn-hangzhou\") or \
                     `endpoint`"
                ));
            }
        },
        (None, _) => None,
    };
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.replace("{bucket}", &url.bucket);
    Endpoint::parse(text.trim_end_matches('/'))
        .map(Some)
        .map_err(|e| format!("[parquet] {e}"))
}

/// `localhost` or a loopback address (IPv6 in brackets or not).
pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A PostgreSQL schema name: lower-case letters, digits and `_`, not starting with a digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    /// Validates an identifier; nothing that would need quoting, nothing reserved to PostgreSQL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with("pg_");
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "invalid schema name {s:?}: use 1-63 lower-case letters, digits or _, \
                 starting with a letter or _ (and not pg_)"
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted as an SQL identifier (it is validated, the quotes are belt and braces).
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl<'de> Deserialize<'de> for SchemaName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SchemaName::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn positive_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("must be > 0, got {v}")))
    }
}

macro_rules! positive_int {
    ($name:ident, $t:ty) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
            let v = i64::deserialize(d)?;
            <$t>::try_from(v)
                .ok()
                .filter(|x| *x >= 1)
                .ok_or_else(|| serde::de::Error::custom(format!("must be >= 1, got {v}")))
        }
    };
}
positive_int!(positive_usize, usize);
positive_int!(positive_u64, u64);
positive_int!(positive_u32, u32);

fn lookback<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (0..HORIZON_DAYS).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be between 0 and {}, got {v}",
            HORIZON_DAYS - 1
        )))
    }
}

fn margin<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (0..=24 * 60).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be between 0 and 1440 minutes, got {v}"
        )))
    }
}

fn timezone<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Tz>().map_err(|_| {
        serde::de::Error::custom(format!(
            "unknown time zone {s:?}: use an IANA name such as \"Asia/Shanghai\" or \"UTC\""
        ))
    })
}

/// Instances: non-empty list, no duplicates, each id a plain token, each region valid.
fn instance_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<InstanceSpec>, D::Error> {
    let v = Vec::<InstanceSpec>::deserialize(d).map_err(|e| {
        serde::de::Error::custom(format!(
            "{e}: list instance ids, or tables such as {{ id = \"ccc-sg\", region = \"ap-southeast-1\" }}"
        ))
    })?;
    let ids: Vec<String> = v.iter().map(|i| i.id().to_string()).collect();
    validate_instances(&ids).map_err(serde::de::Error::custom)?;
    for r in v.iter().filter_map(InstanceSpec::region) {
        validate_region(r).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}

/// Checks a list of instance ids; also used for `--instance`.
pub fn validate_instances(v: &[String]) -> Result<(), String> {
    if v.is_empty() {
        return Err("the instance list is empty: name at least one instance".into());
    }
    for (i, id) in v.iter().enumerate() {
        if id.is_empty()
            || id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "invalid instance id {id:?}: use letters, digits, '-', '_' or '.'"
            ));
        }
        if v[..i].contains(id) {
            return Err(format!("instance {id:?} is listed twice"));
        }
    }
    Ok(())
}

fn media_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MediaType>, D::Error> {
    let v = Vec::<MediaType>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom(
            "the media type list is empty: use e.g. [\"Audio\"]",
        ));
    }
    let mut seen = Vec::new();
    for m in v {
        if seen.contains(&m) {
            return Err(serde::de::Error::custom(format!(
                "media type {m} is listed twice"
            )));
        }
        seen.push(m);
    }
    Ok(seen)
}

impl Config {
    /// The region of instance `id`: its own, else `[source] region`.
    pub fn region_of(&self, id: &str) -> &str {
        self.pipeline
            .instances
            .iter()
            .find(|i| i.id() == id)
            .and_then(InstanceSpec::region)
            .unwrap_or(&self.source.region)
    }

    /// Every region the configured instances are in, with its endpoint.
    pub fn regions(&self) -> std::collections::BTreeMap<String, Endpoint> {
        let mut out = std::collections::BTreeMap::new();
        out.insert(
            self.source.region.clone(),
            self.source.endpoint_for(&self.source.region),
        );
        for i in &self.pipeline.instances {
            if let Some(r) = i.region() {
                out.insert(r.to_string(), self.source.endpoint_for(r));
            }
        }
        out
    }

    /// Parses TOML text; `origin` names the file in messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, InputError> {
        let config = Self::parse_toml(text, origin)?;
        config
            .check_sinks()
            .map_err(|e| InputError::new(format!("{origin}: {e}")))?;
        Ok(config)
    }

    /// What the sections say together: an object-storage root needs PostgreSQL for its ledger
    /// and locks, and its endpoint must be one the store can be reached at safely.
    pub fn check_sinks(&self) -> Result<(), String> {
        let p = &self.pipeline;
        for region in self.source.endpoints.keys() {
            validate_region(region).map_err(|e| format!("[source.endpoints] {e}"))?;
        }
        if p.heartbeat_secs == 0 || p.lease_secs < 2 * p.heartbeat_secs {
            return Err(format!(
                "[pipeline] lease_secs = {} and heartbeat_secs = {}: the heartbeat must be at \
                 least 1 s and the lease at least two heartbeats, so that a live worker never \
                 loses its windows",
                p.lease_secs, p.heartbeat_secs
            ));
        }
        let Some(pq) = &self.parquet else {
            return Ok(());
        };
        let RootUrl::Object(url) = &pq.root else {
            return Ok(());
        };
        if self.postgres.is_none() {
            return Err(format!(
                "[parquet] root = \"{url}\" is on object storage, which needs a [postgres] \
                 section: the ledger of committed windows and the day-file locks live in \
                 PostgreSQL (object stores cannot append to a ledger file)"
            ));
        }
        object_endpoint(pq, url, None).map(|_| ())
    }

    fn parse_toml(text: &str, origin: &str) -> Result<Self, InputError> {
        toml::from_str::<Config>(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    let key = key_at(text, line);
                    let key = key.map(|k| format!(" (key `{k}`)")).unwrap_or_default();
                    InputError::new(format!("{origin}:{line}:{col}: {msg}{key}"))
                }
                None => InputError::new(format!("{origin}: {msg}")),
            }
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, InputError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError::new(format!(
                "cannot read config file {}: {e} (pass --config FILE, or copy pipeline.toml)",
                path.display()
            ))
        })?;
        let mut config = Self::from_toml(&text, &path.display().to_string())?;
        // A relative root is relative to the file, not to wherever cron or systemd started us.
        if let Some(pq) = &mut config.parquet
            && let RootUrl::Local(root) = &mut pq.root
            && root.is_relative()
        {
            let dir = path.parent().unwrap_or(Path::new(""));
            let dir = std::path::absolute(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
            .map_err(|e| {
                InputError::new(format!(
                    "cannot resolve the directory of {}: {e}",
                    path.display()
                ))
            })?;
            *root = dir.join(&*root);
        }
        Ok(config)
    }

    /// The configuration `migrate` uses with no file: the database of `DATABASE_URL`, schema
    /// `ccc`, every other key at its default.
    pub fn database_only() -> Self {
        Config {
            source: SourceConfig::default(),
            pipeline: PipelineConfig {
                instances: vec![],
                media_types: default_media(),
                timezone: default_tz(),
                lookback_days: default_lookback(),
                horizon_margin_minutes: default_margin(),
                aging_alert_days: default_alert_days(),
                lease_secs: default_lease(),
                heartbeat_secs: default_heartbeat(),
            },
            postgres: Some(PostgresConfig {
                url: None,
                schema: default_schema(),
            }),
            parquet: None,
        }
    }

    /// A configuration for the built-in emulator at `endpoint`, used by `demo` and tests.
    pub fn for_emulator(endpoint: &str, instances: Vec<String>) -> Self {
        Config {
            source: SourceConfig {
                endpoint: Some(Endpoint::parse(endpoint).expect("emulator endpoint is loopback")),
                max_qps: 50.0,
                concurrency: 4,
                timeout_secs: 10,
                backoff_base_ms: 50,
                backoff_max_ms: 2_000,
                ..SourceConfig::default()
            },
            pipeline: PipelineConfig {
                instances: instances.into_iter().map(InstanceSpec::from).collect(),
                media_types: vec![MediaType::Audio],
                timezone: default_tz(),
                lookback_days: default_lookback(),
                horizon_margin_minutes: default_margin(),
                aging_alert_days: default_alert_days(),
                lease_secs: default_lease(),
                heartbeat_secs: default_heartbeat(),
            },
            postgres: None,
            parquet: None,
        }
    }
}

/// The key on a given line of TOML text, for messages about values.
fn key_at(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?.trim();
    if l.starts_with('[') || l.starts_with('#') {
        return None;
    }
    let (k, _) = l.split_once('=')?;
    Some(k.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../pipeline.toml");

    #[test]
    fn object_storage_roots_parse_and_other_schemes_are_refused() {
        let url = |s: &str| match parse_parquet_root(s).unwrap() {
            RootUrl::Object(o) => (o.kind, o.bucket, o.prefix),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            url("s3://bucket/warehouse/ccc/"),
            (StoreKind::S3, "bucket".into(), "warehouse/ccc".into())
        );
        assert_eq!(url("oss://b"), (StoreKind::Oss, "b".into(), String::new()));
        assert_eq!(url("gs://b/p").0, StoreKind::Gcs);
        assert_eq!(url("az://c/p").0, StoreKind::Azure);
        assert_eq!(
            parse_parquet_root("s3://b/p").unwrap().to_string(),
            "s3://b/p"
        );
        for bad in [
            "hdfs://nn/wh",
            "s3:///p",
            "s3://b/a//c",
            "s3://b/../x",
            "s3://b c/p",
        ] {
            assert!(parse_parquet_root(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_parquet_root("file:///srv/wh").unwrap(),
            RootUrl::Local(PathBuf::from("/srv/wh"))
        );
        assert_eq!(
            parse_parquet_root("warehouse").unwrap(),
            RootUrl::Local(PathBuf::from("warehouse"))
        );
    }

    #[test]
    fn parquet_compression_is_snappy_unless_configured() {
        let base = "[pipeline]\ninstances = [\"a\"]\n[parquet]\nroot = \"wh\"\n";
        let pq = |extra: &str| {
            Config::from_toml(&format!("{base}{extra}"), "t.toml")
                .unwrap()
                .parquet
                .unwrap()
                .compression
        };
        assert_eq!(pq(""), ParquetCompression::Snappy);
        assert_eq!(pq("compression = \"zstd\"\n"), ParquetCompression::Zstd);
        assert_eq!(
            pq("compression = \"lz4_raw\"\n"),
            ParquetCompression::Lz4Raw
        );
        assert_eq!(pq("compression = \"none\"\n"), ParquetCompression::None);
        let e = err(&format!("{base}compression = \"gzip\"\n"));
        assert!(e.contains("compression") && e.contains("snappy"), "{e}");
    }

    #[test]
    fn an_object_storage_root_needs_postgres_and_a_safe_endpoint() {
        let base = "[pipeline]\ninstances = [\"a\"]\n";
        let e = err(&format!("{base}[parquet]\nroot = \"s3://b/wh\"\n"));
        assert!(e.contains("needs a [postgres] section"), "{e}");
        let pg = "[postgres]\nurl = \"postgres://localhost/x\"\n";
        let ok = Config::from_toml(
            &format!(
                "{base}{pg}[parquet]\nroot = \"s3://b/wh\"\nendpoint = \"http://127.0.0.1:9000\"\n"
            ),
            "p.toml",
        )
        .unwrap();
        assert_eq!(
            ok.parquet.unwrap().endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        let e = err(&format!(
            "{base}{pg}[parquet]\nroot = \"s3://b/wh\"\nendpoint = \"http://minio.internal:9000\"\n"
        ));
        assert!(e.contains("plain HTTP to a non-loopback host"), "{e}");
        let e = err(&format!("{base}{pg}[parquet]\nroot = \"oss://b/wh\"\n"));
        assert!(e.contains("needs `region`"), "{e}");
        let pq = ParquetConfig {
            region: Some("cn-hangzhou".into()),
            ..ParquetConfig::at(parse_parquet_root("oss://logs/wh").unwrap())
        };
        let RootUrl::Object(url) = &pq.root else {
            unreachable!()
        };
        assert_eq!(
            object_endpoint(&pq, url, None)
                .unwrap()
                .unwrap()
                .to_string(),
            "https://logs.oss-cn-hangzhou.aliyuncs.com"
        );
        // S3: the AWS SDKs' variable, checked by the same rule.
        let s3 = ParquetConfig::at(parse_parquet_root("s3://b/wh").unwrap());
        let RootUrl::Object(url) = &s3.root else {
            unreachable!()
        };
        let env = |k: &str| (k == "AWS_ENDPOINT_URL").then(|| "http://10.0.0.5:9000".to_string());
        let e = object_endpoint(&s3, url, Some(&env)).unwrap_err();
        assert!(e.contains("plain HTTP"), "{e}");
        let none = |_: &str| None;
        assert_eq!(object_endpoint(&s3, url, Some(&none)).unwrap(), None);
    }

    #[test]
    fn a_relative_parquet_root_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let file = etc.join("pipeline.toml");
        std::fs::write(
            &file,
            "[pipeline]\ninstances = [\"a\"]\n[parquet]\nroot = \"warehouse\"\n",
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(
            c.parquet.unwrap().root,
            RootUrl::Local(etc.join("warehouse"))
        );
        std::fs::write(
            &file,
            "[pipeline]\ninstances = [\"a\"]\n[parquet]\nroot = \"/srv/wh\"\n",
        )
        .unwrap();
        assert_eq!(
            Config::load(&file).unwrap().parquet.unwrap().root,
            RootUrl::Local(PathBuf::from("/srv/wh"))
        );
    }

    #[test]
    fn each_region_gets_the_endpoint_the_official_sdk_derives() {
        assert_eq!(
            sdk_endpoint("cn-shanghai").to_string(),
            "https://ccc.cn-shanghai.aliyuncs.com"
        );
        assert_eq!(
            sdk_endpoint("ap-southeast-1").to_string(),
            "https://ccc.aliyuncs.com"
        );
        assert_eq!(
            sdk_endpoint("cn-beijing").to_string(),
            "https://ccc.aliyuncs.com"
        );
        assert_eq!(
            sdk_endpoint("cn-hangzhou").to_string(),
            "https://ccc.cn-hangzhou.aliyuncs.com"
        );
        let c = Config::from_toml(
            "[source]\nregion = \"cn-hangzhou\"\n[source.endpoints]\n\"ap-southeast-1\" = \
             \"http://127.0.0.1:9001\"\n[pipeline]\ninstances = [\"a\", { id = \"b\", region = \
             \"ap-southeast-1\" }, { id = \"c\", region = \"cn-beijing\" }]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.pipeline.instance_ids(), vec!["a", "b", "c"]);
        assert_eq!(c.region_of("a"), "cn-hangzhou");
        assert_eq!(c.region_of("b"), "ap-southeast-1");
        let regions: Vec<(String, String)> = c
            .regions()
            .into_iter()
            .map(|(r, e)| (r, e.to_string()))
            .collect();
        assert_eq!(
            regions,
            vec![
                ("ap-southeast-1".into(), "http://127.0.0.1:9001".into()),
                ("cn-beijing".into(), "https://ccc.aliyuncs.com".into()),
                (
                    "cn-hangzhou".into(),
                    "https://ccc.cn-hangzhou.aliyuncs.com".into()
                ),
            ]
        );
        // An explicit endpoint serves every region without its own entry.
        let c = Config::from_toml(
            "[source]\nendpoint = \"http://127.0.0.1:9000\"\n[pipeline]\ninstances = [{ id = \
             \"b\", region = \"ap-southeast-1\" }]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c.source.endpoint_for("ap-southeast-1").to_string(),
            "http://127.0.0.1:9000"
        );
        let e = err("[pipeline]\ninstances = [{ id = \"b\", region = \"Mars 1\" }]\n");
        assert!(e.contains("invalid region \"Mars 1\""), "{e}");
        let e = err("[pipeline]\ninstances = [{ name = \"b\" }]\n");
        assert!(e.contains("list instance ids, or tables"), "{e}");
        let e = err("[source]\ncredentials = \"magic\"\n[pipeline]\ninstances = [\"a\"]\n");
        assert!(e.contains("credentials"), "{e}");
    }

    #[test]
    fn the_shipped_example_parses_with_the_documented_values() {
        let c = Config::from_toml(EXAMPLE, "pipeline.toml").expect("example parses");
        assert_eq!(c.source.endpoint, None);
        assert_eq!(c.source.region, "cn-shanghai");
        assert_eq!(
            c.source.endpoint_for(&c.source.region).to_string(),
            "https://ccc.cn-shanghai.aliyuncs.com"
        );
        assert_eq!(c.source.credentials, Choice::Chain);
        assert_eq!(c.source.signature_version, SignatureVersion::V1);
        assert_eq!(c.source.max_qps, 5.0);
        assert_eq!(c.source.concurrency, 4);
        assert_eq!(c.source.timeout_secs, 30);
        assert_eq!(c.source.max_attempts, 6);
        assert_eq!(c.pipeline.instance_ids(), vec!["ccc-test".to_string()]);
        assert_eq!(c.pipeline.media_types, vec![MediaType::Audio]);
        assert_eq!(c.pipeline.timezone, chrono_tz::Asia::Shanghai);
        assert_eq!(c.pipeline.lookback_days, 2);
        assert_eq!(c.postgres.as_ref().unwrap().schema.as_str(), "ccc");
        assert_eq!(
            c.parquet.as_ref().unwrap().root,
            RootUrl::Local(PathBuf::from("warehouse"))
        );
    }

    fn err(text: &str) -> String {
        Config::from_toml(text, "p.toml").unwrap_err().0
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = err("[pipeline]\ninstances = [\"a\"]\ncolour = 1\n");
        assert!(e.starts_with("p.toml:3:"), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn bad_values_are_named_with_their_line_and_key() {
        let e = err("[pipeline]\ninstances = [\"a\"]\ntimezone = \"Mars/Base\"\n");
        assert!(e.starts_with("p.toml:3:"), "{e}");
        assert!(e.contains("unknown time zone \"Mars/Base\""), "{e}");
        assert!(e.contains("key `timezone`"), "{e}");
        let e = err("[source]\nmax_qps = 0\n[pipeline]\ninstances = [\"a\"]\n");
        assert!(
            e.starts_with("p.toml:2:") && e.contains("must be > 0"),
            "{e}"
        );
        let e = err("[source]\nmax_qps = -1.5\n[pipeline]\ninstances = [\"a\"]\n");
        assert!(e.contains("must be > 0"), "{e}");
        let e = err("[pipeline]\ninstances = []\n");
        assert!(e.contains("instance list is empty"), "{e}");
        let e = err("[pipeline]\ninstances = [\"a\"]\nmedia_types = [\"Fax\"]\n");
        assert!(e.contains("unknown media type \"Fax\""), "{e}");
        let e = err("[pipeline]\ninstances = [\"a\"]\n[postgres]\nschema = \"x; drop table y\"\n");
        assert!(e.contains("invalid schema name"), "{e}");
        let e = err(
            "[source]\nendpoint = \"http://ccc.example.com\"\n[pipeline]\ninstances = [\"a\"]\n",
        );
        assert!(e.contains("plain HTTP to a non-loopback host"), "{e}");
        let e = err("[pipeline\ninstances = [\"a\"]\n");
        assert!(e.starts_with("p.toml:1:"), "{e}");
        let e = err("[source]\nconcurrency = \"four\"\n[pipeline]\ninstances = [\"a\"]\n");
        assert!(e.starts_with("p.toml:2:"), "{e}");
    }

    #[test]
    fn plain_http_is_allowed_to_loopback_only() {
        assert!(Endpoint::parse("http://127.0.0.1:8080").is_ok());
        assert!(Endpoint::parse("http://127.3.2.1:8080").is_ok());
        assert!(Endpoint::parse("http://[::1]:8080").is_ok());
        assert!(Endpoint::parse("http://localhost:8080").is_ok());
        assert!(Endpoint::parse("http://10.0.0.1").is_err());
        assert!(Endpoint::parse("ftp://127.0.0.1").is_err());
        assert!(Endpoint::parse("https://ccc.cn-shanghai.aliyuncs.com/some/path").is_err());
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080")
                .unwrap()
                .authority(),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn schema_names_that_would_need_quoting_are_refused() {
        for bad in [
            "",
            "Ccc",
            "1ccc",
            "c-c",
            "c\"c",
            "pg_catalog",
            &"x".repeat(64),
        ] {
            assert!(SchemaName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(SchemaName::parse("ccc_2").unwrap().quoted(), "\"ccc_2\"");
    }

    #[test]
    fn the_database_url_never_shows_in_debug() {
        let pg = PostgresConfig {
            url: Some(SecretString::from("postgres://u:pw@h/db".to_string())),
            schema: default_schema(),
        };
        assert!(!format!("{pg:?}").contains("pw"));
    }
}
