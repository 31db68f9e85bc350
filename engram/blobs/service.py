"""The blob parts of one miner: the Object Store and KV, the describer and (with a gateway)
the archiver, and what the axon's routes need from them (:class:`BlobService`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from engram.config import Settings
from streams.errors import EngramError
from streams.events import BlobReceived, request_key
from streams.publisher import Publisher
from streams.worker import Worker

from .arweave import ArchiveHandler, Gateway, make_archive_worker
from .describe import (
    DescribeHandler,
    ImageDescriber,
    OfflineDescriber,
    VisionDescriber,
    make_describe_worker,
)
from .sniff import UnsupportedBlob, content_cid, sniff
from .store import BlobMeta, BlobStore

__all__ = [
    "BlobRuntime",
    "BlobService",
    "Mismatch",
    "Stored",
    "image_describer",
    "start_blobs",
]

log = structlog.get_logger("engram.blobs")


@dataclass(frozen=True)
class Stored:
    content_cid: str
    media_type: str
    size: int
    duplicate: bool


def image_describer(settings: Settings) -> ImageDescriber:
    """``describer``: ``vision`` (the chat-completions endpoint), ``offline`` (Pillow), or
    ``auto``: vision when ``vision_api_key`` is set."""
    mode = settings.describer
    if mode == "auto":
        mode = "vision" if settings.vision_api_key else "offline"
    if mode == "vision":
        return VisionDescriber(
            settings.vision_base_url, settings.vision_model, settings.vision_api_key
        )
    return OfflineDescriber()


@dataclass
class BlobService:
    """What the routes do, on the bus: keep, announce, read back, report."""

    store: BlobStore
    publisher: Publisher
    memories: Any  # engram.miner.store.MemoryStore (request table: the memories' CIDs)
    max_bytes: int
    producer: str = ""
    gateway: Gateway | None = None

    async def accept(
        self, data: bytes, metadata: dict[str, Any], namespace: str, caller: str
    ) -> Stored:
        """Keep ``data`` and announce it (``BlobReceived``) once; the same bytes again are
        the same blob (``duplicate``)."""
        media_type = sniff(data)  # UnsupportedBlob → 415
        cid = (
            await asyncio.to_thread(content_cid, data) if len(data) > 1 << 20 else content_cid(data)
        )
        if await self.store.meta(cid) is not None:
            return Stored(cid, media_type, len(data), True)
        await self.store.put(cid, data)
        event = BlobReceived(
            content_cid=cid,
            object_name=cid,
            size=len(data),
            media_type=media_type,
            metadata=metadata,
            namespace=namespace,
            caller=caller,
            producer=self.producer,
        )
        ack = await self.publisher.publish(event)
        # written after the event is in the log: a crash in between re-announces next time
        await self.store.set_meta(
            BlobMeta(
                content_cid=cid,
                media_type=media_type,
                size=len(data),
                namespace=namespace,
                caller=caller,
                filename=str(metadata.get("filename", "")),
                received_event=event.event_id,
            )
        )
        return Stored(cid, media_type, len(data), bool(ack.duplicate))

    async def status(self, cid: str) -> dict[str, Any] | None:
        meta = await self.store.meta(cid)
        if meta is None:
            return None
        arch = await self.store.archive(cid)
        desc = await self.store.described(cid)
        state = "pending"
        if arch is not None and arch.state in ("archived", "failed"):
            state = arch.state
        cids: list[str] = []
        if desc is not None and desc.request_ids:
            keys = [request_key("text", desc.caller, rid) for rid in desc.request_ids]
            found = await asyncio.to_thread(self.memories.find_requests, keys)
            cids = [found[k].cid for k in keys if k in found and found[k].cid]
        return {
            "content_cid": cid,
            "media_type": meta.media_type,
            "size": meta.size,
            "arweave_tx": arch.arweave_tx if arch is not None and state == "archived" else None,
            "archive": state,
            "described": bool(desc is not None and desc.request_ids),
            "engram_cids": cids,
            "memories": len(desc.request_ids) if desc is not None else 0,
            "namespace": meta.namespace,
            "describer": desc.describer if desc is not None else None,
            "archive_error": arch.reason if arch is not None and arch.reason else None,
            "describe_error": desc.error if desc is not None and desc.error else None,
        }

    async def read(self, cid: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, source) from the Object Store, else from the gateway by the
        blob's tx id, verified; None if neither has it. :class:`Mismatch` if the gateway's
        bytes are not the blob's."""
        data = await self.store.get(cid)
        meta = await self.store.meta(cid)
        source = "object-store"
        if data is None:
            arch = await self.store.archive(cid)
            if arch is None or arch.state != "archived" or not arch.arweave_tx:
                return None
            gateway = self.gateway or (Gateway(arch.gateway) if arch.gateway else None)
            if gateway is None:
                return None
            try:
                data = await gateway.fetch(arch.arweave_tx)
            finally:
                if gateway is not self.gateway:
                    await gateway.close()
            if data is None:
                raise Mismatch(f"the gateway does not have transaction {arch.arweave_tx}")
            source = f"arweave:{arch.arweave_tx}"
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        if "sha256:" + digest != cid:
            raise Mismatch(
                f"the bytes from {source} hash to sha256:{digest[:16]}…, not {cid}; not served"
            )
        if meta is not None:
            media_type = meta.media_type
        else:
            try:
                media_type = sniff(data)
            except UnsupportedBlob:
                media_type = "application/octet-stream"
        return data, media_type, source

    async def retrieve_extra(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """``blob`` identifiers for ``GET /retrieve/{cid}`` of a blob's memory."""
        cid = metadata.get("content_cid")
        if not isinstance(cid, str) or not cid.startswith("sha256:"):
            return {}
        arch = await self.store.archive(cid)
        blob: dict[str, Any] = {
            "content_cid": cid,
            "arweave_tx": arch.arweave_tx
            if arch is not None and arch.state == "archived"
            else None,
            "media_type": metadata.get("media_type"),
        }
        if "page" in metadata:
            blob["page"] = metadata["page"]
        return {"blob": blob}


class Mismatch(EngramError):
    """Bytes read back are not the blob's (a 502: never served)."""


@dataclass
class BlobRuntime:
    service: BlobService
    workers: list[Worker] = field(default_factory=list)
    describe: DescribeHandler | None = None
    archive: ArchiveHandler | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.describe is not None:
            out["described"] = self.describe.described
            out["refused"] = self.describe.refused
        if self.archive is not None:
            out["archived"] = self.archive.archived
            out["archive_failed"] = self.archive.failed
        return out

    async def stop(self, grace: float = 5.0) -> None:
        for w in self.workers:
            w.stop()
        if self.tasks:
            _done, pending = await asyncio.wait(self.tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        if self.service.gateway is not None:
            with contextlib.suppress(Exception):
                await self.service.gateway.close()


def wallet_path(settings: Settings) -> Path:
    """``arweave_wallet_file``, else ``<data_dir>/keys/arweave_wallet.json``."""
    if settings.arweave_wallet_file:
        return Path(settings.arweave_wallet_file).expanduser()
    return settings.data_path / "keys" / "arweave_wallet.json"


async def start_blobs(
    settings: Settings,
    js: Any,
    publisher: Publisher,
    memories: Any,
    *,
    describer: ImageDescriber | None = None,
    run_workers: bool = True,
) -> BlobRuntime:
    """Open the buckets and start the describer and, with ``arweave_gateway_url``, the
    archiver (each a durable consumer on BLOBS)."""
    s = settings
    store = await BlobStore.open(js, replicas=s.stream_replicas)
    gateway = Gateway(s.arweave_gateway_url) if s.arweave_gateway_url else None
    service = BlobService(store, publisher, memories, s.blob_max_bytes, s.producer, gateway)
    runtime = BlobRuntime(service)
    if not run_workers:
        return runtime
    backoff = tuple(s.worker_backoff_s)
    runtime.describe = DescribeHandler(
        store,
        publisher,
        describer or image_describer(s),
        producer=s.producer,
        max_attempts=s.worker_max_deliver,
    )
    workers = [
        make_describe_worker(
            js, runtime.describe, publisher, backoff_s=backoff, replicas=s.stream_replicas
        )
    ]
    if gateway is not None:
        runtime.archive = ArchiveHandler(
            store,
            publisher,
            gateway,
            wallet_path(s),
            producer=s.producer,
            local=s.arweave_local,
            max_attempts=s.arweave_attempts,
            confirm_timeout_s=s.arweave_confirm_timeout_s,
        )
        workers.append(
            make_archive_worker(
                js, runtime.archive, publisher, backoff_s=backoff, replicas=s.stream_replicas
            )
        )
    runtime.workers = workers
    runtime.tasks = [asyncio.create_task(w.run(), name=w.name) for w in workers]
    log.info(
        "blobs ready",
        describer=runtime.describe.image.name,
        gateway=s.arweave_gateway_url or "none (not archived)",
    )
    return runtime
