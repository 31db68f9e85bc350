"""The ingest bench's CPU split: a part's time lands in that part, not in another."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from engram.bench.ingest import CPU_PARTS, cpu_by_part

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in CPU_PARTS}


def test_each_part_counts_its_own_threads() -> None:
    before = cpu_by_part()
    lane = threading.Thread(target=_burn, args=(0.4,), name="embed_0")
    lane.start()
    lane.join()
    d = _delta(before, cpu_by_part())
    # a thread's time is only read while it lives: the lane is gone, so it is not counted
    assert d["model"] == pytest.approx(0.0, abs=0.02)

    done = threading.Event()
    burned = [threading.Event(), threading.Event()]

    def burner(seconds: float, flag: threading.Event) -> None:
        _burn(seconds)
        flag.set()
        done.wait()  # alive (so counted) until the split is read

    lane = threading.Thread(target=burner, args=(0.4, burned[0]), name="embed_1")
    other = threading.Thread(target=burner, args=(0.2, burned[1]), name="engram_3")
    before = cpu_by_part()
    lane.start()
    other.start()
    _burn(0.3)  # the main thread: the benchmark's event loop
    for flag in burned:
        assert flag.wait(30)
    d = _delta(before, cpu_by_part())
    done.set()
    lane.join()
    other.join()
    assert d["model"] == pytest.approx(0.4, abs=0.1)
    assert d["threads"] == pytest.approx(0.2, abs=0.1)
    assert d["event_loop"] == pytest.approx(0.3, abs=0.1)
    assert d["nats_server"] == pytest.approx(0.0, abs=0.02)


def test_children_count_as_the_server() -> None:
    burn = (
        "import sys, time\n"
        "end = time.process_time() + 0.5\n"
        "while time.process_time() < end: pass\n"
        "print('burned', flush=True)\n"
        "sys.stdin.read()\n"  # alive (so counted) until the split is read
    )
    before = cpu_by_part()
    child = subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"burned\n"
        d = _delta(before, cpu_by_part())
    finally:
        child.communicate(b"")
    # the burn, and the interpreter's start-up (~0.02-0.1 s)
    assert 0.45 <= d["nats_server"] <= 0.9
    assert d["event_loop"] < 0.05
