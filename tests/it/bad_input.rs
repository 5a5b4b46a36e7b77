//! Bad configuration and command lines: each gives one clear line on stderr, exit code 2, and
//! nothing written to either sink (no Parquet root, no PostgreSQL schema).

use crate::common;
use std::path::Path;

use sqlx::Row;

const SECRET_VALUE: &str = "very-secret-value";

struct Case {
    name: &'static str,
    /// Replaces `{base}` markers; `None` for no config file at all.
    config: Option<String>,
    args: Vec<String>,
    creds: (bool, bool),
    expect: &'static str,
}

fn base(endpoint: &str, root: &Path, db_url: &str) -> String {
    format!(
        "[source]\nendpoint = \"{endpoint}\"\nmax_qps = 5.0\nconcurrency = 4\n\
         [pipeline]\ninstances = [\"ccc-a\", \"ccc-b\"]\ntimezone = \"UTC\"\n\
         [postgres]\nschema = \"ccc\"\nurl = \"{db_url}\"\n\
         [parquet]\nroot = \"{}\"\n",
        root.display()
    )
}

#[tokio::test]
async fn every_bad_input_gives_one_clear_line_exit_2_and_writes_nothing() {
    let db = common::TestDb::create().await;
    let emu = common::start(common::options(&["ccc-a", "ccc-b"])).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("wh");
    let ok = base(&emu.endpoint(), &root, &db.url);
    let with = |from: &str, to: &str| ok.replacen(from, to, 1);
    let bf = || common::args(&["backfill", "--from", "2026-11-01", "--to", "2026-11-03"]);
    let both = (true, true);
    let cases = vec![
        Case {
            name: "malformed toml",
            config: Some("[pipeline\n".into()),
            args: bf(),
            creds: both,
            expect: ":1:",
        },
        Case {
            name: "unknown section",
            config: Some(format!("{ok}[sources]\nx = 1\n")),
            args: bf(),
            creds: both,
            expect: "unknown field `sources`",
        },
        Case {
            name: "unknown key",
            config: Some(with("max_qps = 5.0", "max_qps = 5.0\ncolour = 1")),
            args: bf(),
            creds: both,
            expect: "unknown field `colour`",
        },
        Case {
            name: "misspelt key",
            config: Some(with("instances =", "instance =")),
            args: bf(),
            creds: both,
            expect: "unknown field `instance`",
        },
        Case {
            name: "unknown postgres key",
            config: Some(with(
                "schema = \"ccc\"",
                "schema = \"ccc\"\ndatabase = \"x\"",
            )),
            args: bf(),
            creds: both,
            expect: "unknown field `database`",
        },
        Case {
            name: "unknown parquet key",
            config: Some(format!("{ok}path = \"x\"\n")),
            args: bf(),
            creds: both,
            expect: "unknown field `path`",
        },
        Case {
            name: "zero parquet buffer",
            config: Some(format!("{ok}buffer_rows = 0\n")),
            args: bf(),
            creds: both,
            expect: "must be >= 1",
        },
        Case {
            name: "qps as text",
            config: Some(with("max_qps = 5.0", "max_qps = \"fast\"")),
            args: bf(),
            creds: both,
            expect: "key `max_qps`",
        },
        Case {
            name: "fractional concurrency",
            config: Some(with("concurrency = 4", "concurrency = 2.5")),
            args: bf(),
            creds: both,
            expect: "key `concurrency`",
        },
        Case {
            name: "instances as a string",
            config: Some(with("[\"ccc-a\", \"ccc-b\"]", "\"ccc-a\"")),
            args: bf(),
            creds: both,
            expect: "key `instances`",
        },
        Case {
            name: "zero qps",
            config: Some(with("max_qps = 5.0", "max_qps = 0")),
            args: bf(),
            creds: both,
            expect: "must be > 0",
        },
        Case {
            name: "negative qps",
            config: Some(with("max_qps = 5.0", "max_qps = -2.0")),
            args: bf(),
            creds: both,
            expect: "must be > 0",
        },
        Case {
            name: "zero concurrency",
            config: Some(with("concurrency = 4", "concurrency = 0")),
            args: bf(),
            creds: both,
            expect: "must be >= 1",
        },
        Case {
            name: "zero timeout",
            config: Some(with("concurrency = 4", "concurrency = 4\ntimeout_secs = 0")),
            args: bf(),
            creds: both,
            expect: "must be >= 1",
        },
        Case {
            name: "zero attempts",
            config: Some(with("concurrency = 4", "concurrency = 4\nmax_attempts = 0")),
            args: bf(),
            creds: both,
            expect: "must be >= 1",
        },
        Case {
            name: "bad time zone",
            config: Some(with("\"UTC\"", "\"Mars/Base\"")),
            args: bf(),
            creds: both,
            expect: "unknown time zone",
        },
        Case {
            name: "time zone as a number",
            config: Some(with("\"UTC\"", "8")),
            args: bf(),
            creds: both,
            expect: "key `timezone`",
        },
        Case {
            name: "empty instance list",
            config: Some(with("[\"ccc-a\", \"ccc-b\"]", "[]")),
            args: bf(),
            creds: both,
            expect: "instance list is empty",
        },
        Case {
            name: "duplicate instance",
            config: Some(with("[\"ccc-a\", \"ccc-b\"]", "[\"ccc-a\", \"ccc-a\"]")),
            args: bf(),
            creds: both,
            expect: "listed twice",
        },
        Case {
            name: "instance with a space",
            config: Some(with("[\"ccc-a\", \"ccc-b\"]", "[\"ccc a\"]")),
            args: bf(),
            creds: both,
            expect: "invalid instance id",
        },
        Case {
            name: "unknown media type",
            config: Some(with("timezone", "media_types = [\"Fax\"]\ntimezone")),
            args: bf(),
            creds: both,
            expect: "unknown media type",
        },
        Case {
            name: "empty media types",
            config: Some(with("timezone", "media_types = []\ntimezone")),
            args: bf(),
            creds: both,
            expect: "media type list is empty",
        },
        Case {
            name: "lookback beyond the horizon",
            config: Some(with("timezone", "lookback_days = 400\ntimezone")),
            args: bf(),
            creds: both,
            expect: "must be between 0 and 179",
        },
        Case {
            name: "unknown signature version",
            config: Some(with("max_qps", "signature_version = \"v2\"\nmax_qps")),
            args: bf(),
            creds: both,
            expect: "unknown variant `v2`",
        },
        Case {
            name: "schema carrying SQL",
            config: Some(with("schema = \"ccc\"", "schema = \"ccc; DROP TABLE x\"")),
            args: bf(),
            creds: both,
            expect: "invalid schema name",
        },
        Case {
            name: "schema with capitals",
            config: Some(with("schema = \"ccc\"", "schema = \"Ccc\"")),
            args: bf(),
            creds: both,
            expect: "invalid schema name",
        },
        Case {
            name: "plain HTTP far away",
            config: Some(with(&emu.endpoint(), "http://ccc.example.com")),
            args: bf(),
            creds: both,
            expect: "plain HTTP to a non-loopback host",
        },
        Case {
            name: "unsupported scheme",
            config: Some(with(&emu.endpoint(), "ftp://127.0.0.1:21")),
            args: bf(),
            creds: both,
            expect: "unsupported scheme",
        },
        Case {
            name: "endpoint not a URL",
            config: Some(with(&emu.endpoint(), "ccc.example.com")),
            args: bf(),
            creds: both,
            expect: "invalid endpoint URL",
        },
        Case {
            name: "unwritable parquet root",
            config: Some(with(&root.display().to_string(), "/proc/ccc-etl-warehouse")),
            args: bf(),
            creds: both,
            expect: "Parquet root",
        },
        Case {
            name: "from after to",
            config: Some(ok.clone()),
            args: common::args(&["backfill", "--from", "2026-11-05", "--to", "2026-11-01"]),
            creds: both,
            expect: "is not before --to",
        },
        Case {
            name: "postgres without a url",
            config: Some(with(&format!("url = \"{}\"\n", db.url), "")),
            args: bf(),
            creds: both,
            expect: "has no url and DATABASE_URL is not set: export DATABASE_URL=postgres://user@host:5432/database, or delete [postgres]",
        },
        Case {
            name: "from in the future",
            config: Some(ok.clone()),
            args: common::args(&["backfill", "--from", "2027-01-01"]),
            creds: both,
            expect: "--from 2027-01-01 is in the future (it is 2026-12-04",
        },
        Case {
            name: "unparseable from",
            config: Some(ok.clone()),
            args: common::args(&["backfill", "--from", "last tuesday"]),
            creds: both,
            expect: "expected a date YYYY-MM-DD",
        },
        Case {
            name: "impossible date",
            config: Some(ok.clone()),
            args: common::args(&["backfill", "--from", "2026-02-30"]),
            creds: both,
            expect: "not a real calendar date",
        },
        Case {
            name: "epoch out of range",
            config: Some(ok.clone()),
            args: common::args(&[
                "backfill",
                "--from",
                "2026-11-01",
                "--to",
                "99999999999999999999",
            ]),
            creds: both,
            expect: "out of range",
        },
        Case {
            name: "metrics file under a regular file",
            config: Some(ok.clone()),
            args: common::args(&[
                "backfill",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-03",
                "--metrics-file",
                "/etc/passwd/ccc_etl.prom",
            ]),
            creds: both,
            expect: "--metrics-file /etc/passwd/ccc_etl.prom: cannot write in /etc/passwd: it is not a directory",
        },
        Case {
            name: "metrics file that is a directory",
            config: Some(ok.clone()),
            args: common::args(&["nightly", "--metrics-file", "/tmp"]),
            creds: both,
            expect: "--metrics-file /tmp: it is a directory",
        },
        Case {
            name: "metrics file in a directory that does not exist",
            config: Some(ok.clone()),
            args: common::args(&[
                "backfill",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-03",
                "--metrics-file",
                "/nonexistent-dir/ccc_etl.prom",
            ]),
            creds: both,
            expect: "--metrics-file /nonexistent-dir/ccc_etl.prom: cannot write",
        },
        Case {
            name: "object-storage root without PostgreSQL",
            config: Some(
                ok.replacen(&format!("url = \"{}\"\n", db.url), "", 1)
                    .replacen("[postgres]\nschema = \"ccc\"\n", "", 1)
                    .replacen(
                        &format!("root = \"{}\"", root.display()),
                        "root = \"s3://bucket/warehouse\"",
                        1,
                    ),
            ),
            args: bf(),
            creds: both,
            expect: "needs a [postgres] section",
        },
        Case {
            name: "unknown root scheme",
            config: Some(with(
                &format!("root = \"{}\"", root.display()),
                "root = \"hdfs://namenode/warehouse\"",
            )),
            args: bf(),
            creds: both,
            expect: "unknown scheme hdfs://",
        },
        Case {
            name: "object store over plain HTTP",
            config: Some(with(
                &format!("root = \"{}\"", root.display()),
                "root = \"s3://bucket/warehouse\"\nendpoint = \"http://minio.example.com:9000\"",
            )),
            args: bf(),
            creds: both,
            expect: "plain HTTP to a non-loopback host",
        },
        Case {
            name: "unknown instance",
            config: Some(ok.clone()),
            args: common::args(&["backfill", "--from", "2026-11-01", "--instance", "ccc-zzz"]),
            creds: both,
            expect: "not a configured instance",
        },
        Case {
            name: "missing key id",
            config: Some(ok.clone()),
            args: bf(),
            creds: (false, true),
            expect: "ALIBABA_CLOUD_ACCESS_KEY_SECRET is set but ALIBABA_CLOUD_ACCESS_KEY_ID is not",
        },
        Case {
            name: "missing secret",
            config: Some(ok.clone()),
            args: bf(),
            creds: (true, false),
            expect: "ALIBABA_CLOUD_ACCESS_KEY_ID is set but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not",
        },
        Case {
            name: "no config file",
            config: None,
            args: bf(),
            creds: both,
            expect: "cannot read config file",
        },
        Case {
            name: "postgres without url",
            config: Some(with(&format!("url = \"{}\"\n", db.url), "")),
            args: bf(),
            creds: both,
            expect: "DATABASE_URL is not set",
        },
        Case {
            name: "no sink",
            config: Some(ok.split("[postgres]").next().unwrap().to_string()),
            args: bf(),
            creds: both,
            expect: "no sink is configured",
        },
        Case {
            name: "nightly with a typo",
            config: Some(with("timezone", "timezon = 1\ntimezone")),
            args: common::args(&["nightly"]),
            creds: both,
            expect: "unknown field `timezon`",
        },
        Case {
            name: "emulator fault fractions",
            config: None,
            args: common::args(&["emulator", "--fail-503", "1.5"]),
            creds: both,
            expect: "--fail-503 must be a fraction",
        },
        Case {
            name: "empty parquet root",
            config: Some(with(
                &format!("root = \"{}\"", root.display()),
                "root = \"\"",
            )),
            args: bf(),
            creds: both,
            expect: "the Parquet root is empty",
        },
        Case {
            name: "a database URL of another kind",
            config: Some(with(&db.url, "mysql://etl:hunter2@127.0.0.1/warehouse")),
            args: bf(),
            creds: both,
            expect: "is not a PostgreSQL URL: it must start with postgres:// or postgresql://",
        },
    ];
    assert!(cases.len() >= 30);
    let pool = db.pool().await;
    for case in cases {
        let work = tempfile::tempdir().unwrap();
        let mut cmd = crate::common::ccc_etl_cmd();
        cmd.current_dir(work.path())
            .env_remove("DATABASE_URL")
            .env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
            .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
            .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
            .env("HOME", work.path())
            .env_remove("RUST_LOG");
        if let Some(text) = &case.config {
            let p = work.path().join("pipeline.toml");
            std::fs::write(&p, text).unwrap();
            cmd.arg("--config").arg(&p);
        }
        if case.creds.0 {
            cmd.env("ALIBABA_CLOUD_ACCESS_KEY_ID", common::KEY_ID);
        }
        if case.creds.1 {
            cmd.env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET_VALUE);
        }
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            cmd.args(&case.args).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: timed out", case.name))
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", case.name);
        assert!(
            stderr.contains(case.expect),
            "{}: expected {:?} in {stderr:?}",
            case.name,
            case.expect
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{}: one line: {stderr:?}",
            case.name
        );
        assert!(!stderr.contains(SECRET_VALUE), "{}", case.name);
        assert!(
            !stderr.contains("hunter2"),
            "{}: a password shown",
            case.name
        );
        assert!(
            !root.exists(),
            "{}: the Parquet root was created",
            case.name
        );
        let schemas: i64 = sqlx::query(
            "SELECT count(*) AS n FROM information_schema.schemata WHERE schema_name = 'ccc'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
        assert_eq!(schemas, 0, "{}: PostgreSQL was written to", case.name);
    }
    assert_eq!(
        emu.stats().await.unwrap().requests,
        0,
        "no API request for bad input"
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_clock_pin_that_is_not_an_instant_exits_2_naming_it() {
    let out = crate::common::ccc_etl_cmd()
        .env(ccc_etl::clock::ENV, "2026-12-04")
        .args(["plan", "--from", "2026-11-01"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CCC_ETL_NOW=\"2026-12-04\" is not an RFC 3339 instant"),
        "{stderr}"
    );
}
