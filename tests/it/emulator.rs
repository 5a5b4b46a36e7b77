//! The emulator driven by the project's own client and by raw signed requests: every rule,
//! every fault, both signature versions, both number encodings, and requests the official SDKs
//! sent.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::common::*;
use ccc_etl::ccc::client::{TrendingRequest, sign_v1_url};
use ccc_etl::ccc::emulator::Faults;
use ccc_etl::ccc::error::{ApiError, ErrorClass};
use ccc_etl::config::SignatureVersion;
use ccc_etl::credentials::Credentials;
use ccc_etl::record::MediaType;
use chrono::{DateTime, Utc};

/// Report time: the tests' clock (signatures are checked against the system clock).
fn now_ms() -> i64 {
    crate::common::now_ms()
}

fn req(instance: &str, start: i64, end: i64) -> TrendingRequest {
    TrendingRequest {
        instance_id: instance.into(),
        media_type: MediaType::Audio,
        start_ms: start,
        end_ms: end,
    }
}

fn code_of(e: &ApiError) -> (u16, String) {
    match e {
        ApiError::Service {
            http_status, code, ..
        } => (*http_status, code.clone()),
        other => panic!("expected a service error, got {other:?}"),
    }
}

#[tokio::test]
async fn both_signature_versions_and_both_number_encodings_return_the_model_values() {
    for version in [SignatureVersion::V1, SignatureVersion::V3] {
        for (strings, legacy) in [(false, false), (true, true)] {
            let mut opts = options(&["ccc-a"]);
            opts.numbers_as_strings = strings;
            opts.legacy_ring_name = legacy;
            let model = opts.data_model();
            let emu = start(opts).await;
            let cfg = config(&emu, &["ccc-a"], version);
            let client = client(&cfg, SECRET);
            let end = (now_ms() / H - 24) * H;
            let start = end - 3 * 24 * H;
            let got = client
                .get_trending_report(&req("ccc-a", start, end))
                .await
                .expect("report");
            assert_eq!(got.attempts, 1);
            let r = got.report;
            assert_eq!(r.inbound.len(), 72, "{version:?} strings={strings}");
            assert_eq!(r.outbound.len(), 72);
            assert_eq!(r.overall.len(), 72);
            for (i, row) in r.inbound.iter().enumerate() {
                let expect = model.final_rows("ccc-a", MediaType::Audio, start + i as i64 * H);
                assert_eq!(*row, expect.inbound);
                assert_eq!(r.outbound[i], expect.outbound);
                assert_eq!(r.overall[i], expect.overall);
            }
            assert!(
                r.inbound.iter().map(|x| x.total_calls).sum::<i64>() > 0,
                "a real call center has calls"
            );
            let stats = emu.stats().await.unwrap();
            assert_eq!(stats.count("GetInstanceTrendingReport", "OK"), 1);
            assert_eq!(stats.rows_served, 216);
        }
    }
}

#[tokio::test]
async fn the_bucket_containing_an_unaligned_start_is_returned_and_none_from_the_future() {
    let emu = start(options(&["ccc-a"])).await;
    let cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    let c = client(&cfg, SECRET);
    let now = now_ms();
    let start = (now / H - 5) * H + 17 * 60_000;
    let r = c
        .get_trending_report(&req("ccc-a", start, now + 5 * H))
        .await
        .unwrap()
        .report;
    let times: Vec<i64> = r.inbound.iter().map(|x| x.stats_time).collect();
    assert_eq!(
        times.first(),
        Some(&((now / H - 5) * H)),
        "floored below StartTime"
    );
    assert_eq!(
        times.last(),
        Some(&(now / H * H)),
        "the current bucket, none after it"
    );
    assert_eq!(times.len(), 6);
}

