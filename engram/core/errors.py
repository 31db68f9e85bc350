"""The one exception tree of ``engram.core``, shared by the Rust and the Python backend.

Every class derives from :class:`CoreError`, a ``ValueError``: these errors mean "the input
was wrong", never "the network failed". Type mistakes also derive from ``TypeError``.
The Rust module raises these very classes (it looks them up here by name).
"""

from __future__ import annotations

from streams.errors import InputError

__all__ = [
    "ChallengeError",
    "ChallengeExpired",
    "ChallengeReplayed",
    "CoreError",
    "InvalidArgument",
    "InvalidEmbedding",
    "InvalidEmbeddingDtype",
    "InvalidHex",
    "InvalidHotkey",
    "InvalidMerkleInput",
    "InvalidMetadata",
    "InvalidNonce",
]


class CoreError(InputError):
    """Base class: the bytes or arguments given to ``engram.core`` are not acceptable."""


class InvalidArgument(CoreError, TypeError):
    """An argument of the wrong Python type (e.g. a model version that is not a str)."""


class InvalidEmbedding(CoreError):
    """NaN/inf values, an empty vector, a wrong shape or non-contiguous memory."""


class InvalidEmbeddingDtype(InvalidEmbedding, TypeError):
    """Not a float32 array (native byte order) nor a list of numbers."""


class InvalidMetadata(CoreError):
    """Metadata that is not a JSON object of JSON values (see docs/protocol.md)."""


class InvalidHex(CoreError):
    """A string that must be hex is not, or decodes to the wrong length."""


class InvalidNonce(InvalidHex):
    """A challenge nonce that is not 32 bytes of hex."""


class InvalidHotkey(InvalidHex):
    """A validator hotkey that is not 32 bytes (64 hex characters)."""


class InvalidMerkleInput(CoreError):
    """No leaves, a leaf index out of range, or a malformed leaf or proof step."""


class ChallengeError(CoreError):
    """A storage challenge that can no longer be answered."""


class ChallengeExpired(ChallengeError):
    """The challenge's ``expires_at`` has passed."""


class ChallengeReplayed(ChallengeError):
    """The challenge's nonce was already used."""
