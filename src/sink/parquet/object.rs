//! A Parquet root on object storage (S3 and S3-compatible stores, Alibaba Cloud OSS, Azure)
//! through the `object_store` crate.
//!
//! The layout is the local one: `{root}/{table}/dt=YYYY-MM-DD/part-00000.parquet` and
//! `{root}/_ccc_etl/root.json`. A day file is replaced by one PUT of the whole object, which is
//! atomic on every store: a reader sees the old or the new file, never a part of one. Two guards
//! keep a concurrent writer's rows from being overwritten:
//!
//! - the day's lock in PostgreSQL (`pg_advisory_xact_lock`), held while the day is read, merged
//!   and written. An object-storage root always has PostgreSQL (its ledger lives there), so this
//!   guard is always on; it is the only one on OSS, which rejects conditional writes, and for
//!   files above the multipart threshold, which cannot be written conditionally;
//! - where the store supports it (S3, Azure), the PUT is conditional: `If-Match` on the ETag
//!   that was read (`If-None-Match: *` for a new file). On a precondition failure the day is read
//!   again, merged again and written again.
//!
//! The ETag each write returns is what the ledger records, and what the next run's listing is
//! compared with. A failed multipart upload is aborted; one left by a killed process is removed
//! by the bucket's lifecycle rule (see the README).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};
use regex::Regex;
use sqlx::PgPool;

use super::ReadError;
use super::error::{Failure, RootError, failure_of};
use super::layout::DAMAGED_DIR;
use super::layout::{DATA_FILE, Listed, Listing, Partition, RootMeta, Stray};
use crate::config::{ObjectUrl, ParquetConfig, StoreKind, object_endpoint};
use crate::ledger::FILE_LEDGER_DIR;
use crate::record::Table;
use crate::redact::Redactor;

/// Size of the parts of a multipart upload.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// How often a conditional write is tried again after another writer changed the file.
pub(crate) const CONFLICT_ATTEMPTS: u32 = 8;

/// A root on an object store.
pub struct ObjectRoot {
    store: Arc<dyn ObjectStore>,
    url: ObjectUrl,
    prefix: ObjPath,
    conditional: bool,
    multipart_threshold: usize,
    day_locks: Option<PgPool>,
    secrets: StoreSecrets,
}

impl std::fmt::Debug for ObjectRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRoot")
            .field("url", &self.url.to_string())
            .field("conditional", &self.conditional)
            .finish_non_exhaustive()
    }
}

/// A store's error text on one line: an XML error body (S3, OSS) as its code and message.
pub(crate) fn one_line(text: &str) -> String {
    static XML: std::sync::LazyLock<Regex> =
        std::sync::LazyLock::new(|| Regex::new(r"(?s)<\?xml.*</Error>").expect("valid pattern"));
    static FIELD: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"(?s)<(Code|Message)>(.*?)</(?:Code|Message)>").expect("valid pattern")
    });
    let text = XML.replace_all(text, |c: &regex::Captures<'_>| {
        FIELD
            .captures_iter(&c[0])
            .map(|f| format!("{}: {}", &f[1], &f[2]))
            .collect::<Vec<_>>()
            .join(", ")
    });
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The outcome of one write of a day file.
#[derive(Debug)]
pub enum PutOutcome {
    /// Written; the new ETag.
    Written(String),
    /// Another writer changed the file since it was read.
    Conflict,
}

/// A day file as read: its bytes and what a conditional write must match.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The object.
    pub bytes: Bytes,
    /// Its ETag and version, for `If-Match`.
    pub version: UpdateVersion,
}

/// Whether writes to `url` are conditional (`If-Match`/`If-None-Match`): on by default, off
/// on OSS, which rejects them.
fn conditional_writes(pq: &ParquetConfig, url: &ObjectUrl) -> Result<bool, String> {
    match (url.kind, pq.conditional_writes) {
        (StoreKind::Oss, Some(true)) => Err(format!(
            "[parquet] conditional_writes = true: {url} is on OSS, which rejects \
             If-Match/If-None-Match writes (HTTP 501); remove the key"
        )),
        (StoreKind::Oss, _) => Ok(false),
        (_, c) => Ok(c.unwrap_or(true)),
    }
}

/// How to reach one root's store, decided by [`ObjectRoot::open`].
struct Connect<'a> {
    pq: &'a ParquetConfig,
    url: &'a ObjectUrl,
    endpoint: Option<&'a crate::config::Endpoint>,
    client: ClientOptions,
    retry: RetryConfig,
    conditional: bool,
}

