"""The SDK's one implementation of the protocol, free of I/O (sans-IO).

Every SDK call is a generator (an :data:`Op`) that *yields* what it needs done — an
:class:`Exchange` (one HTTP request), a :class:`Sleep`, or a :class:`Parallel` group of
exchanges — and is *sent* the outcome (a :class:`Reply`, a :class:`TransportFailure`, or
a list of them). Request building, signing, response parsing, error mapping
(:func:`engram.sdk.errors.error_for`), retries with backoff and ``Retry-After``, failover
between miners and polling all live here, once. The sync client
(:class:`engram.sdk.client.EngramClient`, urllib) and the async client
(:class:`engram.sdk.aio.AsyncEngramClient`, aiohttp) are only *drivers*: each performs
the steps with its own HTTP library and sleeps with its own clock.

This module imports the standard library only (and ``streams``' retry and error types).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar
from urllib.parse import quote, urlencode

from streams.retry import Backoff

from .auth import receiver_of, sign_headers
from .errors import (
    BadRequest,
    IngestRefused,
    IngestTimeout,
    InvalidCID,
    Offline,
    QueryRefused,
    ServerError,
    error_for,
    refused_here,
    retry_after_of,
)
from .models import BlobReceipt, Hit, ItemResult, Memory, MemoryPage

__all__ = [
    "CID_RE",
    "CONTENT_CID_RE",
    "ClientCore",
    "Concurrently",
    "Exchange",
    "Op",
    "Parallel",
    "Reply",
    "RetryPolicy",
    "Sleep",
    "TransportFailure",
    "axon_urls",
    "check_cid",
    "image_type",
    "jsonl_items",
    "pick_live",
    "run_sync",
]

T = TypeVar("T")

CID_RE = re.compile(r"v1::[0-9a-fA-F]{64}")
CONTENT_CID_RE = re.compile(r"sha256:[0-9a-fA-F]{64}")
#: items per ``/IngestBatch`` request (the axon takes at most 1000)
DEFAULT_CHUNK = 64
#: ``batch_ingest`` requests in flight: the miner embeds one while the next ones wait in
#: its queue, so its model does not idle between a client's requests
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 16
MAX_CHUNK = 1000
USER_AGENT = "engram-sdk/1"


# --- the steps a driver performs ---------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """Send one HTTP request to ``base_url + path`` (``path`` already percent-encoded,
    query string included) and report a :class:`Reply` or a :class:`TransportFailure`."""

    base_url: str
    method: str
    path: str
    body: bytes | None
    headers: Mapping[str, str]
    timeout_s: float

    @property
    def url(self) -> str:
        return self.base_url + self.path


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Parallel:
    """Perform these exchanges concurrently; send back their outcomes in order."""

    exchanges: tuple[Exchange, ...]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return {"error": f"HTTP {self.status}: not a JSON answer"}

    def json_object(self) -> dict[str, Any]:
        out = self.json()
        return out if isinstance(out, dict) else {"result": out}


@dataclass(frozen=True)
class TransportFailure:
    """The request got no HTTP answer: ``kind`` is ``connect`` or ``timeout``."""

    kind: str
    message: str


@dataclass(frozen=True)
class Concurrently:
    """Run the operations ``ops`` yields, each on its own (its own retries and sleeps), at
    most ``limit`` at a time, taking the next as one ends; send back their results in
    ``ops``' order, or raise the first error (no new operation starts after it)."""

    ops: Iterator[Op[Any]]
    limit: int


Step: TypeAlias = Exchange | Sleep | Parallel | Concurrently
Outcome: TypeAlias = Reply | TransportFailure
Op: TypeAlias = Generator[Step, Any, T]


# --- retries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a request on connection errors, timeouts and 5xx answers only (never a 4xx),
    ``retries`` times after the first try, waiting ``backoff`` or the server's
    ``Retry-After`` (whichever is longer; a ``Retry-After`` above ``max_retry_after_s`` is
    not waited for: the error is raised with it)."""

    retries: int = 3
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.25, maximum=4.0))
    max_retry_after_s: float = 30.0

    def delay(self, attempt: int, outcome: Outcome) -> float | None:
        """Seconds to wait before retry number ``attempt`` (0-based), or None: give up."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, TransportFailure):
            return self.backoff.delay(attempt)
        if outcome.status < 500:
            return None
        wait = self.backoff.delay(attempt)
        after = retry_after_of(outcome.headers)
        if after is not None:
            if after > self.max_retry_after_s:
                return None
            wait = max(wait, after)
        return wait


