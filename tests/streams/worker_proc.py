"""A worker process for the crash tests: handles DemoNoted slowly and records what it did.

Usage: python -m tests.streams.worker_proc NATS_URL OUT_FILE ACK_WAIT_S
With HANG_ON=N it stalls mid-batch on event N. Each handled event's ``n`` is
appended (and fsynced) to OUT_FILE before the batch is acked.
"""

from __future__ import annotations

import asyncio
import os
import sys

import nats

from streams.publisher import Publisher
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker, run_until_signal


async def main(url: str, out: str, ack_wait: float) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    hang_on = int(os.environ.get("HANG_ON", "-1"))

    async def handler(batch: list[Delivery]) -> None:
        for d in batch:
            if d.event.n == hang_on:  # type: ignore[attr-defined]
                os.fsync(fd)
                await asyncio.sleep(3600)  # stuck mid-batch: the test kills us here
            await asyncio.sleep(0.02)  # "work"
            os.write(fd, f"{d.event.n}\n".encode())  # type: ignore[attr-defined]
        os.fsync(fd)

    spec = ConsumerSpec("crashy", "INGEST", ("engram.ingest.demo",), ack_wait_s=ack_wait)
    worker = Worker(
        js, spec, handler, Publisher(js, "crash-test"), batch=10, concurrency=1, stop_grace_s=0.1
    )
    print("ready", flush=True)
    await run_until_signal([worker])
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
