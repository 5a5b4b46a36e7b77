//! The default credential chain: which provider the environment and the CLI's files configure.
//!
//! In the official SDKs' order, first configured wins:
//! 1. `ALIBABA_CLOUD_ACCESS_KEY_ID` + `ALIBABA_CLOUD_ACCESS_KEY_SECRET` (+ `ALIBABA_CLOUD_SECURITY_TOKEN`);
//! 2. OIDC (RRSA): `ALIBABA_CLOUD_ROLE_ARN`, `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`,
//!    `ALIBABA_CLOUD_OIDC_TOKEN_FILE`;
//! 3. the CLI profile, `~/.aliyun/config.json` (`ALIBABA_CLOUD_PROFILE` picks one);
//! 4. the credentials file, `ALIBABA_CLOUD_CREDENTIALS_FILE` or `~/.alibabacloud/credentials.ini`;
//! 5. the ECS instance RAM role, through the metadata service;
//! 6. `ALIBABA_CLOUD_CREDENTIALS_URI`.
//!
//! Unlike the SDKs, a provider that is configured but fails stops the run with its error instead
//! of handing over to the next one: a job must not quietly run as another identity. Only the
//! metadata service being unreachable (not an ECS instance) moves on. A group of variables set
//! only in part is an error naming what is missing.

use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;

/// Overrides the metadata service's base URL (tests; loopback only).
pub const ENV_METADATA_URL: &str = "CCC_ETL_ECS_METADATA_URL";

use super::Credentials;
use super::{CredentialSource, Provider, fetch::ECS_METADATA};
use crate::config::{Choice, Endpoint, EnvLookup, env_var};
use crate::error::InputError;

