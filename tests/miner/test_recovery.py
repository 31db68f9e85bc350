"""Crash recovery and replay: real processes killed with SIGKILL, real restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from engram.bus import Bus
from engram.config import Settings
from engram.miner.node import MinerNode
from engram.miner.projection import StoreRunner
from engram.miner.store import MemoryStore
from engram.natsd import EmbeddedNats, free_port
from streams.events import Deleted, Embedded, IngestRequested, Stored
from streams.replay import replay

WORDS = (
    "river mountain copper violin lantern orbit harvest glacier pepper canyon meadow "
    "falcon marble thunder velvet compass saffron beacon walnut ember quartz tundra"
).split()


def doc(i: int) -> str:
    rng = np.random.default_rng(i)
    return f"note {i}: " + " ".join(rng.choice(WORDS, size=12 + i % 20))


async def test_rebuild_from_the_log_answers_like_the_live_index(
    node: MinerNode, bus: Bus, tmp_path: Path
):
    async with aiohttp.ClientSession(base_url=node.url) as http:
        items = [{"text": doc(i), "metadata": {"i": i}} for i in range(60)]
        async with http.post("/IngestBatch", json={"items": items}) as r:
            cids = [x["cid"] for x in (await r.json())["results"]]
        assert r.status == 200
    ack = await bus.publisher.publish(Deleted(cid=cids[5], reason="test"))
    assert node.runner is not None and await node.runner.wait_for_seq(ack.seq)
    live = node.store
    assert live is not None and len(live) == 59

    rebuilt = MemoryStore(tmp_path / "rebuilt")
    n = await StoreRunner(bus.js, rebuilt).rebuild()
    assert n == 61 and rebuilt.applied_seq == live.applied_seq == ack.seq and len(rebuilt) == 59
    emb = node.axon.embedder  # type: ignore[union-attr]
    for q in ("copper violin", "glacier thunder", "note 5", "saffron beacon walnut"):
        v = emb.embed_one(q)
        a, b = live.search(v, 10), rebuilt.search(v, 10)
        assert [h.cid for h in a] == [h.cid for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
        assert cids[5] not in [h.cid for h in a]
    assert [(r.key, r.cid, r.deleted) for r in live.records()] == [
        (r.key, r.cid, r.deleted) for r in rebuilt.records()
    ]


def _env(settings: Settings, nats: EmbeddedNats) -> dict[str, str]:
    return dict(
        os.environ,
        ENGRAM_NATS_URL=nats.url,
        ENGRAM_DATA_DIR=str(settings.data_path),
        ENGRAM_NODE_ID="crash-test",
        ENGRAM_EMBED_BATCH="16",
        ENGRAM_EMBED_BATCH_WAIT_S="0.02",
        ENGRAM_SNAPSHOT_EVERY_EVENTS="40",
        ENGRAM_LOG_LEVEL="warning",
        ENGRAM_AXON_AUTH="open",  # unsigned test traffic on loopback
    )


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engram.miner", *args], env=env, stdout=out, stderr=out
        )


async def _health(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/health") as r:
                    if r.status == 200:
                        return await r.json()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"miner at {url} not healthy in {timeout}s")


def _kill(p: subprocess.Popen[bytes]) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)


@pytest.mark.slow
async def test_killed_worker_and_projection_lose_nothing_and_duplicate_nothing(
    settings: Settings, nats_server: EmbeddedNats, bus: Bus, tmp_path: Path, model_cache: Path
):
    n_docs = 600
    env = _env(settings, nats_server)
    (settings.data_path).mkdir(parents=True, exist_ok=True)
    (settings.data_path / "cache").symlink_to(model_cache, target_is_directory=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "miner.log"
    node_args = ["run", "--port", str(port), "--no-embed"]
    node = _spawn(node_args, env, log)
    worker = _spawn(["worker"], env, log)
    procs = [node, worker]
    try:
        await _health(url)
        texts = [doc(i) for i in range(n_docs)]
        events = [IngestRequested(request_id=uuid.uuid4().hex, text=t) for t in texts]
        acks = await bus.publisher.publish_many(events)  # accepted = acked by JetStream
        assert len(acks) == n_docs and not any(a.duplicate for a in acks)

        async def memory_msgs() -> int:
            return (await bus.js.stream_info("MEMORY")).state.messages

        async def still_to_embed() -> int:
            # not yet delivered, or delivered in a fetched window but not acked yet
            info = await bus.js.consumer_info("INGEST", "embedder")
            return info.num_pending + info.num_ack_pending

        while await memory_msgs() < 60:  # mid-ingest: kill the embed worker
            await asyncio.sleep(0.02)
        _kill(worker)
        assert await still_to_embed() > 0, "the ingest finished before the worker crash"
        worker = _spawn(["worker"], env, log)
        procs.append(worker)
        while (stored := (await _health(url))["memories"]) < 150:  # mid-ingest: kill the
            await asyncio.sleep(0.05)  # store projection (and the axon with it)
        _kill(node)
        assert stored < n_docs, "the ingest finished before the projection crash"
        node = _spawn(node_args, env, log)
        procs.append(node)

        deadline = time.monotonic() + 150
        while (h := await _health(url))["memories"] < n_docs and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # anything extra (a duplicate) would show up now
        h = await _health(url)
        assert h["memories"] == n_docs, (h, log.read_text()[-3000:])

        # every accepted ingest is queryable, exactly once
        async with aiohttp.ClientSession(base_url=url) as http:
            found = set()
            for i in range(0, n_docs, 3):
                async with http.post(
                    "/QuerySynapse", json={"query_text": texts[i], "top_k": 3}
                ) as r:
                    res = (await r.json())["results"]
                async with http.get(f"/retrieve/{res[0]['cid']}") as r:
                    assert (await r.json())["text"] == texts[i]
                found.add(res[0]["cid"])
            assert len(found) == len(range(0, n_docs, 3))
        dlq = (await bus.js.stream_info("DLQ")).state.messages
        assert dlq == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
async def test_stored_is_published_once_per_memory_across_a_kill(
    settings: Settings, nats_server: EmbeddedNats, bus: Bus, tmp_path: Path, model_cache: Path
):
    """``Stored`` lives on NOTICES, one per memory: a miner SIGKILLed before any snapshot
    replays all of MEMORY on restart and publishes none of them again."""
    env = dict(_env(settings, nats_server), ENGRAM_SNAPSHOT_EVERY_EVENTS="100000")
    settings.data_path.mkdir(parents=True, exist_ok=True)
    (settings.data_path / "cache").symlink_to(model_cache, target_is_directory=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "miner.log"
    args = ["run", "--port", str(port), "--no-embed"]
    node = _spawn(args, env, log)
    procs = [node]

    async def notices() -> list[Stored]:
        if not (await bus.js.stream_info("NOTICES")).state.messages:
            return []
        return [e async for _, e in replay(bus.js, "NOTICES") if isinstance(e, Stored)]

    try:
        await _health(url)
        rng = np.random.default_rng(5)
        vecs = rng.standard_normal((80, 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        async with aiohttp.ClientSession(base_url=url) as http:
            for start in (0, 40):
                items = [
                    {"raw_embedding": vecs[i].tolist(), "request_id": f"k{i}", "metadata": {"i": i}}
                    for i in range(start, start + 40)
                ]
                async with http.post("/IngestBatch", json={"items": items}) as r:
                    body = await r.json()
                    assert r.status == 200, body
        deadline = time.monotonic() + 30
        while len(await notices()) < 80 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        before = await notices()
        assert len(before) == 80
        seq = (await _health(url))["applied_seq"]

        _kill(node)  # no snapshot was taken: the restart replays all 80
        node = _spawn(args, env, log)
        procs.append(node)
        deadline = time.monotonic() + 60
        while (h := await _health(url))["applied_seq"] < seq and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert h["memories"] == 80, h
        async with aiohttp.ClientSession(base_url=url) as http:
            async with http.get("/stats") as r:
                stats = (await r.json())["projection"]
        assert stats["stored"] == 80 and stats["notices"] == 0, stats  # replayed, not notified
        await asyncio.sleep(1.0)
        after = await notices()
        assert len(after) == 80
        assert sorted(e.request_id for e in after) == sorted(f"k{i}" for i in range(80))
        memory = [e async for _, e in replay(bus.js, "MEMORY")]
        assert len(memory) == 80 and not any(isinstance(e, Stored) for e in memory)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


async def test_index_rebuild_command_equals_the_live_index(
    node: MinerNode, bus: Bus, tmp_path: Path, nats_server: EmbeddedNats
):
    """``engram index rebuild`` (a real subprocess) into another data dir gives the store
    the live node followed, key by key; a forged event is refused by both alike."""
    rng = np.random.default_rng(11)
    vecs = rng.standard_normal((150, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    async with aiohttp.ClientSession(base_url=node.url) as http:
        items = [
            {"raw_embedding": vecs[i].tolist(), "metadata": {"i": i}, "request_id": f"q{i}"}
            for i in range(150)
        ]
        async with http.post("/IngestBatch", json={"items": items}) as r:
            cids = [x["cid"] for x in (await r.json())["results"]]
            assert r.status == 200
    assert node.runner is not None and node.store is not None
    forged = Embedded(cid=cids[0], vector=vecs[1].astype("<f4").tobytes(), dim=384)
    ack = await bus.publisher.publish(Deleted(cid=cids[7]))
    ack = await bus.publisher.publish(forged)
    assert await node.runner.wait_for_seq(ack.seq)
    other = tmp_path / "other"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    env.update(ENGRAM_NATS_URL=nats_server.url, ENGRAM_LOG_LEVEL="warning")
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "engram.cli", "--data-dir", str(other), "index", "rebuild"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    live = node.store
    assert out == {
        "replayed": 152,
        "memories": 149,
        "applied_seq": live.applied_seq,
        "refused": 1,
    }
    rebuilt = MemoryStore(other / "store")
    try:
        assert [
            (r.key, r.cid, r.namespace, r.metadata, r.deleted, r.vector.tobytes())
            for r in rebuilt.records()
        ] == [
            (r.key, r.cid, r.namespace, r.metadata, r.deleted, r.vector.tobytes())
            for r in live.records()
        ]
        assert rebuilt.find_request("raw:anonymous:q3") == live.find_request("raw:anonymous:q3")
    finally:
        rebuilt.close()
