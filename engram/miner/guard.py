"""Supervision: a node owns the processes it starts.

:class:`BusGuard` watches the bus: it restarts the embedded nats-server when it dies (same
data dir and ports, so clients reconnect by themselves) with :class:`~streams.retry.Backoff`,
and says whether the bus is up and, if not, why. :class:`WorkerPool` does the same for the
``--workers`` processes. :func:`watch_parent` is the worker's side: it leaves when the
process that started it is gone (the parent-death signal is the first line; this watch is
the fallback, e.g. for a parent that died before the signal was armed).

The decisions are small and the loops only do I/O; both loops end when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from engram.bus import Bus
from engram.natsd import NatsServerError, describe_exit
from streams.errors import Unavailable
from streams.retry import Backoff, sleep_or_stop

__all__ = ["BusGuard", "WorkerPool", "watch_parent"]

log = structlog.get_logger("engram.guard")

T = TypeVar("T")

BUS_BACKOFF = Backoff(initial=0.25, maximum=5.0)
WORKER_BACKOFF = Backoff(initial=0.5, maximum=30.0)

#: a child that ran this long before dying counts as healthy: its next restart is immediate
STABLE_S = 30.0


@dataclass
class BusGuard:
    """Watches the bus connection and restarts the embedded server it depends on."""

    bus: Bus
    backoff: Backoff = BUS_BACKOFF
    poll_s: float = 0.1
    ready_timeout_s: float = 20.0
    problem: str | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)
    down_since: float | None = field(default=None, init=False)
    _went_down: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _next_try: float = field(default=0.0, init=False)

    @property
    def up(self) -> bool:
        return self.problem is None

    def status(self) -> str:
        """``"up"`` or ``"down: <cause>"`` (what ``/health`` reports as ``bus``)."""
        return "up" if self.problem is None else f"down: {self.problem}"

    def retry_after_s(self) -> float:
        """How long a refused client should wait: until the next restart attempt, ≥ 1 s."""
        return max(1.0, self._next_try - time.monotonic())

    def unavailable(self) -> Unavailable:
        return Unavailable(f"the bus is down ({self.problem}); retry later", self.retry_after_s())

    def check(self) -> None:
        """Raise :class:`Unavailable` while the bus is down."""
        if self.problem is not None:
            raise self.unavailable()

    async def while_up(self, work: Callable[[], Awaitable[T]]) -> T:
        """Await ``work()`` unless the bus is or goes down first: then cancel it and raise
        :class:`Unavailable` at once instead of waiting out publish timeouts."""
        self.check()
        task = asyncio.ensure_future(work())
        down = asyncio.ensure_future(self._went_down.wait())
        try:
            await asyncio.wait({task, down}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            down.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise self.unavailable()
        return task.result()

    def _down(self, problem: str) -> None:
        if self.problem is None:
            self.down_since = time.monotonic()
            log.warning("bus down", cause=problem)
        self.problem = problem
        self._went_down.set()

    def _up(self) -> None:
        if self.problem is not None:
            since = self.down_since or time.monotonic()
            log.info("bus up again", outage_s=round(time.monotonic() - since, 2))
        self.problem = None
        self.down_since = None
        self._went_down.clear()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            server = self.bus.server
            exited = server.exited() if server is not None else None
            if exited is not None:
                await self._restart(f"nats-server {exited}", stop)
                continue
            if not self.bus.nc.is_connected:
                # keep a known cause (a restarted server the client has not rejoined yet)
                self._down(self.problem or "the connection to NATS is lost; reconnecting")
            else:
                self._up()
            if await sleep_or_stop(self.poll_s, stop):
                return

    async def _restart(self, cause: str, stop: asyncio.Event) -> None:
        server = self.bus.server
        assert server is not None
        self._down(cause)
        attempt = 0
        while not stop.is_set():
            failure = "did not become ready"
            try:
                server.spawn()  # on the loop's thread: the parent-death signal follows it
                deadline = time.monotonic() + self.ready_timeout_s
                while time.monotonic() < deadline:
                    if await asyncio.to_thread(server.ready):
                        self.restarts += 1
                        self._down(f"{cause}; restarted, reconnecting")
                        log.info("nats-server restarted", attempt=attempt + 1, url=server.url)
                        return
                    if await sleep_or_stop(0.05, stop):
                        return
                server.kill()
            except NatsServerError as exc:
                failure = str(exc).splitlines()[0]
            delay = self.backoff.delay(attempt)
            self._next_try = time.monotonic() + delay
            self._down(f"{cause}; restart {attempt + 1} failed: {failure}")
            log.warning("nats-server restart failed", error=failure, retry_in_s=round(delay, 2))
            attempt += 1
            if await sleep_or_stop(delay, stop):
                return


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive short-lived runs (the backoff's attempt number)
    last_exit: str | None = None
    next_start: float = 0.0


@dataclass
class WorkerPool:
    """``size`` worker processes from ``spawn``, each restarted with backoff when it dies."""

    spawn: Callable[[], subprocess.Popen[bytes]]
    size: int
    backoff: Backoff = WORKER_BACKOFF
    poll_s: float = 0.2
    slots: list[_Slot] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.slots = [_Slot() for _ in range(self.size)]

    def start(self) -> None:
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: _Slot) -> None:
        slot.proc = self.spawn()
        slot.started = time.monotonic()
        log.info("worker process started", pid=slot.proc.pid, restarts=slot.restarts)

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def stats(self) -> list[dict[str, Any]]:
        out = []
        now = time.monotonic()
        for s in self.slots:
            alive = s.proc is not None and s.proc.poll() is None
            state = "running" if alive else f"restarting in {max(s.next_start - now, 0):.1f}s"
            out.append(
                {
                    "pid": s.proc.pid if alive and s.proc is not None else None,
                    "state": state,
                    "restarts": s.restarts,
                    "last_exit": s.last_exit,
                    "uptime_s": round(now - s.started, 1) if alive else 0.0,
                }
            )
        return out

    async def run(self, stop: asyncio.Event) -> None:
        while not await sleep_or_stop(self.poll_s, stop):
            now = time.monotonic()
            for slot in self.slots:
                if slot.proc is not None:
                    code = slot.proc.poll()
                    if code is None:
                        continue
                    slot.last_exit = describe_exit(code)
                    slot.failures = 0 if now - slot.started >= STABLE_S else slot.failures + 1
                    slot.next_start = now + (
                        self.backoff.delay(slot.failures - 1) if slot.failures else 0.0
                    )
                    slot.proc = None
                    log.warning(
                        "worker process died",
                        cause=slot.last_exit,
                        restart_in_s=round(slot.next_start - now, 2),
                    )
                if now >= slot.next_start:
                    slot.restarts += 1
                    try:
                        self._start(slot)
                    except OSError as exc:
                        slot.failures += 1
                        slot.next_start = now + self.backoff.delay(slot.failures - 1)
                        log.warning("worker process did not start", error=repr(exc))

    async def stop(self, grace_s: float) -> None:
        """SIGTERM every worker, wait up to ``grace_s`` for all, then SIGKILL the rest."""
        procs = [s.proc for s in self.slots if s.proc is not None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.kill()
                await asyncio.to_thread(p.wait, 5)


async def watch_parent(parent_pid: int, on_gone: Callable[[], None], poll_s: float = 0.5) -> None:
    """Call ``on_gone`` once the process ``parent_pid`` is no longer our parent."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(poll_s)
    log.warning("parent process gone; stopping", parent_pid=parent_pid)
    on_gone()
