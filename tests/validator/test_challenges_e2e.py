"""Challenges end to end against a real miner node: the challenger picks CIDs from the
probe ledger, the dispatcher calls the miner's axon with signed requests, the verifier
checks the proofs with engram-core; a CID the miner never got fails with its reason."""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest
from bittensor_core import Keypair

from engram.bus import Bus
from engram.chain import LocalChain
from engram.config import Settings
from engram.core import compute_cid
from engram.miner.node import MinerNode
from engram.validator.challenges import Challenger, Dispatcher, Verifier
from engram.validator.config import ValidatorConfig
from engram.validator.http import MinerHttp
from engram.validator.ledger import ProbeLedger
from streams.events import CadenceTicked, ChallengeAnswered, ChallengeIssued, ProofVerified
from streams.topology import consumer
from streams.worker import Worker

from .helpers import events_of, until


@pytest.fixture
def miner_settings(settings: Settings) -> Settings:
    """This miner's operator answers seed (v1) challenges too (``ENGRAM_AXON_PROOF_VERSIONS``)."""
    return msgspec.structs.replace(
        settings,
        embed_batch=32,
        embed_batch_wait_s=0.02,
        snapshot_every_events=50,
        axon_proof_versions=[1, 2],
        # signed (the default), trusting the test's validator (//Alice) to challenge
        axon_auth="signed",
        axon_validators=["5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"],
    )


def _unit(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.mark.parametrize("version", [2, 1])
async def test_challenge_round_against_a_real_miner(
    bus: Bus, node: MinerNode, version: int
) -> None:
    vali = Keypair.create_from_uri("//Alice")
    async with MinerHttp(vali, timeout_s=10.0, max_inflight=8) as http:
        health = await http._http().get(f"{node.url}/health")
        miner_hotkey = (await health.json())["hotkey_ss58"]
        health.release()

        chain = await LocalChain.open(bus.js, vali.ss58_address)
        await chain.register(stake=1000.0)
        uid = await chain.register(miner_hotkey)
        await chain.acting_as(miner_hotkey).serve_axon(node.host, node.port)

        # ingest three probes under an ephemeral client key; check the CIDs independently
        ledger = await ProbeLedger.open(bus.js)
        client = Keypair.create_from_uri("//EphemeralProbe1")
        axon = f"{node.host}:{node.port}"
        for i in range(3):
            vec = _unit(i)
            meta = {"n": i}
            r = await http.post(
                axon,
                "/IngestSynapse",
                {"raw_embedding": vec.tolist(), "metadata": meta},
                receiver=miner_hotkey,
                keypair=client,
            )
            assert r.ok, r
            assert r.body["cid"] == compute_cid(vec, meta, node.axon.embedder.model_version)  # type: ignore[union-attr]
            await ledger.record(miner_hotkey, r.body["cid"], vec)
        missing = "v1::" + "00" * 32
        await ledger.record(miner_hotkey, missing, _unit(99))

        cfg = ValidatorConfig(challenges_per_miner=4, proof_version=version)
        pub = bus.publisher
        challenger = Challenger(chain, ledger, pub, cfg, vali.public_key.hex())
        workers = [
            Worker(
                bus.js, consumer("validator-challenger"), challenger.handle, pub, fetch_wait_s=0.2
            ),
            Worker(
                bus.js,
                consumer("validator-dispatcher"),
                Dispatcher(http, pub).handle,
                pub,
                fetch_wait_s=0.2,
            ),
            Worker(
                bus.js,
                consumer("validator-verifier"),
                Verifier(ledger, pub).handle,
                pub,
                fetch_wait_s=0.2,
            ),
        ]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            await pub.publish(
                CadenceTicked(cadence="challenge", seq=1, period_s=300, validator=vali.ss58_address)
            )
            await until(lambda: _count(bus, ProofVerified, 4), timeout=60)
        finally:
            for w in workers:
                w.stop()
            await asyncio.gather(*tasks)

    issued = await events_of(bus.js, "VALIDATION", ChallengeIssued)
    answered = await events_of(bus.js, "VALIDATION", ChallengeAnswered)
    verified = await events_of(bus.js, "VALIDATION", ProofVerified)
    assert len(issued) == len(answered) == len(verified) == 4
    assert all(c.miner_uid == uid and c.proof_version == version for c in issued)  # type: ignore[attr-defined]
    assert all(a.latency_ms > 0 for a in answered)  # type: ignore[attr-defined]
    by_cid = {v.cid: v for v in verified}  # type: ignore[attr-defined]
    assert not by_cid[missing].passed and "404" in by_cid[missing].reason
    assert sum(v.passed for v in verified) == 3  # type: ignore[attr-defined]


async def _count(bus: Bus, kind: type, n: int) -> bool:
    return len(await events_of(bus.js, "VALIDATION", kind)) >= n
