"""Crash and shutdown: a worker *process* killed mid-batch loses nothing; SIGTERM hands
in-flight messages back at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engram.bus import Bus
from streams.events import DemoNoted

ROOT = Path(__file__).resolve().parents[2]


def start_worker(url: str, out: Path, ack_wait: float, hang_on: int = -1) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.streams.worker_proc", url, str(out), str(ack_wait)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HANG_ON": str(hang_on)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def handled(out: Path) -> list[int]:
    return [int(x) for x in out.read_text().split()] if out.exists() else []


async def wait_until(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_worker_process_killed_mid_batch_loses_nothing(bus: Bus, tmp_path: Path) -> None:
    n = 200
    await bus.publisher.publish_many([DemoNoted(n=i) for i in range(n)])
    out = tmp_path / "handled.txt"
    proc = start_worker(bus.url, out, ack_wait=2.0, hang_on=37)  # batches of 10: 30..39
    await wait_until(lambda: len(handled(out)) >= 37, 30)
    proc.send_signal(signal.SIGKILL)  # a crash, mid-batch: no chance to ack or nak
    proc.wait(10)
    before = handled(out)
    assert before == list(range(37))  # 30..36 done but their batch never acked

    proc2 = start_worker(bus.url, out, ack_wait=2.0)
    try:
        await wait_until(lambda: set(handled(out)) == set(range(n)), 60)
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(20)
    info = await bus.js.consumer_info("INGEST", "crashy")
    assert info.num_pending == 0 and info.num_ack_pending == 0
    after = handled(out)
    # at-least-once: the unacked batch came back whole, so 30..36 were done twice
    assert sorted(after) == sorted(list(range(n)) + list(range(30, 37)))


async def test_sigterm_stops_gracefully_and_hands_work_back(bus: Bus, tmp_path: Path) -> None:
    n = 120
    await bus.publisher.publish_many([DemoNoted(n=i) for i in range(n)])
    out = tmp_path / "handled.txt"
    proc = start_worker(bus.url, out, ack_wait=60.0)  # a lost message would wait 60 s
    await wait_until(lambda: len(handled(out)) >= 25, 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    t0 = time.monotonic()
    proc2 = start_worker(bus.url, out, ack_wait=60.0)
    try:
        await wait_until(lambda: set(handled(out)) == set(range(n)), 30)
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(20)
    assert time.monotonic() - t0 < 30  # nothing waited for the 60 s ack_wait
    info = await bus.js.consumer_info("INGEST", "crashy")
    assert info.num_pending == 0 and info.num_ack_pending == 0
