//! The providers' HTTP exchanges: STS `AssumeRoleWithOIDC` and `AssumeRole`, the ECS metadata
//! service (IMDSv2), and a credentials URI. Every answer is parsed into a [`Lease`]; every error
//! is worded without the token, key or secret it may quote.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Url;
use serde::Deserialize;

use super::{Credentials, Lease};
use crate::ccc::sign;
use crate::redact::Redactor;

/// The STS API version.
pub const STS_VERSION: &str = "2015-04-01";
/// The ECS metadata service, reachable only from an ECS instance.
pub const ECS_METADATA: &str = "http://100.100.100.200";
/// Lifetime of the IMDSv2 token asked for, seconds.
const IMDS_TOKEN_TTL: &str = "21600";

/// One way to get credentials, configured.
#[derive(Clone)]
pub enum Provider {
    /// A fixed key pair (environment, an `AK`/`StsToken` profile, an `access_key` file section).
    Static(Credentials),
    /// STS `AssumeRoleWithOIDC` with the token in `token_file` (RRSA on ACK).
    Oidc {
        /// The RAM role to assume.
        role_arn: String,
        /// The OIDC identity provider.
        provider_arn: String,
        /// The projected service-account token; read again on every fetch (it rotates).
        token_file: PathBuf,
        /// `RoleSessionName`.
        session_name: String,
        /// Requested lifetime, seconds.
        duration_secs: u64,
        /// STS endpoint.
        sts: Url,
    },
    /// STS `AssumeRole`, signed with the credentials of `base`.
    RamRoleArn {
        /// Who assumes the role.
        base: Box<Provider>,
        /// The RAM role to assume.
        role_arn: String,
        /// `RoleSessionName`.
        session_name: String,
        /// Requested lifetime, seconds.
        duration_secs: u64,
        /// STS endpoint.
        sts: Url,
    },
    /// The ECS instance's RAM role, through the metadata service.
    EcsRamRole {
        /// The role; discovered from the metadata service when not named.
        role: Option<String>,
        /// Refuse the token-less (IMDSv1) fallback.
        imdsv1_disabled: bool,
        /// The metadata service base URL.
        metadata: Url,
    },
    /// A URL answering with credentials (`ALIBABA_CLOUD_CREDENTIALS_URI`).
    Uri(Url),
}

fn http(timeout: Duration, url: &Url) -> Result<reqwest::Client, String> {
    // Plain HTTP is allowed to loopback and to the metadata service's link-local address only;
    // the provider's URL was checked when it was resolved.
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(1).max(timeout / 5))
        .user_agent(concat!("ccc-etl/", env!("CARGO_PKG_VERSION")))
        .https_only(url.scheme() == "https")
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// The credentials block of an STS answer, and the metadata service's / a URI's answer.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Issued {
    access_key_id: String,
    access_key_secret: String,
    security_token: Option<String>,
    expiration: Option<String>,
    code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsAnswer {
    credentials: Option<Issued>,
    code: Option<String>,
    message: Option<String>,
}

fn lease_from(issued: Issued, what: &str) -> Result<Lease, String> {
    if let Some(code) = issued.code.as_deref().filter(|c| *c != "Success") {
        return Err(format!("{what} answered Code {code:?}"));
    }
    if issued.access_key_id.is_empty() || issued.access_key_secret.is_empty() {
        return Err(format!(
            "{what} answered with an empty AccessKeyId or secret"
        ));
    }
    let expires = match issued.expiration.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| format!("{what} answered an unreadable Expiration {t:?}"))?,
        ),
    };
    Ok(Lease {
        credentials: Arc::new(Credentials::new(
            &issued.access_key_id,
            &issued.access_key_secret,
            issued.security_token.as_deref().filter(|t| !t.is_empty()),
        )),
        expires,
        obtained: Utc::now(),
    })
}

/// A reqwest error without its URL (which may carry a signature) and with its causes.
fn transport(what: &str, e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    format!("{what}: {msg}")
}

