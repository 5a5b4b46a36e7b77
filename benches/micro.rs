//! Microbenchmarks: signing, response parsing, planning 10,000 instances, each next to a
//! reference measured in the same run (the machine is shared and noisy: compare ratios):
//! - signing against one bare HMAC of the same string to sign,
//! - parsing against `serde_json::Value` parsing the same bytes,
//! - planning against merely allocating the same number of window keys.

use std::hint::black_box;

use ccc_etl::ccc::sign::{V3Canonical, v1_signature, v1_string_to_sign};
use ccc_etl::ccc::wire::parse_body;
use ccc_etl::plan::{PlanRequest, plan};
use ccc_etl::record::MediaType;
use criterion::{Criterion, criterion_group, criterion_main};

fn signing(c: &mut Criterion) {
    let params = [
        ("AccessKeyId", "testid"),
        ("Action", "GetInstanceTrendingReport"),
        ("EndTime", "1795190400000"),
        ("Format", "JSON"),
        ("InstanceId", "ccc-test"),
        ("MediaType", "Audio"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
        ("SignatureVersion", "1.0"),
        ("StartTime", "1795104000000"),
        ("Timestamp", "2026-11-26T12:46:24Z"),
        ("Version", "2020-07-01"),
    ];
    c.bench_function("sign_v1", |b| {
        b.iter(|| v1_signature("testsecret", &v1_string_to_sign("GET", black_box(params))))
    });
    let to_sign = v1_string_to_sign("GET", params);
    c.bench_function("reference_bare_hmac_sha1", |b| {
        use hmac::{Hmac, Mac};
        b.iter(|| {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"testsecret&").unwrap();
            m.update(black_box(to_sign.as_bytes()));
            m.finalize().into_bytes()
        })
    });
    let req = V3Canonical {
        method: "POST",
        path: "/",
        query: params[2..6].to_vec(),
        headers: vec![
            ("host", "ccc.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "GetInstanceTrendingReport"),
            (
                "x-acs-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            ("x-acs-date", "2026-11-26T12:46:24Z"),
            ("x-acs-signature-nonce", "3ee8c1b8"),
            ("x-acs-version", "2020-07-01"),
        ],
        hashed_payload: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    };
    c.bench_function("sign_v3", |b| {
        b.iter(|| black_box(&req).signature("testsecret"))
    });
}

fn parsing(c: &mut Criterion) {
    // A full 7-day window: 168 hourly buckets in each of the three arrays.
    let row = |t: i64| {
        format!(
            r#"{{"StatsTime":{t},"TotalCalls":120,"CallsHandled":100,"CallsQueued":110,"CallsAbandonedInIVR":5,"CallsAbandonedInQueue":10,"CallsAbandonedInRing":5}}"#
        )
    };
    let inbound: Vec<String> = (0..168)
        .map(|h| row(1_795_104_000_000 + h * 3_600_000))
        .collect();
    let outbound: Vec<String> = (0..168i64)
        .map(|h| {
            format!(
                r#"{{"StatsTime":{},"TotalCalls":40,"CallsAnswered":25}}"#,
                1_795_104_000_000 + h * 3_600_000
            )
        })
        .collect();
    let overall: Vec<String> = (0..168i64)
        .map(|h| {
            format!(
                r#"{{"StatsTime":{},"MaxLoggedInAgents":12}}"#,
                1_795_104_000_000 + h * 3_600_000
            )
        })
        .collect();
    let body = format!(
        r#"{{"RequestId":"r","Code":"OK","HttpStatusCode":200,"Data":{{"Inbound":[{}],"Outbound":[{}],"Overall":[{}]}}}}"#,
        inbound.join(","),
        outbound.join(","),
        overall.join(",")
    );
    let strings = body.replace(":120", ":\"120\"").replace(":100", ":\"100\"");
    c.bench_function("parse_7_day_window", |b| {
        b.iter(|| parse_body(black_box(body.as_bytes())).unwrap())
    });
    c.bench_function("parse_7_day_window_strings", |b| {
        b.iter(|| parse_body(black_box(strings.as_bytes())).unwrap())
    });
    c.bench_function("reference_serde_json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body.as_bytes())).unwrap())
    });
}

fn planning(c: &mut Criterion) {
    let instances: Vec<String> = (0..10_000).map(|i| format!("ccc-{i:05}")).collect();
    let now = 1_795_190_400_000;
    let req = PlanRequest {
        instances,
        media_types: vec![MediaType::Audio],
        from_ms: now - 180 * 86_400_000,
        to_ms: now,
        now_ms: now,
        timezone: chrono_tz::Asia::Shanghai,
        horizon_margin_ms: 3_600_000,
    };
    c.bench_function("plan_180_days_10000_instances", |b| {
        b.iter(|| plan(black_box(&req)).windows.len())
    });
    let n = plan(&req).windows.len();
    c.bench_function("reference_allocate_as_many_window_keys", |b| {
        b.iter(|| {
            (0..n)
                .map(|i| ccc_etl::record::WindowKey {
                    instance_id: req.instances[i % req.instances.len()].clone(),
                    media_type: MediaType::Audio,
                    start_ms: i as i64,
                    end_ms: i as i64 + 1,
                })
                .collect::<Vec<_>>()
                .len()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = signing, parsing, planning
}
criterion_main!(benches);
