//! Known secrets never appear in stdout, stderr, logs, metrics files, ledger files or the
//! database, for a job that succeeds and one that fails.

use crate::common;
use crate::common::ConfigToml;
use std::path::Path;

use ccc_etl::ccc::emulator::KeyPair;
use ccc_etl::record::Table;
use ccc_etl::sink::parquet::read_file;
use sqlx::Row;

const KEY_ID: &str = "LTAIsecretstest";
const SECRET: &str = "S3cr3t-Known-Value-123";
const TOKEN: &str = "Sts-Token-Known-456";
const DB_PASSWORD: &str = "Pg-Pass-Known-789";
const WRONG: &str = "Wrong-Secret-Known-000";

fn everything_under(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            everything_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            let table = Table::ALL
                .into_iter()
                .find(|t| p.to_string_lossy().contains(t.name()))
                .unwrap();
            for r in read_file(&p, table).unwrap() {
                out.push_str(&format!(
                    "{} {} {}\n",
                    r.instance_id, r.media_type, r.request_id
                ));
            }
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
}

fn assert_clean(what: &str, text: &str) {
    // The AccessKeyId is not a secret, but only its masked form may be shown.
    for s in [SECRET, TOKEN, DB_PASSWORD, WRONG, KEY_ID, "secretstest"] {
        assert!(!text.contains(s), "{what} contains a secret ({s})");
    }
}

#[tokio::test]
async fn secrets_appear_nowhere_for_a_succeeding_and_a_failing_job() {
    let db = common::TestDb::create().await;
    let mut opts = common::options(&["ccc-a"]);
    opts.keys.clear();
    opts.keys.insert(
        KEY_ID.into(),
        KeyPair {
            secret: SECRET.into(),
            security_token: Some(TOKEN.into()),
            expires: None,
        },
    );
    let emu = common::start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("wh");
    let db_url = db
        .url
        .replace("postgres@", &format!("postgres:{DB_PASSWORD}@"));
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "signature_version", "v3")
        .postgres()
        .parquet(root.display())
        .write(&cfg);
    let metrics = dir.path().join("m.prom");
    let run = |secret: &'static str, cfg: std::path::PathBuf| {
        let metrics = metrics.clone();
        let db_url = db_url.clone();
        async move {
            crate::common::ccc_etl_cmd()
                .args(crate::common::args(&[
                    "-vv",
                    "--log-format",
                    "json",
                    "--config",
                    cfg.to_str().unwrap(),
                    "backfill",
                    "--from",
                    "2026-11-20",
                    "--to",
                    "2026-11-21",
                ]))
                .arg("--metrics-file")
                .arg(&metrics)
                .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
                .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)
                .env("ALIBABA_CLOUD_SECURITY_TOKEN", TOKEN)
                .env("DATABASE_URL", db_url)
                .env_remove("RUST_LOG")
                .output()
                .await
                .unwrap()
        }
    };
    // The server's SignatureDoesNotMatch message quotes its string-to-sign (V1: AccessKeyId,
    // SecurityToken; V3: the canonical request with the token header): both must be scrubbed.
    let cfg_v1 = dir.path().join("pipeline-v1.toml");
    std::fs::write(
        &cfg_v1,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("signature_version = \"v3\"", "signature_version = \"v1\""),
    )
    .unwrap();
    let failed_v1 = run(WRONG, cfg_v1).await;
    assert_eq!(failed_v1.status.code(), Some(1));
    let v1_stdout = String::from_utf8_lossy(&failed_v1.stdout).to_string();
    assert!(
        v1_stdout.contains("server string to sign is:GET&%2F&AccessKeyId%3DLTAI****"),
        "the message keeps what helps, with the id masked: {v1_stdout}"
    );
    assert!(
        v1_stdout.contains("SecurityToken%3D[redacted]"),
        "{v1_stdout}"
    );
    assert_clean("failing V1 job stdout", &v1_stdout);
    assert_clean(
        "failing V1 job stderr",
        &String::from_utf8_lossy(&failed_v1.stderr),
    );
    let failed = run(WRONG, cfg.clone()).await;
    assert_eq!(
        failed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains("x-acs-security-token:[redacted]"),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let ok = run(SECRET, cfg.clone()).await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let failed_stdout = String::from_utf8_lossy(&failed.stdout).to_string();
    assert!(
        failed_stdout.contains("SignatureDoesNotMatch"),
        "{failed_stdout}"
    );
    for (what, out) in [("succeeding job", &ok), ("failing job", &failed)] {
        assert_clean(
            &format!("{what} stdout"),
            &String::from_utf8_lossy(&out.stdout),
        );
        assert_clean(
            &format!("{what} stderr"),
            &String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.stderr.len() > 200, "{what}: verbose logging was on");
    }
    assert_clean("metrics file", &std::fs::read_to_string(&metrics).unwrap());

    // A failing job without PostgreSQL leaves its story in the file ledger: check that too (on
    // a root of its own: the first root is the PostgreSQL ledger's).
    let cfg2 = dir.path().join("parquet-only.toml");
    std::fs::write(
        &cfg2,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[postgres]\nschema = \"ccc\"\n", "")
            .replace(
                &root.display().to_string(),
                &dir.path().join("wh2").display().to_string(),
            ),
    )
    .unwrap();
    let failed2 = run(WRONG, cfg2.clone()).await;
    assert_eq!(failed2.status.code(), Some(1));
    let ok2 = run(SECRET, cfg2).await;
    assert_eq!(
        ok2.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok2.stderr)
    );
    let mut files = String::new();
    everything_under(&root, &mut files);
    everything_under(&dir.path().join("wh2"), &mut files);
    assert!(files.contains("ccc-a"), "the files were read");
    assert_clean("Parquet and ledger files", &files);

    let pool = db.pool().await;
    let mut dump = String::new();
    for sql in [
        "SELECT coalesce(string_agg(request_id, ' '), '') AS t FROM ccc.inbound_trend",
        "SELECT coalesce(string_agg(coalesce(last_error, '') || array_to_string(request_ids, ' '), ' '), '') AS t FROM ccc.windows",
        "SELECT coalesce(string_agg(summary::text, ' '), '') AS t FROM ccc.runs",
        "SELECT coalesce(string_agg(value, ' '), '') AS t FROM ccc.settings",
    ] {
        dump.push_str(
            &sqlx::query(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<String, _>("t"),
        );
    }
    assert!(
        dump.contains("ok"),
        "the database was read: {}",
        &dump[..dump.len().min(200)]
    );
    assert_clean("database", &dump);
    pool.close().await;
    db.drop_db().await;
}

