"""Blob fixtures: a real arlocal (a local Arweave gateway, npm) on a free port, a local
server speaking the chat-completions API (the one fake: a paid vision model), and a real
miner node (real NATS, the real model) archiving on that arlocal."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from engram.blobs.arlocal import ArLocal, ArLocalMissing
from engram.blobs.arweave import load_wallet
from engram.config import Settings
from engram.miner.node import MinerNode, cache_dir
from engram.natsd import EmbeddedNats

VISION_KEY = "test-vision-key"
VISION_MODEL = "grok-2-vision-1212"
#: what the local vision server says of any PNG it is shown
VISION_TEXT = (
    "A bright red circle in the middle of a plain white background, like the flag of Japan."
)


@pytest.fixture(scope="session")
def arlocal() -> Iterator[ArLocal]:
    try:
        gw = ArLocal().start()
    except ArLocalMissing as exc:
        pytest.fail(str(exc))
    try:
        yield gw
    finally:
        gw.stop()


class VisionServer:
    """``POST /v1/chat/completions`` as an OpenAI-compatible API answers it; it checks the
    request's shape (model, bearer key, the image as a base64 ``data:`` URL) and records
    the images it was shown."""

    def __init__(self) -> None:
        self.images: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def chat(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {VISION_KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        if body.get("model") != VISION_MODEL:
            return web.json_response({"error": {"message": "unknown model"}}, status=404)
        parts = body["messages"][0]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        head, b64 = url.split(",", 1)
        if not head.startswith("data:image/") or not head.endswith(";base64"):
            return web.json_response({"error": {"message": "not a data URL"}}, status=400)
        self.images.append(base64.b64decode(b64))
        return web.json_response(
            {
                "id": "chatcmpl-local",
                "object": "chat.completion",
                "model": VISION_MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": VISION_TEXT},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    async def start(self) -> VisionServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture(scope="session")
def wallet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Arweave wallet for the session (an RSA-4096 key takes seconds to make)."""
    path = tmp_path_factory.mktemp("arweave") / "wallet.json"
    load_wallet(path, create=True)
    return path


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


def blob_settings(root: Path, nats_url: str, gateway: str, wallet: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = dict(
        arweave_wallet_file=str(wallet),
        data_dir=str(root / "data"),
        nats_url=nats_url,
        node_id="blob-test",
        # these tests upload unsigned over loopback (who may read a blob is tested signed in
        # tests/miner/test_access.py)
        axon_auth="open",
        embed_batch=16,
        embed_batch_wait_s=0.02,
        worker_backoff_s=[0.2, 0.3, 0.5],
        arweave_gateway_url=gateway,
        arweave_local=True,
        arweave_attempts=3,
        arweave_confirm_timeout_s=10.0,
        blob_max_bytes=6 * 1024 * 1024,
        describer="vision",
        vision_model=VISION_MODEL,
        vision_api_key=VISION_KEY,
    )
    values.update(extra)
    return Settings(**values)


async def start_node(settings: Settings, model_cache: Path) -> MinerNode:
    cache = cache_dir(settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists():
        cache.symlink_to(model_cache, target_is_directory=True)
    node = MinerNode(settings, port=0, ingest_wait_s=15.0)
    await node.start()
    return node


class Env:
    def __init__(self, node: MinerNode, http: aiohttp.ClientSession, vision: VisionServer):
        self.node, self.http, self.vision = node, http, vision

    async def status(self, cid: str) -> dict[str, Any]:
        async with self.http.get(f"/blob/{cid}/status") as r:
            assert r.status == 200, await r.text()
            out: dict[str, Any] = await r.json()
            return out

    async def wait_status(
        self, cid: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = await self.status(cid)
            if done(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"blob status never settled: {json.dumps(st)}")
            await asyncio.sleep(0.2)

    async def query(self, text: str, k: int = 3) -> list[dict[str, Any]]:
        async with self.http.post("/QuerySynapse", json={"query_text": text, "top_k": k}) as r:
            assert r.status == 200, await r.text()
            hits: list[dict[str, Any]] = (await r.json())["results"]
            return hits


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(
    tmp_path_factory: pytest.TempPathFactory,
    arlocal: ArLocal,
    model_cache: Path,
    wallet_file: Path,
) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("blobs")
    server = EmbeddedNats(data_dir=root / "nats", sync="always").start(reuse=False)
    vision = await VisionServer().start()
    node = None
    try:
        s = blob_settings(root, server.url, arlocal.url, wallet_file, vision_base_url=vision.url)
        node = await start_node(s, model_cache)
        async with aiohttp.ClientSession(base_url=node.url) as http:
            yield Env(node, http, vision)
    finally:
        if node is not None:
            await node.stop()
        await vision.stop()
        server.stop()


Waiter = Callable[[], Awaitable[None]]
