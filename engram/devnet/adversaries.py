"""Misbehaving miners for the devnet, built around real miners, never inside one.

Each adversary is an aiohttp proxy with its own port: the chain lists the proxy as the
miner's axon, so the validator talks to it exactly as to any miner (same paths, bodies and
btauth/1 headers, which the proxy passes through untouched). Behind the proxy sits a real
:class:`~engram.miner.node.MinerNode` (its own data dir and bus), except for ``copycat``,
which has no store at all. What each kind does:

* ``hash-only`` keeps hashes, drops vectors: queries are answered (by its miner), but a v2
  challenge, which needs the vector, is answered with the only thing a hash allows (a v1
  proof over the embedding hash): v2 verification fails.
* ``lossy`` forgets a deterministic half of its memories (the CIDs whose SHA-256 starts
  with an odd byte): they never appear in query results and their challenges get 404.
* ``slow`` adds :data:`SLOW_MS` to every request.
* ``wrong`` answers queries with random CIDs (challenges honestly).
* ``copycat`` stores nothing: an ingest is answered with the CID engram-core computes for
  it, queries and challenges are forwarded (without the caller's signature, which is not
  addressed to the other miner) to an honest miner, who never saw the probes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from engram import core
from streams.errors import InputError

__all__ = ["KINDS", "SLOW_MS", "AdversaryProxy", "check_kind"]

KINDS = ("hash-only", "lossy", "slow", "wrong", "copycat")
SLOW_MS = 400.0
#: headers not copied between the two legs of the proxy
_HOP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"unknown adversary {kind!r}; one of {', '.join(KINDS)}")
    return kind


def forgotten(cid: str) -> bool:
    """The half of all CIDs a ``lossy`` miner forgets."""
    return hashlib.sha256(cid.encode()).digest()[0] % 2 == 1


def _random_cid() -> str:
    return "b" + secrets.token_hex(32)


@dataclass
class AdversaryProxy:
    """One adversary on ``host:port`` (0 = a free port) in front of ``target`` (the axon
    ``host:port`` of its own miner; for ``copycat``, an honest miner's)."""

    kind: str
    target: str
    hotkey: str  # the identity it answers under (its miner's hotkey; copycat's own)
    host: str = "127.0.0.1"
    port: int = 0
    served: int = 0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        check_kind(self.kind)

    @property
    def axon(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # a free port was chosen: the runner knows which
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- the proxy ------------------------------------------------------------------------

    async def _forward(
        self, request: web.Request, body: bytes, *, signed: bool = True
    ) -> tuple[int, bytes, dict[str, str]]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if not signed:
            headers = {k: v for k, v in headers.items() if not k.lower().startswith("x-bittensor")}
        url = f"http://{self.target}{request.raw_path}"
        async with self._session.request(request.method, url, data=body, headers=headers) as r:
            out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
            return r.status, await r.read(), out

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.served += 1
        body = await request.read()
        path = request.path
        try:
            if self.kind == "slow":
                await asyncio.sleep(SLOW_MS / 1000.0)
            if self.kind == "copycat":
                return await self._copycat(request, path, body)
            status, raw, headers = await self._forward(request, body)
            if status == 200 and path == "/QuerySynapse":
                raw = self._rewrite_query(raw)
            elif status == 200 and path == "/ChallengeSynapse":
                return self._rewrite_challenge(body, raw, headers)
            return web.Response(status=status, body=raw, headers=headers)
        except aiohttp.ClientError as exc:
            return web.json_response({"error": f"upstream: {type(exc).__name__}"}, status=502)

    def _rewrite_query(self, raw: bytes) -> bytes:
        if self.kind not in ("lossy", "wrong"):
            return raw
        answer = json.loads(raw)
        results = answer.get("results") or []
        if self.kind == "wrong":
            for r in results:
                r["cid"] = _random_cid()
        else:
            answer["results"] = [r for r in results if not forgotten(str(r.get("cid")))]
        return json.dumps(answer).encode()

    def _rewrite_challenge(self, asked: bytes, raw: bytes, headers: dict[str, str]) -> web.Response:
        challenge = json.loads(asked)
        answer = json.loads(raw)
        if self.kind == "lossy" and forgotten(str(challenge.get("cid"))):
            return web.json_response({"error": "unknown CID"}, status=404)
        if self.kind == "hash-only" and answer.get("version") == 2:
            # all a hash allows: the v1 proof over the embedding hash, not the v2 one
            answer["proof"] = core.proof_v1(challenge["nonce_hex"], answer["embedding_hash"])
        headers.pop("Content-Type", None)
        return web.json_response(answer, headers=headers)

    async def _copycat(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        if path == "/IngestSynapse":
            return self._pretend_ingest(body)
        if path in ("/QuerySynapse", "/ChallengeSynapse"):
            status, raw, headers = await self._forward(request, body, signed=False)
            return web.Response(status=status, body=raw, headers=headers)
        if path == "/health":
            return web.json_response({"status": "ok", "hotkey_ss58": self.hotkey})
        return web.json_response({"error": "not found"}, status=404)

    def _pretend_ingest(self, body: bytes) -> web.Response:
        """The answer a real miner gives, for a memory that goes nowhere."""
        try:
            req: dict[str, Any] = json.loads(body)
            cid = core.compute_cid(
                req["raw_embedding"], req.get("metadata") or {}, req.get("model_version") or "v1"
            )
        except (KeyError, TypeError, ValueError, core.CoreError) as exc:
            return web.json_response({"error": f"copycat: {type(exc).__name__}"}, status=400)
        rid = str(req.get("request_id") or secrets.token_hex(8))
        return web.json_response(
            {"cid": cid, "request_id": rid, "status": "stored", "duplicate": False, "error": None}
        )
