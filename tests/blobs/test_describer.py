"""The describer without a miner: a vision endpoint that keeps failing is retried, then the
image is described offline (labelled as such) rather than left without a memory."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from engram.blobs.describe import DescribeHandler, VisionDescriber, make_describe_worker
from engram.blobs.samples import make_png
from engram.blobs.sniff import content_cid
from engram.blobs.store import BlobStore
from engram.bus import Bus
from streams.events import BlobDescribed, BlobReceived, IngestRequested, decode


async def test_vision_down_is_retried_then_described_offline(bus: Bus) -> None:
    calls: list[int] = []

    async def broken(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"error": {"message": "overloaded"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    store = await BlobStore.open(bus.js)
    png = make_png(background=(250, 220, 40), shape=(30, 70, 220), seed_text="describer")
    cid = content_cid(png)
    await store.put(cid, png)
    seen: list[Any] = []

    async def collect(msg: Any) -> None:
        seen.append(decode(msg.data))

    await bus.nc.subscribe("engram.blob.described", cb=collect)
    await bus.nc.subscribe("engram.ingest.requested", cb=collect)
    received = BlobReceived(
        content_cid=cid, object_name=cid, size=len(png), media_type="image/png", caller="me"
    )
    await bus.publisher.publish(received)
    handler = DescribeHandler(
        store, bus.publisher, VisionDescriber(url, "grok-2-vision-1212"), max_attempts=3
    )
    worker = make_describe_worker(bus.js, handler, bus.publisher, backoff_s=(0.1, 0.1, 0.1))
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await runner.cleanup()
    assert len(calls) == 3  # one call per delivery: retried, then given up on
    described = next(e for e in seen if isinstance(e, BlobDescribed))
    ingest = next(e for e in seen if isinstance(e, IngestRequested))
    assert described.describer == "offline-pillow"
    assert described.causation_id == received.event_id
    assert ingest.causation_id == described.event_id and ingest.caller == "me"
    assert ingest.text.startswith("Image (offline description")
    assert "yellow" in ingest.text and "blue" in ingest.text
    assert ingest.metadata == {
        "content_cid": cid,
        "media_type": "image/png",
        "describer": "offline-pillow",
    }
    done = await store.described(cid)
    assert done is not None and done.request_ids == [f"blob:{cid[7:]}:0"]
