//! Request signing for the Alibaba Cloud RPC API, both versions, as pure functions.
//!
//! The client signs with these functions and the emulator verifies with the same ones, so a
//! divergence from Alibaba Cloud shows up in the published-vector tests rather than in both
//! sides agreeing on a mistake.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Everything but the RFC 3986 unreserved characters `A-Z a-z 0-9 - _ . ~` is encoded.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The V3 signature algorithm name, as sent in `Authorization`.
pub const ACS3_HMAC_SHA256: &str = "ACS3-HMAC-SHA256";

/// Percent-encodes as Alibaba Cloud does: UTF-8, upper-case hex, only unreserved characters kept.
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, RFC3986).to_string()
}

/// Sorted (byte order of names), encoded `name=value` pairs joined with `&`.
pub fn canonical_query<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = params.into_iter().collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// V1 StringToSign: `METHOD&%2F&percentEncode(canonical query)`; `Signature` itself is excluded.
pub fn v1_string_to_sign<'a>(
    method: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let query = canonical_query(params.into_iter().filter(|(k, _)| *k != "Signature"));
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        percent_encode("/"),
        percent_encode(&query)
    )
}

/// V1 signature: base64(HMAC-SHA1(secret + "&", string_to_sign)).
pub fn v1_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Hex SHA-256, as used for `x-acs-content-sha256` and the V3 canonical request hash.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The parts of a request that V3 signs.
#[derive(Debug, Clone)]
pub struct V3Canonical<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Path, `/` for RPC actions.
    pub path: &'a str,
    /// Query parameters, decoded.
    pub query: Vec<(&'a str, &'a str)>,
    /// Signed headers, names in any case, values as sent.
    pub headers: Vec<(&'a str, &'a str)>,
    /// Hex SHA-256 of the body.
    pub hashed_payload: &'a str,
}

impl V3Canonical<'_> {
    /// Lower-cased, sorted header names joined with `;`, as in `SignedHeaders=`.
    pub fn signed_headers(&self) -> String {
        let mut names: Vec<String> = self
            .headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names.join(";")
    }

    /// The canonical request as the official SDK builds it (`get_authorization`): the query values
    /// are encoded with only `~` (and the unreserved set) kept, repeated headers are joined with `,`.
    pub fn canonical_request(&self) -> String {
        let mut query: Vec<(&str, &str)> = self.query.clone();
        query.sort();
        let query = query
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut headers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (k, v) in &self.headers {
            headers
                .entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
        let mut canonical_headers = String::new();
        for (k, mut values) in headers {
            values.sort();
            canonical_headers.push_str(&format!("{k}:{}\n", values.join(",")));
        }
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method.to_ascii_uppercase(),
            self.path,
            query,
            canonical_headers,
            self.signed_headers(),
            self.hashed_payload
        )
    }

    /// `ACS3-HMAC-SHA256\n` + hex SHA-256 of the canonical request.
    pub fn string_to_sign(&self) -> String {
        format!(
            "{ACS3_HMAC_SHA256}\n{}",
            sha256_hex(self.canonical_request().as_bytes())
        )
    }

    /// Hex HMAC-SHA256 of the string to sign, keyed with the secret.
    pub fn signature(&self, secret: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(self.string_to_sign().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The `Authorization` header value.
    pub fn authorization(&self, access_key_id: &str, secret: &str) -> String {
        format!(
            "{ACS3_HMAC_SHA256} Credential={access_key_id},SignedHeaders={},Signature={}",
            self.signed_headers(),
            self.signature(secret)
        )
    }
}

/// A parsed V3 `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Authorization {
    /// The AccessKeyId after `Credential=`.
    pub access_key_id: String,
    /// Lower-case header names the client signed.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

impl V3Authorization {
    /// Parses `ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..`; `None` if malformed.
    pub fn parse(header: &str) -> Option<Self> {
        let rest = header.strip_prefix(ACS3_HMAC_SHA256)?.trim_start();
        let (mut id, mut signed, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            match k {
                "Credential" => id = Some(v.to_string()),
                "SignedHeaders" => {
                    signed = Some(v.split(';').map(|h| h.to_ascii_lowercase()).collect())
                }
                "Signature" => sig = Some(v.to_string()),
                _ => {}
            }
        }
        Some(Self {
            access_key_id: id?,
            signed_headers: signed?,
            signature: sig?,
        })
    }
}

/// Compares two signatures in constant time, so the emulator does not leak how much matched.
pub fn signatures_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The key a request is signed with, as plain values.
#[derive(Clone, Copy)]
pub struct SigningKey<'a> {
    /// AccessKeyId.
    pub id: &'a str,
    /// AccessKeySecret.
    pub secret: &'a str,
    /// STS security token, for temporary credentials.
    pub token: Option<&'a str>,
}