#[tokio::test]
async fn a_wrong_secret_an_unknown_key_and_clock_skew_are_fatal_for_the_run() {
    let emu = start(options(&["ccc-a"])).await;
    for version in [SignatureVersion::V1, SignatureVersion::V3] {
        let cfg = config(&emu, &["ccc-a"], version);
        let e = client(&cfg, "wrong-secret")
            .get_trending_report(&req("ccc-a", now_ms() - H, now_ms()))
            .await
            .unwrap_err();
        assert_eq!(code_of(&e.error), (400, "SignatureDoesNotMatch".into()));
        assert_eq!(e.error.class(), ErrorClass::RunFatal);
        assert_eq!(e.attempts, 1, "a fatal error is not retried");
        assert!(!e.to_string().contains("wrong-secret"));
    }
    let cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    let stranger = ccc_etl::ccc::client::CccClient::new(
        &cfg.source,
        Credentials::new("nobody", SECRET, None),
        Arc::new(ccc_etl::ccc::ratelimit::AdaptivePacer::new(100.0)),
    )
    .unwrap();
    let e = stranger
        .get_trending_report(&req("ccc-a", now_ms() - H, now_ms()))
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&e.error),
        (404, "InvalidAccessKeyId.NotFound".into())
    );

    // A client 20 minutes fast: sign by hand with a skewed timestamp.
    let skewed = (crate::common::wall_clock() + chrono::Duration::minutes(20))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let url = sign_v1_url(
        &reqwest::Url::parse(&emu.endpoint()).unwrap(),
        "GET",
        &req("ccc-a", now_ms() - H, now_ms()).params(),
        &Credentials::new(KEY_ID, SECRET, None),
        "nonce-skew",
        &skewed,
    );
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["Code"], "InvalidTimeStamp.Expired");
}

#[tokio::test]
async fn a_reused_nonce_is_refused_and_the_client_always_sends_a_fresh_one() {
    let emu = start(options(&["ccc-a"])).await;
    let ts = crate::common::wall_clock()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let url = sign_v1_url(
        &reqwest::Url::parse(&emu.endpoint()).unwrap(),
        "GET",
        &req("ccc-a", now_ms() - H, now_ms()).params(),
        &Credentials::new(KEY_ID, SECRET, None),
        "the-same-nonce",
        &ts,
    );
    assert_eq!(
        reqwest::get(url.clone()).await.unwrap().status().as_u16(),
        200
    );
    let second = reqwest::get(url).await.unwrap();
    assert_eq!(second.status().as_u16(), 400);
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["Code"], "SignatureNonceUsed");
    let cfg = config(&emu, &["ccc-a"], SignatureVersion::V3);
    let c = client(&cfg, SECRET);
    for _ in 0..5 {
        c.get_trending_report(&req("ccc-a", now_ms() - H, now_ms()))
            .await
            .expect("fresh nonce each time");
    }
}

#[tokio::test]
async fn the_api_rules_are_enforced_with_their_codes() {
    let emu = start(options(&["ccc-a"])).await;
    let cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    let c = client(&cfg, SECRET);
    let now = now_ms();
    let cases: Vec<(TrendingRequest, u16, &str)> = vec![
        (req("", now - H, now), 400, "Parameter.Blank"),
        (
            req("ccc-unknown", now - H, now),
            404,
            "NotExists.InstanceId",
        ),
        (
            req("ccc-a", now - 8 * 24 * H, now),
            400,
            "Parameter.Invalid",
        ),
        (
            req("ccc-a", now - 181 * 24 * H, now - 180 * 24 * H + H),
            400,
            "Parameter.Invalid",
        ),
        (req("ccc-a", now, now - H), 400, "Parameter.Invalid"),
    ];
    for (r, status, code) in cases {
        let e = c.get_trending_report(&r).await.unwrap_err();
        assert_eq!(code_of(&e.error), (status, code.to_string()), "{r:?}");
        assert_eq!(e.error.class(), ErrorClass::WindowFatal);
        assert_eq!(e.attempts, 1);
    }
    // exactly 7 days is accepted
    c.get_trending_report(&req("ccc-a", now - 7 * 24 * H, now))
        .await
        .expect("7 days is allowed");
}

