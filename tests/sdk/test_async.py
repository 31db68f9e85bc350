"""AsyncEngramClient against the real signed miner: the same surface as the sync client
(the error paths run through both drivers in test_errors.py)."""

from __future__ import annotations

import asyncio
import math

import aiohttp
from aiohttp import web

from engram.bus import open_bus
from engram.chain import LocalChain
from engram.sdk import AsyncEngramClient, Memory

from .conftest import CLIENT, MINER, LiveMiner


async def test_async_surface(url: str, ns: str) -> None:
    async with AsyncEngramClient(url, hotkey=CLIENT, namespace=ns) as c:
        assert (await c.health())["auth"] == "signed" and await c.is_online()
        cid = await c.ingest("Jupiter is the largest planet.", {"kind": "fact"}, request_id="j")
        assert (
            await c.ingest("Jupiter is the largest planet.", {"kind": "fact"}, request_id="j")
            == cid
        )
        mem = await c.get(cid)
        assert isinstance(mem, Memory) and mem.text == "Jupiter is the largest planet."
        v = [0.0] * 384
        v[11] = 1.0
        raw = await c.ingest_embedding(v, {"kind": "raw"})
        assert (await c.query_by_vector(v, top_k=1))[0].cid == raw
        status = await c.ingest_status("j", "text")
        assert status["status"] == "stored" and status["cid"] == cid
        seen: list[int] = []
        res = await c.batch_ingest(
            [f"moon number {i}" for i in range(5)],
            chunk_size=2,
            progress=lambda d, _t: seen.append(d),
            concurrency=1,  # one chunk at a time: progress in chunk order
        )
        assert [r.status for r in res] == ["stored"] * 5 and seen == [2, 4, 5]
        hits = await c.query("biggest planet in the solar system", top_k=3, include_text=True)
        assert hits[0].cid == cid and hits[0].text == "Jupiter is the largest planet."
        assert all(math.isfinite(h.score) for h in hits)
        facts = await c.query("planet", filter={"kind": "fact"})
        assert [h.cid for h in facts] == [cid]
        assert (await c.stats())["namespaces"][ns] == 7


async def test_async_from_subnet_reads_the_chain_adapter(live_miner: LiveMiner, ns: str) -> None:
    bus = await open_bus(live_miner.settings)
    try:
        chain = await LocalChain.join(bus.js, MINER.ss58_address, 1)
        c = await AsyncEngramClient.from_subnet(chain, hotkey=CLIENT, namespace=ns)
        async with c:
            assert c.urls == [live_miner.url]
            cid = await c.ingest("discovered asynchronously")
            assert (await c.query("discovered asynchronously", top_k=1))[0].cid == cid
    finally:
        await bus.close()


async def test_many_concurrent_calls_share_one_session(url: str, ns: str) -> None:
    async with AsyncEngramClient(url, hotkey=CLIENT, namespace=ns) as c:
        cids = await asyncio.gather(*(c.ingest(f"parallel note {i}") for i in range(3)))
        assert len(set(cids)) == 3


async def test_batch_ingest_keeps_chunks_in_flight_and_results_in_order(url: str, ns: str) -> None:
    """``concurrency`` chunks at once, counted by a loopback proxy in front of the real
    miner: a bulk load keeps the miner's queue full, and the results still come back one
    per item, in input order, with the refused item in its place."""
    active = peak = 0

    async with aiohttp.ClientSession() as upstream:

        async def forward(request: web.Request) -> web.Response:
            nonlocal active, peak
            counted = request.path == "/IngestBatch"
            if counted:
                active += 1
                peak = max(peak, active)
            try:
                skip = {"host", "content-length", "transfer-encoding"}
                headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
                async with upstream.request(
                    request.method, url + request.path_qs, data=await request.read(),
                    headers=headers,
                ) as r:  # fmt: skip
                    return web.Response(
                        status=r.status, body=await r.read(), content_type=r.content_type
                    )
            finally:
                if counted:
                    active -= 1

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            items: list[object] = [f"comet number {i} passes the sun" for i in range(23)]
            items.insert(9, {"text": "   "})  # refused by the miner: blank text
            seen: list[tuple[int, int | None]] = []
            async with AsyncEngramClient(
                f"http://127.0.0.1:{port}", hotkey=CLIENT, namespace=ns
            ) as c:
                res = await c.batch_ingest(
                    items, chunk_size=4, concurrency=3, progress=lambda d, t: seen.append((d, t))
                )
                assert [r.index for r in res] == list(range(24))
                assert [r.status for r in res] == ["stored"] * 9 + ["invalid"] + ["stored"] * 14
                hit = (await c.query("comet number 17 passes the sun", top_k=1))[0]
                assert hit.cid == res[18].cid  # item 18 is comet 17 (the blank one is 9)
        finally:
            await runner.cleanup()
    assert 2 <= peak <= 3, peak  # chunks overlapped, never more than asked
    assert seen[-1] == (24, 24) and [d for d, _ in seen] == sorted(d for d, _ in seen)
