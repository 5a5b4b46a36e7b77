//! `[parquet]`: the root (a directory or an object-storage URL), the store's endpoint, and how day
//! files are written.

use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::{Deserialize, Deserializer};

use super::{
    Endpoint, EnvLookup, default_timeout, env_var, positive_u64, positive_usize, process_env,
};

/// Who writes a root: a pipeline's runs, or `ccc-etl demo`, whose sample data must never mix
/// with a pipeline's. Recorded in the root's `_ccc_etl/root.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootOwner {
    /// `backfill`, `nightly` and `verify --repair` of a configuration (roots written before
    /// the field existed too).
    #[default]
    Pipeline,
    /// `ccc-etl demo`.
    Demo,
}

/// `[parquet]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// Where the tables live: a path, a `file://` URL, or an object-storage URL (`s3://`,
    /// `oss://`, `az://` followed by the bucket and an optional prefix).
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
    /// Defaults to on for S3 and Azure; OSS does not support them.
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
    /// Who writes the root: a configuration's runs, or `ccc-etl demo` (never read from the
    /// file).
    #[serde(skip)]
    pub owner: RootOwner,
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
            owner: Default::default(),
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

pub(super) fn default_root() -> RootUrl {
    RootUrl::Local(PathBuf::from("warehouse"))
}

pub(super) fn default_multipart_mib() -> u64 {
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
    /// Azure Blob Storage.
    Azure,
}

impl StoreKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            StoreKind::S3 => "s3",
            StoreKind::Oss => "oss",
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

/// Why a `gs://` root is refused: ccc-etl claims only the stores its tests write to, and the one
/// GCS emulator from a package registry (PyPI's gcp-storage-emulator) answers object writes and
/// reads without the `ETag` header that every day-file write and conditional replace needs.
fn gcs_refused(s: &str) -> String {
    format!(
        "root {s:?}: Google Cloud Storage roots (gs://) are not supported, since they cannot be \
         tested here (no GCS emulator from a package registry sends the ETag object writes \
         need); GCS also serves the S3 API: root = \"s3://BUCKET/PREFIX\", endpoint = \
         \"https://storage.googleapis.com\", conditional_writes = false, and an HMAC key in \
         AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    )
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
        "gs" => return Err(gcs_refused(s)),
        "az" | "azure" | "abfs" => StoreKind::Azure,
        other => {
            return Err(format!(
                "root {s:?}: unknown scheme {other}://; use a local path, file:///path, \
                 s3://bucket/prefix, oss://bucket/prefix or \
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

pub(super) fn default_buffer_rows() -> usize {
    DEFAULT_BUFFER_ROWS
}

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
    let from_env = |k: &str| env_var(env.unwrap_or(&process_env), k);
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
