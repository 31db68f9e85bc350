"""What the console shows, folded from the validator's events.

Two projections over one :class:`NetworkState`: VALIDATION (scores, recall samples,
challenges, proofs, repairs: miners with their history, proof history per CID, replica
health through the validator's own :class:`~engram.validator.repair.ReplicationProjection`)
and WEIGHTS (weight sets the chain accepted, per miner over time). Both are followed live
by :class:`~streams.projection.ProjectionRunner`; nothing is kept that the streams do not
hold, so a console restarted anywhere shows the same thing.

Memory is bounded: a fixed number of points per miner and of proofs per CID, and the CIDs
seen most recently.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from engram.validator.repair import ReplicationProjection
from engram.validator.routing import Peer
from streams.events import (
    ChallengeIssued,
    Event,
    ProofVerified,
    RecallSampled,
    Repaired,
    RepairRequested,
    ScoreUpdated,
    WeightsProposed,
    WeightsSet,
)
from streams.projection import Projection

__all__ = ["MinerState", "NetworkState", "ValidationFold", "WeightsFold"]

#: points kept per miner (one per scored round) and weight sets kept per miner
HISTORY = 720
#: proof-history entries kept per CID, and CIDs kept
CID_HISTORY = 64
MAX_CIDS = 50_000


@dataclass
class MinerState:
    uid: int
    hotkey: str = ""
    axon: str = ""
    label: str = ""  # the devnet's role (honest / an adversary kind), else empty
    recall: float | None = None
    latency_ms: float | None = None
    proof_rate: float | None = None
    composite: float | None = None
    score: float | None = None  # the EMA
    slashed: bool = False
    reason: str = ""
    weight: float | None = None
    proofs: int = 0
    passed: int = 0
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    weights: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def row(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "hotkey": self.hotkey,
            "axon": self.axon,
            "label": self.label,
            "recall": self.recall,
            "latency_ms": self.latency_ms,
            "proof_rate": self.proof_rate,
            "proofs": self.proofs,
            "proofs_passed": self.passed,
            "composite": self.composite,
            "score": self.score,
            "weight": self.weight,
            "slashed": self.slashed,
            "reason": self.reason,
        }


@dataclass
class NetworkState:
    miners: dict[int, MinerState] = field(default_factory=dict)
    cids: OrderedDict[str, deque[dict[str, Any]]] = field(default_factory=OrderedDict)
    replication: ReplicationProjection = field(default_factory=ReplicationProjection)
    proposed: dict[int, WeightsProposed] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    validation_events: int = 0
    labels: dict[str, str] = field(default_factory=dict)  # hotkey -> label

    def miner(self, uid: int, hotkey: str = "") -> MinerState:
        m = self.miners.get(uid)
        if m is None or (hotkey and m.hotkey and m.hotkey != hotkey):  # a new owner
            m = self.miners[uid] = MinerState(uid)
        if hotkey:
            m.hotkey = hotkey
            m.label = self.labels.get(hotkey, m.label)
        return m

    def peers(self) -> list[Peer]:
        """The miners routing places memories on: the ones the validator challenges."""
        return [Peer(m.uid, m.hotkey) for m in self.miners.values() if m.hotkey and m.axon]

    def note_cid(self, cid: str, entry: dict[str, Any]) -> None:
        if not cid:
            return
        h = self.cids.get(cid)
        if h is None:
            h = self.cids[cid] = deque(maxlen=CID_HISTORY)
            while len(self.cids) > MAX_CIDS:
                self.cids.popitem(last=False)
        else:
            self.cids.move_to_end(cid)
        h.append(entry)

    def replication_counts(self) -> dict[str, int]:
        return self.replication.counts(self.peers())


class ValidationFold(Projection):
    stream = "VALIDATION"

    def __init__(self, state: NetworkState) -> None:
        super().__init__()
        self.state = state

    def apply(self, seq: int, event: Event) -> None:
        s = self.state
        s.validation_events += 1
        if isinstance(event, ProofVerified | Repaired):
            s.replication.apply(seq, event)
        if isinstance(event, ChallengeIssued):
            m = s.miner(event.miner_uid, event.miner_hotkey)
            if event.miner_axon:
                m.axon = event.miner_axon
        elif isinstance(event, RecallSampled):
            m = s.miner(event.miner_uid, event.miner_hotkey)
            m.recall, m.latency_ms = event.recall_at_10, event.latency_ms
        elif isinstance(event, ProofVerified):
            m = s.miner(event.miner_uid, event.miner_hotkey)
            if not event.void:
                m.proofs += 1
                m.passed += event.passed
            s.note_cid(
                event.cid,
                {
                    "seq": seq,
                    "time": event.time,
                    "kind": "proof",
                    "uid": event.miner_uid,
                    "hotkey": event.miner_hotkey,
                    "passed": event.passed,
                    "void": event.void,
                    "replicated": event.replicated,
                    "reason": event.reason,
                    "round": event.round_id,
                },
            )
        elif isinstance(event, RepairRequested | Repaired):
            entry: dict[str, Any] = {
                "seq": seq,
                "time": event.time,
                "kind": "repair requested" if isinstance(event, RepairRequested) else "repaired",
                "uid": event.target_uid,
                "hotkey": event.target_hotkey,
                "round": event.round_id,
            }
            if isinstance(event, Repaired):
                entry.update(passed=event.ok, reason=event.reason)
            s.note_cid(event.cid, entry)
        elif isinstance(event, ScoreUpdated):
            m = s.miner(event.miner_uid, event.miner_hotkey)
            m.proof_rate, m.composite = event.proof_success_rate, event.composite
            m.score, m.slashed, m.reason = event.ema, event.slashed, event.reason
            m.history.append(
                {
                    "t": event.time,
                    "recall": event.recall,
                    "latency_ms": m.latency_ms,
                    "proof_rate": event.proof_success_rate,
                    "score": event.ema,
                }
            )

    def reset(self) -> None:
        super().reset()
        s = self.state
        s.miners.clear()
        s.cids.clear()
        s.replication.reset()
        s.validation_events = 0


class WeightsFold(Projection):
    stream = "WEIGHTS"

    def __init__(self, state: NetworkState) -> None:
        super().__init__()
        self.state = state

    def apply(self, seq: int, event: Event) -> None:
        s = self.state
        if isinstance(event, WeightsProposed):
            s.proposed[event.epoch] = event
        elif isinstance(event, WeightsSet) and event.success:
            p = s.proposed.pop(event.epoch, None)
            if p is None:
                return
            s.epochs.append(
                {"epoch": event.epoch, "time": event.time, "chain": event.chain}
                | {"block": event.block}
            )
            del s.epochs[:-HISTORY]
            for uid, w in zip(p.uids, p.weights, strict=True):
                m = s.miner(uid)
                m.weight = w
                m.weights.append({"t": event.time, "epoch": event.epoch, "weight": w})

    def reset(self) -> None:
        super().reset()
        self.state.proposed.clear()
        self.state.epochs.clear()
        for m in self.state.miners.values():
            m.weight = None
            m.weights.clear()
