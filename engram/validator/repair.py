"""Replication on the log: which CIDs have how many confirmed replicas, and repairs.

:class:`ReplicationProjection` follows ``ProofVerified`` on VALIDATION (void verdicts are
skipped) and keeps the latest verdict per (CID, miner hotkey). Status and repair plans
come from the pure rules in :mod:`engram.validator.replication` over the metagraph's
peers at the time of asking (routing is recomputed, so a miner that leaves hands its
CIDs to the next-closest one).

:class:`Repairer` carries out one :class:`~engram.validator.replication.Repair`: it reads
the memory from the source replica (``GET /retrieve/<cid>``), refuses it unless engram-core
recomputes the same CID from the returned embedding and metadata (a corrupted or forged
copy is never spread), and ingests it into the target as a raw embedding, signed with the
validator's hotkey; the target must answer with the same CID.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

from engram.chain.base import Metagraph
from engram.core import CoreError, compute_cid
from streams.events import Event, ProofVerified
from streams.projection import Projection

from .http import MinerHttp
from .replication import Repair, ReplicaStatus, plan_repair, status_for
from .routing import Peer, route

__all__ = ["RepairOutcome", "Repairer", "ReplicationProjection", "peers_of"]


def peers_of(graph: Metagraph, exclude: Collection[str] = ()) -> list[Peer]:
    """The metagraph's miners (neurons with an axon) as routing peers."""
    return [Peer(n.uid, n.hotkey) for n in graph.neurons if n.axon and n.hotkey not in exclude]


class ReplicationProjection(Projection):
    stream = "VALIDATION"
    subjects = [ProofVerified.SUBJECT]

    def __init__(self) -> None:
        super().__init__()
        self.verdicts: dict[str, dict[str, bool]] = {}

    def apply(self, seq: int, event: Event) -> None:
        if isinstance(event, ProofVerified) and event.cid and event.miner_hotkey:
            if not event.void:
                self.verdicts.setdefault(event.cid, {})[event.miner_hotkey] = event.passed

    def reset(self) -> None:
        super().reset()
        self.verdicts = {}

    def status(self, cid: str, peers: Iterable[Peer]) -> ReplicaStatus:
        assigned = [p.hotkey for p in route(cid, peers)]
        return status_for(assigned, self.verdicts.get(cid, {}))

    def counts(self, peers: Iterable[Peer]) -> dict[str, int]:
        """How many known CIDs are in each status."""
        peers = list(peers)
        tally = Counter(self.status(cid, peers).value for cid in self.verdicts)
        return {s.value: tally.get(s.value, 0) for s in ReplicaStatus}

    def repairs(self, peers: Iterable[Peer], down: Collection[str] = ()) -> list[Repair]:
        peers = list(peers)
        out: list[Repair] = []
        for cid in sorted(self.verdicts):
            out.extend(plan_repair(cid, peers, self.verdicts[cid], down))
        return out


@dataclass(frozen=True)
class RepairOutcome:
    repair: Repair
    ok: bool
    reason: str = ""


@dataclass
class Repairer:
    http: MinerHttp
    graph: Metagraph

    def _axon(self, hotkey: str) -> str | None:
        n = self.graph.by_hotkey(hotkey)
        return n.axon if n else None

    async def repair(self, r: Repair) -> RepairOutcome:
        src, dst = self._axon(r.source.hotkey), self._axon(r.target.hotkey)
        if src is None or dst is None:
            return RepairOutcome(r, False, "source or target has no axon")
        got = await self.http.get(src, f"/retrieve/{r.cid}", receiver=r.source.hotkey)
        if not got.ok:
            return RepairOutcome(r, False, f"source: {got.error}")
        body = got.body
        metadata = body.get("metadata") or {}
        model_version = str(body.get("model_version") or "")
        try:
            vec = np.asarray(body.get("embedding"), dtype=np.float32)
            if compute_cid(vec, metadata, model_version) != r.cid:
                return RepairOutcome(r, False, "source copy does not hash to its CID")
        except (CoreError, TypeError, ValueError) as exc:
            return RepairOutcome(r, False, f"source copy is malformed: {exc}"[:200])
        payload: dict[str, object] = {
            "raw_embedding": vec.tolist(),
            "metadata": metadata,
            "model_version": model_version,
        }
        if body.get("namespace"):
            payload["namespace"] = body["namespace"]
        put = await self.http.post(dst, "/IngestSynapse", payload, receiver=r.target.hotkey)
        if not put.ok:
            return RepairOutcome(r, False, f"target: {put.error}")
        if put.body.get("cid") != r.cid:
            return RepairOutcome(r, False, f"target stored another CID {put.body.get('cid')!r}")
        return RepairOutcome(r, True)
