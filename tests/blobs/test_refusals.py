"""Bad uploads are clear 4xx answers; bad bytes that pass the door (a corrupt PDF or
image) are dead-lettered by the describer with the cause; a gateway that is down leaves
the blob searchable, retried, then BlobArchiveFailed."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engram.blobs.arlocal import ArLocal
from engram.blobs.samples import make_png
from engram.natsd import EmbeddedNats
from streams.events import BlobArchiveFailed, DeadLettered, decode

from .conftest import Env, VisionServer, blob_settings, start_node

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def post_json(env: Env, body: Any) -> tuple[int, dict[str, Any]]:
    async with env.http.post("/blob", json=body) as r:
        return r.status, await r.json()


async def post_file(env: Env, data: bytes, **fields: str) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="upload.bin")
    for k, v in fields.items():
        form.add_field(k, v)
    async with env.http.post("/blob", data=form) as r:
        return r.status, await r.json()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_refusals_are_clear(env: Env) -> None:
    max_bytes = env.node.settings.blob_max_bytes
    status, body = await post_file(env, b"just some words, not an image\n")
    assert status == 415 and "looks like text" in body["error"]
    status, body = await post_json(env, {"data_b64": b64(b"PK\x03\x04" + bytes(100))})
    assert status == 415 and "ZIP" in body["error"]
    big = b"\x89PNG\r\n\x1a\n" + bytes(max_bytes)
    status, body = await post_file(env, big)
    assert status == 413 and str(max_bytes) in body["error"]
    status, body = await post_json(env, {"data_b64": b64(big)})
    assert status == 413 and str(max_bytes) in body["error"]
    status, body = await post_json(env, {"data_b64": "not base64!"})
    assert status == 400 and "base64" in body["error"]
    status, body = await post_json(env, {"filename": "x.png"})
    assert status == 400 and "data_b64" in body["error"]
    png = make_png(seed_text="refusals")
    status, body = await post_json(env, {"data_b64": b64(png), "metadata": {"page": 3}})
    assert status == 400 and "page" in body["error"]
    status, body = await post_file(env, png, metadata="[1, 2]")
    assert status == 400 and "metadata must be a JSON object" in body["error"]
    status, body = await post_json(env, {"data_b64": b64(png), "namespace": "no spaces"})
    assert status == 400 and "namespace" in body["error"]
    async with env.http.post("/blob", data=b"raw", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415 and "multipart/form-data" in (await r.json())["error"]
    async with env.http.get("/blob/sha256:xyz") as r:
        assert r.status == 400 and "64 lower-case hex" in (await r.json())["error"]
    unknown = "sha256:" + "0" * 64
    for path in (f"/blob/{unknown}", f"/blob/{unknown}/status"):
        async with env.http.get(path) as r:
            assert r.status == 404 and (await r.json())["error"]


async def test_large_upload_passes_the_axon_limit_and_goes_in_chunks(env: Env) -> None:
    """Over 4 MiB: over the axon's 4 MiB JSON limit (not applied here) and over Arweave's
    inline size (posted as chunks); the gateway gives back the very bytes."""
    from PIL import Image

    img = Image.frombytes("RGB", (1200, 1200), os.urandom(1200 * 1200 * 3))
    out = io.BytesIO()
    img.save(out, format="PNG")
    data = out.getvalue()
    assert 4 * 1024 * 1024 < len(data) < env.node.settings.blob_max_bytes
    status, body = await post_json(env, {"data_b64": b64(data)})
    assert status == 202, body
    st = await env.wait_status(body["content_cid"], lambda s: s["archive"] != "pending")
    assert st["archive"] == "archived"
    from engram.blobs.arweave import Gateway

    gw = Gateway(env.node.settings.arweave_gateway_url or "")
    try:
        assert await gw.fetch(st["arweave_tx"]) == data
    finally:
        await gw.close()


async def test_corrupt_blobs_are_dead_lettered_with_the_cause(env: Env) -> None:
    assert env.node.bus is not None
    dead: list[DeadLettered] = []

    async def collect(msg: Any) -> None:
        ev = decode(msg.data)
        assert isinstance(ev, DeadLettered)
        dead.append(ev)

    sub = await env.node.bus.nc.subscribe("engram.dlq.blob-describer", cb=collect)
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> garbage, then nothing"
    png = make_png(seed_text="corrupt")[:60]  # the header, then cut off
    cids = []
    for data in (pdf, png):
        status, body = await post_json(env, {"data_b64": b64(data)})
        assert status == 202, body  # the door checks the type; reading it is the worker's
        cids.append(body["content_cid"])
    for _ in range(100):
        if len(dead) >= 2:
            break
        await asyncio.sleep(0.1)
    await sub.unsubscribe()
    causes = {decode(d.original_data).content_cid: d.error for d in dead}  # type: ignore[attr-defined]
    assert "corrupt PDF" in causes[cids[0]]
    assert "not a readable image/png image" in causes[cids[1]]
    for cid in cids:
        st = await env.status(cid)
        assert st["described"] is False and st["engram_cids"] == []
        assert st["describe_error"] and st["describe_error"] in causes[cid]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_gateway_down_still_searchable_then_archive_failed(
    tmp_path: Path, model_cache: Path, wallet_file: Path, arlocal: ArLocal
) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats", sync="always").start(reuse=False)
    vision = await VisionServer().start()
    down = f"http://127.0.0.1:{_closed_port()}"
    node = None
    try:
        s = blob_settings(tmp_path, server.url, down, wallet_file, vision_base_url=vision.url)
        node = await start_node(s, model_cache)
        assert node.bus is not None
        events: list[Any] = []

        async def collect(msg: Any) -> None:
            events.append(decode(msg.data))

        await node.bus.nc.subscribe("engram.blob.archive_failed", cb=collect)
        await node.bus.nc.subscribe("engram.dlq.blob-archiver", cb=collect)
        async with aiohttp.ClientSession(base_url=node.url) as http:
            env = Env(node, http, vision)
            png = make_png(shape=(30, 70, 220), seed_text="gateway down")
            status, body = await post_json(env, {"data_b64": b64(png)})
            assert status == 202
            cid = body["content_cid"]
            st = await env.wait_status(cid, lambda s: bool(s["engram_cids"]))
            assert st["archive"] == "pending"  # described and stored while the gateway is down
            hits = await env.query("red circle on white, the flag of Japan")
            assert st["engram_cids"][0] in [h["cid"] for h in hits]
            st = await env.wait_status(cid, lambda s: s["archive"] == "failed")
            assert st["arweave_tx"] is None and "unreachable" in st["archive_error"]
        for _ in range(50):
            if len(events) >= 2:
                break
            await asyncio.sleep(0.1)
        failed = [e for e in events if isinstance(e, BlobArchiveFailed)]
        dead = [e for e in events if isinstance(e, DeadLettered)]
        assert len(failed) == 1 and failed[0].attempts == 3  # retried, then given up
        assert failed[0].content_cid == cid and "unreachable" in failed[0].reason
        assert len(dead) == 1 and "archive failed after 3 attempt(s)" in dead[0].error
    finally:
        if node is not None:
            await node.stop()
        await vision.stop()
        server.stop()


async def test_signed_upload_over_4_mib_is_read_whole_for_its_signature(
    tmp_path: Path, model_cache: Path, wallet_file: Path
) -> None:
    """In signed mode the body is read before the handler (to check the signature): the
    route's own limit applies there too, not the axon's 4 MiB."""
    from PIL import Image

    from engram.miner.auth import load_or_create_key
    from engram.miner.client import AxonClient

    server = EmbeddedNats(data_dir=tmp_path / "nats", sync="always").start(reuse=False)
    node = None
    try:
        s = blob_settings(
            tmp_path, server.url, "", wallet_file, arweave_gateway_url=None,
            describer="offline", axon_auth="signed",
        )  # fmt: skip
        node = await start_node(s, model_cache)
        key, _ = load_or_create_key(tmp_path / "client" / "hotkey")
        img = Image.frombytes("RGB", (1200, 1200), os.urandom(1200 * 1200 * 3))
        out = io.BytesIO()
        img.save(out, format="PNG")
        data = out.getvalue()
        async with aiohttp.ClientSession(base_url=node.url) as http:
            async with http.post("/blob", json={"data_b64": b64(data)}) as r:
                assert r.status == 401  # unsigned: refused
            axon = AxonClient(http, key)
            status, body = await axon.post("/blob", {"data_b64": b64(data)})
            assert status == 202, body
            cid = body["content_cid"]
            for _ in range(100):
                code, st = await axon.get(f"/blob/{cid}/status")
                if code == 200 and st["engram_cids"]:
                    break
                await asyncio.sleep(0.2)
            assert st["described"] and st["describer"] == "offline-pillow"
            assert st["archive"] == "pending" and st["arweave_tx"] is None  # no gateway
            too_big = b"\x89PNG\r\n\x1a\n" + bytes(s.blob_max_bytes)
            status, body = await axon.post("/blob", {"data_b64": b64(too_big)})
            assert status == 413 and str(s.blob_max_bytes) in body["error"]
    finally:
        if node is not None:
            await node.stop()
        server.stop()
