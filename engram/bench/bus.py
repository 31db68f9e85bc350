"""``engram bench bus``: our publisher and worker runner against plain nats-py, same run.

Each figure is measured on a fresh embedded nats-server with the configured durability
(``sync_interval: always`` by default), so the ratio ``publish_per_s / raw_publish_per_s``
compares like with like. The same is repeated once on a server with the default 2-minute
sync to show what durability costs, and one-at-a-time acked publishing is measured as the
slow baseline. ``publish_loop_cpu_us_per_event`` and ``consume_loop_cpu_us_per_event`` are
the event loop's CPU time per event (this thread's: nats-py runs on it) for our publisher
and for our worker runner (fetch, decode, ack): the per-message floor of every event a
pipeline publishes and consumes in Python.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.js import api
from rich.console import Console

from engram.bus import open_bus
from engram.config import Settings
from streams.events import DemoNoted, encode
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

console = Console(stderr=True)


def _payloads(n: int, size: int) -> list[DemoNoted]:
    blob = os.urandom(size)
    return [DemoNoted(n=i, note="bench", payload=blob) for i in range(n)]


async def _raw_publish(js: Any, events: list[DemoNoted]) -> float:
    """Plain nats-py: publish_async every payload (same bytes, same msg ids), await acks."""
    data = [(e.subject(), encode(e), {"Nats-Msg-Id": "raw-" + e.msg_id()}) for e in events]
    t0 = time.perf_counter()
    futures = [await js.publish_async(subj, payload, headers=hdr) for subj, payload, hdr in data]
    acks: list[api.PubAck] = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - t0
    assert len(acks) == len(events)
    return len(events) / elapsed


async def _our_publish(
    publisher: Any, events: list[DemoNoted], chunk: int, cpu: list[float] | None = None
) -> float:
    """Our publisher, ``chunk`` events a call; appends the event loop's CPU seconds (this
    thread's: nats-py runs on the loop) to ``cpu``."""
    c0 = time.thread_time()
    t0 = time.perf_counter()
    for i in range(0, len(events), chunk):
        await publisher.publish_many(events[i : i + chunk])
    rate = len(events) / (time.perf_counter() - t0)
    if cpu is not None:
        cpu.append(time.thread_time() - c0)
    return rate


async def _one_at_a_time(js: Any, events: list[DemoNoted]) -> float:
    t0 = time.perf_counter()
    for e in events:
        await js.publish(e.subject(), encode(e), headers={"Nats-Msg-Id": "one-" + e.msg_id()})
    return len(events) / (time.perf_counter() - t0)


async def _consume(bus: Any, expected: int, batch: int, cpu: list[float] | None = None) -> float:
    """Our worker runner (fetch, decode, ack) over ``expected`` events; appends the event
    loop's CPU seconds to ``cpu``."""
    done = asyncio.Event()
    count = 0

    async def handler(deliveries: list[Delivery]) -> None:
        nonlocal count
        count += len(deliveries)

    worker = Worker(
        bus.js,
        ConsumerSpec("bench-consume", "INGEST", ("engram.ingest.demo",), max_ack_pending=8192),
        handler,
        bus.publisher,
        batch=batch,
        concurrency=2,
    )
    c0 = time.thread_time()
    t0 = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while worker.stats.acked < expected:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(time.thread_time() - c0)
    worker.stop()
    await task
    done.set()
    return worker.stats.acked / elapsed


async def _measure(
    sync: str, events: int, size: int, chunk: int, consume: bool
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as tmp:
        settings = Settings(data_dir=str(Path(tmp)), nats_sync=sync, node_id="bench")
        bus = await open_bus(settings)
        try:
            ours_events = _payloads(events, size)
            raw_events = _payloads(events, size)
            # warm up the connection and the async-reply subscription
            await _raw_publish(bus.js, _payloads(200, size))
            # alternate rounds so drift on a shared machine hits both sides alike
            rounds, step = 4, events // 4
            ours: list[float] = []
            raw: list[float] = []
            ours_cpu: list[float] = []
            for r in range(rounds):
                part = slice(r * step, (r + 1) * step if r < rounds - 1 else events)
                if r % 2:
                    ours.append(
                        await _our_publish(bus.publisher, ours_events[part], chunk, ours_cpu)
                    )
                    raw.append(await _raw_publish(bus.js, raw_events[part]))
                else:
                    raw.append(await _raw_publish(bus.js, raw_events[part]))
                    ours.append(
                        await _our_publish(bus.publisher, ours_events[part], chunk, ours_cpu)
                    )
            out = {
                "publish_per_s": statistics.median(ours),
                "raw_publish_per_s": statistics.median(raw),
            }
            out["publish_loop_cpu_us_per_event"] = 1e6 * sum(ours_cpu) / len(ours_events)
            if consume:
                consumed = events + 200 + len(raw_events)
                consume_cpu: list[float] = []
                out["consume_per_s"] = await _consume(bus, consumed, 256, consume_cpu)
                out["consume_loop_cpu_us_per_event"] = 1e6 * consume_cpu[0] / consumed
                out["one_at_a_time_per_s"] = await _one_at_a_time(
                    bus.js, _payloads(min(events, 1000), size)
                )
            return out
        finally:
            await bus.close()


async def run(
    events: int = 20000, size: int = 1024, chunk: int = 5000, sync: str = "always"
) -> dict[str, Any]:
    console.print(f"bench bus: {events} events of ~{size} B, sync_interval={sync}")
    main = await _measure(sync, events, size, chunk, consume=True)
    console.print("bench bus: same again with the server's default sync (2m)")
    loose = await _measure("2m", events, size, chunk, consume=False)
    result: dict[str, Any] = {
        "events": events,
        "payload_bytes": size,
        "sync_interval": sync,
        **{k: round(v, 1) for k, v in main.items()},
        "publish_ratio": round(main["publish_per_s"] / main["raw_publish_per_s"], 3),
        "default_sync_publish_per_s": round(loose["publish_per_s"], 1),
        "default_sync_raw_publish_per_s": round(loose["raw_publish_per_s"], 1),
    }
    result["durability_cost"] = round(loose["publish_per_s"] / main["publish_per_s"], 2)
    return result
