"""Signed HTTP from the validator to miner axons, with the latency measured here.

Requests carry btauth/1 headers (``bittensor.http_auth.sign``) for the miner's hotkey
*as the metagraph lists it*, so an axon serving under another hotkey refuses them rather
than answering for someone else. Latency is wall time from just before the request is sent
to the end of reading the answer, taken with ``time.perf_counter``; the miner's own report
is never used. Failures are data (:class:`Reply` with ``error``), not exceptions.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["MinerHttp", "Reply"]


@dataclass(frozen=True)
class Reply:
    status: int  # 0 = no HTTP answer (timeout, connection refused, ...)
    body: dict[str, Any]
    latency_ms: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


class MinerHttp:
    """One client session for every miner; at most ``max_inflight`` requests at once."""

    def __init__(self, keypair: Any | None, *, timeout_s: float, max_inflight: int) -> None:
        from bittensor.http_auth import sign  # the SDK import (~0.5 s) once, not per call

        self._sign = sign
        self.keypair = keypair
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._slots = asyncio.Semaphore(max_inflight)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> MinerHttp:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            )
        return self._session

    def headers(self, method: str, path: str, body: bytes, receiver: str | None) -> dict[str, str]:
        """btauth/1 headers; none without a keypair or a receiver (btauth/1 verifiers
        refuse a signature addressed to nobody)."""
        if self.keypair is None or receiver is None:
            return {}
        return self._sign(self.keypair, method=method, path=path, body=body, receiver_ss58=receiver)

    async def get(self, axon: str, path: str, *, receiver: str | None) -> Reply:
        """GET ``http://<axon><path>`` (path with its query), signed for ``receiver``."""
        return await self._send("GET", axon, path, b"", receiver, None)

    async def post(
        self, axon: str, path: str, payload: Any, *, receiver: str | None, keypair: Any = None
    ) -> Reply:
        """POST JSON to ``http://<axon><path>``, signed by ``keypair`` (default: the
        validator's) for ``receiver``."""
        return await self._send("POST", axon, path, json.dumps(payload).encode(), receiver, keypair)

    async def _send(
        self, method: str, axon: str, path: str, data: bytes, receiver: str | None, keypair: Any
    ) -> Reply:
        async with self._slots:
            if keypair is None or receiver is None:
                headers = self.headers(method, path, data, receiver)
            else:
                headers = self._sign(
                    keypair, method=method, path=path, body=data, receiver_ss58=receiver
                )
            if data:
                headers["Content-Type"] = "application/json"
            started = time.perf_counter()
            url = f"http://{axon}{path}"
            try:
                async with self._http().request(method, url, data=data, headers=headers) as r:
                    raw = await r.read()
                    latency = (time.perf_counter() - started) * 1000.0
                    try:
                        body = json.loads(raw) if raw else {}
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        body = {}
                    if not isinstance(body, dict):
                        body = {"result": body}
                    error = None
                    if r.status >= 300:
                        error = f"HTTP {r.status}: {str(body.get('error') or '')[:200]}"
                    return Reply(r.status, body, latency, error)
            except TimeoutError:
                return Reply(0, {}, (time.perf_counter() - started) * 1000.0, "timeout")
            except aiohttp.ClientError as exc:
                latency = (time.perf_counter() - started) * 1000.0
                return Reply(0, {}, latency, f"{type(exc).__name__}: {str(exc)[:200]}")
