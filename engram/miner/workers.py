"""The embed worker: ``IngestRequested`` batches → vectors + CIDs → ``Embedded`` events.

One job per worker (STYLE.md): the runner (:class:`streams.worker.Worker`) owns fetching,
acks, retries and dead letters; :class:`EmbedHandler` only validates, embeds and publishes.
An invalid request (text over the limit, bad metadata, a model this miner does not serve)
is dead-lettered with the reason; a publish failure makes the whole batch retry.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from engram import core as _core
from streams.events import Embedded, IngestRequested
from streams.publisher import Publisher
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

from .embedder import Embedder
from .limits import check_ingest

__all__ = ["EMBED_CONSUMER", "EmbedHandler", "make_embed_worker"]

log = structlog.get_logger("engram.miner.embed")

EMBED_CONSUMER = ConsumerSpec(
    "embedder", "INGEST", ("engram.ingest.requested",), description="embed worker"
)


@dataclass
class EmbedHandler:
    embedder: Embedder
    publisher: Publisher
    producer: str = ""
    embedded: int = 0
    rejected: int = 0
    embed_seconds: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _reason(self, ev: object) -> str | None:
        if not isinstance(ev, IngestRequested):
            return f"the embed worker does not handle {type(ev).__name__} events"
        if ev.model_version and ev.model_version != self.embedder.model_version:
            return (
                f"model_version {ev.model_version!r} is not served by this miner "
                f"(it embeds with {self.embedder.model_version!r})"
            )
        return check_ingest(ev.text, ev.metadata, ev.namespace)

    async def __call__(self, deliveries: list[Delivery]) -> None:
        good: list[Delivery] = []
        for d in deliveries:
            reason = self._reason(d.event)
            if reason:
                d.poison(reason)
                self.rejected += 1
            else:
                good.append(d)
        if not good:
            return
        reqs: list[IngestRequested] = [d.event for d in good]  # type: ignore[misc]
        mv = self.embedder.model_version
        async with self._lock:  # one batch on the CPU at a time; the next one is prefetched
            t0 = time.perf_counter()
            matrix = await asyncio.to_thread(self.embedder.embed, [r.text for r in reqs])
            self.embed_seconds += time.perf_counter() - t0
        try:
            cids = _core.compute_cids(matrix, [r.metadata for r in reqs], mv)
        except ValueError:
            cids = []
            for i, r in enumerate(reqs):  # find the culprit(s); keep the rest
                try:
                    cids.append(_core.compute_cids(matrix[i : i + 1], [r.metadata], mv)[0])
                except ValueError as exc:
                    good[i].poison(f"cannot compute the CID: {exc}")
                    cids.append("")
        events = [
            Embedded(
                cid=cid,
                vector=matrix[i].astype("<f4").tobytes(),
                dim=int(matrix.shape[1]),
                metadata=r.metadata,
                namespace=r.namespace,
                model_version=mv,
                request_id=r.request_id,
                text=r.text,
                producer=self.producer,
                causation_id=r.event_id,
            )
            for i, (r, cid) in enumerate(zip(reqs, cids, strict=True))
            if cid
        ]
        await self.publisher.publish_many(events)  # raises → the batch is retried
        self.embedded += len(events)


def make_embed_worker(
    js: object,
    publisher: Publisher,
    embedder: Embedder,
    *,
    producer: str = "",
    batch: int = 64,
    fetch_wait_s: float = 0.05,
    max_deliver: int = 5,
    backoff_s: tuple[float, ...] = (0.5, 2.0, 8.0, 30.0),
    replicas: int = 1,
) -> tuple[Worker, EmbedHandler]:
    handler = EmbedHandler(embedder, publisher, producer)
    worker = Worker(
        js=js,  # type: ignore[arg-type]
        spec=EMBED_CONSUMER,
        handler=handler,
        publisher=publisher,
        batch=batch,
        fetch_wait_s=fetch_wait_s,
        concurrency=2,
        max_deliver=max_deliver,
        backoff_s=backoff_s,
        replicas=replicas,
    )
    return worker, handler
