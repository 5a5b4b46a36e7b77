//! `[alerts]`: a real `ccc-etl nightly` tells a local receiver that checks each vendor's
//! signature the way the vendor documents it (DingTalk: `sign` in the URL over
//! "{timestamp_ms}\n{secret}" keyed by the secret; Lark: `sign` in the body, HMAC of nothing
//! keyed by "{timestamp_s}\n{secret}"; `generic`: an HMAC of the body in a header; Slack:
//! unsigned), one message per event per run, new drift only once, retries, and a receiver that
//! is down or refuses never changes the run's exit code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::common::{self, ConfigToml, output_text};
use ccc_etl::ccc::emulator::{DriftOptions, Faults};

const SECRET: &str = "SEC-robot-secret-42";
const TOKEN: &str = "robot-token-do-not-print";

fn hmac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// A message the receiver took: the vendor path, the text, and whether its signature checked.
#[derive(Debug, Clone)]
struct Got {
    vendor: String,
    text: String,
    signed_ok: bool,
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Got>>,
    /// Requests to refuse with HTTP 500 before accepting, per vendor.
    fail_first: Mutex<HashMap<String, usize>>,
}

type Shared = Arc<Receiver>;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Checks the signature as the vendor documents it; returns the message text.
fn check(
    vendor: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> (bool, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let now = common::wall_clock().timestamp_millis();
    match vendor {
        "dingtalk" => {
            let ts = q.get("timestamp").cloned().unwrap_or_default();
            let fresh = ts.parse::<i64>().is_ok_and(|t| (now - t).abs() < 3_600_000);
            let want = b64(&hmac256(
                SECRET.as_bytes(),
                format!("{ts}\n{SECRET}").as_bytes(),
            ));
            let ok = fresh
                && q.get("sign") == Some(&want)
                && q.get("access_token").map(String::as_str) == Some(TOKEN);
            (
                ok,
                json["markdown"]["text"].as_str().unwrap_or("").to_string(),
            )
        }
        "lark" => {
            let ts = json["timestamp"].as_str().unwrap_or("").to_string();
            let fresh = ts
                .parse::<i64>()
                .is_ok_and(|t| (now / 1000 - t).abs() < 3600);
            let want = b64(&hmac256(format!("{ts}\n{SECRET}").as_bytes(), b""));
            let ok = fresh && json["sign"].as_str() == Some(want.as_str());
            (
                ok,
                json["content"]["text"].as_str().unwrap_or("").to_string(),
            )
        }
        "generic" => {
            let want = format!("sha256={}", hex::encode(hmac256(SECRET.as_bytes(), body)));
            let got = headers
                .get("x-ccc-etl-signature")
                .and_then(|v| v.to_str().ok());
            let text = ["event", "title", "text"]
                .map(|k| json[k].as_str().unwrap_or("").to_string())
                .join(" ");
            (got == Some(want.as_str()), text)
        }
        _ => (true, json["text"].as_str().unwrap_or("").to_string()),
    }
}

async fn take(
    vendor: &'static str,
    State(r): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    {
        let mut fail = r.fail_first.lock().unwrap();
        if let Some(n) = fail.get_mut(vendor).filter(|n| **n > 0) {
            *n -= 1;
            return (StatusCode::INTERNAL_SERVER_ERROR, "try again".into());
        }
    }
    let (signed_ok, text) = check(vendor, &q, &headers, &body);
    r.got.lock().unwrap().push(Got {
        vendor: vendor.into(),
        text,
        signed_ok,
    });
    let answer = match (vendor, signed_ok) {
        ("dingtalk", true) => r#"{"errcode":0,"errmsg":"ok"}"#,
        ("dingtalk", false) => r#"{"errcode":310000,"errmsg":"sign not match"}"#,
        ("lark", true) => r#"{"code":0,"msg":"success"}"#,
        ("lark", false) => {
            r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#
        }
        (_, true) => "ok",
        (_, false) => return (StatusCode::UNAUTHORIZED, "bad signature".into()),
    };
    (StatusCode::OK, answer.into())
}

/// The receiver on a free loopback port, and its origin.
async fn receiver() -> (Shared, String) {
    let shared: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/dingtalk", post(|s, q, h, b| take("dingtalk", s, q, h, b)))
        .route("/lark", post(|s, q, h, b| take("lark", s, q, h, b)))
        .route("/slack", post(|s, q, h, b| take("slack", s, q, h, b)))
        .route("/generic", post(|s, q, h, b| take("generic", s, q, h, b)))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (shared, origin)
}

/// A configuration with the emulator, a Parquet root and one alert target of `format`.
fn config(dir: &std::path::Path, endpoint: &str, format: &str) -> std::path::PathBuf {
    let mut target = toml::Table::new();
    target.insert("format".into(), format.into());
    target.insert("url_env".into(), "CCC_ETL_TEST_WEBHOOK".into());
    if format != "slack" {
        target.insert("secret_env".into(), "CCC_ETL_TEST_WEBHOOK_SECRET".into());
    }
    let cfg = dir.join("pipeline.toml");
    ConfigToml::new(endpoint, &["ccc-a", "ccc-b"])
        .set("source", "max_qps", 200)
        .set("source", "max_attempts", 2)
        .set("source", "backoff_base_ms", 1)
        .set("alerts", "backoff_base_ms", 10)
        .set("alerts", "targets", toml::Value::Array(vec![target.into()]))
        .parquet(dir.join("wh").display())
        .write(&cfg);
    cfg
}

async fn nightly(cfg: &std::path::Path, webhook: &str) -> std::process::Output {
    common::ccc_etl_at(cfg, None)
        .arg("nightly")
        .env("CCC_ETL_TEST_WEBHOOK", webhook)
        .env("CCC_ETL_TEST_WEBHOOK_SECRET", SECRET)
        .output()
        .await
        .unwrap()
}

/// `ccc-etl check --send-test-alert` with the webhook and signing secret given.
async fn send_test_alert(
    cfg: &std::path::Path,
    webhook: &str,
    secret: &str,
) -> std::process::Output {
    common::ccc_etl_at(cfg, None)
        .args(["check", "--send-test-alert"])
        .env("CCC_ETL_TEST_WEBHOOK", webhook)
        .env("CCC_ETL_TEST_WEBHOOK_SECRET", secret)
        .output()
        .await
        .unwrap()
}

/// A first nightly run where one instance fails every request (exit 3, its whole horizon
/// uncovered: the aging alert) and the API sends a new field: three messages, each signed and
/// checked, one per event. A second run meets the same field again: no drift message.
async fn one_message_per_event_signed_for(format: &'static str) {
    let mut opts = common::options(&["ccc-a", "ccc-b"]);
    opts.faults = Faults {
        failing_instances: vec!["ccc-b".into()],
        ..Faults::default()
    };
    opts.drift = DriftOptions {
        add_fields: vec!["Inbound.CallsOverflowed".into()],
        ..DriftOptions::default()
    };
    let emu = common::start(opts).await;
    let (rx, origin) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu.endpoint(), format);
    let webhook = format!("{origin}/{format}?access_token={TOKEN}");
    let out = nightly(&cfg, &webhook).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains(SECRET), "{text}");
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:#?}\n{text}");
    assert!(
        got.iter().all(|g| g.vendor == format && g.signed_ok),
        "{got:#?}"
    );
    for needle in [
        "failed windows (exit 3)",
        "180-day horizon",
        "new field Inbound.CallsOverflowed",
    ] {
        let n = got.iter().filter(|g| g.text.contains(needle)).count();
        assert_eq!(n, 1, "{needle}: {got:#?}");
    }
    let out = nightly(&cfg, &webhook).await;
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        5,
        "the second run: no drift message again: {got:#?}"
    );
    assert!(
        got[3..].iter().all(|g| !g.text.contains("new field")),
        "{got:#?}"
    );
}