/// Sends a V1-signed request with custom parameters, as GET query or POST form.
async fn raw_v1(
    endpoint: &str,
    method: &str,
    params: &[(&str, &str)],
    form: bool,
) -> (u16, serde_json::Value) {
    let mut all: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let ts = crate::common::wall_clock()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let nonce = uuid::Uuid::new_v4().to_string();
    all.extend([
        ("Format", "JSON".to_string()),
        ("AccessKeyId", KEY_ID.to_string()),
        ("SignatureMethod", "HMAC-SHA1".to_string()),
        ("SignatureVersion", "1.0".to_string()),
        ("SignatureNonce", nonce),
        ("Timestamp", ts),
    ]);
    let sts =
        ccc_etl::ccc::sign::v1_string_to_sign(method, all.iter().map(|(k, v)| (*k, v.as_str())));
    all.push(("Signature", ccc_etl::ccc::sign::v1_signature(SECRET, &sts)));
    let body = ccc_etl::ccc::sign::canonical_query(all.iter().map(|(k, v)| (*k, v.as_str())));
    let http = reqwest::Client::new();
    let resp = if form {
        http.post(format!("{endpoint}/"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
    } else if method == "POST" {
        http.post(format!("{endpoint}/?{body}")).send().await
    } else {
        http.get(format!("{endpoint}/?{body}")).send().await
    }
    .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn get_post_query_and_post_form_are_all_accepted_and_unknown_actions_refused() {
    let emu = start(options(&["ccc-a"])).await;
    let ep = emu.endpoint();
    let (s, e) = (now_ms() - 2 * H, now_ms());
    let (s, e) = (s.to_string(), e.to_string());
    let p = [
        ("Action", "GetInstanceTrendingReport"),
        ("Version", "2020-07-01"),
        ("InstanceId", "ccc-a"),
        ("StartTime", s.as_str()),
        ("EndTime", e.as_str()),
    ];
    for (method, form) in [("GET", false), ("POST", false), ("POST", true)] {
        let (status, body) = raw_v1(&ep, method, &p, form).await;
        assert_eq!(status, 200, "{method} form={form}: {body}");
        assert_eq!(body["Code"], "OK");
        assert!(body["Data"]["Inbound"].as_array().unwrap().len() >= 2);
    }
    let mut bad_action = p;
    bad_action[0] = ("Action", "DescribeEverything");
    let (status, body) = raw_v1(&ep, "GET", &bad_action, false).await;
    assert_eq!(
        (status, body["Code"].as_str().unwrap()),
        (404, "InvalidAction.NotFound")
    );
    let mut bad_version = p;
    bad_version[1] = ("Version", "2017-07-05");
    let (status, body) = raw_v1(&ep, "GET", &bad_version, false).await;
    assert_eq!(
        (status, body["Code"].as_str().unwrap()),
        (400, "InvalidVersion")
    );
    let stats = emu.stats().await.unwrap();
    assert_eq!(stats.count("GetInstanceTrendingReport", "OK"), 3);
    assert_eq!(
        stats.count("DescribeEverything", "InvalidAction.NotFound"),
        1
    );
}

#[tokio::test]
async fn requests_sent_by_the_official_sdks_are_accepted() {
    // Captured from alibabacloud-ccc20200701 2.35 (V3 default, and V1 via signature_algorithm
    // "v2") and aliyun-python-sdk-core 2.16 (V1 POST with RegionId and an empty SignatureType),
    // signed with AccessKeyId "emulator-key" and secret "emulator-secret".
    let captured: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../fixtures/sdk_requests.json")).unwrap();
    let sent_at: DateTime<Utc> = "2026-11-26T22:21:07Z".parse().unwrap();
    let mut opts = ccc_etl::ccc::emulator::EmulatorOptions::new(
        vec!["ccc-test".into()],
        "emulator-key",
        "emulator-secret",
    );
    // Serve as if it were the moment the SDKs sent them (they asked for 2026-11-20).
    opts.clock = Arc::new(move || sent_at);
    opts.auth_clock = Arc::new(move || sent_at);
    let emu = start(opts).await;
    let http = reqwest::Client::new();
    for (i, c) in captured.iter().enumerate() {
        let mut rb = http.request(
            c["method"].as_str().unwrap().parse().unwrap(),
            format!("{}{}", emu.endpoint(), c["path"].as_str().unwrap()),
        );
        for h in c["headers"].as_array().unwrap() {
            let (k, v) = (h[0].as_str().unwrap(), h[1].as_str().unwrap());
            if !k.eq_ignore_ascii_case("content-length") {
                rb = rb.header(k, v);
            }
        }
        let resp = rb
            .body(c["body"].as_str().unwrap().to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "captured request {i}: {body}");
        assert_eq!(
            body["Data"]["Inbound"].as_array().unwrap().len(),
            24,
            "request {i}"
        );
    }
    // Tampering with any signed part breaks the signature.
    let c = &captured[0];
    let path = c["path"].as_str().unwrap().replace("ccc-test", "ccc-tesu");
    let mut rb = http.post(format!("{}{}", emu.endpoint(), path));
    for h in c["headers"].as_array().unwrap() {
        let (k, v) = (h[0].as_str().unwrap(), h[1].as_str().unwrap());
        if !k.eq_ignore_ascii_case("content-length") {
            rb = rb.header(k, v);
        }
    }
    let body: serde_json::Value = rb.send().await.unwrap().json().await.unwrap();
    assert_eq!(body["Code"], "SignatureDoesNotMatch");
}

#[tokio::test]
async fn sts_tokens_are_required_when_the_key_is_temporary_and_sent_by_both_versions() {
    let mut opts = options(&["ccc-a"]);
    opts.keys.get_mut(KEY_ID).unwrap().security_token = Some("sts-token".into());
    let emu = start(opts).await;
    for version in [SignatureVersion::V1, SignatureVersion::V3] {
        let cfg = config(&emu, &["ccc-a"], version);
        let pacer = Arc::new(ccc_etl::ccc::ratelimit::AdaptivePacer::new(100.0));
        let with = ccc_etl::ccc::client::CccClient::new(
            &cfg.source,
            Credentials::new(KEY_ID, SECRET, Some("sts-token")),
            pacer.clone(),
        )
        .unwrap();
        with.get_trending_report(&req("ccc-a", now_ms() - H, now_ms()))
            .await
            .expect("token accepted");
        let without = client(&cfg, SECRET);
        let e = without
            .get_trending_report(&req("ccc-a", now_ms() - H, now_ms()))
            .await
            .unwrap_err();
        assert!(
            code_of(&e.error).1.starts_with("InvalidSecurityToken"),
            "{version:?}"
        );
    }
}

fn faulty(faults: Faults) -> ccc_etl::ccc::emulator::EmulatorOptions {
    let mut o = options(&["ccc-a"]);
    o.faults = faults;
    o
}

#[tokio::test]
async fn server_errors_truncated_and_non_json_bodies_are_retried_until_they_succeed() {
    for (name, faults) in [
        (
            "503",
            Faults {
                unavailable: 0.5,
                seed: 3,
                ..Default::default()
            },
        ),
        (
            "500",
            Faults {
                internal_error: 0.5,
                seed: 4,
                ..Default::default()
            },
        ),
        (
            "truncated",
            Faults {
                truncated: 0.5,
                seed: 5,
                ..Default::default()
            },
        ),
        (
            "non-json",
            Faults {
                non_json: 0.5,
                seed: 6,
                ..Default::default()
            },
        ),
    ] {
        let emu = start(faulty(faults)).await;
        let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
        cfg.source.max_attempts = 30;
        let c = client(&cfg, SECRET);
        let mut attempts = 0;
        let hour = now_ms() / H * H;
        for i in 0..10 {
            let got = c
                .get_trending_report(&req("ccc-a", hour - (i + 2) * H, hour - (i + 1) * H))
                .await
                .expect(name);
            attempts += got.attempts;
            assert_eq!(got.report.inbound.len(), 1, "{name}");
        }
        let stats = emu.stats().await.unwrap();
        let ok = stats.count("GetInstanceTrendingReport", "OK");
        assert_eq!(ok, 10, "{name}");
        assert_eq!(
            stats.requests as u32, attempts,
            "{name}: every attempt reached the server"
        );
        assert!(
            attempts > 10,
            "{name}: with half the answers failing some attempts must be retries"
        );
        let by_code: BTreeMap<String, u64> = c.stats().by_code();
        assert_eq!(by_code.get("OK"), Some(&10));
    }
}

#[tokio::test]
async fn a_window_that_keeps_failing_gives_up_after_max_attempts() {
    let emu = start(faulty(Faults {
        unavailable: 1.0,
        ..Default::default()
    }))
    .await;
    let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V3);
    cfg.source.max_attempts = 4;
    let c = client(&cfg, SECRET);
    let e = c
        .get_trending_report(&req("ccc-a", now_ms() - H, now_ms()))
        .await
        .unwrap_err();
    assert_eq!(e.attempts, 4);
    assert_eq!(code_of(&e.error), (503, "ServiceUnavailable".into()));
    assert_eq!(emu.stats().await.unwrap().requests, 4);
    assert!(e.to_string().contains("RequestId"), "{e}");
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let emu = start(faulty(Faults {
        slow: 0.5,
        slow_ms: 3_000,
        seed: 11,
        ..Default::default()
    }))
    .await;
    let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    cfg.source.timeout_secs = 1;
    cfg.source.max_attempts = 20;
    let c = client(&cfg, SECRET);
    let mut attempts = 0;
    for i in 0..6 {
        attempts += c
            .get_trending_report(&req(
                "ccc-a",
                now_ms() - (i + 2) * H,
                now_ms() - (i + 1) * H,
            ))
            .await
            .expect("eventually fast")
            .attempts;
    }
    assert!(attempts > 6);
    assert_eq!(
        c.stats().by_code().get("Timeout").copied().unwrap_or(0) as u32,
        attempts - 6
    );
}

#[tokio::test]
async fn throttling_is_answered_with_http_400_and_the_client_slows_down_and_completes() {
    let emu = start(faulty(Faults {
        qps_limit: Some(10.0),
        ..Default::default()
    }))
    .await;
    let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    cfg.source.max_qps = 40.0;
    cfg.source.concurrency = 4;
    cfg.source.max_attempts = 20;
    let c = Arc::new(client(&cfg, SECRET));
    let mut tasks = vec![];
    for i in 0..30 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.get_trending_report(&req(
                "ccc-a",
                now_ms() - (i + 2) * H,
                now_ms() - (i + 1) * H,
            ))
            .await
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("every request completes despite throttling");
    }
    let stats = emu.stats().await.unwrap();
    assert_eq!(stats.count("GetInstanceTrendingReport", "OK"), 30);
    assert!(
        stats.throttled > 0,
        "a 40 qps client against a 10 qps limit gets throttled"
    );
    assert_eq!(
        stats.throttled,
        c.stats()
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        c.limiter().current_qps() < 40.0,
        "the client lowered its rate"
    );
}

#[tokio::test]
async fn requests_are_spaced_by_max_qps_on_the_wire() {
    let emu = start(options(&["ccc-a"])).await;
    let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    cfg.source.max_qps = 20.0;
    cfg.source.concurrency = 4;
    let c = Arc::new(client(&cfg, SECRET));
    let hour = now_ms() / H * H;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut r = req("ccc-a", hour - (i + 2) * H, hour - (i + 1) * H);
                r.media_type =
                    [MediaType::Audio, MediaType::Chat, MediaType::Video][i as usize % 3];
                c.get_trending_report(&r).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().report.inbound.len(), 1);
    }
    let mut arrivals: Vec<i64> = emu
        .stats()
        .await
        .unwrap()
        .calls
        .iter()
        .map(|c| c.received_ms)
        .collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 12);
    // 20 qps = one request every 50 ms; the pacer never sends faster (a slow machine only adds).
    let span = arrivals[11] - arrivals[0];
    assert!(
        span >= 11 * 50 - 15,
        "12 requests at 20 qps span at least 550 ms, got {span}"
    );
    for w in arrivals.windows(2) {
        assert!(w[1] - w[0] >= 35, "gap {} ms", w[1] - w[0]);
    }
    let media: BTreeMap<String, usize> =
        emu.stats()
            .await
            .unwrap()
            .calls
            .iter()
            .fold(BTreeMap::new(), |mut m, c| {
                *m.entry(c.media_type.clone()).or_default() += 1;
                m
            });
    assert_eq!(
        media.values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4],
        "Audio, Chat and Video all served"
    );
}

#[tokio::test]
async fn x_acs_retry_after_is_honoured_before_retrying() {
    let emu = start(faulty(Faults {
        qps_limit: Some(1.0),
        retry_after_ms: Some(400),
        ..Default::default()
    }))
    .await;
    let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    cfg.source.max_attempts = 10;
    let c = client(&cfg, SECRET);
    let hour = now_ms() / H * H;
    // The first request takes the only token; the second is throttled, then waits >= 400 ms.
    c.get_trending_report(&req("ccc-a", hour - 2 * H, hour - H))
        .await
        .unwrap();
    let got = c
        .get_trending_report(&req("ccc-a", hour - 3 * H, hour - 2 * H))
        .await
        .unwrap();
    assert!(got.attempts >= 2);
    let calls = emu.stats().await.unwrap().calls;
    let i = calls
        .iter()
        .position(|c| c.code == "Throttling.User")
        .expect("one was throttled");
    let (throttled, next) = (&calls[i], &calls[i + 1]);
    assert!(
        next.received_ms - throttled.received_ms >= 400,
        "retried after {} ms",
        next.received_ms - throttled.received_ms
    );
}
