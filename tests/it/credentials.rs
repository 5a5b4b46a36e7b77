//! Keyless credentials end to end: each provider of Alibaba Cloud's default chain signs a real
//! `ccc-etl backfill` process against the emulator, which issues short-lived STS credentials and
//! refuses them once expired; the chain's order; renewal during a run longer than the
//! credentials' lifetime; partly configured providers; instances in two regions; an `oss://`
//! root written with the chain's credentials and no AccessKey anywhere.

use crate::common;
use crate::common::{ConfigToml, config};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::{KEY_ID, SECRET, metric, output_text};
use ccc_etl::ccc::emulator::{EmulatorOptions, EmulatorStats, RunningEmulator, StsOptions};

/// A `ccc-etl` process with nothing from the test's environment but what `env` gives: no
/// AccessKey, a private HOME, no metadata service unless asked.
async fn run(config: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = crate::common::ccc_etl_cmd();
    cmd.env_clear()
        .envs(common::clock_env())
        .args(["--config", config.to_str().unwrap()])
        .args(common::args(args))
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    emu: RunningEmulator,
    config: PathBuf,
}

impl Setup {
    /// An emulator issuing credentials that live `lifetime`, and a config for a local Parquet
    /// root over `instances`.
    async fn new(instances: &[&str], lifetime: Duration, max_qps: u32) -> Setup {
        let mut opts = common::options(instances);
        opts.sts = StsOptions::new(lifetime);
        Self::with(opts, instances, max_qps).await
    }

    async fn with(opts: EmulatorOptions, instances: &[&str], max_qps: u32) -> Setup {
        let emu = common::start(opts).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pipeline.toml");
        ConfigToml::new(&emu.endpoint(), instances)
            .set("source", "max_qps", max_qps)
            .parquet(dir.path().join("wh").display())
            .write(&config);
        Setup { dir, emu, config }
    }

    fn home(&self) -> String {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        home.to_str().unwrap().to_string()
    }

    /// HOME, and no metadata service: what every provider's test starts from.
    fn base_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HOME", self.home()),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true".into()),
        ]
    }

    fn metrics(&self) -> PathBuf {
        self.dir.path().join("m.prom")
    }

    async fn backfill(&self, from: &str, to: &str, env: &[(&str, String)]) -> Output {
        let metrics = self.metrics();
        run(
            &self.config,
            &[
                "backfill",
                "--from",
                from,
                "--to",
                to,
                "--metrics-file",
                metrics.to_str().unwrap(),
            ],
            env,
        )
        .await
    }

    async fn stats(&self) -> EmulatorStats {
        self.emu.stats().await.unwrap()
    }

    fn token_file(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join("oidc-token");
        std::fs::write(&path, token).unwrap();
        path
    }

    fn oidc_env(&self, token_file: &Path) -> Vec<(&'static str, String)> {
        let sts = StsOptions::new(Duration::from_secs(1));
        let mut env = self.base_env();
        env.extend([
            ("ALIBABA_CLOUD_ROLE_ARN", sts.role_arn),
            ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", sts.oidc_provider_arn),
            (
                "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
                token_file.to_str().unwrap().into(),
            ),
            ("ALIBABA_CLOUD_STS_ENDPOINT", self.emu.endpoint()),
        ]);
        env
    }
}

/// Exit 0, every window committed, nothing failed, and the summary names the provider.
fn assert_completed(setup: &Setup, out: &Output, provider: &str) {
    let t = output_text(out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains(&format!("credentials: {provider}")), "{t}");
    let m = setup.metrics();
    assert!(
        metric(
            &std::fs::read_to_string(&m).unwrap(),
            "ccc_etl_windows{command=\"backfill\",status=\"ok\"}"
        ) >= 1.0
    );
    let text = std::fs::read_to_string(&m).unwrap();
    assert!(
        !text.contains("status=\"failed\"} 1") && !text.contains("InvalidSecurityToken"),
        "{text}"
    );
}

fn ok(stats: &EmulatorStats, action: &str) -> u64 {
    stats.count(action, "OK")
}