impl Connect<'_> {
    /// S3 and compatible stores, configured as the AWS tools read their environment.
    fn s3(self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let mut b = s3_from_env()
            .with_bucket_name(&self.url.bucket)
            .with_client_options(self.client)
            .with_retry(self.retry)
            .with_conditional_put(if self.conditional {
                S3ConditionalPut::ETagMatch
            } else {
                S3ConditionalPut::Disabled
            });
        if let Some(e) = self.endpoint {
            b = b.with_endpoint(e.to_string());
        }
        if let Some(r) = &self.pq.region {
            b = b.with_region(r);
        }
        b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
    }

    /// OSS through its S3 API: `OSS_ACCESS_KEY_*` when set, else the Alibaba Cloud chain.
    fn oss(
        self,
        credentials: crate::config::Choice,
    ) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let virtual_hosted = self
            .pq
            .endpoint
            .as_ref()
            .is_none_or(|endpoint| endpoint.contains("{bucket}"));
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&self.url.bucket)
            .with_client_options(self.client)
            .with_retry(self.retry)
            .with_region(self.pq.region.as_deref().unwrap_or("cn-hangzhou"))
            .with_virtual_hosted_style_request(virtual_hosted)
            .with_conditional_put(S3ConditionalPut::Disabled);
        b = match (env("OSS_ACCESS_KEY_ID"), env("OSS_ACCESS_KEY_SECRET")) {
            (Some(id), Some(secret)) => {
                let b = b.with_access_key_id(id).with_secret_access_key(secret);
                match env("OSS_SESSION_TOKEN") {
                    Some(t) => b.with_token(t),
                    None => b,
                }
            }
            _ => b.with_credentials(Arc::new(ChainCredentials {
                choice: credentials,
                cached: std::sync::Mutex::new(None),
            })),
        };
        if let Some(e) = self.endpoint {
            b = b.with_endpoint(e.to_string());
        }
        b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
    }
}

impl ObjectRoot {
    /// The root `url` as `[parquet]` configures it: endpoint, region, credentials from the
    /// environment as the store's own tools read them (see the README), HTTPS except to loopback.
    /// An `oss://` root signs with `OSS_ACCESS_KEY_ID`/`OSS_ACCESS_KEY_SECRET` when they are set,
    /// else with the Alibaba Cloud credential chain (`credentials` pins a provider), the same
    /// credentials as the API client.
    pub fn open(
        pq: &ParquetConfig,
        url: &ObjectUrl,
        credentials: crate::config::Choice,
    ) -> Result<Self, RootError> {
        let endpoint = object_endpoint(pq, url, None).map_err(RootError::invalid)?;
        let conditional = conditional_writes(pq, url).map_err(RootError::invalid)?;
        let allow_http = endpoint
            .as_ref()
            .is_some_and(|e| e.url().scheme() == "http");
        let timeout = Duration::from_secs(pq.timeout_secs);
        let client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(timeout)
            .with_connect_timeout(timeout.min(Duration::from_secs(10)));
        // Retries stop once a request has taken `timeout`: a silent store fails in about that
        // long, not in the library's three minutes of retries.
        let retry = RetryConfig {
            max_retries: 4,
            retry_timeout: timeout,
            ..RetryConfig::default()
        };
        let secrets = StoreSecrets::from_env();
        let how = Connect {
            pq,
            url,
            endpoint: endpoint.as_ref(),
            client,
            retry,
            conditional,
        };
        let built = match url.kind {
            StoreKind::S3 => how.s3(),
            StoreKind::Oss => how.oss(credentials),
            StoreKind::Azure => MicrosoftAzureBuilder::from_env()
                .with_container_name(&url.bucket)
                .with_client_options(how.client)
                .with_retry(how.retry)
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
        };
        let store = built.map_err(|e| {
            RootError::invalid(format!(
                "cannot use {url}: {}",
                secrets.scrub(&e.to_string())
            ))
        })?;
        let mut root = Self::with_store(store, url.clone(), conditional);
        root.secrets = secrets;
        root.multipart_threshold = (pq.multipart_threshold_mib as usize).saturating_mul(1 << 20);
        Ok(root)
    }

