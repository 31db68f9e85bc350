"""Scheduler, scorer and weights steps on a real nats-server; restarts resume without
double counting."""

from __future__ import annotations

import asyncio

import pytest

from engram.bus import Bus
from engram.chain import LocalChain
from engram.validator.scheduler import Scheduler
from engram.validator.scorer import ScorerService
from engram.validator.scoring import MinerRound, scorer_for
from engram.validator.weights import ChainSetter, WeightFolder
from streams.events import (
    CadenceTicked,
    ProofVerified,
    RecallSampled,
    ScoreUpdated,
    WeightsProposed,
    WeightsSet,
)
from streams.topology import consumer
from streams.worker import Delivery, Worker

from .helpers import events_of, until


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_scheduler_ticks_each_cadence_once_even_after_a_restart(bus: Bus) -> None:
    clock = Clock(10_000.0)
    cad = {"evaluation": 2.0, "challenge": 5.0, "weights": 10.0}
    s = Scheduler(bus.js, bus.publisher, cad, "5V", clock=clock)
    first = await s.tick()
    assert sorted((t.cadence, t.seq) for t in first) == [
        ("challenge", 2000),
        ("evaluation", 5000),
        ("weights", 1000),
    ]
    assert await s.tick() == []
    clock.t += 2.0
    assert [(t.cadence, t.seq) for t in await s.tick()] == [("evaluation", 5001)]
    assert s.next_due_in() == pytest.approx(2.0)

    # a restarted scheduler (fresh memory) in the same periods publishes nothing
    again = Scheduler(bus.js, bus.publisher, cad, "5V", clock=clock)
    await again.resume()
    assert again.last == {"evaluation": 5001, "challenge": 2000, "weights": 1000}
    assert await again.tick() == []
    ticks = await events_of(bus.js, "VALIDATION", CadenceTicked)
    assert len(ticks) == 4


def _verdict(uid: int, passed: bool, hk: str, n: int) -> ProofVerified:
    return ProofVerified(challenge_id=f"c{uid}-{n}", miner_uid=uid, passed=passed, miner_hotkey=hk)


def _recall(
    uid: int, rnd: str, hk: str, recalls: list[float], lat: list[float | None]
) -> RecallSampled:
    return RecallSampled(
        round_id=rnd,
        miner_uid=uid,
        miner_hotkey=hk,
        recall_at_10=sum(recalls) / len(recalls),
        latency_ms=0.0,
        queries=len(recalls),
        recalls=recalls,
        latencies_ms=lat,
    )


