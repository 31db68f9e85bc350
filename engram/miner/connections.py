"""The axon's connection and request limits: what an idle or slow client may hold.

- :class:`ConnectionGate` is the protocol factory given to ``loop.create_server``: it wraps
  each of aiohttp's request handlers (``web.AppRunner.server``, a public factory) and caps
  the number of open connections below the open-file limit. At the cap it closes the
  oldest *quiet* connection (one that sent nothing since it opened or since its last
  response) to make room, and otherwise refuses the new one at once (abort, no read).
- Per connection it times out a request head that does not arrive (``head_timeout_s``,
  from the connection's first byte or its opening) and an idle keep-alive connection
  (``keepalive_s``).
- :class:`BoundedExecutor` is the node's thread pool for store and embedding work
  (``asyncio.to_thread`` uses it): at most ``max_workers`` run and ``max_queued`` wait;
  past that a submit raises :class:`~streams.errors.Unavailable` (503) instead of queueing.
- :func:`limits_middleware` reads each body within ``body_timeout_s`` (a chunked body that
  never ends or a short body gets 408 and the connection is closed), and refuses requests
  past ``max_inflight`` with 503 + ``Retry-After`` (``/health`` and ``/metrics`` exempt).

Only public APIs of asyncio and aiohttp are used.
"""

from __future__ import annotations

import asyncio
import resource
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from streams.errors import Unavailable

__all__ = [
    "BoundedExecutor",
    "ConnectionGate",
    "Limits",
    "accept_backlog",
    "connection_cap",
    "limits_middleware",
    "raise_fd_limit",
]

log = structlog.get_logger("engram.axon.connections")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: endpoints that answer even past the in-flight limit (probes must see an overloaded node)
EXEMPT = frozenset({"/health", "/metrics"})


