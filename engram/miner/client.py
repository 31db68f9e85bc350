"""Calling an axon over HTTP, signed with btauth/1 when the caller has a hotkey.

The receiver (the miner's hotkey) is read once from the axon's ``/health``; an axon that
does not report one gets unsigned requests. Each request signs a fresh nonce, so a retry
is a new signature, never a replay.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from yarl import URL

from engram.config import Settings
from engram.keys import load_or_create_key
from engram.sdk.auth import receiver_of, sign_headers

__all__ = ["AxonClient", "client_keypair"]

log = structlog.get_logger("engram.miner.client")


def client_keypair(settings: Settings) -> Any:
    """The caller's hotkey: ``client_hotkey_file``, else ``<data_dir>/keys/client_hotkey``
    (generated on first use)."""
    if settings.client_hotkey_file:
        path = Path(settings.client_hotkey_file).expanduser()
    else:
        path = settings.data_path / "keys" / "client_hotkey"
    keypair, created = load_or_create_key(path)
    if created:
        log.info("generated a client hotkey", hotkey=keypair.ss58_address, path=str(path))
    return keypair


class AxonClient:
    """JSON calls to one axon over a caller-owned ``aiohttp.ClientSession`` (its
    ``base_url`` is the axon), signed with ``keypair`` when given."""

    def __init__(self, http: aiohttp.ClientSession, keypair: Any | None = None) -> None:
        self.http = http
        self.keypair = keypair
        self._receiver: str | None = None
        self._health_read = False

    async def receiver(self) -> str | None:
        """The axon's hotkey from ``/health`` (None if it reports none)."""
        if not self._health_read:
            async with self.http.get("/health") as r:
                r.raise_for_status()
                body = await r.json()
            self._receiver = receiver_of(body)
            self._health_read = True
        return self._receiver

    async def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """btauth/1 headers for this request, or none when unsigned."""
        if self.keypair is None:
            return {}
        receiver = await self.receiver()
        if receiver is None:
            return {}
        return sign_headers(self.keypair, method, path, body, receiver)

    async def request(
        self, method: str, path: str, body: Any | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body). ``path`` is signed as given, query string included."""
        data = b"" if body is None else json.dumps(body).encode()
        headers = await self.headers(method, path, data)
        if body is not None:
            headers["Content-Type"] = "application/json"
        # sent exactly as signed: yarl would otherwise re-quote the query (``+``, ``%3A``)
        # and the signature, over the path as given, would not verify
        url = URL(path, encoded=True)
        async with self.http.request(method, url, data=data, headers=headers) as r:
            try:
                out = await r.json(content_type=None)
            except (json.JSONDecodeError, UnicodeDecodeError):
                out = {"error": f"HTTP {r.status}: not a JSON answer"}
            return r.status, out if isinstance(out, dict) else {"result": out}

    async def post(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        return await self.request("POST", path, body)

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return await self.request("GET", path)
