"""The engram-core functions the miner uses, from :mod:`engram.core`.

A minimal pure-Python stand-in is used only while ``engram.core`` does not provide them
yet (it is written concurrently); it follows PROTOCOL.md for string/int metadata.
TODO(lead): delete the stand-in once ``engram.core`` exports these names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import numpy as np

try:
    from engram.core import (  # type: ignore[attr-defined]
        compute_cids,
        embedding_hash,
        proof_v1,
        proof_v2,
    )

    NATIVE = True
except ImportError:  # pragma: no cover - only before engram.core lands
    NATIVE = False

    def _f32(vec: Any) -> bytes:
        return np.ascontiguousarray(vec, dtype="<f4").tobytes()

    def embedding_hash(vec: Any) -> str:
        return hashlib.sha256(_f32(vec)).hexdigest()

    def compute_cids(matrix: Any, metadatas: list[dict[str, Any]], model_version: str) -> list[str]:
        out = []
        for vec, meta in zip(matrix, metadatas, strict=True):
            body = json.dumps(
                {**meta, "model_version": model_version},
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=True,
                allow_nan=False,
            ).encode()
            out.append("v1::" + hashlib.sha256(_f32(vec) + body).hexdigest())
        return out

    def proof_v1(nonce_hex: str, embedding_hash_hex: str) -> str:
        return hmac.new(
            bytes.fromhex(nonce_hex), embedding_hash_hex.encode("ascii"), hashlib.sha256
        ).hexdigest()

    def proof_v2(validator_hotkey_hex: str, nonce_hex: str, vec: Any) -> str:
        key = hashlib.sha256(bytes.fromhex(validator_hotkey_hex) + bytes.fromhex(nonce_hex))
        return hmac.new(key.digest(), _f32(vec), hashlib.sha256).hexdigest()


__all__ = ["NATIVE", "compute_cids", "embedding_hash", "proof_v1", "proof_v2"]
