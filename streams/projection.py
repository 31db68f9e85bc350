"""Projections: state folded from the log, which records the stream sequence it applied.

A projection keeps ``last_seq`` together with its state; ``snapshot``/``restore`` persist
both at once, so after a restart the runner resumes from ``last_seq + 1`` and applies each
event exactly once. ``rebuild`` resets the state and replays from sequence 1: for a
deterministic ``apply`` that gives the same state bit for bit, which is how audits work.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import ClassVar

import structlog
from nats.js import JetStreamContext

from .events import Event
from .replay import replay_raw

__all__ = ["Projection", "ProjectionRunner"]

log = structlog.get_logger("engram.projection")


class Projection(ABC):
    """Subclass, set ``stream`` (and optionally ``subjects``), implement ``apply``.

    Override ``snapshot``/``restore``/``reset`` for state that lives outside memory.
    """

    stream: ClassVar[str]
    subjects: ClassVar[list[str] | None] = None

    def __init__(self) -> None:
        self.last_seq = 0

    @abstractmethod
    def apply(self, seq: int, event: Event) -> None:
        """Fold one event into the state. Must be deterministic."""

    def skip(self, seq: int, error: str) -> None:  # noqa: B027 - optional hook
        """Called for a message that is not a known event (it is skipped, and logged)."""

    def snapshot(self) -> None:  # noqa: B027 - optional hook
        """Persist state and ``last_seq`` atomically."""

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
    ) -> None:
        self.js = js
        self.projection = projection
        self.snapshot_every_events = snapshot_every_events
        self.snapshot_every_s = snapshot_every_s
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._applied = asyncio.Condition()
        self._stop = asyncio.Event()

    @property
    def name(self) -> str:
        return type(self.projection).__name__

    def stop(self) -> None:
        self._stop.set()

    async def _apply_from(self, follow: bool) -> int:
        p = self.projection
        count = 0
        async for item in replay_raw(
            self.js,
            p.stream,
            start_seq=p.last_seq + 1,
            subjects=p.subjects,
            follow=follow,
            stop_event=self._stop,
        ):
            if item.seq <= p.last_seq:
                continue  # already applied (idempotent by sequence)
            if item.event is None:
                log.warning(
                    "projection skipped malformed message",
                    projection=self.name,
                    seq=item.seq,
                    error=item.error,
                )
                p.skip(item.seq, item.error or "")
            else:
                p.apply(item.seq, item.event)
            p.last_seq = item.seq
            count += 1
            self._since_snapshot += 1
            if follow:
                await self._notify()
                self._maybe_snapshot()
        await self._notify()
        return count

    async def _notify(self) -> None:
        async with self._applied:
            self._applied.notify_all()

    def _maybe_snapshot(self, force: bool = False) -> None:
        due = self._since_snapshot >= self.snapshot_every_events or (
            self._since_snapshot and time.monotonic() - self._last_snapshot >= self.snapshot_every_s
        )
        if force or due:
            self.projection.snapshot()
            self._since_snapshot = 0
            self._last_snapshot = time.monotonic()

    async def catch_up(self) -> int:
        """Apply everything up to the stream's current end, then snapshot."""
        n = await self._apply_from(follow=False)
        self._maybe_snapshot(force=n > 0)
        return n

    async def rebuild(self) -> int:
        """Reset and replay from sequence 1."""
        self.projection.reset()
        return await self.catch_up()

    async def run(self) -> None:
        """Restore, catch up, then follow the stream until :meth:`stop`; snapshots on the way
        and on exit. Reconnects (from ``last_seq + 1``) if the subscription breaks."""
        self.projection.restore()
        log.info("projection resuming", projection=self.name, from_seq=self.projection.last_seq + 1)
        try:
            while not self._stop.is_set():
                try:
                    await self._apply_from(follow=True)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "projection follow interrupted; resuming",
                        projection=self.name,
                        error=repr(exc),
                    )
                    await asyncio.sleep(0.5)
        finally:
            self._maybe_snapshot(force=True)

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
