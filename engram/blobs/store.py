"""Where blobs and what is known of them live on the bus.

* the bytes: a JetStream Object Store bucket (``engram_blobs``), one object per
  ``content_cid`` (so the same bytes twice are one object);
* the state: a KV bucket (``engram_blob_state``) with one key per blob and aspect, each
  written by one writer only, so no two processes race on a key:
  ``<hex>.meta`` (the axon: media type, size, namespace, caller; written after its
  ``BlobReceived`` was published), ``<hex>.arweave`` (the archiver: the tx id as soon as it
  is signed, then ``archived`` or ``failed``), ``<hex>.described`` (the describer: the
  request ids of its memories, or the reason it could not describe the blob).

The KV is what the workers check before they act again (a redelivered ``BlobReceived``
neither re-uploads an archived blob nor describes a described one) and what
``GET /blob/{content_cid}/status`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    NotFoundError,
    ObjectNotFoundError,
)

from streams.errors import Unavailable

__all__ = ["BLOB_BUCKET", "STATE_BUCKET", "ArchiveState", "BlobMeta", "BlobStore", "Described"]

BLOB_BUCKET = "engram_blobs"
STATE_BUCKET = "engram_blob_state"


class BlobMeta(msgspec.Struct, kw_only=True):
    content_cid: str
    media_type: str
    size: int
    namespace: str = "public"
    caller: str = ""
    filename: str = ""
    received_event: str = ""  # the BlobReceived's event id


class ArchiveState(msgspec.Struct, kw_only=True):
    state: str  # "signed" (id known, not yet confirmed), "archived", "failed"
    arweave_tx: str | None = None
    gateway: str = ""
    attempts: int = 0
    reason: str = ""


class Described(msgspec.Struct, kw_only=True):
    request_ids: list[str] = msgspec.field(default_factory=list)
    caller: str = ""
    describer: str = ""
    error: str = ""  # the blob could not be described (dead-lettered with this cause)


def _hex(content_cid: str) -> str:
    return content_cid.removeprefix("sha256:")


@dataclass
class BlobStore:
    js: JetStreamContext
    objects: Any  # nats.js.object_store.ObjectStore
    kv: Any  # nats.js.kv.KeyValue

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> BlobStore:
        try:
            objects = await js.object_store(BLOB_BUCKET)
        except BucketNotFoundError:
            objects = await js.create_object_store(
                BLOB_BUCKET,
                config=api.ObjectStoreConfig(
                    description="blob bytes by content_cid (engram.blobs)", replicas=replicas
                ),
            )
        try:
            kv = await js.key_value(STATE_BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                api.KeyValueConfig(bucket=STATE_BUCKET, history=1, replicas=replicas)
            )
        return cls(js, objects, kv)

    # --- bytes ------------------------------------------------------------------------

    async def has(self, content_cid: str) -> bool:
        try:
            await self.objects.get_info(content_cid)
        except ObjectNotFoundError:
            return False
        return True

    async def put(self, content_cid: str, data: bytes) -> bool:
        """Keep ``data``; False if it was there already."""
        if await self.has(content_cid):
            return False
        await self.objects.put(content_cid, data)
        return True

    async def get(self, content_cid: str) -> bytes | None:
        try:
            result = await self.objects.get(content_cid)
        except ObjectNotFoundError:
            return None
        return bytes(result.data or b"")

    # --- state ------------------------------------------------------------------------

    async def _read(self, key: str, kind: type[Any]) -> Any:
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, KeyDeletedError, NotFoundError):
            return None
        if entry.value is None:
            return None
        return msgspec.json.decode(entry.value, type=kind)

    async def _write(self, key: str, value: msgspec.Struct) -> None:
        try:
            await self.kv.put(key, msgspec.json.encode(value))
        except Exception as exc:  # the bus is down: the caller retries
            raise Unavailable(f"cannot record blob state {key}: {exc!r}") from exc

    async def meta(self, content_cid: str) -> BlobMeta | None:
        result: BlobMeta | None = await self._read(f"{_hex(content_cid)}.meta", BlobMeta)
        return result

    async def set_meta(self, meta: BlobMeta) -> None:
        await self._write(f"{_hex(meta.content_cid)}.meta", meta)

    async def archive(self, content_cid: str) -> ArchiveState | None:
        result: ArchiveState | None = await self._read(f"{_hex(content_cid)}.arweave", ArchiveState)
        return result

    async def set_archive(self, content_cid: str, state: ArchiveState) -> None:
        await self._write(f"{_hex(content_cid)}.arweave", state)

    async def described(self, content_cid: str) -> Described | None:
        result: Described | None = await self._read(f"{_hex(content_cid)}.described", Described)
        return result

    async def set_described(self, content_cid: str, value: Described) -> None:
        await self._write(f"{_hex(content_cid)}.described", value)
