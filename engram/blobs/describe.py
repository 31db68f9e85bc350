"""The describer: ``BlobReceived`` → what the blob shows or says → ``BlobDescribed`` →
one ``IngestRequested`` per memory (the embed worker does the rest).

* **PDFs**: the text of each page (pypdf), a memory per page (a long page is split into
  sections), with ``content_cid``, ``page`` and ``pages`` in its metadata.
* **Images**: a description from a vision model over an OpenAI-compatible
  chat-completions API (:class:`VisionDescriber`: base URL, model, key), or, offline, a
  clearly labelled description from what Pillow reads: format, size, colour mode, EXIF
  and dominant colours (:class:`OfflineDescriber`). No registry package ships a
  captioning or CLIP model that runs here without downloading weights at run time.

Each memory's ingest carries the ``BlobDescribed`` event id as its cause, which carries
the ``BlobReceived``'s: an audit walks from a memory back to its bytes. Request ids are
derived from the ``content_cid``, so a redelivery stores nothing twice.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog

from streams.errors import InputError, Unavailable, short
from streams.events import BlobDescribed, BlobReceived, IngestRequested
from streams.publisher import Publisher
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

from .sniff import IMAGE_TYPES
from .store import BlobStore, Described
from .workers import DEFAULT_BACKOFF_S, blob_worker

__all__ = [
    "DESCRIBE_CONSUMER",
    "DescribeHandler",
    "ImageDescriber",
    "OfflineDescriber",
    "UnreadableBlob",
    "VisionDescriber",
    "blob_request_ids",
    "describe_image_offline",
    "make_describe_worker",
    "pdf_pages",
]

log = structlog.get_logger("engram.blobs.describe")

DESCRIBE_CONSUMER = ConsumerSpec(
    "blob-describer",
    "BLOBS",
    ("engram.blob.received",),
    ack_wait_s=120.0,
    max_ack_pending=64,
    description="BlobReceived -> BlobDescribed -> IngestRequested per page/description",
)

#: Characters of a page in one memory; a longer page becomes sections.
SECTION_CHARS = 4000
#: Memories one blob may become (a longer PDF keeps its first pages' memories).
MAX_PARTS = 1000
#: BlobDescribed carries the parts' texts while they stay under this (bytes of UTF-8).
MAX_PARTS_IN_EVENT = 256 * 1024
VISION_PROMPT = (
    "Describe this image for a search index in two or three plain sentences: what it "
    "shows, any visible text, the main colours. No preamble."
)


class UnreadableBlob(InputError):
    """The bytes are not a readable image or PDF (corrupt, truncated, encrypted)."""


class ImageDescriber(Protocol):
    name: str

    async def describe(self, data: bytes, media_type: str) -> str: ...


# --- offline: what Pillow reads -----------------------------------------------------------

_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)),
    ("white", (255, 255, 255)),
    ("grey", (128, 128, 128)),
    ("red", (220, 30, 30)),
    ("orange", (255, 140, 0)),
    ("yellow", (250, 220, 40)),
    ("green", (40, 160, 60)),
    ("blue", (30, 70, 220)),
    ("light blue", (135, 200, 250)),
    ("purple", (130, 50, 160)),
    ("pink", (250, 160, 200)),
    ("brown", (130, 80, 40)),
)
_EXIF_NAMES = {271: "camera make", 272: "camera model", 306: "taken", 270: "caption"}


def _colour_name(rgb: Sequence[int]) -> str:
    return min(_COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(c[1], rgb, strict=False)))[
        0
    ]


def describe_image_offline(data: bytes, media_type: str) -> str:
    """A labelled description from the image's own facts (blocking; Pillow)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt = img.format or media_type.split("/")[-1].upper()
            width, height = img.size
            frames = getattr(img, "n_frames", 1)
            exif = {}
            try:
                raw = img.getexif()
                exif = {_EXIF_NAMES[k]: str(v)[:80] for k, v in raw.items() if k in _EXIF_NAMES}
            except Exception:  # a broken EXIF block does not spoil the description
                exif = {}
            small = img.convert("RGB")
            small.thumbnail((64, 64))
            quant = small.quantize(colors=6)
            palette = quant.getpalette() or []
            counts = sorted(quant.getcolors() or [], reverse=True)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableBlob(f"not a readable {media_type} image: {exc}") from None
    total = sum(n for n, _ in counts) or 1
    shares: dict[str, float] = {}
    for n, idx in counts:
        i = int(idx)  # type: ignore[call-overload]  # a palette index in "P" mode
        rgb = palette[i * 3 : i * 3 + 3]
        name = _colour_name(rgb)
        shares[name] = shares.get(name, 0.0) + n / total
    colours = [
        f"{name} ({share:.0%})"
        for name, share in sorted(shares.items(), key=lambda x: -x[1])
        if share >= 0.05
    ]
    orientation = "landscape" if width > height else "portrait" if height > width else "square"
    parts = [
        f"Image (offline description from the file itself; no vision model): a {fmt} "
        f"picture, {width}x{height} pixels, {orientation}",
        f"{frames} frames (animated)" if frames > 1 else "",
        "mostly " + " and ".join(n for n, _ in sorted(shares.items(), key=lambda x: -x[1])[:2])
        if shares
        else "",
    ]
    text = ", ".join(p for p in parts if p) + "."
    if colours:
        text += " Dominant colours: " + ", ".join(colours) + "."
    if exif:
        text += " EXIF: " + "; ".join(f"{k} {v}" for k, v in exif.items()) + "."
    return text


