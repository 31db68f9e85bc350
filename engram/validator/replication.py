"""Replication: how many confirmed replicas a CID has, and where a repair copies to.

Pure decisions over proof verdicts (no I/O). A replica is *confirmed* when the latest
verdict for (CID, miner) passed. Status by confirmed replicas among the miners routing
assigns the CID to: 3 (or more) HEALTHY, 2 DEGRADED, 1 CRITICAL, 0 LOST.

A repair copies the vector from a confirmed replica to each assigned miner that is not
confirmed; a miner whose latest verdict failed (or that left the metagraph) is skipped
by routing, so the next-closest miner takes its place.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from .routing import REPLICAS, Peer, route

__all__ = ["Repair", "ReplicaStatus", "assigned_to", "plan_repair", "status_for", "status_of"]


class ReplicaStatus(StrEnum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    CRITICAL = "CRITICAL"
    LOST = "LOST"


def status_of(confirmed: int, replicas: int = REPLICAS) -> ReplicaStatus:
    """The status for a count of confirmed replicas (out of ``replicas``)."""
    if confirmed >= replicas:
        return ReplicaStatus.HEALTHY
    if confirmed <= 0:
        return ReplicaStatus.LOST
    if confirmed == 1:
        return ReplicaStatus.CRITICAL
    return ReplicaStatus.DEGRADED


def status_for(
    assigned: Iterable[str], verdicts: Mapping[str, bool], replicas: int = REPLICAS
) -> ReplicaStatus:
    """Status of a CID from the latest verdict per hotkey (``verdicts``) of the miners
    routing assigns it to (``assigned``); a miner without a verdict is not confirmed."""
    confirmed = sum(1 for h in set(assigned) if verdicts.get(h) is True)
    return status_of(confirmed, replicas)


def assigned_to(
    cid: str,
    peers: Iterable[Peer],
    verdicts: Mapping[str, bool],
    down: Collection[str] = (),
    replicas: int = REPLICAS,
) -> list[Peer]:
    """The miners ``cid`` belongs on now: the ``replicas`` closest, skipping miners whose
    latest verdict for it failed or that are ``down`` — so when a miner loses a CID, the
    next-closest one takes its place (and the CID is short of a replica until a repair
    copies it there and that miner proves it)."""
    failed = {h for h, ok in verdicts.items() if ok is False} | set(down)
    return route(cid, peers, replicas, exclude=failed)


@dataclass(frozen=True)
class Repair:
    cid: str
    source: Peer  # a confirmed replica to copy the vector from
    target: Peer  # an assigned miner without a confirmed replica


def plan_repair(
    cid: str,
    peers: Iterable[Peer],
    verdicts: Mapping[str, bool],
    down: Collection[str] = (),
    replicas: int = REPLICAS,
) -> list[Repair]:
    """The copies that bring ``cid`` back to ``replicas`` confirmed replicas.

    Miners whose latest verdict failed, or listed in ``down``, are excluded from routing;
    the source is the confirmed replica closest to the CID. Nothing to do (or LOST: no
    source) gives ``[]``.
    """
    peers = list(peers)
    confirmed = [p for p in route(cid, peers, len(peers)) if verdicts.get(p.hotkey) is True]
    confirmed = [p for p in confirmed if p.hotkey not in set(down)]
    if not confirmed:
        return []
    source = confirmed[0]
    targets = [
        p
        for p in assigned_to(cid, peers, verdicts, down, replicas)
        if verdicts.get(p.hotkey) is not True
    ]
    return [Repair(cid=cid, source=source, target=t) for t in targets]
