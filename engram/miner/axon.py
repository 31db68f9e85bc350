"""The miner's axon: the HTTP JSON edge (aiohttp), per PROTOCOL.md.

Ingest publishes to JetStream and waits (bounded) for its own memory to be applied by the
store projection in this process; queries never touch the bus: the text is embedded
in-process and the local index is searched directly. Every refusal is a 4xx with a JSON
``error`` that says why.

Requests are authenticated with btauth/1 by the middleware of ``engram.miner.auth`` when
``make_app`` is given an :class:`~engram.miner.auth.AxonAuth` (which endpoint needs what
lives there, as data).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engram import core as _core
from streams.errors import InputError
from streams.events import Embedded, IngestRequested
from streams.publisher import Publisher

from .auth import AUTH_KEY, AxonAuth
from .embedder import Embedder
from .limits import (
    MAX_BATCH_ITEMS,
    MAX_BODY_BYTES,
    check_filter,
    check_ingest,
    check_metadata,
    check_namespace,
    check_top_k,
    check_vector,
)
from .projection import StoreRunner
from .store import ApplyResult, MemoryStore

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

__all__ = ["Axon", "make_app"]

_HEX64 = frozenset("0123456789abcdefABCDEF")
_QUERY_ENCODER = msgspec.json.Encoder()
AXON_KEY: web.AppKey[Axon] = web.AppKey("axon")


class Refused(InputError):
    """A request the axon refuses: HTTP ``status`` and the reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _is_hex(value: Any, nbytes: int) -> bool:
    return isinstance(value, str) and len(value) == 2 * nbytes and set(value) <= _HEX64


