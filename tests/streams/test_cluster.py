"""The 3-node JetStream cluster from ops/nats/cluster: an R3 stream keeps accepting and
delivering with one node (the stream's leader) killed."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engram.bus import open_bus
from engram.config import Settings
from engram.natsd import _healthz, find_nats_server, free_port
from streams.events import DemoNoted
from streams.topology import ConsumerSpec, StreamSpec
from streams.worker import Delivery, Worker

OPS = Path(__file__).resolve().parents[2] / "ops" / "nats" / "cluster"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], int, int]]]:
    """The three ops configs with their fixed ports remapped to free ones."""
    ports = {f"{base}{i}": free_port() for base in ("423", "623", "823") for i in (1, 2, 3)}
    nodes: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
    for i in (1, 2, 3):
        text = (OPS / f"node{i}.conf").read_text()
        text = re.sub(r"\b(42[3]\d|62[3]\d|82[3]\d)\b", lambda m: str(ports[m.group(1)]), text)
        text = text.replace("./.engram/", f"{tmp_path}/")
        conf = tmp_path / f"node{i}.conf"
        conf.write_text(text)
        log = open(tmp_path / f"node{i}.log", "wb")
        proc = subprocess.Popen([find_nats_server(), "-c", str(conf)], stdout=log, stderr=log)
        nodes[f"engram-n{i}"] = (proc, ports[f"423{i}"], ports[f"823{i}"])
    deadline = time.monotonic() + 30
    while not all(_healthz(mon) for _, _, mon in nodes.values()):
        assert time.monotonic() < deadline, "cluster did not become healthy"
        time.sleep(0.2)
    try:
        yield nodes
    finally:
        for proc, _, _ in nodes.values():
            proc.kill()
            proc.wait(5)


async def test_r3_stream_survives_its_leader_being_killed(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = ",".join(f"nats://127.0.0.1:{port}" for _, port, _ in cluster.values())
    settings = Settings(data_dir=str(tmp_path / "d"), nats_url=url, stream_replicas=3, node_id="t")
    streams = (StreamSpec("INGEST", ("engram.ingest.>",)), StreamSpec("DLQ", ("engram.dlq.>",)))
    bus = await open_bus(settings, streams=streams)
    try:
        info = await bus.js.stream_info("INGEST")
        assert info.config.num_replicas == 3
        acks = await bus.publisher.publish_many([DemoNoted(n=i) for i in range(100)])
        assert len(acks) == 100

        leader = (await bus.js.stream_info("INGEST")).cluster.leader  # type: ignore[union-attr]
        proc, _, _ = cluster[leader]
        proc.kill()  # SIGKILL: a crash of the node that leads the stream
        proc.wait(5)

        # keep publishing through the election; the publisher retries unacked sends
        sent = 100
        deadline = time.monotonic() + 60
        while sent < 200:
            assert time.monotonic() < deadline, "cluster stopped accepting after the leader died"
            try:
                await bus.publisher.publish_many([DemoNoted(n=i) for i in range(sent, sent + 10)])
                sent += 10
            except Exception:
                await asyncio.sleep(0.5)
        new_leader = (await bus.js.stream_info("INGEST")).cluster.leader  # type: ignore[union-attr]
        assert new_leader and new_leader != leader

        got: set[int] = set()

        async def handler(batch: list[Delivery]) -> None:
            got.update(d.event.n for d in batch)  # type: ignore[attr-defined]

        worker = Worker(
            bus.js,
            ConsumerSpec("r3", "INGEST", ("engram.ingest.demo",)),
            handler,
            bus.publisher,
            replicas=3,
        )
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 60
        while got != set(range(200)):
            assert time.monotonic() < deadline, f"delivered {len(got)} of 200"
            await asyncio.sleep(0.1)
        worker.stop()
        await task
        assert (await bus.js.stream_info("INGEST")).state.messages == 200  # nothing lost or doubled
    finally:
        await bus.close()
