//! engram-core: the consensus-critical bytes of Engram.
//!
//! Every function here has a pure-Python twin in `engram/core/_fallback.py` that must give
//! identical bytes; the shared vectors in `tests/vectors/` hold both to that. The byte
//! layouts are specified in `docs/protocol.md`.
//!
//! The `python` feature (on by default) adds the PyO3 module `engram_core`; without it the
//! crate is plain Rust (`cargo test --no-default-features`).

pub mod canon;
pub mod cid;
pub mod error;
pub mod merkle;
pub mod par;
pub mod proof;

#[cfg(feature = "python")]
mod py;

pub use error::{CoreError, ErrorKind, Result};
