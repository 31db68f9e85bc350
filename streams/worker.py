"""The worker runner: one durable pull consumer wired to one job.

A worker fetches batches, decodes them into typed events and hands each batch to a handler.
The handler may mark single deliveries as poisoned (dead-letter now, with the cause) or for
retry; what it leaves unmarked is acked when it returns. If the handler raises, the whole
batch is retried with backoff (``nak`` with a delay); a message that has failed
``max_deliver`` times becomes a :class:`~streams.events.DeadLettered` event that carries
the original bytes and the cause. A malformed message (not a known event) is dead-lettered
at once and the worker keeps running. Dead letters are published and acked by JetStream
*before* the original is acked, so nothing is dropped silently.

Long work keeps its messages alive with ``in_progress`` heartbeats. ``stop()`` (wired to
SIGTERM/SIGINT by :func:`run_until_signal`) stops fetching, lets in-flight batches finish
within a grace period, and naks what is left so another process picks it up at once.

Late arrivals: a ``fetch`` can return before the server has sent all it was asked for (its
deadline covers the transfer); the rest reach the subscription's queue afterwards. The next
``fetch`` returns them first, but while every slot is busy there is no next fetch, and a
queued message would be redelivered after ``ack_wait`` and done twice. So while it waits for
a slot the runner moves them into a buffer it owns (``fetch(1)`` while the public
``pending_msgs`` says the queue holds some: a queued message is returned without asking the
server for more), heartbeats that buffer, and starts it on the next free slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError

from .errors import EngramError
from .events import DeadLettered, Event, EventDecodeError, decode
from .publisher import Publisher
from .retry import Backoff, sleep_or_stop
from .topology import ConsumerSpec, ensure_consumer

__all__ = ["Delivery", "Poison", "Worker", "WorkerStats", "run_until_signal"]

log = structlog.get_logger("engram.worker")

_FETCH_TIMEOUTS = (TimeoutError, FetchTimeoutError, NatsTimeoutError)
#: Waits between attempts to bind the consumer, and after a failed fetch.
BIND_BACKOFF = Backoff(initial=0.25, maximum=5.0)
FETCH_BACKOFF = Backoff(initial=0.1, maximum=2.0)


class Poison(EngramError):
    """Raise from a handler to dead-letter the whole batch now (no retry will help)."""


@dataclass
class Delivery:
    msg: Msg
    event: Event
    stream_seq: int
    num_delivered: int
    outcome: str | None = None  # None (= ack), "ack", "poison" or "retry"
    cause: str | BaseException | None = None
    delay: float | None = None

    def poison(self, cause: str | BaseException) -> None:
        """Dead-letter this message with ``cause``; retrying will not help."""
        self.outcome, self.cause = "poison", cause

    def retry(
        self, cause: str | BaseException = "retry requested", delay: float | None = None
    ) -> None:
        """Redeliver later (with backoff unless ``delay`` is given)."""
        self.outcome, self.cause, self.delay = "retry", cause, delay

    def ack(self) -> None:
        """Explicitly mark as done (the default for unmarked deliveries)."""
        self.outcome = "ack"


BatchHandler = Callable[[list[Delivery]], Awaitable[None]]


@dataclass
class WorkerStats:
    fetched: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    malformed: int = 0
    parked: int = 0  # late arrivals kept alive while every slot was busy
    batches: int = 0
    errors: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def record_error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = repr(exc)


def _describe(cause: object) -> tuple[str, str]:
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}", type(cause).__name__
    return str(cause), "Poison"


@dataclass
class Worker:
    js: JetStreamContext
    spec: ConsumerSpec
    handler: BatchHandler
    publisher: Publisher
    batch: int = 64
    fetch_wait_s: float = 0.5
    concurrency: int = 2
    max_deliver: int = 5
    backoff_s: Sequence[float] = (0.5, 2.0, 8.0, 30.0)
    stop_grace_s: float = 20.0
    replicas: int = 1
    stats: WorkerStats = field(default_factory=WorkerStats)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @property
    def name(self) -> str:
        return self.spec.durable

    def stop(self) -> None:
        self._stopping.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """Fetch and handle until :meth:`stop`; returns after in-flight work is settled."""
        sub = await self._bind()
        if sub is None:  # stopped before the consumer could be bound
            return
        slots = asyncio.Semaphore(self.concurrency)
        buffered: list[Msg] = []  # fetched, not started yet: kept alive by this loop
        interval = max(self.spec.ack_wait_s / 3, 0.5)
        failures = 0  # fetch errors in a row
        self._ready.set()
        log.info("worker started", worker=self.name, stream=self.spec.stream, batch=self.batch)
        try:
            while not self._stopping.is_set():
                try:
                    await asyncio.wait_for(slots.acquire(), timeout=interval)
                except TimeoutError:
                    # Every slot is busy: take late arrivals into the buffer and tell the
                    # server all of it is in hand (module docstring).
                    late = await self._take_late(sub)
                    self.stats.parked += len(late)
                    buffered.extend(late)
                    for m in buffered:
                        with contextlib.suppress(Exception):
                            await m.in_progress()
                    continue
                if self._stopping.is_set():
                    slots.release()
                    break
                if buffered:
                    msgs, buffered = buffered[: self.batch], buffered[self.batch :]
                    self.stats.fetched += len(msgs)
                    self._spawn(msgs, slots)
                    continue
                try:
                    msgs = await sub.fetch(self.batch, timeout=self.fetch_wait_s)
                except _FETCH_TIMEOUTS:
                    slots.release()
                    continue
                except Exception as exc:  # connection trouble: log, back off, keep going
                    slots.release()
                    self.stats.record_error(exc)
                    delay = FETCH_BACKOFF.delay(failures)
                    failures += 1
                    log.warning("fetch failed", worker=self.name, error=repr(exc), retry_in_s=delay)
                    await sleep_or_stop(delay, self._stopping)
                    continue
                failures = 0
                if not msgs:
                    slots.release()
                    continue
                self.stats.fetched += len(msgs)
                self._spawn(msgs, slots)
        finally:
            await self._drain()
            for m in buffered + await self._take_late(sub):  # not started: hand back now
                with contextlib.suppress(Exception):
                    await m.nak()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            log.info("worker stopped", worker=self.name, **self.stats.as_dict())

    async def _take_late(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """Move what the subscription's queue holds into the caller's hands.

        ``fetch(1)`` returns a queued message without a request to the server; only when the
        queue holds nothing but status messages does it ask for one more, which is then in
        hand too (and its own straggler, if any, is taken next time)."""
        out: list[Msg] = []
        while sub.pending_msgs > 0:
            try:
                out.extend(await sub.fetch(1, timeout=max(self.fetch_wait_s, 0.01)))
            except _FETCH_TIMEOUTS:
                break
            except Exception as exc:  # the connection is down: what is queued is lost anyway
                self.stats.record_error(exc)
                break
        return out

    def _spawn(self, msgs: list[Msg], slots: asyncio.Semaphore) -> None:
        task = asyncio.create_task(self._handle_batch(msgs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: slots.release())

    async def _bind(self) -> JetStreamContext.PullSubscription | None:
        """Create/update the durable consumer and bind to it, retrying with backoff while the
        server is unreachable or still electing (a cluster starting, a restart)."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                await ensure_consumer(self.js, self.spec, self.replicas)
                return await self.js.pull_subscribe_bind(
                    durable=self.spec.durable, stream=self.spec.stream
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.record_error(exc)
                delay = BIND_BACKOFF.delay(attempt)
                attempt += 1
                log.warning(
                    "cannot bind consumer yet; retrying",
                    worker=self.name,
                    error=repr(exc),
                    retry_in_s=round(delay, 2),
                )
                await sleep_or_stop(delay, self._stopping)
        return None

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.stop_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- one batch --------------------------------------------------------------------

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        self.stats.batches += 1
        deliveries: list[Delivery] = []
        for msg in msgs:
            meta = msg.metadata
            seq, n = meta.sequence.stream, meta.num_delivered
            if n > self.max_deliver:
                # a worker died or timed out on it every time: give up loudly
                await self._dead_letter(
                    msg,
                    None,
                    f"exceeded {self.max_deliver} deliveries without an ack",
                    "MaxDeliveries",
                )
                continue
            try:
                event = decode(msg.data)
            except EventDecodeError as exc:
                self.stats.malformed += 1
                await self._dead_letter(msg, None, f"malformed event: {exc}", "EventDecodeError")
                continue
            deliveries.append(Delivery(msg=msg, event=event, stream_seq=seq, num_delivered=n))
        if not deliveries:
            return
        heartbeat = asyncio.create_task(self._keep_alive(deliveries))
        try:
            with structlog.contextvars.bound_contextvars(
                worker=self.name,
                first_seq=deliveries[0].stream_seq,
                event_id=deliveries[0].event.event_id,
            ):
                await self.handler(deliveries)
        except asyncio.CancelledError:
            # stopping: hand unsettled messages back now rather than after ack_wait
            for d in deliveries:
                with contextlib.suppress(Exception):
                    await d.msg.nak()
            raise
        except Poison as exc:
            for d in deliveries:
                if d.outcome != "ack":
                    d.poison(exc)
        except Exception as exc:
            self.stats.record_error(exc)
            log.warning(
                "batch failed",
                worker=self.name,
                error=repr(exc),
                event_ids=[d.event.event_id for d in deliveries[:5]],
            )
            for d in deliveries:
                if d.outcome is None:
                    d.retry(exc)
        finally:
            heartbeat.cancel()
        for d in deliveries:
            await self._settle(d)

    async def _keep_alive(self, deliveries: list[Delivery]) -> None:
        interval = max(self.spec.ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            for d in deliveries:
                if d.outcome is None:
                    with contextlib.suppress(Exception):
                        await d.msg.in_progress()

    async def _settle(self, d: Delivery) -> None:
        if d.outcome in (None, "ack"):
            await d.msg.ack()
            self.stats.acked += 1
        elif d.outcome == "poison":
            text, etype = _describe(d.cause)
            await self._dead_letter(d.msg, d.event, text, etype)
        elif d.num_delivered >= self.max_deliver:
            text, etype = _describe(d.cause)
            await self._dead_letter(
                d.msg, d.event, f"failed {d.num_delivered} times; last error: {text}", etype
            )
        else:
            delay = d.delay
            if delay is None:
                delay = (
                    self.backoff_s[min(d.num_delivered, len(self.backoff_s)) - 1]
                    if self.backoff_s
                    else 0.0
                )
            await d.msg.nak(delay=delay)
            self.stats.retried += 1

    async def _dead_letter(
        self, msg: Msg, event: Event | None, error: str, error_type: str
    ) -> None:
        meta = msg.metadata
        headers = {k: v for k, v in (msg.headers or {}).items() if isinstance(v, str)}
        dead = DeadLettered(
            causation_id=event.event_id if event else headers.get("Nats-Msg-Id"),
            original_subject=msg.subject,
            original_data=msg.data,
            original_headers=headers,
            stream=meta.stream,
            stream_seq=meta.sequence.stream,
            consumer=self.spec.durable,
            deliveries=meta.num_delivered,
            error=error,
            error_type=error_type,
        )
        await self.publisher.publish(dead)  # acked by JetStream before we let go of msg
        await msg.ack()
        self.stats.dead_lettered += 1
        log.warning(
            "dead-lettered",
            worker=self.name,
            stream_seq=meta.sequence.stream,
            event_id=dead.causation_id,
            error=error,
        )


async def run_until_signal(workers: Sequence[Worker], extra: Sequence[Awaitable[Any]] = ()) -> None:
    """Run workers until SIGTERM/SIGINT, then stop them gracefully."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()

    def _stop() -> None:
        log.info("signal received: stopping", uptime_s=round(time.monotonic() - started, 1))
        for w in workers:
            w.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _stop)
    try:
        await asyncio.gather(*(w.run() for w in workers), *extra)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
