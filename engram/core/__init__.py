"""engram.core: Engram's consensus-critical bytes, one API over two backends.

CIDs, embedding hashes, canonical metadata JSON, storage challenges and proofs, and Merkle
commitments. The Rust extension ``engram_core`` is used when importable; the pure-Python
fallback (``engram.core._fallback``) gives identical bytes otherwise.
``ENGRAM_CORE_BACKEND=auto|rust|python`` chooses; :data:`BACKEND` says which is in use.
Byte layouts: docs/protocol.md.
"""

from typing import Any as _Any

from engram.core import _backend
from engram.core._backend import Backend, backends
from engram.core.challenge import (
    DEFAULT_TTL_S,
    Challenge,
    NonceStore,
    answer,
    new_challenge,
    verify_proof,
)
from engram.core.errors import (
    ChallengeError,
    ChallengeExpired,
    ChallengeReplayed,
    CoreError,
    InvalidArgument,
    InvalidEmbedding,
    InvalidEmbeddingDtype,
    InvalidHex,
    InvalidHotkey,
    InvalidMerkleInput,
    InvalidMetadata,
    InvalidNonce,
)

__all__ = [
    "BACKEND",
    "DEFAULT_TTL_S",
    "Backend",
    "Challenge",
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
    "NonceStore",
    "answer",
    "backend_info",
    "backends",
    "canonical_json",
    "compute_cid",
    "compute_cids",
    "content_cid",
    "embedding_hash",
    "embedding_hashes",
    "merkle_leaf",
    "merkle_proof",
    "merkle_root",
    "new_challenge",
    "proof_v1",
    "proof_v2",
    "proofs_v1",
    "proofs_v2",
    "verify_merkle_proof",
    "verify_proof",
]

BACKEND, _impl = _backend.selected()

canonical_json = _impl.canonical_json
embedding_hash = _impl.embedding_hash
embedding_hashes = _impl.embedding_hashes
compute_cid = _impl.compute_cid
compute_cids = _impl.compute_cids
content_cid = _impl.content_cid
proof_v1 = _impl.proof_v1
proofs_v1 = _impl.proofs_v1
proof_v2 = _impl.proof_v2
proofs_v2 = _impl.proofs_v2
merkle_leaf = _impl.merkle_leaf
merkle_root = _impl.merkle_root
merkle_proof = _impl.merkle_proof
verify_merkle_proof = _impl.verify_merkle_proof


def backend_info() -> dict[str, _Any]:
    """Which backend is in use and why (for ``engram doctor``)."""
    info: dict[str, _Any] = {
        "backend": BACKEND,
        "requested": _backend.requested(),
        "env_var": _backend.ENV_VAR,
        "rust_available": _backend.RUST_MODULE is not None,
        "version": _impl.__version__,
        "threads": _impl.THREADS,
    }
    if _backend.RUST_IMPORT_ERROR is not None:
        info["rust_import_error"] = _backend.RUST_IMPORT_ERROR
    return info
