//! Chat alerts: one message per event per run to each `[alerts]` target that wants it, in the
//! target's format and signed as its vendor documents, retried with backoff. Delivery never
//! changes a run's outcome: a message that cannot be sent is a warning.
//!
//! Signatures: DingTalk `sign = base64(HMAC-SHA256(secret, "{timestamp_ms}\n{secret}"))` in the
//! URL with `timestamp`; Lark/Feishu `sign = base64(HMAC-SHA256(key = "{timestamp_s}\n{secret}",
//! message = ""))` in the body with `timestamp`; `generic`: the header
//! `X-CCC-ETL-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;

use crate::config::{AlertEvent, AlertFormat, AlertTarget, AlertsConfig, EnvLookup, env_var};

/// One thing to tell people.
#[derive(Debug, Clone)]
pub struct Alert {
    /// What happened.
    pub event: AlertEvent,
    /// One line.
    pub title: String,
    /// A few lines of detail (plain text).
    pub text: String,
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A request ready to send: where, the JSON body, extra headers.
#[derive(Debug)]
pub struct Prepared {
    /// The URL (it carries the robot's token: never logged).
    pub url: Url,
    /// The body.
    pub body: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

/// The request for `alert` in `format`, signed with `secret` at `now_ms`.
pub fn prepare(
    format: AlertFormat,
    url: &Url,
    secret: Option<&str>,
    alert: &Alert,
    host: &str,
    now_ms: i64,
) -> Prepared {
    let mut url = url.clone();
    let mut headers = vec![];
    let text = format!("{}\n\n{}\n\n(ccc-etl on {host})", alert.title, alert.text);
    let body = match format {
        AlertFormat::Dingtalk => {
            if let Some(secret) = secret {
                let sign = b64(&hmac_sha256(
                    secret.as_bytes(),
                    format!("{now_ms}\n{secret}").as_bytes(),
                ));
                url.query_pairs_mut()
                    .append_pair("timestamp", &now_ms.to_string())
                    .append_pair("sign", &sign);
            }
            serde_json::json!({
                "msgtype": "markdown",
                "markdown": {
                    "title": alert.title,
                    "text": format!(
                        "### {}\n\n{}\n\n(ccc-etl on {host})",
                        alert.title,
                        alert.text.replace('\n', "\n\n")
                    ),
                },
            })
        }
        AlertFormat::Lark => {
            let mut body = serde_json::json!({"msg_type": "text", "content": {"text": text}});
            if let Some(secret) = secret {
                let ts = now_ms / 1000;
                let sign = b64(&hmac_sha256(format!("{ts}\n{secret}").as_bytes(), b""));
                body["timestamp"] = ts.to_string().into();
                body["sign"] = sign.into();
            }
            body
        }
        AlertFormat::Slack => serde_json::json!({"text": text}),
        AlertFormat::Generic => serde_json::json!({
            "source": "ccc-etl",
            "event": alert.event.as_str(),
            "title": alert.title,
            "text": alert.text,
            "host": host,
            "timestamp_ms": now_ms,
        }),
    }
    .to_string();
    if let (AlertFormat::Generic, Some(secret)) = (format, secret) {
        let sig = hex::encode(hmac_sha256(secret.as_bytes(), body.as_bytes()));
        headers.push(("x-ccc-etl-signature", format!("sha256={sig}")));
    }
    Prepared { url, body, headers }
}

/// Whether a 2xx answer is a success: DingTalk and Lark answer 200 with an error code in the
/// body (`errcode`, `code` or `StatusCode` other than 0).
fn accepted(format: AlertFormat, body: &str) -> Result<(), String> {
    if matches!(format, AlertFormat::Slack | AlertFormat::Generic) {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let code = ["errcode", "code", "StatusCode"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|c| c.as_i64()));
    match code {
        Some(0) | None => Ok(()),
        Some(c) => Err(format!(
            "the robot refused the message: code {c} ({})",
            v.get("errmsg")
                .or_else(|| v.get("msg"))
                .and_then(|m| m.as_str())
                .unwrap_or("")
        )),
    }
}

/// The webhook URL from the environment: HTTPS, or plain HTTP to loopback only. Errors name the
/// variable, never the value.
fn target_url(t: &AlertTarget, env: EnvLookup<'_>) -> Result<Url, String> {
    let raw = env_var(env, &t.url_env)
        .ok_or_else(|| format!("{} is not set (the webhook URL)", t.url_env))?;
    let url = Url::parse(&raw).map_err(|_| format!("{} is not a URL", t.url_env))?;
    match (url.scheme(), url.host_str()) {
        ("https", Some(_)) => Ok(url),
        ("http", Some(h)) if crate::config::is_loopback(h) => Ok(url),
        _ => Err(format!(
            "{} must be an https:// URL (plain http only to loopback)",
            t.url_env
        )),
    }
}

/// Sends one prepared request, retried as the API client retries (the same policy: capped,
/// fully jittered exponential backoff) when a later attempt may succeed: not after an answer of
/// 4xx other than 408 and 429 (a wrong URL, token or signature stays wrong). The error says what
/// the last attempt met.
async fn deliver(
    http: &reqwest::Client,
    cfg: &AlertsConfig,
    format: AlertFormat,
    p: &Prepared,
) -> Result<(), String> {
    let policy = crate::ccc::client::RetryPolicy {
        max_attempts: cfg.max_attempts,
        base: Duration::from_millis(cfg.backoff_base_ms),
        cap: Duration::from_secs(30),
    };
    let mut last = String::new();
    let mut attempts = 0;
    for attempt in 0..policy.max_attempts {
        if attempt > 0 {
            tokio::time::sleep(policy.delay(attempt, &mut rand::rng())).await;
        }
        attempts += 1;
        let mut req = http
            .post(p.url.clone())
            .header("content-type", "application/json")
            .body(p.body.clone());
        for (k, v) in &p.headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                let body = resp.text().await.unwrap_or_default();
                match accepted(format, &body) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            Ok(resp) => {
                let status = resp.status();
                last = format!("HTTP {status}");
                if final_answer(status) {
                    break;
                }
            }
            // The URL carries the token: the error is shown without it.
            Err(e) => last = e.without_url().to_string(),
        }
    }
    Err(format!("after {attempts} attempt(s): {last}"))
}

/// Whether an answer's status says no later attempt can succeed: a 4xx other than 408 (request
/// timeout) and 429 (too many requests).
fn final_answer(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
}

/// Sends each alert to each target that wants its event; returns, per target and alert, what
/// happened (`Err` with the reason). Never panics, never fails the caller.
pub async fn send(
    cfg: &AlertsConfig,
    alerts: &[Alert],
    env: EnvLookup<'_>,
    now_ms: i64,
) -> Vec<(String, AlertEvent, Result<(), String>)> {
    let mut out = vec![];
    if cfg.targets.is_empty() || alerts.is_empty() {
        return out;
    }
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_secs))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("alerts not sent: no HTTP client: {e}");
            return out;
        }
    };
    let host = crate::coord::hostname();
    for t in &cfg.targets {
        for a in alerts
            .iter()
            .filter(|a| a.event == AlertEvent::Test || t.events.contains(&a.event))
        {
            let result = async {
                let url = target_url(t, env)?;
                let secret = match &t.secret_env {
                    Some(var) => Some(
                        env_var(env, var)
                            .ok_or_else(|| format!("{var} is not set (the signing secret)"))?,
                    ),
                    None => None,
                };
                let p = prepare(t.format, &url, secret.as_deref(), a, &host, now_ms);
                deliver(&http, cfg, t.format, &p).await
            }
            .await;
            out.push((t.label(), a.event, result));
        }
    }
    out
}

