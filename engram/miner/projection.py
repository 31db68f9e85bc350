"""The store projection: MEMORY (``Embedded``, ``Deleted``, ``IngestRejected`` and the access
events ``NamespaceCreated``, ``AccessGranted``, ``AccessRevoked``) → the store.

It runs on the one projection runner (:class:`streams.projection.ProjectionRunner`); what
the store needs is expressed through that runner's hooks:

* :class:`StoreProjection` applies each fetched batch in one store transaction, in a
  worker thread (``threaded``), and snapshots in the background;
* every ``Embedded`` has its CID recomputed from its content by the store; a mismatch, or
  any exception while applying one event, refuses that event only — it is dead-lettered
  (consumer ``store``, with the cause) and the projection goes on;
* :class:`StoreRunner` wakes the axon requests waiting for their memory
  (read-your-writes, keyed by the request key) and publishes the derived ``Stored`` notice
  on the NOTICES stream, once per MEMORY sequence: only past the store's persisted
  high-water mark, so a replay after a restart never publishes it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from nats.js import JetStreamContext

from streams.events import (
    AccessGranted,
    AccessRevoked,
    DeadLettered,
    Deleted,
    Embedded,
    Event,
    IngestRejected,
    NamespaceCreated,
    Stored,
)
from streams.projection import BatchOutcome, Failure, Projection, ProjectionRunner
from streams.publisher import Publisher
from streams.replay import Replayed
from streams.retry import retry

from .store import ApplyResult, MemoryStore

__all__ = ["StoreProjection", "StoreRunner"]

log = structlog.get_logger("engram.miner.store")

STREAM = "MEMORY"
SUBJECTS = [
    Embedded.SUBJECT,
    Deleted.SUBJECT,
    IngestRejected.SUBJECT,
    # access (engram.miner.access): applied in order with the memories they govern
    NamespaceCreated.SUBJECT,
    AccessGranted.SUBJECT,
    AccessRevoked.SUBJECT,
]
CONSUMER = "store"


class StoreProjection(Projection):
    """The store as a projection: ``last_seq`` is the store's ``applied_seq``."""

    stream = STREAM
    subjects = SUBJECTS
    threaded = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    @property
    def last_seq(self) -> int:
        return self.store.applied_seq

    @last_seq.setter
    def last_seq(self, seq: int) -> None:
        if seq > self.store.applied_seq:
            self.store.skip_to(seq)

    def apply(self, seq: int, event: Event) -> None:
        self.store.apply_batch([(seq, event)], raise_on_reject=True)

    def apply_batch(self, items: Sequence[Replayed]) -> BatchOutcome:
        out = BatchOutcome()
        good: list[tuple[int, Any]] = []
        by_seq: dict[int, Replayed] = {}
        for item in items:
            by_seq[item.seq] = item
            if item.event is None:
                out.failures.append(
                    Failure(item, f"malformed event: {item.error}", "EventDecodeError")
                )
            else:
                good.append((item.seq, item.event))
        out.results = self.store.apply_batch(good)
        for res in out.results:
            if res.kind == "rejected" and res.error_type != "IngestRejected":
                out.failures.append(Failure(by_seq[res.seq], res.error, res.error_type))
        if items:
            self.store.skip_to(items[-1].seq)  # a malformed tail is seen, not re-read
        return out

    def snapshot(self) -> None:
        self.store.snapshot()

    def begin_snapshot(self) -> Callable[[], None]:
        write = self.store.begin_snapshot()

        def persist() -> None:
            write()

        return persist

    def reset(self) -> None:
        self.store.reset()


@dataclass
class _RunnerStats:
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    refused: int = 0  # events the store could not apply (dead-lettered when publishing)
    malformed: int = 0  # of which not a known event at all
    dead_lettered: int = 0
    notices: int = 0
    errors: int = 0  # recovered: a broken subscription, a failed snapshot
    last_error: str = ""


