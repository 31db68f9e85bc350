"""A worker killed mid-upload neither loses nor double-archives a blob: the tx id is in the
KV before the upload, and the next worker asks the gateway for it before uploading."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from engram.blobs.arlocal import ArLocal
from engram.blobs.arweave import ArchiveHandler, Gateway, make_archive_worker
from engram.blobs.samples import make_png
from engram.blobs.sniff import content_cid
from engram.blobs.store import BlobStore
from engram.bus import Bus
from streams.events import BlobArchived, BlobReceived, decode


class HangAfterPost:
    """A proxy to arlocal that forwards ``POST /tx`` and then never answers: the worker
    dies with its upload delivered but not acknowledged."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.posted = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                f"{self.upstream}{request.path_qs}",
                data=body,
                headers={"Content-Type": request.headers.get("Content-Type", "")},
            ) as r,
        ):
            payload, status = await r.read(), r.status
        if request.method == "POST" and request.path == "/tx":
            self.posted.set()
            await asyncio.sleep(3600)
        return web.Response(body=payload, status=status)

    async def start(self) -> HangAfterPost:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self


async def test_killed_mid_upload_neither_loses_nor_double_archives(
    bus: Bus, arlocal: ArLocal, wallet_file: Path
) -> None:
    store = await BlobStore.open(bus.js)
    data = make_png(seed_text="killed mid-upload")
    cid = content_cid(data)
    await store.put(cid, data)
    await bus.publisher.publish(
        BlobReceived(content_cid=cid, object_name=cid, size=len(data), media_type="image/png")
    )
    proxy = await HangAfterPost(arlocal.url).start()
    first = ArchiveHandler(store, bus.publisher, Gateway(proxy.url), wallet_file, local=True)
    worker = make_archive_worker(bus.js, first, bus.publisher)
    worker.stop_grace_s = 0.2  # then in-flight work is cancelled: as good as killed
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(proxy.posted.wait(), 30)
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert first.archived == 0
    state = await store.archive(cid)
    assert state is not None and state.state == "signed" and state.arweave_tx
    tx = state.arweave_tx
    gateway = Gateway(arlocal.url)
    assert await gateway.status(tx) is not None  # the upload did reach the gateway

    archived: list[Any] = []

    async def collect(msg: Any) -> None:
        archived.append(decode(msg.data))

    await bus.nc.subscribe("engram.blob.archived", cb=collect)
    second = ArchiveHandler(store, bus.publisher, gateway, wallet_file, local=True)
    worker2 = make_archive_worker(bus.js, second, bus.publisher)
    running = asyncio.create_task(worker2.run())
    try:
        for _ in range(200):
            if archived:
                break
            await asyncio.sleep(0.1)
    finally:
        worker2.stop()
        await asyncio.wait_for(running, 10)
        assert proxy.runner is not None
        await proxy.runner.cleanup()
    (event,) = archived
    assert isinstance(event, BlobArchived) and event.arweave_tx == tx
    assert await gateway.find(cid) == [tx]  # one transaction for this blob, not two
    assert await gateway.fetch(tx) == data
    done = await store.archive(cid)
    assert done is not None and done.state == "archived" and done.arweave_tx == tx
    await gateway.close()
