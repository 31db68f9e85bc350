"""Upload → archived on arlocal (bytes fetched back by tx id equal the original) →
described → found by a phrase from the description or a page."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engram.blobs.arweave import Gateway
from engram.blobs.samples import make_pdf, make_png
from engram.blobs.store import ArchiveState
from streams.events import BlobDescribed, BlobReceived, IngestRequested, decode

from .conftest import VISION_TEXT, Env

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGES = [
    "Harbour log. The lighthouse keeper writes down every fishing boat that passes "
    "the rocks at night, with the time and the colour of its lamps.",
    "Tides and moon. The spring tide rises highest two days after the full moon, and "
    "the keeper moves the rowing boat above the line of seaweed.",
    "Birds of the cape. In October the barnacle geese fly south over the tower in long "
    "lines, calling to each other in the dark.",
]


def settled(st: dict[str, Any]) -> bool:
    return (
        st["archive"] != "pending" and st["described"] and len(st["engram_cids"]) == st["memories"]
    )


async def fetch_from_gateway(env: Env, tx: str) -> bytes | None:
    gw = Gateway(env.node.settings.arweave_gateway_url or "")
    try:
        return await gw.fetch(tx)
    finally:
        await gw.close()


async def test_image_round_trip(env: Env) -> None:
    png = make_png(seed_text="round trip")
    form = aiohttp.FormData()
    form.add_field("file", png, filename="flag.png", content_type="application/octet-stream")
    form.add_field("metadata", '{"album": "flags"}')
    async with env.http.post("/blob", data=form) as r:
        assert r.status == 202, await r.text()
        up = await r.json()
    cid = "sha256:" + hashlib.sha256(png).hexdigest()
    assert up == {
        "content_cid": cid,
        "media_type": "image/png",  # from the bytes (the part said octet-stream)
        "size": len(png),
        "duplicate": False,
        "error": None,
    }
    st = await env.wait_status(cid, settled)
    assert st["archive"] == "archived" and len(st["arweave_tx"]) == 43
    assert st["describer"] == "vision:grok-2-vision-1212"
    assert env.vision.images == [png]  # the model saw exactly the bytes
    # the bytes are on the gateway under that tx id
    assert await fetch_from_gateway(env, st["arweave_tx"]) == png
    # found by a phrase of its description
    (engram_cid,) = st["engram_cids"]
    hits = await env.query("red circle on a white background like a flag")
    assert engram_cid in [h["cid"] for h in hits]
    async with env.http.get(f"/retrieve/{engram_cid}") as r:
        memory = await r.json()
    assert memory["text"] == VISION_TEXT
    assert memory["metadata"]["album"] == "flags" and memory["metadata"]["filename"] == "flag.png"
    assert memory["blob"] == {
        "content_cid": cid,
        "arweave_tx": st["arweave_tx"],
        "media_type": "image/png",
    }
    async with env.http.get(f"/blob/{cid}") as r:
        assert r.status == 200 and r.content_type == "image/png"
        assert await r.read() == png
    # the same bytes again (as JSON this time): the same blob, nothing new
    body = {"data_b64": base64.b64encode(png).decode(), "filename": "again.png"}
    async with env.http.post("/blob", json=body) as r:
        assert r.status == 202
        again = await r.json()
    assert again["content_cid"] == cid and again["duplicate"] is True
    assert (await env.status(cid))["engram_cids"] == [engram_cid]
    assert len(env.vision.images) == 1


async def test_pdf_round_trip_pages_with_causation(env: Env) -> None:
    pdf = make_pdf(PAGES)
    seen: list[Any] = []

    async def collect(msg: Any) -> None:
        seen.append(decode(msg.data))

    assert env.node.bus is not None
    subs = [
        await env.node.bus.nc.subscribe(subject, cb=collect)
        for subject in ("engram.blob.>", "engram.ingest.>")
    ]
    body = {"data_b64": base64.b64encode(pdf).decode(), "filename": "harbour.pdf"}
    async with env.http.post("/blob", json=body) as r:
        assert r.status == 202, await r.text()
        cid = (await r.json())["content_cid"]
    st = await env.wait_status(cid, settled)
    for sub in subs:
        await sub.unsubscribe()
    assert st["media_type"] == "application/pdf" and st["archive"] == "archived"
    assert len(st["engram_cids"]) == 3 == st["memories"]
    assert await fetch_from_gateway(env, st["arweave_tx"]) == pdf
    # a phrase from page 2 finds page 2 first
    hits = await env.query("when does the spring tide rise highest after the full moon")
    top = hits[0]
    assert top["cid"] in st["engram_cids"]
    assert top["metadata"]["page"] == 2 and top["metadata"]["pages"] == 3
    async with env.http.get(f"/retrieve/{top['cid']}") as r:
        memory = await r.json()
    assert memory["blob"] == {
        "content_cid": cid,
        "arweave_tx": st["arweave_tx"],
        "media_type": "application/pdf",
        "page": 2,
    }
    assert "spring tide" in memory["text"]
    # the audit trail: each page's ingest was caused by BlobDescribed, caused by BlobReceived
    received = [e for e in seen if isinstance(e, BlobReceived) and e.content_cid == cid]
    described = [e for e in seen if isinstance(e, BlobDescribed) and e.content_cid == cid]
    assert len(received) == 1 and len(described) == 1
    assert described[0].causation_id == received[0].event_id
    assert described[0].parts[1].startswith("Tides and moon.")
    ingests = [
        e for e in seen if isinstance(e, IngestRequested) and e.metadata.get("content_cid") == cid
    ]
    assert sorted(e.metadata["page"] for e in ingests) == [1, 2, 3]
    assert {e.causation_id for e in ingests} == {described[0].event_id}


async def test_bytes_come_back_from_arweave_verified(env: Env) -> None:
    """Gone from the Object Store: served from the gateway by tx id; bytes that do not hash
    to the content_cid are a 502 and never served."""
    a, b = make_png(seed_text="from arweave a"), make_png(seed_text="from arweave b")
    cids, txs = [], []
    for data in (a, b):
        async with env.http.post("/blob", json={"data_b64": base64.b64encode(data).decode()}) as r:
            cids.append((await r.json())["content_cid"])
    for cid in cids:
        txs.append((await env.wait_status(cid, settled))["arweave_tx"])
    blobs = env.node.blobs
    assert blobs is not None
    await blobs.service.store.objects.delete(cids[0])
    async with env.http.get(f"/blob/{cids[0]}") as r:
        assert r.status == 200
        assert r.headers["X-Blob-Source"] == f"arweave:{txs[0]}"
        assert await r.read() == a
    # the KV now names another blob's transaction: its bytes are refused
    await blobs.service.store.set_archive(
        cids[0],
        ArchiveState(state="archived", arweave_tx=txs[1], gateway=blobs.service.gateway.url),  # type: ignore[union-attr]
    )
    async with env.http.get(f"/blob/{cids[0]}") as r:
        assert r.status == 502
        reason = (await r.json())["error"]
    assert "not served" in reason and cids[0] in reason


async def engram_cli(env: Env, home: Path, *args: str) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    environ.update(ENGRAM_MINER_HOST=env.node.host, ENGRAM_MINER_PORT=str(env.node.port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engram.cli", "--data-dir", str(home), "--log-level", "warning",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_ingests_a_folder_of_text_images_and_pdfs(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "note.txt").write_text("Sourdough needs a lively starter and a slow overnight rise.")
    png = make_png(shape=(40, 160, 60), seed_text="cli")
    (folder / "photo.dat").write_bytes(png)  # the name says nothing: the bytes do
    pdf = make_pdf(["Orchard notes: prune the apple trees in late winter.", "Cider press day."])
    (folder / "orchard.pdf").write_bytes(pdf)
    home = tmp_path / "client"
    code, out, err = await engram_cli(env, home, "ingest", str(folder))
    assert code == 0, err
    report = json.loads(out)
    assert report["stored"] == 1 + 1 + 2 and report["failed"] == 0
    files = {Path(f["source"]).name: f for f in report["files"]}
    assert files["photo.dat"]["media_type"] == "image/png"
    assert files["orchard.pdf"]["content_cid"] == "sha256:" + hashlib.sha256(pdf).hexdigest()
    assert len(files["orchard.pdf"]["engram_cids"]) == 2
    page_cid = files["orchard.pdf"]["engram_cids"][0]
    code, out, err = await engram_cli(env, home, "retrieve", page_cid)
    assert code == 0, err
    memory = json.loads(out)
    assert memory["blob"]["content_cid"] == files["orchard.pdf"]["content_cid"]
    assert memory["blob"]["page"] == 1 and "embedding" not in memory
    target = tmp_path / "back.pdf"
    code, out, err = await engram_cli(
        env, home, "retrieve", files["orchard.pdf"]["content_cid"], "-o", str(target)
    )
    assert code == 0, err
    assert target.read_bytes() == pdf
    code, out, err = await engram_cli(env, home, "retrieve", "sha256:" + "1" * 64)
    assert code == 1 and "no blob" in err
