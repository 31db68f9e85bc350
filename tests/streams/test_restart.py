"""A worker and a projection keep going across a real nats-server restart (nats.py #504)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from engram.bus import Bus, open_bus
from engram.config import Settings
from engram.natsd import EmbeddedNats
from streams.events import DemoNoted
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker


async def wait_until(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def restart(server: EmbeddedNats) -> EmbeddedNats:
    """Stop the server, then start it again on the same port and store."""
    server.stop()
    await asyncio.sleep(1.0)
    again = EmbeddedNats(
        data_dir=server.data_dir, port=server.port, monitor_port=server.monitor_port
    )
    return again.start(reuse=False)


async def publish_once_reconnected(bus: Bus, events: list[DemoNoted]) -> None:
    """The client reconnects by itself; publish once it has."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await bus.publisher.publish_many(events)
            return
        except Exception:
            assert time.monotonic() < deadline, "the client did not reconnect"
            await asyncio.sleep(0.5)


async def test_worker_survives_a_server_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats").start(reuse=False)
    bus = await open_bus(Settings(data_dir=str(tmp_path), nats_url=server.url, node_id="t"))
    got: set[int] = set()

    async def handler(batch: list[Delivery]) -> None:
        got.update(d.event.n for d in batch)  # type: ignore[attr-defined]

    worker = Worker(
        bus.js, ConsumerSpec("restart", "INGEST", ("engram.ingest.demo",)), handler, bus.publisher
    )
    task = asyncio.create_task(worker.run())
    try:
        await bus.publisher.publish_many([DemoNoted(n=i) for i in range(20)])
        await wait_until(lambda: len(got) == 20, 20)

        server = await restart(server)
        await publish_once_reconnected(bus, [DemoNoted(n=i) for i in range(20, 40)])
        await wait_until(lambda: got == set(range(40)), 30)
    finally:
        worker.stop()
        await task
        await bus.close()
        server.stop()


async def test_projection_follows_across_a_server_restart(tmp_path: Path) -> None:
    from streams.projection import ProjectionRunner
    from tests.streams.test_bus import Tally

    server = EmbeddedNats(data_dir=tmp_path / "nats").start(reuse=False)
    bus = await open_bus(Settings(data_dir=str(tmp_path), nats_url=server.url, node_id="t"))
    tally = Tally(tmp_path / "tally.json")
    runner = ProjectionRunner(bus.js, tally)
    task = asyncio.create_task(runner.run())
    try:
        await bus.publisher.publish_many([DemoNoted(n=1) for _ in range(10)])
        assert await runner.wait_for(10, timeout=20)
        server = await restart(server)
        await publish_once_reconnected(bus, [DemoNoted(n=2) for _ in range(10)])
        assert await runner.wait_for(20, timeout=40)
        assert tally.counts == {1: 10, 2: 10}
    finally:
        runner.stop()
        await task
        await bus.close()
        server.stop()


async def test_worker_started_before_its_stream_exists_binds_once_it_does(tmp_path: Path) -> None:
    from streams.topology import STREAMS, ensure

    server = EmbeddedNats(data_dir=tmp_path / "nats").start(reuse=False)
    settings = Settings(data_dir=str(tmp_path), nats_url=server.url, node_id="t")
    bus = await open_bus(settings, ensure_streams=False)  # no streams yet
    got: list[int] = []

    async def handler(batch: list[Delivery]) -> None:
        got.extend(d.event.n for d in batch)  # type: ignore[attr-defined]

    worker = Worker(
        bus.js, ConsumerSpec("early", "INGEST", ("engram.ingest.demo",)), handler, bus.publisher
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(1.0)
        assert not task.done() and worker.stats.errors >= 1  # retrying, not crashed
        await ensure(bus.js, STREAMS)
        await bus.publisher.publish(DemoNoted(n=5))
        await wait_until(lambda: got == [5], 20)
    finally:
        worker.stop()
        await task
        await bus.close()
        server.stop()
