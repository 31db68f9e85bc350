"""Shared fixtures: every test that needs NATS gets a real nats-server with JetStream on a
free port and a temporary store directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from engram.bus import Bus, open_bus
from engram.config import Settings
from engram.natsd import EmbeddedNats


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(data_dir=tmp_path / "nats", sync="always").start(reuse=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedNats) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), nats_url=nats_server.url, node_id="test")


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    b = await open_bus(settings)
    try:
        yield b
    finally:
        await b.close()
