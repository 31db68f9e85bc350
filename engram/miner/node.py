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
from prometheus_client import Gauge

from engram.blobs.routes import add_blob_routes
from engram.blobs.service import BlobRuntime, start_blobs
from engram.bus import Bus, open_bus
from engram.config import Settings
from engram.natsd import set_parent_death_signal
from streams.worker import Worker

from .auth import build_auth, miner_keypair
from .axon import MAX_CHALLENGE_AHEAD_S, Axon, make_app
from .connections import (
    BoundedExecutor,
    ConnectionGate,
    Handler,
    InFlight,
    Limits,
    accept_backlog,
    connection_cap,
    limits_middleware,
    raise_fd_limit,
)
from .embedder import Embedder, default_sessions, get_embedder
from .guard import BusGuard, WorkerPool, watch_parent
from .nonces import BTAUTH_BUCKET, CHALLENGE_BUCKET, SharedNonces
from .projection import StoreRunner
from .store import MemoryStore
from .trust import ChainTrust, open_chain_trust
from .workers import SORT_WINDOW, EmbedHandler, make_embed_worker

__all__ = ["MinerNode", "open_store", "run_embed_worker"]

log = structlog.get_logger("engram.miner")


def cache_dir(settings: Settings) -> Path:
    return settings.data_path / "cache"


