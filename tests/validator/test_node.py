"""The whole validator in one process against a real miner node and the local chain, on
second-long cadences: probes → recall, challenges → verdicts → scores → weights on chain;
then a restart that must not count anything twice."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import numpy as np
from bittensor_core import Keypair

from engram.bus import Bus
from engram.chain import LocalChain
from engram.config import Settings
from engram.miner.embedder import Embedder
from engram.miner.node import MinerNode
from engram.validator.audit import audit, audit_events
from engram.validator.config import ValidatorConfig
from engram.validator.node import ValidatorNode
from streams.events import (
    Event,
    ProofVerified,
    RecallSampled,
    ScoreUpdated,
    WeightsProposed,
    WeightsSet,
)
from streams.replay import replay_raw

from .helpers import events_of, until


async def _weights_set(bus: Bus, n: int) -> bool:
    sets = await events_of(bus.js, "WEIGHTS", WeightsSet)
    return sum(1 for s in sets if s.success) >= n  # type: ignore[attr-defined]


async def test_validator_node_sets_weights_and_resumes_without_double_counting(
    bus: Bus, settings: Settings, node: MinerNode, embedder: Embedder
) -> None:
    vali = Keypair.create_from_uri("//Alice")
    r = await _health(node)
    chain = await LocalChain.open(bus.js, vali.ss58_address)
    miner_uid = await chain.register(r)
    await chain.acting_as(r).serve_axon(node.host, node.port)
    cfg = ValidatorConfig(evaluation_s=1.0, challenge_s=1.5, weights_s=3.0, http_timeout_s=10.0)

    def make() -> ValidatorNode:
        return ValidatorNode(
            settings, cfg, keypair=vali, embed=embedder.embed, model_version=embedder.model_version
        )

    v = make()
    task = asyncio.create_task(v.run())
    try:
        # a user memory through the node's routing client: with one miner it has one replica
        await until(lambda: v.routed is not None, timeout=60)
        assert v.routed is not None
        vec = np.asarray(embedder.embed(["a user's memory, routed"]), dtype=np.float32)[0]
        routed = await v.routed.ingest(vec, {"from": "a user"})
        assert [p.hotkey for p in routed.stored] == [r]
        await until(lambda: _weights_set(bus, 1), timeout=90)

        async def user_memory_verified() -> bool:
            verdicts = await events_of(bus.js, "VALIDATION", ProofVerified)
            return any(e.replicated and e.cid == routed.cid for e in verdicts)  # type: ignore[attr-defined]

        await until(user_memory_verified, timeout=60)

        async def followed() -> bool:  # the replication projection follows the log live
            return routed.cid in v.replication.verdicts

        await until(followed, timeout=10)
        report = await v.report()
    finally:
        v.stop()
        await asyncio.wait_for(task, 60)

    assert set(report["miners"]) == {miner_uid}
    row = report["miners"][miner_uid]
    assert row["hotkey"] == r and row["recall"] is not None and row["recall"] > 0.5
    assert row["weight"] == 1.0 and not row["slashed"]
    assert set(report["replication"]) == {"HEALTHY", "DEGRADED", "CRITICAL", "LOST"}
    # only routed user memories are replicated (probes are one miner's private ground
    # truth); with one miner the routed memory has 1 of 3 replicas
    assert report["replication"]["CRITICAL"] == 1, report["replication"]

    graph = await chain.metagraph()
    me = graph.by_hotkey(vali.ss58_address)
    assert me is not None and me.validator_permit  # the node registered and staked itself
    rec = await chain.weights(me.uid)
    assert rec is not None and rec.uids == [miner_uid] and rec.weights == [1.0]

    # restart: the log decides what is done
    v2 = make()
    task = asyncio.create_task(v2.run())
    try:
        await until(lambda: _weights_set(bus, 2), timeout=90)
    finally:
        v2.stop()
        await asyncio.wait_for(task, 60)

    samples = await events_of(bus.js, "VALIDATION", RecallSampled)
    scores = await events_of(bus.js, "VALIDATION", ScoreUpdated)
    verdicts = await events_of(bus.js, "VALIDATION", ProofVerified)
    assert samples and verdicts
    assert all(v.passed for v in verdicts), [v.reason for v in verdicts]  # type: ignore[attr-defined]
    per_round = Counter((s.round_id, s.miner_uid) for s in scores)  # type: ignore[attr-defined]
    assert max(per_round.values()) == 1  # never scored twice
    assert Counter(v.challenge_id for v in verdicts).most_common(1)[0][1] == 1  # type: ignore[attr-defined]
    assert {(s.round_id, s.miner_uid) for s in samples} >= set(per_round)  # type: ignore[attr-defined]
    assert all(s.recall >= 0.75 for s in scores), [s.recall for s in scores]  # type: ignore[attr-defined]
    sets = await events_of(bus.js, "WEIGHTS", WeightsSet)
    assert Counter(s.epoch for s in sets if s.success).most_common(1)[0][1] == 1  # type: ignore[attr-defined]


async def _health(node: MinerNode) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"{node.url}/health") as r:
        return str((await r.json())["hotkey_ss58"])


async def _read(bus: Bus, stream: str) -> list[tuple[int, Event]]:
    return [(i.seq, i.event) async for i in replay_raw(bus.js, stream) if i.event is not None]


async def test_audit_reproduces_recorded_weights_and_detects_tampering(
    bus: Bus, settings: Settings, node: MinerNode, embedder: Embedder
) -> None:
    vali = Keypair.create_from_uri("//Alice")
    miner = await _health(node)
    chain = await LocalChain.open(bus.js, vali.ss58_address)
    await chain.register(miner)
    await chain.acting_as(miner).serve_axon(node.host, node.port)
    cfg = ValidatorConfig(evaluation_s=1.0, challenge_s=1.0, weights_s=2.0, http_timeout_s=10.0)
    v = ValidatorNode(
        settings, cfg, keypair=vali, embed=embedder.embed, model_version=embedder.model_version
    )
    task = asyncio.create_task(v.run())
    try:
        await until(lambda: _weights_set(bus, 2), timeout=90)
    finally:
        v.stop()
        await asyncio.wait_for(task, 60)

    report = await audit(bus.js, validator=vali.ss58_address)
    scores = await events_of(bus.js, "VALIDATION", ScoreUpdated)
    assert report.ok, (report.score_mismatches, [e.problem for e in report.epochs])
    assert report.scores_checked == len(scores) >= 2
    proposed = await events_of(bus.js, "WEIGHTS", WeightsProposed)
    assert len(report.epochs) == len(proposed)
    (explained,) = report.epochs[-1].miners  # the one miner, in the last epoch
    assert explained.weight == 1.0 and explained.hotkey == miner and not explained.slashed
    assert explained.recall > 0.5 and explained.proof_success_rate == 1.0 and explained.challenges

    validation = await _read(bus, "VALIDATION")
    weights = [e for _s, e in await _read(bus, "WEIGHTS")]
    # tamper with one recorded score: the audit names it
    i = next(k for k, (_s, e) in enumerate(validation) if isinstance(e, ScoreUpdated))
    seq, e = validation[i]
    forged = list(validation)
    forged[i] = (seq, msgspec.structs.replace(e, ema=e.ema + 0.01))  # type: ignore[arg-type]
    bad = audit_events(forged, weights, validator=vali.ss58_address)
    assert not bad.ok and len(bad.score_mismatches) == 1
    assert f"seq {seq}" in bad.score_mismatches[0] and "ema recorded" in bad.score_mismatches[0]
    # tamper with a recorded weight set: its epoch fails
    j = next(k for k, w in enumerate(weights) if isinstance(w, WeightsProposed) and any(w.weights))
    w = weights[j]
    assert isinstance(w, WeightsProposed)
    forged_w = list(weights)
    forged_w[j] = msgspec.structs.replace(w, weights=[x * 0.5 for x in w.weights])
    bad = audit_events(validation, forged_w, validator=vali.ss58_address)
    assert not bad.ok and [e.epoch for e in bad.epochs if not e.ok] == [w.epoch]
