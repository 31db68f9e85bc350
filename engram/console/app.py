"""The web console: an aiohttp app that serves three static pages (Network, Bus, Memory)
and the JSON they read under ``/api/console/``.

* ``GET /api/console/network`` — miners (recall, latency, proof rate, score, weight) and
  replica health; ``GET /api/console/network/history`` — the same per miner over time.
* ``GET /api/console/bus`` — streams, consumer lag, DLQ depth (:func:`engram.ops.bus_status`);
  ``GET /api/console/dlq`` — the dead letters; ``GET /api/console/events?after=ID`` and
  ``GET /api/console/events/stream`` (server-sent events) — what is published, live.
* ``POST /api/console/query`` — a query sent to a miner's axon ``/QuerySynapse``, signed
  with the console's client hotkey (btauth/1, :class:`~engram.miner.client.AxonClient`).
* ``GET /api/console/cid/{cid}`` — a CID's identifiers, where routing places it, its record
  (from a miner that holds it) and its proof history.

Bad input is a 4xx with ``{"error": reason}``; a miner that cannot be reached is a 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from engram.bus import Bus
from engram.ops import bus_status, dlq_entries, summarize
from engram.validator.replication import assigned_to
from engram.validator.routing import cid_key
from streams.errors import EngramError, InputError
from streams.events import EventDecodeError, decode
from streams.projection import ProjectionRunner

from .state import NetworkState, ValidationFold, WeightsFold

__all__ = ["ConsoleServer", "static_dir"]

log = structlog.get_logger("engram.console")

_CID = re.compile(r"^v1::[0-9a-f]{64}$")
MAX_QUERY_CHARS = 2000
RECENT = 400  # events kept for the Bus page
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_dir() -> Path:
    return Path(str(resources.files("engram.console") / "static"))


class _Miss(EngramError):
    """Something asked for is not there (404)."""


class _Upstream(EngramError):
    """A miner did not answer (502)."""


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InputError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except _Miss as exc:
        return web.json_response({"error": str(exc)}, status=404)
    except _Upstream as exc:
        return web.json_response({"error": str(exc)}, status=502)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)


class ConsoleServer:
    """The console for the bus ``bus`` (whose VALIDATION and WEIGHTS streams it folds).
    ``keypair`` signs the queries the playground sends; ``labels`` names miners by hotkey
    (the devnet's honest / adversary roles)."""

    def __init__(
        self,
        bus: Bus,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keypair: Any = None,
        labels: dict[str, str] | None = None,
        title: str = "Engram",
    ) -> None:
        self.bus = bus
        self.host = host
        self.port = port
        self.keypair = keypair
        self.title = title
        self.state = NetworkState(labels=dict(labels or {}))
        self.runners = [
            ProjectionRunner(bus.js, ValidationFold(self.state), snapshot_every_events=10**12),
            ProjectionRunner(bus.js, WeightsFold(self.state), snapshot_every_events=10**12),
        ]
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._next_id = 1
        self._listeners: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Subscription | None = None
        self._runner: web.AppRunner | None = None
        self._axons: dict[str, tuple[aiohttp.ClientSession, Any]] = {}
        self._bus_cache: tuple[float, dict[str, Any]] | None = None
        self._bus_lock = asyncio.Lock()
        self.started = time.time()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # --- life -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors])
        r = app.router
        r.add_get("/", self._root)
        r.add_get("/console/", self._index)
        r.add_static("/console/static/", static_dir(), append_version=True)
        r.add_get("/api/console/overview", self._overview)
        r.add_get("/api/console/network", self._network)
        r.add_get("/api/console/network/history", self._history)
        r.add_get("/api/console/bus", self._bus)
        r.add_get("/api/console/dlq", self._dlq)
        r.add_get("/api/console/events", self._events)
        r.add_get("/api/console/events/stream", self._events_stream)
        r.add_post("/api/console/query", self._query)
        r.add_get("/api/console/cid/{cid}", self._cid)
        return app

    async def start(self) -> str:
        """Follow the streams, listen to the bus, serve; returns the URL."""
        for runner in self.runners:
            self._tasks.append(asyncio.create_task(runner.run(), name=f"console-{runner.name}"))
        self._sub = await self.bus.nc.subscribe("engram.>", cb=self._on_msg)
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            for addr in self._runner.addresses:
                self.port = int(addr[1])
                break
        log.info("console serving", url=self.url)
        return self.url

    async def stop(self) -> None:
        for q in list(self._listeners):
            q.put_nowait(None)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for runner in self.runners:
            runner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        for session, _client in self._axons.values():
            await session.close()
        self._axons.clear()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except EventDecodeError:
            kind, text, at = "?", f"<{len(msg.data)} B, not an event>", time.time()
        else:
            kind, at = event.kind, event.time
            text = summarize(event).partition(" ")[2]
        item = {
            "id": self._next_id,
            "time": at,
            "subject": msg.subject,
            "kind": kind,
            "summary": text,
        }
        self._next_id += 1
        self.recent.append(item)
        for q in self._listeners:
            if q.qsize() < 1000:  # a stalled browser loses events, never the console
                q.put_nowait(item)

    # --- pages ------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(static_dir() / "index.html")

    # --- network ----------------------------------------------------------------------

    def _miner_rows(self) -> list[dict[str, Any]]:
        return [m.row() for m in sorted(self.state.miners.values(), key=lambda m: m.uid)]

    async def _overview(self, request: web.Request) -> web.Response:
        s = self.state
        return web.json_response(
            {
                "title": self.title,
                "nats": self.bus.nc.connected_url.netloc if self.bus.nc.connected_url else None,
                "miners": len(s.miners),
                "epochs": len(s.epochs),
                "validation_events": s.validation_events,
                "uptime_s": round(time.time() - self.started, 1),
            }
        )

    async def _network(self, request: web.Request) -> web.Response:
        s = self.state
        return web.json_response(
            {
                "miners": self._miner_rows(),
                "replication": s.replication_counts(),
                "cids_tracked": len(s.replication.verdicts),
                "epochs": s.epochs[-20:],
                "weight_sets": len(s.epochs),
                "validation_events": s.validation_events,
            }
        )

    async def _history(self, request: web.Request) -> web.Response:
        out = {
            str(m.uid): {
                "hotkey": m.hotkey,
                "label": m.label,
                "history": list(m.history),
                "weights": list(m.weights),
            }
            for m in sorted(self.state.miners.values(), key=lambda m: m.uid)
        }
        return web.json_response(out)

    # --- bus --------------------------------------------------------------------------

    async def _bus(self, request: web.Request) -> web.Response:
        async with self._bus_lock:  # one read of the server per second, however many tabs
            now = time.monotonic()
            if self._bus_cache is None or now - self._bus_cache[0] > 1.0:
                self._bus_cache = (now, await bus_status(self.bus))
            return web.json_response(self._bus_cache[1])

    async def _dlq(self, request: web.Request) -> web.Response:
        entries = await dlq_entries(self.bus.js)
        return web.json_response(
            {
                "depth": sum(1 for e in entries if not e.retries),
                "entries": [e.as_json() for e in entries[-100:]][::-1],
            }
        )

    async def _events(self, request: web.Request) -> web.Response:
        after = _int(request.query.get("after", "0"), "after", 0, 2**62)
        limit = _int(request.query.get("limit", "100"), "limit", 1, RECENT)
        items = [e for e in self.recent if e["id"] > after][-limit:]
        return web.json_response({"events": items, "last": self._next_id - 1})

    async def _events_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for old in list(self.recent)[-50:]:  # the page starts with the latest few
            q.put_nowait(old)
        self._listeners.add(q)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), 15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                await resp.write(f"id: {item['id']}\ndata: {json.dumps(item)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._listeners.discard(q)
        return resp

    # --- memory -----------------------------------------------------------------------

    def _axon_client(self, axon: str) -> Any:
        from engram.miner.client import AxonClient

        if axon not in self._axons:
            session = aiohttp.ClientSession(
                base_url=f"http://{axon}", timeout=aiohttp.ClientTimeout(total=15)
            )
            self._axons[axon] = (session, AxonClient(session, self.keypair))
        return self._axons[axon][1]

    async def _call(self, axon: str, method: str, path: str, body: Any = None) -> Any:
        try:
            return await self._axon_client(axon).request(method, path, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise _Upstream(f"cannot reach the miner at {axon}: {reason}") from None

    async def _query(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise InputError("the body must be a JSON object")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError("text must be a non-empty string")
        if len(text) > MAX_QUERY_CHARS:
            raise InputError(f"text is {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
        top_k = body.get("top_k", 10)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 100:
            raise InputError("top_k must be an integer from 1 to 100")
        namespace = body.get("namespace") or "public"
        if not isinstance(namespace, str):
            raise InputError("namespace must be a string")
        uid = body.get("uid")
        with_axon = [m for m in self.state.miners.values() if m.axon]
        if uid is None:
            if not with_axon:
                raise _Miss("no miner with an axon is known yet (the validator has not run)")
            miner = max(with_axon, key=lambda m: (m.score or 0.0, -m.uid))
        else:
            if not isinstance(uid, int) or isinstance(uid, bool):
                raise InputError("uid must be an integer")
            found = self.state.miners.get(uid)
            if found is None or not found.axon:
                raise _Miss(f"no miner with uid {uid} and an axon is known")
            miner = found
        t0 = time.perf_counter()
        status, answer = await self._call(
            miner.axon,
            "POST",
            "/QuerySynapse",
            {"query_text": text, "top_k": top_k, "namespace": namespace},
        )
        took = round((time.perf_counter() - t0) * 1000, 1)
        if status != 200:
            reason = answer.get("error") or f"HTTP {status}"
            code = status if 400 <= status < 500 else 502
            return web.json_response({"error": f"miner {miner.uid}: {reason}"}, status=code)
        return web.json_response(
            {
                "miner": miner.row(),
                "round_trip_ms": took,
                "miner_latency_ms": answer.get("latency_ms"),
                "results": answer.get("results") or [],
                "error": None,
            }
        )

    async def _cid(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if not _CID.match(cid):
            raise InputError("not a CID: expected v1:: and 64 lowercase hex digits")
        s = self.state
        peers = s.peers()
        verdicts = s.replication.verdicts.get(cid, {})
        assigned = assigned_to(cid, peers, verdicts) if peers else []
        history = list(s.cids.get(cid, ()))[::-1]
        by_hotkey = {m.hotkey: m for m in s.miners.values()}
        record = None
        order = [by_hotkey[p.hotkey] for p in assigned if p.hotkey in by_hotkey]
        order += [m for m in s.miners.values() if m.axon and m not in order]
        for m in order[:6]:
            if not m.axon:
                continue
            try:
                status, body = await self._call(m.axon, "GET", f"/retrieve/{cid}")
            except _Upstream:
                continue
            if status == 200:
                emb = body.get("embedding") or []
                record = {
                    "from_uid": m.uid,
                    "namespace": body.get("namespace"),
                    "metadata": body.get("metadata") or {},
                    "text": body.get("text"),
                    "model_version": body.get("model_version"),
                    "dim": len(emb),
                }
                break
        if record is None and not history and not verdicts:
            raise _Miss(f"unknown CID {cid[:16]}…: no proof history and no miner holds it")
        status_now = s.replication.status(cid, peers).value if verdicts else None
        return web.json_response(
            {
                "cid": cid,
                "version": "v1",
                "digest": cid[4:],
                "digest_algorithm": "sha-256 (f32 embedding || canonical metadata)",
                "routing_key": f"{cid_key(cid):064x}",
                "routing_key_algorithm": "sha-256(utf8(cid))",
                "status": status_now,
                "assigned": [
                    {
                        "uid": p.uid,
                        "hotkey": p.hotkey,
                        "verdict": verdicts.get(p.hotkey),
                        "label": by_hotkey[p.hotkey].label if p.hotkey in by_hotkey else "",
                    }
                    for p in assigned
                ],
                "verdicts": verdicts,
                "record": record,
                "proofs": history,
            }
        )


def _int(text: str, name: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise InputError(f"{name} must be from {lo} to {hi}")
    return value
