"""Connecting to the bus: the embedded nats-server by default, an external one when
``ENGRAM_NATS_URL`` is set (user/password, token, creds, nkey seed and TLS supported)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from streams.publisher import Publisher
from streams.retry import Backoff, retry
from streams.topology import STREAMS, StreamSpec, ensure

from .config import Settings
from .natsd import EmbeddedNats

__all__ = ["Bus", "connect_options", "open_bus", "start_embedded"]

log = structlog.get_logger("engram.bus")


@dataclass
class Bus:
    nc: NATS
    js: JetStreamContext
    publisher: Publisher
    settings: Settings
    server: EmbeddedNats | None  # the embedded server, when this process started or joined one

    @property
    def url(self) -> str:
        return self.server.url if self.server else str(self.settings.nats_url)

    async def close(self, timeout: float = 5.0) -> None:
        """Drain (bounded by ``timeout``) or, while disconnected, just close; then stop the
        embedded server if we own it."""
        try:
            if not self.nc.is_connected:
                raise ConnectionError("not connected")
            await asyncio.wait_for(self.nc.drain(), timeout)
        except Exception:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), timeout)
        if self.server is not None:
            self.server.stop()


def connect_options(settings: Settings, url: str) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",")],
        "name": f"engram:{settings.producer}",
        "connect_timeout": settings.nats_connect_timeout_s,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
    }
    if settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password or ""
    if settings.nats_token:
        opts["token"] = settings.nats_token
    if settings.nats_creds:
        opts["user_credentials"] = settings.nats_creds
    if settings.nats_nkey_seed:
        opts["nkeys_seed"] = settings.nats_nkey_seed
    if settings.nats_tls_ca or settings.nats_tls_cert or url.startswith("tls://"):
        ctx = ssl.create_default_context(cafile=settings.nats_tls_ca)
        if settings.nats_tls_cert:
            ctx.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        opts["tls"] = ctx

    async def _error_cb(exc: Exception) -> None:
        log.warning("nats error", error=repr(exc))

    async def _disconnected_cb() -> None:
        log.info("nats disconnected")

    async def _reconnected_cb() -> None:
        log.info("nats reconnected")

    opts.update(
        error_cb=_error_cb, disconnected_cb=_disconnected_cb, reconnected_cb=_reconnected_cb
    )
    return opts


async def _ensure_with_retry(
    js: JetStreamContext, streams: tuple[StreamSpec, ...], replicas: int
) -> None:
    """A cluster that just started may not have elected its JetStream meta leader yet.
    A refusal (:class:`~streams.topology.TopologyError`) is not retried."""
    await retry(
        lambda: ensure(js, streams, replicas=replicas),
        what="ensure streams",
        retry_on=(TimeoutError, NatsTimeoutError, ServiceUnavailableError),
        backoff=Backoff(initial=0.25, maximum=2.0),
        deadline_s=30,
    )


def start_embedded(settings: Settings) -> EmbeddedNats:
    return EmbeddedNats(
        data_dir=settings.data_path / "nats",
        port=settings.nats_port,
        monitor_port=settings.nats_monitor_port,
        sync=settings.nats_sync,
    ).start()


async def open_bus(
    settings: Settings,
    *,
    streams: tuple[StreamSpec, ...] = STREAMS,
    ensure_streams: bool = True,
) -> Bus:
    """Connect (starting the embedded server if no URL is configured) and ensure streams."""
    server = None
    url = settings.nats_url
    if not url:
        server = start_embedded(settings)
        url = server.url
    try:
        nc = await nats.connect(**connect_options(settings, url))
    except Exception:
        if server is not None:
            server.stop()
        raise
    js = nc.jetstream(timeout=10)
    if ensure_streams:
        await _ensure_with_retry(js, streams, settings.stream_replicas)
    log.debug("bus open", url=url, embedded=server is not None)
    return Bus(
        nc=nc,
        js=js,
        publisher=Publisher(js, producer=settings.producer, nc=nc),
        settings=settings,
        server=server,
    )


@asynccontextmanager
async def bus_session(settings: Settings, **kwargs: Any) -> AsyncIterator[Bus]:
    bus = await open_bus(settings, **kwargs)
    try:
        yield bus
    finally:
        await bus.close()
