//! Scrubs credentials out of text the server sends back.
//!
//! Alibaba Cloud's `SignatureDoesNotMatch` message quotes the server's string-to-sign (V1) or
//! canonical request (V3), which carries the AccessKeyId, the STS SecurityToken and the
//! Signature, percent-encoded once or twice. Every message from the server passes through
//! [`Redactor::scrub`] before it becomes an error, so it never reaches a log, the run summary, the
//! ledger, the database or the metrics.

use std::sync::LazyLock;

use regex::Regex;

use crate::config::{Credentials, mask};

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

/// Removes the credentials of one key pair from server text.
#[derive(Clone)]
pub struct Redactor {
    key_id: String,
    /// The secret and the token, removed wherever they appear verbatim.
    verbatim: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("key_id", &mask(&self.key_id))
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for these credentials.
    pub fn new(credentials: &Credentials) -> Self {
        let mut verbatim = vec![credentials.secret().to_string()];
        verbatim.extend(credentials.token().map(str::to_string));
        verbatim.retain(|s| s.len() >= 4);
        Self {
            key_id: credentials.access_key_id.clone(),
            verbatim,
        }
    }

    /// `text` with every credential-bearing parameter's value masked (ids) or removed (tokens,
    /// signatures, secrets), and the key pair's own values removed wherever they appear.
    pub fn scrub(&self, text: &str) -> String {
        let out = PARAM.replace_all(text, |c: &regex::Captures<'_>| {
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
        for s in &self.verbatim {
            for form in encoded_forms(s) {
                if out.contains(&form) {
                    out = out.replace(&form, "[redacted]");
                }
            }
        }
        if self.key_id.len() >= 4 {
            for form in encoded_forms(&self.key_id) {
                if out.contains(&form) {
                    out = out.replace(&form, &mask(&self.key_id));
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
        Redactor::new(&Credentials::new(
            "STS.NUexampleKeyId",
            "the-Secret/Value+1",
            Some("CAISexample/Token+Value=="),
        ))
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
}
