//! The one scrubber of secrets: every text a server sends back (the CCC API, STS and the
//! credential services, an object store) passes through [`Redactor::scrub`] before it becomes
//! an error, so no credential reaches a log, the run summary, the ledger, the database or the
//! metrics.
//!
//! Alibaba Cloud's `SignatureDoesNotMatch` message quotes the server's string-to-sign (V1) or
//! canonical request (V3), which carries the AccessKeyId, the STS SecurityToken and the
//! Signature, percent-encoded once or twice; an S3 error body quotes the string it signed and the
//! signature it got. Both are cut out by pattern; the known values (secrets, tokens, key ids)
//! are removed, or masked for ids, wherever they appear, verbatim or percent-encoded.

use std::sync::LazyLock;

use regex::Regex;

/// `name` then a separator (`=`, `:`, `%3D`, `%253D`, JSON's `":"`), then the value up to the next
/// delimiter (`&`, `%26`, `%2526`, whitespace, a quote, `,`, `;`, or a backslash: a message that
/// quotes a canonical request escapes its line breaks as `\n`, and the next header is not part
/// of the value).
static PARAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(?P<name>x-acs-security-token|x-acs-accesskey-id|securitytoken|accesskeyid|accesskeysecret|signature|credential)(?P<sep>\s*(?:=|:|%3D|%253D|"\s*:\s*")\s*)(?P<value>(?:[^&\s"',;%\\]|%(?:25(?:[013-9A-Fa-f][0-9A-Fa-f]|2[0-57-9A-Fa-f])|2[0-47-9A-Fa-f]|[013-9A-Fa-f][0-9A-Fa-f]))+)"#,
    )
    .expect("valid pattern")
});

/// Elements of an S3 error body that quote what was signed, and presigned URLs' parameters.
static SIGNED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?is)<(StringToSign|StringToSignBytes|CanonicalRequest|CanonicalRequestBytes|SignatureProvided)>.*?</(StringToSign|StringToSignBytes|CanonicalRequest|CanonicalRequestBytes|SignatureProvided)>|(?i)(X-Amz-Security-Token|X-Amz-Signature|X-Amz-Credential|x-oss-security-token|Signature)=[^&\s<]*",
    )
    .expect("valid pattern")
});

/// Shows the first 4 characters of an id and hides the rest.
pub fn mask(id: &str) -> String {
    let head: String = id.chars().take(4).collect();
    format!("{head}****")
}

/// Removes credentials from server text: the signed material by pattern, and the values it
/// was given (ids masked, secrets and tokens removed). Values shorter than 4 characters are
/// ignored (they would remove ordinary text).
#[derive(Clone, Default)]
pub struct Redactor {
    ids: Vec<String>,
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("ids", &self.ids.iter().map(|i| mask(i)).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for one key pair (and its STS token).
    pub fn for_key(id: &str, secret: &str, token: Option<&str>) -> Self {
        let r = Self::default().id(id).secret(secret);
        match token {
            Some(t) => r.secret(t),
            None => r,
        }
    }

    /// Also masks `id` wherever it appears.
    pub fn id(mut self, id: &str) -> Self {
        if id.len() >= 4 {
            self.ids.push(id.to_string());
        }
        self
    }

    /// Also removes `secret` wherever it appears.
    pub fn secret(mut self, secret: &str) -> Self {
        if secret.len() >= 4 {
            self.secrets.push(secret.to_string());
        }
        self
    }

    /// `text` with every credential-bearing parameter's value masked (ids) or removed (tokens,
    /// signatures, secrets), the signed material of an S3 error removed, and the known values
    /// removed (or masked, for ids) wherever they appear.
    pub fn scrub(&self, text: &str) -> String {
        let out = SIGNED.replace_all(text, "[redacted]");
        let out = PARAM.replace_all(&out, |c: &regex::Captures<'_>| {
            let name = &c["name"];
            let value = &c["value"];
            let lower = name.to_ascii_lowercase();
            let shown = if lower.contains("accesskeyid") || lower == "credential" {
                // V3's Credential is the AccessKeyId itself.
                mask(value)
            } else {
                "[redacted]".to_string()
            };
            format!("{name}{}{shown}", &c["sep"])
        });
        let mut out = out.into_owned();
        for s in &self.secrets {
            for form in encoded_forms(s) {
                if out.contains(&form) {
                    out = out.replace(&form, "[redacted]");
                }
            }
        }
        for id in &self.ids {
            for form in encoded_forms(id) {
                if out.contains(&form) {
                    out = out.replace(&form, &mask(id));
                }
            }
        }
        out
    }
}

