"""Replay stores shared by every axon process of a node (issue 8, "the btauth nonce store
is shared by every axon process of a node").

A :class:`SharedNonces` is a JetStream KV bucket on the node's bus whose entries expire
after the bucket's TTL; :meth:`SharedNonces.claim` is a create-only put, so of two
processes that see the same nonce at once exactly one wins — the server decides, not a
read-then-write. Two buckets:

* ``engram_btauth_nonces`` (:data:`BTAUTH_BUCKET`): a btauth/1 request's
  ``<receiver>.<sender>.<nonce_ns>``, kept for the freshness window plus the skew (an older
  nonce is refused as stale before the store is asked);
* ``engram_challenge_nonces`` (:data:`CHALLENGE_BUCKET`): a storage challenge's nonce, kept
  for ``MAX_CHALLENGE_AHEAD_S`` (no challenge lives longer).

The per-process stores stay in front of these (they answer a replay to the same process
without a round trip and bound the live challenges); the shared ones catch a replay sent
to another process.

While the bus is down (``available()`` False, or a claim that does not answer within
``timeout_s``) a claim falls back to the per-process store alone, counted in
``fallbacks`` and logged: the miner keeps answering signed queries from its local index
while NATS is away (docs/architecture.md, "Supervision and limits"), at the price of
cross-process replay detection for that time. A replayed challenge gets the same proof it
got the first time, and a btauth nonce is only fresh for ~10 s, so little is at stake.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import nats.errors
import structlog
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from streams.errors import InputError, Unavailable

__all__ = ["BTAUTH_BUCKET", "CHALLENGE_BUCKET", "NonceStoreUnavailable", "SharedNonces"]

BTAUTH_BUCKET = "engram_btauth_nonces"
CHALLENGE_BUCKET = "engram_challenge_nonces"
_KEY = re.compile(r"[-/_=.A-Za-z0-9]{1,256}")
_DOWN = (nats.errors.Error, TimeoutError, OSError)

log = structlog.get_logger("engram.miner.nonces")


class NonceStoreUnavailable(Unavailable):
    """The shared replay store cannot be opened (at start)."""


class SharedNonces:
    """Create-only claims in a KV bucket with a TTL."""

    def __init__(
        self,
        kv: KeyValue,
        ttl_s: float,
        *,
        available: Callable[[], bool] | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.kv = kv
        self.ttl_s = ttl_s
        self.available = available
        self.timeout_s = timeout_s
        self.fallbacks = 0  # claims answered by the per-process store alone (bus down)

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        bucket: str,
        ttl_s: float,
        *,
        replicas: int = 1,
        available: Callable[[], bool] | None = None,
    ) -> SharedNonces:
        """Bind to ``bucket``, creating it with ``ttl_s`` if missing (an existing bucket
        keeps its own TTL)."""
        try:
            try:
                kv = await js.key_value(bucket)
            except BucketNotFoundError:
                config = api.KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, replicas=replicas)
                kv = await js.create_key_value(config)
        except _DOWN as exc:
            raise NonceStoreUnavailable(f"cannot open KV bucket {bucket}: {exc!r}") from exc
        return cls(kv, ttl_s, available=available)

    async def claim(self, key: str) -> bool:
        """True the first time ``key`` is claimed within the TTL, False after (and True
        while the bus is down: the per-process store, asked first, decides alone)."""
        if not _KEY.fullmatch(key):
            raise InputError(f"not a replay-store key: {key[:80]!r}")
        if self.available is not None and not self.available():
            self.fallbacks += 1
            return True
        try:
            await asyncio.wait_for(self.kv.create(key, b""), self.timeout_s)
        except KeyWrongLastSequenceError:
            return False
        except _DOWN as exc:
            self.fallbacks += 1
            log.warning("replay store unreachable; per-process check only", error=repr(exc))
            return True
        return True