/// Server text in an error: the `redactor`'s secrets out, and kept short.
fn scrub(text: &str, redactor: &Redactor) -> String {
    redactor.scrub(text).chars().take(300).collect()
}

impl Provider {
    /// Fetches credentials once.
    pub fn fetch(&self) -> futures::future::BoxFuture<'_, Result<Lease, String>> {
        Box::pin(async move {
            match self {
                Provider::Static(c) => Ok(Lease::permanent(c.clone())),
                Provider::Oidc {
                    role_arn,
                    provider_arn,
                    token_file,
                    session_name,
                    duration_secs,
                    sts,
                } => {
                    let role = AssumedRole {
                        role_arn,
                        session_name,
                        duration_secs: *duration_secs,
                        sts,
                    };
                    oidc(&role, provider_arn, token_file).await
                }
                Provider::RamRoleArn {
                    base,
                    role_arn,
                    session_name,
                    duration_secs,
                    sts,
                } => {
                    let base = base.fetch().await?;
                    let role = AssumedRole {
                        role_arn,
                        session_name,
                        duration_secs: *duration_secs,
                        sts,
                    };
                    assume_role(&role, &base.credentials).await
                }
                Provider::EcsRamRole {
                    role,
                    imdsv1_disabled,
                    metadata,
                } => ecs_role(metadata, role.as_deref(), *imdsv1_disabled).await,
                Provider::Uri(url) => from_uri(url).await,
            }
        })
    }
}

/// The role an STS call assumes, and where STS is.
struct AssumedRole<'a> {
    role_arn: &'a str,
    session_name: &'a str,
    duration_secs: u64,
    sts: &'a Url,
}

/// STS `AssumeRoleWithOIDC` with the token read from `token_file` now (it rotates).
async fn oidc(
    role: &AssumedRole<'_>,
    provider_arn: &str,
    token_file: &std::path::Path,
) -> Result<Lease, String> {
    let token = std::fs::read_to_string(token_file).map_err(|e| {
        format!(
            "cannot read the OIDC token file {}: {e}",
            token_file.display()
        )
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!(
            "the OIDC token file {} is empty",
            token_file.display()
        ));
    }
    let duration = role.duration_secs.to_string();
    let form = [
        ("RoleArn", role.role_arn),
        ("OIDCProviderArn", provider_arn),
        ("OIDCToken", token),
        ("RoleSessionName", role.session_name),
        ("DurationSeconds", duration.as_str()),
    ];
    let mut url = role.sts.clone();
    let now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    url.set_query(Some(&sign::canonical_query([
        ("Action", "AssumeRoleWithOIDC"),
        ("Format", "JSON"),
        ("Version", STS_VERSION),
        ("Timestamp", now.as_str()),
    ])));
    let body = sign::canonical_query(form.iter().map(|(k, v)| (*k, *v)));
    let what = "STS AssumeRoleWithOIDC";
    let resp = http(Duration::from_secs(10), role.sts)?
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| transport(what, e))?;
    sts_answer(resp, what, &Redactor::default().secret(token)).await
}

/// STS `AssumeRole`, signed (V1) with `base`.
async fn assume_role(role: &AssumedRole<'_>, base: &Credentials) -> Result<Lease, String> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let url = sign::v1_url(
        role.sts,
        ("AssumeRole", STS_VERSION),
        "GET",
        &[
            ("RoleArn", role.role_arn.to_string()),
            ("RoleSessionName", role.session_name.to_string()),
            ("DurationSeconds", role.duration_secs.to_string()),
        ],
        base.signing_key(),
        (&nonce, &now),
    );
    let what = "STS AssumeRole";
    let resp = http(Duration::from_secs(10), role.sts)?
        .get(url)
        .send()
        .await
        .map_err(|e| transport(what, e))?;
    sts_answer(resp, what, &base.redactor()).await
}

