"""btauth/1 for callers: whom to sign for, and the signed headers.

The one place where a client signs a request: the SDK (sync and async, through its sans-IO
core) and the node's internal :class:`engram.miner.client.AxonClient` both call these. The
receiver (the miner's hotkey) is what the axon reports as ``hotkey_ss58`` on ``/health``;
an axon that reports none gets unsigned requests. ``bittensor`` is imported only when a
request is actually signed (importing it costs ~0.5 s).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["receiver_of", "sign_headers"]


def receiver_of(health: Mapping[str, Any]) -> str | None:
    """The hotkey to address signed requests to, from a ``/health`` answer (None: the axon
    has no identity, send unsigned)."""
    hotkey = health.get("hotkey_ss58")
    return hotkey if isinstance(hotkey, str) and hotkey else None


def sign_headers(
    keypair: Any, method: str, path: str, body: bytes, receiver: str
) -> dict[str, str]:
    """btauth/1 headers for one request (a fresh nonce each call: a retry is a new
    signature, never a replay). ``path`` is signed as sent, query string included."""
    from bittensor.http_auth import sign

    headers: dict[str, str] = sign(
        keypair, method=method, path=path, body=body, receiver_ss58=receiver
    )
    return headers
