"""``engram bench validator``: one challenge round across many miners, and the audit's
replay + recompute speed.

Harness only: the miners are stub axons (aiohttp on loopback, in a child process so
their CPU is not billed to the validator) that answer ``/ChallengeSynapse`` with correct
v2 proofs after a set latency each (spread evenly from 10% to 100% of ``slowest_ms``).
The round is the real dispatcher (signed HTTP, bounded concurrency, latency measured by
the validator) and the real verdicts; ``round_s`` must stay near the slowest miner's
latency (``round_over_slowest`` ≤ 1.5), not the sum of latencies.

The audit figure replays a synthetic log (verdicts, recall samples, scores computed by
the real scorer, weight ticks and proposals) from a fresh embedded nats-server and
recomputes everything (:func:`engram.validator.audit.audit`): ``audit_events_per_s``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import tempfile
import time
from typing import Any

import numpy as np
from aiohttp import web

from engram.bus import open_bus
from engram.config import Settings
from engram.core import Challenge, answer, new_challenge
from streams.events import (
    CadenceTicked,
    ChallengeIssued,
    Event,
    ProofVerified,
    RecallSampled,
)

from .audit import audit
from .challenges import Dispatcher, SeenNonces, verdict
from .http import MinerHttp
from .scorer import Pending, ScoreBook, score_event
from .weights import EpochSnapshot, propose

__all__ = ["run"]


class _Stub:
    """A stub axon (harness only): holds vectors by CID, answers v2 challenges after
    ``latency_s``."""

    def __init__(self, latency_s: float, vectors: dict[str, Any]) -> None:
        self.latency_s = latency_s
        self.vectors = vectors
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def challenge(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(self.latency_s)
        vec = self.vectors.get(body["cid"])
        if vec is None:
            return web.json_response({"error": "unknown CID"}, status=404)
        c = Challenge.from_dict(body)
        return web.json_response({"proof": answer(c, version=2, vec=vec), "error": None})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/ChallengeSynapse", self.challenge)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _plan(miners: int, challenges: int, slowest_ms: float) -> list[tuple[float, dict[str, Any]]]:
    """Per stub: its latency (s) and the vectors it holds (the same in both processes)."""
    rng = np.random.default_rng(7)
    out = []
    for m in range(miners):
        latency = slowest_ms / 1000.0 * (0.1 + 0.9 * m / max(miners - 1, 1))
        held = {
            f"v1::{m:04d}{k:04d}" + "0" * 56: rng.standard_normal(384).astype(np.float32)
            for k in range(challenges)
        }
        out.append((latency, held))
    return out


async def serve_stubs(miners: int, challenges: int, slowest_ms: float) -> None:
    """The stub axons, in their own process (their CPU is not the validator's): prints the
    ports as one JSON line, serves until stdin closes."""
    stubs = [_Stub(lat, held) for lat, held in _plan(miners, challenges, slowest_ms)]
    for stub in stubs:
        await stub.start()
    print(json.dumps([s.port for s in stubs]), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await asyncio.gather(*(s.stop() for s in stubs))


async def _round(miners: int, challenges: int, slowest_ms: float) -> dict[str, Any]:
    from bittensor_core import Keypair

    vali = Keypair.create_from_uri("//BenchValidator")
    hotkey_hex = vali.public_key.hex()
    plan = _plan(miners, challenges, slowest_ms)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engram.validator.bench",
        str(miners),
        str(challenges),
        str(slowest_ms),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ports = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        issued: list[ChallengeIssued] = []
        vectors: dict[str, Any] = {}
        for m, ((_lat, held), port) in enumerate(zip(plan, ports, strict=True)):
            vectors.update(held)
            for k, cid in enumerate(held):
                c = new_challenge(cid, hotkey_hex, ttl_s=60)
                issued.append(
                    ChallengeIssued(
                        challenge_id=f"bench:{m}:{k}",
                        miner_uid=m,
                        miner_hotkey=f"stub{m}",
                        cid=cid,
                        nonce_hex=c.nonce_hex,
                        expires_at=float(c.expires_at),
                        validator_hotkey_hex=hotkey_hex,
                        miner_axon=f"127.0.0.1:{port}",
                    )
                )
        async with MinerHttp(vali, timeout_s=10.0, max_inflight=len(issued)) as http:
            dispatcher = Dispatcher(http, None)  # type: ignore[arg-type]
            # a warm-up round (connections pooled, code paths hot), not timed
            await asyncio.gather(*(dispatcher.dispatch(c) for c in issued))
            t0 = time.perf_counter()
            answers = await asyncio.gather(*(dispatcher.dispatch(c) for c in issued))
            seen = SeenNonces()
            passed = sum(verdict(a, vectors[a.cid], seen)[0] for a in answers)
            round_s = time.perf_counter() - t0
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    slowest = max(lat for lat, _held in plan)
    return {
        "miners": miners,
        "challenges": len(issued),
        "passed": passed,
        "round_s": round(round_s, 4),
        "slowest_miner_s": round(slowest, 4),
        "round_over_slowest": round(round_s / slowest, 3),
        "max_measured_latency_ms": round(max(a.latency_ms for a in answers), 2),
    }


def _synthetic_log(miners: int, rounds: int, validator: str) -> tuple[list[Event], list[Event]]:
    rng = np.random.default_rng(11)
    book = ScoreBook()
    validation: list[Event] = []
    weights: list[Event] = []
    seq = 0

    def add(e: Event) -> int:
        nonlocal seq
        seq += 1
        validation.append(e)
        return seq

    for r in range(rounds):
        for m in range(miners):
            for k in range(4):
                v = ProofVerified(
                    challenge_id=f"c{r}:{m}:{k}",
                    miner_uid=m,
                    passed=bool(rng.random() < 0.9),
                    miner_hotkey=f"hk{m}",
                )
                add(v)
                book.on_verdict(v)
        for m in range(miners):
            sample = RecallSampled(
                round_id=f"r{r}",
                miner_uid=m,
                miner_hotkey=f"hk{m}",
                recall_at_10=0.0,
                latency_ms=0.0,
                queries=4,
                recalls=[float(x) for x in rng.random(4)],
                latencies_ms=[float(x) for x in rng.uniform(20, 600, 4)],
            )
            s = add(sample)
            p = Pending(s, sample, book.measured(sample))
            score = score_event(p, book.score(p))
            add(score)
            book.on_score(score)
        if r % 10 == 9:
            tick = CadenceTicked(cadence="weights", seq=r, period_s=600, validator=validator)
            add(tick)
            snap = EpochSnapshot(
                r,
                seq,
                tick.event_id,
                dict(book.ema),
                frozenset(u for u, x in book.slashed.items() if x),
            )
            weights.append(propose(snap, list(range(miners)), 1, r))
    return validation, weights


async def _audit(miners: int, rounds: int) -> dict[str, Any]:
    validation, weights = _synthetic_log(miners, rounds, "bench")
    with tempfile.TemporaryDirectory(prefix="engram-bench-validator-") as tmp:
        bus = await open_bus(Settings(data_dir=tmp, node_id="bench", nats_sync="1m"))
        try:
            for i in range(0, len(validation), 2000):
                await bus.publisher.publish_many(validation[i : i + 2000])
            await bus.publisher.publish_many(weights)
            t0 = time.perf_counter()
            report = await audit(bus.js, validator="bench")
            seconds = time.perf_counter() - t0
        finally:
            await bus.close()
    return {
        "audit_events": report.events,
        "audit_s": round(seconds, 3),
        "audit_events_per_s": round(report.events / seconds),
        "audit_ok": report.ok,
        "audit_epochs": len(report.epochs),
    }


async def run(
    miners: int = 64, challenges: int = 4, slowest_ms: float = 200.0, rounds: int = 50
) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "validator"}
    out.update(await _round(miners, challenges, slowest_ms))
    out.update(await _audit(miners, rounds))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["rss_mib"] = round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    return out


if __name__ == "__main__":  # the stub axons' process: miners challenges slowest_ms
    asyncio.run(serve_stubs(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
