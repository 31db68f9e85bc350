"""The miner's axon: the HTTP JSON edge (aiohttp), per PROTOCOL.md.

Ingest publishes to JetStream and waits (bounded) for its own memory to be applied by the
store projection in this process; queries never touch the bus: the text is embedded
in-process and the local index is searched directly. Every refusal is a 4xx with a JSON
``error`` that says why: a refusal is a typed :class:`Refused`, and :data:`STATUS` (errors as
data) gives each type its one HTTP status. The outermost middleware turns every exception
into a JSON response (an unexpected one into a logged, generic 500) and counts every
response in ``/metrics``.

Bodies are JSON objects sent as ``application/json`` (UTF-8): anything else is 415, so a web
page cannot POST a form to an open-mode miner on localhost. They are parsed by msgspec after
a nesting-depth check (:func:`~engram.miner.limits.check_json_depth`), so deep nesting, lone
surrogates, ``NaN``/``Infinity`` and out-of-range numbers are 400s.

Requests are authenticated with btauth/1 by the middleware of ``engram.miner.auth`` when
``make_app`` is given an :class:`~engram.miner.auth.AxonAuth` (which endpoint needs what
lives there, as data).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engram import core as _core
from streams.errors import InputError, Unavailable, short
from streams.events import (
    AccessGranted,
    AccessRevoked,
    Deleted,
    Embedded,
    Event,
    IngestRequested,
    NamespaceCreated,
    request_key,
)
from streams.publisher import Publisher

from .access import AccessState, NamespaceInfo, check_hotkey
from .auth import AUTH_KEY, AxonAuth, caller_of, public_key_hex
from .embedder import Embedder
from .limits import (
    MAX_BATCH_ITEMS,
    MAX_BODY_BYTES,
    MAX_CID_CHARS,
    MAX_TEXT_CHARS,
    check_filter,
    check_ingest,
    check_json_depth,
    check_metadata,
    check_namespace,
    check_request_id,
    check_text,
    check_timeout,
    check_top_k,
    check_vector,
    short_reason,
)
from .nonces import SharedNonces
from .projection import StoreRunner
from .store import ApplyResult, MemoryStore, RequestStatus, StoreError

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

__all__ = [
    "MAX_CHALLENGE_AHEAD_S",
    "STATUS",
    "Axon",
    "Busy",
    "Conflict",
    "Expired",
    "Forbidden",
    "Invalid",
    "NotFound",
    "Refused",
    "TooLarge",
    "Unauthorized",
    "Unreadable",
    "UnsupportedMediaType",
    "check_challenge_binding",
    "make_app",
    "status_of",
]

log = structlog.get_logger("engram.miner.axon")

_HEX64 = frozenset("0123456789abcdefABCDEF")
#: An unsigned client may name its own request-id scope with this header (open mode).
SCOPE_HEADER = "X-Engram-Scope"
_SCOPE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
ANONYMOUS = "anonymous"


_QUERY_ENCODER = msgspec.json.Encoder()


AXON_KEY: web.AppKey[Axon] = web.AppKey("axon")
#: a challenge may not expire further ahead than this (a validator issues them for ~60 s)
MAX_CHALLENGE_AHEAD_S = 3600
#: answered challenge nonces remembered at once (each until its challenge expires)
MAX_LIVE_NONCES = 100_000
#: bodies larger than this are depth-checked and parsed off the event loop
_PARSE_INLINE_BYTES = 64 * 1024
_DECODER = msgspec.json.Decoder()
# a high surrogate escape without a low one after it, or a low one without a high before
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_UTF8 = frozenset({"utf-8", "utf8"})


class Refused(InputError):
    """A request the axon refuses: HTTP ``status`` and the reason for the client (capped,
    so it never echoes a large input). Prefer the typed subclasses, whose status comes
    from :data:`STATUS`."""

    def __init__(self, status: int, reason: str) -> None:
        reason = short_reason(reason)
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Typed(Refused):
    def __init__(self, reason: str) -> None:
        super().__init__(_status_of_type(type(self)), reason)


class Invalid(_Typed):
    """The request is malformed or a value is out of range."""


class Unreadable(Invalid):
    """The body could not be read (a broken compressed stream): the connection is closed
    after the answer, since what is left of the body cannot be skipped reliably."""


class NotFound(_Typed):
    """What the request names does not exist here (an unknown CID), or is private to
    others (the same answer: a caller without access learns nothing)."""


class Unauthorized(_Typed):
    """The request needs an identity: a btauth/1 signature (creating a namespace,
    granting, deleting)."""


class Forbidden(_Typed):
    """The caller is authenticated but may not ask this (a challenge naming another
    hotkey than the one that signed it)."""


class Conflict(_Typed):
    """The request repeats one that may be answered once (a challenge nonce)."""


class Expired(_Typed):
    """The request is no longer valid (an expired challenge)."""


class TooLarge(_Typed):
    """The body or a batch is over its limit."""


class UnsupportedMediaType(_Typed):
    """The body is not ``application/json`` in UTF-8."""


class Busy(_Typed):
    """A bounded resource of the axon is full; retry later."""


#: Errors as data: the one place that says which HTTP status each refusal gets. A type not
#: listed takes the status of its nearest listed base class; anything else is a 500.
STATUS: dict[type[BaseException], int] = {
    Invalid: 400,
    Unreadable: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Expired: 410,
    TooLarge: 413,
    UnsupportedMediaType: 415,
    Busy: 503,
    _core.ChallengeReplayed: 409,
    _core.ChallengeExpired: 410,
    InputError: 400,  # engram.core.CoreError and every other input refusal
    Unavailable: 503,
}


def _status_of_type(kind: type[BaseException]) -> int:
    for cls in kind.__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc``: its own for :class:`Refused`, else :data:`STATUS`."""
    return exc.status if isinstance(exc, Refused) else _status_of_type(type(exc))


