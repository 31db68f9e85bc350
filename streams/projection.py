"""Projections: state folded from the log, which records the stream sequence it applied.

A projection keeps ``last_seq`` together with its state; ``snapshot``/``restore`` persist
both at once, so after a restart the runner resumes from ``last_seq + 1`` and applies each
event exactly once. ``rebuild`` resets the state and replays from sequence 1: for a
deterministic ``apply`` that gives the same state bit for bit, which is how audits work.

One runner serves every projection; what varies is policy, through hooks:

* ``Projection.apply_batch`` folds one fetched batch (default: ``apply`` per event) and
  reports per-event failures instead of raising, so no single event stops the projection;
* ``Projection.threaded``: batches and snapshots run in a worker thread, never on the
  event loop, and a snapshot runs in the background while the runner goes on applying
  (the projection must allow that: it pins a consistent view itself);
* ``ProjectionRunner.applied`` / ``ProjectionRunner.failed`` (async, on the loop): what to
  do with a batch's results (wake waiters, publish notices) and with an event that failed
  (log it; a subclass dead-letters it). Both run before the batch counts as done.

Catch-up and rebuild end when the stream is exhausted (the server's pending count, see
:func:`streams.replay.replay_batches`), never on a quiet timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
from nats.js import JetStreamContext

from .events import Event
from .replay import Replayed, replay_batches
from .retry import Backoff, sleep_or_stop

__all__ = ["BatchOutcome", "Failure", "Projection", "ProjectionRunner"]

log = structlog.get_logger("engram.projection")

_RESUME_BACKOFF = Backoff(initial=0.5)


@dataclass(frozen=True)
class Failure:
    """One event a projection could not apply, with the cause (capped by the caller)."""

    item: Replayed
    error: str
    error_type: str


@dataclass
class BatchOutcome:
    """What ``apply_batch`` did: results for the runner's ``applied`` hook, and failures."""

    results: list[Any] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class Projection(ABC):
    """Subclass, set ``stream`` (and optionally ``subjects``), implement ``apply``.

    Override ``snapshot``/``restore``/``reset`` for state that lives outside memory, and
    ``apply_batch`` to fold a whole fetched batch at once (e.g. one transaction).
    """

    stream: ClassVar[str]
    subjects: ClassVar[list[str] | None] = None
    #: apply batches and take snapshots in a worker thread (the projection is thread-safe
    #: and its ``snapshot`` may run while later batches are applied)
    threaded: ClassVar[bool] = False

    def __init__(self) -> None:
        self.last_seq = 0

    @abstractmethod
    def apply(self, seq: int, event: Event) -> None:
        """Fold one event into the state. Must be deterministic."""

    def apply_batch(self, items: Sequence[Replayed]) -> BatchOutcome:
        """Fold a batch in stream order. An event whose ``apply`` raises is reported as a
        failure and skipped; the others are applied. ``last_seq`` ends at the batch's end."""
        out = BatchOutcome()
        for item in items:
            if item.event is None:
                self.skip(item.seq, item.error or "")
                out.failures.append(
                    Failure(item, f"malformed event: {item.error}", "EventDecodeError")
                )
            else:
                try:
                    self.apply(item.seq, item.event)
                except Exception as exc:
                    out.failures.append(Failure(item, f"{type(exc).__name__}: {exc}", "ApplyError"))
            self.last_seq = item.seq
        return out

    def skip(self, seq: int, error: str) -> None:  # noqa: B027 - optional hook
        """Called for a message that is not a known event (it is skipped, and reported)."""

    def snapshot(self) -> None:  # noqa: B027 - optional hook
        """Persist state and ``last_seq`` atomically."""

    def begin_snapshot(self) -> Callable[[], None]:
        """Pin the state a snapshot will hold and return the call that persists it; the
        runner pins between batches (so the snapshot holds only batches whose hooks ran)
        and persists in the background while later batches apply. Default: nothing to
        pin, everything happens in :meth:`snapshot`."""
        return self.snapshot

    def restore(self) -> None:  # noqa: B027 - optional hook
        """Load the last snapshot (state and ``last_seq``), if any."""

    def reset(self) -> None:
        """Forget all state (before a rebuild)."""
        self.last_seq = 0