#[tokio::test]
async fn an_accesskey_in_the_environment_signs_and_wins_over_oidc() {
    let s = Setup::new(&["ccc-a"], Duration::from_secs(3600), 50).await;
    let token = s.token_file("oidc-token-one");
    let mut env = s.oidc_env(&token);
    env.extend([
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID.into()),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET.into()),
    ]);
    let out = s.backfill("2026-11-20", "2026-11-22", &env).await;
    assert_completed(&s, &out, "environment (ALIBABA_CLOUD_ACCESS_KEY_ID)");
    let stats = s.stats().await;
    assert_eq!(
        ok(&stats, "AssumeRoleWithOIDC"),
        0,
        "the environment comes first"
    );
    assert!(ok(&stats, "GetInstanceTrendingReport") >= 1);
}

#[tokio::test]
async fn oidc_credentials_are_renewed_once_for_all_requests_and_the_rotated_token_is_read() {
    // Credentials live 3 s; the run takes several seconds (27 windows at 5 requests per second,
    // 4 in flight), so they are renewed during it.
    let s = Setup::new(&["ccc-a", "ccc-b", "ccc-c"], Duration::from_secs(3), 5).await;
    let token = s.token_file("oidc-token-one");
    let env = s.oidc_env(&token);
    let metrics = s.metrics();
    let config = s.config.clone();
    let child = tokio::spawn(async move {
        run(
            &config,
            &[
                "-vv",
                "backfill",
                "--from",
                "2026-09-01",
                "--to",
                "2026-10-31",
                "--metrics-file",
                metrics.to_str().unwrap(),
            ],
            &env,
        )
        .await
    });
    // The platform rotates the projected token while the job runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ok(&s.stats().await, "AssumeRoleWithOIDC") == 0 {
        assert!(std::time::Instant::now() < deadline, "no STS call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&token, "oidc-token-two").unwrap();
    let out = child.await.unwrap();
    assert_completed(
        &s,
        &out,
        "OIDC role acs:ram::1234567890123456:role/ccc-etl (RRSA)",
    );
    let stats = s.stats().await;
    let refreshes = metric(
        &std::fs::read_to_string(s.metrics()).unwrap(),
        "ccc_etl_credential_refreshes{command=\"backfill\"}",
    );
    assert!(refreshes >= 1.0, "the run outlived its credentials");
    assert_eq!(
        ok(&stats, "AssumeRoleWithOIDC") as f64,
        1.0 + refreshes,
        "one STS call at start and one per renewal, however many requests waited"
    );
    let t = output_text(&out);
    assert!(
        t.contains(&format!("renewed {refreshes} time")),
        "the summary counts renewals: {t}"
    );
    assert!(
        stats.oidc_token_uses.get(&1).copied().unwrap_or(0) >= 1,
        "the rotated token was read again: {:?}",
        stats.oidc_token_uses
    );
    assert_eq!(stats.count("GetInstanceTrendingReport", "OK"), 27);
    // No secret, token or full temporary AccessKeyId in any output.
    for secret in [
        "oidc-token-one",
        "oidc-token-two",
        "issued-secret-",
        "issued-token-",
    ] {
        assert!(!t.contains(secret), "output shows {secret}");
    }
    let full_id = regex::Regex::new(r"STS\.[0-9a-f]{6}").unwrap();
    assert!(!full_id.is_match(&t), "an STS AccessKeyId unmasked");
    assert!(t.contains("STS.****"), "the masked id is logged: {t}");
}

#[tokio::test]
async fn credentials_the_service_calls_expired_are_renewed_and_the_request_goes_again() {
    // The client's clock runs a minute behind STS: the Expiration it reads is a minute late, so
    // only the service's InvalidSecurityToken.Expired says when to renew.
    let mut opts = common::options(&["ccc-a", "ccc-b"]);
    opts.sts = StsOptions::new(Duration::from_secs(2));
    opts.sts.expiration_skew = Duration::from_secs(60);
    let s = Setup::with(opts, &["ccc-a", "ccc-b"], 50).await;
    std::fs::write(
        &s.config,
        std::fs::read_to_string(&s.config)
            .unwrap()
            .replace("max_qps = 50", "max_qps = 5"),
    )
    .unwrap();
    let token = s.token_file("oidc-token-one");
    let out = s
        .backfill("2026-09-01", "2026-10-31", &s.oidc_env(&token))
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let m = s.metrics();
    assert_eq!(
        metric(
            &std::fs::read_to_string(&m).unwrap(),
            "ccc_etl_windows{command=\"backfill\",status=\"failed\"}"
        ),
        0.0
    );
    let expired = metric(
        &std::fs::read_to_string(&m).unwrap(),
        "ccc_etl_requests{command=\"backfill\",code=\"InvalidSecurityToken.Expired\"}",
    );
    let refreshes = metric(
        &std::fs::read_to_string(&m).unwrap(),
        "ccc_etl_credential_refreshes{command=\"backfill\"}",
    );
    assert!(expired >= 1.0 && refreshes >= 1.0, "{expired} {refreshes}");
    assert!(
        refreshes <= expired,
        "one renewal serves every request refused with the same credentials"
    );
    let stats = s.stats().await;
    assert_eq!(ok(&stats, "AssumeRoleWithOIDC") as f64, 1.0 + refreshes);
    assert_eq!(ok(&stats, "GetInstanceTrendingReport"), 18);
}

#[tokio::test]
async fn a_cli_profile_assumes_a_ram_role_with_its_accesskey() {
    let s = Setup::new(&["ccc-a"], Duration::from_secs(3600), 50).await;
    let role = StsOptions::new(Duration::from_secs(1)).role_arn;
    let home = s.home();
    std::fs::create_dir_all(Path::new(&home).join(".aliyun")).unwrap();
    std::fs::write(
        Path::new(&home).join(".aliyun/config.json"),
        format!(
            r#"{{"current": "plain", "profiles": [
                {{"name": "plain", "mode": "AK", "access_key_id": "nobody", "access_key_secret": "x"}},
                {{"name": "ops", "mode": "RamRoleArn", "access_key_id": "{KEY_ID}",
                  "access_key_secret": "{SECRET}", "ram_role_arn": "{role}",
                  "ram_session_name": "nightly", "expired_seconds": 900}}]}}"#
        ),
    )
    .unwrap();
    let mut env = s.base_env();
    env.extend([
        ("ALIBABA_CLOUD_PROFILE", "ops".to_string()),
        ("ALIBABA_CLOUD_STS_ENDPOINT", s.emu.endpoint()),
    ]);
    let out = s.backfill("2026-11-20", "2026-11-22", &env).await;
    assert_completed(&s, &out, "CLI profile \"ops\"");
    let stats = s.stats().await;
    assert_eq!(
        ok(&stats, "AssumeRole"),
        1,
        "AssumeRole signed with the profile's key"
    );
    assert!(!output_text(&out).contains(SECRET));
}

