"""Routing and replication end to end, on real parts: four real miner nodes (each its own
data and embedded NATS), a LocalChain, and the validator's steps on its own bus.

User memories go through the RoutedClient to the 3 miners XOR routing assigns; challenges
sample them (with the vector the validator saw as ground truth); a miner taken down turns
its CIDs DEGRADED; the repair planner asks for a copy to the next-closest miner, the
repairer makes it, and the next round of challenges brings them back to HEALTHY.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from bittensor_core import Keypair

from engram.bus import Bus
from engram.chain import LocalChain
from engram.config import Settings
from engram.miner.node import MinerNode, cache_dir
from engram.validator.challenges import Challenger, Dispatcher, Verifier, sample_cids
from engram.validator.config import ValidatorConfig
from engram.validator.http import MinerHttp
from engram.validator.ledger import ProbeLedger
from engram.validator.repair import RepairPlanner, RepairWorker, ReplicationProjection, peers_of
from engram.validator.replication import ReplicaStatus
from engram.validator.routed import RoutedClient
from engram.validator.routing import Peer, route
from streams.events import CadenceTicked, ProofVerified, Repaired
from streams.projection import ProjectionRunner
from streams.topology import consumer
from streams.worker import Worker

from .helpers import events_of, until

MINERS = 4


@pytest.fixture
async def miners(tmp_path: Path, model_cache: Path) -> AsyncIterator[list[MinerNode]]:
    nodes: list[MinerNode] = []
    try:
        for i in range(MINERS):
            s = Settings(
                data_dir=str(tmp_path / f"miner-{i}"),
                node_id=f"miner-{i}",
                miner_hotkey_seed=f"//ReplicaMiner{i}",
                axon_auth="open",  # role rules are not what this test is about
            )
            cache = cache_dir(s)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.symlink_to(model_cache, target_is_directory=True)
            # raw-embedding ingests only: no embed worker
            n = MinerNode(s, port=0, ingest_wait_s=15.0, embed_in_process=False)
            await n.start()
            nodes.append(n)
        yield nodes
    finally:
        for n in nodes:
            await n.stop()


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


def test_sample_cids_takes_user_memories_and_probes() -> None:
    rng = random.Random(7)
    picks = sample_cids(rng, ["p1", "p2", "p3"], ["u1", "u2", "u3"], 4)
    assert len(picks) == 4 and len(set(picks)) == 4
    assert sum(p.startswith("u") for p in picks) == 2  # half user memories
    assert sorted(sample_cids(rng, [], ["u1", "u2"], 4)) == ["u1", "u2"]
    few_probes = sample_cids(rng, ["p1"], ["u1", "u2", "u3"], 3)  # topped up from users
    assert len(set(few_probes)) == 3 and "p1" in few_probes
    few_users = sample_cids(rng, ["p1", "p2", "p3"], ["u1"], 3)  # topped up from probes
    assert len(set(few_users)) == 3 and "u1" in few_users
    # deterministic for a seed (a redelivered tick issues the same challenges)
    assert sample_cids(random.Random(3), ["a", "b"], ["c", "d"], 2) == sample_cids(
        random.Random(3), ["a", "b"], ["c", "d"], 2
    )
    assert sample_cids(rng, [], [], 5) == []


def test_repairs_only_for_known_losses() -> None:
    """Not sampled yet is not lost; a failed proof or a prover that left the metagraph is."""
    peers = [Peer(uid, f"5Miner{uid}") for uid in range(5)]
    cid = "v1::" + "ab" * 32
    a, b, c = route(cid, peers)
    proj = ReplicationProjection()

    def verdict(p: Peer, passed: bool, *, replicated: bool = True) -> None:
        proj.apply(
            0,
            ProofVerified(
                challenge_id=f"{p.hotkey}-{passed}",
                miner_uid=p.uid,
                passed=passed,
                cid=cid,
                miner_hotkey=p.hotkey,
                replicated=replicated,
            ),
        )

    verdict(a, True)
    assert proj.status(cid, peers) is ReplicaStatus.CRITICAL  # b and c not sampled yet
    assert proj.repairs(peers) == []  # ... which is no loss
    verdict(b, False, replicated=False)  # a probe's verdict: not replication's business
    assert proj.repairs(peers) == []
    # a, the only prover, leaves the metagraph: its CID is copied from ... nobody proven
    assert proj.repairs([p for p in peers if p != a]) == []
    verdict(b, True)
    (gone,) = {r.target for r in proj.repairs([p for p in peers if p != a])} - {c}
    assert gone == route(cid, [p for p in peers if p != a])[2]
    verdict(c, False)  # c lost it: the next-closest miner (not a or b) gets a copy from a
    plans = proj.repairs(peers)
    assert [(r.source, r.target) for r in plans] == [(a, route(cid, peers, exclude={c.hotkey})[2])]
    assert proj.status(cid, peers) is ReplicaStatus.DEGRADED
    proj.apply(
        0,
        Repaired(
            request_id="r",
            round_id="r1",
            cid=cid,
            target_uid=plans[0].target.uid,
            target_hotkey=plans[0].target.hotkey,
            ok=True,
        ),
    )
    assert proj.repairs(peers) == []  # copied, awaiting its proof: not asked again


async def test_a_miner_taken_down_turns_its_cids_degraded_and_repair_brings_them_back(
    bus: Bus, miners: list[MinerNode]
) -> None:
    vali = Keypair.create_from_uri("//Alice")
    pub = bus.publisher
    chain = await LocalChain.open(bus.js, vali.ss58_address)
    await chain.register(stake=1000.0)
    by_hotkey: dict[str, MinerNode] = {}
    for n in miners:
        assert n.axon is not None
        hk = await _hotkey(n)
        by_hotkey[hk] = n
        await chain.register(hk)
        await chain.acting_as(hk).serve_axon(n.host, n.port)
    graph = await chain.metagraph()
    peers = peers_of(graph, exclude={vali.ss58_address})
    assert len(peers) == MINERS

    ledger = await ProbeLedger.open(bus.js)
    cfg = ValidatorConfig(challenges_per_miner=50, challenge_ttl_s=60)
    proj = ReplicationProjection()
    follow = ProjectionRunner(bus.js, proj, snapshot_every_events=10**9)
    async with MinerHttp(vali, timeout_s=10.0, max_inflight=16) as http:
        workers = [
            Worker(bus.js, consumer(name), handler, pub, fetch_wait_s=0.2)
            for name, handler in (
                ("validator-dispatcher", Dispatcher(http, pub).handle),
                ("validator-verifier", Verifier(ledger, pub).handle),
                ("validator-repairer", RepairWorker(chain, http, ledger, pub).handle),
            )
        ]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        tasks.append(asyncio.create_task(follow.run()))
        try:
            mv = miners[0].axon.embedder.model_version  # type: ignore[union-attr]
            client = RoutedClient(chain, http, ledger, mv)
            rng = np.random.default_rng(11)
            cids: dict[str, set[str]] = {}
            for i in range(8):
                got = await client.ingest(_unit(rng), {"user": i})
                assert not got.failed, got.failed
                assert got.stored == got.assigned == route(got.cid, peers)
                cids[got.cid] = {p.hotkey for p in got.stored}
                for hk, n in by_hotkey.items():  # exactly the routed miners hold it
                    assert (n.store.get(got.cid) is not None) == (hk in cids[got.cid])  # type: ignore[union-attr]

            challenger = Challenger(chain, ledger, pub, cfg, vali.public_key.hex())

            async def challenge_round(seq: int) -> int:
                tick = CadenceTicked(
                    cadence="challenge", seq=seq, period_s=300.0, validator=vali.ss58_address
                )
                issued = await challenger.issue(tick)
                ids = {c.challenge_id for c in issued}

                async def verdicts() -> int:
                    done = await events_of(bus.js, "VALIDATION", ProofVerified)
                    return len(ids & {v.challenge_id for v in done})  # type: ignore[attr-defined]

                await until(lambda: _eq(verdicts(), len(ids)), timeout=60)
                await follow.catch_up()
                return len(ids)

            # round 1: every replica proves its memory; user memories were challenged
            assert await challenge_round(1) == sum(len(h) for h in cids.values())
            for cid in cids:
                assert proj.status(cid, peers) is ReplicaStatus.HEALTHY
            assert await RepairPlanner(chain, proj, pub).plan("r1") == []

            # take down the miner holding the most memories
            down = max(by_hotkey, key=lambda hk: sum(hk in h for h in cids.values()))
            lost = sorted(c for c, h in cids.items() if down in h)
            assert lost
            await by_hotkey[down].stop()

            await challenge_round(2)
            counts = proj.counts(peers)
            assert counts["DEGRADED"] == len(lost), counts
            assert counts["HEALTHY"] == len(cids) - len(lost), counts
            for cid in lost:
                assert proj.status(cid, peers) is ReplicaStatus.DEGRADED

            # the planner asks for a copy to the next-closest miner, the repairer makes it
            planner = RepairPlanner(chain, proj, pub)
            requested = await planner.plan("r2")
            assert sorted(r.cid for r in requested) == lost
            for r in requested:
                (newcomer,) = {p.hotkey for p in route(r.cid, peers, exclude={down})} - cids[r.cid]
                assert r.target_hotkey == newcomer and r.source_hotkey != down

            async def repaired() -> int:
                return len(await events_of(bus.js, "VALIDATION", Repaired))

            await until(lambda: _eq(repaired(), len(requested)), timeout=60)
            outcomes = await events_of(bus.js, "VALIDATION", Repaired)
            assert all(o.ok for o in outcomes), outcomes  # type: ignore[attr-defined]
            for r in requested:
                assert by_hotkey[r.target_hotkey].store.get(r.cid) is not None  # type: ignore[union-attr]
            await follow.catch_up()
            assert await planner.plan("r2-again") == []  # done, awaiting proof: not again

            # round 3: the new replicas prove the memories (v2, the validator's vector)
            await challenge_round(3)
            counts = proj.counts(peers)
            assert counts["HEALTHY"] == len(cids), counts
        finally:
            for w in workers:
                w.stop()
            follow.stop()
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()


async def _eq(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


async def _hotkey(n: MinerNode) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{n.url}/health") as r:
        return str((await r.json())["hotkey_ss58"])
