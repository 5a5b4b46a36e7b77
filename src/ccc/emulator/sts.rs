//! The credential services a keyless deployment talks to, emulated: STS `AssumeRoleWithOIDC`
//! (RRSA) and `AssumeRole`, the ECS metadata service (IMDSv2 token, role listing, the role's
//! credentials) and a credentials URI. Every one issues short-lived STS credentials that the
//! report API then accepts until they expire (`InvalidSecurityToken.Expired` after).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;

use super::handler::error_response;
use super::{KeyPair, Rejection, Shared};

/// The STS API version.
pub const STS_VERSION: &str = "2015-04-01";

/// What the credential services accept and issue.
#[derive(Debug, Clone)]
pub struct StsOptions {
    /// Lifetime of issued credentials (shorter of this and the `DurationSeconds` asked for).
    pub lifetime: Duration,
    /// The one role that may be assumed.
    pub role_arn: String,
    /// The OIDC provider `AssumeRoleWithOIDC` must name.
    pub oidc_provider_arn: String,
    /// OIDC tokens accepted (a platform rotates them; each use is counted by index).
    pub oidc_tokens: Vec<String>,
    /// The instance's RAM role, as the metadata service lists it.
    pub ecs_role: String,
    /// The metadata service answers only with an IMDSv2 token.
    pub imdsv2_required: bool,
    /// `Expiration` is reported this much later than the credentials really stop working, as a
    /// client whose clock runs behind the service's sees it: only the service's
    /// `InvalidSecurityToken.Expired` tells the client to renew.
    pub expiration_skew: Duration,
}

impl StsOptions {
    /// One role, one OIDC provider, two tokens, the ECS role `ccc-etl-role`, IMDSv2 required.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            role_arn: "acs:ram::1234567890123456:role/ccc-etl".into(),
            oidc_provider_arn: "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c1".into(),
            oidc_tokens: vec!["oidc-token-one".into(), "oidc-token-two".into()],
            ecs_role: "ccc-etl-role".into(),
            imdsv2_required: true,
            expiration_skew: Duration::ZERO,
        }
    }
}

/// Issued credentials, as STS words them.
struct Issued {
    id: String,
    secret: String,
    token: String,
    expires: DateTime<Utc>,
    /// The `Expiration` the answer states.
    reported: DateTime<Utc>,
}

impl Shared {
    /// New STS credentials, accepted by the report API until they expire.
    fn issue(&self, asked_secs: Option<u64>) -> Issued {
        let lifetime = asked_secs
            .map(Duration::from_secs)
            .map_or(self.opts.sts.lifetime, |a| a.min(self.opts.sts.lifetime));
        let now = (self.opts.auth_clock)().trunc_subsecs(0);
        let issued = Issued {
            id: format!("STS.{}", uuid::Uuid::new_v4().simple()),
            // Recognisable, so tests can assert they appear in no output.
            secret: format!("issued-secret-{}", uuid::Uuid::new_v4().simple()),
            token: format!("issued-token-{}", uuid::Uuid::new_v4().simple()),
            expires: now + chrono::Duration::from_std(lifetime).unwrap_or_default(),
            reported: now
                + chrono::Duration::from_std(lifetime + self.opts.sts.expiration_skew)
                    .unwrap_or_default(),
        };
        self.issued.lock().expect("issued lock").insert(
            issued.id.clone(),
            KeyPair {
                secret: issued.secret.clone(),
                security_token: Some(issued.token.clone()),
                expires: Some(issued.expires),
            },
        );
        issued
    }

    /// A configured key pair, or STS credentials this emulator issued.
    pub(super) fn key(&self, id: &str) -> Option<KeyPair> {
        self.opts
            .keys
            .get(id)
            .cloned()
            .or_else(|| self.issued.lock().expect("issued lock").get(id).cloned())
    }
}

