"""``engram demo``: the event layer end to end on the embedded server.

Publishes demo events (each twice, to show de-duplication by message id) and one malformed
message, runs a worker that tallies them, builds a projection live, then rebuilds it from
sequence 1 and checks the two are equal.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import Progress

from engram.bus import open_bus
from engram.config import Settings
from streams.events import DemoNoted, Event
from streams.projection import Projection, ProjectionRunner
from streams.replay import replay_raw
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

console = Console(stderr=True)


class DemoTally(Projection):
    """Count and sum of demo events: a tiny deterministic projection."""

    stream = "INGEST"
    subjects = ["engram.ingest.demo"]

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.total = 0

    def apply(self, seq: int, event: Event) -> None:
        if isinstance(event, DemoNoted):
            self.count += 1
            self.total += event.n

    def reset(self) -> None:
        super().reset()
        self.count = self.total = 0

    def state(self) -> dict[str, int]:
        return {"count": self.count, "total": self.total, "last_seq": self.last_seq}


async def run_demo(settings: Settings, events: int = 200) -> dict[str, Any]:
    started = time.perf_counter()
    bus = await open_bus(settings)
    try:
        console.print(f"[green]bus[/] {bus.url} ({'embedded' if bus.server else 'external'})")
        originals = [DemoNoted(n=i, note="demo", producer=settings.producer) for i in range(events)]
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("publishing (each event twice)", total=2 * events)
            fresh = dup = 0
            for i in range(0, events, 100):
                chunk = originals[i : i + 100]
                for ack in await bus.publisher.publish_many(chunk + chunk):
                    if ack.duplicate:
                        dup += 1
                    else:
                        fresh += 1
                progress.advance(task, 2 * len(chunk))
        await bus.js.publish(
            "engram.ingest.demo",
            b"\xc1 not an event",
            headers={"Nats-Msg-Id": f"bad:{time.time()}"},
        )

        seen: dict[str, int] = {"handled": 0}

        async def tally(batch: list[Delivery]) -> None:
            seen["handled"] += len(batch)

        worker = Worker(
            bus.js,
            ConsumerSpec(f"demo-{int(time.time())}", "INGEST", ("engram.ingest.demo",)),
            tally,
            bus.publisher,
            batch=settings.worker_batch,
        )
        task_ = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while (
            seen["handled"] + worker.stats.dead_lettered < events + 1
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        worker.stop()
        await task_

        live = DemoTally()
        await ProjectionRunner(bus.js, live).catch_up()
        rebuilt = DemoTally()
        await ProjectionRunner(bus.js, rebuilt).rebuild()
        dead = [
            msgspec.structs.asdict(r.event)["error"]
            async for r in replay_raw(bus.js, "DLQ")
            if r.event is not None
        ]
        return {
            "nats_url": bus.url,
            "embedded": bus.server is not None,
            "published": fresh,
            "duplicates_dropped": dup,
            "worker_handled": seen["handled"],
            "dead_lettered": worker.stats.dead_lettered,
            "dead_letter_causes": dead[-1:],
            "projection_live": live.state(),
            "projection_rebuilt": rebuilt.state(),
            "rebuild_equal": live.state() == rebuilt.state(),
            "seconds": round(time.perf_counter() - started, 2),
        }
    finally:
        await bus.close()
