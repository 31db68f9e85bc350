"""Replication on the log and a real repair between two real miner nodes: the projection
follows verdicts to a status, plans a copy from the confirmed replica to the assigned miner
without one, and the repairer copies it (verified against its CID) so the new replica
answers a v2 challenge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from bittensor_core import Keypair

from engram.bus import Bus
from engram.chain import LocalChain
from engram.config import Settings
from engram.core import compute_cid, new_challenge, verify_proof
from engram.miner.node import MinerNode, cache_dir
from engram.validator.http import MinerHttp
from engram.validator.repair import Repairer, ReplicationProjection, peers_of
from engram.validator.replication import ReplicaStatus
from streams.events import ProofVerified
from streams.projection import ProjectionRunner


@pytest.fixture
async def node_b(tmp_path: Path, model_cache: Path) -> AsyncIterator[MinerNode]:
    """A second miner: its own data and its own embedded NATS."""
    s = Settings(
        data_dir=str(tmp_path / "miner-b"), node_id="miner-b", embed_batch=32, axon_auth="open"
    )
    cache = cache_dir(s)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(model_cache, target_is_directory=True)
    n = MinerNode(s, port=0, ingest_wait_s=15.0)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def _hotkey(http: MinerHttp, node: MinerNode) -> str:
    r = await http.get(f"{node.host}:{node.port}", "/health", receiver=None)
    assert "hotkey_ss58" in r.body, r
    return str(r.body["hotkey_ss58"])


async def test_repair_copies_a_verified_replica_to_the_assigned_miner(
    bus: Bus, node: MinerNode, node_b: MinerNode
) -> None:
    vali = Keypair.create_from_uri("//Alice")
    async with MinerHttp(vali, timeout_s=20.0, max_inflight=4) as http:
        a, b = await _hotkey(http, node), await _hotkey(http, node_b)
        chain = await LocalChain.open(bus.js, vali.ss58_address)
        await chain.register(stake=1000.0)
        for hk, n in ((a, node), (b, node_b)):
            await chain.register(hk)
            await chain.acting_as(hk).serve_axon(n.host, n.port)
        graph = await chain.metagraph()
        peers = peers_of(graph)
        assert {p.hotkey for p in peers} == {a, b}

        vec = np.random.default_rng(5).standard_normal(384).astype(np.float32)
        vec /= np.linalg.norm(vec)
        meta = {"note": "only on A"}
        mv = node.axon.embedder.model_version  # type: ignore[union-attr]
        r = await http.post(
            f"{node.host}:{node.port}",
            "/IngestSynapse",
            {"raw_embedding": vec.tolist(), "metadata": meta},
            receiver=a,
        )
        cid = r.body["cid"]
        assert cid == compute_cid(vec, meta, mv)

        # the log: A proved it, B failed it (it never got it)
        await bus.publisher.publish_many(
            [
                ProofVerified(
                    challenge_id="c1",
                    miner_uid=1,
                    passed=True,
                    cid=cid,
                    miner_hotkey=a,
                    replicated=True,
                ),
                ProofVerified(
                    challenge_id="c2",
                    miner_uid=2,
                    passed=False,
                    cid=cid,
                    miner_hotkey=b,
                    replicated=True,
                ),
                ProofVerified(
                    challenge_id="c3",
                    miner_uid=2,
                    passed=False,
                    cid=cid,
                    miner_hotkey=b,
                    void=True,
                    replicated=True,
                ),  # not counted either way
            ]
        )
        proj = ReplicationProjection()
        await ProjectionRunner(bus.js, proj).catch_up()
        assert proj.status(cid, peers) is ReplicaStatus.CRITICAL
        assert proj.counts(peers)["CRITICAL"] == 1
        # B failed: routing skips it, and with two miners nobody else can take the copy
        assert proj.repairs(peers) == []
        # B comes back clean (its failed verdict forgotten): the plan copies A -> B
        proj.verdicts[cid].pop(b)
        (plan,) = proj.repairs(peers)
        assert plan.source.hotkey == a and plan.target.hotkey == b

        outcome = await Repairer(http, graph).repair(plan)
        assert outcome.ok, outcome.reason

        # B now proves it with a v2 proof against the vector the client embedded
        c = new_challenge(cid, vali.public_key.hex(), ttl_s=60)
        ans = await http.post(
            f"{node_b.host}:{node_b.port}", "/ChallengeSynapse", c.as_dict(), receiver=b
        )
        assert ans.ok, ans
        assert verify_proof(c, ans.body["proof"], vec=vec)

        await bus.publisher.publish(
            ProofVerified(
                challenge_id="c4",
                miner_uid=2,
                passed=True,
                cid=cid,
                miner_hotkey=b,
                replicated=True,
            )
        )
        await ProjectionRunner(bus.js, proj).catch_up()
        assert proj.status(cid, peers) is ReplicaStatus.DEGRADED  # 2 of 3


async def test_a_repair_from_a_source_without_the_cid_copies_nothing(
    bus: Bus, node: MinerNode
) -> None:
    from engram.validator.replication import Repair
    from engram.validator.routing import Peer

    vali = Keypair.create_from_uri("//Alice")
    async with MinerHttp(vali, timeout_s=20.0, max_inflight=4) as http:
        a = await _hotkey(http, node)
        chain = await LocalChain.open(bus.js, vali.ss58_address)
        await chain.register(a)
        await chain.acting_as(a).serve_axon(node.host, node.port)
        await chain.register("5Target")
        await chain.acting_as("5Target").serve_axon("127.0.0.1", 9)
        graph = await chain.metagraph()
        vec = np.ones(384, dtype=np.float32) / np.sqrt(384)
        r = await http.post(
            f"{node.host}:{node.port}",
            "/IngestSynapse",
            {"raw_embedding": vec.tolist(), "metadata": {"k": 1}},
            receiver=a,
        )
        real = r.body["cid"]
        # the source does not hold this CID: nothing reaches the target (nothing listens
        # there; a copy attempt would fail with a connection error instead)
        other = Repair(cid=real[:-4] + "0000", source=Peer(0, a), target=Peer(1, "5Target"))
        out = await Repairer(http, graph).repair(other)
        assert not out.ok and out.reason.startswith("source: HTTP 404")
