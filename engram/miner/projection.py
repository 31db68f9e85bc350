"""The store projection runner: follows MEMORY (``Embedded``/``Deleted``) into the store.

Like :class:`streams.projection.ProjectionRunner`, but batched: it reads the stream with
an ephemeral ordered consumer from ``store.applied_seq + 1``, applies each fetched batch
in one store transaction (in a thread, so the event loop keeps answering queries), then
publishes ``Stored`` for each newly applied memory and wakes the axon requests waiting
for it. A malformed or unusable event is dead-lettered (consumer ``store``) and skipped;
the sequence still advances, so it is never re-read. Snapshots are taken every N events
or T seconds and on stop; after a crash the store reopens at its last snapshot and the
runner replays the rest of the stream, which the store applies idempotently.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import FetchTimeoutError

from streams.events import DeadLettered, Embedded, EventDecodeError, Stored, decode
from streams.publisher import Publisher

from .store import ApplyResult, MemoryStore

__all__ = ["StoreRunner"]

log = structlog.get_logger("engram.miner.store")

STREAM = "MEMORY"
SUBJECTS = [Embedded.SUBJECT, "engram.memory.deleted"]


@dataclass
class _RunnerStats:
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    malformed: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass
class StoreRunner:
    js: JetStreamContext
    store: MemoryStore
    publisher: Publisher | None = None  # None: do not publish Stored / dead letters
    producer: str = ""
    batch: int = 256
    idle_s: float = 0.2
    snapshot_every_events: int = 5000
    snapshot_every_s: float = 60.0
    stats: _RunnerStats = field(default_factory=_RunnerStats)
    _waiters: dict[str, list[asyncio.Future[ApplyResult]]] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _since_snapshot: int = 0
    _last_snapshot: float = field(default_factory=time.monotonic)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def stop(self) -> None:
        self._stop.set()

    # --- waiting for a request ------------------------------------------------------------

    def expect(self, request_id: str) -> asyncio.Future[ApplyResult]:
        """A future resolved when the memory of ``request_id`` is applied. Register it
        *before* publishing the request."""
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, []).append(fut)
        return fut

    def forget(self, request_id: str, fut: asyncio.Future[ApplyResult]) -> None:
        futs = self._waiters.get(request_id)
        if futs and fut in futs:
            futs.remove(fut)
            if not futs:
                del self._waiters[request_id]

    async def wait_for_seq(self, seq: int, timeout: float = 10.0) -> bool:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.store.applied_seq >= seq)

        try:
            await asyncio.wait_for(_wait(), timeout)
            return True
        except TimeoutError:
            return False

    # --- the loop -------------------------------------------------------------------------

    async def _consumer(self) -> tuple[Any, str]:
        name = f"store-{uuid.uuid4().hex[:12]}"
        config = api.ConsumerConfig(
            name=name,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.store.applied_seq + 1,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            filter_subjects=SUBJECTS,
            mem_storage=True,
        )
        await self.js.add_consumer(STREAM, config=config)
        sub = await self.js.pull_subscribe_bind(consumer=name, stream=STREAM)
        return sub, name

    async def _pass(self, follow: bool, end_seq: int = 0) -> int:
        """Read from applied_seq + 1; without ``follow`` stop at ``end_seq``."""
        applied = 0
        sub, name = await self._consumer()
        try:
            while not self._stop.is_set():
                try:
                    msgs = await sub.fetch(self.batch, timeout=self.idle_s)
                except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                    if not follow:
                        return applied  # the rest was filtered out
                    await self._maybe_snapshot()
                    continue
                applied += await self._apply(msgs)
                await self._maybe_snapshot()
                if not follow and self.store.applied_seq >= end_seq:
                    return applied
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(STREAM, name)
        return applied

    async def _apply(self, msgs: list[Any]) -> int:
        items: list[tuple[int, Any]] = []
        bad: list[tuple[Any, str]] = []
        last = self.store.applied_seq
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq <= last:
                continue
            last = seq
            try:
                items.append((seq, decode(msg.data)))
            except EventDecodeError as exc:
                bad.append((msg, f"malformed event: {exc}"))
        results = await asyncio.to_thread(self.store.apply_batch, items) if items else []
        self.store.skip_to(last)
        self.stats.batches += 1
        self._since_snapshot += len(items)
        stored: list[Stored] = []
        by_seq = {seq: ev for seq, ev in items}
        for res in results:
            if res.kind == "rejected":
                self.stats.rejected += 1
                bad.append((by_seq[res.seq], res.error))
            elif res.kind in ("stored", "duplicate"):
                if res.kind == "stored":
                    self.stats.stored += 1
                else:
                    self.stats.duplicates += 1
                ev = by_seq[res.seq]
                stored.append(
                    Stored(
                        cid=res.cid,
                        request_id=res.request_id,
                        duplicate=res.kind == "duplicate",
                        causation_id=ev.event_id,
                        producer=self.producer,
                    )
                )
            if res.request_id:
                for fut in self._waiters.pop(res.request_id, []):
                    if not fut.done():
                        fut.set_result(res)
        async with self._changed:
            self._changed.notify_all()
        if self.publisher is not None:
            if stored:
                await self.publisher.publish_many(stored)
            for item, error in bad:
                await self._dead_letter(item, error)
        return len(results)

    async def _dead_letter(self, item: Any, error: str) -> None:
        assert self.publisher is not None
        if isinstance(item, Embedded):
            from streams.events import encode

            data, subject, seq, cause = encode(item), item.SUBJECT, 0, item.event_id
        else:  # a raw message
            data, subject = item.data, item.subject
            seq, cause = item.metadata.sequence.stream, None
        self.stats.malformed += 0 if isinstance(item, Embedded) else 1
        await self.publisher.publish(
            DeadLettered(
                causation_id=cause,
                original_subject=subject,
                original_data=data,
                stream=STREAM,
                stream_seq=seq,
                consumer="store",
                deliveries=1,
                error=error,
                error_type="StoreRejected",
                producer=self.producer,
            )
        )
        log.warning("store dead-lettered an event", error=error, subject=subject)

    async def _maybe_snapshot(self, force: bool = False) -> None:
        due = self._since_snapshot >= self.snapshot_every_events or (
            self._since_snapshot > 0
            and time.monotonic() - self._last_snapshot >= self.snapshot_every_s
        )
        if force or due:
            await asyncio.to_thread(self.store.snapshot)
            self._since_snapshot = 0
            self._last_snapshot = time.monotonic()

    async def catch_up(self) -> int:
        """Apply everything up to the stream's current end (no waiting for more)."""
        info = await self.js.stream_info(STREAM)
        end = info.state.last_seq
        if end <= self.store.applied_seq:
            return 0
        return await self._pass(follow=False, end_seq=end)

    async def rebuild(self) -> int:
        """Forget the store and replay MEMORY from sequence 1, then snapshot."""
        await asyncio.to_thread(self.store.reset)
        n = await self.catch_up()
        await self._maybe_snapshot(force=True)
        return n

    async def run(self) -> None:
        """Follow the stream until :meth:`stop`, resuming after connection trouble."""
        log.info("store projection resuming", from_seq=self.store.applied_seq + 1)
        try:
            while not self._stop.is_set():
                try:
                    await self._pass(follow=True)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.stats.errors += 1
                    self.stats.last_error = repr(exc)
                    log.warning("store projection interrupted; resuming", error=repr(exc))
                    await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.snapshot)
