"""The evaluator against a real miner node: fresh probes under an ephemeral key, recall@10
against the validator's exact search, latency measured by the validator; plus the pure
recall and exact-search helpers."""

from __future__ import annotations

import numpy as np
import pytest
from bittensor_core import Keypair

from engram.bus import Bus
from engram.chain import LocalChain
from engram.miner.embedder import Embedder
from engram.miner.node import MinerNode
from engram.validator.evaluator import Evaluator, exact_top_k, recall_at_k
from engram.validator.http import MinerHttp
from engram.validator.ledger import ProbeLedger
from engram.validator.probes import make_probes
from streams.events import CadenceTicked, RecallSampled

from .helpers import events_of


@pytest.mark.parametrize(
    ("truth", "got", "want"),
    [
        (["a", "b"], ["b", "a"], 1.0),
        (["a", "b", "c", "d"], ["a", "x", "c"], 0.5),
        (["a"], [], 0.0),
        ([], ["a"], 1.0),
        ([str(i) for i in range(12)], [str(i) for i in range(10)], 1.0),  # only the top 10 count
    ],
)
def test_recall_at_k(truth: list[str], got: list[str], want: float) -> None:
    assert recall_at_k(truth, got) == want


def test_exact_top_k_orders_by_inner_product_ties_to_lower_index() -> None:
    m = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    assert exact_top_k(m, np.array([1, 0], dtype=np.float32), 3) == [0, 2, 3]


def test_probes_are_fresh_every_round_and_queries_are_held_out() -> None:
    a, b = make_probes(16, 4), make_probes(16, 4)
    assert len(set(a.docs)) == 16 and not set(a.docs) & set(b.docs)
    assert not set(a.queries) & set(a.docs)


async def test_an_honest_miner_recalls_the_probes(
    bus: Bus, node: MinerNode, embedder: Embedder
) -> None:
    vali = Keypair.create_from_uri("//Alice")
    async with MinerHttp(vali, timeout_s=20.0, max_inflight=8) as http:
        r = await http._http().get(f"{node.url}/health")
        miner_hotkey = (await r.json())["hotkey_ss58"]
        r.release()
        chain = await LocalChain.open(bus.js, vali.ss58_address)
        await chain.register(stake=1000.0)
        uid = await chain.register(miner_hotkey)
        await chain.acting_as(miner_hotkey).serve_axon(node.host, node.port)
        ledger = await ProbeLedger.open(bus.js)
        ev = Evaluator(
            chain,
            ledger,
            bus.publisher,
            http,
            embedder.embed,
            embedder.model_version,
            docs_per_round=16,
            queries_per_round=4,
        )
        tick = CadenceTicked(cadence="evaluation", seq=3, period_s=120, validator=vali.ss58_address)
        (sample,) = await ev.evaluate(tick)
    assert sample.miner_uid == uid and sample.queries == 4
    assert len(sample.recalls) == 4 and all(
        lat is not None and lat > 0 for lat in sample.latencies_ms
    )
    assert sample.recall_at_10 >= 0.9, sample.recalls
    assert len(await ledger.cids_for(miner_hotkey)) == 16
    (on_bus,) = await events_of(bus.js, "VALIDATION", RecallSampled)
    assert on_bus.round_id == f"{vali.ss58_address}:evaluation:3"  # type: ignore[attr-defined]
