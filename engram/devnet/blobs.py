"""``engram devnet --blobs``: arlocal (a local Arweave gateway) beside the devnet, and a
user who gives the first miner a generated PNG and a 3-page PDF through its axon (signed
requests, as on the subnet), then checks each: archived (the bytes fetched back from the
gateway by tx id equal the original), described, and found by a query with a phrase
from it in the top 3."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import structlog

from engram.blobs.arweave import Gateway
from engram.blobs.samples import make_pdf, make_png
from engram.miner.client import AxonClient

__all__ = ["DEVNET_BLOBS", "ingest_devnet_blobs"]

log = structlog.get_logger("engram.devnet.blobs")

PDF_PAGES = [
    "Field notes from the salt marsh. At dawn the herons stand in the shallow channels "
    "and wait for small fish to come in with the tide.",
    "The old windmill on the dyke ground barley for the village until 1921; its sails "
    "were painted green and white every spring.",
    "Recipe for marsh samphire: rinse it twice, blanch it for one minute and serve it "
    "with melted butter and black pepper.",
]

#: (filename, bytes, a query phrase from it)
DEVNET_BLOBS: tuple[tuple[str, bytes, str], ...] = (
    ("red-disc.png", make_png(seed_text="engram devnet"), "a picture, mostly white and red"),
    ("marsh-notes.pdf", make_pdf(PDF_PAGES), "who painted the windmill sails green and white"),
)


async def _one(
    axon: AxonClient, gateway: Gateway, name: str, data: bytes, phrase: str, timeout: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"file": name, "size": len(data)}
    t0 = time.monotonic()
    body = {"data_b64": base64.b64encode(data).decode(), "filename": name}
    status, answer = await axon.post("/blob", body)
    if status != 202:
        return {**out, "error": str(answer.get("error") or f"HTTP {status}")}
    cid = answer["content_cid"]
    out.update(content_cid=cid, media_type=answer["media_type"])
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code, st = await axon.get(f"/blob/{cid}/status")
        done = st.get("described") and len(st.get("engram_cids") or []) >= st.get("memories", 1)
        if code == 200 and st.get("archive") != "pending" and done:
            break
        await asyncio.sleep(0.3)
    tx = st.get("arweave_tx")
    cids = list(st.get("engram_cids") or [])
    back = await gateway.fetch(tx) if tx else None
    _, found = await axon.post("/QuerySynapse", {"query_text": phrase, "top_k": 3})
    top = [h["cid"] for h in found.get("results") or []]
    out.update(
        arweave_tx=tx,
        archive=st.get("archive"),
        engram_cids=cids,
        bytes_verified=back == data,
        query=phrase,
        found_by_query=any(c in top for c in cids),
        seconds=round(time.monotonic() - t0, 1),
    )
    return out


async def ingest_devnet_blobs(
    axon_url: str, gateway_url: str, keypair: Any, timeout: float = 120.0
) -> list[dict[str, Any]]:
    gateway = Gateway(gateway_url)
    try:
        async with aiohttp.ClientSession(base_url=axon_url) as http:
            axon = AxonClient(http, keypair)
            results = []
            for name, data, phrase in DEVNET_BLOBS:
                try:
                    results.append(await _one(axon, gateway, name, data, phrase, timeout))
                except Exception as exc:  # reported in the result, not a crash of the devnet
                    log.warning("devnet blob failed", file=name, error=repr(exc))
                    results.append({"file": name, "error": repr(exc)})
            return results
    finally:
        await gateway.close()
