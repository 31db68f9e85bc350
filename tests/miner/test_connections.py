"""The axon's connections and requests are bounded: idle sockets past the cap do not stop
``/health``, every kind of stalled request is closed within its timeout, requests past the
in-flight limit get 503 + Retry-After, and a storm of one log line is rate-limited."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
import structlog

from engram.config import Settings
from engram.log import RepeatLimiter, configure_logging
from engram.miner.connections import BoundedExecutor, accept_backlog, connection_cap
from engram.miner.node import MinerNode, cache_dir
from engram.natsd import free_port
from streams.errors import Unavailable

HEAD_S, BODY_S, KEEPALIVE_S = 1.5, 2.0, 1.5
CAP, INFLIGHT = 20, 3


@pytest.fixture
def miner_settings(settings: Settings) -> Settings:
    """The node fixture (tests/miner/conftest.py) with small limits."""
    return msgspec.structs.replace(
        settings,
        embed_batch=32,
        axon_max_connections=CAP,
        axon_max_inflight=INFLIGHT,
        axon_head_timeout_s=HEAD_S,
        axon_body_timeout_s=BODY_S,
        axon_keepalive_s=KEEPALIVE_S,
        axon_auth="open",  # unsigned test traffic on loopback
    )


async def _until_closed(port: int, payload: bytes) -> tuple[float, bytes]:
    """Send ``payload`` and read until the server closes: (seconds, what it answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    if payload:
        writer.write(payload)
        await writer.drain()
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 30):
            got += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return time.monotonic() - t0, got


async def _settle(done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until the server has accepted and read what the test sent."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the server did not catch up"
        await asyncio.sleep(0.02)


def test_the_cap_leaves_a_margin_of_the_fd_limit() -> None:
    assert connection_cap(4096, 1024) == 768
    assert connection_cap(4096, 1 << 20) == 4096
    assert connection_cap(4096, 256) == 192
    assert connection_cap(10, 64) == 10 and connection_cap(100, 64) == 32
    assert connection_cap(100, 16) == 1
    # an accept burst (the backlog) and as many evicted sockets fit in the margin twice over
    for fds in (64, 256, 1024, 4096, 1 << 20):
        margin = fds - connection_cap(1 << 30, fds)
        assert 4 * accept_backlog(fds) <= max(margin, 32)
    assert accept_backlog(256) == 16 and accept_backlog(1 << 20) == 64


async def test_idle_sockets_past_the_cap_do_not_stop_health(node: MinerNode) -> None:
    assert node.gate is not None and node.gate.cap == CAP
    idle = [await asyncio.open_connection("127.0.0.1", node.port) for _ in range(3 * CAP)]
    await _settle(lambda: node.gate is not None and node.gate.evicted >= 2 * CAP)
    assert len(node.gate.live) <= CAP
    t0 = time.monotonic()
    async with aiohttp.ClientSession(base_url=node.url) as http, http.get("/health") as r:
        assert r.status == 200
    assert time.monotonic() - t0 < 2.0
    assert node.gate.evicted >= 2 * CAP  # the oldest quiet sockets made room
    for _, w in idle:
        w.close()


async def test_busy_connections_at_the_cap_refuse_new_ones_until_their_heads_time_out(
    node: MinerNode,
) -> None:
    # connections that started a request are not evicted: a new one is refused at once
    busy = []
    for _ in range(CAP):
        r, w = await asyncio.open_connection("127.0.0.1", node.port)
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a partial head
        busy.append((r, w))
    gate = node.gate
    assert gate is not None
    await _settle(lambda: len(gate.live) == CAP and not any(p.quiet for p in gate.live))
    _, got = await _until_closed(node.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got == b""  # refused: closed without an answer
    assert node.gate is not None and node.gate.refused >= 1
    await asyncio.sleep(HEAD_S + 0.5)  # their heads time out
    async with aiohttp.ClientSession(base_url=node.url) as http, http.get("/health") as r:
        assert r.status == 200
    for _, w in busy:
        w.close()


async def test_each_kind_of_stalled_request_is_closed_within_its_timeout(node: MinerNode) -> None:
    head = "POST /QuerySynapse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    cases = {
        "no bytes": (b"", HEAD_S),
        "partial head": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow:", HEAD_S),
        "endless chunked body": (
            (head + 'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n').encode(),
            BODY_S,
        ),
        "short body": ((head + "Content-Length: 100\r\n\r\n" + '{"query_text"').encode(), BODY_S),
        "idle keep-alive": (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", KEEPALIVE_S),
    }
    results = await asyncio.gather(*(_until_closed(node.port, p) for p, _ in cases.values()))
    for (name, (_, limit)), (seconds, got) in zip(cases.items(), results, strict=True):
        assert seconds < limit + 1.5, f"{name}: open for {seconds:.1f}s (limit {limit}s)"
        assert seconds > limit * 0.5, f"{name}: closed after {seconds:.1f}s, before its timeout"
        if "body" in name:
            assert got.startswith(b"HTTP/1.1 408"), (name, got[:80])
        elif name == "idle keep-alive":
            assert got.startswith(b"HTTP/1.1 200"), got[:80]
        else:
            assert got == b"", (name, got[:80])
    assert node.gate is not None
    timeouts = node.gate.timeouts
    assert timeouts["head"] >= 2 and timeouts["body"] >= 2 and timeouts["keepalive"] >= 1


async def test_requests_past_the_inflight_limit_get_503_and_the_rest_succeed(
    node: MinerNode,
) -> None:
    body = b'{"query_text": "copper violin", "top_k": 3}'
    slow = []
    for _ in range(INFLIGHT):  # requests in flight: heads sent, bodies still coming
        r, w = await asyncio.open_connection("127.0.0.1", node.port)
        w.write(
            b"POST /QuerySynapse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:5]
        )
        await w.drain()
        slow.append((r, w))
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession(base_url=node.url) as http:
        refused = []
        for _ in range(5):
            async with http.post(
                "/QuerySynapse", data=body, headers={"Content-Type": "application/json"}
            ) as r:
                refused.append((r.status, r.headers.get("Retry-After"), await r.json()))
        assert all(s == 503 and ra == "1" for s, ra, _ in refused), refused
        assert "in flight" in refused[0][2]["error"]
        async with http.get("/health") as r:  # probes are exempt and the node is healthy
            assert r.status == 200
        for _, w in slow:  # the slow requests complete
            w.write(body[5:])
            await w.drain()
        for r, _ in slow:
            status_line = await asyncio.wait_for(r.readline(), 30)
            assert status_line.startswith(b"HTTP/1.1 200"), status_line
        async with http.post("/QuerySynapse", json={"query_text": "copper violin"}) as r:
            assert r.status == 200
        async with http.get("/metrics") as r:
            assert "engram_axon_inflight 0.0" in await r.text()
    for _, w in slow:
        w.close()
    assert node.inflight is not None and node.inflight.refused == 5


def test_repeated_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out, repeat_burst=5, repeat_interval_s=60)
    try:
        log = structlog.get_logger("t")
        for _ in range(10_000):
            log.error("accept failed", error="Too many open files")
        log.info("something else")
        std = logging.getLogger("asyncio")
        for _ in range(10_000):
            std.error("socket.accept() out of system resource")
        lines = out.getvalue().splitlines()
        assert sum("accept failed" in x for x in lines) == 5
        # the standard library's loggers (asyncio's accept errors) through the root handlers
        stdlib = [r for r in caplog.records if "out of system resource" in r.getMessage()]
        assert len(stdlib) == 5
        assert any("something else" in x for x in lines)
    finally:
        configure_logging("info", "json", stream=sys.stderr)

    now = [0.0]
    limiter = RepeatLimiter(burst=2, interval_s=10, clock=lambda: now[0])
    assert [limiter.check("k")[0] for _ in range(5)] == [True, True, False, False, False]
    now[0] = 10.0
    assert limiter.check("k") == (True, 3)  # the next window reports what it dropped


def test_a_miner_with_few_file_descriptors_survives_many_idle_sockets(
    tmp_path: Path, model_cache: Path
) -> None:
    """The issue's scenario: more idle sockets than the open-file limit (here 256)."""
    data = tmp_path / "data"
    cache = cache_dir(Settings(data_dir=str(data)))
    cache.parent.mkdir(parents=True)
    cache.symlink_to(model_cache, target_is_directory=True)
    port = free_port()
    env = dict(os.environ, ENGRAM_NODE_ID="fd", ENGRAM_LOG_FORMAT="json", ENGRAM_AXON_AUTH="open")
    env.pop("ENGRAM_NATS_URL", None)
    log_path = tmp_path / "miner.log"

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with open(log_path, "wb") as log:
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
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=low_fd_limit,
        )
    try:
        asyncio.run(_many_idle_sockets(port, 400))
    finally:
        proc.terminate()
        proc.wait(30)
    lines = log_path.read_text().splitlines()
    assert not any("Too many open files" in x for x in lines), lines[-5:]
    assert len(lines) < 100


