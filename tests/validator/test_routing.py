"""XOR routing and replication status/repair, as tables and against an independent
implementation of the byte layout in docs/protocol.md."""

from __future__ import annotations

import hashlib

import pytest

from engram.validator.replication import ReplicaStatus, plan_repair, status_for, status_of
from engram.validator.routing import REPLICAS, Peer, distance, route

PEERS = [Peer(uid=i, hotkey=f"5Hotkey{i:02d}") for i in range(10)]


def _by_hand(cid: str, hotkeys: list[str]) -> list[str]:
    # the layout in docs/protocol.md, written out independently
    c = hashlib.sha256(cid.encode()).digest()

    def d(h: str) -> bytes:
        k = hashlib.sha256(h.encode()).digest()
        return bytes(a ^ b for a, b in zip(c, k, strict=True))

    return sorted(hotkeys, key=d)


@pytest.mark.parametrize("cid", ["v1::" + "ab" * 32, "v1::00", "sha256:ff", "x"])
def test_route_picks_the_three_xor_closest_primary_first(cid: str) -> None:
    got = route(cid, PEERS)
    assert len(got) == REPLICAS
    assert [p.hotkey for p in got] == _by_hand(cid, [p.hotkey for p in PEERS])[:3]
    assert (
        distance(cid, got[0].hotkey) < distance(cid, got[1].hotkey) < distance(cid, got[2].hotkey)
    )


def test_route_is_deterministic_and_order_independent() -> None:
    cid = "v1::" + "cd" * 32
    assert route(cid, PEERS) == route(cid, list(reversed(PEERS)))


def test_route_excludes_and_handles_small_metagraphs() -> None:
    cid = "v1::" + "ef" * 32
    first = route(cid, PEERS)
    again = route(cid, PEERS, exclude={first[0].hotkey})
    assert first[0] not in again and again[:2] == first[1:]
    assert route(cid, PEERS[:2]) == route(cid, PEERS[:2], replicas=5)
    assert route(cid, []) == []
    dup = [Peer(4, "same"), Peer(2, "same")]
    assert route(cid, dup) == [Peer(2, "same")]


def test_known_distance_vector() -> None:
    # sha256("a") ^ sha256("b"), both big-endian
    a = int.from_bytes(hashlib.sha256(b"a").digest(), "big")
    b = int.from_bytes(hashlib.sha256(b"b").digest(), "big")
    assert distance("a", "b") == a ^ b
    assert distance("a", "a") == 0


@pytest.mark.parametrize(
    ("confirmed", "status"),
    [
        (3, ReplicaStatus.HEALTHY),
        (4, ReplicaStatus.HEALTHY),
        (2, ReplicaStatus.DEGRADED),
        (1, ReplicaStatus.CRITICAL),
        (0, ReplicaStatus.LOST),
    ],
)
def test_status_of(confirmed: int, status: ReplicaStatus) -> None:
    assert status_of(confirmed) is status


@pytest.mark.parametrize(
    ("verdicts", "status"),
    [
        ({"a": True, "b": True, "c": True}, ReplicaStatus.HEALTHY),
        ({"a": True, "b": True, "c": False}, ReplicaStatus.DEGRADED),
        ({"a": True, "b": True}, ReplicaStatus.DEGRADED),
        ({"a": True, "x": True}, ReplicaStatus.CRITICAL),  # x is not assigned
        ({"a": False, "b": False}, ReplicaStatus.LOST),
        ({}, ReplicaStatus.LOST),
    ],
)
def test_status_for_counts_only_assigned_confirmed(
    verdicts: dict[str, bool], status: ReplicaStatus
) -> None:
    assert status_for(["a", "b", "c"], verdicts) is status


def test_repair_copies_from_a_confirmed_replica_to_the_next_closest_miner() -> None:
    cid = "v1::" + "12" * 32
    primary, second, third = route(cid, PEERS)
    fourth = route(cid, PEERS, replicas=4)[3]
    verdicts = {primary.hotkey: True, second.hotkey: False, third.hotkey: True}
    plan = plan_repair(cid, PEERS, verdicts)
    assert len(plan) == 1
    assert plan[0].source == primary and plan[0].target == fourth

    # a miner taken down (no verdict yet) is skipped the same way
    plan = plan_repair(cid, PEERS, {primary.hotkey: True}, down={second.hotkey})
    assert {r.target for r in plan} == {third, fourth}
    assert all(r.source == primary for r in plan)

    healthy = {p.hotkey: True for p in (primary, second, third)}
    assert plan_repair(cid, PEERS, healthy) == []
    assert plan_repair(cid, PEERS, {primary.hotkey: False}) == []  # LOST: nothing to copy
