"""The node supervises what it starts: a SIGKILLed embedded nats-server is reported, ingests
are refused fast while it is down, it is restarted, and nothing acked is lost; worker
processes are restarted and die with their parent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from engram.config import Settings
from engram.miner.node import MinerNode, cache_dir
from engram.natsd import EmbeddedNats, describe_exit, free_port


def _link_cache(settings: Settings, model_cache: Path) -> None:
    cache = cache_dir(settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists():
        cache.symlink_to(model_cache, target_is_directory=True)


@pytest.fixture
async def embedded_node(tmp_path: Path, model_cache: Path) -> AsyncIterator[MinerNode]:
    """A node with no ``nats_url``: it starts (and owns) its embedded nats-server."""
    s = Settings(
        data_dir=str(tmp_path / "data"),
        node_id="sup",
        embed_batch=32,
        embed_batch_wait_s=0.02,
        stop_grace_s=3.0,
        axon_auth="open",  # unsigned test traffic on loopback
    )
    _link_cache(s, model_cache)
    node = MinerNode(s, port=0, ingest_wait_s=20.0)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def _hold_port(port: int) -> socket.socket:
    """Take the server's port so its restart fails (it exits: address in use)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1)
    return sock


async def _until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_sigkill_of_the_embedded_server_is_reported_refused_fast_and_healed(
    embedded_node: MinerNode,
) -> None:
    node = embedded_node
    assert node.bus is not None and node.bus.server is not None and node.guard is not None
    server = node.bus.server
    assert node.settings.nats_url is None and server.owned and server.process is not None
    async with aiohttp.ClientSession(base_url=node.url) as http:
        before = []
        for i in range(5):
            async with http.post("/IngestSynapse", json={"text": f"before the crash {i}"}) as r:
                assert r.status == 200, await r.text()
                before.append((await r.json())["cid"])
        async with http.get("/health") as r:
            assert r.status == 200 and (await r.json())["bus"] == "up"

        old_pid = server.process.pid
        os.kill(old_pid, signal.SIGKILL)
        server.process.wait(5)
        holder = _hold_port(server.port)  # the first restarts fail: a visible outage
        try:

            async def degraded() -> bool:
                async with http.get("/health") as r:
                    return r.status == 503

            await _until(degraded, 10, "/health to report the outage")
            async with http.get("/health") as r:
                body = await r.json()
            assert body["status"] == "degraded"
            assert body["bus"].startswith("down: nats-server exited (signal 9, SIGKILL)")
            async with http.get("/metrics") as r:
                assert "engram_bus_up 0.0" in await r.text()

            t0 = time.monotonic()
            async with http.post("/IngestSynapse", json={"text": "during the outage"}) as r:
                assert r.status == 503
                assert int(r.headers["Retry-After"]) >= 1
                assert "bus is down" in (await r.json())["error"]
            assert time.monotonic() - t0 < 2.0  # refused at once, not after a 10 s publish timeout
            async with http.post("/QuerySynapse", json={"query_text": "before"}) as r:
                assert r.status == 200  # queries do not need the bus
        finally:
            holder.close()

        async def healthy() -> bool:
            async with http.get("/health") as r:
                return r.status == 200

        await _until(healthy, 30, "the bus to come back")
        assert node.guard.restarts >= 1 and server.process.pid != old_pid
        async with http.get("/metrics") as r:
            text = await r.text()
        assert "engram_bus_up 1.0" in text and "engram_bus_restarts 1.0" in text

        async with http.post("/IngestSynapse", json={"text": "after the restart"}) as r:
            assert r.status == 200, await r.text()
            after = (await r.json())["cid"]
        for cid in [*before, after]:  # nothing acked was lost
            async with http.get(f"/retrieve/{cid}") as r:
                assert r.status == 200
        async with http.get("/stats") as r:
            stats = await r.json()
        assert stats["memories"] == 6 and stats["bus"]["status"] == "up"

        # and a node stops within a few seconds even while its bus is down
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(5)
        holder = _hold_port(server.port)
        try:
            await _until(degraded, 10, "/health to report the second outage")
            t0 = time.monotonic()
            await node.stop()
            assert time.monotonic() - t0 < 8.0
        finally:
            holder.close()


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a reaper that is not us."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def miner_process(
    tmp_path: Path, model_cache: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``engram miner run --workers 1`` as a real process (embedded NATS, no in-process
    embedder), and its axon URL."""
    data = tmp_path / "data"
    _link_cache(Settings(data_dir=str(data)), model_cache)
    port = free_port()
    env = dict(os.environ, ENGRAM_NODE_ID="sup", ENGRAM_LOG_FORMAT="json", ENGRAM_AXON_AUTH="open")
    env.pop("ENGRAM_NATS_URL", None)
    log = open(tmp_path / "miner.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engram.miner",
            "run",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--workers",
            "1",
            "--no-embed",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}", data
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


async def _workers(http: aiohttp.ClientSession) -> list[dict]:  # type: ignore[type-arg]
    try:
        async with http.get("/stats") as r:
            return (await r.json())["worker_processes"]  # type: ignore[no-any-return]
    except aiohttp.ClientError:
        return []


async def test_worker_processes_are_restarted_and_die_with_a_sigkilled_parent(
    miner_process: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    proc, url, data = miner_process
    async with aiohttp.ClientSession(base_url=url) as http:

        async def running() -> bool:
            w = await _workers(http)
            return bool(w) and w[0]["state"] == "running"

        await _until(running, 120, "the miner and its worker process")
        first = (await _workers(http))[0]["pid"]
        os.kill(first, signal.SIGKILL)

        async def restarted() -> bool:
            w = await _workers(http)
            return bool(w) and w[0]["restarts"] >= 1 and w[0]["pid"] not in (None, first)

        await _until(restarted, 30, "the worker process to be restarted")
        w = (await _workers(http))[0]
        assert w["last_exit"] == "exited (signal 9, SIGKILL)" and w["state"] == "running"
        second = w["pid"]
        # the restarted worker does real work: an ingest is embedded by it (no in-process embedder)
        async with http.post(
            "/IngestSynapse", json={"text": "embedded by the worker process"}
        ) as r:
            assert r.status == 200, await r.text()

    nats_pid = json.loads((data / "nats" / "server.json").read_text())["pid"]
    proc.send_signal(signal.SIGKILL)  # the miner dies without a chance to clean up
    proc.wait(10)
    deadline = time.monotonic() + 10
    while not (_gone(second) and _gone(nats_pid)):
        assert time.monotonic() < deadline, "a child outlived its SIGKILLed miner"
        await asyncio.sleep(0.1)


def test_a_worker_whose_parent_is_already_gone_does_not_start(tmp_path: Path) -> None:
    """The fallback to the parent-death signal: the worker checks the pid it was given."""
    env = dict(os.environ, ENGRAM_PARENT_PID="1", ENGRAM_DATA_DIR=str(tmp_path))
    env["ENGRAM_NATS_URL"] = "nats://127.0.0.1:1"  # never reached: it leaves before connecting
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "engram.miner", "worker"], env=env, capture_output=True, timeout=60
    )
    assert out.returncode == 0 and b"parent process already gone" in out.stdout + out.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (-9, "exited (signal 9, SIGKILL)"),
        (-15, "exited (signal 15, SIGTERM)"),
        (1, "exited with code 1"),
        (0, "exited with code 0"),
    ],
)
def test_exits_are_described_in_words(code: int, words: str) -> None:
    assert describe_exit(code) == words


async def test_an_external_bus_outage_is_reported_and_ends_when_it_is_back(
    node: MinerNode, nats_server: EmbeddedNats
) -> None:
    """A server the node did not start is not restarted by it, but its outage is reported."""
    assert node.bus is not None and node.bus.server is None  # ENGRAM_NATS_URL: external
    async with aiohttp.ClientSession(base_url=node.url) as http:

        async def health() -> int:
            async with http.get("/health") as r:
                return r.status

        nats_server.kill()
        await _until(lambda: _is(health, 503), 10, "/health to report the outage")
        async with http.get("/health") as r:
            assert (await r.json())["bus"] == "down: the connection to NATS is lost; reconnecting"
        async with http.post("/IngestSynapse", json={"text": "during"}) as r:
            assert r.status == 503 and "Retry-After" in r.headers
        nats_server.start(reuse=False)  # the operator brings it back on the same port
        await _until(lambda: _is(health, 200), 30, "the bus to come back")
        async with http.post("/IngestSynapse", json={"text": "after"}) as r:
            assert r.status == 200, await r.text()


async def _is(probe, want: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await probe() == want)