#[tokio::test]
async fn a_credentials_file_section_is_read_and_a_missing_named_file_is_an_error() {
    let s = Setup::new(&["ccc-a"], Duration::from_secs(3600), 50).await;
    let file = s.dir.path().join("credentials.ini");
    std::fs::write(
        &file,
        format!(
            "[default]\ntype = access_key\naccess_key_id = nobody\naccess_key_secret = x\n\n\
             [nightly]\ntype = access_key\naccess_key_id = {KEY_ID}\naccess_key_secret = {SECRET}\n"
        ),
    )
    .unwrap();
    let mut env = s.base_env();
    env.extend([
        (
            "ALIBABA_CLOUD_CREDENTIALS_FILE",
            file.to_str().unwrap().to_string(),
        ),
        ("ALIBABA_CLOUD_PROFILE", "nightly".into()),
    ]);
    let out = s.backfill("2026-11-20", "2026-11-22", &env).await;
    assert_completed(&s, &out, "credentials file");
    env[2].1 = s.dir.path().join("nope.ini").to_str().unwrap().into();
    let out = s.backfill("2026-11-20", "2026-11-22", &env).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("does not exist"),
        "{}",
        output_text(&out)
    );
}

#[tokio::test]
async fn an_ecs_ram_role_is_discovered_through_the_metadata_service_with_an_imdsv2_token() {
    let s = Setup::new(&["ccc-a"], Duration::from_secs(3600), 50).await;
    let env = vec![
        ("HOME", s.home()),
        ("CCC_ETL_ECS_METADATA_URL", s.emu.endpoint()),
        ("ALIBABA_CLOUD_IMDSV1_DISABLED", "true".into()),
    ];
    let out = s.backfill("2026-11-20", "2026-11-22", &env).await;
    assert_completed(&s, &out, "ECS instance RAM role");
    let stats = s.stats().await;
    assert_eq!(ok(&stats, "MetadataToken"), 1);
    assert_eq!(ok(&stats, "MetadataRoles"), 1, "the role was discovered");
    assert_eq!(ok(&stats, "MetadataCredentials"), 1);
    assert_eq!(stats.count("MetadataCredentials", "Unauthorized"), 0);
}

