"""The direct publisher: trusted producers inside an operator's cluster write ingests
straight onto the bus, skipping HTTP.

It publishes exactly what the axon publishes for a text ingest — an
:class:`~streams.events.IngestRequested` on ``engram.ingest.requested`` — through the
event layer's own :class:`~streams.publisher.Publisher` (``Nats-Msg-Id`` de-duplication,
acks in flight together), in batches. Each item carries an idempotency id
(``request_id``; by default derived from its content, so publishing the same file twice
stores nothing twice) under the publisher's ``caller`` scope, as a signed client's are
under its hotkey.

Confirmation comes from the same facts the axon waits for: the store's ``Stored`` notice
on NOTICES (``engram.notice.stored``) and the embed worker's ``IngestRejected`` on MEMORY
(``engram.memory.rejected``), both followed from a little before the publisher started
(the de-duplication window), so an ingest already stored — whose publish JetStream
dropped as a duplicate — is confirmed from its earlier notice.

Usage (inside an event loop)::

    async with DirectPublisher.connect(settings, caller="etl") as pub:
        results = await pub.publish(["first memory", {"text": "second", "metadata": {}}])
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from nats.js import JetStreamContext

from engram.config import Settings
from engram.miner.embedder import DEFAULT_MODEL_VERSION
from engram.miner.limits import check_ingest, check_request_id
from streams.events import IngestRejected, IngestRequested, Stored, request_key
from streams.publisher import Publisher
from streams.replay import replay_batches

__all__ = ["DirectPublisher", "Published", "content_request_id"]

log = structlog.get_logger("engram.sdk.publisher")

#: how far back the notices are followed: JetStream's de-duplication window and a margin
LOOKBACK_S = 150.0
#: outcomes remembered for keys nobody waits for yet (bounded)
MAX_REMEMBERED = 200_000
DEFAULT_BATCH = 256


@dataclass
class Published:
    """The outcome of one published item: ``stored`` (``cid``), ``rejected`` (``error``:
    the embed worker refused it), ``pending`` (not confirmed within the wait; it will be
    stored) or ``invalid`` (refused here, never published)."""

    index: int
    request_id: str | None
    status: str
    cid: str | None = None
    error: str | None = None
    duplicate: bool = False
    line: int | None = None


def content_request_id(text: str, metadata: Mapping[str, Any], namespace: str) -> str:
    """The default idempotency id: a digest of what is stored, so the same memory
    published again is recognised."""
    blob = json.dumps([text, metadata, namespace], sort_keys=True, ensure_ascii=False)
    return "c-" + hashlib.sha256(blob.encode()).hexdigest()[:40]


class DirectPublisher:
    """Publishes ingests onto the bus and waits for them to be stored (see the module)."""

    def __init__(
        self,
        js: JetStreamContext,
        publisher: Publisher,
        *,
        caller: str = "direct",
        model_version: str = DEFAULT_MODEL_VERSION,
        lookback_s: float = LOOKBACK_S,
    ) -> None:
        if reason := check_request_id(caller):
            raise ValueError(f"caller: {reason.replace('request_id', 'the caller scope')}")
        self.js = js
        self.publisher = publisher
        self.caller = caller
        self.model_version = model_version
        self.lookback_s = lookback_s
        self._outcomes: OrderedDict[str, Stored | IngestRejected] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[Stored | IngestRejected]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, settings: Settings, *, caller: str = "direct"
    ) -> AsyncIterator[DirectPublisher]:
        """A started publisher on the bus of ``settings`` (``nats_url`` and credentials),
        closed on exit."""
        from engram.bus import open_bus

        bus = await open_bus(settings)
        pub = cls(bus.js, bus.publisher, caller=caller)
        try:
            await pub.start()
            yield pub
        finally:
            await pub.close()
            await bus.close()

    # --- following the outcomes ---------------------------------------------------------

    async def start(self) -> None:
        """Follow ``Stored`` and ``IngestRejected`` from ``lookback_s`` ago."""
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.lookback_s)
        for stream, subject in (("NOTICES", Stored.SUBJECT), ("MEMORY", IngestRejected.SUBJECT)):
            self._tasks.append(asyncio.create_task(self._follow(stream, subject, since)))

    async def _follow(self, stream: str, subject: str, since: dt.datetime) -> None:
        while not self._stop.is_set():
            try:
                async for batch in replay_batches(
                    self.js,
                    stream,
                    start_time=since,
                    subjects=[subject],
                    follow=True,
                    idle_s=0.5,
                    stop_event=self._stop,
                ):
                    for item in batch:
                        if isinstance(item.event, Stored | IngestRejected):
                            self._note(item.event)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a server restart drops the consumer: follow again
                log.warning("following outcomes failed; again", stream=stream, error=repr(exc))
                await asyncio.sleep(0.5)

    def _note(self, ev: Stored | IngestRejected) -> None:
        if ev.caller != self.caller:
            return
        key = request_key(ev.request_kind or "text", ev.caller, ev.request_id)
        if isinstance(self._outcomes.get(key), Stored):
            return  # a memory once stored stays the answer
        self._outcomes[key] = ev
        self._outcomes.move_to_end(key)
        while len(self._outcomes) > MAX_REMEMBERED:
            self._outcomes.popitem(last=False)
        for fut in self._waiters.pop(key, []):
            if not fut.done():
                fut.set_result(ev)

    async def close(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    # --- publishing ---------------------------------------------------------------------

    def _event(self, item: Any, namespace: str, metadata: Mapping[str, Any]) -> IngestRequested:
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, Mapping):
            raise ValueError("an item must be a string or an object with text")
        text = item.get("text")
        meta = item.get("metadata")
        meta = {**metadata, **meta} if isinstance(meta, Mapping) else meta
        meta = dict(metadata) if meta is None else meta
        ns = item.get("namespace") or namespace
        if reason := check_ingest(text, meta, ns, self.model_version):
            raise ValueError(reason)
        assert isinstance(text, str)  # check_ingest accepts strings only
        rid = item.get("request_id")
        if rid is None:
            rid = content_request_id(text, meta, ns)
        elif reason := check_request_id(rid):
            raise ValueError(reason)
        return IngestRequested(
            request_id=rid,
            text=text,
            metadata=meta,
            namespace=ns,
            model_version=self.model_version,
            caller=self.caller,
        )

    async def publish(
        self,
        items: Iterable[Any],
        *,
        namespace: str = "public",
        metadata: Mapping[str, Any] | None = None,
        wait: bool = True,
        timeout_s: float = 60.0,
        batch: int = DEFAULT_BATCH,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Published]:
        """Publish ``items`` (strings, or objects with ``text`` and optional ``metadata``,
        ``namespace``, ``request_id``; a ``(line, item)`` pair keeps its line) in batches
        of ``batch``; with ``wait``, until each is stored or rejected or ``timeout_s``
        has passed since the last batch was acknowledged. One :class:`Published` per item,
        in order. ``progress(published, confirmed)`` after each batch and confirmation."""
        results: list[Published] = []
        events: list[tuple[Published, IngestRequested]] = []
        for index, raw in enumerate(items):
            line = None
            if isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], int):
                line, raw = raw
            try:
                ev = self._event(raw, namespace, metadata or {})
            except ValueError as exc:
                results.append(Published(index, None, "invalid", error=str(exc), line=line))
                continue
            res = Published(index, ev.request_id, "pending", line=line)
            results.append(res)
            events.append((res, ev))
        futs: dict[str, asyncio.Future[Stored | IngestRejected]] = {}
        loop = asyncio.get_running_loop()

        def settle(res: Published, ev: Stored | IngestRejected) -> None:
            if isinstance(ev, Stored):
                res.status, res.cid, res.duplicate = "stored", ev.cid, ev.duplicate
            else:
                res.status, res.error = "rejected", ev.reason

        published = 0
        size = max(1, batch)
        for start in range(0, len(events), size):
            chunk = events[start : start + size]
            if wait:  # interest first, so no outcome slips between publish and wait
                for _res, ev in chunk:
                    key = ev.request_key()
                    if key not in futs:
                        fut: asyncio.Future[Stored | IngestRejected] = loop.create_future()
                        futs[key] = fut
                        self._waiters.setdefault(key, []).append(fut)
                        if (known := self._outcomes.get(key)) is not None:
                            fut.set_result(known)
            await self.publisher.publish_many([ev for _r, ev in chunk])
            published += len(chunk)
            if progress is not None:
                progress(published, sum(f.done() for f in futs.values()))
        if not wait:
            return results
        pending = {f for f in futs.values() if not f.done()}
        deadline = loop.time() + timeout_s
        while pending and loop.time() < deadline:
            _done, pending = await asyncio.wait(
                pending, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
            )
            if progress is not None:
                progress(published, sum(f.done() for f in futs.values()))
        if progress is not None:
            progress(published, sum(f.done() for f in futs.values()))
        for res, ev in events:
            key = ev.request_key()
            fut = futs[key]
            if fut.done():
                settle(res, fut.result())
            else:
                fut.cancel()
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters[:] = [f for f in waiters if not f.done()]
                if not waiters:
                    self._waiters.pop(key, None)
        return results