/// A value as it may appear: verbatim, percent-encoded once and twice.
fn encoded_forms(s: &str) -> Vec<String> {
    let once = crate::ccc::sign::percent_encode(s);
    let twice = crate::ccc::sign::percent_encode(&once);
    let mut v = vec![s.to_string(), once, twice];
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::for_key(
            "STS.NUexampleKeyId",
            "the-Secret/Value+1",
            Some("CAISexample/Token+Value=="),
        )
    }

    #[test]
    fn a_v1_string_to_sign_keeps_no_token_no_signature_and_a_masked_key_id() {
        let msg = "Specified signature is not matched with our calculation. server string to sign is:\
                   GET&%2F&AccessKeyId%3DSTS.NUexampleKeyId%26Action%3DGetInstanceTrendingReport\
                   %26SecurityToken%3DCAISexample%252FToken%252BValue%253D%253D%26Signature%3Dabc%252B%26\
                   Timestamp%3D2026-11-27T10%253A00%253A00Z";
        let out = redactor().scrub(msg);
        for leak in ["NUexampleKeyId", "CAIS", "Token%25", "abc"] {
            assert!(!out.contains(leak), "{leak} in {out}");
        }
        assert!(out.contains("AccessKeyId%3DSTS.****"), "{out}");
        assert!(
            out.contains("SecurityToken%3D[redacted]%26"),
            "full: {out:?}"
        );
        assert!(
            out.contains("Action%3DGetInstanceTrendingReport"),
            "the rest stays: {out}"
        );
        assert!(
            out.contains("Timestamp%3D2026-11-27T10%253A00%253A00Z"),
            "{out}"
        );
    }

    #[test]
    fn a_v3_canonical_request_and_authorization_keep_no_credentials() {
        let msg = "canonical request is:POST\\n/\\n\\nhost:ccc.example\\nx-acs-accesskey-id:STS.NUexampleKeyId\\n\
                   x-acs-security-token:CAISexample/Token+Value==\\n Authorization: ACS3-HMAC-SHA256 \
                   Credential=STS.NUexampleKeyId,SignedHeaders=host;x-acs-date,Signature=0123abcd";
        let out = redactor().scrub(msg);
        for leak in ["NUexampleKeyId", "CAIS", "0123abcd"] {
            assert!(!out.contains(leak), "{leak} in {out}");
        }
        assert!(out.contains("SignedHeaders=host;x-acs-date"), "{out}");
    }

    #[test]
    fn a_value_is_removed_and_nothing_after_it() {
        // A canonical request quoted in a JSON message: its line breaks arrive escaped.
        let msg = r"canonical request is:POST\n/\n\nx-acs-security-token:CAISexample/Token+Value==\nx-acs-signature-nonce:n-1\nx-acs-date:2026-12-04T10:00:00Z";
        let out = redactor().scrub(msg);
        assert_eq!(
            out,
            r"canonical request is:POST\n/\n\nx-acs-security-token:[redacted]\nx-acs-signature-nonce:n-1\nx-acs-date:2026-12-04T10:00:00Z"
        );
    }

    #[test]
    fn the_secret_and_token_are_removed_wherever_they_appear() {
        let out = redactor().scrub(
            "echo the-Secret/Value+1 and the-Secret%2FValue%2B1 and CAISexample%252FToken%252BValue%253D%253D",
        );
        assert!(!out.contains("Secret") && !out.contains("CAIS"), "{out}");
        assert_eq!(
            redactor().scrub("no credentials here"),
            "no credentials here"
        );
    }

    #[test]
    fn a_store_error_keeps_no_secret_token_or_signed_text() {
        let s = Redactor::default()
            .id("AKIAEXAMPLEKEYID")
            .secret("wJalrXUtnFEMI/secret")
            .secret("FwoGZXtoken");
        let body = "Client error with status 403: <Error><Code>SignatureDoesNotMatch</Code>\
            <AWSAccessKeyId>AKIAEXAMPLEKEYID</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256\n\
            20261127T000000Z\nabc</StringToSign><SignatureProvided>deadbeef</SignatureProvided>\
            <CanonicalRequest>PUT\n/b/k\nX-Amz-Security-Token=FwoGZXtoken\n</CanonicalRequest>\
            </Error> secret wJalrXUtnFEMI/secret url ?X-Amz-Signature=abcd&X-Amz-Credential=AKIA%2F";
        let out = s.scrub(body);
        for leak in [
            "EXAMPLEKEYID",
            "wJalr",
            "FwoGZ",
            "deadbeef",
            "abcd",
            "20261127T",
        ] {
            assert!(!out.contains(leak), "{leak} in {out}");
        }
        assert!(out.contains("AKIA****"), "{out}");
        assert!(out.contains("SignatureDoesNotMatch"), "{out}");
    }
}
