//! The README is part of the product: a README that drifts from the code fails the build.
//!
//! Every `ccc-etl …` line in its shell, cron and systemd examples must parse with the real command
//! line; every PostgreSQL query must run against a database a backfill filled; the configuration
//! error it shows must be the one the shipped `pipeline.toml` gives. (The DuckDB, Spark and Trino
//! examples need engines this test does not have; their paths and columns are checked by the
//! Parquet tests.)

use crate::common;
use std::sync::Arc;

use crate::common::*;
use ccc_etl::cli::Cli;
use ccc_etl::config::{ParquetConfig, PostgresConfig, SchemaName, SignatureVersion};
use clap::Parser;

/// The README, then the pages of `docs/` in the order a new user reads them: the walk below runs
/// their commands in this order.
const DOCS: [(&str, &str); 17] = [
    ("README.md", include_str!("../../README.md")),
    (
        "docs/configuration.md",
        include_str!("../../docs/configuration.md"),
    ),
    ("docs/running.md", include_str!("../../docs/running.md")),
    ("docs/nightly.md", include_str!("../../docs/nightly.md")),
    (
        "docs/orchestrators.md",
        include_str!("../../docs/orchestrators.md"),
    ),
    ("docs/operating.md", include_str!("../../docs/operating.md")),
    (
        "docs/monitoring.md",
        include_str!("../../docs/monitoring.md"),
    ),
    ("docs/postgres.md", include_str!("../../docs/postgres.md")),
    ("docs/parquet.md", include_str!("../../docs/parquet.md")),
    ("docs/querying.md", include_str!("../../docs/querying.md")),
    ("docs/bi.md", include_str!("../../docs/bi.md")),
    (
        "docs/object-storage.md",
        include_str!("../../docs/object-storage.md"),
    ),
    ("docs/workers.md", include_str!("../../docs/workers.md")),
    ("docs/emulator.md", include_str!("../../docs/emulator.md")),
    ("docs/testing.md", include_str!("../../docs/testing.md")),
    (
        "docs/performance.md",
        include_str!("../../docs/performance.md"),
    ),
    ("docs/layout.md", include_str!("../../docs/layout.md")),
];

/// The fenced blocks of the README and the docs, in [`DOCS`] order: (language, body).
fn blocks() -> Vec<(String, String)> {
    let mut out = vec![];
    let mut current: Option<(String, String)> = None;
    for line in DOCS.iter().flat_map(|(_, text)| text.lines()) {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.trim().to_string(), String::new())),
            (Some(_), Some(_)) => out.push(current.take().expect("open block")),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The arguments of a documented `ccc-etl` line: optional parts (`[...]`) and trailing
/// redirections and comments dropped, the date example filled in.
fn invocation(line: &str) -> Option<Vec<String>> {
    // The binary by its path (a cron line also names the user `ccc-etl`), else the bare name.
    let starts: Vec<usize> = line.match_indices("ccc-etl ").map(|(i, _)| i).collect();
    let at = starts
        .iter()
        .find(|i| line[..**i].ends_with('/'))
        .or_else(|| {
            starts
                .iter()
                .find(|i| line[..**i].is_empty() || line[..**i].ends_with(' '))
        })
        .copied()?;
    let mut rest = line[at + "ccc-etl ".len()..].to_string();
    for cut in [" >", " #", " |"] {
        if let Some(i) = rest.find(cut) {
            rest.truncate(i);
        }
    }
    let rest = rest.replace("\"$(date -d '-30 days' +%F)\"", "2026-11-01");
    let mut words = vec![];
    let mut depth = 0;
    for w in rest.split_whitespace() {
        depth += w.matches('[').count() as i32;
        let optional = depth > 0;
        depth -= w.matches(']').count() as i32;
        if !optional && w != "..." {
            words.push(w.trim_matches('"').to_string());
        }
    }
    Some(words)
}

/// Every documented `ccc-etl` invocation, in README order: (the line, its arguments).
fn documented_invocations() -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    for (lang, body) in blocks() {
        if !matches!(lang.as_str(), "sh" | "cron" | "ini" | "yaml") {
            continue;
        }
        for line in body.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            let line = line.trim_start_matches("ExecStart=");
            let args = if let Some(i) = line.find("cargo run --release -- ") {
                Some(
                    line[i + "cargo run --release -- ".len()..]
                        .split_whitespace()
                        .take_while(|w| !w.starts_with('#'))
                        .map(str::to_string)
                        .collect(),
                )
            } else {
                invocation(line)
            };
            if let Some(args) = args {
                out.push((line.to_string(), args));
            }
        }
    }
    out
}

