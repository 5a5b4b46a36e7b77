//! `[postgres]`: the database URL (or `DATABASE_URL`) and the schema.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use super::ENV_DATABASE_URL;
use crate::error::InputError;

/// `[postgres]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL; falls back to `DATABASE_URL`. May carry a password, so it never prints.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// Schema holding the tables, views and ledger.
    #[serde(default = "default_schema")]
    pub schema: SchemaName,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_ref().map(|_| "[redacted]"))
            .field("schema", &self.schema)
            .finish()
    }
}

pub(super) fn default_schema() -> SchemaName {
    SchemaName("ccc".into())
}

impl PostgresConfig {
    /// The URL from the file, else from `DATABASE_URL`.
    pub fn resolve_url(&self) -> Result<SecretString, InputError> {
        let (url, from) = match &self.url {
            Some(url) => (url.clone(), "[postgres] url"),
            None => match std::env::var(ENV_DATABASE_URL) {
                Ok(v) if !v.trim().is_empty() => (SecretString::from(v), ENV_DATABASE_URL),
                _ => {
                    return Err(InputError::new(format!(
                        "[postgres] is configured but has no url and {ENV_DATABASE_URL} is not set: \
                         export {ENV_DATABASE_URL}=postgres://user@host:5432/database, or delete \
                         [postgres] from the configuration to write Parquet alone"
                    )));
                }
            },
        };
        // Only the scheme is shown: the rest may carry a password.
        let text = url.expose_secret();
        let scheme = text.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("postgres" | "postgresql")) {
            return Err(InputError::new(format!(
                "{from} is not a PostgreSQL URL: it must start with postgres:// or postgresql:// \
                 (postgres://user[:password]@host[:port]/database){}",
                scheme.map(|s| format!(", not {s}://")).unwrap_or_default()
            )));
        }
        Ok(url)
    }
}

/// A PostgreSQL schema name: lower-case letters, digits and `_`, not starting with a digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    /// Validates an identifier; nothing that would need quoting, nothing reserved to PostgreSQL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with("pg_");
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "invalid schema name {s:?}: use 1-63 lower-case letters, digits or _, \
                 starting with a letter or _ (and not pg_)"
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted as an SQL identifier (it is validated, the quotes are belt and braces).
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl<'de> Deserialize<'de> for SchemaName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SchemaName::parse(&s).map_err(serde::de::Error::custom)
    }
}
