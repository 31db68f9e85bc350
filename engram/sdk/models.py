"""What the SDK returns: plain, typed values (no I/O, no dependency beyond the stdlib)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BlobReceipt", "Hit", "ItemResult", "Memory", "MemoryPage"]


class Hit(dict[str, Any]):
    """One query result: ``cid``, ``score`` (cosine similarity, higher is closer),
    ``metadata`` and, when asked for (``include_text``), ``text``. A ``dict`` as well, so
    code written for the predecessor SDK (``hit["cid"]``) keeps working."""

    @property
    def cid(self) -> str:
        return str(self["cid"])

    @property
    def score(self) -> float:
        return float(self["score"])

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @property
    def text(self) -> str | None:
        text = self.get("text")
        return text if isinstance(text, str) else None


@dataclass(frozen=True)
class Memory:
    """A stored memory as ``get`` (``GET /retrieve/{cid}``) or ``list`` returns it."""

    cid: str
    namespace: str = "public"
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None
    embedding: list[float] | None = None  # from ``get`` only

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Memory:
        emb = body.get("embedding")
        meta = body.get("metadata")
        text = body.get("text")
        return cls(
            cid=str(body["cid"]),
            namespace=str(body.get("namespace") or "public"),
            text=text if isinstance(text, str) else None,
            metadata=meta if isinstance(meta, dict) else {},
            model_version=body.get("model_version"),
            embedding=[float(x) for x in emb] if isinstance(emb, list) else None,
        )


@dataclass(frozen=True)
class MemoryPage:
    """One page of ``list``: the memories and the cursor of the next page (None: the
    last page)."""

    memories: list[Memory]
    next_cursor: str | None = None


@dataclass
class ItemResult:
    """The outcome of one item of ``batch_ingest``.

    ``status``: ``stored`` (``cid`` set), ``accepted`` (will be stored; not yet within the
    wait), ``rejected`` (the miner refused it after accepting: ``error``) or ``invalid``
    (never sent or refused on arrival: ``error``). ``index`` is the item's position in the
    input, ``line`` its line in a JSONL file."""

    index: int
    request_id: str | None
    status: str
    cid: str | None = None
    error: str | None = None
    line: int | None = None
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "accepted")


@dataclass(frozen=True)
class BlobReceipt:
    """What ``ingest_image`` / ``ingest_pdf`` return: the blob's content CID
    (``sha256:…``), its media type and size, and whether the miner already had it."""

    content_cid: str
    media_type: str
    size: int
    duplicate: bool = False
