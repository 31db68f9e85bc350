"""The Engram SDK for application developers.

``EngramClient`` (synchronous, standard library only) and ``AsyncEngramClient`` (aiohttp,
imported on first use) share one sans-IO core (:mod:`engram.sdk.protocol`). Quick start::

    from engram.sdk import EngramClient

    client = EngramClient("http://127.0.0.1:8091", hotkey="//Alice")
    cid = client.ingest("The transformer architecture changed NLP.", {"source": "notes"})
    for hit in client.query("attention in deep learning", top_k=3):
        print(hit.score, hit.cid, hit.metadata)

Every public method is listed in docs/sdk.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import EngramClient
from .errors import (
    AuthError,
    BadRequest,
    Conflict,
    EngramError,
    Forbidden,
    IngestError,
    IngestRefused,
    IngestTimeout,
    InputError,
    InvalidCID,
    InvalidCIDError,
    MinerOfflineError,
    NotFound,
    Offline,
    QueryError,
    QueryRefused,
    RateLimited,
    RequestRefused,
    ServerError,
    Unauthorized,
    Unavailable,
)
from .models import BlobReceipt, Hit, ItemResult, Memory, MemoryPage
from .protocol import RetryPolicy

if TYPE_CHECKING:
    from .aio import AsyncEngramClient
    from .publisher import DirectPublisher

__all__ = [
    "AsyncEngramClient",
    "AuthError",
    "BadRequest",
    "BlobReceipt",
    "Conflict",
    "DirectPublisher",
    "EngramClient",
    "EngramError",
    "Forbidden",
    "Hit",
    "IngestError",
    "IngestRefused",
    "IngestTimeout",
    "InputError",
    "InvalidCID",
    "InvalidCIDError",
    "ItemResult",
    "Memory",
    "MemoryPage",
    "MinerOfflineError",
    "NotFound",
    "Offline",
    "QueryError",
    "QueryRefused",
    "RateLimited",
    "RequestRefused",
    "RetryPolicy",
    "ServerError",
    "Unauthorized",
    "Unavailable",
]

_LAZY = {"AsyncEngramClient": ".aio", "DirectPublisher": ".publisher"}


def __getattr__(name: str) -> Any:
    """``AsyncEngramClient`` (aiohttp) and ``DirectPublisher`` (nats) are imported on
    first use, so the synchronous client never loads them."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
