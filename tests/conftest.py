"""Shared fixtures: every test that needs NATS gets a real nats-server with JetStream on a
free port and a temporary store directory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from engram.bus import Bus, open_bus
from engram.config import Settings
from engram.natsd import EmbeddedNats

# Hypothesis never makes a run flaky: by default every property test draws the same examples
# each run (derandomized, no example database, a fixed budget, no deadline). A failure it
# finds is turned into a fixed vector in tests/vectors/ (never "fixed" by re-rolling).
# `ENGRAM_HYPOTHESIS=explore` searches afresh, locally, with a bigger budget.
hypothesis_settings.register_profile(
    "deterministic", derandomize=True, database=None, max_examples=200, deadline=None,
    print_blob=True,
)  # fmt: skip
hypothesis_settings.register_profile(
    "explore", derandomize=False, database=None, max_examples=5000, deadline=None,
    print_blob=True,
)  # fmt: skip
hypothesis_settings.load_profile(os.environ.get("ENGRAM_HYPOTHESIS", "deterministic"))


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