class ProjectionRunner:
    def __init__(
        self,
        js: JetStreamContext,
        projection: Projection,
        *,
        snapshot_every_events: int = 1000,
        snapshot_every_s: float = 30.0,
        batch: int = 512,
        idle_s: float = 1.0,
        backoff: Backoff = _RESUME_BACKOFF,
    ) -> None:
        self.js = js
        self.projection = projection
        self.snapshot_every_events = snapshot_every_events
        self.snapshot_every_s = snapshot_every_s
        self.batch = batch
        self.idle_s = idle_s
        self.backoff = backoff
        self.errors = 0
        self.last_error = ""
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._snapshotting: asyncio.Task[None] | None = None
        self._applied = asyncio.Condition()
        self._stop = asyncio.Event()

    @property
    def name(self) -> str:
        return type(self.projection).__name__

    def stop(self) -> None:
        self._stop.set()

    # --- hooks (override in a subclass; they run on the event loop) ----------------------

    def note_error(self, exc: BaseException) -> None:
        """Count an error the runner recovered from (a broken subscription, a snapshot)."""
        self.errors += 1
        self.last_error = repr(exc)

    async def applied(self, results: list[Any]) -> None:
        """Called after each batch with ``BatchOutcome.results`` (default: nothing)."""

    async def failed(self, failure: Failure) -> None:
        """Called for each event the projection could not apply (default: log it)."""
        log.warning(
            "projection skipped an event",
            projection=self.name,
            seq=failure.item.seq,
            error=failure.error,
        )

    # --- the loop -----------------------------------------------------------------------

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self.projection.threaded:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def _apply_from(self, follow: bool) -> int:
        p = self.projection
        count = 0
        async for items in replay_batches(
            self.js,
            p.stream,
            start_seq=p.last_seq + 1,
            subjects=p.subjects,
            follow=follow,
            batch=self.batch,
            idle_s=self.idle_s,
            stop_event=self._stop,
        ):
            todo = [i for i in items if i.seq > p.last_seq]  # idempotent by sequence
            if not todo:
                continue
            outcome: BatchOutcome = await self._call(p.apply_batch, todo)
            if p.last_seq < todo[-1].seq:
                p.last_seq = todo[-1].seq
            for failure in outcome.failures:
                await self.failed(failure)
            await self.applied(outcome.results)
            count += len(todo)
            self._since_snapshot += len(todo)
            await self._notify()
            if follow:
                await self._maybe_snapshot()
        await self._notify()
        return count

    async def _notify(self) -> None:
        async with self._applied:
            self._applied.notify_all()

    def _due(self) -> bool:
        return self._since_snapshot >= self.snapshot_every_events or bool(
            self._since_snapshot and time.monotonic() - self._last_snapshot >= self.snapshot_every_s
        )

    async def _maybe_snapshot(self, force: bool = False) -> None:
        """Snapshot when due. A threaded projection snapshots in the background (one at a
        time) while the runner goes on; ``force`` waits for a snapshot of the state now."""
        if not (force or self._due()):
            return
        if self._snapshotting is not None:
            if not force and not self._snapshotting.done():
                return  # one at a time; the next is taken when this one is done
            with contextlib.suppress(Exception):
                await self._snapshotting
            self._snapshotting = None
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        if self.projection.threaded and not force:
            pinned = asyncio.Event()
            self._snapshotting = asyncio.create_task(self._snapshot_in_background(pinned))
            await pinned.wait()  # the snapshot holds what the hooks have seen, no more
        else:
            await self._call(self.projection.snapshot)

    async def _snapshot_in_background(self, pinned: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        def pin_then_write() -> None:
            # one thread for both steps: the write always follows a successful pin, even
            # if the runner is cancelled meanwhile
            try:
                write = self.projection.begin_snapshot()
            finally:
                loop.call_soon_threadsafe(pinned.set)
            write()

        try:
            await asyncio.to_thread(pin_then_write)
        except Exception as exc:  # the log still holds everything: retried when next due
            self.note_error(exc)
            log.warning("projection snapshot failed", projection=self.name, error=repr(exc))
        finally:
            pinned.set()

    async def catch_up(self) -> int:
        """Apply everything up to the stream's end as it is now, then snapshot."""
        n = await self._apply_from(follow=False)
        if n > 0:
            await self._maybe_snapshot(force=True)
        return n

    async def rebuild(self) -> int:
        """Reset and replay from sequence 1."""
        await self._call(self.projection.reset)
        return await self.catch_up()

    async def run(self) -> None:
        """Restore, catch up, then follow the stream until :meth:`stop`; snapshots on the way
        and on exit. Reconnects (from ``last_seq + 1``) if the subscription breaks."""
        await self._call(self.projection.restore)
        log.info("projection resuming", projection=self.name, from_seq=self.projection.last_seq + 1)
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    await self._apply_from(follow=True)
                    attempt = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.note_error(exc)
                    delay = self.backoff.delay(attempt)
                    attempt += 1
                    log.warning(
                        "projection follow interrupted; resuming",
                        projection=self.name,
                        error=repr(exc),
                        retry_in_s=delay,
                    )
                    if await sleep_or_stop(delay, self._stop):
                        break
        finally:
            await self._maybe_snapshot(force=True)

    async def run_beside(
        self,
        step: Callable[[], Awaitable[object]],
        stop: asyncio.Event,
        *,
        every_s: float,
        what: str,
    ) -> None:
        """For a service that acts on what this projection folds: catch up first (so the
        service sees everything already on the stream), then follow the stream while
        calling ``step`` every ``every_s`` until ``stop``. A failing step is logged and
        tried again next time; a failure of the projection itself ends this."""
        await self.catch_up()
        follow = asyncio.create_task(self.run())
        try:
            while not stop.is_set():
                if follow.done():
                    follow.result()
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("step failed; retrying", what=what, error=repr(exc))
                await sleep_or_stop(every_s, stop)
        finally:
            self.stop()
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)

    async def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Wait until the projection has applied ``seq``; False on timeout."""

        async def _wait() -> None:
            async with self._applied:
                await self._applied.wait_for(lambda: self.projection.last_seq >= seq)

        try:
            await asyncio.wait_for(_wait(), timeout)
            return True
        except TimeoutError:
            return False
