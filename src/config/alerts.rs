//! `[alerts]`: chat webhooks told about failed runs, data about to age out, fenced commits and
//! new schema drift. The webhook URLs and signing secrets are secrets: the configuration names
//! the environment variables that hold them, never the values.

use serde::{Deserialize, Deserializer};

/// `[alerts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where messages go (`[[alerts.targets]]`).
    #[serde(default)]
    pub targets: Vec<AlertTarget>,
    /// Attempts per message (HTTP errors, 5xx, 429, a vendor's error code), with backoff.
    #[serde(default = "default_attempts", deserialize_with = "super::positive_u32")]
    pub max_attempts: u32,
    /// The first backoff, doubled after each attempt, ms.
    #[serde(default = "default_backoff_ms")]
    pub backoff_base_ms: u64,
    /// Seconds one request may take.
    #[serde(default = "default_timeout", deserialize_with = "super::positive_u64")]
    pub timeout_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            targets: vec![],
            max_attempts: default_attempts(),
            backoff_base_ms: default_backoff_ms(),
            timeout_secs: default_timeout(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}

fn default_backoff_ms() -> u64 {
    1_000
}

fn default_timeout() -> u64 {
    10
}

/// One webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTarget {
    /// The body it expects.
    pub format: AlertFormat,
    /// The environment variable holding the webhook URL (it carries the robot's token).
    #[serde(deserialize_with = "env_name")]
    pub url_env: String,
    /// The environment variable holding the signing secret (DingTalk's and Lark's signature
    /// check, or an HMAC header for `generic`); none: unsigned.
    #[serde(default, deserialize_with = "opt_env_name")]
    pub secret_env: Option<String>,
    /// The events sent there; default: all.
    #[serde(default = "all_events")]
    pub events: Vec<AlertEvent>,
}

impl AlertTarget {
    /// A name for logs: the format and the URL's variable (never the URL).
    pub fn label(&self) -> String {
        format!("{} ({})", self.format.as_str(), self.url_env)
    }
}

/// Body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// A DingTalk group robot (`msgtype: markdown`; signed: `timestamp` and `sign` in the URL).
    Dingtalk,
    /// A Lark / Feishu custom bot (`msg_type: text`; signed: `timestamp` and `sign` in the body).
    Lark,
    /// A Slack incoming webhook (`text`).
    Slack,
    /// JSON with the event's fields; signed: `X-CCC-ETL-Signature: sha256=<hex HMAC of the body>`.
    Generic,
}

impl AlertFormat {
    /// The name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertFormat::Dingtalk => "dingtalk",
            AlertFormat::Lark => "lark",
            AlertFormat::Slack => "slack",
            AlertFormat::Generic => "generic",
        }
    }
}

/// What is worth a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// A `backfill` or `nightly` run failed (exit 1) or left failed windows (exit 3).
    RunFailed,
    /// Uncovered time leaves the API's horizon within `aging_alert_days` (the nightly job).
    Aging,
    /// Commits refused because another worker had taken the window over.
    Fenced,
    /// The API sent a field ccc-etl does not know, or left out one it knows, for the first time.
    Drift,
    /// `ccc-etl check --send-test-alert`.
    Test,
}

impl AlertEvent {
    /// The name in the configuration and in `generic` bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::RunFailed => "run_failed",
            AlertEvent::Aging => "aging",
            AlertEvent::Fenced => "fenced",
            AlertEvent::Drift => "drift",
            AlertEvent::Test => "test",
        }
    }
}

fn all_events() -> Vec<AlertEvent> {
    vec![
        AlertEvent::RunFailed,
        AlertEvent::Aging,
        AlertEvent::Fenced,
        AlertEvent::Drift,
    ]
}

/// An environment variable's name: upper-case letters, digits and `_`, not starting with a
/// digit. A URL or a secret written here instead is refused without being echoed.
fn check_env_name(s: &str) -> Result<String, String> {
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(
            "must name an environment variable (upper-case letters, digits, _) that holds the \
             value; webhook URLs and secrets are never written in the configuration"
                .into(),
        )
    }
}

fn env_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    check_env_name(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn opt_env_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    check_env_name(&String::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}