class StoreRunner(ProjectionRunner):
    """Follows MEMORY into a :class:`MemoryStore` (see the module's docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        store: MemoryStore,
        *,
        publisher: Publisher | None = None,  # None: publish no notices nor dead letters
        producer: str = "",
        batch: int = 256,
        idle_s: float = 0.2,
        snapshot_every_events: int = 5000,
        snapshot_every_s: float = 60.0,
    ) -> None:
        super().__init__(
            js,
            StoreProjection(store),
            snapshot_every_events=snapshot_every_events,
            snapshot_every_s=snapshot_every_s,
            batch=batch,
            idle_s=idle_s,
        )
        self.store = store
        self.publisher = publisher
        self.producer = producer
        self.stats = _RunnerStats()
        self._waiters: dict[str, list[asyncio.Future[ApplyResult]]] = {}
        # the notices of the last batch, publishing while the next batch is fetched and
        # applied (one batch at a time, in order: see ``applied``)
        self._notifying: asyncio.Task[None] | None = None

    # --- waiting for a request ------------------------------------------------------------

    def expect(self, request_key: str) -> asyncio.Future[ApplyResult]:
        """A future resolved when the request ``request_key`` (``Event.request_key()``) is
        stored or rejected. Register it *before* publishing the request."""
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_key, []).append(fut)
        return fut

    def forget(self, request_key: str, fut: asyncio.Future[ApplyResult]) -> None:
        futs = self._waiters.get(request_key)
        if futs and fut in futs:
            futs.remove(fut)
            if not futs:
                del self._waiters[request_key]

    async def wait_for_seq(self, seq: int, timeout: float = 10.0) -> bool:
        """Wait until MEMORY ``seq`` is applied; False on timeout."""
        return await self.wait_for(seq, timeout)

    # --- hooks ------------------------------------------------------------------------------

    async def applied(self, results: list[Any]) -> None:
        self.stats.batches += 1
        notices: list[Stored] = []
        for res in results:
            if res.kind == "stored":
                self.stats.stored += 1
            elif res.kind == "duplicate":
                self.stats.duplicates += 1
            elif res.kind == "rejected":
                self.stats.rejected += 1
            if res.kind in ("stored", "duplicate") and res.seq > self.store.notified_seq:
                notices.append(self._notice(res))
            if res.request_key:
                for fut in self._waiters.pop(res.request_key, []):
                    if not fut.done():
                        fut.set_result(res)
        # The notices go out in the background, in order, one batch behind at most: the
        # runner fetches and applies the next batch meanwhile (a notice's fsync'd publish
        # held up the next apply, and so the clients waiting for it, by ~15-40 ms a batch).
        await self._settle_notices()
        self._notifying = asyncio.create_task(
            self._notify_stored(notices, self.store.applied_seq), name="stored-notices"
        )

    async def _settle_notices(self) -> None:
        """Wait for the notices in flight (their publish retries until the bus answers or
        the runner stops)."""
        task, self._notifying = self._notifying, None
        if task is not None:
            await task

    async def failed(self, failure: Failure) -> None:
        item = failure.item
        self.stats.refused += 1
        self.stats.malformed += failure.error_type == "EventDecodeError"
        log.warning(
            "store refused an event", seq=item.seq, error=failure.error, type=failure.error_type
        )
        if self.publisher is None:
            return
        dead = DeadLettered(
            causation_id=item.event.event_id if item.event is not None else None,
            original_subject=item.subject,
            original_data=item.data,
            stream=STREAM,
            stream_seq=item.seq,
            consumer=CONSUMER,
            deliveries=1,
            error=failure.error,
            error_type=failure.error_type,
            producer=self.producer,
        )
        publisher = self.publisher
        await retry(lambda: publisher.publish(dead), what="dead letter", stop=self._stop)
        self.stats.dead_lettered += 1

    def note_error(self, exc: BaseException) -> None:
        super().note_error(exc)
        self.stats.errors, self.stats.last_error = self.errors, self.last_error

    # --- notices --------------------------------------------------------------------------

    def _notice(self, res: ApplyResult) -> Stored:
        return Stored(
            cid=res.cid,
            request_id=res.request_id,
            duplicate=res.kind == "duplicate",
            memory_seq=res.seq,
            caller=res.caller,
            request_kind=res.request_kind,
            producer=self.producer,
        )

    async def _notify_stored(self, notices: list[Stored], upto: int) -> None:
        """Publish ``Stored`` notices, then raise the high-water mark to ``upto``."""
        if self.publisher is None or upto <= self.store.notified_seq:
            return
        if notices:
            publisher = self.publisher
            await retry(lambda: publisher.publish_many(notices), what="notices", stop=self._stop)
            self.stats.notices += len(notices)
        await asyncio.to_thread(self.store.mark_notified, upto)

    async def _publish_owed(self) -> None:
        """Notices for what the last snapshot holds beyond the high-water mark (a crash
        between a snapshot and the notices of its last batches)."""
        if self.publisher is None or self.store.notified_seq >= self.store.applied_seq:
            return
        upto = self.store.applied_seq
        while self.store.notified_seq < upto:
            owed = await asyncio.to_thread(self.store.stored_since, self.store.notified_seq)
            owed = [r for r in owed if r.seq <= upto]
            last = owed[-1].seq if len(owed) >= 10_000 else upto
            await self._notify_stored([self._notice(r) for r in owed], last)

    # --- lifecycle ------------------------------------------------------------------------

    async def _apply_from(self, follow: bool) -> int:
        try:
            return await super()._apply_from(follow)
        finally:  # a catch-up or an interrupted follow ends with its notices out
            await self._settle_notices()

    async def catch_up(self) -> int:
        await self._publish_owed()
        return await super().catch_up()

    async def run(self) -> None:
        await self._publish_owed()
        await super().run()