/// `ALIBABA_CLOUD_CREDENTIALS_URI`: a GET answering with credentials.
async fn from_uri(url: &Url) -> Result<Lease, String> {
    let what = "the credentials URI";
    let resp = http(Duration::from_secs(5), url)?
        .get(url.clone())
        .send()
        .await
        .map_err(|e| transport(what, e))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| transport(what, e))?;
    if !status.is_success() {
        return Err(format!("{what} answered HTTP {}", status.as_u16()));
    }
    let issued: Issued = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{what} answered something that is not credentials: {e}"))?;
    lease_from(issued, what)
}

async fn sts_answer(
    resp: reqwest::Response,
    what: &str,
    redactor: &Redactor,
) -> Result<Lease, String> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| transport(what, e))?;
    let answer: StsAnswer = serde_json::from_slice(&bytes).map_err(|_| {
        format!(
            "{what} answered HTTP {status} with a body that is not JSON: {}",
            scrub(&String::from_utf8_lossy(&bytes), redactor)
        )
    })?;
    match answer.credentials {
        Some(issued) if status == 200 => lease_from(issued, what),
        _ => Err(format!(
            "{what} refused (HTTP {status}, {}): {}",
            answer.code.as_deref().unwrap_or("no code"),
            scrub(answer.message.as_deref().unwrap_or(""), redactor)
        )),
    }
}

/// The ECS RAM role's credentials: an IMDSv2 token (unless the service does not give one and
/// IMDSv1 is allowed), the role's name, then its credentials.
async fn ecs_role(base: &Url, role: Option<&str>, imdsv1_disabled: bool) -> Result<Lease, String> {
    let client = http(Duration::from_secs(5), base)?;
    let at = |path: &str| base.join(path).map_err(|e| format!("metadata URL: {e}"));
    let token = match client
        .put(at("/latest/api/token")?)
        .header("X-aliyun-ecs-metadata-token-ttl-seconds", IMDS_TOKEN_TTL)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Some(
            r.text()
                .await
                .map_err(|e| transport("the ECS metadata service", e))?,
        ),
        Ok(r) if imdsv1_disabled => {
            return Err(format!(
                "the ECS metadata service gave no IMDSv2 token (HTTP {}) and \
                 ALIBABA_CLOUD_IMDSV1_DISABLED forbids going on without one",
                r.status().as_u16()
            ));
        }
        Err(e) if imdsv1_disabled || e.is_connect() || e.is_timeout() => {
            return Err(transport("the ECS metadata service", e));
        }
        _ => None,
    };
    let get = |url: Url| {
        let mut b = client.get(url);
        if let Some(t) = &token {
            b = b.header("X-aliyun-ecs-metadata-token", t.trim());
        }
        b
    };
    let role = match role {
        Some(r) => r.to_string(),
        None => {
            let r = get(at("/latest/meta-data/ram/security-credentials/")?)
                .send()
                .await
                .map_err(|e| transport("the ECS metadata service", e))?;
            if !r.status().is_success() {
                return Err(format!(
                    "the ECS metadata service lists no RAM role (HTTP {}): attach a RAM role \
                     to the instance, or name it in ALIBABA_CLOUD_ECS_METADATA",
                    r.status().as_u16()
                ));
            }
            let text = r
                .text()
                .await
                .map_err(|e| transport("the ECS metadata service", e))?;
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .ok_or("the ECS metadata service lists no RAM role: attach one to the instance")?
                .to_string()
        }
    };
    let r = get(at(&format!(
        "/latest/meta-data/ram/security-credentials/{role}"
    ))?)
    .send()
    .await
    .map_err(|e| transport("the ECS metadata service", e))?;
    if !r.status().is_success() {
        return Err(format!(
            "the ECS metadata service has no credentials for the RAM role {role:?} (HTTP {})",
            r.status().as_u16()
        ));
    }
    let bytes = r
        .bytes()
        .await
        .map_err(|e| transport("the ECS metadata service", e))?;
    let issued: Issued = serde_json::from_slice(&bytes).map_err(|e| {
        format!("the ECS metadata service answered something that is not credentials: {e}")
    })?;
    lease_from(issued, "the ECS metadata service")
}
