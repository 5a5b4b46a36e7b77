//! Signature verification as Alibaba Cloud performs it, for V1 (query `Signature`) and V3
//! (`Authorization: ACS3-HMAC-SHA256 ...`).

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::ccc::sign::{self, V3Authorization, V3Canonical};

/// Accepted clock skew, either way.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// A rejected request: HTTP status, code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status.
    pub status: u16,
    /// Alibaba Cloud error code.
    pub code: &'static str,
    /// Message, as Alibaba Cloud words it.
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// One key pair the emulator accepts.
#[derive(Clone)]
pub struct KeyPair {
    /// AccessKeySecret.
    pub secret: String,
    /// Required STS token, if the pair is temporary.
    pub security_token: Option<String>,
    /// When a temporary pair stops being accepted (`InvalidSecurityToken.Expired`).
    pub expires: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPair([redacted])")
    }
}

/// What a verified request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Which signature version it used.
    pub version: &'static str,
    /// The action.
    pub action: String,
    /// The API version.
    pub api_version: String,
    /// The nonce, to check for reuse.
    pub nonce: String,
    /// The request time the client claimed.
    pub timestamp: DateTime<Utc>,
}

/// A request as the emulator sees it.
#[derive(Debug)]
pub struct IncomingRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Decoded query parameters.
    pub query: &'a [(String, String)],
    /// Decoded form-body parameters (POST).
    pub form: &'a [(String, String)],
    /// Headers, names lower-case.
    pub headers: &'a [(String, String)],
    /// Raw body.
    pub body: &'a [u8],
}

impl IncomingRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .chain(self.form.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .ok()
        .map(|t| t.and_utc())
}

fn check_time(ts: Option<&str>, now: DateTime<Utc>) -> Result<DateTime<Utc>, Rejection> {
    let raw = ts.ok_or_else(|| {
        Rejection::new(
            400,
            "MissingTimestamp",
            "Timestamp is mandatory for this action.",
        )
    })?;
    let t = parse_time(raw).ok_or_else(|| {
        Rejection::new(
            400,
            "InvalidTimeStamp.Format",
            format!("Specified time stamp or date value is not well formatted: {raw}"),
        )
    })?;
    if (now - t).num_seconds().abs() > MAX_SKEW_SECS {
        return Err(Rejection::new(
            400,
            "InvalidTimeStamp.Expired",
            format!(
                "Specified time stamp or date value is expired. Request time {raw}, server time {}.",
                now.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        ));
    }
    Ok(t)
}

/// Finds the key pair of an AccessKeyId: the configured ones and the STS credentials issued.
pub type KeyLookup<'a> = &'a (dyn Fn(&str) -> Option<KeyPair> + Sync);

fn lookup(keys: KeyLookup<'_>, id: &str) -> Result<KeyPair, Rejection> {
    keys(id).ok_or_else(|| {
        Rejection::new(
            404,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        )
    })
}

fn check_token(pair: &KeyPair, sent: Option<&str>, now: DateTime<Utc>) -> Result<(), Rejection> {
    if pair.expires.is_some_and(|e| now >= e) {
        return Err(Rejection::new(
            400,
            "InvalidSecurityToken.Expired",
            "Specified SecurityToken is expired.",
        ));
    }
    match (&pair.security_token, sent) {
        (None, _) => Ok(()),
        (Some(expected), Some(got)) if sign::signatures_equal(expected, got) => Ok(()),
        (Some(_), None) => Err(Rejection::new(
            400,
            "InvalidSecurityToken.Missing",
            "The security token is required for temporary credentials.",
        )),
        (Some(_), Some(_)) => Err(Rejection::new(
            400,
            "InvalidSecurityToken.Mismatch",
            "The security token does not match the access key.",
        )),
    }
}

/// Verifies the request's signature, key, clock and token. The nonce is returned, not checked.
pub fn verify(
    req: &IncomingRequest<'_>,
    keys: KeyLookup<'_>,
    now: DateTime<Utc>,
) -> Result<Verified, Rejection> {
    if let Some(auth) = req.header("authorization") {
        return verify_v3(req, auth, keys, now);
    }
    if req.param("Signature").is_some() {
        return verify_v1(req, keys, now);
    }
    Err(Rejection::new(
        400,
        "MissingSignature",
        "Signature is mandatory for this action.",
    ))
}

fn verify_v1(
    req: &IncomingRequest<'_>,
    keys: KeyLookup<'_>,
    now: DateTime<Utc>,
) -> Result<Verified, Rejection> {
    let id = req.param("AccessKeyId").ok_or_else(|| {
        Rejection::new(
            400,
            "MissingAccessKeyId",
            "AccessKeyId is mandatory for this action.",
        )
    })?;
    let pair = lookup(keys, id)?;
    match req.param("SignatureMethod") {
        Some("HMAC-SHA1") => {}
        other => {
            return Err(Rejection::new(
                400,
                "InvalidSignatureMethod",
                format!(
                    "Specified signature method is not valid: {}",
                    other.unwrap_or("")
                ),
            ));
        }
    }
    if req.param("SignatureVersion") != Some("1.0") {
        return Err(Rejection::new(
            400,
            "UnsupportedSignatureVersion",
            "Specified signature version is not supported.",
        ));
    }
    let timestamp = check_time(req.param("Timestamp"), now)?;
    let nonce = req
        .param("SignatureNonce")
        .ok_or_else(|| {
            Rejection::new(
                400,
                "MissingSignatureNonce",
                "SignatureNonce is mandatory for this action.",
            )
        })?
        .to_string();
    // Alibaba Cloud signs every parameter, query and form body alike, except Signature itself.
    let all = req
        .query
        .iter()
        .chain(req.form.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let to_sign = sign::v1_string_to_sign(req.method, all);
    let expected = sign::v1_signature(&pair.secret, &to_sign);
    if !sign::signatures_equal(&expected, req.param("Signature").unwrap_or_default()) {
        return Err(Rejection::new(
            400,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{to_sign}"
            ),
        ));
    }
    check_token(&pair, req.param("SecurityToken"), now)?;
    Ok(Verified {
        version: "v1",
        action: req.param("Action").unwrap_or_default().to_string(),
        api_version: req.param("Version").unwrap_or_default().to_string(),
        nonce,
        timestamp,
    })
}

/// The request's headers `parsed` names as signed, in its order; refused if an `x-acs-*`
/// header or `host` is left unsigned, as the gateway requires.
fn signed_headers<'r>(
    req: &'r IncomingRequest<'_>,
    parsed: &V3Authorization,
) -> Result<Vec<(&'r str, &'r str)>, Rejection> {
    for (k, _) in req.headers {
        if (k.starts_with("x-acs-") || k == "host") && !parsed.signed_headers.contains(k) {
            return Err(Rejection::new(
                400,
                "IncompleteSignature",
                format!("Header {k} must be signed."),
            ));
        }
    }
    let mut headers = Vec::new();
    for name in &parsed.signed_headers {
        for (k, v) in req.headers.iter().filter(|(k, _)| k == name) {
            headers.push((k.as_str(), v.as_str()));
        }
    }
    Ok(headers)
}