# --- helpers -----------------------------------------------------------------------------


def check_cid(cid: object) -> str:
    """``cid`` if it is a well-formed memory CID, else :class:`InvalidCID`."""
    if not isinstance(cid, str) or not CID_RE.fullmatch(cid):
        raise InvalidCID(cid)
    return cid


def _check_content_cid(cid: object) -> str:
    if not isinstance(cid, str) or not CONTENT_CID_RE.fullmatch(cid):
        raise InvalidCID(cid)
    return cid


def _dumps(body: Any, op: str = "") -> bytes:
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as exc:  # NaN / infinity
        raise refused_here(op, f"the request is not valid JSON: {exc}") from None
    except TypeError as exc:
        raise refused_here(op, f"the request cannot be sent as JSON: {exc}") from None


def _vector(values: Any, op: str) -> list[float]:
    """A vector as a list of floats (numpy arrays and buffers via ``tolist``)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    try:
        return [float(x) for x in values]
    except (TypeError, ValueError):
        raise refused_here(op, "a vector must be a sequence of numbers") from None


def _request_id() -> str:
    return uuid.uuid4().hex


def _multipart(
    fields: Sequence[tuple[str, str | bytes, str | None, str | None]],
) -> tuple[bytes, str]:
    """``multipart/form-data`` from ``(name, value, filename, content_type)``; returns
    (body, Content-Type)."""
    boundary = f"engram-{uuid.uuid4().hex}"
    out: list[bytes] = []
    for name, value, filename, ctype in fields:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            safe = filename.replace('"', "%22").replace("\r", "").replace("\n", "")
            disp += f'; filename="{safe}"'
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        data = value.encode() if isinstance(value, str) else value
        out += [head.encode(), b"\r\n", data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)


def image_type(data: bytes, filename: str | None = None) -> str:
    """The media type of an upload: from its first bytes (PNG, JPEG, GIF, WebP, PDF),
    else its file name, else ``application/octet-stream``."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if filename:
        import mimetypes

        guessed, _enc = mimetypes.guess_type(filename)
        if guessed:
            return guessed
    return "application/octet-stream"


