//! The deployment files in `deploy/`, used as the docs say: `setup.sh` run as root (into a
//! temporary prefix) creates the user, the directories, the log and metrics paths and installs
//! the binary; the installed cron line then runs the nightly job as that unprivileged user; the
//! installed systemd units pass `systemd-analyze verify`; the Kubernetes manifest passes the
//! Kubernetes schema (`kubernetes-validate`, from PyPI, set up under `target/` on first use), and
//! the configuration in its ConfigMap is one ccc-etl accepts.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn deploy(file: &str) -> PathBuf {
    Path::new(ROOT).join("deploy").join(file)
}

/// A Python with `kubernetes-validate` (and PyYAML), set up under `target/` on first use.
fn validator_python() -> PathBuf {
    common::venv_python(
        "deploy-venv",
        "import kubernetes_validate, yaml",
        &["kubernetes-validate"],
        "the Kubernetes manifest is checked with kubernetes-validate",
    )
}

fn validate(python: &Path, manifest: &Path) -> std::process::Output {
    Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
        .arg(manifest)
        .output()
        .unwrap()
}

#[test]
fn the_kubernetes_cronjob_passes_the_schema_and_its_configuration_loads() {
    let python = validator_python();
    let manifest = deploy("k8s/cronjob.yaml");
    let out = validate(&python, &manifest);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let text = std::fs::read_to_string(&manifest).unwrap();
    // The check can fail: a misspelled key is refused.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        text.replace("concurrencyPolicy: Forbid", "concurencyPolicy: Forbid"),
    )
    .unwrap();
    assert!(!validate(&python, &broken).status.success());

    // What the issue asks of it: one CronJob, its own time zone, never two runs at once, RRSA
    // credentials through its service account, the configuration from a ConfigMap.
    let facts = Command::new(&python)
        .args([
            "-c",
            "import sys, yaml, json\n\
             docs = {d['kind']: d for d in yaml.safe_load_all(open(sys.argv[1]))}\n\
             job = docs['CronJob']['spec']\n\
             pod = job['jobTemplate']['spec']['template']['spec']\n\
             print(json.dumps({'tz': job['timeZone'], 'policy': job['concurrencyPolicy'],\n\
               'sa': pod['serviceAccountName'], 'sa_kind': docs['ServiceAccount']['metadata']['name'],\n\
               'config': docs['ConfigMap']['data']['pipeline.toml']}))",
        ])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(facts.status.success(), "{}", common::output_text(&facts));
    let facts: serde_json::Value = serde_json::from_slice(&facts.stdout).unwrap();
    assert_eq!(facts["tz"], "Asia/Shanghai");
    assert_eq!(facts["policy"], "Forbid");
    assert_eq!(facts["sa"], facts["sa_kind"]);
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, facts["config"].as_str().unwrap()).unwrap();
    let loaded =
        ccc_etl::config::Config::load(&config).expect("the ConfigMap's configuration loads");
    let root = loaded.parquet.expect("a Parquet root").root.to_string();
    assert!(
        root.starts_with("oss://"),
        "the root is on object storage: {root}"
    );
    assert!(
        loaded.postgres.is_some(),
        "an object-storage root needs PostgreSQL"
    );
}