/// [`send`], logging each outcome: a message sent at info, one that could not be at warning.
pub async fn notify(cfg: &AlertsConfig, alerts: &[Alert]) {
    // Signing time: the wall clock the receiver checks, not the pipeline's.
    let now = chrono::Utc::now().timestamp_millis();
    for (target, event, result) in send(cfg, alerts, &crate::config::process_env, now).await {
        match result {
            Ok(()) => tracing::info!(target = %target, event = event.as_str(), "alert sent"),
            Err(e) => tracing::warn!(
                target = %target,
                event = event.as_str(),
                "alert not sent: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            event: AlertEvent::RunFailed,
            title: "ccc-etl nightly failed".into(),
            text: "2 windows failed".into(),
        }
    }

    #[test]
    fn dingtalk_signs_the_documented_string_in_the_url() {
        let url = Url::parse("https://oapi.dingtalk.com/robot/send?access_token=abc").unwrap();
        let p = prepare(
            AlertFormat::Dingtalk,
            &url,
            Some("SECxyz"),
            &alert(),
            "h",
            1_700_000_000_123,
        );
        let q: std::collections::HashMap<_, _> = p.url.query_pairs().into_owned().collect();
        assert_eq!(q["access_token"], "abc");
        assert_eq!(q["timestamp"], "1700000000123");
        let want = b64(&hmac_sha256(b"SECxyz", b"1700000000123\nSECxyz"));
        assert_eq!(q["sign"], want);
        let body: serde_json::Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(body["msgtype"], "markdown");
    }

    #[test]
    fn lark_signs_with_the_timestamp_and_secret_as_the_key() {
        let url = Url::parse("https://open.feishu.cn/open-apis/bot/v2/hook/x").unwrap();
        let p = prepare(
            AlertFormat::Lark,
            &url,
            Some("s3cret"),
            &alert(),
            "h",
            1_700_000_000_999,
        );
        let body: serde_json::Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], b64(&hmac_sha256(b"1700000000\ns3cret", b"")));
        assert!(
            body["content"]["text"]
                .as_str()
                .unwrap()
                .contains("2 windows failed")
        );
    }

    #[test]
    fn vendor_error_codes_in_a_200_are_failures() {
        assert!(accepted(AlertFormat::Dingtalk, r#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
        let e = accepted(
            AlertFormat::Dingtalk,
            r#"{"errcode":310000,"errmsg":"sign not match"}"#,
        );
        assert!(e.unwrap_err().contains("310000"));
        assert!(
            accepted(
                AlertFormat::Lark,
                r#"{"code":19021,"msg":"sign match fail"}"#
            )
            .is_err()
        );
        assert!(accepted(AlertFormat::Lark, r#"{"StatusCode":0}"#).is_ok());
    }
}
