//! What went wrong with a Parquet root, a local directory or an object store alike: where and
//! what, on one line and scrubbed of secrets, and what it means for the run (a [`Failure`]). The kind is read
//! from the store's own error (object_store's error kinds, `std::io::ErrorKind`), never from its
//! text.

pub use crate::sink::Failure;

/// What an object store's error means, from its kind: permission denied (403), not
/// authenticated (401) or a missing bucket (404 where a write or a read of a known key went; a
/// missing day file is not an error) refuse this configuration; anything else (throttling, a 5xx,
/// a timeout, a reset) may pass.
pub fn failure_of(e: &object_store::Error) -> Failure {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::NotFound { .. } => Failure::Refused,
        _ => Failure::Transient,
    }
}

/// A Parquet root's error, with the store's own error kept.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RootError {
    /// What failed, where, and why.
    pub message: String,
    /// What it means for the run.
    pub kind: Failure,
    /// The store's error (object_store's, or the file system's), when there is one: kept to be
    /// inspected, deliberately not the `source` of this error, so that printing an error chain
    /// never prints the store's unscrubbed text (which may name a signed URL or a key).
    pub cause: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl RootError {
    /// `what` failed on an object store with `e` (`detail`: its text, already scrubbed).
    pub fn store(what: &str, e: object_store::Error, detail: &str) -> Self {
        Self {
            message: format!("{what}: {detail}"),
            kind: failure_of(&e),
            cause: Some(std::sync::Arc::new(e)),
        }
    }

    /// `what` failed on a local file system with `e`.
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem => Failure::Refused,
            _ => Failure::Transient,
        };
        Self {
            message: format!("{what}: {e}"),
            kind,
            cause: Some(std::sync::Arc::new(e)),
        }
    }

    /// A failure a later attempt may not meet.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: Failure::Transient,
            cause: None,
        }
    }

    /// What the root holds is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: Failure::Permanent,
            cause: None,
        }
    }

    /// Whether a later attempt in this run may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == Failure::Transient
    }

    /// Whether the store refuses this configuration: the run stops.
    pub fn refuses(&self) -> bool {
        self.kind == Failure::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_comes_from_the_error_not_its_text() {
        let denied = object_store::Error::PermissionDenied {
            path: "b/k".into(),
            source: "timeout while retrying".into(),
        };
        let slow = object_store::Error::Generic {
            store: "S3",
            source: "access denied".into(),
        };
        let refused = RootError::store("cannot write", denied, "x");
        assert!(refused.refuses());
        // The store's error is kept, but never printed with the chain.
        let cause = refused.cause.as_ref().expect("the store's error");
        assert!(cause.to_string().contains("b/k"), "{cause}");
        assert!(std::error::Error::source(&refused).is_none());
        let e = RootError::store("cannot write", slow, "access denied");
        assert!(e.is_retryable() && !e.refuses());
        assert_eq!(e.to_string(), "cannot write: access denied");
        let ro = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        assert!(RootError::io("cannot write /r/x", ro).refuses());
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(RootError::io("cannot write /r/x", full).is_retryable());
        let bad = RootError::invalid("root.json is not a ccc-etl root description");
        assert!(!bad.is_retryable() && !bad.refuses());
    }
}
