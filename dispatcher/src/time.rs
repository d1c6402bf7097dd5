//! The dispatcher's name for the shared times of [`protocol::view`], kept so
//! that `crate::time::now_ms` reads the same everywhere in the crate.

pub use protocol::view::{now_ms, rfc3339};
