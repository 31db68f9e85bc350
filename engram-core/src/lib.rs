//! engram-core: the consensus-critical bytes of Engram.
//!
//! Every function here has a pure-Python twin in `engram/core/_fallback.py` that must give
//! identical bytes; the shared vectors in `tests/vectors/` hold both to that. The byte
//! layouts are specified in `docs/protocol.md`.
//!
//! The `python` feature (on by default) adds the PyO3 module `engram_core`; without it the
//! crate is plain Rust (`cargo test --no-default-features`).

// Embedding bytes are hashed where they lie, as little-endian float32.
#[cfg(target_endian = "big")]
compile_error!("engram-core assumes a little-endian host (f32 memory == f32_le bytes)");

pub mod canon;
pub mod cid;
pub mod error;
pub mod merkle;
pub mod par;
pub mod proof;
pub mod shortest;

#[cfg(feature = "python")]
mod buffer;
#[cfg(feature = "python")]
mod py;

pub use error::{CoreError, ErrorKind, Result};