fn verify_v3(
    req: &IncomingRequest<'_>,
    auth: &str,
    keys: KeyLookup<'_>,
    now: DateTime<Utc>,
) -> Result<Verified, Rejection> {
    let parsed = V3Authorization::parse(auth).ok_or_else(|| {
        Rejection::new(
            400,
            "IncompleteSignature",
            "The authorization header is not ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..",
        )
    })?;
    let pair = lookup(keys, &parsed.access_key_id)?;
    let timestamp = check_time(req.header("x-acs-date"), now)?;
    let nonce = req
        .header("x-acs-signature-nonce")
        .ok_or_else(|| {
            Rejection::new(
                400,
                "MissingSignatureNonce",
                "x-acs-signature-nonce is mandatory.",
            )
        })?
        .to_string();
    let body_hash = sign::sha256_hex(req.body);
    if req.header("x-acs-content-sha256") != Some(body_hash.as_str()) {
        return Err(Rejection::new(
            400,
            "SignatureDoesNotMatch",
            "x-acs-content-sha256 does not match the SHA-256 of the body.",
        ));
    }
    let headers = signed_headers(req, &parsed)?;
    let canonical = V3Canonical {
        method: req.method,
        path: "/",
        query: req
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        headers,
        hashed_payload: &body_hash,
    };
    let expected = canonical.signature(&pair.secret);
    if !sign::signatures_equal(&expected, &parsed.signature) {
        return Err(Rejection::new(
            400,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{} canonical request is:{}",
                canonical.string_to_sign().replace('\n', "\\n"),
                canonical.canonical_request().replace('\n', "\\n")
            ),
        ));
    }
    check_token(&pair, req.header("x-acs-security-token"), now)?;
    Ok(Verified {
        version: "v3",
        action: req.header("x-acs-action").unwrap_or_default().to_string(),
        api_version: req.header("x-acs-version").unwrap_or_default().to_string(),
        nonce,
        timestamp,
    })
}
