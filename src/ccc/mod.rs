//! The remote API, both sides: signing, the wire format, the client, and the local emulator.

pub mod client;
pub mod emulator;
pub mod error;
pub mod ratelimit;
pub mod sign;
pub mod wire;