def open_store(settings: Settings, dim: int = 384) -> MemoryStore:
    return MemoryStore(
        settings.data_path / "store", dim=dim, max_namespaces=settings.store_max_namespaces
    )


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
    """One miner. It owns what it starts (docs/architecture.md, "Supervision and limits"):
    the embedded nats-server and the worker processes are restarted when they die, the
    bus's state is on ``/health`` and ``/metrics``, and the axon's connections, requests
    and threads are bounded."""

    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8091
    embed_in_process: bool = True
    worker_processes: int = 0
    ingest_wait_s: float = 10.0
    # already loaded models to use instead of loading this node's own (the devnet shares
    # one pair between its miners); None = load them from the data dir's cache
    query_embedder: Embedder | None = None
    embedder: Embedder | None = None
    bus: Bus | None = None
    store: MemoryStore | None = None
    runner: StoreRunner | None = None
    worker: Worker | None = None
    handler: EmbedHandler | None = None
    axon: Axon | None = None
    guard: BusGuard | None = None
    pool: WorkerPool | None = None
    gate: ConnectionGate | None = None
    inflight: InFlight | None = None
    executor: BoundedExecutor | None = None
    trust: ChainTrust | None = None  # the chain-backed validator registry (chain != none)
    blobs: BlobRuntime | None = None  # images and PDFs: store, describer, archiver
    _site_runner: web.AppRunner | None = None
    _listener: asyncio.AbstractServer | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def limits(self) -> Limits:
        s = self.settings
        return Limits(
            max_connections=s.axon_max_connections,
            max_inflight=s.axon_max_inflight,
            head_timeout_s=s.axon_head_timeout_s,
            body_timeout_s=s.axon_body_timeout_s,
            keepalive_s=s.axon_keepalive_s,
        )

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        fd_limit = raise_fd_limit()
        # an explicit, bounded pool for store and embedding work (asyncio.to_thread uses it):
        # room for every request in flight twice over, then 503 rather than an endless queue
        threads = s.axon_threads or min(32, (os.cpu_count() or 1) + 4)
        self.executor = BoundedExecutor(threads, 2 * s.axon_max_inflight + 64, "engram")
        loop.set_default_executor(self.executor)
        self.bus = bus = await open_bus(s)
        self.guard = BusGuard(bus)
        self._tasks.append(asyncio.create_task(self.guard.run(self._stop), name="bus-guard"))
        query_embedder = self.query_embedder
        if query_embedder is None:
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
            embedder = self.embedder
            if embedder is None:
                embedder = await asyncio.to_thread(load_embedder, s, "embed")
            self.worker, self.handler = _embed_worker(bus, s, embedder)
            self._tasks.append(asyncio.create_task(self.worker.run(), name="embed-worker"))
        if self.worker_processes:
            url = bus.url
            self.pool = WorkerPool(lambda: spawn_worker_process(s, url), self.worker_processes)
            self.pool.start()
            self._tasks.append(asyncio.create_task(self.pool.run(self._stop), name="workers"))
        # whom to trust and the node-wide replay stores (engram.miner.trust, .nonces)
        keypair = await asyncio.to_thread(miner_keypair, s)
        self.trust = await open_chain_trust(s, bus, keypair)
        if self.trust is not None:
            self._tasks.append(self.trust.start(self._stop))
        replicas, bus_up = s.stream_replicas, lambda: self.guard is None or self.guard.up
        btauth_nonces = await SharedNonces.open(
            bus.js, BTAUTH_BUCKET, 60.0, replicas=replicas, available=bus_up
        )
        challenge_nonces = await SharedNonces.open(
            bus.js,
            CHALLENGE_BUCKET,
            float(MAX_CHALLENGE_AHEAD_S),
            replicas=replicas,
            available=bus_up,
        )
        if s.blob_enabled:  # images and PDFs (engram.blobs)
            self.blobs = await start_blobs(s, bus.js, bus.publisher, self.store)
        self.axon = Axon(
            self.store,
            self.runner,
            bus.publisher,
            query_embedder,
            producer=s.producer,
            ingest_wait_s=self.ingest_wait_s,
            extra_stats=self._extra_stats,
            proof_versions=s.axon_proof_versions,
            shared_nonces=challenge_nonces,
            health_checks=lambda: {"bus": self.guard.status() if self.guard else "up"},
            retrieve_extra=self.blobs.service.retrieve_extra if self.blobs else None,
        )
        self._metrics(self.axon)
        auth = await asyncio.to_thread(  # btauth/1 (engram.miner.auth)
            lambda: build_auth(
                s,
                self.host,
                self.trust.registry if self.trust is not None else None,
                keypair=keypair,
                shared_nonces=btauth_nonces,
            )
        )
        limits = self.limits()
        self.inflight = InFlight(limits.max_inflight)
        mw = limits_middleware(limits, self.inflight, self._bus_check)
        app = make_app(self.axon, auth, mw)
        if self.blobs is not None:
            add_blob_routes(app, self.blobs.service, self.store.access)
        self._site_runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=limits.keepalive_s,
            shutdown_timeout=min(s.stop_grace_s, 5.0),
        )
        await self._site_runner.setup()
        assert self._site_runner.server is not None
        cap = connection_cap(limits.max_connections, fd_limit)
        self.gate = ConnectionGate(self._site_runner.server, limits, cap)
        self._listener = await loop.create_server(
            self.gate, self.host, self.port, backlog=accept_backlog(fd_limit)
        )
        if self.port == 0:  # a free port was chosen
            self.port = self._listener.sockets[0].getsockname()[1]
        log.info(
            "axon listening", url=self.url, nats=bus.url, max_connections=cap, fd_limit=fd_limit
        )

    async def _bus_check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Ingest needs the bus: refuse at once while it is down, and give up (503) on a
        request in progress when it goes down, rather than wait out publish timeouts."""
        if self.guard is None or request.path not in INGEST_PATHS:
            return await handler(request)
        return await self.guard.while_up(lambda: handler(request))

    def _metrics(self, axon: Axon) -> None:
        reg = axon.registry
        Gauge("engram_bus_up", "1 while the bus is up", registry=reg).set_function(
            lambda: 1.0 if self.guard is None or self.guard.up else 0.0
        )
        Gauge("engram_bus_restarts", "embedded nats-server restarts", registry=reg).set_function(
            lambda: float(self.guard.restarts if self.guard else 0)
        )
        Gauge("engram_axon_connections", "open axon connections", registry=reg).set_function(
            lambda: float(len(self.gate.live) if self.gate else 0)
        )
        Gauge("engram_axon_inflight", "requests in flight", registry=reg).set_function(
            lambda: float(self.inflight.now if self.inflight else 0)
        )
        Gauge("engram_worker_processes_up", "worker processes running", registry=reg).set_function(
            lambda: float(len(self.pool.pids()) if self.pool else 0)
        )

    def _extra_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "worker_processes": self.pool.stats() if self.pool is not None else [],
            "bus": {
                "status": self.guard.status() if self.guard else "up",
                "restarts": self.guard.restarts if self.guard else 0,
            },
        }
        if self.gate is not None and self.inflight is not None:
            out["connections"] = {
                **self.gate.stats(),
                "inflight": self.inflight.now,
                "inflight_refused": self.inflight.refused,
                "threads_refused": self.executor.refused if self.executor else 0,
            }
        if self.blobs is not None:
            out["blobs"] = self.blobs.stats()
        if self.worker is not None and self.handler is not None:
            out["embed_worker"] = {
                **self.worker.stats.as_dict(),
                "embedded": self.handler.embedded,
                "rejected": self.handler.rejected,
                "embed_seconds": round(self.handler.embed_seconds, 3),
            }
        return out

    async def stop(self) -> None:
        """Stop within about ``stop_grace_s``, also while the bus is down."""
        if self._stop.is_set():
            return
        grace = self.settings.stop_grace_s
        self._stop.set()
        if self.worker is not None:
            self.worker.stop()
        if self.runner is not None:
            self.runner.stop()
        if self._listener is not None:
            self._listener.close()
        pool_stopped = asyncio.create_task(self.pool.stop(grace)) if self.pool is not None else None
        if self._site_runner is not None:
            await self._site_runner.cleanup()
        if self.gate is not None:
            self.gate.close_all()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        if pool_stopped is not None:
            await pool_stopped
        if self.blobs is not None:
            await self.blobs.stop(grace)
        if self.store is not None:
            self.store.close()
        if self.trust is not None:
            await self.trust.close()
        if self.bus is not None:
            await self.bus.close(timeout=grace)

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


#: the routes that publish to the bus
INGEST_PATHS = frozenset({"/IngestSynapse", "/IngestBatch", "/blob"})
PARENT_PID_ENV = "ENGRAM_PARENT_PID"


def spawn_worker_process(settings: Settings, nats_url: str) -> subprocess.Popen[bytes]:
    """A worker process that dies with us: a parent-death signal (armed before exec) and
    our pid, which the worker watches as a fallback (:func:`~.guard.watch_parent`)."""
    env = dict(
        os.environ,
        ENGRAM_NATS_URL=nats_url,
        ENGRAM_DATA_DIR=str(settings.data_path),
        **{PARENT_PID_ENV: str(os.getpid())},
    )
    return subprocess.Popen(
        [sys.executable, "-m", "engram.miner", "worker"],
        env=env,
        preexec_fn=set_parent_death_signal if sys.platform == "linux" else None,
    )


async def run_embed_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run one embed worker until SIGTERM/SIGINT (or ``stop``), or until the miner that
    started it (``ENGRAM_PARENT_PID``) is gone."""
    stop = stop or asyncio.Event()
    parent = int(os.environ.get(PARENT_PID_ENV, "0") or 0)
    watcher = None
    if parent:
        set_parent_death_signal()  # again, in this process: also covers a re-exec
        if os.getppid() != parent:  # the parent died before the signal was armed
            log.warning("parent process already gone; not starting", parent_pid=parent)
            return
        watcher = asyncio.create_task(watch_parent(parent, stop.set))
    bus = await open_bus(settings)
    try:
        embedder = await asyncio.to_thread(load_embedder, settings, "embed")
        worker, _handler = _embed_worker(bus, settings, embedder)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, worker.stop)
        task = asyncio.create_task(worker.run())
        if not stop.is_set():
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        worker.stop()
        await task
    finally:
        if watcher is not None:
            watcher.cancel()
        await bus.close()
