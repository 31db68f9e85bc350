"""The embed worker: ``IngestRequested`` batches → vectors + CIDs → ``Embedded`` events.

One job per worker (STYLE.md): the runner (:class:`streams.worker.Worker`) owns fetching,
acks, retries and dead letters; :class:`EmbedHandler` only validates, embeds and publishes.
An invalid request (text over the limit, bad metadata, a model this miner does not serve)
is dead-lettered with the reason; a publish failure makes the whole batch retry.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import structlog

from engram import core as _core
from streams.events import Embedded, IngestRejected, IngestRequested
from streams.publisher import Publisher
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

from .embedder import BATCHES_PER_LANE, Embedder, Matrix, trim_memory
from .limits import check_ingest

__all__ = ["EMBED_CONSUMER", "SORT_WINDOW", "EmbedHandler", "make_embed_worker"]

log = structlog.get_logger("engram.miner.embed")

#: Requests fetched (when that many are waiting) and sorted by length together. A window
#: of 256 left the pipeline at ~0.75 of a corpus-wide sort; 2048 reaches ~0.9 of it. Under
#: light load a fetch returns what is there, so a big window adds no latency.
SORT_WINDOW = 2048
#: A window takes in batches that arrive while it is embedded, up to this many requests.
MAX_WINDOW = 2 * SORT_WINDOW
#: Fetched batches in flight per worker: one embedding, the others waiting to be merged.
CONCURRENCY = 8
#: After a window, give freed heap back to the OS at most this often: glibc keeps the
#: peak of a window's messages, events and tensors otherwise (RSS ~+150 MiB after 2,000
#: texts; back to idle + the index after ``malloc_trim``).
TRIM_INTERVAL_S = 1.0
#: A window smaller than one step waits while more requests keep arriving (a gap of
#: ``LINGER_GAP_S`` ends the wait, ``LINGER_MAX_S`` bounds it): a client's batch committed
#: at once still reaches the worker as a few fetches a millisecond or two apart, and
#: embedding the first of them alone left the rest for a second, half-empty window.
LINGER_GAP_S = 0.003
LINGER_MAX_S = 0.02
#: A window of at most one step is embedded in arrival (stream) order, this many model
#: batches per lane at a time, rather than as one length-sorted step: the requests that
#: came first are published (and stored) while the rest embeds, so their clients send
#: more while the model still works. As one step, the ``/IngestBatch`` requests of a window
#: all finished together and the model idled while their clients sent the next ones
#: (64 texts per request, 4 in flight: 0.57x the pipeline's rate).
PART_BATCHES_PER_LANE = 1
#: Steps handed to the lanes at once (see ``_embed_window``).
EMBED_AHEAD = 2

EMBED_CONSUMER = ConsumerSpec(
    "embedder",
    "INGEST",
    ("engram.ingest.requested",),
    description="embed worker",
    # CONCURRENCY windows in flight per worker (one embedding, the rest prefetched)
    max_ack_pending=4 * SORT_WINDOW,
)


@dataclass(eq=False)
class _Part:
    """One handler call's deliveries inside a window: its future is settled (and the runner
    acks them) as soon as all of them are published, not when the whole window is."""

    left: int
    done: asyncio.Future[None]

    def settle(self, n: int = 1) -> None:
        self.left -= n
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)


#: a delivery, its handler call, and the text's length as the model pads it
_Item = tuple[Delivery, _Part, int]


def _fail(group: list[_Part], exc: BaseException) -> None:
    for part in group:
        fut = part.done
        if fut.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(exc)


def _text_len(item: _Item) -> int:
    return item[2]


def _arrival(item: _Item) -> int:
    return item[0].stream_seq


@dataclass
class EmbedHandler:
    embedder: Embedder
    publisher: Publisher
    producer: str = ""
    embedded: int = 0
    rejected: int = 0
    embed_seconds: float = 0.0
    _embedding: bool = False  # a window is on the CPU (one at a time)
    _window_over: asyncio.Event = field(default_factory=asyncio.Event)
    _waiting: list[tuple[list[Delivery], list[int], asyncio.Future[None]]] = field(
        default_factory=list
    )
    _last_trim: float = 0.0
    _behind: int = 0  # messages the server held back for this consumer at the last fetch
    _embeds: int = 0  # steps on the lanes now
    _busy_since: float = 0.0

    def _reason(self, ev: object) -> str | None:
        if not isinstance(ev, IngestRequested):
            return f"the embed worker does not handle {type(ev).__name__} events"
        if ev.model_version and ev.model_version != self.embedder.model_version:
            return (
                f"model_version {ev.model_version!r} is not served by this miner "
                f"(it embeds with {self.embedder.model_version!r})"
            )
        return check_ingest(ev.text, ev.metadata, ev.namespace, self.embedder.model_version)

    async def _reject(self, refused: list[tuple[Delivery, str]]) -> None:
        """Dead-letter refused requests, and tell their clients: an ``IngestRejected`` on
        MEMORY (the store records it; ``GET /ingest/{id}`` answers it). Published before
        the dead letter, so an accepted ingest always ends stored or reported."""
        notices = [
            IngestRejected(
                request_id=d.event.request_id,
                reason=reason[:500],
                caller=d.event.caller,
                namespace=d.event.namespace,
                producer=self.producer,
                causation_id=d.event.event_id,
            )
            for d, reason in refused
            if isinstance(d.event, IngestRequested)
        ]
        if notices:
            await self.publisher.publish_many(notices)  # raises → the batch is retried
        for d, reason in refused:
            d.poison(reason)
            self.rejected += 1

    async def __call__(self, deliveries: list[Delivery]) -> None:
        good: list[Delivery] = []
        refused: list[tuple[Delivery, str]] = []
        for d in deliveries:
            reason = self._reason(d.event)
            if reason:
                refused.append((d, reason))
            else:
                good.append(d)
        if refused:
            await self._reject(refused)
        if not good:
            return
        # the server's count of messages still waiting for this consumer: more of a burst
        # is on its way (see ``_linger``)
        self._behind = good[-1].msg.metadata.num_pending or 0
        # Batches that arrive while the model is busy wait in ``_waiting``; whichever call
        # gets the model next embeds all of them as one window, taking in batches that
        # arrive meanwhile too (a burst that came as many small fetches is still sorted
        # together), and settles each call's future once its deliveries are published.
        # word pieces per text (the window sorts by them), counted off the loop
        texts = [d.event.text for d in good]  # type: ignore[attr-defined]
        lengths = await asyncio.to_thread(self.embedder.lengths, texts)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((good, lengths, done))
        while not done.done():
            if self._embedding:  # the running window takes ours in, or we run the next
                over = asyncio.ensure_future(self._window_over.wait())
                try:
                    await asyncio.wait((done, over), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    over.cancel()
                continue
            if self._waiting:
                await self._run_window()
            else:  # ours is in the last publish of a window that has left the CPU
                await asyncio.wait((done,))
        await done  # raises → this batch is retried

    async def _run_window(self) -> None:
        """Embed one window (one at a time on the CPU) and settle its calls' futures."""
        group: list[_Part] = []
        last: asyncio.Task[None] | None = None
        self._embedding = True
        self._window_over.clear()
        try:
            try:
                last = await self._embed_window(group)
            finally:
                self._embedding = False
                self._window_over.set()
            if last is not None:  # the last step publishes while the next window embeds
                await last
                await self._maybe_trim()
        except BaseException as exc:
            _fail(group, exc)
            raise
        for part in group:
            if not part.done.done():
                part.done.set_result(None)

    async def _maybe_trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim >= TRIM_INTERVAL_S:
            self._last_trim = now
            await asyncio.to_thread(trim_memory)

    def _take_waiting(self, group: list[_Part]) -> list[_Item]:
        taken, self._waiting = self._waiting, []
        items: list[_Item] = []
        for g, lengths, fut in taken:
            part = _Part(len(g), fut)
            group.append(part)
            items.extend((d, part, n) for d, n in zip(g, lengths, strict=True))
        return items

    async def _embed_window(self, group: list[_Part]) -> asyncio.Task[None] | None:
        """Embed the window a step at a time and publish each step while the next is
        embedded. A window bigger than a step is sorted by length (MEASURED.md: padding
        to the longest text in a model batch dominates the cost); a smaller one goes in
        arrival order, in parts (``PART_BATCHES_PER_LANE``), so that its first requests
        finish first. Returns the publish of the last step, still running."""
        bs = max(self.embedder.batch_size, 1)
        lanes = self.embedder.lanes
        # a few model batches per lane per step: the embedder keeps the configured batch
        # size for a step this big (split_batch_size) and cuts only a smaller window finer
        step = bs * lanes * BATCHES_PER_LANE
        part = bs * lanes * PART_BATCHES_PER_LANE
        await self._linger(step)
        todo = self._take_waiting(group)
        size = len(todo)
        publishing: asyncio.Task[None] | None = None
        # two steps in flight: the lanes start the next step as each one runs out of
        # batches of the current one (an ``embed`` call ends with one lane idle while the
        # other finishes its last batch: about half a batch of four per lane, ~6%)
        running: deque[tuple[list[_Item], asyncio.Future[Matrix]]] = deque()
        try:
            while todo or running:
                while todo and len(running) < EMBED_AHEAD:
                    if self._waiting and size < MAX_WINDOW:  # bounded: long texts not starved
                        more = self._take_waiting(group)
                        todo.extend(more)
                        size += len(more)
                    if len(todo) > step:
                        todo.sort(key=_text_len)
                        chunk, todo = todo[:step], todo[step:]
                    else:
                        todo.sort(key=_arrival)
                        chunk, todo = todo[:part], todo[part:]
                    texts = [d.event.text for d, _, _ in chunk]  # type: ignore[attr-defined]
                    lengths = [n for _, _, n in chunk]
                    running.append((chunk, self._embed(texts, bs, lengths)))
                chunk, embedding = running.popleft()
                matrix = await embedding
                if publishing is not None:
                    await publishing  # raises → the window is retried
                publishing = asyncio.create_task(self._publish(chunk, matrix))
        except BaseException:
            if publishing is not None and not publishing.done():
                publishing.cancel()
            for _, embedding in running:
                embedding.cancel()
            raise
        return publishing

    def _embed(self, texts: list[str], bs: int, lengths: list[int]) -> asyncio.Future[Matrix]:
        """Start embedding ``texts`` on the lanes; ``embed_seconds`` counts the time at
        least one step was embedding."""
        if self._embeds == 0:
            self._busy_since = time.perf_counter()
        self._embeds += 1
        fut = asyncio.ensure_future(asyncio.to_thread(self.embedder.embed, texts, bs, lengths))

        def done(_: object) -> None:
            self._embeds -= 1
            if self._embeds == 0:
                self.embed_seconds += time.perf_counter() - self._busy_since

        fut.add_done_callback(done)
        return fut

    async def _linger(self, step: int) -> None:
        """Wait (briefly) while the window is under a step and requests keep arriving, or
        the server says more are waiting (a client's batch committed at once reaches the
        worker as a few fetches a few milliseconds apart)."""
        deadline = time.monotonic() + LINGER_MAX_S
        seen = sum(len(g) for g, _, _ in self._waiting)
        while seen < step and time.monotonic() < deadline:
            await asyncio.sleep(LINGER_GAP_S)
            now = sum(len(g) for g, _, _ in self._waiting)
            if now == seen and not self._behind:
                return
            seen = now

    async def _publish(self, items: list[_Item], matrix: Matrix) -> None:
        chunk = [d for d, _, _ in items]
        reqs: list[IngestRequested] = [d.event for d in chunk]  # type: ignore[misc]
        mv = self.embedder.model_version
        try:
            cids = _core.compute_cids(matrix, [r.metadata for r in reqs], mv)
        except ValueError:
            cids = []
            refused: list[tuple[Delivery, str]] = []
            for i, r in enumerate(reqs):  # find the culprit(s); keep the rest
                try:
                    cids.append(_core.compute_cids(matrix[i : i + 1], [r.metadata], mv)[0])
                except ValueError as exc:
                    refused.append((chunk[i], f"cannot compute the CID: {exc}"))
                    cids.append("")
            await self._reject(refused)
        vectors = matrix.astype("<f4", copy=False)
        events = [
            Embedded(
                cid=cid,
                vector=vectors[i].tobytes(),
                dim=int(matrix.shape[1]),
                metadata=r.metadata,
                namespace=r.namespace,
                model_version=mv,
                request_id=r.request_id,
                text=r.text,
                caller=r.caller,
                request_kind="text",
                producer=self.producer,
                causation_id=r.event_id,
            )
            for i, (r, cid) in enumerate(zip(reqs, cids, strict=True))
            if cid
        ]
        await self.publisher.publish_many(events)  # raises → the window is retried
        self.embedded += len(events)
        for _, part, _ in items:  # a handler call whose deliveries are all out is done
            part.settle()


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
        concurrency=CONCURRENCY,
        max_deliver=max_deliver,
        backoff_s=backoff_s,
        replicas=replicas,
    )
    return worker, handler
