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
    if !instances.is_empty() {
        validate_instances(instances).map_err(|e| InputError::new(format!("--instances: {e}")))?;
        let list: Vec<String> = instances.iter().map(|i| format!("{i:?}")).collect();
        text = text.replacen(
            "instances = [\"ccc-test\"]",
            &format!("instances = [{}]", list.join(", ")),
            1,
        );
    }
    if emulator {
        let commented = "# endpoint = \"https://ccc.cn-shanghai.aliyuncs.com\"";
        debug_assert!(text.contains(commented));
        text = text.replacen(
            commented,
            "endpoint = \"http://127.0.0.1:8080\"   # `ccc-etl emulator --listen 127.0.0.1:8080`",
            1,
        );
    }
    Config::from_toml(&text, &path.display().to_string())?;
    std::fs::write(path, &text)
        .map_err(|e| InputError::new(format!("cannot write {}: {e}", path.display())))?;
    crate::outln!(
        "wrote {}: edit [pipeline] instances, export the credentials, then run `ccc-etl --config {} check`",
        path.display(),
        path.display()
    )?;
    Ok(EXIT_OK)
}
