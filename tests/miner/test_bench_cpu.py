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
    lane = threading.Thread(target=lambda: (_burn(0.4), done.wait()), name="embed_1")
    other = threading.Thread(target=lambda: (_burn(0.2), done.wait()), name="engram_3")
    before = cpu_by_part()
    lane.start()
    other.start()
    _burn(0.3)  # the main thread: the benchmark's event loop
    time.sleep(0.6)  # both burners finish, and wait
    d = _delta(before, cpu_by_part())
    done.set()
    lane.join()
    other.join()
    assert d["model"] == pytest.approx(0.4, abs=0.1)
    assert d["threads"] == pytest.approx(0.2, abs=0.1)
    assert d["event_loop"] == pytest.approx(0.3, abs=0.1)
    assert d["nats_server"] == pytest.approx(0.0, abs=0.02)


def test_children_count_as_the_server() -> None:
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
    child = subprocess.Popen(
        [sys.executable, "-c", burn + "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        before = cpu_by_part()
        time.sleep(1.5)  # the child burns its 0.5 s, then waits on stdin (alive, counted)
        d = _delta(before, cpu_by_part())
    finally:
        child.communicate(b"")
    assert d["nats_server"] == pytest.approx(0.5, abs=0.2)
    assert d["event_loop"] < 0.05
