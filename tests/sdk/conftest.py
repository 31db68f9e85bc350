"""SDK fixtures: one real miner for the whole SDK suite (real NATS, the real model, real
HTTP on loopback) in a thread with its own event loop, so that the synchronous client can
call it from plain test functions and the asynchronous one from async tests.

The miner runs ``signed`` (btauth/1 required) with the local chain as its registry and a
minimum ingest stake: :data:`CLIENT` is registered with stake, :data:`STRANGER` is not.
Tests keep to their own namespaces, so they do not see each other's memories.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bittensor_core
import pytest

from engram.bus import open_bus
from engram.chain import LocalChain
from engram.config import Settings
from engram.miner.embedder import Embedder, get_embedder
from engram.miner.node import MinerNode
from engram.natsd import EmbeddedNats

MINER_SEED = "//EngramSDKMiner"
MINER = bittensor_core.Keypair.from_uri(MINER_SEED)
CLIENT = bittensor_core.Keypair.from_uri("//EngramSDKClient")
STRANGER = bittensor_core.Keypair.from_uri("//EngramSDKStranger")
ALICE = bittensor_core.Keypair.from_uri("//Alice")  # the README's quick start signs as her
MAX_INFLIGHT = 4


@dataclass
class LiveMiner:
    """A miner node served from its own thread and loop."""

    node: MinerNode
    settings: Settings
    loop: asyncio.AbstractEventLoop
    nats_url: str

    @property
    def url(self) -> str:
        return self.node.url

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the miner's loop (e.g. chain or bus set-up)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="session")
def sdk_embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return get_embedder(cache_dir=tmp_path_factory.mktemp("sdk-model-cache"))


async def _register_chain(js: Any, port: int) -> None:
    chain = await LocalChain.open(js, MINER.ss58_address, netuid=1)
    await chain.register(MINER.ss58_address)
    await chain.register(CLIENT.ss58_address, stake=10.0)
    await chain.register(ALICE.ss58_address, stake=10.0)
    await chain.acting_as(MINER.ss58_address).serve_axon("127.0.0.1", port)


@pytest.fixture(scope="session")
def live_miner(
    tmp_path_factory: pytest.TempPathFactory, sdk_embedder: Embedder
) -> Iterator[LiveMiner]:
    root = tmp_path_factory.mktemp("sdk-miner")
    server = EmbeddedNats(data_dir=root / "nats", sync="always").start(reuse=False)
    settings = Settings(
        data_dir=str(root / "data"),
        nats_url=server.url,
        node_id="sdk-miner",
        axon_auth="signed",
        chain="local",
        axon_min_stake=1.0,
        miner_hotkey_seed=MINER_SEED,
        embed_batch=32,
        embed_batch_wait_s=0.02,
        axon_max_inflight=MAX_INFLIGHT,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sdk-miner", daemon=True)
    thread.start()

    async def start() -> MinerNode:
        # the subnet exists (and knows the client's stake) before the miner reads it
        bus = await open_bus(settings)
        try:
            await _register_chain(bus.js, 0)
        finally:
            await bus.close()
        node = MinerNode(
            settings,
            port=0,
            ingest_wait_s=15.0,
            query_embedder=sdk_embedder,
            embedder=sdk_embedder,
        )
        await node.start()
        bus = await open_bus(settings)
        try:
            chain = await LocalChain.join(bus.js, MINER.ss58_address, 1)
            await chain.serve_axon("127.0.0.1", node.port)
        finally:
            await bus.close()
        return node

    node: MinerNode = asyncio.run_coroutine_threadsafe(start(), loop).result(120)
    miner = LiveMiner(node, settings, loop, server.url)
    try:
        yield miner
    finally:
        fut: Future[None] = asyncio.run_coroutine_threadsafe(node.stop(), loop)
        fut.result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        server.stop()


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(live_miner: LiveMiner) -> str:
    return live_miner.url


def tmp_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


Call = Callable[..., Any]


def caller(kind: str, url: str | list[str], **kw: Any) -> Call:
    """``call(method, *args)`` on a fresh sync or async client: one test body exercises
    both drivers of the shared core."""
    from engram.sdk import AsyncEngramClient, EngramClient

    def call(method: str, *args: Any, **kwargs: Any) -> Any:
        if kind == "sync":
            return getattr(EngramClient(url, **kw), method)(*args, **kwargs)

        async def go() -> Any:
            async with AsyncEngramClient(url, **kw) as c:
                return await getattr(c, method)(*args, **kwargs)

        return asyncio.run(go())

    return call


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)
