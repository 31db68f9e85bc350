"""Blobs in the CLI: ``engram ingest`` sends images and PDFs (recognised from their bytes)
to ``POST /blob`` and waits for their memories; ``engram retrieve CID`` shows a memory (and
its blob's identifiers) or, for a ``sha256:`` content CID, the blob's status or bytes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from engram.blobs.sniff import UnsupportedBlob, sniff

__all__ = ["BlobFile", "blob_file", "retrieve", "send_blobs"]

#: how long ``engram ingest`` waits for a blob's memories (archiving is not waited for)
WAIT_S = 120.0


@dataclass
class BlobFile:
    source: str
    path: Path
    media_type: str


def blob_file(path: Path) -> BlobFile | None:
    """A :class:`BlobFile` if ``path``'s first bytes say image or PDF, else None."""
    try:
        with path.open("rb") as f:
            head = f.read(1024)
        media_type = sniff(head)
    except (OSError, UnsupportedBlob):
        return None
    return BlobFile(str(path), path, media_type)


async def _one(
    axon: Any, blob: BlobFile, namespace: str, metadata: dict[str, Any], wait: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {"source": blob.source, "stored": 0, "accepted": 0, "failed": 0}
    try:
        data = await asyncio.to_thread(blob.path.read_bytes)
    except OSError as exc:
        return {**out, "failed": 1, "errors": [{"error": str(exc)}]}
    body = {
        "data_b64": base64.b64encode(data).decode(),
        "filename": blob.path.name,
        "namespace": namespace,
        "metadata": metadata,
    }
    status, answer = await axon.post("/blob", body)
    if status != 202:
        reason = str(answer.get("error") or f"HTTP {status}")
        return {**out, "failed": 1, "errors": [{"error": reason}]}
    cid = answer["content_cid"]
    out.update(content_cid=cid, media_type=answer["media_type"], duplicate=answer["duplicate"])
    deadline = time.monotonic() + (WAIT_S if wait else 0.0)
    st: dict[str, Any] = {}
    while True:
        code, st = await axon.get(f"/blob/{cid}/status")
        if code != 200:
            break
        if st.get("describe_error"):
            return {**out, "failed": 1, "errors": [{"error": st["describe_error"]}]}
        complete = st["described"] and len(st["engram_cids"]) >= st.get("memories", 1)
        if complete or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    cids = list(st.get("engram_cids") or [])
    out.update(
        stored=len(cids),
        accepted=0 if cids else 1,
        engram_cids=cids,
        arweave_tx=st.get("arweave_tx"),
        archive=st.get("archive", "pending"),
    )
    return out


async def send_blobs(
    axon: Any, blobs: list[BlobFile], namespace: str, metadata: dict[str, Any], wait: bool
) -> list[dict[str, Any]]:
    return [await _one(axon, b, namespace, metadata, wait) for b in blobs]


async def _retrieve(
    url: str, key: Any, cid: str, output: Path | None
) -> tuple[int, dict[str, Any] | None]:
    import aiohttp

    from engram.miner.client import AxonClient

    async with aiohttp.ClientSession(base_url=url) as http:
        axon = AxonClient(http, key)
        if not cid.startswith("sha256:"):
            return await axon.get(f"/retrieve/{cid}")
        if output is None:
            return await axon.get(f"/blob/{cid}/status")
        path = f"/blob/{cid}"
        headers = await axon.headers("GET", path, b"")
        async with http.get(path, headers=headers) as r:
            if r.status != 200:
                try:
                    return r.status, await r.json(content_type=None)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return r.status, {"error": f"HTTP {r.status}"}
            data = await r.read()
            source = r.headers.get("X-Blob-Source", "")
        await asyncio.to_thread(output.write_bytes, data)
        return 200, {
            "content_cid": cid,
            "written": str(output),
            "size": len(data),
            "source": source,
        }


@click.command("retrieve")
@click.argument("cid")
@click.option("--url", default=None, help="The miner's axon [default: ENGRAM_MINER_HOST:PORT].")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="For a sha256: content CID: write the blob's bytes here (verified by the miner).",
)
@click.option("--embedding", is_flag=True, help="Include the memory's vector.")
@click.pass_context
def retrieve(
    ctx: click.Context, cid: str, url: str | None, output: Path | None, embedding: bool
) -> None:
    """Show a memory by its CID (with its blob's content_cid, arweave_tx and page, if it
    came from an image or a PDF), or a blob by its sha256: content CID. Prints JSON."""
    from engram.cli.miner import _caller_key, _echo_json, _miner_url, _settings

    url = _miner_url(_settings(ctx), url)
    try:
        status, body = asyncio.run(_retrieve(url, _caller_key(ctx), cid, output))
    except OSError as exc:
        raise click.ClickException(f"cannot reach the miner at {url}: {exc}") from None
    if status != 200 or body is None:
        raise click.ClickException(str((body or {}).get("error") or f"HTTP {status}"))
    if not embedding:
        body.pop("embedding", None)
    _echo_json(body)
