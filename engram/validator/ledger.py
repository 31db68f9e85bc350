"""The probe ledger: what this validator ingested to which miner, with the vectors.

Ground truth the miners cannot see (issue 8): the evaluator embeds its probes itself and
records each CID's exact float32 vector here, and which miners it ingested it to. The
challenger picks CIDs to challenge from it; the verifier takes the vector to check a
proof; the evaluator runs its exact search over it. State lives in a JetStream KV bucket
(``engram_probes``) so every process of the validator shares it and a restart keeps it:

* ``vec.<sha256(cid) hex>``: msgpack ``{cid, vector (f32 little-endian bytes), dim}``;
* ``held.<miner hotkey ss58>``: msgpack list of the newest ``MAX_HELD`` probe CIDs
  ingested to that miner (compare-and-set on the entry's revision, so concurrent writers
  lose nothing);
* ``routed.<miner hotkey ss58>``: the same for *user* memories that routing assigned to
  that miner (ingested through :class:`~engram.validator.routed.RoutedClient`, or copied
  there by a repair): challenges sample these too, so a miner cannot keep the validator's
  probes and drop everyone else's memories.

Entries expire after ``TTL_S`` (7 days) unless rewritten: old probes stop being
challenged, and the bucket stays bounded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec
import numpy as np
import numpy.typing as npt
from nats.js import JetStreamContext, api
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from streams.retry import Backoff, retry

__all__ = ["BUCKET", "ProbeLedger", "ProbeRecord"]

BUCKET = "engram_probes"
#: probe CIDs (``held``) and user memories routed to a miner (``routed``)
KINDS = ("held", "routed")
MAX_HELD = 4096  # CIDs remembered per miner (a KV value stays far below its 1 MiB limit)
TTL_S = 7 * 24 * 3600.0
_CAS = Backoff(initial=0.005, maximum=0.2, jitter=0.5)


class ProbeRecord(msgspec.Struct, frozen=True):
    cid: str
    vector: bytes  # little-endian float32
    dim: int

    def array(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.vector, dtype="<f4").astype(np.float32)


def _cid_key(cid: str) -> str:
    return hashlib.sha256(cid.encode("utf-8")).hexdigest()


class ProbeLedger:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> ProbeLedger:
        try:
            kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                api.KeyValueConfig(bucket=BUCKET, history=1, replicas=replicas, ttl=TTL_S)
            )
        return cls(kv)

    async def record(self, miner_hotkey: str, cid: str, vector: npt.ArrayLike) -> None:
        """Remember ``cid``'s vector and that ``miner_hotkey`` was given it."""
        await self.record_many(miner_hotkey, [(cid, vector)])

    async def record_many(
        self,
        miner_hotkey: str,
        items: Iterable[tuple[str, npt.ArrayLike]],
        *,
        kind: str = "held",
    ) -> None:
        """``kind``: ``held`` (probes) or ``routed`` (user memories)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        items = list(items)
        for cid, vector in items:
            arr = np.ascontiguousarray(vector, dtype="<f4")
            rec = ProbeRecord(cid=cid, vector=arr.tobytes(), dim=int(arr.shape[0]))
            await self.kv.put(f"vec.{_cid_key(cid)}", msgspec.msgpack.encode(rec))
        new = [cid for cid, _v in items]

        async def once() -> None:
            held, rev = await self._held(miner_hotkey, kind)
            have = set(held)
            merged = (held + [c for c in new if c not in have])[-MAX_HELD:]
            data = msgspec.msgpack.encode(merged)
            if rev is None:
                await self.kv.create(f"{kind}.{miner_hotkey}", data)
            else:
                await self.kv.update(f"{kind}.{miner_hotkey}", data, last=rev)

        await retry(
            once, what="probe ledger update", retry_on=(KeyWrongLastSequenceError,), backoff=_CAS
        )

    async def vector(self, cid: str) -> ProbeRecord | None:
        try:
            entry = await self.kv.get(f"vec.{_cid_key(cid)}")
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return msgspec.msgpack.decode(entry.value or b"", type=ProbeRecord)

    async def cids_for(self, miner_hotkey: str) -> list[str]:
        """The CIDs ingested to ``miner_hotkey``, oldest first."""
        held, _rev = await self._held(miner_hotkey)
        return held

    async def routed_for(self, miner_hotkey: str) -> list[str]:
        """The user memories routed (or repaired) to ``miner_hotkey``, oldest first."""
        held, _rev = await self._held(miner_hotkey, "routed")
        return held

    async def _held(self, miner_hotkey: str, kind: str = "held") -> tuple[list[str], int | None]:
        try:
            entry = await self.kv.get(f"{kind}.{miner_hotkey}")
        except (KeyNotFoundError, KeyDeletedError):
            return [], None
        return msgspec.msgpack.decode(entry.value or b"", type=list[str]), entry.revision
