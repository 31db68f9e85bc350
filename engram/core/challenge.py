"""Storage challenges: issue one, answer it (the miner), verify the answer (the validator).

The bytes (proofs, constant-time comparison, expiry) come from the selected backend; this
module adds the challenge record and replay protection.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from engram.core._backend import Backend, selected
from engram.core._fallback import _hotkey
from engram.core.errors import ChallengeReplayed, InvalidArgument, InvalidEmbedding

DEFAULT_TTL_S = 60
PROOF_VERSIONS = (1, 2)


def _default_backend() -> Backend:
    return selected()[1]


@dataclass(frozen=True, slots=True)
class Challenge:
    """What a validator sends: prove you hold ``cid`` before ``expires_at`` (unix s)."""

    cid: str
    nonce_hex: str
    expires_at: int
    validator_hotkey_hex: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Challenge:
        return cls(
            cid=str(d["cid"]),
            nonce_hex=str(d["nonce_hex"]),
            expires_at=int(d["expires_at"]),
            validator_hotkey_hex=str(d["validator_hotkey_hex"]),
        )


class NonceStore:
    """Remembers answered nonces until their challenge expires (after which the expiry
    check rejects them anyway). Thread-safe; memory is bounded by the live challenges."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, nonce_hex: object) -> bool:
        return isinstance(nonce_hex, str) and nonce_hex.lower() in self._seen

    def consume(self, nonce_hex: str, expires_at: int, now: float | None = None) -> None:
        """Record ``nonce_hex``; raise :class:`ChallengeReplayed` if it was seen before."""
        key = nonce_hex.lower()
        t = time.time() if now is None else now
        with self._lock:
            while self._heap and self._heap[0][0] <= t:
                _, old = heapq.heappop(self._heap)
                self._seen.pop(old, None)
            if key in self._seen:
                raise ChallengeReplayed(f"nonce {key[:16]}... was already used")
            self._seen[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))


def new_challenge(
    cid: str,
    validator_hotkey_hex: str,
    ttl_s: int = DEFAULT_TTL_S,
    *,
    now: float | None = None,
    backend: Backend | None = None,
) -> Challenge:
    """A fresh challenge: 32 random bytes from the OS CSPRNG, expiring in ``ttl_s``."""
    if not isinstance(cid, str) or not cid:
        raise InvalidArgument("cid must be a non-empty str")
    _hotkey(validator_hotkey_hex)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise InvalidArgument(f"ttl_s must be a positive int, got {ttl_s!r}")
    b = backend or _default_backend()
    t = time.time() if now is None else now
    return Challenge(
        cid=cid,
        nonce_hex=b.new_nonce(),
        expires_at=int(t) + ttl_s,
        validator_hotkey_hex=validator_hotkey_hex.lower(),
    )


def answer(
    challenge: Challenge,
    *,
    version: int = 2,
    vec: Any = None,
    embedding_hash: str | None = None,
    backend: Backend | None = None,
) -> str:
    """The miner's proof for ``challenge`` (v2 needs ``vec``; v1 ``vec`` or the hash)."""
    b = backend or _default_backend()
    if version == 2:
        if vec is None:
            raise InvalidEmbedding("a v2 proof needs the embedding (vec=...)")
        return b.proof_v2(challenge.validator_hotkey_hex, challenge.nonce_hex, vec)
    if version == 1:
        eh = _v1_hash(b, vec, embedding_hash)
        return b.proof_v1(challenge.nonce_hex, eh)
    raise InvalidArgument(f"proof version must be one of {PROOF_VERSIONS}, got {version!r}")


def _v1_hash(b: Backend, vec: Any, embedding_hash: str | None) -> str:
    if embedding_hash is not None:
        return embedding_hash
    if vec is None:
        raise InvalidEmbedding("a v1 proof needs vec=... or embedding_hash=...")
    return b.embedding_hash(vec)


def verify_proof(
    challenge: Challenge,
    proof_hex: str,
    *,
    version: int = 2,
    vec: Any = None,
    embedding_hash: str | None = None,
    now: float | None = None,
    nonce_store: NonceStore | None = None,
    backend: Backend | None = None,
) -> bool:
    """True if ``proof_hex`` answers ``challenge``; compares in constant time.

    Raises :class:`ChallengeExpired` once ``now >= expires_at`` and, with a
    ``nonce_store``, :class:`ChallengeReplayed` for a nonce already answered (each
    challenge gets one answer, right or wrong). A malformed proof is just ``False``.
    """
    b = backend or _default_backend()
    t = time.time() if now is None else now
    c = challenge
    if version == 2:
        if vec is None:
            raise InvalidEmbedding("verifying a v2 proof needs the embedding (vec=...)")
        ok = b.verify_proof_v2(c.validator_hotkey_hex, c.nonce_hex, vec, proof_hex, c.expires_at, t)
    elif version == 1:
        eh = _v1_hash(b, vec, embedding_hash)
        ok = b.verify_proof_v1(c.nonce_hex, eh, proof_hex, c.expires_at, t)
    else:
        raise InvalidArgument(f"proof version must be one of {PROOF_VERSIONS}, got {version!r}")
    if nonce_store is not None:
        nonce_store.consume(c.nonce_hex, c.expires_at, t)
    return ok
