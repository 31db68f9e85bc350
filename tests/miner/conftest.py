"""Miner fixtures: a real miner node (real NATS, the real model, real USearch files) with
its axon on a loopback port, and an HTTP client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import bittensor_core
import msgspec
import pytest

from engram.config import Settings
from engram.miner.embedder import Embedder, get_embedder
from engram.miner.node import MinerNode, cache_dir


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def embedder(model_cache: Path) -> Embedder:
    """One loaded model for the whole session (loading is the slow part)."""
    return get_embedder(cache_dir=model_cache)


@pytest.fixture
def miner_settings(settings: Settings) -> Settings:
    # these tests speak unsigned HTTP to a loopback miner: open mode, said explicitly (the
    # default is signed on every bind); tests of signed access use ``signed_node``
    return msgspec.structs.replace(
        settings,
        embed_batch=32,
        embed_batch_wait_s=0.02,
        snapshot_every_events=50,
        axon_auth="open",
    )


@pytest.fixture
async def node(miner_settings: Settings, model_cache: Path) -> AsyncIterator[MinerNode]:
    # the node loads its models from its data dir's cache; point it at the session's
    cache = cache_dir(miner_settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists():
        cache.symlink_to(model_cache, target_is_directory=True)
    n = MinerNode(miner_settings, port=0, ingest_wait_s=15.0)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
async def http(node: MinerNode) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=node.url) as session:
        yield session


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slow but part of the default run (kill/restart)")


#: the validator a ``signed_node`` trusts (its allowlist)
VALIDATOR = bittensor_core.Keypair.from_uri("//AccessValidator")


@pytest.fixture
def signed_settings(miner_settings: Settings) -> Settings:
    """``miner_settings`` in signed mode (the default of a real miner), with a validator."""
    return msgspec.structs.replace(
        miner_settings,
        axon_auth="signed",
        axon_validators=[VALIDATOR.ss58_address],
        miner_hotkey_seed="//AccessMiner",
    )


async def start_node(settings: Settings, model_cache: Path) -> MinerNode:
    """A started miner node on a free loopback port, its models from the session cache."""
    cache = cache_dir(settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists():
        cache.symlink_to(model_cache, target_is_directory=True)
    node = MinerNode(settings, port=0, ingest_wait_s=15.0)
    await node.start()
    return node


@pytest.fixture
async def signed_node(signed_settings: Settings, model_cache: Path) -> AsyncIterator[MinerNode]:
    node = await start_node(signed_settings, model_cache)
    try:
        yield node
    finally:
        await node.stop()