async def _many_idle_sockets(port: int, n: int) -> None:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
        deadline = time.monotonic() + 120
        while True:
            try:
                async with http.get("/health") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the miner did not start"
            await asyncio.sleep(0.3)
        socks = []
        for _ in range(n):
            try:
                socks.append(await asyncio.open_connection("127.0.0.1", port))
            except OSError:
                pass
        await asyncio.sleep(0.5)
        for _ in range(5):
            t0 = time.monotonic()
            async with http.get("/health") as r:
                assert r.status == 200
            assert time.monotonic() - t0 < 2.0
        for _, w in socks:
            w.close()


@pytest.fixture(autouse=True)
def _enough_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    yield


async def test_the_thread_pool_queue_is_bounded() -> None:
    pool = BoundedExecutor(2, 3)
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    try:
        futs = [loop.run_in_executor(pool, gate.wait) for _ in range(5)]  # 2 run, 3 wait
        with pytest.raises(Unavailable, match="thread pool is full"):
            loop.run_in_executor(pool, gate.wait)
        assert pool.refused == 1
        gate.set()
        await asyncio.gather(*futs)
        assert await loop.run_in_executor(pool, sum, [1, 2]) == 3  # room again
    finally:
        gate.set()
        pool.shutdown()


async def test_a_body_cut_off_by_the_client_logs_no_traceback(
    node: MinerNode, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        _reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(
            b"POST /QuerySynapse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query_text"'
        )
        await writer.drain()
        writer.close()  # gone mid-body
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession(base_url=node.url) as http, http.get("/health") as r:
        assert r.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-500:]