@dataclass
class OfflineDescriber:
    name: str = "offline-pillow"

    async def describe(self, data: bytes, media_type: str) -> str:
        return await asyncio.to_thread(describe_image_offline, data, media_type)


# --- a vision model over chat completions ---------------------------------------------


class VisionRefused(InputError):
    """The vision endpoint refused this image (4xx): the offline description is used."""


@dataclass
class VisionDescriber:
    """An OpenAI-compatible ``POST {base_url}/chat/completions`` with the image as a
    ``data:`` URL (xAI's Grok Vision, OpenAI, a local server speaking the same API)."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    name: str = ""

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.name = self.name or f"vision:{self.model}"

    async def describe(self, data: bytes, media_type: str) -> str:
        url = f"data:{media_type};base64,{base64.b64encode(data).decode()}"
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": VISION_PROMPT},
                        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                    ],
                }
            ],
            "max_tokens": 300,
            "temperature": 0,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(f"{self.base_url}/chat/completions", json=body, headers=headers) as r,
            ):
                payload = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(f"vision endpoint {self.base_url} unreachable: {exc!r}") from exc
        if status >= 500 or status == 429:
            raise Unavailable(f"vision endpoint answered {status}")
        if status >= 400:
            raise VisionRefused(
                f"vision endpoint refused the image: {status} {short(payload, 200)}"
            )
        try:
            import json

            text = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise Unavailable(f"vision endpoint answered no description: {exc!r}") from exc
        if isinstance(text, list):  # content parts
            text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
        text = str(text).strip()
        if not text:
            raise Unavailable("vision endpoint answered an empty description")
        return text


# --- PDFs -------------------------------------------------------------------------------

_SPACES = re.compile(r"[ \t\r\f\v]+")


def pdf_pages(data: bytes) -> list[str]:
    """The text of each page (blocking; pypdf). :class:`UnreadableBlob` if it is not a
    PDF pypdf can read."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise UnreadableBlob("the PDF is encrypted; send it without a password")
        pages = []
        for page in reader.pages:
            text = page.extract_text() or ""
            lines = [_SPACES.sub(" ", ln).strip() for ln in text.splitlines()]
            pages.append("\n".join(ln for ln in lines if ln))
    except UnreadableBlob:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise UnreadableBlob(f"corrupt PDF: {type(exc).__name__}: {exc}") from None
    if not pages:
        raise UnreadableBlob("corrupt PDF: it has no pages")
    return pages


def _sections(text: str, limit: int = SECTION_CHARS) -> list[str]:
    out: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        out.append(text)
    return out


def blob_request_ids(content_cid: str, n: int) -> list[str]:
    """The request ids of a blob's memories (stable: a redelivery reuses them)."""
    hex_ = content_cid.removeprefix("sha256:")
    return [f"blob:{hex_}:{i}" for i in range(n)]


@dataclass
class Part:
    text: str
    metadata: dict[str, Any]