#[tokio::test]
async fn dingtalk_messages_are_signed_in_the_url_one_per_event() {
    one_message_per_event_signed_for("dingtalk").await;
}

#[tokio::test]
async fn lark_messages_are_signed_in_the_body_one_per_event() {
    one_message_per_event_signed_for("lark").await;
}

#[tokio::test]
async fn slack_messages_one_per_event() {
    one_message_per_event_signed_for("slack").await;
}

#[tokio::test]
async fn generic_messages_carry_an_hmac_of_the_body_one_per_event() {
    one_message_per_event_signed_for("generic").await;
}

#[tokio::test]
async fn a_receiver_that_fails_refuses_or_is_down_never_changes_the_exit_code() {
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let (rx, origin) = receiver().await;
    // The generic receiver answers its next two requests with HTTP 500 (used below).
    rx.fail_first.lock().unwrap().insert("generic".into(), 2);
    let dir = tempfile::tempdir().unwrap();
    // A successful first nightly run over an empty root: the aging alert only.
    let cfg = config(dir.path(), &emu.endpoint(), "generic");
    let out = nightly(&cfg, &format!("{origin}/generic")).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let got = rx.got.lock().unwrap().clone();
    assert!(
        got.is_empty(),
        "nothing ages out after a full nightly: {got:#?}"
    );

    // A wrong signing secret: DingTalk answers 200 with an error code, and
    // `check --send-test-alert` fails naming the target and the code.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu.endpoint(), "dingtalk");
    let webhook = format!("{origin}/dingtalk?access_token={TOKEN}");
    let out = send_test_alert(&cfg, &webhook, "not-the-secret").await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  alert dingtalk (CCC_ETL_TEST_WEBHOOK)"),
        "{text}"
    );
    assert!(text.contains("code 310000 (sign not match)"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");

    // The right secret: the test message arrives, signed; exit 0.
    let out = send_test_alert(&cfg, &webhook, SECRET).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let got = rx.got.lock().unwrap().clone();
    assert!(
        got.last()
            .is_some_and(|g| g.signed_ok && g.text.contains("a test message")),
        "{got:#?}"
    );

    // A receiver that is down: the failed run still exits 3, with a warning naming the variable.
    let mut opts = common::options(&["ccc-a", "ccc-b"]);
    opts.faults.failing_instances = vec!["ccc-b".into()];
    let failing = common::start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &failing.endpoint(), "slack");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = nightly(&cfg, &format!("http://{closed}/slack?token={TOKEN}")).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("alert not sent"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");

    // The retried generic message: delivered on the third attempt.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &failing.endpoint(), "generic");
    let before = rx.got.lock().unwrap().len();
    let out = nightly(&cfg, &format!("{origin}/generic")).await;
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(
        got.len() - before,
        2,
        "run failed and aging, once each: {got:#?}"
    );
    assert_eq!(
        rx.fail_first.lock().unwrap()["generic"],
        0,
        "the two 500s were retried"
    );

    // A receiver that refuses the signature with 401: asked once, not retried (a 4xx stays
    // one), and the failure says what it answered.
    let generic = config(dir.path(), &emu.endpoint(), "generic");
    let before = rx.got.lock().unwrap().len();
    let out = send_test_alert(&generic, &format!("{origin}/generic"), "not-the-secret").await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("after 1 attempt(s): HTTP 401"), "{text}");
    assert_eq!(
        rx.got.lock().unwrap().len() - before,
        1,
        "one request: {text}"
    );
}

#[tokio::test]
async fn a_webhook_written_in_the_configuration_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = toml::Table::new();
    target.insert("format".into(), "slack".into());
    target.insert(
        "url_env".into(),
        format!("https://hooks.slack.com/services/{TOKEN}").into(),
    );
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new("http://127.0.0.1:9", &["ccc-a"])
        .set("alerts", "targets", toml::Value::Array(vec![target.into()]))
        .parquet(dir.path().join("wh").display())
        .write(&cfg);
    let out = common::ccc_etl_cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .await
        .unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("must name an environment variable"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
}
