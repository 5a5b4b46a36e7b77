//! `ccc-etl init`: a commented `pipeline.toml` to start from.

use std::path::Path;

use crate::config::{Config, validate_instances};
use crate::error::{EXIT_OK, InputError};

/// The shipped, commented configuration.
const TEMPLATE: &str = include_str!("../../pipeline.toml");

/// Writes the template to `path` with the given instances (and the local emulator's endpoint),
/// refusing to overwrite an existing file. The result is checked by loading it.
pub(crate) fn run_init(path: &Path, instances: &[String], emulator: bool) -> anyhow::Result<u8> {
    if path.exists() {
        return Err(InputError::new(format!(
            "{} exists; init never overwrites a configuration (move it away, or edit it)",
            path.display()
        ))
        .into());
    }
    let mut text = TEMPLATE.to_string();
    let instances: Vec<String> = match (instances.is_empty(), emulator) {
        (false, _) => instances.to_vec(),
        // The instances `ccc-etl emulator` serves in its example.
        (true, true) => EMULATOR_INSTANCES.iter().map(|s| s.to_string()).collect(),
        (true, false) => vec![],
    };
    if !instances.is_empty() {
        validate_instances(&instances).map_err(|e| InputError::new(format!("--instances: {e}")))?;
        let list: Vec<String> = instances.iter().map(|i| format!("{i:?}")).collect();
        text = text.replacen(
            "instances = [\"ccc-test\"]",
            &format!("instances = [{}]", list.join(", ")),
            1,
        );
    }
    if emulator {
        // Both lines of the commented endpoint, replaced whole.
        let start = text
            .find(ENDPOINT_COMMENT)
            .expect("the template's endpoint line");
        let end = start
            + text[start..]
                .find(ENDPOINT_COMMENT_END)
                .expect("its second line")
            + ENDPOINT_COMMENT_END.len();
        text.replace_range(
            start..end,
            "endpoint = \"http://127.0.0.1:8080\"  # the local emulator: `ccc-etl emulator --listen 127.0.0.1:8080`",
        );
    }
    Config::from_toml(&text, &path.display().to_string())?;
    std::fs::write(path, &text)
        .map_err(|e| InputError::new(format!("cannot write {}: {e}", path.display())))?;
    crate::outln!("wrote {}", path.display())?;
    for step in next_steps(path, &instances, emulator) {
        crate::outln!("{step}")?;
    }
    Ok(EXIT_OK)
}

/// The instances `ccc-etl emulator` serves in its help and docs.
const EMULATOR_INSTANCES: [&str; 2] = ["ccc-test", "ccc-b"];
/// The key pair the emulator is started with in its help and docs.
const EMULATOR_KEYS: &str =
    "ALIBABA_CLOUD_ACCESS_KEY_ID=demo ALIBABA_CLOUD_ACCESS_KEY_SECRET=demo-secret";
/// The template's commented endpoint: its first line's start, and its second line's end.
const ENDPOINT_COMMENT: &str = "# endpoint = \"https://ccc.cn-shanghai.aliyuncs.com\"";
const ENDPOINT_COMMENT_END: &str = "e.g. `ccc-etl emulator`)";

/// What the written configuration needs before `check` passes, in order.
fn next_steps(path: &Path, instances: &[String], emulator: bool) -> Vec<String> {
    let mut steps = vec!["next:".to_string()];
    if instances.is_empty() {
        steps.push(format!(
            "  - put your CCC instance ids in [pipeline] instances of {} (or run init again with --instances ID,...)",
            path.display()
        ));
    }
    if std::env::var(crate::config::ENV_DATABASE_URL).is_ok_and(|v| !v.trim().is_empty()) {
        steps.push("  - PostgreSQL: DATABASE_URL is set; the tables go to schema ccc".into());
    } else {
        steps.push(
            "  - PostgreSQL: export DATABASE_URL=postgres://USER@HOST:5432/DATABASE (a database the \
             user may create schema ccc in), or delete the [postgres] section to write Parquet only"
                .into(),
        );
    }
    if emulator {
        steps.push(format!(
            "  - the emulator, in another terminal: {EMULATOR_KEYS} ccc-etl emulator --listen 127.0.0.1:8080 --instances {}",
            instances.join(",")
        ));
        steps.push(format!("  - its keys, here too: export {EMULATOR_KEYS}"));
    } else if [
        crate::config::ENV_ACCESS_KEY_ID,
        crate::config::ENV_ACCESS_KEY_SECRET,
    ]
    .iter()
    .all(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
    {
        steps.push("  - credentials: the AccessKey in the environment (check tries it)".into());
    } else {
        steps.push(
            "  - credentials: export ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, \
             or use a RAM role (RRSA, ECS), a CLI profile or a credentials file: see \
             docs/configuration.md, Credentials"
                .into(),
        );
    }
    steps.push(format!(
        "  - then: ccc-etl --config {} check",
        path.display()
    ));
    steps
}
