//! What can go wrong with one API call, and what to do about it.
//!
//! "Should we retry?" lives here, apart from the retry loop in `client.rs`.

use std::fmt;

/// What a failure means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ErrorClass {
    /// Try again after a backoff (throttling, 5xx, network, malformed body, nonce reuse).
    Retryable,
    /// Every further request would fail the same way: credentials, permissions, clock. Stop the run.
    RunFatal,
    /// This window (or instance) cannot be fetched: bad parameter, unknown instance.
    WindowFatal,
}

/// A failed call, with what Alibaba Cloud said about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The service answered with an error code.
    #[error("{code} (HTTP {http_status}): {message}{}", request_suffix(.request_id))]
    Service {
        /// HTTP status.
        http_status: u16,
        /// Alibaba Cloud error code, e.g. `Throttling.User`.
        code: String,
        /// The service's message.
        message: String,
        /// RequestId, for a support ticket.
        request_id: Option<String>,
    },
    /// The body could not be read as a report.
    #[error("malformed response (HTTP {http_status}): {detail}{}", request_suffix(.request_id))]
    Malformed {
        /// HTTP status.
        http_status: u16,
        /// What was wrong.
        detail: String,
        /// RequestId from headers, if any.
        request_id: Option<String>,
        /// Whether the answer was well-formed JSON of another shape (a field whose type
        /// changed): asking again gets the same answer, so the window is not retried.
        permanent: bool,
    },
    /// No answer in time.
    #[error("request timed out after {0} s")]
    Timeout(u64),
    /// Connection refused, reset, DNS.
    #[error("network error: {0}")]
    Network(String),
    /// No credentials to sign with: the provider could not renew expired ones.
    #[error("{0}")]
    Credentials(String),
    /// The endpoint's TLS certificate is not trusted (expired, self-signed, another host's):
    /// every further request would fail the same way.
    #[error("the TLS certificate of {host} is not trusted: {detail}")]
    Certificate {
        /// The endpoint's host.
        host: String,
        /// What the TLS library said.
        detail: String,
    },
}

fn request_suffix(id: &Option<String>) -> String {
    id.as_ref()
        .map(|id| format!(" [RequestId {id}]"))
        .unwrap_or_default()
}

/// Classifies an Alibaba Cloud error code, falling back on the HTTP status for codes not listed.
pub fn classify_code(code: &str, http_status: u16) -> ErrorClass {
    let run_fatal_prefixes = [
        "InvalidTimeStamp",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "InvalidSecurityToken",
        "Forbidden",
        "NoPermission",
        "AbnormalService",
    ];
    let retryable_prefixes = [
        "Throttling",
        "ServiceUnavailable",
        "InternalError",
        "UnknownError",
        "InternalService",
        "SignatureNonceUsed",
    ];
    if retryable_prefixes.iter().any(|p| code.starts_with(p)) {
        ErrorClass::Retryable
    } else if run_fatal_prefixes.iter().any(|p| code.starts_with(p)) {
        ErrorClass::RunFatal
    } else if code.starts_with("Parameter") || code.starts_with("NotExists") {
        ErrorClass::WindowFatal
    } else if http_status >= 500 || http_status == 429 {
        ErrorClass::Retryable
    } else if http_status == 401 || http_status == 403 {
        ErrorClass::RunFatal
    } else {
        ErrorClass::WindowFatal
    }
}

