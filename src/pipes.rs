//! Dagster Pipes, the external side: when Dagster starts ccc-etl through a Pipes session
//! (`DAGSTER_PIPES_CONTEXT` and `DAGSTER_PIPES_MESSAGES` set), a run tells it that it opened,
//! what it materialized (rows per table, windows, requests: the asset's metadata) and that it
//! closed. The protocol (version 0.1): each variable is base64 of zlib of a JSON object; the
//! messages go as JSON lines to the file its `path` names, or to stderr/stdout (`stdio`).

use std::io::{Read as _, Write as _};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::pipeline::RunSummary;

const CONTEXT_ENV: &str = "DAGSTER_PIPES_CONTEXT";
const MESSAGES_ENV: &str = "DAGSTER_PIPES_MESSAGES";

/// Where a Pipes session's messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Channel {
    File(std::path::PathBuf),
    Stderr,
    Stdout,
}

/// The Pipes session this process runs in, if Dagster started it through one.
#[derive(Debug, Clone)]
pub struct Session {
    channel: Channel,
    /// The asset in scope (the context's only asset key).
    asset_key: Option<String>,
}

/// A parameter as Dagster encodes it: base64 of zlib of JSON.
fn decode(value: &str) -> Result<Value, String> {
    let packed = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(packed.as_slice())
        .read_to_string(&mut text)
        .map_err(|e| format!("not zlib: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
}

impl Session {
    /// The session of the environment: `Ok(None)` outside Dagster, an error for a session that
    /// cannot be used (said before any work).
    pub fn from_env() -> Result<Option<Session>, String> {
        let (Ok(context), Ok(messages)) = (std::env::var(CONTEXT_ENV), std::env::var(MESSAGES_ENV))
        else {
            return Ok(None);
        };
        let params = decode(&messages).map_err(|e| format!("{MESSAGES_ENV}: {e}"))?;
        let channel = match (params["path"].as_str(), params["stdio"].as_str()) {
            (Some(path), _) => Channel::File(path.into()),
            (None, Some("stdout")) => Channel::Stdout,
            (None, Some(_)) => Channel::Stderr,
            (None, None) => return Err(format!("{MESSAGES_ENV}: no `path` nor `stdio`: {params}")),
        };
        let context = match decode(&context).map_err(|e| format!("{CONTEXT_ENV}: {e}"))? {
            Value::Object(c) if c.contains_key("path") => {
                let path = c["path"].as_str().unwrap_or_default();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{CONTEXT_ENV}: cannot read {path}: {e}"))?;
                serde_json::from_str(&text).map_err(|e| format!("{CONTEXT_ENV}: {path}: {e}"))?
            }
            other => other,
        };
        let asset_key = context["asset_keys"]
            .as_array()
            .filter(|keys| keys.len() == 1)
            .and_then(|keys| keys[0].as_str())
            .map(str::to_string);
        Ok(Some(Session { channel, asset_key }))
    }

    fn write(&self, method: &str, params: Value) -> std::io::Result<()> {
        let line = json!({"__dagster_pipes_version": "0.1", "method": method, "params": params});
        match &self.channel {
            Channel::File(path) => {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)?;
                writeln!(f, "{line}")
            }
            Channel::Stderr => writeln!(std::io::stderr(), "{line}"),
            Channel::Stdout => writeln!(std::io::stdout(), "{line}"),
        }
    }

    /// The first message: the process is up.
    pub fn opened(&self) {
        self.send("opened", json!({"extras": {}}));
    }

    /// The asset's materialization, with the run's figures as metadata; only a run that
    /// committed every window materializes (any other exit fails the Dagster step).
    pub fn report(&self, summary: &RunSummary) {
        if summary.exit_code() != crate::error::EXIT_OK {
            return;
        }
        let int = |v: u64| json!({"raw_value": v, "type": "int"});
        let mut metadata = serde_json::Map::new();
        for (table, rows) in &summary.rows {
            metadata.insert(format!("rows_{table}"), int(*rows));
        }
        metadata.insert("windows_ok".into(), int(summary.windows_ok));
        metadata.insert(
            "windows_already_committed".into(),
            int(summary.windows_skipped_committed),
        );
        metadata.insert("requests".into(), int(summary.requests));
        metadata.insert("revisions".into(), int(summary.revisions));
        metadata.insert(
            "run_id".into(),
            json!({"raw_value": summary.run_id, "type": "text"}),
        );
        let params =
            json!({"asset_key": self.asset_key, "data_version": null, "metadata": metadata});
        self.send("report_asset_materialization", params);
    }

    /// The last message.
    pub fn closed(&self) {
        self.send("closed", json!({}));
    }

    fn send(&self, method: &str, params: Value) {
        if let Err(e) = self.write(method, params) {
            tracing::warn!(error = %e, method, "cannot write a Dagster Pipes message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Value) -> String {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(v.to_string().as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap())
    }

    #[test]
    fn a_parameter_decodes_as_dagster_encodes_it() {
        let v = json!({"path": "/tmp/messages", "n": [1, 2]});
        assert_eq!(decode(&encode(&v)).unwrap(), v);
        assert!(decode("not base64 !").unwrap_err().contains("base64"));
        let plain = base64::engine::general_purpose::STANDARD.encode(b"{}");
        assert!(decode(&plain).unwrap_err().contains("zlib"));
    }
}