fn expiration(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn sts_answer(issued: &Issued, role_arn: &str, request_id: &str) -> Response {
    let body = json!({
        "RequestId": request_id,
        "AssumedRoleUser": {"Arn": format!("{role_arn}/ccc-etl"), "AssumedRoleId": "300000000000000000:ccc-etl"},
        "Credentials": {
            "AccessKeyId": issued.id,
            "AccessKeySecret": issued.secret,
            "SecurityToken": issued.token,
            "Expiration": expiration(issued.reported),
        },
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn refuse(shared: &Shared, action: &str, r: Rejection, request_id: &str) -> Response {
    shared.count(action, r.code);
    error_response(r.status, r.code, &r.message, request_id)
}

fn check_role(shared: &Shared, role: Option<&str>) -> Result<(), Rejection> {
    match role {
        Some(r) if r == shared.opts.sts.role_arn => Ok(()),
        Some(r) => Err(Rejection::new(
            404,
            "EntityNotExist.Role",
            format!("The specified Role not exists: {r}"),
        )),
        None => Err(Rejection::new(
            400,
            "MissingRoleArn",
            "RoleArn is mandatory for this action.",
        )),
    }
}

/// STS `AssumeRoleWithOIDC`: no signature, the OIDC token vouches for the caller.
pub(super) fn assume_role_with_oidc(
    shared: &Shared,
    param: &dyn Fn(&str) -> Option<String>,
    request_id: &str,
) -> Response {
    const ACTION: &str = "AssumeRoleWithOIDC";
    if param("Version").as_deref() != Some(STS_VERSION) {
        let r = Rejection::new(
            400,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
        );
        return refuse(shared, ACTION, r, request_id);
    }
    if let Err(r) = check_role(shared, param("RoleArn").as_deref()) {
        return refuse(shared, ACTION, r, request_id);
    }
    if param("OIDCProviderArn").as_deref() != Some(shared.opts.sts.oidc_provider_arn.as_str()) {
        let r = Rejection::new(
            404,
            "EntityNotExist.OIDCProvider",
            "The specified OIDC provider does not exist.",
        );
        return refuse(shared, ACTION, r, request_id);
    }
    let token = param("OIDCToken").unwrap_or_default();
    let Some(index) = shared.opts.sts.oidc_tokens.iter().position(|t| *t == token) else {
        let r = Rejection::new(
            400,
            "AuthenticationFail.OIDCToken.Invalid",
            "The OIDC token is invalid or expired.",
        );
        return refuse(shared, ACTION, r, request_id);
    };
    if param("RoleSessionName").is_none_or(|s| s.is_empty()) {
        let r = Rejection::new(
            400,
            "MissingRoleSessionName",
            "RoleSessionName is mandatory for this action.",
        );
        return refuse(shared, ACTION, r, request_id);
    }
    *shared
        .stats
        .lock()
        .expect("stats lock")
        .oidc_token_uses
        .entry(index)
        .or_default() += 1;
    let issued = shared.issue(param("DurationSeconds").and_then(|d| d.parse().ok()));
    shared.count(ACTION, "OK");
    sts_answer(&issued, &shared.opts.sts.role_arn, request_id)
}

/// STS `AssumeRole`, already admitted (signed by a key pair this emulator accepts).
pub(super) fn assume_role(
    shared: &Shared,
    param: &dyn Fn(&str) -> Option<String>,
    request_id: &str,
) -> Response {
    const ACTION: &str = "AssumeRole";
    if let Err(r) = check_role(shared, param("RoleArn").as_deref()) {
        return refuse(shared, ACTION, r, request_id);
    }
    let issued = shared.issue(param("DurationSeconds").and_then(|d| d.parse().ok()));
    shared.count(ACTION, "OK");
    sts_answer(&issued, &shared.opts.sts.role_arn, request_id)
}

fn metadata_credentials(shared: &Shared) -> Response {
    let issued = shared.issue(None);
    let body = json!({
        "Code": "Success",
        "AccessKeyId": issued.id,
        "AccessKeySecret": issued.secret,
        "SecurityToken": issued.token,
        "Expiration": expiration(issued.reported),
        "LastUpdated": expiration((shared.opts.auth_clock)()),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        body.to_string(),
    )
        .into_response()
}

/// `PUT /latest/api/token`: an IMDSv2 token, for the TTL the header asks.
pub(super) async fn metadata_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Response {
    let ttl = headers
        .get("x-aliyun-ecs-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !ttl.is_some_and(|t| (1..=21_600).contains(&t)) {
        shared.count("MetadataToken", "BadRequest");
        return (StatusCode::BAD_REQUEST, "invalid ttl").into_response();
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    shared
        .imds_tokens
        .lock()
        .expect("imds lock")
        .insert(token.clone());
    shared.count("MetadataToken", "OK");
    (StatusCode::OK, token).into_response()
}

fn imds_allowed(shared: &Shared, headers: &HeaderMap) -> bool {
    let token = headers
        .get("x-aliyun-ecs-metadata-token")
        .and_then(|v| v.to_str().ok());
    match token {
        Some(t) => shared.imds_tokens.lock().expect("imds lock").contains(t),
        None => !shared.opts.sts.imdsv2_required,
    }
}

/// `GET /latest/meta-data/ram/security-credentials/`: the instance's role.
pub(super) async fn metadata_roles(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Response {
    if !imds_allowed(&shared, &headers) {
        shared.count("MetadataRoles", "Unauthorized");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    shared.count("MetadataRoles", "OK");
    (StatusCode::OK, shared.opts.sts.ecs_role.clone()).into_response()
}

/// `GET /latest/meta-data/ram/security-credentials/{role}`: the role's STS credentials.
pub(super) async fn metadata_role(
    State(shared): State<Arc<Shared>>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !imds_allowed(&shared, &headers) {
        shared.count("MetadataCredentials", "Unauthorized");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if role != shared.opts.sts.ecs_role {
        shared.count("MetadataCredentials", "NotFound");
        return StatusCode::NOT_FOUND.into_response();
    }
    shared.count("MetadataCredentials", "OK");
    metadata_credentials(&shared)
}

/// `GET /_emulator/credentials`: a credentials URI.
pub(super) async fn credentials_uri(State(shared): State<Arc<Shared>>) -> Response {
    shared.count("CredentialsUri", "OK");
    metadata_credentials(&shared)
}