def check_write(access: AccessState, namespace: str, caller: str | None) -> None:
    """May ``caller`` write ``namespace``? Else 404 when it may not even read it (a private
    namespace is not revealed), 403 when it may read but not write. Every writing path
    (ingests, blob uploads) asks this."""
    info = access.info(namespace)
    if info is None or info.can_write(caller):
        return
    if not info.can_read(caller):
        raise NotFound(f"unknown namespace {short(namespace)}")
    raise Forbidden(
        f"{caller or 'an unsigned caller'} may not write namespace {short(namespace)}: "
        "its owner grants write"
    )


def caller_scope(request: web.Request) -> str:
    """Whose request ids these are: the btauth hotkey that signed the request, else
    ``anonymous`` (or ``anonymous:<X-Engram-Scope>`` when an unsigned client names one)."""
    hotkey = caller_of(request)
    if hotkey:
        return hotkey
    scope = request.headers.get(SCOPE_HEADER)
    if scope is None:
        return ANONYMOUS
    if not _SCOPE.fullmatch(scope):
        raise Refused(400, f"{SCOPE_HEADER} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return f"{ANONYMOUS}:{scope}"


def check_challenge_binding(validator_hotkey_hex: str, caller: str | None) -> None:
    """A v2 proof is bound to ``validator_hotkey_hex``; a signed challenge must name the
    hotkey that signed it (else the axon would compute proofs for whoever is named: a
    proof oracle for a miner that dropped the vector). Unsigned challenges reach here only
    in ``open`` mode, which serves ``/retrieve`` (the whole vector) to anyone, so binding
    them would protect nothing (docs/protocol.md, "Challenge binding")."""
    if caller is None:
        return
    if public_key_hex(caller) != validator_hotkey_hex.lower():
        raise Forbidden(
            f"the challenge names another hotkey: validator_hotkey_hex must be the public "
            f"key of the signer {caller}"
        )


def _is_hex(value: Any, nbytes: int) -> bool:
    return isinstance(value, str) and len(value) == 2 * nbytes and set(value) <= _HEX64


def _field(body: dict[str, Any], name: str, default: Any) -> Any:
    """``body[name]``, with ``default`` when it is absent or null."""
    value = body.get(name)
    return default if value is None else value


def _parse_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON → a dict, or :class:`Invalid` with the reason (depth checked first, so
    the parser never recurses deeply)."""
    if reason := check_json_depth(raw):
        raise Invalid(reason)
    try:
        body = _DECODER.decode(raw)
    except UnicodeDecodeError:
        raise Invalid("the body is not valid UTF-8") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        if _LONE_SURROGATE.search(raw):
            raise Invalid(
                "the body is not valid JSON text: it holds a UTF-16 surrogate escape "
                "(\\ud800-\\udfff) that is not part of a pair"
            ) from None
        raise Invalid(f"the body is not valid JSON ({short_reason(str(exc), 80)})") from None
    if not isinstance(body, dict):
        raise Invalid(f"the body must be a JSON object, not {type(body).__name__}")
    return body


@dataclass
class Axon:
    store: MemoryStore
    runner: StoreRunner
    publisher: Publisher
    embedder: Embedder  # for queries (a separate instance from the embed worker's)
    producer: str = ""
    ingest_wait_s: float = 10.0
    extra_stats: Callable[[], dict[str, Any]] | None = None
    #: storage-proof versions answered (``axon_proof_versions``); v1 is the seeds' scheme
    proof_versions: Iterable[int] = (2,)
    nonces: _core.NonceStore = field(default_factory=_core.NonceStore)
    max_live_nonces: int = MAX_LIVE_NONCES
    #: challenge nonces shared by every axon process of the node (engram.miner.nonces)
    shared_nonces: SharedNonces | None = None
    # what /health reports beside the store: {"bus": "up" | "down: <cause>", ...}
    health_checks: Callable[[], dict[str, str]] | None = None
    # more fields for GET /retrieve from a memory's metadata (engram.blobs: "blob")
    retrieve_extra: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None

    def __post_init__(self) -> None:
        self.proof_versions = frozenset(self.proof_versions)
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
        """The body as a JSON object: ``application/json`` in UTF-8 (else 415), at most
        :data:`~engram.miner.limits.MAX_JSON_DEPTH` containers deep, strict JSON (no
        ``NaN``, no lone surrogates, numbers in range)."""
        if request.content_type != "application/json":
            raise UnsupportedMediaType(
                f"send the body as Content-Type: application/json "
                f"(not {short(request.content_type, 60)})"
            )
        charset = request.charset
        if charset is not None and charset.lower() not in _UTF8:
            raise UnsupportedMediaType(
                f"charset {short(charset, 40)} is not supported; send UTF-8 JSON"
            )
        try:
            raw = await request.read()
        except (RequestPayloadError, HttpProcessingError) as exc:  # e.g. a bad gzip body
            cause = exc.__cause__ if isinstance(exc, RequestPayloadError) else exc
            raise Unreadable(f"the body could not be read: {short(str(cause), 80)}") from None
        if not raw.strip():
            raise Invalid("the body is empty; send a JSON object")
        if len(raw) > _PARSE_INLINE_BYTES:
            return await asyncio.to_thread(_parse_object, raw)
        return _parse_object(raw)

    async def _wait_stored(
        self, futs: list[asyncio.Future[ApplyResult]], timeout: float
    ) -> list[ApplyResult | None]:
        if futs:
            await asyncio.wait(futs, timeout=timeout)
        return [f.result() if f.done() and not f.cancelled() else None for f in futs]

    # --- ingest ---------------------------------------------------------------------------

    def _ingest_event(
        self, body: dict[str, Any], caller: str | None = None
    ) -> Embedded | IngestRequested:
        metadata = _field(body, "metadata", {})
        namespace = _field(body, "namespace", "public")
        if isinstance(namespace, str):
            self._check_write(namespace, caller)
        request_id = _field(body, "request_id", None)
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif reason := check_request_id(request_id):
            raise Invalid(reason)
        label = self.embedder.model_version
        mv = _field(body, "model_version", label)
        if mv != label:
            raise Invalid(
                f"model_version {short(mv, 60)} is not served by this miner: CIDs here use "
                f"the protocol version label {label!r} (the model is {self.embedder.model_id})"
            )
        if body.get("raw_embedding") is not None:
            vec = body["raw_embedding"]
            reason = check_vector(vec, self.store.dim) or check_metadata(metadata, mv)
            reason = reason or check_namespace(namespace)
            # a text beside a raw embedding is stored as given, never embedded: e.g. an
            # engram.sdk.crypto token, for a client that embeds and encrypts at the edge
            text = body.get("text")
            if text is not None:
                reason = reason or check_text(text)
            if reason:
                raise Invalid(reason)
            arr = np.asarray(vec, dtype=np.float32)
            norm = float(np.linalg.norm(arr.astype(np.float64)))
            if abs(norm - 1.0) > 1e-3:
                raise Invalid(f"raw_embedding must be unit-normalised (its norm is {norm:.4g})")
            cid = _core.compute_cids(arr[None, :], [metadata], mv)[0]
            return Embedded(
                cid=cid,
                vector=arr.astype("<f4").tobytes(),
                dim=arr.shape[0],
                metadata=metadata,
                namespace=namespace,
                model_version=mv,
                request_id=request_id,
                text=text,
                producer=self.producer,
            )
        if "text" not in body:
            raise Invalid("give text or raw_embedding")
        reason = check_ingest(body.get("text"), metadata, namespace, mv)
        if reason:
            raise Invalid(reason)
        return IngestRequested(
            request_id=request_id,
            text=body["text"],
            metadata=metadata,
            namespace=namespace,
            model_version=mv,
            producer=self.producer,
        )

    async def _submit(
        self, events: list[Embedded | IngestRequested], wait_s: float, caller: str = ANONYMOUS
    ) -> list[ApplyResult | None]:
        """Publish ingest events under the caller's request-id scope and wait (bounded) for
        each to be stored or rejected; None for one still pending."""
        scoped: list[Embedded | IngestRequested] = [
            msgspec.structs.replace(e, caller=caller, request_kind="raw")
            if isinstance(e, Embedded)
            else msgspec.structs.replace(e, caller=caller)
            for e in events
        ]
        for e in scoped:
            if not self.store.accepts_namespace(e.namespace):
                raise Refused(
                    409,
                    f"this miner holds its limit of {self.store.max_namespaces} namespaces; "
                    f"{short(e.namespace)} would be a new one",
                )
        keys = [e.request_key() for e in scoped]
        # a request id this caller used before is answered from the store, however long
        # ago (JetStream's de-duplication window is only two minutes)
        known = await asyncio.to_thread(self.store.find_requests, keys)
        fresh = [i for i, k in enumerate(keys) if k not in known]
        futs = {i: self.runner.expect(keys[i]) for i in fresh}
        try:
            acks = await self.publisher.publish_many([scoped[i] for i in fresh]) if fresh else []
            new = sorted(i for i, a in zip(fresh, acks, strict=True) if not a.duplicate)
            waited = await self._wait_stored([futs[i] for i in new], wait_s)
            results = dict(zip(new, waited, strict=True))
            out: list[ApplyResult | None] = []
            for i, (ev, key) in enumerate(zip(scoped, keys, strict=True)):
                if i in results:
                    out.append(results[i])
                    continue
                if key not in known:  # published within the window: JetStream dropped it
                    known.update(await asyncio.to_thread(self.store.find_requests, [key]))
                out.append(_as_result(ev.request_id, known.get(key)))
            return out
        finally:
            for i, f in futs.items():
                self.runner.forget(keys[i], f)

    async def ingest_status(self, request: web.Request) -> web.Response:
        """``GET /ingest/{request_id}[?kind=text|raw]``: pending, stored (cid) or rejected
        (reason), within the caller's own request ids."""
        rid = request.match_info["request_id"]
        kind = request.query.get("kind")
        if kind not in (None, "text", "raw"):
            raise Refused(400, "kind must be text or raw")
        if not 1 <= len(rid) <= 128:
            raise Refused(400, "request_id must be a string of 1-128 characters")
        caller = caller_scope(request)
        found: RequestStatus | None = None
        for k in (kind,) if kind else ("text", "raw"):
            found = await asyncio.to_thread(self.store.find_request, request_key(k, caller, rid))
            if found is not None:
                break
        if found is None:
            return web.json_response(
                {"request_id": rid, "status": "pending", "cid": None, "error": None}
            )
        if found.status == "rejected":
            return web.json_response(
                {"request_id": rid, "status": "rejected", "cid": None, "error": found.reason}
            )
        return web.json_response(
            {
                "request_id": rid,
                "status": "stored",
                "cid": found.cid,
                "namespace": found.namespace,
                "error": None,
            }
        )

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
        ev = self._ingest_event(body, caller_of(request))
        (res,) = await self._submit([ev], self.ingest_wait_s, caller_scope(request))
        out = self._result_json(ev.request_id, res)
        status = 200 if out["status"] == "stored" else 202 if res is None else 422
        return web.json_response(out, status=status)

    async def ingest_batch(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise Invalid("items must be a non-empty list of ingest requests")
        if len(items) > MAX_BATCH_ITEMS:
            raise TooLarge(f"{len(items)} items; the limit is {MAX_BATCH_ITEMS} per batch")
        wait = body.get("wait", True)
        if not isinstance(wait, bool):
            raise Invalid("wait must be true or false")
        timeout = body.get("timeout_s", self.ingest_wait_s)
        if reason := check_timeout(timeout):
            raise Invalid(reason)
        events, errors = [], []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise Invalid("each item must be a JSON object")
                events.append(self._ingest_event(item, caller_of(request)))
            except Refused as exc:
                errors.append({"index": i, "error": exc.reason})
        if errors:
            return web.json_response(
                {
                    "error": f"{len(errors)} invalid item(s); nothing was ingested",
                    "items": errors,
                },
                status=400,
            )
        wait_s = float(timeout) if wait else 0.0
        results = await self._submit(events, wait_s, caller_scope(request))
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
        top_k = _field(body, "top_k", 10)
        namespace = _field(body, "namespace", "public")
        flt = body.get("filter")
        reason = check_top_k(top_k) or check_namespace(namespace) or check_filter(flt)
        if reason is None:
            if text is None and vector is None:
                reason = "give query_text or query_vector"
            elif text is not None:
                if not isinstance(text, str) or not text.strip():
                    reason = "query_text must be a non-empty string"
                elif len(text) > MAX_TEXT_CHARS:
                    reason = f"query_text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
            else:
                reason = check_vector(vector, self.store.dim)
        if reason:
            raise Invalid(reason)
        # one thread hop for embed + search; the response is encoded by msgspec (~5x
        # faster than json.dumps for a page of hits with metadata). A namespace the caller
        # may not read answers as one that does not exist: no hits.
        try:
            if self.store.access.can_read(namespace, caller_of(request)):
                results = await asyncio.to_thread(self._search, text, vector, top_k, namespace, flt)
            else:
                results = []
        except StoreError as exc:  # e.g. a filter too broad to answer within its bounds
            raise Refused(422, str(exc)) from None
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
        ch, version = self._challenge_of(body)
        caller = caller_of(request)
        if version == 2:
            check_challenge_binding(ch.validator_hotkey_hex, caller)
        # a signed validator may challenge any stored vector (the proof never holds the
        # text); an unsigned challenge (open mode) reaches public namespaces only
        held = await asyncio.to_thread(self.store.holders, ch.cid)
        if caller is None:
            held = [r for r in held if self.store.access.can_read(r.namespace, None)]
        rec = held[0] if held else None
        if rec is None:
            raise NotFound(f"unknown CID {short(ch.cid)}")
        try:  # each challenge is answered once (docs/protocol.md, "Verification")
            self.nonces.consume(ch.nonce_hex, ch.expires_at)  # (forgets expired ones first)
        except _core.ChallengeReplayed:
            raise Conflict("this challenge nonce was already answered") from None
        if len(self.nonces) > self.max_live_nonces:  # a flood: refuse until some expire
            raise Busy(f"{self.max_live_nonces} challenges are live; retry when some expire")
        if self.shared_nonces is not None and not await self.shared_nonces.claim(ch.nonce_hex):
            raise Conflict("this challenge nonce was already answered (by this node)")
        ehash = _core.embedding_hash(rec.vector)
        if version == 1:
            proof = _core.proof_v1(ch.nonce_hex, ehash)
        else:
            proof = _core.proof_v2(ch.validator_hotkey_hex, ch.nonce_hex, rec.vector)
        return web.json_response(
            {
                "cid": ch.cid,
                "embedding_hash": ehash,
                "proof": proof,
                "version": version,
                "error": None,
            }
        )

    def _challenge_of(self, body: dict[str, Any]) -> tuple[_core.Challenge, int]:
        """The challenge in ``body`` and its proof version, or the refusal."""
        cid = body.get("cid")
        nonce = body.get("nonce_hex")
        version = body.get("version", body.get("proof_version"))
        if version is None:  # the seeds' challenge has no version and no hotkey: it is v1
            version = 2 if "validator_hotkey_hex" in body else 1
        hotkey = body.get("validator_hotkey_hex")
        expires_at = body.get("expires_at")
        if not isinstance(cid, str) or not cid:
            raise Invalid("cid is required (a string)")
        if len(cid) > MAX_CID_CHARS:
            raise Invalid(f"cid is {len(cid)} characters; no CID is longer than {MAX_CID_CHARS}")
        if not _is_hex(nonce, 32):
            raise Invalid("nonce_hex must be 32 bytes as 64 hex characters")
        if type(version) is not int or version not in (1, 2):
            raise Invalid("version must be the integer 1 or 2")
        if version not in self.proof_versions:
            enabled = ", ".join(str(v) for v in sorted(self.proof_versions))
            raise Invalid(
                f"proof version {version} is disabled on this miner (enabled: {enabled}; "
                "the operator sets ENGRAM_AXON_PROOF_VERSIONS)"
            )
        if version == 2 and not _is_hex(hotkey, 32):
            raise Invalid("validator_hotkey_hex must be 32 bytes as 64 hex characters")
        if (
            not isinstance(expires_at, int | float)
            or isinstance(expires_at, bool)
            or (isinstance(expires_at, float) and not math.isfinite(expires_at))
        ):
            raise Invalid("expires_at must be a finite number (unix seconds)")
        now = time.time()
        if expires_at <= now:
            raise Expired("the challenge has expired")
        if expires_at > now + MAX_CHALLENGE_AHEAD_S:
            raise Invalid(
                f"expires_at is more than {MAX_CHALLENGE_AHEAD_S} s ahead; "
                "challenges are short-lived"
            )
        challenge = _core.Challenge(
            cid=cid,
            nonce_hex=str(nonce).lower(),
            expires_at=math.ceil(expires_at),
            validator_hotkey_hex=str(hotkey).lower() if version == 2 else "",
        )
        return challenge, version

    async def retrieve(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if len(cid) > MAX_CID_CHARS:
            raise Invalid(f"cid is {len(cid)} characters; no CID is longer than {MAX_CID_CHARS}")
        namespace = request.query.get("namespace")
        if namespace is not None and (reason := check_namespace(namespace)):
            raise Invalid(reason)
        caller = caller_of(request)
        held = await asyncio.to_thread(self.store.holders, cid)
        rec = next(
            (
                r
                for r in held
                if (namespace is None or r.namespace == namespace)
                and self.store.access.can_read(r.namespace, caller)
            ),
            None,
        )
        if rec is None:  # unknown, or not the caller's to read: the same answer
            raise NotFound(f"unknown CID {short(cid)}")
        extra = await self.retrieve_extra(rec.metadata) if self.retrieve_extra else {}
        return web.json_response(
            {
                **extra,
                "cid": rec.cid,
                "metadata": rec.metadata,
                "namespace": rec.namespace,
                "text": rec.text,
                "model_version": rec.model_version,
                "embedding": [float(x) for x in rec.vector],
                "error": None,
            }
        )

    # --- access: namespaces, grants, delete, list (engram.miner.access) ------------------

    def _check_write(self, namespace: str, caller: str | None) -> None:
        check_write(self.store.access, namespace, caller)

    @staticmethod
    def _signer(request: web.Request, what: str) -> str:
        caller = caller_of(request)
        if caller is None:
            raise Unauthorized(f"{what} needs a btauth/1 signed request (the signer is who)")
        return caller

    def _namespace_arg(self, request: web.Request) -> str:
        namespace = request.match_info["namespace"]
        if reason := check_namespace(namespace):
            raise Invalid(reason)
        return namespace

    def _owned(self, namespace: str, caller: str | None) -> NamespaceInfo:
        """The namespace, if ``caller`` owns it: else 404 (cannot read it) or 403."""
        info = self.store.access.info(namespace)
        if info is None or not info.can_read(caller):
            raise NotFound(f"unknown namespace {short(namespace)}")
        if not info.owner or info.owner != caller:
            owner = f"its owner {info.owner}" if info.owner else "nobody (it has no owner)"
            raise Forbidden(f"namespace {short(namespace)} is managed by {owner}")
        return info

    async def _publish_applied(self, events: list[Event]) -> None:
        """Publish to MEMORY and wait until the store applied them (read-your-writes)."""
        acks = await self.publisher.publish_many(events)
        last = max(a.seq for a in acks)
        if not await self.runner.wait_for_seq(last, self.ingest_wait_s):
            raise Unavailable("recorded, but not applied yet; ask again shortly", retry_after_s=1.0)

    async def create_namespace(self, request: web.Request) -> web.Response:
        """``POST /namespaces {"namespace", "visibility"}``: 201, the caller owns it; 200
        when the caller already made it so; 409 when it exists otherwise."""
        body = await self._json(request)
        caller = self._signer(request, "creating a namespace")
        namespace, visibility = body.get("namespace"), _field(body, "visibility", "private")
        if not isinstance(namespace, str):
            raise Invalid("namespace is required (a string)")
        if reason := check_namespace(namespace):
            raise Invalid(reason)
        if visibility not in ("public", "private"):
            raise Invalid("visibility must be public or private")
        access = self.store.access
        info = access.info(namespace)
        if info is None:
            if len(access) >= self.store.max_namespaces:
                raise Conflict(
                    f"this miner holds its limit of {self.store.max_namespaces} namespaces"
                )
            event = NamespaceCreated(
                namespace=namespace, visibility=visibility, owner=caller, producer=self.producer
            )
            await self._publish_applied([event])
            info = access.info(namespace)
            created = info is not None and info.seq > 0 and info.owner == caller
            if created and info is not None and info.visibility == visibility:
                return web.json_response(info.as_json(caller), status=201)
        if info is not None and info.owner == caller and info.visibility == visibility:
            return web.json_response(info.as_json(caller), status=200)
        raise Conflict(f"namespace {short(namespace)} exists with another owner or visibility")

    async def get_namespace(self, request: web.Request) -> web.Response:
        namespace = self._namespace_arg(request)
        info = self.store.access.info(namespace)
        caller = caller_of(request)
        if info is None or not info.can_read(caller):
            raise NotFound(f"unknown namespace {short(namespace)}")
        return web.json_response(info.as_json(caller))

    async def grant(self, request: web.Request) -> web.Response:
        """``POST /namespaces/{ns}/grants {"hotkey", "access": "read"|"write"}``, owner only."""
        namespace = self._namespace_arg(request)
        body = await self._json(request)
        caller = self._signer(request, "granting access")
        self._owned(namespace, caller)
        hotkey, access = body.get("hotkey"), body.get("access")
        if reason := check_hotkey(hotkey):
            raise Invalid(reason)
        if access not in ("read", "write"):
            raise Invalid("access must be read or write")
        await self._publish_applied(
            [
                AccessGranted(
                    namespace=namespace,
                    hotkey=str(hotkey),
                    access=str(access),
                    by=caller,
                    producer=self.producer,
                )
            ]
        )
        info = self._owned(namespace, caller)
        return web.json_response(
            {
                "namespace": namespace,
                "hotkey": hotkey,
                "access": access,
                "granted": True,
                "grants": info.grants(),
            }
        )

    async def revoke(self, request: web.Request) -> web.Response:
        """``DELETE /namespaces/{ns}/grants/{hotkey}[?access=read|write]`` (default both)."""
        namespace = self._namespace_arg(request)
        caller = self._signer(request, "revoking access")
        self._owned(namespace, caller)
        hotkey = request.match_info["hotkey"]
        if reason := check_hotkey(hotkey):
            raise Invalid(reason)
        which = request.query.get("access")
        if which not in (None, "read", "write"):
            raise Invalid("access must be read or write (or absent: both)")
        kinds = [which] if which else ["read", "write"]
        await self._publish_applied(
            [
                AccessRevoked(
                    namespace=namespace, hotkey=hotkey, access=a, by=caller, producer=self.producer
                )
                for a in kinds
            ]
        )
        info = self._owned(namespace, caller)
        return web.json_response(
            {"namespace": namespace, "hotkey": hotkey, "revoked": kinds, "grants": info.grants()}
        )

    async def delete_memory(self, request: web.Request) -> web.Response:
        """``DELETE /memory/{cid}[?namespace=NS]``: 404 unknown or unreadable, 403 readable
        but not the caller's to delete; else one ``Deleted`` per namespace it goes from."""
        cid = request.match_info["cid"]
        if len(cid) > MAX_CID_CHARS:
            raise Invalid(f"cid is {len(cid)} characters; no CID is longer than {MAX_CID_CHARS}")
        namespace = request.query.get("namespace")
        if namespace is not None and (reason := check_namespace(namespace)):
            raise Invalid(reason)
        caller = self._signer(request, "deleting a memory")
        access = self.store.access
        held = await asyncio.to_thread(self.store.holders, cid)
        seen = [
            r.namespace
            for r in held
            if (namespace is None or r.namespace == namespace)
            and access.can_read(r.namespace, caller)
        ]
        if not seen:
            raise NotFound(f"unknown CID {short(cid)}")

        def deletable() -> list[str]:
            with self.store.reading() as db:
                return [
                    ns
                    for ns in seen
                    if access.may_delete(access.info(ns), caller, access.ingesters(db, ns, cid))
                ]

        mine = await asyncio.to_thread(deletable)
        if not mine:
            raise Forbidden(
                "only the namespace's owner (or, in a public namespace, a hotkey that "
                "ingested it) may delete this memory"
            )
        await self._publish_applied(
            [Deleted(cid=cid, namespace=ns, by=caller, producer=self.producer) for ns in mine]
        )
        return web.json_response({"cid": cid, "deleted": True, "namespaces": mine})

    async def list_memories(self, request: web.Request) -> web.Response:
        """``GET /memories?namespace=&limit=&cursor=&filter=``: a page in store order."""
        q = request.query
        namespace = q.get("namespace", "public")
        if reason := check_namespace(namespace):
            raise Invalid(reason)
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise Invalid("limit must be an integer from 1 to 1000") from None
        if not 1 <= limit <= 1000:
            raise Invalid("limit must be an integer from 1 to 1000")
        cursor = q.get("cursor")
        after = 0
        if cursor is not None:
            if not cursor.isdigit() or len(cursor) > 19:
                raise Invalid("cursor must be the next_cursor of a previous page")
            after = int(cursor)
        flt: dict[str, Any] | None = None
        if (raw := q.get("filter")) is not None:
            try:
                flt_any = _parse_object(raw.encode()) if raw.strip() else None
            except Invalid:
                flt_any = None
            if flt_any is None:
                raise Invalid("filter must be a URL-encoded JSON object")
            if reason := check_filter(flt_any):
                raise Invalid(f"filter: {reason}")
            flt = flt_any
        if not self.store.access.can_read(namespace, caller_of(request)):
            return web.json_response({"memories": [], "next_cursor": None})
        recs, nxt = await asyncio.to_thread(self.store.page, namespace, after, limit, flt)
        return web.json_response(
            {
                "memories": [
                    {"cid": r.cid, "namespace": r.namespace, "text": r.text, "metadata": r.metadata}
                    for r in recs
                ],
                "next_cursor": None if nxt is None else str(nxt),
            }
        )

    # --- operations -----------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        checks = self.health_checks() if self.health_checks is not None else {}
        degraded = any(v != "up" for v in checks.values())
        return web.json_response(
            {
                "status": "degraded" if degraded else "ok",
                **checks,
                "model_version": self.embedder.model_version,
                "model": self.embedder.model_id,
                "memories": len(self.store),
                "applied_seq": self.store.applied_seq,
                "uptime_s": round(time.time() - self.started, 1),
                **(request.app[AUTH_KEY].public_info() if AUTH_KEY in request.app else {}),
            },
            status=503 if degraded else 200,
        )

    def stats_dict(self, caller: str | None = None) -> dict[str, Any]:
        """The store's state; namespaces and memory counts only of what ``caller`` may
        read (a private namespace of another is not there at all)."""
        s = self.store.stats
        access = self.store.access
        seen = {ns: n for ns, n in self.store.namespaces().items() if access.can_read(ns, caller)}
        out: dict[str, Any] = {
            "memories": sum(seen.values()),
            "namespaces": seen,
            "applied_seq": self.store.applied_seq,
            "model_version": self.embedder.model_version,
            "model": self.embedder.model_id,
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
        namespace = request.query.get("namespace")
        caller = caller_of(request)
        out = await asyncio.to_thread(self.stats_dict, caller)
        if namespace is not None:
            if reason := check_namespace(namespace):
                raise Invalid(reason)
            info = self.store.access.info(namespace)
            if info is None or not info.can_read(caller):
                raise NotFound(f"unknown namespace {short(namespace)}")
            out = {
                **info.as_json(caller),
                "memories": out["namespaces"].get(namespace, 0),
                "applied_seq": out["applied_seq"],
            }
        return web.json_response(out)

    async def metrics(self, request: web.Request) -> web.Response:
        self.m_memories.set(len(self.store))
        self.m_seq.set(self.store.applied_seq)
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def _error_response(
    status: int, reason: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    keep = {k: v for k, v in (headers or {}).items() if k.lower() in ("allow", "retry-after")}
    return web.json_response({"error": reason}, status=status, headers=keep)


def _retry_after(exc: BaseException) -> dict[str, str] | None:
    if isinstance(exc, Unavailable):
        return {"Retry-After": str(math.ceil(exc.retry_after_s or 1))}
    if isinstance(exc, Busy):
        return {"Retry-After": "5"}
    return None


def _as_result(rid: str, known: RequestStatus | None) -> ApplyResult | None:
    if known is None:
        return None
    if known.status == "rejected":
        return ApplyResult(known.seq, "rejected", "", rid, known.namespace, known.reason)
    return ApplyResult(known.seq, "duplicate", known.cid or "", rid, known.namespace)


def make_app(
    axon: Axon, auth: AxonAuth | None = None, limits: Middleware | None = None
) -> web.Application:
    """The axon's app; without ``auth`` it is unauthenticated (tests, embedding).
    ``limits`` (engram.miner.connections) runs inside the error middleware, before auth."""

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Outermost: every exception becomes a JSON response, every response is counted."""
        resource = request.match_info.route.resource
        # a bounded label: the route's template, never the raw path
        endpoint = resource.canonical if resource is not None else "unmatched"
        t0 = time.perf_counter()
        try:
            resp = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            resp = _error_response(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
            resp.force_close()  # the rest of the body is not read
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, ...
            resp = _error_response(exc.status, exc.reason, exc.headers)
        except Exception as exc:
            status = status_of(exc)
            if status == 500:
                log.exception("axon request failed", endpoint=endpoint, method=request.method)
                resp = _error_response(500, "internal error; the miner logged the cause")
            else:
                resp = _error_response(status, short_reason(str(exc)), _retry_after(exc))
                if isinstance(exc, Unreadable):
                    resp.force_close()
                elif isinstance(exc, Unauthorized):
                    resp.headers["WWW-Authenticate"] = "btauth/1"
        axon.m_requests.labels(endpoint, str(resp.status)).inc()
        axon.m_latency.labels(endpoint).observe(time.perf_counter() - t0)
        return resp

    middlewares: list[Middleware] = [errors]
    if limits is not None:
        middlewares.append(limits)
    if auth is not None:
        middlewares.append(auth.middleware())
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    if auth is not None:
        app[AUTH_KEY] = auth
    app.router.add_post("/IngestSynapse", axon.ingest)
    app.router.add_post("/IngestBatch", axon.ingest_batch)
    app.router.add_get("/ingest/{request_id}", axon.ingest_status)
    app.router.add_post("/QuerySynapse", axon.query)
    app.router.add_post("/ChallengeSynapse", axon.challenge)
    app.router.add_get("/retrieve/{cid}", axon.retrieve)
    # access (issue 9; engram.miner.access)
    app.router.add_post("/namespaces", axon.create_namespace)
    app.router.add_get("/namespaces/{namespace}", axon.get_namespace)
    app.router.add_post("/namespaces/{namespace}/grants", axon.grant)
    app.router.add_delete("/namespaces/{namespace}/grants/{hotkey}", axon.revoke)
    app.router.add_delete("/memory/{cid}", axon.delete_memory)
    app.router.add_get("/memories", axon.list_memories)
    app.router.add_get("/health", axon.health)
    app.router.add_get("/stats", axon.stats)
    app.router.add_get("/metrics", axon.metrics)
    app[AXON_KEY] = axon
    return app
