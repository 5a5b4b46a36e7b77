//! Errors that decide the process exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every planned window committed to every sink |
//! | 1 | any other fatal error (credentials, permissions, clock, a sink that went away at start) |
//! | 2 | bad input: configuration, command line, dates, credentials missing |
//! | 3 | the run finished but some windows failed; they are listed |
//! | 4 | a check found a problem: `status` aging-out alert, `verify` differences |
//! | 5 | busy: another run holds the Parquet root's lock; nothing was done, try later |

/// Bad input from the user: a config file, a flag, a date, a missing variable. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl InputError {
    /// An input error with this message.
    pub fn new(msg: impl std::fmt::Display) -> Self {
        Self(msg.to_string())
    }
}

/// Exit code for a run where every window committed.
pub const EXIT_OK: u8 = 0;
/// Exit code for a fatal error that is not bad input.
pub const EXIT_FATAL: u8 = 1;
/// Exit code for bad input.
pub const EXIT_INPUT: u8 = 2;
/// Exit code for a run where some windows failed.
pub const EXIT_PARTIAL: u8 = 3;

/// Exit code for a check that found a problem (`status` alert, `verify` differences).
pub const EXIT_CHECK: u8 = 4;

/// Exit code when another run holds what this one needs (the Parquet root's lock).
pub const EXIT_BUSY: u8 = 5;

/// Another run holds what this one needs: not bad input, not a failure of this run. Exit code 5.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Busy(pub String);

/// The exit code an error maps to.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<InputError>().is_some() {
        EXIT_INPUT
    } else if err.downcast_ref::<Busy>().is_some() {
        EXIT_BUSY
    } else {
        EXIT_FATAL
    }
}