#[test]
fn every_page_of_docs_is_walked_and_every_relative_link_resolves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let walked: Vec<&str> = DOCS.iter().map(|(p, _)| *p).collect();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let name = format!("docs/{}", entry.unwrap().file_name().to_string_lossy());
        // benchmarks.md is generated from bench/benchmarks.md.in and holds no commands to run.
        if name.ends_with(".md") && name != "docs/benchmarks.md" {
            assert!(
                walked.contains(&name.as_str()),
                "{name} is not walked by the README test"
            );
        }
    }
    let link = regex::Regex::new(r"\]\(([^)#:]+)(#[^)]*)?\)").unwrap();
    for (page, text) in DOCS {
        let dir = root.join(page).parent().unwrap().to_path_buf();
        for c in link.captures_iter(text) {
            let target = dir.join(&c[1]);
            assert!(
                target.exists(),
                "{page}: the link to {} leads nowhere",
                &c[1]
            );
        }
    }
    let readme = DOCS[0].1;
    assert!(
        readme.lines().count() <= 300,
        "the README stays short: {} lines",
        readme.lines().count()
    );
}

#[test]
fn every_documented_command_line_parses() {
    let all = documented_invocations();
    for (line, args) in &all {
        let argv = std::iter::once("ccc-etl".to_string()).chain(args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(argv) {
            panic!("README line does not parse: {line}\n{e}");
        }
    }
    assert!(
        all.len() >= 10,
        "the README's command lines were found: {}",
        all.len()
    );
}

/// Walks the README top to bottom: every documented command that can run here runs, in order,
/// against the emulator and a fresh database, with its paths mapped into a scratch directory.
/// (`emulator --listen 127.0.0.1:8080` would take a fixed port and serve forever; the emulator
/// runs in-process instead.)
#[tokio::test]
async fn the_readme_walk_runs_every_command_it_can_run_here() {
    let emu = start(options(&["ccc-test"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let textfile = dir.path().join("textfile");
    let demo_dir = dir.path().join("demo");
    for d in [&etc, &textfile, &demo_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let cfg = etc.join("pipeline.toml");
    std::fs::write(
        &cfg,
        include_str!("../../pipeline.toml").replace(
            "# endpoint = \"https://ccc.cn-shanghai.aliyuncs.com\"",
            &format!("endpoint = \"{}\"", emu.endpoint()),
        ),
    )
    .unwrap();
    let month_ago = (crate::common::now() - chrono::Duration::days(30))
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m-%d")
        .to_string();
    let mut ran = vec![];
    for (line, args) in documented_invocations() {
        if args.first().is_some_and(|a| a == "emulator") {
            continue;
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("/etc/ccc-etl/pipeline.toml", cfg.to_str().unwrap())
                    .replace(
                        "/var/lib/node_exporter/textfile",
                        textfile.to_str().unwrap(),
                    )
                    .replace("2026-11-01", &month_ago)
            })
            .collect();
        let demo = args.first().is_some_and(|a| a == "demo");
        let mut cmd = crate::common::ccc_etl_cmd();
        if demo {
            cmd.current_dir(&demo_dir).args(["-q"]);
        } else {
            cmd.current_dir(&etc);
        }
        let out = cmd
            .args(&args)
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
            .env("DATABASE_URL", &db.url)
            .env("NO_COLOR", "1")
            .output()
            .await
            .unwrap();
        let code = out.status.code();
        assert_eq!(
            code,
            Some(0),
            "README line exits {code:?}: {line}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push(args[0].clone());
    }
    for command in [
        "demo", "plan", "backfill", "nightly", "status", "verify", "migrate",
    ] {
        assert!(ran.iter().any(|c| c == command), "{command} ran: {ran:?}");
    }
    assert!(
        textfile.join("ccc_etl_nightly.prom").exists(),
        "the cron line's metrics file"
    );
    build_superset_bundle_as_documented(&cfg, &etc, &db.url).await;
    db.drop_db().await;
}

/// The documented `python3 superset/build_bundle.py …` line, run as written (the configuration
/// mapped into the scratch directory): it writes the ZIP, readable by its owner only.
async fn build_superset_bundle_as_documented(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
) {
    use std::os::unix::fs::PermissionsExt;
    let root = env!("CARGO_MANIFEST_DIR");
    let line = blocks()
        .into_iter()
        .filter(|(lang, _)| lang == "sh")
        .flat_map(|(_, body)| body.lines().map(str::to_string).collect::<Vec<_>>())
        .find(|l| l.starts_with("python3 superset/build_bundle.py"))
        .expect("the docs show how to build the Superset bundle");
    let args: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|a| {
            a.replace(
                "superset/build_bundle.py",
                &format!("{root}/superset/build_bundle.py"),
            )
            .replace("/etc/ccc-etl/pipeline.toml", cfg.to_str().unwrap())
        })
        .collect();
    let out = tokio::process::Command::new("python3")
        .args(&args)
        .current_dir(dir)
        .env("DATABASE_URL", url)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{line}: {}", output_text(&out));
    let zip = dir.join("ccc-etl-superset.zip");
    let mode = std::fs::metadata(&zip).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{line}: the ZIP is its owner's only");
}

#[test]
fn the_documented_configuration_error_is_the_real_one() {
    let (_, example) = blocks()
        .into_iter()
        .find(|(lang, body)| lang == "text" && body.starts_with("error: pipeline.toml:"))
        .expect("the README shows a configuration error");
    let dir = tempfile::tempdir().unwrap();
    let shipped = include_str!("../../pipeline.toml");
    assert!(shipped.contains("\nmax_qps = 5.0 "));
    std::fs::write(
        dir.path().join("pipeline.toml"),
        shipped.replace("\nmax_qps = 5.0 ", "\nmax_qps = 0   "),
    )
    .unwrap();
    let out = crate::common::ccc_etl_std_cmd()
        .current_dir(dir.path())
        .args(crate::common::args(&["plan", "--from", "2026-11-01"]))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr), example);
}

#[tokio::test]
async fn every_documented_postgres_query_runs_on_a_backfilled_database() {
    let emu = start(options(&["ccc-a"])).await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&emu, &["ccc-a"], SignatureVersion::V1);
    cfg.parquet = Some(ParquetConfig::at(dir.path().to_path_buf()));
    cfg.postgres = Some(PostgresConfig {
        url: Some(secrecy::SecretString::from(db.url.clone())),
        schema: SchemaName::parse("ccc").unwrap(),
    });
    let now = crate::common::now().timestamp_millis();
    let (sinks, ledger) = ccc_etl::commands::open_sinks(&cfg).await.unwrap();
    let summary = engine(&cfg, sinks, ledger, Arc::new(move || now))
        .run(&request(&["ccc-a"], now - 10 * DAY, now))
        .await
        .unwrap();
    assert_eq!(summary.exit_code(), 0, "{}", summary.render());
    let pool = db.pool().await;
    let mut ran = 0;
    for (lang, body) in blocks() {
        if lang != "sql" || !body.contains("ccc.") || body.contains("hive.") {
            continue;
        }
        let sql: String = body
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        // The queries' `current_date` is the tests' day (the data is on the tests' clock).
        let today = format!("DATE '{}'", crate::common::now().date_naive());
        let sql = sql.replace("current_date", &today);
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let rows = sqlx::query(statement)
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("README query fails: {statement}\n{e}"));
            assert!(!rows.is_empty(), "README query returns rows: {statement}");
            ran += 1;
        }
    }
    assert!(
        ran >= 3,
        "the README's PostgreSQL queries were found: {ran}"
    );
    pool.close().await;
    db.drop_db().await;
}

#[test]
fn the_documented_duckdb_query_runs_on_what_the_demo_writes() {
    let (_, sql) = blocks()
        .into_iter()
        .find(|(lang, body)| lang == "sql" && body.contains("read_parquet("))
        .expect("the README shows a DuckDB query");
    let python = common::duckdb_python();
    let dir = tempfile::tempdir().unwrap();
    let demo = crate::common::ccc_etl_std_cmd()
        .current_dir(dir.path())
        .args(["-q", "demo", "--days", "3"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let out = std::process::Command::new(python)
        .current_dir(dir.path())
        .args([
            "-c",
            "import duckdb, sys; rows = duckdb.sql(sys.argv[1]).fetchall(); print(len(rows)); print(rows[0])",
        ])
        .arg(sql.trim().trim_end_matches(';'))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = stdout.lines().next().unwrap().parse().unwrap();
    assert!(n >= 3 * 3, "one row per instance and local day: {stdout}");
}