def jsonl_items(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``(line, item)`` for each non-empty line of a JSONL file: the parsed item (a string
    or an object with ``text``/``embedding``, ``metadata``, ``namespace``, ``request_id``),
    or the reason the line cannot be one (a ``str`` prefixed ``!``)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                yield n, f"!not JSON: {exc}"
                continue
            if isinstance(row, str):
                row = {"text": row}
            if not isinstance(row, dict):
                yield n, "!a line must be a JSON string or object"
                continue
            yield n, row


# --- the core ----------------------------------------------------------------------------


class CoreView:
    """What both clients say about themselves, read from their one :class:`ClientCore`."""

    _core: ClientCore

    @property
    def base_url(self) -> str:
        return self._core.url

    @property
    def urls(self) -> list[str]:
        return list(self._core.urls)

    @property
    def timeout(self) -> float:
        return self._core.timeout_s

    @property
    def namespace(self) -> str:
        return self._core.namespace

    @property
    def hotkey(self) -> str | None:
        """The ss58 address requests are signed with (None: unsigned)."""
        kp = self._core.keypair
        return str(kp.ss58_address) if kp is not None else None


@dataclass
class ClientCore:
    """Configuration and state shared by the drivers, and every operation as an
    :data:`Op`. ``urls`` are tried in turn: a miner that does not answer hands over to
    the next (the one that answered is kept)."""

    urls: list[str]
    timeout_s: float = 30.0
    namespace: str = "public"
    keypair: Any | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: how long ``ingest`` waits for its memory to be stored (server wait, then polling)
    wait_s: float = 30.0
    poll_s: float = 0.25
    current: int = 0
    _receivers: dict[str, str | None] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.urls[self.current]

    # --- sending ------------------------------------------------------------------------

    def _receiver(self, base_url: str) -> Op[str | None]:
        if base_url not in self._receivers:
            reply = yield Exchange(
                base_url, "GET", "/health", None, {"User-Agent": USER_AGENT}, self.timeout_s
            )
            if isinstance(reply, TransportFailure):
                return None  # the request itself will fail and be retried
            self._receivers[base_url] = receiver_of(reply.json_object())
        return self._receivers[base_url]

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        *,
        op: str = "",
        accept: tuple[int, ...] = (),
        signed: bool = True,
        timeout_s: float | None = None,
    ) -> Op[Reply]:
        """One request with signing, retries and failover; a 2xx (or a status in
        ``accept``) is returned, anything else raised as the SDK's exception."""
        attempt = 0
        tried_urls = 0
        while True:
            base = self.url
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            if content_type:
                headers["Content-Type"] = content_type
            if signed and self.keypair is not None:
                receiver = yield from self._receiver(base)
                if receiver is not None:
                    headers.update(sign_headers(self.keypair, method, path, body or b"", receiver))
            outcome = yield Exchange(base, method, path, body, headers, timeout_s or self.timeout_s)
            if isinstance(outcome, Reply) and (outcome.status < 500 or outcome.status in accept):
                if outcome.status < 400 or outcome.status in accept:
                    return outcome
                raise error_for(
                    outcome.status, outcome.json_object(), outcome.headers, op=op, url=base + path
                )
            if isinstance(outcome, TransportFailure) and len(self.urls) > 1:
                self._receivers.pop(base, None)
                self.current = (self.current + 1) % len(self.urls)
                tried_urls += 1
                if tried_urls < len(self.urls):
                    continue  # the next miner at once
                tried_urls = 0
            delay = self.retry.delay(attempt, outcome)
            if delay is None:
                if isinstance(outcome, TransportFailure):
                    raise Offline(base, outcome.message)
                raise error_for(
                    outcome.status, outcome.json_object(), outcome.headers, op=op, url=base + path
                )
            attempt += 1
            yield Sleep(delay)

    def send_json(self, method: str, path: str, body: Any = None, **kw: Any) -> Op[dict[str, Any]]:
        data = None if body is None else _dumps(body, kw.get("op", ""))
        ctype = None if body is None else "application/json"
        reply = yield from self.send(method, path, data, ctype, **kw)
        return reply.json_object()

    # --- health -------------------------------------------------------------------------

    def health(self) -> Op[dict[str, Any]]:
        """``GET /health`` (a degraded miner's 503 answer is returned, not raised)."""
        reply = yield from self.send("GET", "/health", op="health", accept=(503,), signed=False)
        out = reply.json_object()
        # the predecessor SDK's keys: "vectors" (the memories held) and "uid" (unknown here)
        out.setdefault("vectors", out.get("memories"))
        out.setdefault("uid", None)
        return out

    def stats(self) -> Op[dict[str, Any]]:
        return (yield from self.send_json("GET", "/stats", op="stats"))

    def is_online(self) -> Op[bool]:
        try:
            yield from self.health()
        except (Offline, ServerError):
            return False
        return True

    # --- ingest -------------------------------------------------------------------------

    def _ns(self, namespace: str | None) -> str:
        return namespace if namespace is not None else self.namespace

    def ingest_body(
        self,
        text: str | None,
        embedding: Any,
        metadata: Mapping[str, Any] | None,
        namespace: str | None,
        request_id: str | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "metadata": dict(metadata or {}),
            "namespace": self._ns(namespace),
            "request_id": request_id or _request_id(),
        }
        if embedding is not None:
            body["raw_embedding"] = _vector(embedding, "ingest")
        else:
            if not isinstance(text, str):
                raise refused_here("ingest", f"text must be a string, not {type(text).__name__}")
            body["text"] = text
        return body

    def _ingest(self, body: dict[str, Any], wait_s: float | None) -> Op[str]:
        wait = self.wait_s if wait_s is None else wait_s
        kind = "raw" if "raw_embedding" in body else "text"
        rid = body["request_id"]
        deadline = time.monotonic() + wait
        res = yield from self.send_json("POST", "/IngestSynapse", body, op="ingest", accept=(422,))
        while True:
            status = res.get("status")
            if status == "stored" and isinstance(res.get("cid"), str):
                return check_cid(res["cid"])
            if status == "rejected":
                raise IngestRefused(422, str(res.get("error") or "rejected"), self.url, res)
            if res.get("error"):
                raise IngestRefused(400, str(res["error"]), self.url, res)
            if time.monotonic() >= deadline:
                raise IngestTimeout(rid, wait)
            yield Sleep(self.poll_s)
            res = yield from self.ingest_status(rid, kind)

    def ingest(
        self,
        text: str,
        metadata: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        request_id: str | None = None,
        wait_s: float | None = None,
    ) -> Op[str]:
        body = self.ingest_body(text, None, metadata, namespace, request_id)
        return (yield from self._ingest(body, wait_s))

    def ingest_embedding(
        self,
        embedding: Any,
        metadata: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        request_id: str | None = None,
        wait_s: float | None = None,
        model_version: str | None = None,
    ) -> Op[str]:
        body = self.ingest_body(None, embedding, metadata, namespace, request_id)
        if model_version is not None:
            body["model_version"] = model_version
        return (yield from self._ingest(body, wait_s))

    def ingest_status(self, request_id: str, kind: str | None = None) -> Op[dict[str, Any]]:
        path = f"/ingest/{quote(request_id, safe='')}"
        if kind:
            path += "?" + urlencode({"kind": kind})
        return (yield from self.send_json("GET", path, op="ingest"))

    def _item_body(self, item: Any, namespace: str | None) -> dict[str, Any]:
        if isinstance(item, str):
            return self.ingest_body(item, None, None, namespace, None)
        if not isinstance(item, Mapping):
            raise refused_here(
                "ingest", "an item must be a string or an object with text/embedding"
            )
        emb = item.get("embedding", item.get("raw_embedding"))
        meta = item.get("metadata")
        if meta is not None and not isinstance(meta, Mapping):
            raise refused_here("ingest", "metadata must be an object")
        ns = item.get("namespace", namespace)
        body = self.ingest_body(item.get("text"), emb, meta, ns, item.get("request_id"))
        return body

    def batch_ingest(
        self,
        items: Iterable[Any] | str | os.PathLike[str],
        *,
        namespace: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        wait: bool = True,
        timeout_s: float = 60.0,
        progress: Callable[[int, int | None], None] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Op[list[ItemResult]]:
        """Ingest many: chunked ``/IngestBatch`` requests, up to ``concurrency`` in flight;
        one :class:`ItemResult` per item, in input order. An item the miner finds invalid
        is reported and the rest of its chunk is sent again; a chunk the miner finds too
        large is split. ``progress`` may be called from the driver's threads."""
        if isinstance(items, str | os.PathLike):
            source: Iterable[tuple[int | None, Any]] = jsonl_items(items)
            total = None
        else:
            seq = items if isinstance(items, Sequence) else list(items)
            total = len(seq)
            source = ((None, x) for x in seq)
        chunk_size = max(1, min(chunk_size, MAX_CHUNK))
        results: list[ItemResult] = []
        done = [0, -1]  # items done, and the count last reported
        lock = threading.Lock()  # chunks may end on the sync driver's threads

        def report(n: int) -> None:
            with lock:
                done[0] += n
                done[1] = done[0]
                if progress is not None:
                    progress(done[0], total)

        def report_invalid() -> None:  # counted, reported with the next chunk
            with lock:
                done[0] += 1

        def send(chunk: list[tuple[ItemResult, dict[str, Any]]]) -> Op[None]:
            yield from self._send_chunk(chunk, wait, timeout_s)
            report(len(chunk))

        def chunks() -> Iterator[Op[None]]:  # read lazily: a file is never held whole
            chunk: list[tuple[ItemResult, dict[str, Any]]] = []
            for index, (line, item) in enumerate(source):
                if isinstance(item, str) and line is not None and item.startswith("!"):
                    results.append(ItemResult(index, None, "invalid", error=item[1:], line=line))
                    report_invalid()
                    continue
                try:
                    body = self._item_body(item, namespace)
                except BadRequest as exc:
                    results.append(ItemResult(index, None, "invalid", error=exc.reason, line=line))
                    report_invalid()
                    continue
                res = ItemResult(index, body["request_id"], "accepted", line=line)
                results.append(res)
                chunk.append((res, body))
                if len(chunk) >= chunk_size:
                    yield send(chunk)
                    chunk = []
            if chunk:
                yield send(chunk)

        limit = max(1, min(concurrency, MAX_CONCURRENCY))
        yield Concurrently(chunks(), limit)
        if done[1] != done[0]:
            report(0)  # the invalid items after the last chunk (or no chunk at all)
        return results

    def _send_chunk(
        self, chunk: list[tuple[ItemResult, dict[str, Any]]], wait: bool, timeout_s: float
    ) -> Op[None]:
        payload = {
            "items": [b for _r, b in chunk],
            "wait": wait,
            "timeout_s": min(max(timeout_s, 0.0), 60.0),
        }
        try:
            out = yield from self.send_json(
                "POST",
                "/IngestBatch",
                payload,
                op="ingest",
                timeout_s=max(self.timeout_s, timeout_s + 10.0),
            )
        except BadRequest as exc:
            invalid = {
                d["index"]: str(d.get("error"))
                for d in exc.body.get("items") or []
                if isinstance(d, dict) and isinstance(d.get("index"), int)
            }
            if exc.status == 400 and invalid:
                for i, reason in invalid.items():
                    if 0 <= i < len(chunk):
                        chunk[i][0].status, chunk[i][0].error = "invalid", reason
                rest = [c for i, c in enumerate(chunk) if i not in invalid]
                if rest:
                    yield from self._send_chunk(rest, wait, timeout_s)
                return
            if exc.status == 413 and len(chunk) > 1:
                half = len(chunk) // 2
                yield from self._send_chunk(chunk[:half], wait, timeout_s)
                yield from self._send_chunk(chunk[half:], wait, timeout_s)
                return
            for r, _b in chunk:
                r.status, r.error = "invalid", exc.reason
            return
        for (r, _b), got in zip(chunk, out.get("results") or [], strict=False):
            r.status = str(got.get("status") or "accepted")
            r.cid = got.get("cid")
            r.error = got.get("error")
            r.duplicate = bool(got.get("duplicate", False))

    # --- query --------------------------------------------------------------------------

    def _query(
        self, body: dict[str, Any], namespace: str | None, flt: Any, include_text: bool
    ) -> Op[list[Hit]]:
        ns = self._ns(namespace)
        body["namespace"] = ns
        if flt is not None:
            body["filter"] = flt
        out = yield from self.send_json("POST", "/QuerySynapse", body, op="query")
        if out.get("error"):
            raise QueryRefused(200, str(out["error"]), self.url, out)
        hits = [Hit(h) for h in out.get("results") or [] if isinstance(h, dict)]
        for h in hits:
            check_cid(h.get("cid"))
        if include_text:
            for h in hits:
                mem = yield from self.get(h.cid, ns, _allow_missing=True)
                h["text"] = mem.text if mem is not None else None
        return hits

    def query(
        self,
        text: str,
        top_k: int = 10,
        *,
        namespace: str | None = None,
        filter: Mapping[str, Any] | None = None,
        include_text: bool = False,
    ) -> Op[list[Hit]]:
        body = {"query_text": text, "top_k": top_k}
        return (yield from self._query(body, namespace, filter, include_text))

    def query_by_vector(
        self,
        vector: Any,
        top_k: int = 10,
        *,
        namespace: str | None = None,
        filter: Mapping[str, Any] | None = None,
        include_text: bool = False,
    ) -> Op[list[Hit]]:
        body = {"query_vector": _vector(vector, "query"), "top_k": top_k}
        return (yield from self._query(body, namespace, filter, include_text))

    # --- memories -----------------------------------------------------------------------

    def get(
        self, cid: str, namespace: str | None = None, *, _allow_missing: bool = False
    ) -> Op[Memory | None]:
        check_cid(cid)
        path = f"/retrieve/{quote(cid, safe=':')}"
        if namespace is not None:
            path += "?" + urlencode({"namespace": namespace})
        reply = yield from self.send("GET", path, op="get", accept=(404,) if _allow_missing else ())
        if reply.status == 404:
            return None
        return Memory.from_json(reply.json_object())

    def delete(self, cid: str) -> Op[bool]:
        check_cid(cid)
        out = yield from self.send_json("DELETE", f"/memory/{quote(cid, safe=':')}", op="delete")
        return bool(out.get("deleted", True))

    def list_memories(
        self,
        namespace: str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> Op[MemoryPage]:
        params: dict[str, str] = {"namespace": self._ns(namespace), "limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        if filter is not None:
            params["filter"] = _dumps(filter).decode()
        out = yield from self.send_json("GET", "/memories?" + urlencode(params), op="list")
        mems = [Memory.from_json(m) for m in out.get("memories") or [] if isinstance(m, dict)]
        nxt = out.get("next_cursor")
        return MemoryPage(mems, nxt if isinstance(nxt, str) and nxt else None)

    # --- namespaces ---------------------------------------------------------------------

    def create_namespace(self, namespace: str, visibility: str = "private") -> Op[dict[str, Any]]:
        body = {"namespace": namespace, "visibility": visibility}
        return (yield from self.send_json("POST", "/namespaces", body, op="namespace"))

    def grant(self, namespace: str, hotkey: str, access: str = "read") -> Op[dict[str, Any]]:
        path = f"/namespaces/{quote(namespace, safe='')}/grants"
        body = {"hotkey": hotkey, "access": access}
        return (yield from self.send_json("POST", path, body, op="namespace"))

    def revoke(self, namespace: str, hotkey: str) -> Op[dict[str, Any]]:
        path = f"/namespaces/{quote(namespace, safe='')}/grants/{quote(hotkey, safe='')}"
        return (yield from self.send_json("DELETE", path, op="namespace"))

    # --- blobs --------------------------------------------------------------------------

    def ingest_blob(
        self,
        data: bytes | str | os.PathLike[str],
        *,
        media_type: str | None,
        filename: str | None = None,
        namespace: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Op[BlobReceipt]:
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            filename = filename or path.name
            data = path.read_bytes()
        media_type = media_type or image_type(data, filename)
        fields: list[tuple[str, str | bytes, str | None, str | None]] = [
            ("file", data, filename or "blob", media_type)
        ]
        if namespace is not None or self.namespace != "public":
            fields.append(("namespace", self._ns(namespace), None, None))
        if metadata:
            fields.append(("metadata", _dumps(dict(metadata)).decode(), None, "application/json"))
        body, ctype = _multipart(fields)
        reply = yield from self.send("POST", "/blob", body, ctype, op="ingest")
        out = reply.json_object()
        return BlobReceipt(
            content_cid=_check_content_cid(out.get("content_cid")),
            media_type=str(out.get("media_type") or media_type),
            size=int(out.get("size") or len(data)),
            duplicate=bool(out.get("duplicate", False)),
        )

    def blob(self, content_cid: str) -> Op[bytes]:
        _check_content_cid(content_cid)
        reply = yield from self.send("GET", f"/blob/{quote(content_cid, safe=':')}", op="blob")
        return reply.body

    def blob_status(self, content_cid: str) -> Op[dict[str, Any]]:
        _check_content_cid(content_cid)
        path = f"/blob/{quote(content_cid, safe=':')}/status"
        return (yield from self.send_json("GET", path, op="blob"))

    # --- discovery ----------------------------------------------------------------------

    def probe(self, urls: Sequence[str], timeout_s: float) -> Op[list[tuple[str, float]]]:
        """The miners among ``urls`` whose ``/health`` answers ``ok``, fastest first, with
        their answer time in seconds."""
        t0 = time.monotonic()
        steps = tuple(
            Exchange(u, "GET", "/health", None, {"User-Agent": USER_AGENT}, timeout_s) for u in urls
        )
        outcomes = yield Parallel(steps)
        live: list[tuple[str, float]] = []
        for u, (outcome, took) in zip(urls, outcomes, strict=True):
            if isinstance(outcome, Reply) and outcome.status == 200:
                if outcome.json_object().get("status") == "ok":
                    live.append((u, took if took is not None else time.monotonic() - t0))
        live.sort(key=lambda x: x[1])
        return live


def axon_urls(metagraph: Any, *, scheme: str = "http") -> list[str]:
    """Base URLs of the serving miners of a :class:`~engram.chain.base.Metagraph` (active
    neurons with an axon and no validator permit), in uid order."""
    urls: list[str] = []
    for n in metagraph.neurons:
        if not n.axon or n.validator_permit or not n.active:
            continue
        host, _, port = str(n.axon).rpartition(":")
        if not host or not port.isdigit() or host in ("0.0.0.0", "::", "[::]"):
            continue
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        urls.append(f"{scheme}://{host}:{port}")
    return urls


def pick_live(probed: list[tuple[str, float]], top_n: int, where: str) -> list[str]:
    if not probed:
        raise Offline(where, "no miner answered /health")
    return [u for u, _t in probed[: max(1, top_n)]]


def run_sync(op: Op[T], perform: Callable[[Step], Any]) -> T:
    """Drive ``op`` with a blocking ``perform(step) -> outcome``."""
    try:
        step = next(op)
        while True:
            step = op.send(perform(step))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