async def _run_until_scored(svc: ScorerService, want: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    try:
        await until(lambda: svc.published >= want, timeout=20)
        await asyncio.sleep(0.3)  # give it the chance to (wrongly) publish more
    finally:
        stop.set()
        await task


async def test_scorer_scores_each_round_once_and_resumes_after_restart(bus: Bus) -> None:
    pub = bus.publisher
    await pub.publish_many(
        [_verdict(1, True, "5M1", i) for i in range(5)]
        + [_verdict(2, False, "5M2", i) for i in range(5)]
        + [
            _recall(1, "r1", "5M1", [1.0, 0.5], [50.0, 300.0]),
            _recall(2, "r1", "5M2", [1.0, 1.0], [10.0, 10.0]),
        ]
    )
    svc = ScorerService(bus.js, pub)
    await _run_until_scored(svc, 2)
    scores = await events_of(bus.js, "VALIDATION", ScoreUpdated)
    assert len(scores) == 2
    by_uid = {s.miner_uid: s for s in scores}  # type: ignore[attr-defined]
    honest, cheat = by_uid[1], by_uid[2]
    # independent recomputation with the pure scorer
    want = scorer_for(1).score(
        MinerRound(recall_samples=(1.0, 0.5), latencies_ms=(50.0, 300.0), verdicts=(True,) * 5),
        None,
    )
    assert honest.recall == pytest.approx(0.75) and honest.ema == pytest.approx(want.ema)
    assert honest.scorer_version == 1 and honest.round_id == "r1"
    assert cheat.slashed and cheat.ema == 0.0 and "proof rate" in cheat.reason

    # restart: nothing is scored twice; a new round continues the EMA
    await pub.publish(_recall(1, "r2", "5M1", [1.0], [50.0]))
    again = ScorerService(bus.js, pub)
    await _run_until_scored(again, 1)
    assert again.published == 1
    scores = await events_of(bus.js, "VALIDATION", ScoreUpdated)
    assert len(scores) == 3
    r2 = scores[-1]
    comp = 0.5 * 1.0 + 0.3 * 1.0 + 0.2 * 1.0
    assert r2.ema == pytest.approx(0.3 * comp + 0.7 * honest.ema)  # type: ignore[attr-defined]


async def test_weights_are_folded_per_epoch_and_set_on_the_local_chain(bus: Bus) -> None:
    chain = await LocalChain.open(bus.js, "5V", block_time_s=1.0)
    await chain.register(stake=100.0)
    for hk in ("5M1", "5M2", "5M3"):
        await chain.register(hk)
    pub = bus.publisher
    await pub.publish_many(
        [
            ScoreUpdated(
                miner_uid=1,
                miner_hotkey="5M1",
                round_id="r1",
                recall=1,
                latency_score=1,
                proof_success_rate=1,
                composite=1,
                ema=0.6,
            ),
            ScoreUpdated(
                miner_uid=2,
                miner_hotkey="5M2",
                round_id="r1",
                recall=1,
                latency_score=1,
                proof_success_rate=1,
                composite=1,
                ema=0.2,
            ),
            ScoreUpdated(
                miner_uid=3,
                miner_hotkey="5M3",
                round_id="r1",
                recall=1,
                latency_score=1,
                proof_success_rate=0,
                composite=0.8,
                ema=0.0,
                slashed=True,
            ),
            CadenceTicked(cadence="weights", seq=7, period_s=600, validator="5V"),
            # a score after the tick does not change epoch 7
            ScoreUpdated(
                miner_uid=2,
                miner_hotkey="5M2",
                round_id="r2",
                recall=1,
                latency_score=1,
                proof_success_rate=1,
                composite=1,
                ema=0.9,
            ),
        ]
    )
    folder = WeightFolder(bus.js, pub, chain, validator="5V")
    stop = asyncio.Event()
    task = asyncio.create_task(folder.run(stop))
    try:
        await until(lambda: folder.published, timeout=20)
    finally:
        stop.set()
        await task
    (p,) = folder.published
    assert p.epoch == 7 and p.uids == [1, 2, 3]
    assert p.weights == pytest.approx([0.75, 0.25, 0.0])

    # restart: epoch 7 is on the WEIGHTS stream, nothing new is proposed
    again = WeightFolder(bus.js, pub, chain, validator="5V")
    await again.load_proposed()
    await again.runner.catch_up()
    assert await again.fold_due() == []
    assert len(await events_of(bus.js, "WEIGHTS", WeightsProposed)) == 1

    setter = ChainSetter(chain, pub)
    worker = Worker(
        bus.js, consumer("validator-weights-setter"), setter.handle, pub, fetch_wait_s=0.2
    )
    wtask = asyncio.create_task(worker.run())
    try:
        await until(lambda: events_of(bus.js, "WEIGHTS", WeightsSet), timeout=20)
    finally:
        worker.stop()
        await wtask
    (ws,) = await events_of(bus.js, "WEIGHTS", WeightsSet)
    assert ws.success and ws.chain == "local" and ws.epoch == 7  # type: ignore[attr-defined]
    assert ws.extrinsic.startswith("local:1:0:")  # type: ignore[attr-defined]
    rec = await chain.weights(0)
    assert rec is not None and rec.uids == [1, 2, 3]
    assert rec.weights == pytest.approx([0.75, 0.25, 0.0])

    # a restarted setter that gets epoch 7 again (or an older one) does not set it twice
    again_setter = ChainSetter(chain, pub)
    await again_setter.load_done(bus.js)
    assert again_setter.done == {(1, 7)}
    await chain.advance(5)
    for epoch in (7, 6):
        stale = WeightsProposed(epoch=epoch, uids=[1], weights=[1.0], netuid=1)
        await again_setter.handle([Delivery(msg=None, event=stale, stream_seq=0, num_delivered=1)])  # type: ignore[arg-type]
    assert len(await events_of(bus.js, "WEIGHTS", WeightsSet)) == 1
    assert await chain.weights(0) == rec


async def test_the_setter_reports_refusals_and_all_zero_weights(bus: Bus) -> None:
    chain = await LocalChain.open(bus.js, "5NoPermit")
    await chain.register()  # no stake: no permit
    await chain.register("5M1")
    setter = ChainSetter(chain, bus.publisher)
    refused = await setter.set(WeightsProposed(epoch=1, uids=[1], weights=[1.0]))
    assert not refused.success and "permit" in refused.message
    zero = await setter.set(WeightsProposed(epoch=2, uids=[1], weights=[0.0]))
    assert not zero.success and "zero" in zero.message


async def test_the_probe_ledger_keeps_vectors_and_the_newest_cids_per_miner(bus: Bus) -> None:
    import numpy as np

    from engram.validator import ledger as ledger_mod
    from engram.validator.ledger import ProbeLedger

    led = await ProbeLedger.open(bus.js)
    vec = np.arange(4, dtype=np.float32)
    await led.record("5M1", "v1::aa", vec)
    await led.record("5M1", "v1::aa", vec)  # recorded once
    rec = await led.vector("v1::aa")
    assert rec is not None and rec.dim == 4 and rec.array().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert await led.vector("v1::nope") is None
    assert await led.cids_for("5M1") == ["v1::aa"] and await led.cids_for("5M2") == []
    old = ledger_mod.MAX_HELD
    ledger_mod.MAX_HELD = 3
    try:
        await asyncio.gather(*(led.record("5M2", f"v1::{i}", vec) for i in range(5)))
    finally:
        ledger_mod.MAX_HELD = old
    held = await led.cids_for("5M2")
    assert len(held) == 3 and set(held) <= {f"v1::{i}" for i in range(5)}