@dataclass(frozen=True)
class Limits:
    max_connections: int = 4096
    max_inflight: int = 256
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_s: float = 15.0


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _margin(fd_limit: int) -> int:
    return max(32, min(256, fd_limit // 4))


def connection_cap(wanted: int, fd_limit: int) -> int:
    """Connections to allow: ``wanted``, but leave a margin of the fd limit for everything
    else the node opens (NATS, sqlite, index files, the model, worker pipes) and for the
    sockets an accept burst holds before the cap can act (:func:`accept_backlog`)."""
    return max(1, min(wanted, fd_limit - _margin(fd_limit)))


def accept_backlog(fd_limit: int) -> int:
    """The listen backlog, which is also how many sockets asyncio accepts in one go before
    the gate sees any of them: that many new fds, plus as many evicted ones not yet closed,
    must fit in the margin with room left for the node's own files."""
    return max(8, min(128, _margin(fd_limit) // 4))


class BoundedExecutor(ThreadPoolExecutor):
    """A thread pool whose queue is bounded: ``submit`` past ``max_workers + max_queued``
    pending calls raises :class:`Unavailable` at once."""

    def __init__(self, max_workers: int, max_queued: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix)
        self.capacity = max_workers + max_queued
        self._slots = threading.BoundedSemaphore(self.capacity)
        self.refused = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            raise Unavailable(
                f"the node's thread pool is full ({self.capacity} calls pending); retry later",
                retry_after_s=1.0,
            )
        try:
            fut = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _f: self._slots.release())
        return fut


class _Refused(asyncio.Protocol):
    """A connection past the cap: closed as soon as it is accepted, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class _Guarded(asyncio.Protocol):
    """aiohttp's handler for one connection, with head and keep-alive deadlines."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.quiet = True  # nothing received since opening or since the last response
        self.in_request = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""

    def _arm(self, kind: str, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_kind = kind
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.timer_kind = None, ""

    def _expire(self) -> None:
        self.gate.timeouts[self.timer_kind] = self.gate.timeouts.get(self.timer_kind, 0) + 1
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol, delegated
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate.opening = max(0, self.gate.opening - 1)
        self.gate.live[self] = None
        self._arm("head", self.gate.limits.head_timeout_s)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.quiet and not self.in_request and self.timer_kind == "keepalive":
            self._arm("head", self.gate.limits.head_timeout_s)  # a new request is starting
        self.quiet = False
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.gate._closed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # called by the middleware
    def request_started(self) -> None:
        self.in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self.in_request = False
        self.quiet = True
        if self.transport is not None and not self.transport.is_closing():
            self._arm("keepalive", self.gate.limits.keepalive_s)


@dataclass
class ConnectionGate:
    """The protocol factory for ``loop.create_server``; ``server`` is aiohttp's factory."""

    server: Callable[[], asyncio.Protocol]
    limits: Limits
    cap: int
    live: dict[_Guarded, None] = field(default_factory=dict)
    opening: int = 0
    refused: int = 0
    evicted: int = 0
    timeouts: dict[str, int] = field(default_factory=dict)

    def __call__(self) -> asyncio.Protocol:
        if len(self.live) + self.opening >= self.cap and not self._evict():
            self.refused += 1
            return _Refused()
        self.opening += 1  # counted from now, so a burst of accepts cannot overshoot the cap
        return _Guarded(self, self.server())

    def _closed(self, proto: _Guarded) -> None:
        self.live.pop(proto, None)

    def _evict(self) -> bool:
        for proto in self.live:  # oldest first
            if proto.quiet and not proto.in_request and proto.transport is not None:
                self.evicted += 1
                self.live.pop(proto)
                proto.transport.abort()
                return True
        return False

    def close_all(self) -> None:
        for proto in list(self.live):
            if proto.transport is not None:
                proto.transport.abort()

    def stats(self) -> dict[str, Any]:
        return {
            "open": len(self.live),
            "cap": self.cap,
            "refused": self.refused,
            "evicted": self.evicted,
            "timeouts": dict(self.timeouts),
        }


@dataclass
class InFlight:
    limit: int
    now: int = 0
    refused: int = 0


def limits_middleware(
    limits: Limits,
    inflight: InFlight,
    bus_check: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]] | None,
) -> Any:
    """Head/keep-alive bookkeeping, the in-flight limit, the body deadline and (for ingest
    routes) the bus check, in that order. Install it inside the error middleware."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        proto = transport.get_protocol() if transport is not None else None
        guarded = proto if isinstance(proto, _Guarded) else None
        if guarded is not None:
            guarded.request_started()
        counted = request.path not in EXEMPT
        try:
            if counted:
                if inflight.now >= inflight.limit:
                    inflight.refused += 1
                    raise Unavailable(
                        f"{inflight.now} requests in flight (the limit is {inflight.limit}); "
                        "retry later",
                        retry_after_s=1.0,
                    )
                inflight.now += 1
            try:
                if request.body_exists:
                    try:
                        await asyncio.wait_for(request.read(), limits.body_timeout_s)
                    except (ConnectionResetError, HttpProcessingError, RequestPayloadError):
                        # cut off or malformed mid-body (a broken gzip stream): a 4xx, not a
                        # logged 500 traceback
                        resp = web.json_response(
                            {"error": "the body could not be read: cut off or malformed"},
                            status=400,
                        )
                        resp.force_close()
                        return resp
                    except TimeoutError:
                        if guarded is not None:
                            guarded.gate.timeouts["body"] = guarded.gate.timeouts.get("body", 0) + 1
                        resp = web.json_response(
                            {"error": f"the body did not arrive in {limits.body_timeout_s:g}s"},
                            status=408,
                        )
                        resp.force_close()
                        # answer now and close: the rest of the body is never read
                        await resp.prepare(request)
                        await resp.write_eof()
                        if transport is not None:
                            transport.close()
                        return resp
                if bus_check is not None:
                    return await bus_check(request, handler)
                return await handler(request)
            finally:
                if counted:
                    inflight.now -= 1
        finally:
            if guarded is not None:
                guarded.request_finished()

    return middleware
