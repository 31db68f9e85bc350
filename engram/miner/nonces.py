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
"""

from __future__ import annotations

import re

import nats.errors
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from streams.errors import InputError, Unavailable

__all__ = ["BTAUTH_BUCKET", "CHALLENGE_BUCKET", "NonceStoreUnavailable", "SharedNonces"]

BTAUTH_BUCKET = "engram_btauth_nonces"
CHALLENGE_BUCKET = "engram_challenge_nonces"
_KEY = re.compile(r"[-/_=.A-Za-z0-9]{1,256}")
_DOWN = (nats.errors.Error, TimeoutError, OSError)


class NonceStoreUnavailable(Unavailable):
    """The shared replay store did not answer: the request is refused (503), never let
    through unchecked."""


class SharedNonces:
    """Create-only claims in a KV bucket with a TTL."""

    def __init__(self, kv: KeyValue, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str, ttl_s: float, *, replicas: int = 1
    ) -> SharedNonces:
        """Bind to ``bucket``, creating it with ``ttl_s`` if missing (an existing bucket
        keeps its own TTL)."""
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            config = api.KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, replicas=replicas)
            kv = await js.create_key_value(config)
        return cls(kv, ttl_s)

    async def claim(self, key: str) -> bool:
        """True the first time ``key`` is claimed within the TTL, False after."""
        if not _KEY.fullmatch(key):
            raise InputError(f"not a replay-store key: {key[:80]!r}")
        try:
            await self.kv.create(key, b"")
        except KeyWrongLastSequenceError:
            return False
        except _DOWN as exc:
            raise NonceStoreUnavailable(f"the replay store is unreachable: {exc!r}") from exc
        return True