impl std::fmt::Debug for SigningKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").finish_non_exhaustive()
    }
}

/// A V1-signed GET of `(action, version)` of any RPC product (CCC, STS `AssumeRole`): the common
/// parameters plus `params`, signed, as a full URL. `once` is the nonce and the timestamp.
pub fn v1_url(
    base: &url::Url,
    (action, version): (&str, &str),
    method: &str,
    params: &[(&str, String)],
    key: SigningKey<'_>,
    (nonce, timestamp): (&str, &str),
) -> url::Url {
    let mut all: Vec<(&str, &str)> = vec![
        ("Action", action),
        ("Version", version),
        ("Format", "JSON"),
        ("AccessKeyId", key.id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Timestamp", timestamp),
    ];
    if let Some(token) = key.token {
        all.push(("SecurityToken", token));
    }
    all.extend(params.iter().map(|(k, v)| (*k, v.as_str())));
    let to_sign = v1_string_to_sign(method, all.iter().copied());
    let signature = v1_signature(key.secret, &to_sign);
    all.push(("Signature", &signature));
    let mut url = base.clone();
    url.set_query(Some(&canonical_query(all.iter().copied())));
    url
}

/// A V3-signed POST of `(action, version)` with an empty body: the URL with `params` in the
/// query, and the headers to send (`host` left to the HTTP client, which sets it to
/// `authority` from the URL). `once` is the nonce and the timestamp.
pub fn v3_request(
    base: &url::Url,
    authority: &str,
    (action, version): (&str, &str),
    params: &[(&str, String)],
    key: SigningKey<'_>,
    (nonce, timestamp): (&str, &str),
) -> (url::Url, Vec<(&'static str, String)>) {
    let payload_hash = sha256_hex(b"");
    let mut headers: Vec<(&'static str, String)> = vec![
        ("host", authority.to_string()),
        ("x-acs-action", action.to_string()),
        ("x-acs-version", version.to_string()),
        ("x-acs-date", timestamp.to_string()),
        ("x-acs-signature-nonce", nonce.to_string()),
        ("x-acs-content-sha256", payload_hash.clone()),
    ];
    if let Some(token) = key.token {
        headers.push(("x-acs-security-token", token.to_string()));
    }
    let canonical = V3Canonical {
        method: "POST",
        path: "/",
        query: params.iter().map(|(k, v)| (*k, v.as_str())).collect(),
        headers: headers.iter().map(|(k, v)| (*k, v.as_str())).collect(),
        hashed_payload: &payload_hash,
    };
    let authorization = canonical.authorization(key.id, key.secret);
    let mut url = base.clone();
    url.set_query(Some(&canonical_query(
        params.iter().map(|(k, v)| (*k, v.as_str())),
    )));
    headers.retain(|(k, _)| *k != "host");
    headers.push(("authorization", authorization));
    (url, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_PARAMS: [(&str, &str); 9] = [
        ("AccessKeyId", "testid"),
        ("Action", "DescribeRegions"),
        ("Format", "XML"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
        ("SignatureVersion", "1.0"),
        ("Timestamp", "2016-02-23T12:46:24Z"),
        ("Version", "2014-05-26"),
        ("Signature", "ignored: never part of what is signed"),
    ];

    #[test]
    fn v1_published_vector_string_to_sign_matches_exactly() {
        assert_eq!(
            v1_string_to_sign("GET", V1_PARAMS),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
    }

    #[test]
    fn v1_published_vector_signatures_match_for_get_and_post() {
        let get = v1_signature("testsecret", &v1_string_to_sign("GET", V1_PARAMS));
        let post = v1_signature("testsecret", &v1_string_to_sign("POST", V1_PARAMS));
        assert_eq!(get, "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
        assert_eq!(post, "MxbnVAM4w6sft9xjVpe/GCKueuk=");
    }

    #[test]
    fn encoding_keeps_unreserved_and_encodes_the_rest_upper_case() {
        assert_eq!(percent_encode(" ~/*-+"), "%20~%2F%2A-%2B");
        assert_eq!(percent_encode("a b"), "a%20b");
        assert_eq!(percent_encode("*"), "%2A");
        assert_eq!(percent_encode("~"), "~");
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("+"), "%2B");
        assert_eq!(percent_encode("中"), "%E4%B8%AD");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("AZaz09-_."), "AZaz09-_.");
    }

    #[test]
    fn canonical_query_sorts_by_name_in_byte_order() {
        let q = canonical_query([("b", "2"), ("B", "1"), ("a", "x y")]);
        assert_eq!(q, "B=1&a=x%20y&b=2");
    }

    /// A request the official Python SDK (alibabacloud-ccc20200701 2.35, tea-openapi 0.4.6) sent
    /// with its default V3 signing, with AccessKeyId `emulator-key` and secret `emulator-secret`.
    fn sdk_v3_request() -> V3Canonical<'static> {
        V3Canonical {
            method: "POST",
            path: "/",
            query: vec![
                ("EndTime", "1764633600000"),
                ("InstanceId", "ccc-test"),
                ("MediaType", "Audio"),
                ("StartTime", "1764547200000"),
            ],
            headers: vec![
                ("accept", "application/json"),
                ("host", "127.0.0.1:44227"),
                (
                    "user-agent",
                    "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2",
                ),
                ("x-acs-action", "GetInstanceTrendingReport"),
                (
                    "x-acs-content-sha256",
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ),
                ("x-acs-credentials-provider", "static_ak"),
                ("x-acs-date", "2026-11-26T22:02:38Z"),
                ("x-acs-signature-nonce", "4f72d335e8c1132023fb54dc3564d2f2"),
                ("x-acs-version", "2020-07-01"),
            ],
            hashed_payload: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        }
    }

    #[test]
    fn v3_reproduces_the_official_sdk_signature() {
        let req = sdk_v3_request();
        assert_eq!(
            req.signed_headers(),
            "accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;x-acs-signature-nonce;x-acs-version"
        );
        assert_eq!(
            req.signature("emulator-secret"),
            "94c468cec6ed85e307573cbc2d992b1878bd0f2bf447c51212b010521b33a5ec"
        );
    }

    #[test]
    fn v3_canonical_request_has_the_documented_shape() {
        let req = V3Canonical {
            method: "post",
            path: "/",
            query: vec![("b", "x y*"), ("a", "~")],
            headers: vec![("X-Acs-Date", " 2023-01-01T00:00:00Z "), ("host", "h")],
            hashed_payload: "e3b0",
        };
        assert_eq!(
            req.canonical_request(),
            "POST\n/\na=~&b=x%20y%2A\nhost:h\nx-acs-date:2023-01-01T00:00:00Z\n\nhost;x-acs-date\ne3b0"
        );
        assert!(req.string_to_sign().starts_with("ACS3-HMAC-SHA256\n"));
        assert_eq!(req.string_to_sign().len(), "ACS3-HMAC-SHA256\n".len() + 64);
    }

    #[test]
    fn v3_authorization_round_trips_through_the_parser() {
        let req = sdk_v3_request();
        let header = req.authorization("emulator-key", "emulator-secret");
        let parsed = V3Authorization::parse(&header).expect("parses");
        assert_eq!(parsed.access_key_id, "emulator-key");
        assert_eq!(parsed.signed_headers.len(), 9);
        assert_eq!(parsed.signature, req.signature("emulator-secret"));
        assert!(V3Authorization::parse("Bearer abc").is_none());
    }

    #[test]
    fn empty_body_hash_is_the_well_known_value() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn signature_comparison_rejects_any_difference() {
        assert!(signatures_equal("abc", "abc"));
        assert!(!signatures_equal("abc", "abd"));
        assert!(!signatures_equal("abc", "abcd"));
    }
}