fn flag(env: EnvLookup<'_>, k: &str) -> bool {
    env_var(env, k).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// What the chain found: a provider, and how to say which.
pub struct Found {
    /// The provider.
    pub provider: Provider,
    /// Its name for the start-up line and errors (never a secret).
    pub label: String,
}

fn found(provider: Provider, label: impl Into<String>) -> Option<Found> {
    Some(Found {
        provider,
        label: label.into(),
    })
}

/// The providers `choice` allows, in order, that the environment and files configure. The ECS
/// role comes with the URI after it (if set), because only trying the metadata service tells
/// whether this is an ECS instance.
pub fn resolve(choice: Choice, env: EnvLookup<'_>) -> Result<Vec<Found>, InputError> {
    let wants = |c: Choice| choice == Choice::Chain || choice == c;
    let mut out = Vec::new();
    if wants(Choice::Env)
        && let Some(f) = from_env(env)?
    {
        out.push(f);
        return Ok(out);
    }
    if wants(Choice::Oidc)
        && let Some(f) = from_oidc(env)?
    {
        out.push(f);
        return Ok(out);
    }
    if wants(Choice::CliProfile)
        && let Some(f) = from_cli_profile(env)?
    {
        out.push(f);
        return Ok(out);
    }
    if wants(Choice::CredentialsFile)
        && let Some(f) = from_credentials_file(env)?
    {
        out.push(f);
        return Ok(out);
    }
    if wants(Choice::EcsRamRole) && !flag(env, "ALIBABA_CLOUD_ECS_METADATA_DISABLED") {
        out.push(Found {
            provider: ecs_provider(env, env_var(env, "ALIBABA_CLOUD_ECS_METADATA"))?,
            label: "ECS instance RAM role (metadata service)".into(),
        });
    }
    if wants(Choice::CredentialsUri)
        && let Some(uri) = env_var(env, "ALIBABA_CLOUD_CREDENTIALS_URI")
    {
        let url = checked_url(&uri, "ALIBABA_CLOUD_CREDENTIALS_URI")?;
        out.push(Found {
            provider: Provider::Uri(url),
            label: "ALIBABA_CLOUD_CREDENTIALS_URI".into(),
        });
    }
    if out.is_empty() {
        return Err(InputError::new(nothing_found(choice)));
    }
    Ok(out)
}

fn nothing_found(choice: Choice) -> String {
    let how = match choice {
        Choice::Chain => {
            "no credentials found: export ALIBABA_CLOUD_ACCESS_KEY_ID and \
             ALIBABA_CLOUD_ACCESS_KEY_SECRET, or configure RRSA (ALIBABA_CLOUD_ROLE_ARN, \
             ALIBABA_CLOUD_OIDC_PROVIDER_ARN, ALIBABA_CLOUD_OIDC_TOKEN_FILE), a CLI profile \
             (~/.aliyun/config.json), a credentials file (~/.alibabacloud/credentials.ini), an \
             ECS RAM role or ALIBABA_CLOUD_CREDENTIALS_URI (see docs/configuration.md, Credentials)"
        }
        Choice::Env => {
            "ALIBABA_CLOUD_ACCESS_KEY_ID is not set: export the AccessKeyId and \
             ALIBABA_CLOUD_ACCESS_KEY_SECRET"
        }
        Choice::Oidc => {
            "ALIBABA_CLOUD_ROLE_ARN, ALIBABA_CLOUD_OIDC_PROVIDER_ARN and \
             ALIBABA_CLOUD_OIDC_TOKEN_FILE are not set (RRSA sets them in the pod)"
        }
        Choice::CliProfile => "there is no CLI profile (~/.aliyun/config.json)",
        Choice::CredentialsFile => {
            "there is no credentials file (ALIBABA_CLOUD_CREDENTIALS_FILE or \
             ~/.alibabacloud/credentials.ini)"
        }
        Choice::EcsRamRole => "ALIBABA_CLOUD_ECS_METADATA_DISABLED turns the ECS RAM role off",
        Choice::CredentialsUri => "ALIBABA_CLOUD_CREDENTIALS_URI is not set",
    };
    if choice == Choice::Chain {
        how.to_string()
    } else {
        format!("[source] credentials = \"{}\": {how}", choice.name())
    }
}

/// Fetches the first credentials from what [`resolve`] found. Only an unreachable metadata
/// service moves on to the next provider.
pub async fn start(choice: Choice, candidates: Vec<Found>) -> anyhow::Result<CredentialSource> {
    let mut skipped = Vec::new();
    if candidates.is_empty() {
        return Err(InputError::new(nothing_found(choice)).into());
    }
    let last = candidates.len() - 1;
    for (i, f) in candidates.into_iter().enumerate() {
        let is_ecs = matches!(f.provider, Provider::EcsRamRole { .. });
        match CredentialSource::start(f.provider, f.label).await {
            Ok(s) => return Ok(s),
            Err(e) if is_ecs && i < last => skipped.push(e.to_string()),
            Err(e) if is_ecs && choice == Choice::Chain => {
                return Err(InputError::new(format!("{} ({e})", nothing_found(choice))).into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last candidate returns: {skipped:?}")
}

fn from_env(env: EnvLookup<'_>) -> Result<Option<Found>, InputError> {
    let id = env_var(env, "ALIBABA_CLOUD_ACCESS_KEY_ID");
    let secret = env_var(env, "ALIBABA_CLOUD_ACCESS_KEY_SECRET");
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(found(
            Provider::Static(Credentials::new(
                &id,
                &secret,
                env_var(env, "ALIBABA_CLOUD_SECURITY_TOKEN").as_deref(),
            )),
            "environment (ALIBABA_CLOUD_ACCESS_KEY_ID)",
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(InputError::new(
            "ALIBABA_CLOUD_ACCESS_KEY_ID is set but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not: \
             export both, or neither",
        )),
        (None, Some(_)) => Err(InputError::new(
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET is set but ALIBABA_CLOUD_ACCESS_KEY_ID is not: \
             export both, or neither",
        )),
    }
}

/// The STS endpoint: `ALIBABA_CLOUD_STS_ENDPOINT` (a host name or a URL, plain HTTP to loopback
/// only), else `sts[-vpc].{ALIBABA_CLOUD_STS_REGION}.aliyuncs.com`, else `sts.aliyuncs.com`.
pub fn sts_endpoint(env: EnvLookup<'_>) -> Result<Url, InputError> {
    if let Some(endpoint) = env_var(env, "ALIBABA_CLOUD_STS_ENDPOINT") {
        let text = if endpoint.contains("://") {
            endpoint
        } else {
            format!("https://{endpoint}")
        };
        return Endpoint::parse(text.trim_end_matches('/'))
            .map(|e| e.url().clone())
            .map_err(|m| InputError::new(format!("ALIBABA_CLOUD_STS_ENDPOINT: {m}")));
    }
    let vpc = if flag(env, "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED") {
        "sts-vpc"
    } else {
        "sts"
    };
    let host = match env_var(env, "ALIBABA_CLOUD_STS_REGION") {
        Some(r) => {
            crate::config::validate_region(&r)
                .map_err(|m| InputError::new(format!("ALIBABA_CLOUD_STS_REGION: {m}")))?;
            format!("{vpc}.{r}.aliyuncs.com")
        }
        None => format!("{vpc}.aliyuncs.com"),
    };
    Ok(Url::parse(&format!("https://{host}")).expect("valid STS URL"))
}

fn session_name(env: EnvLookup<'_>, configured: Option<String>) -> String {
    configured
        .filter(|s| !s.is_empty())
        .or_else(|| env_var(env, "ALIBABA_CLOUD_ROLE_SESSION_NAME"))
        .unwrap_or_else(|| format!("ccc-etl-{}", chrono::Utc::now().timestamp()))
}

/// STS's default and longest usual lifetime.
const ROLE_DURATION_SECS: u64 = 3600;

fn from_oidc(env: EnvLookup<'_>) -> Result<Option<Found>, InputError> {
    let names = [
        "ALIBABA_CLOUD_ROLE_ARN",
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
    ];
    let vals: Vec<Option<String>> = names.iter().map(|k| env_var(env, k)).collect();
    if vals.iter().all(Option::is_none) {
        return Ok(None);
    }
    let missing: Vec<&str> = names
        .iter()
        .zip(&vals)
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        return Err(InputError::new(format!(
            "OIDC (RRSA) credentials are configured in part: {} not set (all three of \
             ALIBABA_CLOUD_ROLE_ARN, ALIBABA_CLOUD_OIDC_PROVIDER_ARN and \
             ALIBABA_CLOUD_OIDC_TOKEN_FILE are needed)",
            missing.join(", ")
        )));
    }
    let [role_arn, provider_arn, token_file] =
        <[Option<String>; 3]>::try_from(vals).expect("three values");
    let role_arn = role_arn.expect("checked");
    Ok(found(
        Provider::Oidc {
            provider_arn: provider_arn.expect("checked"),
            token_file: PathBuf::from(token_file.expect("checked")),
            session_name: session_name(env, None),
            duration_secs: ROLE_DURATION_SECS,
            sts: sts_endpoint(env)?,
            role_arn: role_arn.clone(),
        },
        format!("OIDC role {role_arn} (RRSA)"),
    ))
}

fn home(env: EnvLookup<'_>) -> Option<PathBuf> {
    env_var(env, "HOME").map(PathBuf::from)
}

fn ecs_provider(env: EnvLookup<'_>, role: Option<String>) -> Result<Provider, InputError> {
    let metadata = match env_var(env, ENV_METADATA_URL) {
        Some(u) => {
            let e = Endpoint::parse(u.trim_end_matches('/'))
                .map_err(|m| InputError::new(format!("{ENV_METADATA_URL}: {m}")))?;
            if e.url().scheme() != "http" {
                return Err(InputError::new(format!(
                    "{ENV_METADATA_URL} must be a loopback http:// URL (it exists for tests)"
                )));
            }
            e.url().clone()
        }
        None => Url::parse(ECS_METADATA).expect("valid"),
    };
    Ok(Provider::EcsRamRole {
        role,
        imdsv1_disabled: flag(env, "ALIBABA_CLOUD_IMDSV1_DISABLED"),
        metadata,
    })
}

fn checked_url(text: &str, what: &str) -> Result<Url, InputError> {
    let url = Url::parse(text).map_err(|e| InputError::new(format!("{what}: {e}")))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = crate::config::is_loopback(host);
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(InputError::new(format!(
            "{what} must be https:// (plain http:// only to a loopback address)"
        ))),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CliConfig {
    current: String,
    /// The profiles, read by key (see [`CLI`]).
    profiles: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The five kinds of profile both files describe (under their own names), and what each needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    AccessKey,
    Sts,
    RamRoleArn,
    EcsRamRole,
    Oidc,
}

/// The values a profile may hold.
#[derive(Clone, Copy)]
enum Field {
    KeyId,
    Secret,
    Token,
    RoleArn,
    SessionName,
    RoleName,
    OidcProvider,
    OidcTokenFile,
}

/// One file format: its names for the kinds, in [`Kind`]'s order, and for the fields, in
/// [`Field`]'s order.
struct Format {
    kinds: [(&'static str, Kind); 5],
    fields: [&'static str; 8],
}

/// `~/.aliyun/config.json`'s profiles (`mode`).
const CLI: Format = Format {
    kinds: [
        ("AK", Kind::AccessKey),
        ("StsToken", Kind::Sts),
        ("RamRoleArn", Kind::RamRoleArn),
        ("EcsRamRole", Kind::EcsRamRole),
        ("OIDC", Kind::Oidc),
    ],
    fields: [
        "access_key_id",
        "access_key_secret",
        "sts_token",
        "ram_role_arn",
        "ram_session_name",
        "ram_role_name",
        "oidc_provider_arn",
        "oidc_token_file",
    ],
};

/// The credentials file's sections (`type`).
const INI: Format = Format {
    kinds: [
        ("access_key", Kind::AccessKey),
        ("sts", Kind::Sts),
        ("ram_role_arn", Kind::RamRoleArn),
        ("ecs_ram_role", Kind::EcsRamRole),
        ("oidc_role_arn", Kind::Oidc),
    ],
    fields: [
        "access_key_id",
        "access_key_secret",
        "security_token",
        "role_arn",
        "role_session_name",
        "role_name",
        "oidc_provider_arn",
        "oidc_token_file_path",
    ],
};

impl Format {
    fn kind(&self, name: &str) -> Option<Kind> {
        self.kinds.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    fn kind_names(&self) -> String {
        let names: Vec<&str> = self.kinds.iter().map(|(n, _)| *n).collect();
        format!("{} and {}", names[..4].join(", "), names[4])
    }

    fn key(&self, f: Field) -> &'static str {
        self.fields[f as usize]
    }
}

/// One profile read from either file: its kind, a lookup of its values by key (trimmed, `None`
/// when empty), where it is (for messages), and the role lifetime it asks for.
struct Profile<'a> {
    format: &'a Format,
    kind: Kind,
    get: &'a dyn Fn(&str) -> Option<String>,
    missing: &'a dyn Fn(&str) -> InputError,
    duration_secs: u64,
}

impl Profile<'_> {
    fn opt(&self, f: Field) -> Option<String> {
        (self.get)(self.format.key(f))
    }

    fn need(&self, f: Field) -> Result<String, InputError> {
        self.opt(f)
            .ok_or_else(|| (self.missing)(self.format.key(f)))
    }

    fn key_pair(&self, token: bool) -> Result<Credentials, InputError> {
        let token = if token {
            Some(self.need(Field::Token)?)
        } else {
            None
        };
        Ok(Credentials::new(
            &self.need(Field::KeyId)?,
            &self.need(Field::Secret)?,
            token.as_deref(),
        ))
    }

    /// The provider the profile describes, the same for both files.
    fn provider(&self, env: EnvLookup<'_>) -> Result<Provider, InputError> {
        Ok(match self.kind {
            Kind::AccessKey => Provider::Static(self.key_pair(false)?),
            Kind::Sts => Provider::Static(self.key_pair(true)?),
            Kind::RamRoleArn => Provider::RamRoleArn {
                base: Box::new(Provider::Static(self.key_pair(false)?)),
                role_arn: self.need(Field::RoleArn)?,
                session_name: session_name(env, self.opt(Field::SessionName)),
                duration_secs: self.duration_secs,
                sts: sts_endpoint(env)?,
            },
            Kind::EcsRamRole => ecs_provider(env, self.opt(Field::RoleName))?,
            Kind::Oidc => Provider::Oidc {
                role_arn: self.need(Field::RoleArn)?,
                provider_arn: self.need(Field::OidcProvider)?,
                token_file: PathBuf::from(self.need(Field::OidcTokenFile)?),
                session_name: session_name(env, self.opt(Field::SessionName)),
                duration_secs: self.duration_secs,
                sts: sts_endpoint(env)?,
            },
        })
    }
}

/// A value as both files hold it: trimmed, and empty means absent.
fn present(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn from_cli_profile(env: EnvLookup<'_>) -> Result<Option<Found>, InputError> {
    if flag(env, "ALIBABA_CLOUD_CLI_PROFILE_DISABLED") {
        return Ok(None);
    }
    let Some(path) = home(env).map(|h| h.join(".aliyun").join("config.json")) else {
        return Ok(None);
    };
    let Some(text) = read_if_exists(&path)? else {
        return Ok(None);
    };
    let where_ = path.display().to_string();
    let config: CliConfig = serde_json::from_str(&text)
        .map_err(|e| InputError::new(format!("{where_}: not a CLI configuration: {e}")))?;
    let name = env_var(env, "ALIBABA_CLOUD_PROFILE").unwrap_or(config.current.clone());
    let p = config.profiles.iter().find(|p| p.get("name").and_then(|v| v.as_str()) == Some(&name)).ok_or_else(|| {
        InputError::new(format!(
            "{where_}: no profile named {name:?} (ALIBABA_CLOUD_PROFILE or \"current\" picks it)"
        ))
    })?;
    let text_of = |k: &str| present(p.get(k).and_then(|v| v.as_str()));
    let mode = text_of("mode").unwrap_or_default();
    let kind = CLI.kind(&mode).ok_or_else(|| {
        InputError::new(format!(
            "{where_}: profile {name:?} has mode {mode:?}; ccc-etl reads {}",
            CLI.kind_names()
        ))
    })?;
    let missing = |key: &str| {
        InputError::new(format!(
            "{where_}: profile {name:?} (mode {mode}) has no {key}"
        ))
    };
    let duration_secs = p
        .get("expired_seconds")
        .and_then(|v| v.as_u64())
        .filter(|s| *s > 0)
        .unwrap_or(ROLE_DURATION_SECS);
    let profile = Profile {
        format: &CLI,
        kind,
        get: &text_of,
        missing: &missing,
        duration_secs,
    };
    let label = format!("CLI profile {name:?} ({where_}, mode {mode})");
    Ok(found(profile.provider(env)?, label))
}

fn read_if_exists(path: &Path) -> Result<Option<String>, InputError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(InputError::new(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn from_credentials_file(env: EnvLookup<'_>) -> Result<Option<Found>, InputError> {
    let (path, named) = match env_var(env, "ALIBABA_CLOUD_CREDENTIALS_FILE") {
        Some(p) => (PathBuf::from(p), true),
        None => match home(env) {
            Some(h) => (h.join(".alibabacloud").join("credentials.ini"), false),
            None => return Ok(None),
        },
    };
    let where_ = path.display().to_string();
    let text = match read_if_exists(&path)? {
        Some(t) => t,
        None if named => {
            return Err(InputError::new(format!(
                "ALIBABA_CLOUD_CREDENTIALS_FILE names {where_}, which does not exist"
            )));
        }
        None => return Ok(None),
    };
    let ini = ini::Ini::load_from_str(&text)
        .map_err(|e| InputError::new(format!("{where_}: not an INI file: {e}")))?;
    let name = env_var(env, "ALIBABA_CLOUD_PROFILE").unwrap_or_else(|| "default".into());
    let section = ini.section(Some(name.as_str())).ok_or_else(|| {
        InputError::new(format!(
            "{where_}: no section [{name}] (ALIBABA_CLOUD_PROFILE picks it, else [default])"
        ))
    })?;
    let text_of = |k: &str| present(section.get(k));
    let type_ = text_of("type").unwrap_or_else(|| "access_key".into());
    let kind = INI.kind(&type_).ok_or_else(|| {
        InputError::new(format!(
            "{where_}: [{name}] has type = {type_:?}; ccc-etl reads {}",
            INI.kind_names()
        ))
    })?;
    let missing =
        |key: &str| InputError::new(format!("{where_}: [{name}] (type = {type_}) has no {key}"));
    let profile = Profile {
        format: &INI,
        kind,
        get: &text_of,
        missing: &missing,
        duration_secs: ROLE_DURATION_SECS,
    };
    let label = format!("credentials file {where_} [{name}] (type {type_})");
    Ok(found(profile.provider(env)?, label))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn labels(choice: Choice, pairs: &[(&str, &str)]) -> Result<Vec<String>, String> {
        let env = env_of(pairs);
        resolve(choice, &env)
            .map(|v| v.into_iter().map(|f| f.label).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_chain_takes_the_first_configured_provider_in_the_sdk_order() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".aliyun")).unwrap();
        std::fs::write(
            home.path().join(".aliyun/config.json"),
            r#"{"current":"default","profiles":[{"name":"default","mode":"AK","access_key_id":"cli-id","access_key_secret":"cli-secret"}]}"#,
        )
        .unwrap();
        std::fs::create_dir_all(home.path().join(".alibabacloud")).unwrap();
        std::fs::write(
            home.path().join(".alibabacloud/credentials.ini"),
            "[default]\ntype = access_key\naccess_key_id = f-id\naccess_key_secret = f-secret\n",
        )
        .unwrap();
        let h = home.path().to_str().unwrap();
        let env = [
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret"),
            ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r"),
            (
                "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
                "acs:ram::1:oidc-provider/p",
            ),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/var/run/token"),
            ("HOME", h),
            ("ALIBABA_CLOUD_CREDENTIALS_URI", "http://127.0.0.1:9/creds"),
        ];
        let first = |n: usize, c: Choice| labels(c, &env[n..]).unwrap()[0].clone();
        assert!(first(0, Choice::Chain).starts_with("environment"));
        assert!(first(2, Choice::Chain).starts_with("OIDC role"));
        assert!(first(5, Choice::Chain).starts_with("CLI profile"));
        let no_cli = [env[5], ("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true")];
        assert!(labels(Choice::Chain, &no_cli).unwrap()[0].starts_with("credentials file"));
        // Without files, the ECS role comes before the URI, both tried in that order.
        let bare = [env[6]];
        assert_eq!(
            labels(Choice::Chain, &bare).unwrap(),
            vec![
                "ECS instance RAM role (metadata service)".to_string(),
                "ALIBABA_CLOUD_CREDENTIALS_URI".to_string()
            ]
        );
        let off = [env[6], ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")];
        assert_eq!(labels(Choice::Chain, &off).unwrap().len(), 1);
        // A pinned provider ignores the ones before it.
        assert!(first(0, Choice::CredentialsFile).starts_with("credentials file"));
        assert!(first(0, Choice::CredentialsUri).starts_with("ALIBABA_CLOUD_CREDENTIALS_URI"));
        let e = labels(Choice::Oidc, &[("HOME", h)]).unwrap_err();
        assert!(e.contains("[source] credentials = \"oidc\""), "{e}");
    }

    #[test]
    fn a_partly_configured_provider_is_one_clear_error() {
        let e = labels(Choice::Chain, &[("ALIBABA_CLOUD_ACCESS_KEY_ID", "id")]).unwrap_err();
        assert!(e.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not"), "{e}");
        let e = labels(Choice::Chain, &[("ALIBABA_CLOUD_ROLE_ARN", "r")]).unwrap_err();
        assert!(
            e.contains("ALIBABA_CLOUD_OIDC_PROVIDER_ARN, ALIBABA_CLOUD_OIDC_TOKEN_FILE not set"),
            "{e}"
        );
        let e = labels(
            Choice::Chain,
            &[(
                "ALIBABA_CLOUD_CREDENTIALS_FILE",
                "/nonexistent/credentials.ini",
            )],
        )
        .unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let e = labels(
            Choice::Chain,
            &[
                ("ALIBABA_CLOUD_STS_ENDPOINT", "http://sts.example.com"),
                ("ALIBABA_CLOUD_ROLE_ARN", "r"),
                ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "p"),
                ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "f"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("plain HTTP to a non-loopback host"), "{e}");
        let e = labels(Choice::Chain, &[(ENV_METADATA_URL, "http://10.0.0.1")]).unwrap_err();
        assert!(e.contains(ENV_METADATA_URL), "{e}");
        let e = labels(
            Choice::Chain,
            &[("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")],
        )
        .unwrap_err();
        assert!(e.starts_with("no credentials found"), "{e}");
    }

    #[test]
    fn the_sts_endpoint_follows_region_vpc_and_override() {
        let url = |pairs: &[(&str, &str)]| sts_endpoint(&env_of(pairs)).unwrap().to_string();
        assert_eq!(url(&[]), "https://sts.aliyuncs.com/");
        assert_eq!(
            url(&[("ALIBABA_CLOUD_STS_REGION", "cn-shanghai")]),
            "https://sts.cn-shanghai.aliyuncs.com/"
        );
        assert_eq!(
            url(&[
                ("ALIBABA_CLOUD_STS_REGION", "cn-shanghai"),
                ("ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED", "true")
            ]),
            "https://sts-vpc.cn-shanghai.aliyuncs.com/"
        );
        assert_eq!(
            url(&[(
                "ALIBABA_CLOUD_STS_ENDPOINT",
                "sts.ap-southeast-1.aliyuncs.com"
            )]),
            "https://sts.ap-southeast-1.aliyuncs.com/"
        );
        assert_eq!(
            url(&[("ALIBABA_CLOUD_STS_ENDPOINT", "http://127.0.0.1:8080")]),
            "http://127.0.0.1:8080/"
        );
    }
}
