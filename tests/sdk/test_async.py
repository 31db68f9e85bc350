"""AsyncEngramClient against the real signed miner: the same surface as the sync client
(the error paths run through both drivers in test_errors.py)."""

from __future__ import annotations

import asyncio
import math

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