#[tokio::test]
async fn a_credentials_uri_is_used_after_an_unreachable_metadata_service() {
    let s = Setup::new(&["ccc-a"], Duration::from_secs(3600), 50).await;
    // Nothing listens on the metadata URL: this is not an ECS instance, so the chain moves on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let env = vec![
        ("HOME", s.home()),
        ("CCC_ETL_ECS_METADATA_URL", closed_url),
        (
            "ALIBABA_CLOUD_CREDENTIALS_URI",
            format!("{}/_emulator/credentials", s.emu.endpoint()),
        ),
    ];
    let out = s.backfill("2026-11-20", "2026-11-22", &env).await;
    assert_completed(&s, &out, "ALIBABA_CLOUD_CREDENTIALS_URI");
    assert_eq!(ok(&s.stats().await, "CredentialsUri"), 1);
}

#[tokio::test]
async fn partly_configured_providers_are_one_clear_line_and_exit_2() {
    let s = Setup::new(&["ccc-a"], Duration::from_secs(3600), 50).await;
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r".into())],
            "OIDC (RRSA) credentials are configured in part: ALIBABA_CLOUD_OIDC_PROVIDER_ARN, \
             ALIBABA_CLOUD_OIDC_TOKEN_FILE not set",
        ),
        (
            vec![("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID.into())],
            "ALIBABA_CLOUD_ACCESS_KEY_ID is set but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not",
        ),
        (vec![], "no credentials found"),
    ];
    for (vars, expected) in cases {
        let mut env = s.base_env();
        env.extend(vars);
        let out = s.backfill("2026-11-20", "2026-11-22", &env).await;
        let t = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(t.contains(expected), "{t}");
        assert_eq!(
            t.lines().filter(|l| l.contains("error")).count(),
            1,
            "one line: {t}"
        );
    }
    // A pinned provider that is not configured is named.
    std::fs::write(
        &s.config,
        std::fs::read_to_string(&s.config)
            .unwrap()
            .replace("[source]\n", "[source]\ncredentials = \"oidc\"\n"),
    )
    .unwrap();
    let mut env = s.base_env();
    env.extend([
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID.to_string()),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET.to_string()),
    ]);
    let out = s.backfill("2026-11-20", "2026-11-22", &env).await;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("[source] credentials = \"oidc\""));
    assert_eq!(s.stats().await.count("GetInstanceTrendingReport", "OK"), 0);
}

#[tokio::test]
async fn instances_in_two_regions_go_to_their_own_endpoints_each_within_its_own_budget() {
    let shanghai = common::start(common::options(&["ccc-sh"])).await;
    let singapore = common::start(common::options(&["ccc-sg"])).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    let qps = 4.0;
    ConfigToml::new(&shanghai.endpoint(), &[])
        .unset("source", "endpoint")
        .set("source", "region", "cn-shanghai")
        .set("source", "max_qps", qps)
        .set("source.endpoints", "cn-shanghai", shanghai.endpoint())
        .set("source.endpoints", "ap-southeast-1", singapore.endpoint())
        .set(
            "pipeline",
            "instances",
            vec![
                "ccc-sh".into(),
                config::instance_in("ccc-sg", "ap-southeast-1"),
            ],
        )
        .parquet(dir.path().join("wh").display())
        .write(&config);
    let env = vec![
        ("HOME", dir.path().to_str().unwrap().to_string()),
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID.into()),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET.into()),
    ];
    let started = std::time::Instant::now();
    let out = run(
        &config,
        &["backfill", "--from", "2026-08-01", "--to", "2026-10-31"],
        &env,
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let mut total = 0;
    for (emu, instance) in [(&shanghai, "ccc-sh"), (&singapore, "ccc-sg")] {
        let stats = emu.stats().await.unwrap();
        let calls = stats.ok_calls();
        assert_eq!(calls.len(), 14, "92 days in 14 windows for {instance}");
        assert!(calls.iter().all(|c| c.instance_id == instance));
        assert_eq!(
            stats.count("GetInstanceTrendingReport", "NotExists.InstanceId"),
            0
        );
        // Each region's requests are spaced by its own budget (evenly, 1 / max_qps apart).
        let span = (calls.last().unwrap().received_ms - calls[0].received_ms) as f64 / 1000.0;
        let rate = (calls.len() - 1) as f64 / span;
        assert!(rate <= qps * 1.25, "{instance}: {rate:.2} requests/s");
        total += calls.len();
    }
    // Two budgets side by side: both regions together go faster than one budget would allow.
    let one_budget = (total - 1) as f64 / qps;
    assert!(
        elapsed < one_budget,
        "{elapsed:.2} s for {total} requests: the regions did not run side by side"
    );
}

