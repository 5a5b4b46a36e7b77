//! `pipeline.toml` for the tests that run the binary: built as a TOML table and serialized, so
//! every test writes valid TOML with the same keys the shipped file uses.

use std::path::{Path, PathBuf};

/// A configuration file under construction.
#[derive(Debug, Clone)]
pub struct ConfigToml(toml::Table);

impl ConfigToml {
    /// `[source] endpoint` and `[pipeline] instances`: the least a run needs.
    pub fn new(endpoint: &str, instances: &[&str]) -> Self {
        Self(toml::Table::new())
            .set("source", "endpoint", endpoint)
            .instances(instances)
    }

    /// `[pipeline] instances`, replaced.
    pub fn instances(self, instances: &[&str]) -> Self {
        let list: Vec<toml::Value> = instances.iter().map(|i| (*i).into()).collect();
        self.set("pipeline", "instances", list)
    }

    /// `key = value` in `[section]` (a dotted section is a sub-table: `source.endpoints`).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        let mut table = &mut self.0;
        for part in section.split('.') {
            table = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("a section is a table");
        }
        table.insert(key.to_string(), value.into());
        self
    }

    /// Removes `key` from `[section]`.
    pub fn unset(mut self, section: &str, key: &str) -> Self {
        if let Some(t) = self.0.get_mut(section).and_then(|s| s.as_table_mut()) {
            t.remove(key);
        }
        self
    }

    /// `[postgres]` on, schema `ccc` (the URL from `DATABASE_URL`).
    pub fn postgres(self) -> Self {
        self.set("postgres", "schema", "ccc")
    }

    /// `[parquet] root`.
    pub fn parquet(self, root: impl std::fmt::Display) -> Self {
        self.set("parquet", "root", root.to_string())
    }

    /// The file's text.
    pub fn text(&self) -> String {
        toml::to_string(&self.0).expect("a table serializes")
    }

    /// Writes the file at `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.text()).expect("write the configuration");
    }

    /// Writes `pipeline.toml` in `dir`, returning its path.
    pub fn write_in(&self, dir: &Path) -> PathBuf {
        let path = dir.join("pipeline.toml");
        self.write(&path);
        path
    }
}

/// An inline table `{ id = "...", region = "..." }` of `[pipeline] instances`.
pub fn instance_in(id: &str, region: &str) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("id".into(), id.into());
    t.insert("region".into(), region.into());
    toml::Value::Table(t)
}
