"""What the brain's test modules share: a brain served over real HTTP on a real nats-server
(:func:`brain_server`), a stand-in for a hosted OpenAI-compatible API (:func:`hosted_api`),
and :class:`Server`, the handle the tests talk through."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from openai import AsyncOpenAI

from engram.brain.server import bound_port, serve
from engram.brain.service import Brain
from engram.config import Settings
from engram.natsd import EmbeddedNats

from .fake_openai import FakeOpenAI

__all__ = ["Server", "brain_server", "hosted_api"]

#: settings every test brain starts from (fast retries, short completions)
TEST_SETTINGS: dict[str, Any] = {
    "worker_max_deliver": 3,
    "worker_backoff_s": [0.1, 0.2, 0.3],
    "brain_max_tokens": 16,
}


class Server:
    def __init__(self, brain: Brain, url: str, nats: EmbeddedNats) -> None:
        self.brain = brain
        self.url = url
        self.nats = nats
        self.client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    async def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                self.url + path,
                data=body if isinstance(body, bytes) else json.dumps(body),
                headers=headers,
            ) as r,
        ):
            return r.status, await r.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            return r.status, await r.json()

    async def correct_and_train(self, completion_id: str, correction: str) -> Any:
        """Correct a completion (``/v1/feedback``), wait until it is in the log, then
        ``POST /api/llm/train``: its 202 body."""
        status, _ = await self.post(
            "/v1/feedback", {"completion_id": completion_id, "score": 0.0, "correction": correction}
        )
        assert status == 202
        assert await self.brain.settle(timeout=60)
        status, body = await self.post("/api/llm/train", {})
        assert status == 202, body
        return body


S = TypeVar("S", bound=Server)


@contextlib.asynccontextmanager
async def brain_server(
    root: Path, node_id: str, cls: type[S] = Server, **settings: Any
) -> AsyncIterator[S]:
    """A brain with its own embedded nats-server (fsync always) under ``root``, served on
    a free loopback port; ``settings`` override :data:`TEST_SETTINGS`."""
    nats = EmbeddedNats(data_dir=root / "nats", sync="always").start(reuse=False)
    brain = Brain(
        Settings(
            data_dir=str(root / "data"),
            nats_url=nats.url,
            node_id=node_id,
            **{**TEST_SETTINGS, **settings},
        )
    )
    runner: web.AppRunner | None = None
    try:
        await brain.start()
        runner = await serve(brain, "127.0.0.1", 0)
        yield cls(brain, f"http://127.0.0.1:{bound_port(runner)}", nats)
    finally:
        if runner is not None:
            await runner.cleanup()
        await brain.stop()
        nats.stop()


@contextlib.asynccontextmanager
async def hosted_api(fake: FakeOpenAI) -> AsyncIterator[str]:
    """Serve ``fake`` on loopback; yields its base URL (ending in ``/v1``)."""
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}/v1"
    finally:
        await runner.cleanup()