#[tokio::test]
async fn an_oss_root_is_written_with_the_chains_credentials_and_no_accesskey_anywhere() {
    let s3 = common::s3::server();
    let bucket = s3.bucket().await;
    let db = common::TestDb::create().await;
    let mut opts = common::options(&["ccc-a"]);
    opts.sts = StsOptions::new(Duration::from_secs(3600));
    let emu = common::start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "max_qps", 50)
        .postgres()
        .parquet(format!("oss://{bucket}/wh"))
        .set("parquet", "region", "cn-hangzhou")
        .set("parquet", "endpoint", s3.endpoint.as_str())
        .write(&config);
    let token = dir.path().join("token");
    std::fs::write(&token, "oidc-token-one").unwrap();
    let sts = StsOptions::new(Duration::from_secs(1));
    let env = vec![
        ("HOME", dir.path().to_str().unwrap().to_string()),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true".into()),
        ("DATABASE_URL", db.url.clone()),
        ("ALIBABA_CLOUD_ROLE_ARN", sts.role_arn),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", sts.oidc_provider_arn),
        (
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            token.to_str().unwrap().into(),
        ),
        ("ALIBABA_CLOUD_STS_ENDPOINT", emu.endpoint()),
    ];
    let out = run(
        &config,
        &["backfill", "--from", "2026-11-20", "--to", "2026-11-22"],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let stats = emu.stats().await.unwrap();
    assert_eq!(
        stats.count("AssumeRoleWithOIDC", "OK"),
        1,
        "the API client and the OSS root share one credential source"
    );
    let listed = s3.python(
        &bucket,
        "import boto3, os\n\
         c = boto3.client('s3', endpoint_url=os.environ['ENDPOINT'])\n\
         print('\\n'.join(o['Key'] for o in c.list_objects_v2(Bucket=os.environ['BUCKET'])['Contents']))",
    );
    assert!(
        listed.contains("wh/inbound_trend/dt=2026-11-20/part-00000.parquet"),
        "{listed}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn an_oidc_token_file_that_vanishes_mid_run_stops_the_run_once() {
    // Credentials live 2 s; the run takes longer (27 windows at 3 requests per second).
    let s = Setup::new(&["ccc-a", "ccc-b", "ccc-c"], Duration::from_secs(2), 3).await;
    let token = s.token_file("oidc-token-one");
    let env = s.oidc_env(&token);
    let metrics = s.metrics();
    let config = s.config.clone();
    let child = tokio::spawn(async move {
        run(
            &config,
            &[
                "backfill",
                "--from",
                "2026-09-01",
                "--to",
                "2026-10-31",
                "--metrics-file",
                metrics.to_str().unwrap(),
            ],
            &env,
        )
        .await
    });
    // The token file is gone once the job has its first credentials (a pod's volume lost).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ok(&s.stats().await, "GetInstanceTrendingReport") == 0 {
        assert!(std::time::Instant::now() < deadline, "no request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(&token).unwrap();
    let out = child.await.unwrap();
    let t = output_text(&out);
    // One fatal error, exit 1: not a failed window per request left.
    assert_eq!(out.status.code(), Some(1), "{t}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("oidc-token") && (l.contains("ERROR") || l.contains("error")))
        .collect();
    assert!(!said.is_empty(), "the missing token file is named: {t}");
    // The stop itself, once at ERROR, naming what the summary names.
    let stops: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("the run stops"))
        .collect();
    assert_eq!(stops.len(), 1, "{t}");
    assert!(stops[0].contains("oidc-token"), "{t}");
    // The expiry is logged as a timestamp, not as Rust's debug text.
    let expires = regex::Regex::new(r"expires=20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ").unwrap();
    assert!(expires.is_match(&t) && !t.contains("expires=Some("), "{t}");
    let m = std::fs::read_to_string(s.metrics()).unwrap();
    let failed = metric(
        &m,
        "ccc_etl_windows{command=\"backfill\",status=\"failed\"}",
    );
    assert_eq!(
        failed, 0.0,
        "the run stopped, its windows did not each fail: {t}"
    );
    assert!(
        ok(&s.stats().await, "GetInstanceTrendingReport") < 27,
        "it stopped before the end"
    );
}
