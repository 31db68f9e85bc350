"""Ctrl-C stops everything the devnet started: no child process is left behind.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, so the test does
the same (the devnet in a session of its own, SIGINT to its group): its nats-servers must
not die before the devnet has stopped the validator and audited its log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .helpers import alive, children, devnet_cmd, env


def test_sigint_stops_every_child(tmp_path: Path) -> None:
    data = tmp_path / "devnet"
    args = ["--miners", "2", "--adversary", "slow", "--fast", "--data-dir", str(data)]
    proc = subprocess.Popen(
        [*devnet_cmd(*args), "--json"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        # the devnet's server, two honest miners' and the slow miner's: four nats-servers
        deadline = time.monotonic() + 120
        kids: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            kids = children(proc.pid)
            if len(kids) >= 4 and (data / "validator" / "keys").exists():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        assert len(kids) >= 4, kids
        time.sleep(3.0)  # let the validator run a round
        kids = children(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    # a clean stop: the validator stopped, its log audited on a server still up
    assert b'"audit_ok": true' in out.splitlines()[-1], err.decode()[-3000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if alive(k)], "children left running"