impl ApiError {
    /// What this failure means for the run.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Service {
                code, http_status, ..
            } => classify_code(code, *http_status),
            ApiError::Malformed {
                permanent: true, ..
            } => ErrorClass::WindowFatal,
            ApiError::Malformed { .. } | ApiError::Timeout(_) | ApiError::Network(_) => {
                ErrorClass::Retryable
            }
            // Nothing valid to sign with, and the provider could not renew it: every further
            // request would fail the same way.
            ApiError::Credentials(_) | ApiError::Certificate { .. } => ErrorClass::RunFatal,
        }
    }

    /// Whether retrying makes sense.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// Whether the service says the instance does not exist (a mistyped id, another account or
    /// region): every window of that instance would fail the same way.
    pub fn is_unknown_instance(&self) -> bool {
        matches!(self, ApiError::Service { code, .. } if code.starts_with("NotExists.InstanceId"))
    }

    /// Whether the service asked us to slow down.
    pub fn is_throttling(&self) -> bool {
        match self {
            ApiError::Service {
                code, http_status, ..
            } => code.starts_with("Throttling") || *http_status == 429,
            _ => false,
        }
    }

    /// The Alibaba Cloud code, or a stand-in naming the failure kind, for counters.
    pub fn code(&self) -> &str {
        match self {
            ApiError::Service { code, .. } => code,
            ApiError::Malformed { .. } => "MalformedResponse",
            ApiError::Timeout(_) => "Timeout",
            ApiError::Network(_) => "NetworkError",
            ApiError::Credentials(_) => "CredentialsUnavailable",
            ApiError::Certificate { .. } => "CertificateError",
        }
    }

    /// The RequestId, when the service sent one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ApiError::Service { request_id, .. } | ApiError::Malformed { request_id, .. } => {
                request_id.as_deref()
            }
            _ => None,
        }
    }

    /// A one-line hint for run-fatal errors: what the operator should fix.
    pub fn hint(&self) -> Option<&'static str> {
        let code = self.code();
        if code == "CertificateError" {
            Some(
                "check [source] endpoint: it must be the CCC endpoint of your region \
                 (https://ccc.<region>.aliyuncs.com), reached without a TLS-intercepting proxy",
            )
        } else if code.starts_with("InvalidTimeStamp") {
            Some("the local clock is off by more than 15 minutes: synchronise it (NTP) and re-run")
        } else if code.starts_with("SignatureDoesNotMatch")
            || code.starts_with("IncompleteSignature")
        {
            Some("check ALIBABA_CLOUD_ACCESS_KEY_SECRET for the configured AccessKeyId")
        } else if code.starts_with("InvalidAccessKeyId") || code.starts_with("InvalidSecurityToken")
        {
            Some(
                "check the credentials the start-up line names (for an AccessKey: \
                 ALIBABA_CLOUD_ACCESS_KEY_ID, and ALIBABA_CLOUD_SECURITY_TOKEN for STS)",
            )
        } else if code == "CredentialsUnavailable" {
            Some(
                "the credential provider could not renew the credentials: check what it reads \
                 (the OIDC token file, the metadata service, the credentials URI), then run again",
            )
        } else if self.class() == ErrorClass::RunFatal {
            Some("grant the RAM user permission for ccc:GetInstanceTrendingReport")
        } else {
            None
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::RunFatal => "fatal for the run",
            ErrorClass::WindowFatal => "fatal for the window",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> ApiError {
        ApiError::Service {
            http_status: status,
            code: code.into(),
            message: "m".into(),
            request_id: Some("rid".into()),
        }
    }

    #[test]
    fn every_documented_code_has_its_documented_class() {
        use ErrorClass::*;
        let table = [
            ("Throttling", 400, Retryable),
            ("Throttling.User", 400, Retryable),
            ("Throttling.Api", 400, Retryable),
            ("ServiceUnavailable", 503, Retryable),
            ("InternalError", 500, Retryable),
            ("UnknownError", 500, Retryable),
            ("InternalService.Timeout", 500, Retryable),
            ("SignatureNonceUsed", 400, Retryable),
            ("InvalidTimeStamp.Expired", 400, RunFatal),
            ("InvalidTimeStamp.Format", 400, RunFatal),
            ("SignatureDoesNotMatch", 400, RunFatal),
            ("InvalidAccessKeyId.NotFound", 404, RunFatal),
            ("InvalidAccessKeyId.Inactive", 400, RunFatal),
            ("Forbidden.RAM", 403, RunFatal),
            ("NoPermission", 403, RunFatal),
            ("AbnormalService.Overdue", 403, RunFatal),
            ("Parameter.Blank", 400, WindowFatal),
            ("Parameter.Invalid", 400, WindowFatal),
            ("NotExists.InstanceId", 404, WindowFatal),
            ("SomethingNew", 502, Retryable),
            ("SomethingNew", 403, RunFatal),
            ("SomethingNew", 400, WindowFatal),
        ];
        for (code, status, class) in table {
            assert_eq!(service(code, status).class(), class, "{code} HTTP {status}");
        }
    }

    #[test]
    fn transport_failures_are_retryable() {
        assert!(ApiError::Timeout(30).is_retryable());
        assert!(ApiError::Network("refused".into()).is_retryable());
        assert!(
            ApiError::Malformed {
                http_status: 200,
                detail: "truncated".into(),
                request_id: None,
                permanent: false,
            }
            .is_retryable()
        );
    }

    #[test]
    fn a_well_formed_answer_of_another_shape_is_not_retried() {
        let e = ApiError::Malformed {
            http_status: 200,
            detail: "Data.Outbound.TotalCalls: invalid type: map, expected an integer".into(),
            request_id: None,
            permanent: true,
        };
        assert_eq!(e.class(), ErrorClass::WindowFatal);
        assert!(!e.is_retryable());
    }

    #[test]
    fn an_untrusted_certificate_stops_the_run() {
        let e = ApiError::Certificate {
            host: "ccc.example".into(),
            detail: "UnknownIssuer".into(),
        };
        assert_eq!(e.class(), ErrorClass::RunFatal);
        assert!(e.to_string().contains("ccc.example"));
        assert!(e.hint().unwrap().contains("endpoint"));
    }

    #[test]
    fn throttling_is_recognised_on_http_400() {
        assert!(service("Throttling.User", 400).is_throttling());
        assert!(!service("ServiceUnavailable", 503).is_throttling());
    }

    #[test]
    fn errors_keep_request_id_code_and_message_for_the_user() {
        let e = service("Forbidden.RAM", 403);
        assert_eq!(e.to_string(), "Forbidden.RAM (HTTP 403): m [RequestId rid]");
        assert_eq!(e.request_id(), Some("rid"));
        assert!(e.hint().unwrap().contains("permission"));
    }
}
