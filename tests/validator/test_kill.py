"""``engram validator run`` as a real process, SIGKILLed mid-round and started again: no
score, verdict or weight set is counted twice, and the audit still reproduces the
recorded weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from engram.bus import Bus
from engram.chain import LocalChain
from engram.config import Settings
from engram.miner.node import MinerNode
from engram.validator.audit import audit
from streams.events import ProofVerified, RecallSampled, ScoreUpdated, WeightsSet

from .helpers import events_of, until


def _spawn(data_dir: Path, nats_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ENGRAM_NATS_URL=nats_url, ENGRAM_LOG_LEVEL="warning")
    cmd = [
        sys.executable,
        "-m",
        "engram.cli",
        "--data-dir",
        str(data_dir),
        "validator",
        "run",
        "--evaluation-s",
        "1",
        "--challenge-s",
        "1",
        "--weights-s",
        "2",
    ]
    with log.open("ab") as out:  # a file, not a pipe nobody reads (a full pipe blocks the child)
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


async def _count(bus: Bus, stream: str, kind: type) -> int:
    return len(await events_of(bus.js, stream, kind))


@pytest.mark.slow
async def test_a_sigkilled_validator_resumes_without_double_counting(
    bus: Bus, settings: Settings, node: MinerNode, model_cache: Path, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{node.url}/health") as r:
        miner = str((await r.json())["hotkey_ss58"])
    chain = await LocalChain.open(bus.js, "5Admin")
    await chain.register(miner)
    await chain.acting_as(miner).serve_axon(node.host, node.port)
    vdir = tmp_path / "validator"
    (vdir / "cache").parent.mkdir(parents=True, exist_ok=True)
    (vdir / "cache").symlink_to(model_cache, target_is_directory=True)
    url = str(settings.nats_url)
    log = tmp_path / "validator.log"

    proc = _spawn(vdir, url, log)
    try:
        await until(lambda: _count(bus, "VALIDATION", ScoreUpdated), timeout=120)
        await until(lambda: _count(bus, "VALIDATION", ProofVerified), timeout=60)
        proc.send_signal(signal.SIGKILL)  # mid-round: ticks keep their rounds open
        proc.wait(10)
        before = await _count(bus, "VALIDATION", ScoreUpdated)
        proc = _spawn(vdir, url, log)
        await until(lambda: _more(bus, before + 2), timeout=120)
        await until(lambda: _successes(bus, 2), timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]

    scores = await events_of(bus.js, "VALIDATION", ScoreUpdated)
    samples = await events_of(bus.js, "VALIDATION", RecallSampled)
    verdicts = await events_of(bus.js, "VALIDATION", ProofVerified)
    sets = await events_of(bus.js, "WEIGHTS", WeightsSet)
    assert Counter((s.round_id, s.miner_uid) for s in scores).most_common(1)[0][1] == 1  # type: ignore[attr-defined]
    assert Counter((s.round_id, s.miner_uid) for s in samples).most_common(1)[0][1] == 1  # type: ignore[attr-defined]
    assert Counter(v.challenge_id for v in verdicts).most_common(1)[0][1] == 1  # type: ignore[attr-defined]
    assert Counter(s.epoch for s in sets if s.success).most_common(1)[0][1] == 1  # type: ignore[attr-defined]
    report = await audit(bus.js)
    assert report.ok, (report.score_mismatches, [e.problem for e in report.epochs])
    assert report.scores_checked == len(scores)


async def _more(bus: Bus, n: int) -> bool:
    return await _count(bus, "VALIDATION", ScoreUpdated) >= n


async def _successes(bus: Bus, n: int) -> bool:
    sets = await events_of(bus.js, "WEIGHTS", WeightsSet)
    return sum(1 for s in sets if s.success) >= n  # type: ignore[attr-defined]
