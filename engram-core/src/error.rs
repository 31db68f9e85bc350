//! One error type for the whole crate. The Python layer maps each kind onto the exception
//! tree in `engram.core.errors` (see `py.rs`); nothing here can panic.

use std::fmt;

/// What went wrong, coarse enough to pick a Python exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// NaN/inf values, empty vectors, wrong shape, non-contiguous memory.
    InvalidEmbedding,
    /// Not a float32 buffer (or a list of numbers).
    InvalidEmbeddingDtype,
    /// Metadata that is not a JSON object of JSON values.
    InvalidMetadata,
    /// A string that should be hex is not, or has the wrong length.
    InvalidHex,
    /// A nonce that is not 32 bytes of hex.
    InvalidNonce,
    /// A validator hotkey that is not 32 bytes of hex.
    InvalidHotkey,
    /// A challenge whose `expires_at` has passed.
    ChallengeExpired,
    /// Empty leaf list, index out of range, malformed proof step.
    InvalidMerkleInput,
    /// An argument of the wrong Python type (not an embedding or metadata).
    InvalidArgument,
    /// The OS random source failed.
    Random,
}

impl ErrorKind {
    /// Name of the matching class in `engram.core.errors`.
    pub fn class_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidEmbedding => "InvalidEmbedding",
            ErrorKind::InvalidEmbeddingDtype => "InvalidEmbeddingDtype",
            ErrorKind::InvalidMetadata => "InvalidMetadata",
            ErrorKind::InvalidHex => "InvalidHex",
            ErrorKind::InvalidNonce => "InvalidNonce",
            ErrorKind::InvalidHotkey => "InvalidHotkey",
            ErrorKind::ChallengeExpired => "ChallengeExpired",
            ErrorKind::InvalidMerkleInput => "InvalidMerkleInput",
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::Random => "CoreError",
        }
    }

    /// Whether the matching builtin is `TypeError` (otherwise `ValueError`).
    pub fn is_type_error(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidEmbeddingDtype | ErrorKind::InvalidArgument
        )
    }
}

/// An error with its kind and a message meant for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.class_name(), self.message)
    }
}

impl std::error::Error for CoreError {}

pub type Result<T> = std::result::Result<T, CoreError>;

pub(crate) fn err<T>(kind: ErrorKind, message: impl Into<String>) -> Result<T> {
    Err(CoreError::new(kind, message))
}
