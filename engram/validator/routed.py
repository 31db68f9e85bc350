"""User memories routed to 3 miners, with ground truth kept (issue 8, "routing and
replication").

:class:`RoutedClient` is the ingest path through which the validator learns user
memories: it embeds (or takes) the vector, computes the CID with engram-core, sends a
raw-embedding ingest to the ``REPLICAS`` miners XOR routing assigns the CID to (primary
first, from the metagraph now), requires each to answer with the same CID, and records in
the ledger (``routed.<hotkey>``) the vector it saw and which miners took it. The
challenger samples these beside its probes (:func:`~engram.validator.challenges.sample_cids`)
and checks proofs against that vector; the replication projection follows their verdicts;
a repair copies a lost replica to the next-closest miner.

Requests are signed with a client key (``keypair``; a fresh ephemeral one by default),
never the validator's hotkey, so a miner cannot tell these memories from anyone else's.
A miner that fails the ingest is not recorded as holding the CID: the CID is short of a
replica and the repair planner copies it there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engram.chain.base import Chain
from engram.core import compute_cid
from streams.errors import Unavailable

from .http import MinerHttp
from .ledger import ProbeLedger
from .repair import peers_of
from .routing import REPLICAS, Peer, route

__all__ = ["NoMiners", "RoutedClient", "RoutedIngest"]

Embed = Callable[[list[str]], Any]


class NoMiners(Unavailable):
    """The metagraph has no miner with an axon to route to."""


@dataclass(frozen=True)
class RoutedIngest:
    cid: str
    assigned: list[Peer]  # primary first
    stored: list[Peer]  # those that answered with the CID
    failed: dict[str, str] = field(default_factory=dict)  # hotkey -> reason


def _ephemeral_key() -> Any:
    import bittensor_core

    return bittensor_core.Keypair.from_mnemonic(bittensor_core.Keypair.generate_mnemonic(12))


@dataclass
class RoutedClient:
    chain: Chain  # acts for the validator (its own hotkey is never a target)
    http: MinerHttp
    ledger: ProbeLedger
    model_version: str
    keypair: Any = field(default_factory=_ephemeral_key)
    replicas: int = REPLICAS

    async def ingest_text(
        self,
        text: str,
        embed: Embed,
        metadata: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> RoutedIngest:
        """Embed ``text`` with the validator's model (its vector is the ground truth)."""
        vec = np.asarray(await asyncio.to_thread(embed, [text]), dtype=np.float32)[0]
        return await self.ingest(vec, metadata, namespace)

    async def ingest(
        self,
        vector: npt.ArrayLike,
        metadata: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> RoutedIngest:
        """Raises ``engram.core.CoreError`` (an ``InputError``) for a bad vector or
        metadata, :class:`NoMiners` when there is nobody to route to."""
        vec = np.ascontiguousarray(vector, dtype=np.float32)
        meta = dict(metadata or {})
        cid = compute_cid(vec, meta, self.model_version)
        graph = await self.chain.metagraph()
        assigned = route(cid, peers_of(graph, exclude={self.chain.hotkey}), self.replicas)
        if not assigned:
            raise NoMiners(f"no miner with an axon on netuid {graph.netuid}")
        payload: dict[str, Any] = {
            "raw_embedding": vec.tolist(),
            "metadata": meta,
            "model_version": self.model_version,
        }
        if namespace is not None:
            payload["namespace"] = namespace

        async def send(p: Peer) -> str | None:
            n = graph.by_hotkey(p.hotkey)
            assert n is not None and n.axon is not None  # peers_of keeps served neurons only
            reply = await self.http.post(
                n.axon, "/IngestSynapse", payload, receiver=p.hotkey, keypair=self.keypair
            )
            if not reply.ok:
                return str(reply.error or f"HTTP {reply.status}")[:200]
            if reply.body.get("cid") != cid:
                return f"answered another CID {str(reply.body.get('cid'))[:80]!r}"
            return None

        errors = await asyncio.gather(*(send(p) for p in assigned))
        stored = [p for p, e in zip(assigned, errors, strict=True) if e is None]
        failed = {p.hotkey: e for p, e in zip(assigned, errors, strict=True) if e is not None}
        for p in stored:
            await self.ledger.record_many(p.hotkey, [(cid, vec)], kind="routed")
        return RoutedIngest(cid, assigned, stored, failed)