@dataclass
class DescribeHandler:
    store: BlobStore
    publisher: Publisher
    image: ImageDescriber
    fallback: OfflineDescriber = field(default_factory=OfflineDescriber)
    producer: str = ""
    max_attempts: int = 5
    described: int = 0
    refused: int = 0

    async def __call__(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            ev = d.event
            if not isinstance(ev, BlobReceived):
                d.poison(f"the describer does not handle {type(ev).__name__} events")
                continue
            try:
                await self._one(d, ev)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # this blob only: the others of the batch go on
                log.info("describe attempt failed; will retry", error=repr(exc))
                d.retry(exc)

    async def _parts(
        self, ev: BlobReceived, data: bytes, last_try: bool
    ) -> tuple[str, str, list[Part]]:
        base: dict[str, Any] = {
            **ev.metadata,
            "content_cid": ev.content_cid,
            "media_type": ev.media_type,
        }
        if ev.media_type == "application/pdf":
            pages = await asyncio.to_thread(pdf_pages, data)
            parts: list[Part] = []
            for n, text in enumerate(pages, 1):
                sections = _sections(text)
                for s, section in enumerate(sections):
                    meta = {**base, "page": n, "pages": len(pages)}
                    if len(sections) > 1:
                        meta["section"] = s + 1
                    parts.append(Part(section, meta))
            if not parts:  # a scan: no text layer
                note = (
                    f"PDF document, {len(pages)} page(s), with no extractable text "
                    "(scanned pages; no OCR here)."
                )
                parts = [Part(note, {**base, "pages": len(pages)})]
            description = f"PDF document, {len(pages)} page(s)"
            return description, "pypdf", parts[:MAX_PARTS]
        if ev.media_type in IMAGE_TYPES:
            # read it first (a corrupt image is refused before any model sees it); this is
            # also the description when no vision model is configured or it fails
            offline = await asyncio.to_thread(describe_image_offline, data, ev.media_type)
            describer, text = self.fallback.name, offline
            if not isinstance(self.image, OfflineDescriber):
                try:
                    text = await self.image.describe(data, ev.media_type)
                    describer = self.image.name
                except (Unavailable, InputError) as exc:
                    if not last_try and not isinstance(exc, InputError):
                        raise  # retried: the endpoint may come back
                    log.warning("vision failed; describing offline", error=repr(exc))
            return text, describer, [Part(text, {**base, "describer": describer})]
        raise UnreadableBlob(f"no describer for {ev.media_type}")

    async def _one(self, d: Delivery, ev: BlobReceived) -> None:
        done = await self.store.described(ev.content_cid)
        if done is not None and (done.request_ids or done.error):
            return  # described before (its ingests were published before this record)
        data = await self.store.get(ev.content_cid)
        if data is None:
            d.poison(f"the bytes of {ev.content_cid} are missing from the Object Store")
            return
        try:
            description, describer, parts = await self._parts(
                ev, data, d.num_delivered >= self.max_attempts
            )
        except UnreadableBlob as exc:
            await self.store.set_described(
                ev.content_cid, Described(caller=ev.caller, error=str(exc)[:500])
            )
            self.refused += 1
            d.poison(exc)  # dead-lettered with the cause
            return
        texts = [p.text for p in parts]
        in_event = texts if sum(len(t.encode()) for t in texts) <= MAX_PARTS_IN_EVENT else []
        event = BlobDescribed(
            content_cid=ev.content_cid,
            description=description,
            describer=describer,
            media_type=ev.media_type,
            parts=in_event,
            producer=self.producer,
            causation_id=ev.event_id,
        )
        await self.publisher.publish(event)
        rids = blob_request_ids(ev.content_cid, len(parts))
        await self.publisher.publish_many(
            IngestRequested(
                request_id=rid,
                text=p.text,
                metadata=p.metadata,
                namespace=ev.namespace,
                caller=ev.caller,
                producer=self.producer,
                causation_id=event.event_id,
            )
            for rid, p in zip(rids, parts, strict=True)
        )
        await self.store.set_described(
            ev.content_cid, Described(request_ids=rids, caller=ev.caller, describer=describer)
        )
        self.described += 1
        log.info(
            "blob described", content_cid=ev.content_cid, memories=len(parts), describer=describer
        )


def make_describe_worker(
    js: Any,
    handler: DescribeHandler,
    publisher: Publisher,
    *,
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    replicas: int = 1,
) -> Worker:
    return blob_worker(
        js, DESCRIBE_CONSUMER, handler, publisher, backoff_s=backoff_s, replicas=replicas
    )
