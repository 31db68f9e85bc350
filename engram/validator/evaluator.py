"""The evaluator: recall@10 against the validator's own exact search, latency measured by
the validator (worker ``validator-evaluator`` on the ``evaluation`` ticks).

For every miner with an axon, each round:

1. fresh probe notes and held-out queries (:mod:`engram.validator.probes`), embedded by
   the validator itself;
2. the notes are ingested to the miner as raw embeddings in a fresh namespace, signed by a
   fresh *ephemeral* client key (never the validator's hotkey), like any user's traffic;
   the CID the miner returns must equal the one the validator computes (engram-core),
   and each accepted probe goes to the probe ledger (the challenger draws from it);
3. each query is sent as text, signed by the same ephemeral key; recall@10 = the share of
   the validator's exact top-10 (cosine over the round's probes, float32) among the
   miner's 10 results; a failed query scores recall 0 and no latency;
4. one ``RecallSampled`` per (round, miner) carries every query's recall and latency.

A miner that forwards queries elsewhere (a copycat) gets no credit: nobody else holds
the probes of its namespace.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from engram.chain.base import Chain, Neuron
from engram.core import compute_cid
from streams.events import CadenceTicked, RecallSampled
from streams.publisher import Publisher
from streams.worker import Delivery

from .challenges import stale
from .http import MinerHttp
from .ledger import ProbeLedger
from .probes import make_probes

__all__ = ["Evaluator", "exact_top_k", "recall_at_k"]

log = structlog.get_logger("engram.validator.evaluator")

Embed = Callable[[Sequence[str]], npt.NDArray[np.float32]]


def exact_top_k(
    matrix: npt.NDArray[np.float32], query: npt.NDArray[np.float32], k: int
) -> list[int]:
    """Row indices of the ``k`` highest inner products (ties to the lower index)."""
    scores = matrix @ query
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[:k]


def recall_at_k(truth: Sequence[str], got: Sequence[str], k: int = 10) -> float:
    """|truth ∩ got[:k]| / |truth| (1 when truth is empty)."""
    want = set(truth[:k])
    if not want:
        return 1.0
    return len(want & set(got[:k])) / len(want)


def _keypair() -> Any:
    from bittensor_core import Keypair

    return Keypair.create_from_seed(secrets.token_bytes(32))


@dataclass
class Evaluator:
    chain: Chain
    ledger: ProbeLedger
    publisher: Publisher
    http: MinerHttp
    embed: Embed
    model_version: str
    docs_per_round: int = 16
    queries_per_round: int = 4
    top_k: int = 10

    async def handle(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if isinstance(d.event, CadenceTicked) and d.event.cadence == "evaluation":
                if stale(d.event):
                    log.info("stale evaluation tick skipped", seq=d.event.seq)
                    continue
                await self.evaluate(d.event)

    async def evaluate(self, tick: CadenceTicked) -> list[RecallSampled]:
        graph = await self.chain.metagraph()
        round_id = f"{tick.validator}:evaluation:{tick.seq}"
        miners = [n for n in graph.neurons if n.axon and n.hotkey != self.chain.hotkey]
        samples = await asyncio.gather(*(self.probe(round_id, tick, n) for n in miners))
        if samples:
            await self.publisher.publish_many(samples)
        log.info("recall sampled", round_id=round_id, miners=len(samples))
        return list(samples)

    async def probe(self, round_id: str, tick: CadenceTicked, n: Neuron) -> RecallSampled:
        assert n.axon is not None
        probes = make_probes(self.docs_per_round, self.queries_per_round)
        vecs = await asyncio.to_thread(self.embed, list(probes.docs) + list(probes.queries))
        doc_vecs = np.ascontiguousarray(vecs[: len(probes.docs)], dtype=np.float32)
        query_vecs = vecs[len(probes.docs) :]
        client = _keypair()
        namespace = f"n{secrets.token_hex(8)}"

        async def ingest(i: int) -> str | None:
            meta = {"note": probes.docs[i]}
            r = await self.http.post(
                n.axon or "",
                "/IngestSynapse",
                {
                    "raw_embedding": doc_vecs[i].tolist(),
                    "metadata": meta,
                    "model_version": self.model_version,
                    "namespace": namespace,
                },
                receiver=n.hotkey,
                keypair=client,
            )
            want = compute_cid(doc_vecs[i], meta, self.model_version)
            return want if r.ok and r.body.get("cid") == want else None

        cids = await asyncio.gather(*(ingest(i) for i in range(len(probes.docs))))
        stored = [(c, doc_vecs[i]) for i, c in enumerate(cids) if c is not None]
        if stored:
            await self.ledger.record_many(n.hotkey, stored)
        recalls: list[float] = []
        latencies: list[float | None] = []
        for q_text, q_vec in zip(probes.queries, query_vecs, strict=True):
            # ground truth: exact search over every probe we *asked* the miner to store
            truth = [
                compute_cid(doc_vecs[i], {"note": probes.docs[i]}, self.model_version)
                for i in exact_top_k(doc_vecs, q_vec, self.top_k)
            ]
            r = await self.http.post(
                n.axon or "",
                "/QuerySynapse",
                {"query_text": q_text, "top_k": self.top_k, "namespace": namespace},
                receiver=n.hotkey,
                keypair=client,
            )
            if not r.ok:
                recalls.append(0.0)
                latencies.append(None)
                continue
            got = [str(x.get("cid")) for x in r.body.get("results") or [] if isinstance(x, dict)]
            recalls.append(recall_at_k(truth, got, self.top_k))
            latencies.append(r.latency_ms)
        measured = [x for x in latencies if x is not None]
        return RecallSampled(
            causation_id=tick.event_id,
            round_id=round_id,
            miner_uid=n.uid,
            miner_hotkey=n.hotkey,
            recall_at_10=sum(recalls) / len(recalls) if recalls else 0.0,
            latency_ms=sum(measured) / len(measured) if measured else 0.0,
            queries=len(recalls),
            recalls=recalls,
            latencies_ms=latencies,
        )
