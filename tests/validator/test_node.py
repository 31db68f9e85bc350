"""The whole validator in one process against a real miner node and the local chain, on
second-long cadences: probes → recall, challenges → verdicts → scores → weights on chain;
then a restart that must not count anything twice."""

from __future__ import annotations

import asyncio
from collections import Counter

from bittensor_core import Keypair

from engram.bus import Bus
from engram.chain import LocalChain
from engram.config import Settings
from engram.miner.embedder import Embedder
from engram.miner.node import MinerNode
from engram.validator.config import ValidatorConfig
from engram.validator.node import ValidatorNode
from streams.events import ProofVerified, RecallSampled, ScoreUpdated, WeightsSet

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
        await until(lambda: _weights_set(bus, 1), timeout=90)
        await until(lambda: events_of(bus.js, "VALIDATION", ProofVerified), timeout=60)
    finally:
        v.stop()
        await asyncio.wait_for(task, 60)

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
