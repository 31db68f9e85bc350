"""One miner process: bus + store projection + axon, and (optionally) the embed worker.

``engram miner run`` runs :class:`MinerNode`; ``engram miner worker`` runs only embed
workers (:func:`run_embed_worker`), which scale out as more processes on the same durable
consumer. The store projection lives with the axon because queries read it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from engram.bus import Bus, open_bus
from engram.config import Settings
from streams.worker import Worker

from .auth import build_auth
from .axon import Axon, make_app
from .embedder import Embedder, default_sessions, get_embedder
from .projection import StoreRunner
from .store import MemoryStore
from .workers import SORT_WINDOW, EmbedHandler, make_embed_worker

__all__ = ["MinerNode", "open_store", "run_embed_worker"]

log = structlog.get_logger("engram.miner")


def cache_dir(settings: Settings) -> Path:
    return settings.data_path / "cache"


def open_store(settings: Settings, dim: int = 384) -> MemoryStore:
    return MemoryStore(settings.data_path / "store", dim=dim)


#: The GIL switch interval of a process that serves queries (Python's default: 5 ms). A
#: query's embedding takes the GIL a dozen times (tokenizer, ONNX run, pooling); while the
#: event loop and the store's thread run Python during an ingest, each take could wait a
#: whole interval: query p99 under ingest measured ~160 ms at 5 ms, ~75-100 ms at 0.5 ms.
QUERY_SWITCH_INTERVAL_S = 0.0005


def load_embedder(settings: Settings, purpose: str = "embed") -> Embedder:
    """The process's one embedding model, for both ``purpose``s ("embed" batches, "query"
    texts): one ONNX session, run by one lane per core for batches and on the query's
    own thread for queries (the lanes yield to it). A separate query model cost ~100-160
    MiB RSS and bought no latency (embedder.py). Loading it for "query" also shortens the
    process's GIL switch interval (``QUERY_SWITCH_INTERVAL_S``)."""
    if purpose == "query":
        sys.setswitchinterval(min(sys.getswitchinterval(), QUERY_SWITCH_INTERVAL_S))
    return get_embedder(
        settings.embed_model,
        cache_dir=cache_dir(settings),
        batch_size=settings.embed_batch,
        threads=1,
        lanes=default_sessions(),
    )


def _embed_worker(bus: Bus, settings: Settings, embedder: Embedder) -> tuple[Worker, EmbedHandler]:
    return make_embed_worker(
        bus.js,
        bus.publisher,
        embedder,
        producer=settings.producer,
        # fetch a window of many model batches: texts are sorted by length across the
        # window, so each model batch pads to similar lengths (MEASURED.md: the biggest lever)
        batch=max(SORT_WINDOW, settings.embed_batch),
        fetch_wait_s=settings.embed_batch_wait_s,
        max_deliver=settings.worker_max_deliver,
        backoff_s=tuple(settings.worker_backoff_s),
        replicas=settings.stream_replicas,
    )


@dataclass
class MinerNode:
    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8091
    embed_in_process: bool = True
    worker_processes: int = 0
    ingest_wait_s: float = 10.0
    bus: Bus | None = None
    store: MemoryStore | None = None
    runner: StoreRunner | None = None
    worker: Worker | None = None
    handler: EmbedHandler | None = None
    axon: Axon | None = None
    _site_runner: web.AppRunner | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        s = self.settings
        self.bus = bus = await open_bus(s)
        query_embedder = await asyncio.to_thread(load_embedder, s, "query")
        self.store = await asyncio.to_thread(open_store, s, query_embedder.dim)
        self.runner = StoreRunner(
            bus.js,
            self.store,
            publisher=bus.publisher,
            producer=s.producer,
            snapshot_every_events=s.snapshot_every_events,
            snapshot_every_s=s.snapshot_every_s,
        )
        n = await self.runner.catch_up()
        log.info("store ready", memories=len(self.store), replayed=n, seq=self.store.applied_seq)
        self._tasks.append(asyncio.create_task(self.runner.run(), name="store-projection"))
        if self.embed_in_process:
            embedder = await asyncio.to_thread(load_embedder, s, "embed")
            self.worker, self.handler = _embed_worker(bus, s, embedder)
            self._tasks.append(asyncio.create_task(self.worker.run(), name="embed-worker"))
        for _ in range(self.worker_processes):
            self._procs.append(spawn_worker_process(s, bus.url))
        self.axon = Axon(
            self.store,
            self.runner,
            bus.publisher,
            query_embedder,
            producer=s.producer,
            ingest_wait_s=self.ingest_wait_s,
            extra_stats=self._extra_stats,
        )
        auth = await asyncio.to_thread(build_auth, s, self.host)  # btauth/1 (engram.miner.auth)
        self._site_runner = web.AppRunner(make_app(self.axon, auth), access_log=None)
        await self._site_runner.setup()
        site = web.TCPSite(self._site_runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # a free port was chosen
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("axon listening", url=self.url, nats=bus.url)

    def _extra_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"worker_processes": len(self._procs)}
        if self.worker is not None and self.handler is not None:
            out["embed_worker"] = {
                **self.worker.stats.as_dict(),
                "embedded": self.handler.embedded,
                "rejected": self.handler.rejected,
                "embed_seconds": round(self.handler.embed_seconds, 3),
            }
        return out

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.runner is not None:
            self.runner.stop()
        for p in self._procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if self._site_runner is not None:
            await self._site_runner.cleanup()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=30)
            for t in pending:
                t.cancel()
        for p in self._procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.store is not None:
            self.store.close()
        if self.bus is not None:
            await self.bus.close()

    async def serve_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def spawn_worker_process(settings: Settings, nats_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ENGRAM_NATS_URL=nats_url, ENGRAM_DATA_DIR=str(settings.data_path))
    return subprocess.Popen([sys.executable, "-m", "engram.miner", "worker"], env=env)


async def run_embed_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run one embed worker until SIGTERM/SIGINT (or ``stop``)."""
    bus = await open_bus(settings)
    try:
        embedder = await asyncio.to_thread(load_embedder, settings, "embed")
        worker, _handler = _embed_worker(bus, settings, embedder)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, worker.stop)
        task = asyncio.create_task(worker.run())
        if stop is not None:
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            worker.stop()
            waiter.cancel()
        await task
    finally:
        await bus.close()
