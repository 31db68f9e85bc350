"""Kademlia-style XOR routing: which miners hold a CID (pure, no I/O).

The key of a CID is ``SHA-256(utf8(cid))`` and the key of a miner is
``SHA-256(utf8(hotkey_ss58))``, both read as 256-bit big-endian unsigned integers. The
distance is their XOR; a CID lives on the ``replicas`` miners with the smallest distance
(the first is the *primary*), ties (only possible for equal keys) broken by hotkey then
uid. Byte layout: docs/protocol.md, "Routing".
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = ["REPLICAS", "Peer", "cid_key", "distance", "hotkey_key", "route"]

#: How many miners hold each CID (primary + 2).
REPLICAS = 3


@dataclass(frozen=True, order=True)
class Peer:
    uid: int
    hotkey: str


def cid_key(cid: str) -> int:
    return int.from_bytes(hashlib.sha256(cid.encode("utf-8")).digest(), "big")


def hotkey_key(hotkey: str) -> int:
    return int.from_bytes(hashlib.sha256(hotkey.encode("utf-8")).digest(), "big")


def distance(cid: str, hotkey: str) -> int:
    """XOR distance between a CID and a miner's hotkey."""
    return cid_key(cid) ^ hotkey_key(hotkey)


def route(
    cid: str,
    peers: Iterable[Peer],
    replicas: int = REPLICAS,
    exclude: Collection[str] = (),
) -> list[Peer]:
    """The ``replicas`` closest peers to ``cid`` (primary first), skipping ``exclude``
    hotkeys. A hotkey listed twice counts once (its lowest uid)."""
    key = cid_key(cid)
    seen: dict[str, Peer] = {}
    for p in sorted(peers, key=lambda q: (q.hotkey, q.uid)):
        if p.hotkey not in exclude and p.hotkey not in seen:
            seen[p.hotkey] = p
    ranked = sorted(seen.values(), key=lambda q: (key ^ hotkey_key(q.hotkey), q.hotkey, q.uid))
    return ranked[: max(replicas, 0)]
