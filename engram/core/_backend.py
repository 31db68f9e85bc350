"""Backend selection: the Rust module ``engram_core`` when importable, else the fallback.

``ENGRAM_CORE_BACKEND`` = ``auto`` (default: Rust if importable), ``rust`` (fail if it is
not) or ``python`` (force the pure-Python fallback). Both backends satisfy :class:`Backend`:
the same functions with the same signatures, giving the same bytes.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any, Protocol, cast

ENV_VAR = "ENGRAM_CORE_BACKEND"
CHOICES = ("auto", "rust", "python")


class Backend(Protocol):
    """The low-level API both ``engram_core`` and ``engram.core._fallback`` implement."""

    __version__: str
    MAX_DEPTH: int
    THREADS: int

    def canonical_json(
        self, metadata: dict[str, Any], model_version: str | None = None
    ) -> bytes: ...
    def float_repr(self, value: float) -> str: ...
    def float_reprs(self, values: Any) -> list[str]: ...
    def embedding_hash(self, vec: Any) -> str: ...
    def embedding_hashes(self, matrix: Any) -> list[str]: ...
    def compute_cid(self, vec: Any, metadata: dict[str, Any], model_version: str) -> str: ...
    def compute_cids(
        self, matrix: Any, metadatas: list[dict[str, Any]], model_version: str
    ) -> list[str]: ...
    def content_cid(self, data: bytes | bytearray) -> str: ...
    def new_nonce(self) -> str: ...
    def proof_v1(self, nonce_hex: str, embedding_hash_hex: str) -> str: ...
    def proofs_v1(self, nonces_hex: list[str], embedding_hashes_hex: list[str]) -> list[str]: ...
    def proof_v2(self, validator_hotkey_hex: str, nonce_hex: str, vec: Any) -> str: ...
    def proofs_v2(
        self, validator_hotkey_hex: str, nonces_hex: list[str], matrix: Any
    ) -> list[str]: ...
    def verify_proof_v1(
        self,
        nonce_hex: str,
        embedding_hash_hex: str,
        proof_hex: str,
        expires_at: int,
        now: float,
    ) -> bool: ...
    def verify_proof_v2(
        self,
        validator_hotkey_hex: str,
        nonce_hex: str,
        vec: Any,
        proof_hex: str,
        expires_at: int,
        now: float,
    ) -> bool: ...
    def merkle_leaf(self, cid: str, embedding_hash_hex: str) -> str: ...
    def merkle_root(self, leaves: list[tuple[str, str]]) -> str: ...
    def merkle_proof(self, leaves: list[tuple[str, str]], index: int) -> list[tuple[str, str]]: ...
    def verify_merkle_proof(
        self, root_hex: str, leaf: tuple[str, str], proof: list[tuple[str, str]]
    ) -> bool: ...


def _load_rust() -> tuple[ModuleType | None, str | None]:
    try:
        import engram_core
    except ImportError as exc:
        return None, str(exc)
    return engram_core, None


def _load_python() -> ModuleType:
    from engram.core import _fallback

    return _fallback


RUST_MODULE, RUST_IMPORT_ERROR = _load_rust()


def backends() -> dict[str, Backend]:
    """Every backend available here, by name (``python`` always; ``rust`` if installed)."""
    out: dict[str, Backend] = {}
    if RUST_MODULE is not None:
        out["rust"] = cast(Backend, RUST_MODULE)
    out["python"] = cast(Backend, _load_python())
    return out


def requested() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ImportError(f"{ENV_VAR}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


@functools.cache
def selected() -> tuple[str, Backend]:
    """The backend in use, chosen once per process (see :func:`select`)."""
    return select()


def select() -> tuple[str, Backend]:
    """The backend named by ``ENGRAM_CORE_BACKEND`` (ImportError if it cannot be had)."""
    want = requested()
    if want == "python" or (want == "auto" and RUST_MODULE is None):
        return "python", cast(Backend, _load_python())
    if RUST_MODULE is None:
        raise ImportError(
            f"{ENV_VAR}=rust but the engram_core extension is not importable "
            f"({RUST_IMPORT_ERROR}); install it with `pip install ./engram-core`"
        )
    return "rust", cast(Backend, RUST_MODULE)
