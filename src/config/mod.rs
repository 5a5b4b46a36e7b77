//! `pipeline.toml` plus the environment, turned into a validated [`Config`] before any work.
//!
//! Every value that can be wrong is parsed into its type while the TOML is read, so an error
//! names the file, the line and the key. `[source] credentials` only chooses where the key
//! comes from ([`crate::credentials`] resolves it); secrets are never part of the file.

mod alerts;
mod parquet;
mod pipeline;
mod postgres;
mod source;

use std::path::Path;

use serde::{Deserialize, Deserializer};

pub use alerts::*;
pub use parquet::*;
pub use pipeline::*;
pub use postgres::*;
pub use source::*;

use crate::error::InputError;
use crate::record::MediaType;

/// Environment variable holding the AccessKeyId.
pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
/// Environment variable holding the AccessKeySecret.
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
/// Environment variable holding the STS token, when the key pair is temporary.
pub const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";
/// Fallback for `[postgres] url`.
pub const ENV_DATABASE_URL: &str = "DATABASE_URL";

/// Reads an environment variable (tests pass their own).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`EnvLookup`].
pub fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// A variable's value, trimmed; unset and blank are the same.
pub fn env_var(env: EnvLookup<'_>, k: &str) -> Option<String> {
    env(k)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

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
    /// Chat webhooks told about failures, aging data, fenced commits and new drift.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

pub(super) fn positive_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("must be > 0, got {v}")))
    }
}

macro_rules! positive_int {
    ($name:ident, $t:ty) => {
        pub(super) fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
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
                "cannot read config file {}: {e} (pass --config FILE, or write one with `ccc-etl init`)",
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
            alerts: AlertsConfig::default(),
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
            alerts: AlertsConfig::default(),
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
    use secrecy::SecretString;
    use std::path::PathBuf;

    const EXAMPLE: &str = include_str!("../../pipeline.toml");

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
        let gcs = parse_parquet_root("gs://b/p").unwrap_err();
        assert!(
            gcs.contains("not supported") && gcs.contains("storage.googleapis.com"),
            "{gcs}"
        );
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
        assert_eq!(c.source.concurrency, 32);
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
