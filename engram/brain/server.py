"""The brain's HTTP API on aiohttp (the project's HTTP stack; the axon and the validator use
it too). The OpenAPI document is written by hand in :mod:`engram.brain.openapi`: FastAPI's
generated one would cost a second web stack for one JSON file (docs/architecture.md).

OpenAI-compatible: ``POST /v1/chat/completions`` (SSE when ``stream``), ``GET /v1/models``.
mem0-style: ``/v1/memories`` (add, list, search, get, update, delete, history). Feedback:
``POST /v1/feedback``. Sign-in: ``/v1/auth/nonce``, ``/v1/auth/verify``. Admin:
``POST /admin/model`` (hot swap). The seed's paths: ``/api/llm/query``, ``/api/llm/train``,
``/api/system/logs`` (SSE), ``/api/user/create``. Bad input is a 4xx ``{"error": reason}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web

from streams.errors import EngramError, InputError, Unavailable
from streams.events import (
    CompletionGenerated,
    CompletionScored,
    DatasetExported,
    Deleted,
    Event,
    FeedbackGiven,
    IngestRequested,
)
from streams.replay import replay_batches

from .builtin import BRAIN_CALLER, namespace_of
from .engines import Chunk, build_engine
from .openapi import openapi
from .service import Brain, ChatRequest, Prepared
from .training import job_history
from .wallet import AuthError, BalanceChecker, LocalBalance, Sessions, SolanaRpcBalance

__all__ = ["make_app"]

log = structlog.get_logger("engram.brain.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = ("/v1/models", "/openapi.json", "/v1/auth/nonce", "/v1/auth/verify", "/health")
MAX_BODY = 1 << 20
#: the signed-in wallet address of a request (None when sign-in is off)
WALLET: web.RequestKey[str] = web.RequestKey("wallet", str)


class NotFound(InputError):
    """No such memory or completion (404)."""


def _err(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return _err(exc.status, exc.reason)
        raise
    except AuthError as exc:
        return _err(401, str(exc))
    except NotFound as exc:
        return _err(404, str(exc))
    except InputError as exc:
        return _err(400, str(exc))
    except Unavailable as exc:
        return _err(503, str(exc))
    except EngramError as exc:
        return _err(503, str(exc))


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise InputError(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str, default: str = "", limit: int = 128) -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > limit:
        raise InputError(f"{key}: a string of at most {limit} characters")
    return value


def _int(data: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{key}: an integer from {lo} to {hi}")
    return value


class BrainAPI:
    def __init__(self, brain: Brain, balances: BalanceChecker | None = None) -> None:
        self.brain = brain
        s = brain.settings
        self.sessions = Sessions(ttl_s=s.brain_token_ttl_s)
        self.balances: BalanceChecker = balances or (
            SolanaRpcBalance(s.brain_solana_rpc) if s.brain_balance == "solana" else LocalBalance()
        )

    # --- auth ---------------------------------------------------------------------------

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[WALLET] = ""
        if self.brain.settings.brain_auth == "wallet" and request.path not in PUBLIC:
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return _err(401, "sign in: POST /v1/auth/nonce, then /v1/auth/verify")
            try:
                request[WALLET] = self.sessions.check(header[7:].strip())
            except AuthError as exc:
                return _err(401, str(exc))
        return await handler(request)

    def _user(self, request: web.Request, claimed: str) -> str:
        """The signed-in wallet when there is one (a claimed other user is refused)."""
        wallet = request[WALLET]
        if not wallet:
            return claimed or "anonymous"
        if claimed and claimed != wallet:
            raise AuthError("a session may only use its own wallet's memory")
        return str(wallet)

    async def nonce(self, request: web.Request) -> web.Response:
        data = await _body(request)
        return web.json_response(
            self.sessions.issue_nonce(_str(data, "address"), _str(data, "scheme", "solana"))
        )

    async def verify(self, request: web.Request) -> web.Response:
        data = await _body(request)
        out = self.sessions.verify(
            _str(data, "address"),
            _str(data, "scheme", "solana"),
            _str(data, "nonce"),
            _str(data, "signature", limit=256),
        )
        return web.json_response(out)

    # --- chat ---------------------------------------------------------------------------

    def _chat_request(self, request: web.Request, data: dict[str, Any]) -> ChatRequest:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages or len(messages) > 256:
            raise InputError("messages: a list of 1-256 {role, content} objects")
        clean = []
        for m in messages:
            if (
                not isinstance(m, dict)
                or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)
            ):
                raise InputError("each message needs a role (system|user|assistant) and content")
            if len(m["content"]) > 16000:
                raise InputError("a message may hold at most 16000 characters")
            clean.append({"role": m["role"], "content": m["content"]})
        memory = data.get("memory") or {}
        if not isinstance(memory, dict):
            raise InputError("memory: an object {user_id, agent_id, session_id, top_k, write}")
        write = memory.get("write", True)
        if not isinstance(write, bool):
            raise InputError("memory.write: true or false")
        temperature = data.get("temperature", 0.0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise InputError("temperature: a number from 0 to 2")
        if not 0 <= float(temperature) <= 2:
            raise InputError("temperature: a number from 0 to 2")
        claimed = _str(memory, "user_id") or _str(data, "user")
        return ChatRequest(
            messages=clean,
            user=self._user(request, claimed),
            session_id=_str(memory, "session_id"),
            agent_id=_str(memory, "agent_id"),
            top_k=_int(memory, "top_k", None, 0, 100),
            write=write,
            max_tokens=_int(data, "max_tokens", None, 1, 4096)
            or _int(data, "max_completion_tokens", None, 1, 4096),
            temperature=float(temperature),
        )

    def _memories(self, prep: Prepared) -> list[dict[str, Any]]:
        out = [h.as_dict() for h in prep.memories]
        if prep.lesson is not None:
            out.insert(0, {**prep.lesson.as_dict(), "kind": "lesson", "used_as": "answer"})
        return out

    async def chat(self, request: web.Request) -> web.StreamResponse:
        data = await _body(request)
        req = self._chat_request(request, data)
        prep = await self.brain.prepare(req)
        stream = self.brain.generate(prep)
        try:
            first = await anext(stream)  # an engine refusal is still a clean 4xx here
        except StopAsyncIteration:
            first = Chunk("", "stop")
        model = self.brain.model
        if not data.get("stream"):
            parts, final = [], first
            if first.finish_reason is None:
                parts.append(first.text)
                async for chunk in stream:
                    if chunk.finish_reason is None:
                        parts.append(chunk.text)
                    else:
                        final = chunk
            done = self.brain.recent.get(prep.completion_id)
            return web.json_response(
                {
                    "id": prep.completion_id,
                    "object": "chat.completion",
                    "created": prep.created,
                    "model": done.model if done else model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(parts)},
                            "finish_reason": final.finish_reason or "stop",
                        }
                    ],
                    "usage": _usage(final),
                    "memories": self._memories(prep),
                }
            )
        return await self._stream(request, data, prep, stream, first, model)

    async def _stream(
        self,
        request: web.Request,
        data: dict[str, Any],
        prep: Prepared,
        stream: Any,
        first: Chunk,
        model: str,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        opts = data.get("stream_options") or {}
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))

        def frame(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
            body = {
                "id": prep.completion_id,
                "object": "chat.completion.chunk",
                "created": prep.created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n".encode()

        await resp.write(
            frame({"role": "assistant", "content": ""}, None, memories=self._memories(prep))
        )
        chunk: Chunk | None = first
        final = Chunk("", "stop")
        try:
            while chunk is not None:
                if chunk.finish_reason is None:
                    await resp.write(frame({"content": chunk.text}, None))
                else:
                    final = chunk
                chunk = await anext(stream, None)
        except EngramError as exc:
            await resp.write(f"data: {json.dumps({'error': str(exc)})}\n\n".encode())
            final = Chunk("", "error")
        finally:
            await stream.aclose()
        await resp.write(frame({}, final.finish_reason or "stop"))
        if include_usage:
            body = {
                "id": prep.completion_id,
                "object": "chat.completion.chunk",
                "created": prep.created,
                "model": model,
                "choices": [],
                "usage": _usage(final),
            }
            await resp.write(f"data: {json.dumps(body)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        engine = self.brain.holder.current if self.brain.holder else None
        data = (
            [{"id": engine.name, "object": "model", "created": 0, "owned_by": engine.kind}]
            if engine
            else []
        )
        return web.json_response({"object": "list", "data": data})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi())

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "model": self.brain.model, "memories": self.brain.index.count()}
        )

    # --- feedback and learning ----------------------------------------------------------

    async def feedback(self, request: web.Request) -> web.Response:
        data = await _body(request)
        completion_id = _str(data, "completion_id")
        done = self.brain.recent.get(completion_id)
        if done is None:
            raise NotFound(f"no recent completion {completion_id!r}")
        self._user(request, done.user)
        score = data.get("score")
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1
        ):
            raise InputError("score: a number from 0 to 1")
        correction = _str(data, "correction", limit=2000)
        event = FeedbackGiven(
            causation_id=done.event_id,
            completion_id=completion_id,
            user=done.user,
            prompt=done.prompt,
            answer=done.answer,
            score=None if score is None else float(score),
            correction=correction,
        )
        await self.brain.publish(event)
        return web.json_response({"accepted": True, "event_id": event.event_id}, status=202)

    async def train(self, request: web.Request) -> web.Response:
        s = self.brain.settings
        wallet = request[WALLET]
        if wallet and s.brain_min_balance > 0:
            have = await self.balances.balance(str(wallet))
            if have < s.brain_min_balance:
                return _err(402, f"training needs a balance of {s.brain_min_balance}; {have}")
        exported = await export_dataset(self.brain)
        job, published = await self.brain.request_training(exported)
        body = {**_dataset_json(exported), "trainer": None, "job": None}
        if job is None:
            body["note"] = (
                "no trainer backend is configured: the dataset is exported only"
                if self.brain.trainer is None
                else "the dataset has no example: nothing to train"
            )
            return web.json_response(body)
        body.update(trainer=job.trainer, job=await training_status(self.brain, job.job_id))
        if not published:  # the job, not a second one
            body["note"] = "this dataset was trained already on this base model"
            return web.json_response(body)
        return web.json_response(body, status=202)

    async def train_status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if not re.fullmatch(r"train-[0-9a-f]{16}", job_id):
            return _err(404, f"no training job {job_id[:80]!r}")
        status = await training_status(self.brain, job_id)
        if status is None:
            return _err(404, f"no training job {job_id!r}")
        return web.json_response(status)

    # --- mem0-style memories -----------------------------------------------------------

    def _namespace(self, request: web.Request, user: str) -> str:
        user = self._user(request, user)
        if not user:
            raise InputError("user_id is required")
        return namespace_of(user)

    async def add_memory(self, request: web.Request) -> web.Response:
        data = await _body(request)
        ns = self._namespace(request, _str(data, "user_id"))
        texts: list[tuple[str, str]] = []
        if isinstance(data.get("messages"), list):
            for m in data["messages"]:
                if isinstance(m, dict) and isinstance(m.get("content"), str):
                    texts.append((str(m.get("role", "user")), m["content"]))
        elif isinstance(data.get("memory") or data.get("text"), str):
            texts.append(("user", str(data.get("memory") or data.get("text"))))
        if not texts or any(not t.strip() or len(t) > 8000 for _, t in texts):
            raise InputError("messages (a list of {role, content}) or memory: 1-8000 characters")
        session = _str(data, "run_id") or _str(data, "session_id")
        events = [
            IngestRequested(
                request_id=hashlib.sha256(f"{ns}\n{role}\n{text}".encode()).hexdigest()[:32],
                text=text,
                namespace=ns,
                caller=BRAIN_CALLER,
                metadata={
                    "brain_kind": "turn",
                    "role": role,
                    "session_id": session,
                    "agent_id": _str(data, "agent_id"),
                    "time": time.time(),
                },
            )
            for role, text in texts
        ]
        assert self.brain.bus is not None
        await self.brain.bus.publisher.publish_many(events)
        return web.json_response(
            {
                "results": [
                    {
                        "request_id": e.request_id,
                        "event": "ADD",
                        "status": "queued",
                        "memory": e.text,
                    }
                    for e in events
                ]
            },
            status=202,
        )

    async def list_memories(self, request: web.Request) -> web.Response:
        ns = self._namespace(request, request.query.get("user_id", ""))
        try:
            limit = min(int(request.query.get("limit", "100")), 1000)
            offset = max(int(request.query.get("offset", "0")), 0)
        except ValueError:
            raise InputError("limit, offset: integers") from None
        hits = await asyncio.to_thread(self.brain.index.listing, ns, limit, offset)
        return web.json_response({"results": [h.as_dict() for h in hits]})

    async def search_memories(self, request: web.Request) -> web.Response:
        data = await _body(request)
        ns = self._namespace(request, _str(data, "user_id"))
        query = _str(data, "query", limit=4000)
        if not query.strip():
            raise InputError("query: a non-empty string")
        k = _int(data, "top_k", 10, 1, 100) or 10
        mode = _str(data, "mode", "hybrid")
        if mode not in ("hybrid", "dense", "bm25"):
            raise InputError("mode: hybrid, dense or bm25")
        vec = await asyncio.to_thread(self.brain.embedder.embed_one, query)
        hits = await asyncio.to_thread(
            self.brain.index.search, ns, query, vec, k, mode=mode, session_id=_str(data, "run_id")
        )
        return web.json_response({"results": [h.as_dict() for h in hits]})

    def _owned(self, request: web.Request, cid: str) -> str:
        ns = self.brain.index.owner(cid)
        if ns is None:
            raise NotFound(f"no memory {cid!r}")
        claimed = request.query.get("user_id", "")
        if request[WALLET] or claimed:
            if ns != namespace_of(self._user(request, claimed)):
                raise NotFound(f"no memory {cid!r}")  # another user's: not even its existence
        return ns

    async def get_memory(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        self._owned(request, cid)
        got = self.brain.index.get(cid)
        if got is None:
            raise NotFound(f"memory {cid!r} was deleted")
        return web.json_response(got[1].as_dict())

    async def update_memory(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        ns = self._owned(request, cid)
        got = self.brain.index.get(cid)
        if got is None:
            raise NotFound(f"memory {cid!r} was deleted")
        data = await _body(request)
        text = _str(data, "memory", limit=8000) or _str(data, "text", limit=8000)
        if not text.strip():
            raise InputError("memory: the new text (1-8000 characters)")
        meta = {k: v for k, v in got[1].metadata.items() if k != "replaces"}
        event = IngestRequested(
            request_id=hashlib.sha256(f"{cid}\n{text}".encode()).hexdigest()[:32],
            text=text,
            namespace=ns,
            caller=BRAIN_CALLER,
            metadata={**meta, "replaces": cid, "time": time.time()},
        )
        await self.brain.publish(event)
        return web.json_response(
            {"id": cid, "event": "UPDATE", "status": "queued", "request_id": event.request_id},
            status=202,
        )

    async def delete_memory(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        self._owned(request, cid)
        await self.brain.publish(Deleted(cid=cid, reason="deleted through the brain API"))
        return web.json_response({"id": cid, "event": "DELETE", "status": "queued"}, status=202)

    async def history(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        self._owned(request, cid)
        return web.json_response({"results": self.brain.index.history(cid)})

    # --- admin and the seed's paths ----------------------------------------------------

    async def swap_model(self, request: web.Request) -> web.Response:
        data = await _body(request)
        s = self.brain.settings
        kind = _str(data, "engine", s.brain_engine)
        path = _str(data, "path", limit=4096)
        adapter = _str(data, "adapter", limit=4096)
        for key, value in (("path", path), ("adapter", adapter)):
            if value and not await asyncio.to_thread(Path(value).is_file):
                raise InputError(f"{key}: {value!r} is not a file")
        engine = await asyncio.to_thread(
            build_engine,
            kind,
            path=path or s.brain_model_path,
            name=_str(data, "name"),
            openai_url=_str(data, "url", s.brain_openai_url, 1024),
            openai_key=s.brain_openai_key,
            context_tokens=s.brain_context_tokens,
            adapter=adapter,
        )
        event = await self.brain.swap(engine)
        return web.json_response(msgspec.to_builtins(event))

    async def query(self, request: web.Request) -> web.Response:
        data = await _body(request)
        prompt = _str(data, "prompt", limit=16000)
        if not prompt.strip():
            raise InputError("prompt: a non-empty string")
        req = ChatRequest(
            messages=[{"role": "user", "content": prompt}],
            user=self._user(request, _str(data, "user") or _str(data, "user_id")),
            session_id=_str(data, "session_id"),
            max_tokens=_int(data, "max_tokens", None, 1, 4096),
        )
        prep, answer, final = await self.brain.chat(req)
        return web.json_response(
            {
                "completion_id": prep.completion_id,
                "answer": answer,
                "model": self.brain.model,
                "usage": _usage(final),
                "memories": self._memories(prep),
            }
        )

    async def create_user(self, request: web.Request) -> web.Response:
        data = await _body(request)
        user = self._user(request, _str(data, "user") or _str(data, "user_id"))
        if user == "anonymous":
            raise InputError("user: the new user's id")
        return web.json_response(
            {
                "user": user,
                "namespace": namespace_of(user),
                "memories": self.brain.index.count(namespace_of(user)),
            },
            status=201,
        )

    async def logs(self, request: web.Request) -> web.StreamResponse:
        kinds = {k for k in request.query.get("kind", "").split(",") if k}
        user = request.query.get("user", "")
        if request[WALLET]:
            user = str(request[WALLET])
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self.brain.listeners.add(queue)
        try:
            await resp.write(b": engram brain events\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if kinds and event.kind not in kinds:
                    continue
                if user and getattr(event, "user", None) not in (None, user):
                    continue
                if user and not hasattr(event, "user") and not kinds:
                    continue
                await resp.write(f"event: {event.kind}\ndata: {_event_json(event)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.brain.listeners.discard(queue)
        return resp


def _event_json(event: Event) -> str:
    data = msgspec.to_builtins(event)
    for key in ("vector", "original_data"):
        data.pop(key, None)
    data["kind"] = event.kind
    return json.dumps(data, default=str)


def _usage(final: Chunk) -> dict[str, int]:
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
    }


def _dataset_json(event: DatasetExported) -> dict[str, Any]:
    return {
        "version": event.version,
        "sha256": event.sha256,
        "path": event.path,
        "examples": event.examples,
        "corrected": event.corrected,
    }


async def training_status(brain: Brain, job_id: str) -> dict[str, Any] | None:
    """A job's state from its events (requested, failed attempts, finished, swapped in),
    with the live stage and progress when this process runs it."""
    assert brain.bus is not None
    history = await job_history(brain.bus.js, job_id)
    ev = history.requested
    if ev is None:
        return None
    status: dict[str, Any] = {
        "job_id": job_id,
        "status": "queued",
        "trainer": ev.trainer,
        "dataset": {"version": ev.dataset_version, "sha256": ev.dataset_sha256},
        "base_model": ev.base_model,
        "failures": [{"attempt": f.attempt, "error": f.error} for f in history.failures],
    }
    if history.failed:
        status["status"] = "failed"
    elif history.failures and history.failures[-1].retry == history.final_failures:
        status["status"] = "retrying"  # a failed attempt of the round now running
    if (done := history.finished) is not None:
        status.update(
            status="swapped_in" if history.swapped else "trained",
            model=done.model,
            engine=done.engine,
            adapter=done.adapter,
            adapter_sha256=done.adapter_sha256,
            metrics=done.metrics,
        )
    live = brain.jobs.get(job_id)
    if (
        live is not None
        and status["status"] in ("queued", "retrying")
        and live.get("retry", 0) == history.final_failures  # this round's, not the last's
    ):
        status.update(
            status=live.get("status", status["status"]),
            stage=live.get("stage", ""),
            progress=live.get("progress", 0.0),
            attempts=live.get("attempts", 0),
        )
    return status


def _prompt_key(prompt: str) -> str:
    return " ".join(prompt.lower().split())


async def export_dataset(brain: Brain) -> DatasetExported:
    """Scored and corrected completions → a versioned chat-format JSONL dataset, announced
    by a ``DatasetExported`` event with its SHA-256. A correction replaces the answer; an
    uncorrected completion is kept when scored ≥ 0.7 (by the user, else the LLM judge, else
    the heuristic scorer) and its prompt was never corrected (another answer to a corrected
    prompt is a wrong one)."""
    assert brain.bus is not None
    completions: dict[str, CompletionGenerated] = {}
    scores: dict[str, float] = {}  # heuristic < judge < the user's own rating
    judged: dict[str, float] = {}
    rated: dict[str, float] = {}
    corrections: dict[str, str] = {}
    async for items in replay_batches(
        brain.bus.js,
        "BRAIN",
        subjects=[
            CompletionGenerated.SUBJECT,
            CompletionScored.SUBJECT,
            FeedbackGiven.SUBJECT,
        ],
        idle_s=0.5,
    ):
        for item in items:
            ev = item.event
            if isinstance(ev, CompletionGenerated):
                completions[ev.completion_id] = ev
            elif isinstance(ev, CompletionScored):
                # the LLM judge's verdict, when there is one, outranks the heuristics
                if ev.scorer.startswith("judge:"):
                    judged[ev.completion_id] = ev.score
                else:
                    scores.setdefault(ev.completion_id, ev.score)
            elif isinstance(ev, FeedbackGiven):
                if ev.score is not None:
                    rated[ev.completion_id] = ev.score
                if ev.correction:
                    corrections[ev.completion_id] = ev.correction
    scores.update(judged)
    scores.update(rated)
    # a corrected prompt's other answers are known to be wrong: they are left out
    wrong = {_prompt_key(completions[cid].prompt) for cid in corrections if cid in completions}
    lines, corrected = [], 0
    for cid, ev in completions.items():
        answer = corrections.get(cid)
        if answer is not None:
            corrected += 1
        elif (
            scores.get(cid, 0.0) >= 0.7
            and not ev.lesson_cid
            and _prompt_key(ev.prompt) not in wrong
        ):
            answer = ev.answer
        else:
            continue
        lines.append(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": ev.prompt},
                        {"role": "assistant", "content": answer},
                    ]
                },
                sort_keys=True,
            )
        )
    content = ("\n".join(lines) + "\n").encode() if lines else b""
    digest = hashlib.sha256(content).hexdigest()
    folder = brain.settings.data_path / "brain" / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("dataset-v*.jsonl"))
    for path in existing:
        if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            version = int(path.stem.split("-v")[1])
            break
    else:
        version = len(existing) + 1
        path = folder / f"dataset-v{version}.jsonl"
        path.write_bytes(content)
    event = DatasetExported(
        version=version, sha256=digest, path=str(path), examples=len(lines), corrected=corrected
    )
    await brain.publish(event)
    return event


def make_app(brain: Brain, balances: BalanceChecker | None = None) -> web.Application:
    api = BrainAPI(brain, balances)
    app = web.Application(middlewares=[_errors, api.auth], client_max_size=MAX_BODY)
    r = app.router
    r.add_post("/v1/chat/completions", api.chat)
    r.add_get("/v1/models", api.models)
    r.add_get("/openapi.json", api.openapi)
    r.add_get("/health", api.health)
    r.add_post("/v1/feedback", api.feedback)
    r.add_post("/v1/auth/nonce", api.nonce)
    r.add_post("/v1/auth/verify", api.verify)
    r.add_post("/v1/memories", api.add_memory)
    r.add_get("/v1/memories", api.list_memories)
    r.add_post("/v1/memories/search", api.search_memories)
    r.add_get("/v1/memories/{id}", api.get_memory)
    r.add_put("/v1/memories/{id}", api.update_memory)
    r.add_delete("/v1/memories/{id}", api.delete_memory)
    r.add_get("/v1/memories/{id}/history", api.history)
    r.add_post("/admin/model", api.swap_model)
    r.add_post("/api/llm/query", api.query)
    r.add_post("/api/llm/train", api.train)
    r.add_get("/api/llm/train/{job_id}", api.train_status)
    r.add_get("/api/system/logs", api.logs)
    r.add_post("/api/user/create", api.create_user)
    return app


async def serve(brain: Brain, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(brain), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the first site listens on (port 0 asks the OS for a free one)."""
    return int(runner.addresses[0][1])
