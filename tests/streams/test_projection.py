"""The one projection runner, with a plain in-memory projection on a real nats-server:
per-event failures go to the ``failed`` hook and the projection goes on; batches reach the
``applied`` hook; a catch-up with a tiny fetch and idle timeout still reads to the end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from engram.bus import Bus
from streams.events import DemoNoted, Event
from streams.projection import BatchOutcome, Failure, Projection, ProjectionRunner
from streams.replay import Replayed


class Picky(Projection):
    """Sums ``n``; refuses (raises on) multiples of 7."""

    stream = "INGEST"
    subjects = ["engram.ingest.demo"]

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.seen: list[int] = []

    def apply(self, seq: int, event: Event) -> None:
        assert isinstance(event, DemoNoted)
        if event.n % 7 == 0:
            raise RuntimeError(f"no sevens ({event.n})")
        self.total += event.n
        self.seen.append(event.n)

    def apply_batch(self, items: Sequence[Replayed]) -> BatchOutcome:
        out = super().apply_batch(items)
        out.results = [i.seq for i in items]
        return out


class ThreadedPicky(Picky):
    threaded = True  # batches applied in a worker thread


class Recording(ProjectionRunner):
    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.failures: list[Failure] = []
        self.batches: list[list[int]] = []

    async def failed(self, failure: Failure) -> None:
        self.failures.append(failure)

    async def applied(self, results: list[object]) -> None:
        self.batches.append(results)  # type: ignore[arg-type]


async def test_a_failing_event_is_reported_and_the_projection_goes_on(bus: Bus) -> None:
    acks = await bus.publisher.publish_many([DemoNoted(n=i) for i in range(1, 50)])
    for cls in (Picky, ThreadedPicky):
        p = cls()
        runner = Recording(bus.js, p, batch=4, idle_s=0.01)
        assert await runner.catch_up() == 49
        assert p.last_seq == acks[-1].seq
        assert p.seen == [i for i in range(1, 50) if i % 7]
        assert [f.item.event.n for f in runner.failures] == [7, 14, 21, 28, 35, 42, 49]  # type: ignore[union-attr]
        assert all("no sevens" in f.error and f.error_type == "ApplyError" for f in runner.failures)
        assert sum(len(b) for b in runner.batches) == 49 and max(map(len, runner.batches)) <= 4


async def test_following_goes_past_a_failing_event(bus: Bus) -> None:
    p = Picky()
    runner = Recording(bus.js, p, batch=8, idle_s=0.05)
    task = asyncio.create_task(runner.run())
    try:
        acks = await bus.publisher.publish_many([DemoNoted(n=n) for n in (1, 7, 2)])
        assert await runner.wait_for(acks[-1].seq, timeout=20)
        more = await bus.publisher.publish(DemoNoted(n=3))
        assert await runner.wait_for(more.seq, timeout=20)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 20)
    assert p.total == 6 and len(runner.failures) == 1
