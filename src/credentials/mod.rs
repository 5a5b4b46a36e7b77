//! Where the key that signs requests comes from: Alibaba Cloud's default credential chain, and
//! temporary credentials kept fresh for a whole run.
//!
//! [`chain::resolve`] reads the environment and the CLI's files and names one [`Provider`], as
//! the official `alibabacloud_credentials` packages do, in their order: environment, OIDC (RRSA),
//! the CLI profile, the credentials file, the ECS instance RAM role, `ALIBABA_CLOUD_CREDENTIALS_URI`.
//! [`CredentialSource`] holds what the provider gave and fetches again before it expires: once
//! for every request in flight, however many wait for it.
//!
//! `reqsign`'s Aliyun providers (Apache OpenDAL) were read first; they are built for OSS
//! signing, walk a different order (ECS before OIDC) and have no CLI profile, credentials file
//! or credentials URI, so the providers are implemented here from the official SDKs' behaviour.

pub mod chain;
mod fetch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use secrecy::{ExposeSecret, SecretString};

use crate::ccc::sign::SigningKey;
use crate::config::Choice;
use crate::redact::{Redactor, mask};
pub use chain::resolve;
pub use fetch::Provider;

/// The key pair (and STS token) that signs requests. Never printed.
#[derive(Clone)]
pub struct Credentials {
    /// AccessKeyId: an identifier, not a secret, but kept out of logs anyway.
    pub access_key_id: String,
    /// AccessKeySecret.
    pub access_key_secret: SecretString,
    /// STS security token, for temporary credentials.
    pub security_token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &mask(&self.access_key_id))
            .field("access_key_secret", &"[redacted]")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl Credentials {
    /// A key pair from values (tests, the demo).
    pub fn new(id: &str, secret: &str, token: Option<&str>) -> Self {
        Self {
            access_key_id: id.to_string(),
            access_key_secret: SecretString::from(secret.to_string()),
            security_token: token.map(|t| SecretString::from(t.to_string())),
        }
    }

    /// The secret, for signing only.
    pub fn secret(&self) -> &str {
        self.access_key_secret.expose_secret()
    }

    /// The STS token, for the request only.
    pub fn token(&self) -> Option<&str> {
        self.security_token.as_ref().map(|t| t.expose_secret())
    }

    /// The key as plain values, to sign one request.
    pub fn signing_key(&self) -> SigningKey<'_> {
        SigningKey {
            id: &self.access_key_id,
            secret: self.secret(),
            token: self.token(),
        }
    }

    /// A scrubber of this key from server text.
    pub fn redactor(&self) -> Redactor {
        Redactor::for_key(&self.access_key_id, self.secret(), self.token())
    }
}

/// Temporary credentials are fetched again this long before they expire (or a quarter of their
/// lifetime before, when that is shorter).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Credentials and when they stop working.
#[derive(Clone)]
pub struct Lease {
    /// The key pair (and STS token).
    pub credentials: Arc<Credentials>,
    /// When the service stops accepting them; `None` for a permanent AccessKey.
    pub expires: Option<DateTime<Utc>>,
    /// When they were obtained.
    pub obtained: DateTime<Utc>,
}

impl Lease {
    /// Credentials that never expire.
    pub fn permanent(credentials: Credentials) -> Self {
        Self {
            credentials: Arc::new(credentials),
            expires: None,
            obtained: Utc::now(),
        }
    }

    /// Within the refresh margin of the expiry (or past it).
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        let Some(expires) = self.expires else {
            return false;
        };
        let lifetime = (expires - self.obtained).to_std().unwrap_or_default();
        let margin = REFRESH_MARGIN.min(lifetime / 4);
        now + chrono::Duration::from_std(margin).unwrap_or_default() >= expires
    }

    /// Still accepted by the service at `now`.
    pub fn valid(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// Why there are no credentials to sign with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("credentials from {provider}: {message}")]
pub struct CredentialError {
    /// The provider, as the start-up line names it.
    pub provider: String,
    /// What went wrong (never a secret).
    pub message: String,
}

/// The run's credentials: one provider, the lease it last gave, refreshed on demand.
pub struct CredentialSource {
    provider: Provider,
    label: String,
    current: RwLock<Lease>,
    refresh: tokio::sync::Mutex<()>,
    refreshes: AtomicU64,
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSource")
            .field("provider", &self.label)
            .field("access_key_id", &self.masked_key_id())
            .finish_non_exhaustive()
    }
}

impl From<Credentials> for CredentialSource {
    fn from(c: Credentials) -> Self {
        Self::fixed(c)
    }
}