/// The cron file's job line: (user, command).
fn cron_job(cron_file: &Path) -> (String, String) {
    let text = std::fs::read_to_string(cron_file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("30 2 "))
        .expect("a job line at 02:30");
    let fields: Vec<&str> = line.splitn(7, char::is_whitespace).collect();
    let rest = line[fields[..5].iter().map(|f| f.len() + 1).sum::<usize>()..].trim_start();
    let (user, command) = rest.split_once(char::is_whitespace).unwrap();
    (user.to_string(), command.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_installs_the_job_and_its_cron_line_runs_it_as_the_unprivileged_user() {
    assert!(
        nix_is_root(),
        "setup.sh creates a user and root-owned files: this test needs root (CI runs as root; \
         run `sudo -E cargo test --test it deploy::`)"
    );
    let emu = common::start(common::options(&["ccc-deploy"])).await;
    let db = common::TestDb::create().await;
    let prefix = tempfile::tempdir().unwrap();
    // The job's user must reach its files under the prefix, as it reaches / in production.
    std::fs::set_permissions(prefix.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let setup = |user: &str| {
        Command::new("sh")
            .arg(deploy("setup.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_ccc-etl")])
            .args(["--user", user, "--prefix"])
            .arg(prefix.path())
            .output()
            .unwrap()
    };
    // A trial under a prefix never creates a user: one that does not exist is refused.
    let users = || std::fs::read_to_string("/etc/passwd").unwrap();
    let before = users();
    let out = setup("ccc-etl-no-such-user");
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    assert!(common::output_text(&out).contains("does not exist"));
    assert_eq!(users(), before, "setup.sh --prefix created a user");
    // The job's user, made here as an operator would.
    if !Command::new("id")
        .args(["-u", "ccc-etl"])
        .output()
        .unwrap()
        .status
        .success()
    {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                "ccc-etl",
            ])
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", common::output_text(&made));
    }
    let before = users();
    let out = setup("ccc-etl");
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert_eq!(users(), before, "setup.sh --prefix created a user");
    let p = |rel: &str| prefix.path().join(rel);
    let config = p("etc/ccc-etl/pipeline.toml");
    let env_file = p("etc/ccc-etl/env");
    let uid = |path: &Path| std::fs::metadata(path).unwrap().uid();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().mode() & 0o777;
    let user_uid: u32 = String::from_utf8(
        Command::new("id")
            .args(["-u", "ccc-etl"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .expect("the user ccc-etl");
    assert_ne!(user_uid, 0);
    assert_eq!(mode(&env_file), 0o600, "the secrets file");
    assert_eq!(uid(&env_file), user_uid);
    assert_eq!(uid(&p("var/log/ccc-etl/ccc-etl.log")), user_uid);
    assert_eq!(uid(&p("var/lib/node_exporter/textfile")), user_uid);
    let root_line = format!("root = \"{}\"", p("var/lib/ccc-etl/warehouse").display());
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains(&root_line),
        "an absolute root"
    );

    // The operator's part: the instances, the endpoint, the secrets.
    let shipped = std::fs::read_to_string(&config).unwrap();
    let edited = shipped
        .replace("instances = [\"ccc-test\"]", "instances = [\"ccc-deploy\"]")
        .replace(
            "# endpoint = \"https://ccc.cn-shanghai.aliyuncs.com\"",
            &format!("endpoint = \"{}\"", emu.endpoint()),
        );
    assert_ne!(edited, shipped);
    std::fs::write(&config, edited).unwrap();
    std::fs::write(
        &env_file,
        format!(
            "ALIBABA_CLOUD_ACCESS_KEY_ID={}\nALIBABA_CLOUD_ACCESS_KEY_SECRET={}\nDATABASE_URL={}\n\
             {}={}\n",
            common::KEY_ID,
            common::SECRET,
            db.url,
            // The job on the tests' clock, as the emulator is.
            ccc_etl::clock::ENV,
            common::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    )
    .unwrap();
    // Run again: what the operator edited stays.
    let again = setup("ccc-etl");
    assert!(again.status.success(), "{}", common::output_text(&again));
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("ccc-deploy")
    );
    assert!(
        std::fs::read_to_string(&env_file)
            .unwrap()
            .contains(common::KEY_ID)
    );

    // The systemd units as installed.
    let units = [
        p("etc/systemd/system/ccc-etl-nightly.service"),
        p("etc/systemd/system/ccc-etl-nightly.timer"),
    ];
    match Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            common::output_text(&out)
        ),
        Err(e) => panic!(
            "systemd-analyze verifies the installed units and is not installed here ({e}): \
             install Debian's systemd package (tests/run does)"
        ),
    }

    // The cron line, as cron runs it: the user it names, /bin/sh, a short environment.
    let (user, command) = cron_job(&p("etc/cron.d/ccc-etl"));
    assert_eq!(user, "ccc-etl");
    let run = tokio::process::Command::new("runuser")
        .args(["-u", &user, "--", "/bin/sh", "-c", &command])
        .env_clear()
        .envs(common::clock_env())
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", p("var/lib/ccc-etl"))
        .current_dir("/")
        .output()
        .await
        .unwrap();
    let log = std::fs::read_to_string(p("var/log/ccc-etl/ccc-etl.log")).unwrap();
    assert!(
        run.status.success(),
        "{}\nlog:\n{log}",
        common::output_text(&run)
    );
    assert!(
        log.lines()
            .any(|l| l.contains("\"message\":\"run started\"")),
        "JSON log lines in the log file: {log}"
    );
    let metrics = p("var/lib/node_exporter/textfile/ccc_etl_nightly.prom");
    assert!(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .contains("ccc_etl_last_run_exit_code"),
        "the metrics file"
    );
    assert_eq!(uid(&metrics), user_uid);
    let layout = ccc_etl::sink::parquet::Layout::new(p("var/lib/ccc-etl/warehouse"));
    let rows =
        common::sinks::parquet_contents(&ccc_etl::sink::parquet::Root::Local(layout.clone())).await;
    assert!(!rows.is_empty(), "the nightly run wrote the Parquet root");
    for f in layout.list().unwrap() {
        assert_eq!(uid(Path::new(&f.location)), user_uid, "{}", f.location);
    }
    db.drop_db().await;
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

#[test]
fn the_docs_show_the_deployment_files_as_they_are() {
    let docs = std::fs::read_to_string(Path::new(ROOT).join("docs/nightly.md")).unwrap();
    let cron = std::fs::read_to_string(deploy("cron/ccc-etl")).unwrap();
    let job = cron.lines().find(|l| l.starts_with("30 2 ")).unwrap();
    assert!(
        docs.contains(job),
        "docs/nightly.md shows the cron line of deploy/cron/ccc-etl"
    );
    let service = std::fs::read_to_string(deploy("systemd/ccc-etl-nightly.service")).unwrap();
    let exec = service
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .unwrap();
    assert!(
        docs.contains(exec),
        "docs/nightly.md shows the unit's ExecStart"
    );
    for file in [
        "deploy/setup.sh",
        "deploy/cron/ccc-etl",
        "deploy/systemd/ccc-etl-nightly.service",
        "deploy/systemd/ccc-etl-nightly.timer",
        "deploy/env.example",
        "deploy/k8s/cronjob.yaml",
        "deploy/Dockerfile",
        "deploy/build-image.sh",
    ] {
        assert!(docs.contains(file), "docs/nightly.md names {file}");
    }
}

/// The three schedules (cron, the systemd timer, the Kubernetes CronJob) name the same time
/// and zone, the shipped configuration's; systemd reads the timer's as a calendar event.
#[test]
fn cron_systemd_and_kubernetes_fire_at_the_same_local_time() {
    let read = |f: &str| std::fs::read_to_string(deploy(f)).unwrap();
    let value = |text: &str, key: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"))
            .trim()
            .trim_matches('"')
            .to_string()
    };
    let zone = value(include_str!("../../pipeline.toml"), "timezone = ");
    let zone = zone
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert_eq!(zone, "Asia/Shanghai");
    let cron = read("cron/ccc-etl");
    assert_eq!(value(&cron, "CRON_TZ="), zone, "cron's zone");
    let (user, _) = cron_job(&deploy("cron/ccc-etl"));
    assert_eq!(user, "ccc-etl");
    let timer = read("systemd/ccc-etl-nightly.timer");
    let on_calendar = value(&timer, "OnCalendar=");
    assert_eq!(on_calendar, format!("*-*-* 02:30:00 {zone}"), "the timer");
    let k8s = read("k8s/cronjob.yaml");
    assert_eq!(
        value(&k8s, "schedule:"),
        "30 2 * * *",
        "the CronJob's schedule"
    );
    assert_eq!(value(&k8s, "timeZone:"), zone, "the CronJob's zone");
    let configmap_zone = value(&k8s, "timezone = ");
    assert_eq!(configmap_zone, zone, "the CronJob's configuration");
    match Command::new("systemd-analyze")
        .args(["calendar", &on_calendar])
        .output()
    {
        Ok(out) => {
            let text = common::output_text(&out);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("02:30:00 Asia/Shanghai"), "{text}");
        }
        Err(e) => panic!(
            "systemd-analyze checks the timer and is not installed here ({e}): install \
             Debian's systemd package (tests/run does)"
        ),
    }
}

/// The shipped environment file reads the same to `sh` (the cron line sources it) as systemd
/// reads it: every value single-quoted, a URL's `&` kept.
#[test]
fn the_environment_file_reads_the_same_under_sh() {
    let text = std::fs::read_to_string(deploy("env.example")).unwrap();
    let assignment = regex::Regex::new(r"^[A-Z_][A-Z0-9_]*='[^']*'$").unwrap();
    let mut expected = vec![];
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(assignment.is_match(line), "not NAME='value': {line}");
        let (name, value) = line.split_once('=').unwrap();
        expected.push((name.to_string(), value.trim_matches('\'').to_string()));
    }
    let url = &expected
        .iter()
        .find(|(n, _)| n == "DATABASE_URL")
        .unwrap()
        .1;
    assert!(url.contains('&'), "the example shows a URL with `&`: {url}");
    for (name, value) in &expected {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "set -a; . {}; set +a; printf %s \"${name}\"",
                deploy("env.example").display()
            ))
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        assert_eq!(
            &String::from_utf8(out.stdout).unwrap(),
            value,
            "{name} under sh"
        );
    }
}
