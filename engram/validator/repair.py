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
import structlog

from engram.chain.base import Chain, Metagraph
from engram.core import CoreError, compute_cid
from streams.events import CadenceTicked, Event, ProofVerified, Repaired, RepairRequested
from streams.projection import Projection
from streams.publisher import Publisher
from streams.worker import Delivery

from .challenges import stale
from .http import MinerHttp
from .ledger import ProbeLedger
from .replication import Repair, ReplicaStatus, assigned_to, plan_repair, status_for
from .routing import Peer

__all__ = [
    "RepairOutcome",
    "RepairPlanner",
    "RepairWorker",
    "Repairer",
    "ReplicationProjection",
    "peers_of",
]

log = structlog.get_logger("engram.validator.repair")


def peers_of(graph: Metagraph, exclude: Collection[str] = ()) -> list[Peer]:
    """The metagraph's miners (neurons with an axon) as routing peers."""
    return [Peer(n.uid, n.hotkey) for n in graph.neurons if n.axon and n.hotkey not in exclude]


class ReplicationProjection(Projection):
    """Latest verdict per (routed CID, miner) — probes are the validator's private ground
    truth for one miner and are not replicated, so only ``replicated`` verdicts count —
    and the repairs done whose target has not proved the CID yet (``pending``: not
    requested again)."""

    stream = "VALIDATION"
    subjects = [ProofVerified.SUBJECT, Repaired.SUBJECT]

    def __init__(self) -> None:
        super().__init__()
        self.verdicts: dict[str, dict[str, bool]] = {}
        self.pending: dict[str, set[str]] = {}
        self.lost: set[str] = set()  # CIDs some miner failed to prove at least once

    def apply(self, seq: int, event: Event) -> None:
        if isinstance(event, ProofVerified) and event.cid and event.miner_hotkey:
            if event.replicated and not event.void:
                self.verdicts.setdefault(event.cid, {})[event.miner_hotkey] = event.passed
                self.pending.get(event.cid, set()).discard(event.miner_hotkey)
                if not event.passed:
                    self.lost.add(event.cid)
        elif isinstance(event, Repaired) and event.ok:
            self.pending.setdefault(event.cid, set()).add(event.target_hotkey)

    def reset(self) -> None:
        super().reset()
        self.verdicts = {}
        self.pending = {}
        self.lost = set()

    def status(self, cid: str, peers: Iterable[Peer]) -> ReplicaStatus:
        verdicts = self.verdicts.get(cid, {})
        assigned = [p.hotkey for p in assigned_to(cid, peers, verdicts)]
        return status_for(assigned, verdicts)

    def counts(self, peers: Iterable[Peer]) -> dict[str, int]:
        """How many known CIDs are in each status."""
        peers = list(peers)
        tally = Counter(self.status(cid, peers).value for cid in self.verdicts)
        return {s.value: tally.get(s.value, 0) for s in ReplicaStatus}

    def repairs(self, peers: Iterable[Peer], down: Collection[str] = ()) -> list[Repair]:
        """Copies for the CIDs known to have lost a replica: a miner failed to prove it,
        or a miner that proved it left the metagraph. A replica merely not sampled yet
        (challenges ask a few CIDs per miner per round) is not a loss: no copy."""
        peers = list(peers)
        present = {p.hotkey for p in peers} - set(down)
        out: list[Repair] = []
        for cid in sorted(self.verdicts):
            gone = any(ok and h not in present for h, ok in self.verdicts[cid].items())
            if cid not in self.lost and not gone:
                continue
            pending = self.pending.get(cid, set())
            plans = plan_repair(cid, peers, self.verdicts[cid], down)
            out.extend(p for p in plans if p.target.hotkey not in pending)
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


@dataclass
class RepairPlanner:
    """``validator-repair-planner``: a ``challenge`` tick → a :class:`RepairRequested` per
    CID short of replicas (the projection's verdicts so far, over the metagraph's miners
    now). The round id comes from the tick, so a redelivered tick requests nothing new."""

    chain: Chain
    projection: ReplicationProjection
    publisher: Publisher

    async def handle(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            tick = d.event
            if isinstance(tick, CadenceTicked) and tick.cadence == "challenge" and not stale(tick):
                await self.plan(f"{tick.validator}:repair:{tick.seq}", tick.event_id)

    async def plan(self, round_id: str, causation_id: str | None = None) -> list[RepairRequested]:
        graph = await self.chain.metagraph()
        peers = peers_of(graph, exclude={self.chain.hotkey})
        out = [
            RepairRequested(
                causation_id=causation_id,
                round_id=round_id,
                cid=r.cid,
                source_uid=r.source.uid,
                source_hotkey=r.source.hotkey,
                target_uid=r.target.uid,
                target_hotkey=r.target.hotkey,
            )
            for r in self.projection.repairs(peers)
        ]
        if out:
            await self.publisher.publish_many(out)
            log.info("repairs requested", round_id=round_id, count=len(out))
        return out


@dataclass
class RepairWorker:
    """``validator-repairer``: :class:`RepairRequested` → :class:`Repairer` → the target
    is recorded in the ledger as holding the CID (so challenges ask it next) →
    :class:`Repaired`."""

    chain: Chain
    http: MinerHttp
    ledger: ProbeLedger
    publisher: Publisher

    async def handle(self, deliveries: list[Delivery]) -> None:
        requests = [d.event for d in deliveries if isinstance(d.event, RepairRequested)]
        if not requests:
            return
        graph = await self.chain.metagraph()
        out = [await self.repair(graph, r) for r in requests]
        await self.publisher.publish_many(out)

    async def repair(self, graph: Metagraph, r: RepairRequested) -> Repaired:
        plan = Repair(
            cid=r.cid,
            source=Peer(r.source_uid, r.source_hotkey),
            target=Peer(r.target_uid, r.target_hotkey),
        )
        outcome = await Repairer(self.http, graph).repair(plan)
        if outcome.ok:
            truth = await self.ledger.vector(r.cid)
            if truth is not None:
                await self.ledger.record_many(
                    r.target_hotkey, [(r.cid, truth.array())], kind="routed"
                )
        log.info("repair", cid=r.cid, target=r.target_hotkey, ok=outcome.ok, reason=outcome.reason)
        return Repaired(
            causation_id=r.event_id,
            request_id=r.event_id,
            round_id=r.round_id,
            cid=r.cid,
            target_uid=r.target_uid,
            target_hotkey=r.target_hotkey,
            ok=outcome.ok,
            reason=outcome.reason,
            source_hotkey=r.source_hotkey,
        )