impl CredentialSource {
    /// A source that always gives `credentials` (tests, the demo).
    pub fn fixed(credentials: Credentials) -> Self {
        Self {
            provider: Provider::Static(credentials.clone()),
            label: "fixed credentials".into(),
            current: RwLock::new(Lease::permanent(credentials)),
            refresh: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Fetches the first credentials from `provider`.
    pub async fn start(provider: Provider, label: String) -> Result<Self, CredentialError> {
        let lease = provider.fetch().await.map_err(|message| CredentialError {
            provider: label.clone(),
            message,
        })?;
        Ok(Self {
            provider,
            label,
            current: RwLock::new(lease),
            refresh: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(0),
        })
    }

    /// Which provider, in words ("OIDC role ... (RRSA)").
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The AccessKeyId in use, masked.
    pub fn masked_key_id(&self) -> String {
        mask(&self.lease().credentials.access_key_id)
    }

    /// Logs which provider signs, the masked AccessKeyId and the expiry (never a secret).
    /// The expiry is an RFC 3339 timestamp, or `never` for long-lived keys.
    pub fn log_start(&self) {
        tracing::info!(
            provider = %self.label,
            access_key_id = %self.masked_key_id(),
            expires = %expiry(self.lease().expires),
            "credentials"
        );
    }

    /// Temporary credentials fetched again since the start.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Whether the provider gives temporary credentials that a new fetch can renew.
    pub fn renewable(&self) -> bool {
        !matches!(self.provider, Provider::Static(_))
    }

    /// The current lease.
    pub fn lease(&self) -> Lease {
        self.current.read().expect("credential lock").clone()
    }

    /// Credentials to sign with now, fetched again first when they are due.
    pub async fn get(&self) -> Result<Arc<Credentials>, CredentialError> {
        let lease = self.lease();
        if !lease.due(Utc::now()) {
            return Ok(lease.credentials);
        }
        self.renew(&lease.credentials, false).await
    }

    /// The service refused `used` as expired (`InvalidSecurityToken.Expired`): fetch new ones,
    /// unless another request already did.
    pub async fn expired(
        &self,
        used: &Arc<Credentials>,
    ) -> Result<Arc<Credentials>, CredentialError> {
        self.renew(used, true).await
    }

    async fn renew(
        &self,
        stale: &Arc<Credentials>,
        refused: bool,
    ) -> Result<Arc<Credentials>, CredentialError> {
        let _one_at_a_time = self.refresh.lock().await;
        let lease = self.lease();
        let now = Utc::now();
        if !Arc::ptr_eq(&lease.credentials, stale) && !lease.due(now) {
            // Another request renewed them while this one waited.
            return Ok(lease.credentials);
        }
        if !self.renewable() {
            return Err(self.error(
                "the service says the security token has expired, and this provider cannot \
                 renew it: export fresh temporary credentials, or use a provider that renews \
                 them (OIDC, an ECS RAM role, a RAM role ARN, a credentials URI)",
            ));
        }
        match self.provider.fetch().await {
            Ok(new) => {
                let creds = new.credentials.clone();
                tracing::info!(
                    provider = %self.label,
                    access_key_id = %mask(&creds.access_key_id),
                    expires = %expiry(new.expires),
                    "temporary credentials renewed"
                );
                *self.current.write().expect("credential lock") = new;
                self.refreshes.fetch_add(1, Ordering::Relaxed);
                Ok(creds)
            }
            Err(message) if !refused && lease.valid(now) => {
                // Still good for a while: use them, and try again on the next request.
                tracing::warn!(provider = %self.label, error = %message,
                    "cannot renew the temporary credentials yet; the current ones are still valid");
                Ok(lease.credentials)
            }
            Err(message) => Err(self.error(&message)),
        }
    }

    fn error(&self, message: &str) -> CredentialError {
        CredentialError {
            provider: self.label.clone(),
            message: message.to_string(),
        }
    }
}

static SOURCE: tokio::sync::OnceCell<Arc<CredentialSource>> = tokio::sync::OnceCell::const_new();

/// The credentials the process's source holds now, if it was started: what error texts must not
/// show.
pub fn process_credentials() -> Option<Arc<Credentials>> {
    SOURCE.get().map(|s| s.lease().credentials)
}

/// The process's one credential source: resolved once from `[source] credentials` and the
/// environment, shared by the API client and an `oss://` Parquet root, so both sign with the same
/// credentials and renew them once.
pub async fn process_source(choice: Choice) -> anyhow::Result<Arc<CredentialSource>> {
    SOURCE
        .get_or_try_init(|| async {
            let candidates = {
                let env = |k: &str| std::env::var(k).ok();
                chain::resolve(choice, &env)?
            };
            Ok(Arc::new(chain::start(choice, candidates).await?))
        })
        .await
        .cloned()
}

/// An expiry as logged: an RFC 3339 timestamp, or `never`.
fn expiry(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "never".to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_their_secret_in_debug() {
        let c = Credentials::new("LTAIexample", "super-secret-value", Some("sts-token-value"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("super-secret-value") && !dbg.contains("sts-token-value"));
        assert!(!dbg.contains("LTAIexample"), "the id is masked too: {dbg}");
        let key = format!("{:?}", c.signing_key());
        assert!(
            !key.contains("super-secret-value") && !key.contains("LTAI"),
            "{key}"
        );
    }
}