@dataclass
class Axon:
    store: MemoryStore
    runner: StoreRunner
    publisher: Publisher
    embedder: Embedder  # for queries (a separate instance from the embed worker's)
    producer: str = ""
    ingest_wait_s: float = 10.0
    extra_stats: Callable[[], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.started = time.time()
        reg = self.registry = CollectorRegistry()
        self.m_requests = Counter(
            "engram_axon_requests", "Axon requests", ["endpoint", "status"], registry=reg
        )
        self.m_latency = Histogram(
            "engram_axon_latency_seconds",
            "Axon request latency",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=reg,
        )
        self.m_query_stage = Histogram(
            "engram_axon_query_stage_seconds",
            "Query time by stage: embed (the text) and search (index + metadata)",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=reg,
        )
        self.m_memories = Gauge("engram_memories", "Memories in the index", registry=reg)
        self.m_seq = Gauge("engram_store_applied_seq", "Last applied MEMORY seq", registry=reg)

    # --- plumbing -------------------------------------------------------------------------

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=json.loads)
        except web.HTTPRequestEntityTooLarge:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise Refused(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object")
        return body

    async def _wait_stored(
        self, futs: list[asyncio.Future[ApplyResult]], timeout: float
    ) -> list[ApplyResult | None]:
        if futs:
            await asyncio.wait(futs, timeout=timeout)
        return [f.result() if f.done() and not f.cancelled() else None for f in futs]

    # --- ingest ---------------------------------------------------------------------------

    def _ingest_event(self, body: dict[str, Any]) -> Embedded | IngestRequested:
        metadata = body.get("metadata") or {}
        namespace = body.get("namespace") or "public"
        request_id = body.get("request_id") or uuid.uuid4().hex
        if not isinstance(request_id, str) or not 1 <= len(request_id) <= 128:
            raise Refused(400, "request_id must be a string of 1-128 characters")
        mv = body.get("model_version") or self.embedder.model_version
        if mv != self.embedder.model_version:
            raise Refused(
                400,
                f"model_version {mv!r} is not served by this miner "
                f"(it embeds with {self.embedder.model_version!r})",
            )
        if body.get("raw_embedding") is not None:
            vec = body["raw_embedding"]
            reason = check_vector(vec, self.store.dim) or check_metadata(metadata)
            reason = reason or check_namespace(namespace)
            if reason:
                raise Refused(400, reason)
            arr = np.asarray(vec, dtype=np.float32)
            norm = float(np.linalg.norm(arr))
            if abs(norm - 1.0) > 1e-3:
                raise Refused(
                    400, f"raw_embedding must be unit-normalised (its norm is {norm:.4f})"
                )
            try:
                cid = _core.compute_cids(arr[None, :], [metadata], mv)[0]
            except ValueError as exc:
                raise Refused(400, f"cannot compute the CID: {exc}") from None
            return Embedded(
                cid=cid,
                vector=arr.astype("<f4").tobytes(),
                dim=arr.shape[0],
                metadata=metadata,
                namespace=namespace,
                model_version=mv,
                request_id=request_id,
                producer=self.producer,
            )
        if "text" not in body:
            raise Refused(400, "give text or raw_embedding")
        reason = check_ingest(body.get("text"), metadata, namespace)
        if reason:
            raise Refused(400, reason)
        return IngestRequested(
            request_id=request_id,
            text=body["text"],
            metadata=metadata,
            namespace=namespace,
            model_version=mv,
            producer=self.producer,
        )

    async def _submit(
        self, events: list[Embedded | IngestRequested], wait_s: float
    ) -> list[ApplyResult | None]:
        rids = [e.request_id for e in events]
        futs = [self.runner.expect(r) for r in rids]
        try:
            acks = await self.publisher.publish_many(events)
            results = await self._wait_stored(
                [f for f, a in zip(futs, acks, strict=True) if not a.duplicate], wait_s
            )
            it = iter(results)
            out: list[ApplyResult | None] = []
            for ev, ack in zip(events, acks, strict=True):
                if ack.duplicate:  # the same request id was already published
                    cid = await asyncio.to_thread(self.store.find_request, ev.request_id)
                    out.append(ApplyResult(0, "duplicate", cid, ev.request_id) if cid else None)
                else:
                    out.append(next(it))
            return out
        finally:
            for r, f in zip(rids, futs, strict=True):
                self.runner.forget(r, f)

    @staticmethod
    def _result_json(rid: str, res: ApplyResult | None) -> dict[str, Any]:
        if res is None:
            return {"cid": None, "request_id": rid, "status": "accepted", "error": None}
        if res.kind == "rejected":
            return {"cid": None, "request_id": rid, "status": "rejected", "error": res.error}
        return {
            "cid": res.cid,
            "request_id": rid,
            "status": "stored",
            "duplicate": res.kind == "duplicate",
            "error": None,
        }

    async def ingest(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        ev = self._ingest_event(body)
        (res,) = await self._submit([ev], self.ingest_wait_s)
        out = self._result_json(ev.request_id, res)
        status = 200 if out["status"] == "stored" else 202 if res is None else 422
        return web.json_response(out, status=status)

    async def ingest_batch(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise Refused(400, "items must be a non-empty list of ingest requests")
        if len(items) > MAX_BATCH_ITEMS:
            raise Refused(413, f"{len(items)} items; the limit is {MAX_BATCH_ITEMS} per batch")
        events, errors = [], []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise Refused(400, "each item must be a JSON object")
                events.append(self._ingest_event(item))
            except Refused as exc:
                errors.append({"index": i, "error": exc.reason})
        if errors:
            return web.json_response(
                {"error": f"{len(errors)} invalid item(s); nothing was ingested", "items": errors},
                status=400,
            )
        wait = body.get("wait", True)
        wait_s = float(body.get("timeout_s", self.ingest_wait_s)) if wait else 0.0
        results = await self._submit(events, min(max(wait_s, 0.0), 60.0))
        out = [self._result_json(e.request_id, r) for e, r in zip(events, results, strict=True)]
        done = all(o["status"] == "stored" for o in out)
        return web.json_response(
            {"results": out, "accepted": len(out), "error": None}, status=200 if done else 202
        )

    # --- query ----------------------------------------------------------------------------

    def _search(
        self,
        text: str | None,
        vector: list[float] | None,
        k: int,
        namespace: str,
        flt: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        vec = self.embedder.embed_one(text) if text is not None else np.asarray(vector, np.float32)
        if vector is not None:
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        t1 = time.perf_counter()
        hits = self.store.search(vec, k, namespace=namespace, filter=flt)
        t2 = time.perf_counter()
        self.m_query_stage.labels("embed").observe(t1 - t0)
        self.m_query_stage.labels("search").observe(t2 - t1)
        return [{"cid": h.cid, "score": h.score, "metadata": h.metadata} for h in hits]

    async def query(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        body = await self._json(request)
        text, vector = body.get("query_text"), body.get("query_vector")
        top_k = body.get("top_k", 10)
        namespace = body.get("namespace") or "public"
        flt = body.get("filter")
        reason = check_top_k(top_k) or check_namespace(namespace) or check_filter(flt)
        if reason is None:
            if text is None and vector is None:
                reason = "give query_text or query_vector"
            elif text is not None:
                if not isinstance(text, str) or not text.strip():
                    reason = "query_text must be a non-empty string"
                elif len(text) > 8192:
                    reason = f"query_text is {len(text)} characters; the limit is 8192"
            else:
                reason = check_vector(vector, self.store.dim)
        if reason:
            raise Refused(400, reason)
        # one thread hop for embed + search; the response is encoded by msgspec (~5x
        # faster than json.dumps for a page of hits with metadata)
        results = await asyncio.to_thread(self._search, text, vector, top_k, namespace, flt)
        out = _QUERY_ENCODER.encode(
            {
                "results": results,
                "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
                "error": None,
            }
        )
        return web.Response(body=out, content_type="application/json")

    # --- challenges and retrieval ---------------------------------------------------------

    async def challenge(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        cid = body.get("cid")
        nonce = body.get("nonce_hex")
        version = body.get("version", body.get("proof_version", 2))
        hotkey = body.get("validator_hotkey_hex")
        expires_at = body.get("expires_at")
        if not isinstance(cid, str) or not cid:
            raise Refused(400, "cid is required")
        if not _is_hex(nonce, 32):
            raise Refused(400, "nonce_hex must be 32 bytes as 64 hex characters")
        if version not in (1, 2):
            raise Refused(400, "version must be 1 or 2")
        if version == 2 and not _is_hex(hotkey, 32):
            raise Refused(400, "validator_hotkey_hex must be 32 bytes as 64 hex characters")
        if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
            raise Refused(400, "expires_at (unix seconds) is required")
        if expires_at <= time.time():
            raise Refused(410, "the challenge has expired")
        rec = await asyncio.to_thread(self.store.get, cid)
        if rec is None:
            raise Refused(404, f"unknown CID {cid}")
        ehash = _core.embedding_hash(rec.vector)
        if version == 1:
            proof = _core.proof_v1(str(nonce), ehash)
        else:
            proof = _core.proof_v2(str(hotkey), str(nonce), rec.vector)
        return web.json_response(
            {"cid": cid, "embedding_hash": ehash, "proof": proof, "version": version, "error": None}
        )

    async def retrieve(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        namespace = request.query.get("namespace")
        rec = await asyncio.to_thread(self.store.get, cid, namespace)
        if rec is None:
            raise Refused(404, f"unknown CID {cid}")
        return web.json_response(
            {
                "cid": rec.cid,
                "metadata": rec.metadata,
                "namespace": rec.namespace,
                "text": rec.text,
                "model_version": rec.model_version,
                "embedding": [float(x) for x in rec.vector],
                "error": None,
            }
        )

    # --- operations -----------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "model_version": self.embedder.model_version,
                "memories": len(self.store),
                "applied_seq": self.store.applied_seq,
                "uptime_s": round(time.time() - self.started, 1),
                **(request.app[AUTH_KEY].public_info() if AUTH_KEY in request.app else {}),
            }
        )

    def stats_dict(self) -> dict[str, Any]:
        s = self.store.stats
        out: dict[str, Any] = {
            "memories": len(self.store),
            "namespaces": self.store.namespaces(),
            "applied_seq": self.store.applied_seq,
            "model_version": self.embedder.model_version,
            "dim": self.store.dim,
            "index_dtype": self.store.dtype,
            "store": {
                "applied": s.applied,
                "duplicates": s.duplicates,
                "deletes": s.deletes,
                "snapshots": s.snapshots,
                "last_snapshot_seq": s.last_snapshot_seq,
            },
            "projection": dict(self.runner.stats.__dict__),
        }
        if self.extra_stats is not None:
            out.update(self.extra_stats())
        return out

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.stats_dict))

    async def metrics(self, request: web.Request) -> web.Response:
        self.m_memories.set(len(self.store))
        self.m_seq.set(self.store.applied_seq)
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def make_app(axon: Axon, auth: AxonAuth | None = None) -> web.Application:
    """The axon's app; without ``auth`` it is unauthenticated (tests, embedding)."""

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        endpoint = (
            request.match_info.route.resource.canonical
            if request.match_info.route.resource
            else "?"
        )
        t0 = time.perf_counter()
        try:
            resp = await handler(request)
        except Refused as exc:
            resp = web.json_response({"error": exc.reason}, status=exc.status)
        except web.HTTPRequestEntityTooLarge:
            resp = web.json_response(
                {"error": f"the body is larger than {MAX_BODY_BYTES} bytes"}, status=413
            )
        except web.HTTPException as exc:
            resp = web.json_response({"error": exc.reason}, status=exc.status)
        axon.m_requests.labels(endpoint, str(resp.status)).inc()
        axon.m_latency.labels(endpoint).observe(time.perf_counter() - t0)
        return resp

    middlewares: list[Middleware] = [errors] if auth is None else [errors, auth.middleware()]
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    if auth is not None:
        app[AUTH_KEY] = auth
    app.router.add_post("/IngestSynapse", axon.ingest)
    app.router.add_post("/IngestBatch", axon.ingest_batch)
    app.router.add_post("/QuerySynapse", axon.query)
    app.router.add_post("/ChallengeSynapse", axon.challenge)
    app.router.add_get("/retrieve/{cid}", axon.retrieve)
    app.router.add_get("/health", axon.health)
    app.router.add_get("/stats", axon.stats)
    app.router.add_get("/metrics", axon.metrics)
    app[AXON_KEY] = axon
    return app