    /// A root on `store` (tests bring their own).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: ObjectUrl, conditional: bool) -> Self {
        let prefix = ObjPath::from(url.prefix.as_str());
        Self {
            store,
            url,
            prefix,
            conditional,
            multipart_threshold: 32 << 20,
            day_locks: None,
            secrets: StoreSecrets::default(),
        }
    }

    /// Takes each day's lock in PostgreSQL while the day is read, merged and written.
    pub fn with_day_locks(mut self, pool: PgPool) -> Self {
        self.day_locks = Some(pool);
        self
    }

    /// Uploads files larger than `bytes` in parts.
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    /// The root's URL.
    pub fn url(&self) -> &ObjectUrl {
        &self.url
    }

    /// Whether day files are replaced with conditional writes.
    pub fn conditional(&self) -> bool {
        self.conditional
    }

    fn key(&self, rel: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    fn rel_day(table: Table, day: NaiveDate) -> String {
        format!("{}/{}/{DATA_FILE}", table.name(), Partition::day_dir(day))
    }

    fn meta_key(&self) -> ObjPath {
        self.key(&format!("{FILE_LEDGER_DIR}/root.json"))
    }

    /// The object of one table's day.
    pub fn day_key(&self, table: Table, day: NaiveDate) -> ObjPath {
        self.key(&Self::rel_day(table, day))
    }

    /// `scheme://bucket/prefix/...` of one table's day, for messages.
    pub fn location(&self, table: Table, day: NaiveDate) -> String {
        format!(
            "{}://{}/{}",
            self.url.kind.scheme(),
            self.url.bucket,
            self.day_key(table, day)
        )
    }

    /// `what` failed with `e`: its kind kept, its text scrubbed of secrets and on one line.
    fn fail(&self, what: &str, e: object_store::Error) -> RootError {
        let detail = one_line(&self.secrets.scrub(&e.to_string()));
        RootError::store(what, e, &detail)
    }

    /// The root's `root.json`, if it has one.
    pub async fn read_meta(&self) -> Result<Option<RootMeta>, RootError> {
        let key = self.meta_key();
        match self.store.get(&key).await {
            Ok(r) => {
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| self.fail(&format!("cannot read {}", self.at(&key)), e))?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    RootError::invalid(format!(
                        "{} is not a ccc-etl root description: {e}",
                        self.at(&key)
                    ))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(&format!("cannot read {}", self.at(&key)), e)),
        }
    }

    /// Writes `root.json` (one PUT).
    pub async fn write_meta(&self, meta: &RootMeta) -> Result<(), RootError> {
        let key = self.meta_key();
        let text = serde_json::to_vec_pretty(meta).expect("a root description encodes");
        self.store
            .put(&key, PutPayload::from(text))
            .await
            .map(|_| ())
            .map_err(|e| self.fail(&format!("cannot write {}", self.at(&key)), e))
    }

    /// `scheme://bucket/key`, for messages.
    pub fn at(&self, key: &ObjPath) -> String {
        format!("{}://{}/{key}", self.url.kind.scheme(), self.url.bucket)
    }

    /// Every day file, one listing per table.
    pub async fn list(&self) -> Result<Vec<Listed>, RootError> {
        self.list_all().await.map(|l| l.files)
    }

    /// Every day file, and every other object directly in a day's folder: one listing per table.
    pub async fn list_all(&self) -> Result<Listing, RootError> {
        let mut out = Listing::default();
        for table in Table::ALL {
            let prefix = self.key(table.name());
            let mut objects = self.store.list(Some(&prefix));
            while let Some(meta) = objects
                .try_next()
                .await
                .map_err(|e| self.fail(&format!("cannot list {}", self.at(&prefix)), e))?
            {
                let Some((partition, name)) = partition_of(&prefix, &meta.location) else {
                    continue;
                };
                let day = match partition {
                    Partition::Day(day) if name == DATA_FILE => day,
                    partition => {
                        out.strays.push(Stray {
                            table,
                            partition,
                            name,
                            location: self.at(&meta.location),
                        });
                        continue;
                    }
                };
                out.files.push(Listed {
                    table,
                    day,
                    location: self.at(&meta.location),
                    etag: etag_of(meta.e_tag.as_deref(), &meta),
                });
            }
        }
        out.files.sort_by_key(|a| (a.table, a.day));
        out.strays.sort_by(|a, b| {
            (a.table, &a.partition, &a.name).cmp(&(b.table, &b.partition, &b.name))
        });
        Ok(out)
    }

    /// Moves a stray object to `_ccc_etl/set-aside/{table}/{folder}/{name}.{time}` (a copy, then
    /// a delete of one object). Returns where it went.
    pub async fn set_aside(&self, stray: &Stray) -> Result<String, RootError> {
        let from = self.key(&format!(
            "{}/{}/{}",
            stray.table.name(),
            stray.partition,
            stray.name
        ));
        let to = self.key(&stray.aside_rel());
        self.store
            .copy(&from, &to)
            .await
            .map_err(|e| self.fail(&format!("cannot copy {} aside", self.at(&from)), e))?;
        self.store
            .delete(&from)
            .await
            .map_err(|e| self.fail(&format!("cannot delete {}", self.at(&from)), e))?;
        Ok(self.at(&to))
    }

    /// One table's day file, if there is one.
    pub async fn fetch(&self, table: Table, day: NaiveDate) -> Result<Option<Fetched>, ReadError> {
        let key = self.day_key(table, day);
        let io = |e: object_store::Error| ReadError::Io {
            location: self.at(&key),
            refused: failure_of(&e) == Failure::Refused,
            detail: self.secrets.scrub(&e.to_string()),
        };
        let got = match self.store.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got.bytes().await.map_err(io)?;
        Ok(Some(Fetched { bytes, version }))
    }

    /// Whether a new file of `len` bytes is created with `If-None-Match: *` (fails if the
    /// file exists): with conditional writes, below the multipart threshold.
    pub fn creates(&self, len: usize) -> bool {
        self.conditional && len <= self.multipart_threshold
    }

    /// Writes a day file: one conditional PUT where the store supports it and the file is
    /// below the multipart threshold, else one unconditional PUT or a multipart upload (under
    /// the day's lock). `read` is what the merge read (`None`: there was no file).
    pub async fn put_day(
        &self,
        table: Table,
        day: NaiveDate,
        body: Vec<u8>,
        read: Option<&UpdateVersion>,
    ) -> Result<PutOutcome, RootError> {
        let key = self.day_key(table, day);
        if body.len() > self.multipart_threshold {
            return self
                .put_multipart(&key, body)
                .await
                .map(PutOutcome::Written);
        }
        let mode = match (self.conditional, read) {
            (false, _) => PutMode::Overwrite,
            (true, Some(v)) => PutMode::Update(v.clone()),
            (true, None) => PutMode::Create,
        };
        match self
            .store
            .put_opts(&key, PutPayload::from(body), PutOptions::from(mode))
            .await
        {
            Ok(r) => Ok(PutOutcome::Written(etag_text(
                r.e_tag.as_deref(),
                r.version,
            ))),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::Conflict),
            Err(e) => Err(self.fail(&format!("cannot write {}", self.at(&key)), e)),
        }
    }

    async fn put_multipart(&self, key: &ObjPath, body: Vec<u8>) -> Result<String, RootError> {
        let what = || format!("cannot upload {} in parts", self.at(key));
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| self.fail(&what(), e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        for chunk in body.chunks(PART_SIZE) {
            if let Err(e) = w.wait_for_capacity(2).await {
                let _ = w.abort().await;
                return Err(self.fail(&what(), e));
            }
            w.write(chunk);
        }
        drop(body);
        // `finish` aborts the upload itself when completing it fails.
        let r = w.finish().await.map_err(|e| self.fail(&what(), e))?;
        Ok(etag_text(r.e_tag.as_deref(), r.version))
    }

    /// How often a transaction holding a day's lock shows it is alive while the day is read,
    /// merged and written (the shortest lease, hence idle timeout, is 2 s).
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Writes and deletes a probe object under `_ccc_etl/`: the credentials can write here. A
    /// store that answers no (a missing bucket, a refused key: the configuration) is told from
    /// one that could not be reached or failed (the network, the service) by the error's kind.
    pub async fn probe(&self) -> Result<(), RootError> {
        let key = self.key(&format!(
            "{FILE_LEDGER_DIR}/write-probe-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let failed = |e: object_store::Error| {
            let what = match failure_of(&e) {
                Failure::Refused => format!("the Parquet root {} is not writable", self.url),
                _ => format!("cannot reach the Parquet root {}", self.url),
            };
            self.fail(&what, e)
        };
        self.store
            .put(&key, PutPayload::from_static(b"probe"))
            .await
            .map_err(failed)?;
        self.store.delete(&key).await.map_err(failed)
    }

    /// Moves a damaged day file to `_ccc_etl/damaged/...` (a copy, then a delete of one object:
    /// no bulk delete, which OSS's S3 API handles differently). Returns where it went.
    pub async fn quarantine(&self, table: Table, day: NaiveDate) -> Result<String, RootError> {
        let from = self.day_key(table, day);
        let to = self.key(&format!(
            "{FILE_LEDGER_DIR}/{DAMAGED_DIR}/{}.{}",
            Self::rel_day(table, day),
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        self.store.copy(&from, &to).await.map_err(|e| {
            self.fail(
                &format!("cannot copy the damaged file {} aside", self.at(&from)),
                e,
            )
        })?;
        self.store
            .delete(&from)
            .await
            .map_err(|e| self.fail(&format!("cannot delete {}", self.at(&from)), e))?;
        Ok(self.at(&to))
    }

    /// Holds the day's lock in PostgreSQL until the returned transaction ends (none without a
    /// pool: conditional writes alone then guard the day).
    pub async fn lock_day(
        &self,
        root_id: &str,
        day: NaiveDate,
    ) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, String> {
        let Some(pool) = &self.day_locks else {
            return Ok(None);
        };
        let cannot =
            |e: sqlx::Error| format!("cannot take the lock of day {day} in PostgreSQL: {e}");
        let mut tx = pool.begin().await.map_err(cannot)?;
        let n = (day - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days() as i32;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), $2)")
            .bind(format!("ccc-etl:parquet-day:{root_id}"))
            .bind(n)
            .execute(&mut *tx)
            .await
            .map_err(cannot)?;
        Ok(Some(tx))
    }
}

/// The folder and name of an object directly in a folder of a table's,
/// `{prefix}/{folder}/{name}`; nested folders are not looked into.
fn partition_of(prefix: &ObjPath, location: &ObjPath) -> Option<(Partition, String)> {
    let mut parts = location.prefix_match(prefix)?;
    let dir = parts.next()?;
    let file = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((Partition::parse(dir.as_ref()), file.as_ref().to_string()))
}

/// An ETag as the ledger records it: without quotes; a store without ETags gives its version,
/// else the modification time and size.
fn etag_of(e_tag: Option<&str>, meta: &object_store::ObjectMeta) -> String {
    match e_tag {
        Some(e) => e.trim_matches('"').to_string(),
        None => meta.version.clone().unwrap_or_else(|| {
            format!(
                "{:x}-{:x}",
                meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
                meta.size
            )
        }),
    }
}

/// An ETag as the ledger records it: without quotes, else the version.
pub(super) fn etag_text(e_tag: Option<&str>, version: Option<String>) -> String {
    match (e_tag, version) {
        (Some(e), _) => e.trim_matches('"').to_string(),
        (None, Some(v)) => v,
        (None, None) => String::new(),
    }
}

/// An S3 builder from the `AWS_*` variables, except the endpoint and plain-HTTP ones: the
/// endpoint is checked and set by [`ObjectRoot::open`], and plain HTTP is allowed to loopback
/// only, whatever `AWS_ALLOW_HTTP` says.
fn s3_from_env() -> AmazonS3Builder {
    let mut b = AmazonS3Builder::new();
    for (k, v) in std::env::vars() {
        if !k.starts_with("AWS_") || k.starts_with("AWS_ENDPOINT") || k == "AWS_ALLOW_HTTP" {
            continue;
        }
        if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            b = b.with_config(key, v);
        }
    }
    b
}

fn env(k: &str) -> Option<String> {
    crate::config::env_var(&crate::config::process_env, k)
}

/// The Alibaba Cloud credential chain as `object_store` asks for credentials: the process's one
/// [`CredentialSource`](crate::credentials::CredentialSource), so the API client and the OSS
/// root renew temporary credentials once for both.
#[derive(Debug)]
struct ChainCredentials {
    choice: crate::config::Choice,
    /// The last credentials handed out, converted once.
    cached: std::sync::Mutex<Option<CachedCredential>>,
}

type CachedCredential = (
    Arc<crate::credentials::Credentials>,
    Arc<object_store::aws::AwsCredential>,
);

#[async_trait::async_trait]
impl object_store::CredentialProvider for ChainCredentials {
    type Credential = object_store::aws::AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<Self::Credential>> {
        let failed = |e: String| object_store::Error::Generic {
            store: "OSS",
            source: e.into(),
        };
        let source = crate::credentials::process_source(self.choice)
            .await
            .map_err(|e| failed(format!("{e:#}")))?;
        let now = source.get().await.map_err(|e| failed(e.to_string()))?;
        let mut cached = self.cached.lock().expect("credential cache");
        if let Some((c, aws)) = cached.as_ref()
            && Arc::ptr_eq(c, &now)
        {
            return Ok(aws.clone());
        }
        let aws = Arc::new(object_store::aws::AwsCredential {
            key_id: now.access_key_id.clone(),
            secret_key: now.secret().to_string(),
            token: now.token().map(str::to_string),
        });
        *cached = Some((now, aws.clone()));
        Ok(aws)
    }
}

/// The credentials a store may echo back in an error, removed from every message by the one
/// [`Redactor`]: those of the store's variables, and the chain's current ones.
#[derive(Clone, Default)]
pub struct StoreSecrets {
    env: Redactor,
}

impl StoreSecrets {
    /// The values of the credential variables of every store.
    pub fn from_env() -> Self {
        let ids = [
            "AWS_ACCESS_KEY_ID",
            "OSS_ACCESS_KEY_ID",
            crate::config::ENV_ACCESS_KEY_ID,
            "AZURE_STORAGE_ACCOUNT_NAME",
        ];
        let secrets = [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "OSS_ACCESS_KEY_SECRET",
            "OSS_SESSION_TOKEN",
            crate::config::ENV_ACCESS_KEY_SECRET,
            crate::config::ENV_SECURITY_TOKEN,
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_CLIENT_SECRET",
        ];
        let env_redactor = ids
            .iter()
            .filter_map(|k| env(k))
            .fold(Redactor::default(), |r, v| r.id(&v));
        let env_redactor = secrets
            .iter()
            .filter_map(|k| env(k))
            .fold(env_redactor, |r, v| r.secret(&v));
        Self { env: env_redactor }
    }

    /// `text` without signed material, secrets or tokens, and with key ids masked.
    pub fn scrub(&self, text: &str) -> String {
        // The chain's credentials change during a run: the ones in use now.
        match crate::credentials::process_credentials() {
            Some(c) => self
                .env
                .clone()
                .id(&c.access_key_id)
                .secret(c.secret())
                .secret(c.token().unwrap_or_default())
                .scrub(text),
            None => self.env.scrub(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_is_one_line_with_the_xml_body_reduced_to_its_code() {
        let text = "Generic S3 error: Error performing PUT http://127.0.0.1/b/k in 1ms - \
                    Server returned non-2xx status code: 404 Not Found: \
                    <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>NoSuchBucket</Code>\n  \
                    <Message>The specified bucket does not exist</Message>\n  <BucketName>b</BucketName>\n</Error>";
        let line = one_line(text);
        assert!(!line.contains('\n') && !line.contains('<'), "{line}");
        assert!(
            line.ends_with(
                "404 Not Found: Code: NoSuchBucket, Message: The specified bucket does not exist"
            ),
            "{line}"
        );
    }

    #[test]
    fn objects_directly_in_a_day_folder_are_listed_with_their_names() {
        let prefix = ObjPath::from("wh/inbound_trend");
        let day = |s: &str| partition_of(&prefix, &ObjPath::from(s));
        let nov3 = Partition::Day(NaiveDate::from_ymd_opt(2026, 11, 3).unwrap());
        assert_eq!(
            day("wh/inbound_trend/dt=2026-11-03/part-00000.parquet"),
            Some((nov3.clone(), DATA_FILE.to_string()))
        );
        // A second file in the day's folder is listed, to be reported and set aside.
        assert_eq!(
            day("wh/inbound_trend/dt=2026-11-03/part-00001.parquet"),
            Some((nov3, "part-00001.parquet".to_string()))
        );
        // So is a file in a folder that is not a day's.
        assert_eq!(
            day("wh/inbound_trend/dt=nope/part-00000.parquet"),
            Some((Partition::Other("dt=nope".into()), DATA_FILE.to_string()))
        );
        assert_eq!(
            day("wh/inbound_trend/x/dt=2026-11-03/part-00000.parquet"),
            None
        );
        assert_eq!(
            day("wh/inbound_trend_old/dt=2026-11-03/part-00000.parquet"),
            None
        );
    }
}