/// What a keyless job must never show: the OIDC token, the STS credentials issued to it, or a
/// temporary AccessKeyId unmasked.
fn assert_no_sts_secret(what: &str, text: &str) {
    for s in ["oidc-token-", "issued-secret-", "issued-token-"] {
        assert!(!text.contains(s), "{what} contains {s}");
    }
    let full_id = regex::Regex::new(r"STS\.[0-9a-f]{6}").unwrap();
    assert!(!full_id.is_match(text), "{what} shows an STS AccessKeyId");
}

#[tokio::test]
async fn a_keyless_job_shows_no_oidc_token_and_no_issued_credential_anywhere() {
    use ccc_etl::ccc::emulator::StsOptions;
    let db = common::TestDb::create().await;
    let mut opts = common::options(&["ccc-a"]);
    // Short-lived, so the job renews them at least once: every issued set must stay hidden.
    opts.sts = StsOptions::new(std::time::Duration::from_secs(2));
    let sts = opts.sts.clone();
    let emu = common::start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("wh");
    let cfg = dir.path().join("pipeline.toml");
    ConfigToml::new(&emu.endpoint(), &["ccc-a"])
        .set("source", "max_qps", 4)
        .postgres()
        .parquet(root.display())
        .write(&cfg);
    let token = dir.path().join("token");
    let metrics = dir.path().join("m.prom");
    let run = |oidc_token: &'static str| {
        std::fs::write(&token, oidc_token).unwrap();
        crate::common::ccc_etl_cmd()
            .env_clear()
            .envs(crate::common::clock_env())
            .args(["-vv", "--config", cfg.to_str().unwrap(), "backfill"])
            .args(crate::common::args(&[
                "--from",
                "2026-07-01",
                "--to",
                "2026-10-31",
            ]))
            .arg("--metrics-file")
            .arg(&metrics)
            .env("HOME", dir.path())
            .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
            .env("ALIBABA_CLOUD_ROLE_ARN", &sts.role_arn)
            .env("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", &sts.oidc_provider_arn)
            .env("ALIBABA_CLOUD_OIDC_TOKEN_FILE", &token)
            .env("ALIBABA_CLOUD_STS_ENDPOINT", emu.endpoint())
            .env("DATABASE_URL", &db.url)
            .output()
    };
    // STS refuses a token it does not know: exit 1, STS's code named, the token not shown.
    let refused = run("oidc-token-unknown").await.unwrap();
    let refused_text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(refused.status.code(), Some(1), "{refused_text}");
    assert!(
        refused_text.contains("AuthenticationFail.OIDCToken.Invalid"),
        "{refused_text}"
    );
    assert_no_sts_secret("refused job output", &refused_text);
    let ok = run("oidc-token-one").await.unwrap();
    let ok_text = format!(
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(ok.status.code(), Some(0), "{ok_text}");
    let renewed = regex::Regex::new(r"renewed [1-9][0-9]* time").unwrap();
    assert!(
        renewed.is_match(&ok_text),
        "the job outlived its credentials: {ok_text}"
    );
    assert_no_sts_secret("job output", &ok_text);
    assert_no_sts_secret("metrics file", &std::fs::read_to_string(&metrics).unwrap());
    let mut files = String::new();
    everything_under(&root, &mut files);
    assert!(files.contains("ccc-a"), "the files were read");
    assert_no_sts_secret("Parquet files", &files);
    let pool = db.pool().await;
    let dump: String =
        sqlx::query_scalar("SELECT coalesce(string_agg(summary::text, ' '), '') FROM ccc.runs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        dump.contains("OIDC role"),
        "the runs table names the provider"
    );
    assert_no_sts_secret("database", &dump);
    pool.close().await;
    db.drop_db().await;
}
