"""Miner commands: ``engram miner run|worker``, ``engram ingest``, ``engram query``,
``engram index rebuild|stats``.

``register(main)`` adds them to the ``engram`` group; ``python -m engram.miner`` runs them
standalone (used by tests that start real miner processes).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from engram.cli import EngramGroup
from engram.cli.blobs import BlobFile, blob_file, retrieve, send_blobs
from engram.config import ConfigError, Settings, load_settings
from engram.log import configure_logging
from streams.errors import Unavailable

__all__ = ["index", "ingest", "miner", "query", "register", "standalone"]

_stderr = Console(stderr=True)  # progress and notes; stdout carries only the JSON answer


def _settings(ctx: click.Context, data_dir: str | None = None) -> Settings:
    obj = ctx.ensure_object(dict)
    try:
        s = load_settings(obj.get("config"), data_dir=data_dir or obj.get("data_dir"))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(obj.get("log_level") or s.log_level, obj.get("log_format") or s.log_format)
    return s


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str))


# --- miner ------------------------------------------------------------------------------


@click.group("miner")
def miner() -> None:
    """Run a miner: axon + embed workers + store projection."""


@miner.command("run")
@click.option("--port", type=int, default=None, help="Axon port (default 8091).")
@click.option("--host", default=None, help="Axon address (default 127.0.0.1).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option(
    "--embed/--no-embed",
    default=True,
    show_default=True,
    help="Run an embed worker in this process.",
)
@click.option("--workers", type=int, default=0, show_default=True, help="Extra worker processes.")
@click.pass_context
def miner_run(
    ctx: click.Context,
    port: int | None,
    host: str | None,
    data_dir: str | None,
    embed: bool,
    workers: int,
) -> None:
    """Serve the axon on PORT with the store projection; embedded NATS under the data dir
    unless ENGRAM_NATS_URL is set."""
    from engram.miner.node import MinerNode

    s = _settings(ctx, data_dir)
    node = MinerNode(
        s,
        host=host or s.miner_host,
        port=s.miner_port if port is None else port,
        embed_in_process=embed,
        worker_processes=workers,
    )
    asyncio.run(node.serve_forever())


@miner.command("worker")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.pass_context
def miner_worker(ctx: click.Context, data_dir: str | None) -> None:
    """Run one embed worker process (scale out by starting more)."""
    from engram.miner.node import run_embed_worker

    asyncio.run(run_embed_worker(_settings(ctx, data_dir)))


# --- ingest / query ---------------------------------------------------------------------


def _miner_url(s: Settings, url: str | None) -> str:
    """``--url`` if given, else the axon of ``ENGRAM_MINER_HOST``/``ENGRAM_MINER_PORT``."""
    if url:
        return url
    host = s.miner_host
    if host in ("0.0.0.0", "::", ""):  # a wildcard bind: reach it on loopback
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{s.miner_port}"


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return value


@dataclass
class Item:
    """One memory to send, and where it came from (a file, or a file and line)."""

    source: str
    body: dict[str, Any]
    line: int | None = None


@dataclass
class FileResult:
    source: str
    stored: int = 0
    accepted: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, item: Item | None, reason: str) -> None:
        self.failed += 1
        if len(self.errors) < 20:  # a whole bad file does not flood the report
            where = {"line": item.line} if item is not None and item.line else {}
            self.errors.append({**where, "error": reason})


def _jsonl_items(f: Path, metadata: dict[str, Any], namespace: str) -> Iterator[Item]:
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{f}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{where}: not JSON: {exc}") from None
        if isinstance(row, str):
            row = {"text": row}
        if not isinstance(row, dict):
            raise click.ClickException(f"{where}: a row must be a string or a JSON object")
        if not isinstance(row.get("text"), str):
            raise click.ClickException(f'{where}: "text" must be a string')
        extra = row.get("metadata") or {}
        if not isinstance(extra, dict):
            raise click.ClickException(f'{where}: "metadata" must be a JSON object')
        ns = row.get("namespace") or namespace
        if not isinstance(ns, str):
            raise click.ClickException(f'{where}: "namespace" must be a string')
        body = {"text": row["text"], "metadata": {**metadata, **extra}, "namespace": ns}
        yield Item(str(f), body, n)


def _items(
    source: str, metadata: dict[str, Any], namespace: str
) -> Iterator[Item | FileResult | BlobFile]:
    """TEXT, a text file (one memory), a directory (each file), or JSONL (one per line:
    a string or an object with text/metadata/namespace); images and PDFs (by their bytes)
    as :class:`~engram.cli.blobs.BlobFile`. A file that cannot be read as text is yielded
    as a failed :class:`FileResult`."""
    path = Path(source)
    if not path.exists():
        yield Item("<text>", {"text": source, "metadata": metadata, "namespace": namespace})
        return
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if (blob := blob_file(f)) is not None:
            yield blob
            continue
        if f.suffix in (".jsonl", ".ndjson"):
            yield from _jsonl_items(f, metadata, namespace)
            continue
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError) as exc:
            bad = FileResult(str(f))
            reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            bad.fail(None, reason)
            yield bad
            continue
        meta = {**metadata, "source": str(f)}
        yield Item(str(f), {"text": text, "metadata": meta, "namespace": namespace})


def _caller_key(ctx: click.Context) -> Any:
    """The caller's hotkey for btauth/1 (generated once under the data dir), or None when it
    cannot be had (then requests go unsigned: fine for an axon in "open" mode)."""
    from engram.miner.client import client_keypair

    try:
        return client_keypair(_settings(ctx))
    except OSError as exc:
        click.echo(f"warning: no client hotkey ({exc}); sending unsigned requests", err=True)
        return None


class _Busy(Unavailable):
    """The miner answered 503 (its bus is down, or it is at its request limit)."""


async def _send(axon: Any, chunk: list[Item], wait: bool, results: dict[str, FileResult]) -> None:
    """Send one batch; an invalid item is reported against its file and the rest are sent
    again without it; a body the miner finds too large is split."""
    from streams.retry import Backoff, retry

    async def post() -> tuple[int, dict[str, Any]]:
        payload = {"items": [i.body for i in chunk], "wait": wait, "timeout_s": 60}
        status, body = await axon.post("/IngestBatch", payload)
        if status == 503:
            raise _Busy(str(body.get("error") or "HTTP 503"))
        return status, body

    try:
        status, body = await retry(
            post, what="ingest batch", retry_on=(_Busy,), backoff=Backoff(0.5), attempts=5
        )
    except _Busy as exc:
        status, body = 503, {"error": str(exc)}
    if status < 400:
        for item, res in zip(chunk, body.get("results") or [], strict=False):
            r = results[item.source]
            r.stored += res.get("status") == "stored"
            r.accepted += res.get("status") == "accepted"
            if res.get("status") == "rejected":
                r.fail(item, str(res.get("error")))
        return
    invalid = {d["index"]: d["error"] for d in body.get("items") or [] if "index" in d}
    if status == 400 and invalid:
        for i, reason in invalid.items():
            results[chunk[i].source].fail(chunk[i], reason)
        rest = [item for i, item in enumerate(chunk) if i not in invalid]
        if rest:
            await _send(axon, rest, wait, results)
        return
    if status == 413 and len(chunk) > 1:
        half = len(chunk) // 2
        await _send(axon, chunk[:half], wait, results)
        await _send(axon, chunk[half:], wait, results)
        return
    reason = str(body.get("error") or f"HTTP {status}")
    for item in chunk:
        results[item.source].fail(item, reason)


async def _ingest(
    url: str,
    items: list[Item],
    batch: int,
    wait: bool,
    key: Any,
    results: dict[str, FileResult],
    blobs: tuple[list[BlobFile], str, dict[str, Any], list[dict[str, Any]]] | None = None,
) -> None:
    import aiohttp
    from rich.progress import Progress

    from engram.miner.client import AxonClient

    async with aiohttp.ClientSession(base_url=url) as http:
        axon = AxonClient(http, key)
        with Progress(console=_stderr, transient=True) as bar:
            task = bar.add_task("ingesting", total=len(items))
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                await _send(axon, chunk, wait, results)
                bar.advance(task, len(chunk))
            if blobs is not None and blobs[0]:  # images and PDFs: POST /blob each
                files, namespace, metadata, out = blobs
                task = bar.add_task("images and PDFs", total=len(files))
                for f in files:
                    out.extend(await send_blobs(axon, [f], namespace, metadata, wait))
                    bar.advance(task)


@click.command("ingest")
@click.argument("source")
@click.option("--url", default=None, help="The miner's axon [default: ENGRAM_MINER_HOST:PORT].")
@click.option("--namespace", default="public", show_default=True)
@click.option("--metadata", "metadata_json", default="{}", help="JSON object added to each.")
@click.option("--batch", default=64, show_default=True)
@click.option("--no-wait", is_flag=True, help="Return once accepted by JetStream.")
@click.pass_context
def ingest(
    ctx: click.Context,
    source: str,
    url: str | None,
    namespace: str,
    metadata_json: str,
    batch: int,
    no_wait: bool,
) -> None:
    """Remember TEXT, a FILE, every file of a DIR, or each line of a JSONL file; images
    (PNG, JPEG, GIF, WebP) and PDFs become blobs: archived, described, one memory per
    image or PDF page.

    Prints one JSON object: totals, and per file what was stored, accepted (will be stored)
    or failed with the reason (the line for JSONL; content_cid, engram_cids and arweave_tx
    for a blob). Exits 1 if anything failed."""
    metadata = _json_object(metadata_json, "--metadata")
    url = _miner_url(_settings(ctx), url)
    items: list[Item] = []
    results: dict[str, FileResult] = {}
    blob_files: list[BlobFile] = []
    blob_results: list[dict[str, Any]] = []
    for x in _items(source, metadata, namespace):
        if isinstance(x, BlobFile):
            blob_files.append(x)
        elif isinstance(x, FileResult):
            results[x.source] = x
        else:
            results.setdefault(x.source, FileResult(x.source))
            items.append(x)
    if not results and not blob_files:
        raise click.ClickException(f"nothing to ingest in {source}")
    try:
        key = _caller_key(ctx)
        blobs = (blob_files, namespace, metadata, blob_results)
        size = max(1, min(batch, 1000))
        asyncio.run(_ingest(url, items, size, not no_wait, key, results, blobs))
    except OSError as exc:
        raise click.ClickException(f"cannot reach the miner at {url}: {exc}") from None
    files = list(results.values())
    out = {
        "stored": sum(r.stored for r in files) + sum(b["stored"] for b in blob_results),
        "accepted": sum(r.accepted for r in files) + sum(b["accepted"] for b in blob_results),
        "failed": sum(r.failed for r in files) + sum(b["failed"] for b in blob_results),
        "files": [
            {k: v for k, v in asdict(r).items() if v or k in ("source", "failed")} for r in files
        ]
        + blob_results,
    }
    _echo_json(out)
    if out["failed"]:
        sys.exit(1)


async def _query(url: str, body: dict[str, Any], key: Any = None) -> tuple[int, dict[str, Any]]:
    import aiohttp

    from engram.miner.client import AxonClient

    async with aiohttp.ClientSession(base_url=url) as http:
        return await AxonClient(http, key).post("/QuerySynapse", body)


@click.command("query")
@click.argument("text")
@click.option("--url", default=None, help="The miner's axon [default: ENGRAM_MINER_HOST:PORT].")
@click.option("--top-k", default=10, show_default=True)
@click.option("--namespace", default="public", show_default=True)
@click.option("--filter", "filter_json", default=None, help="JSON object: metadata equality.")
@click.option("--json", "as_json", is_flag=True, help="Print the miner's answer as JSON.")
@click.pass_context
def query(
    ctx: click.Context,
    text: str,
    url: str | None,
    top_k: int,
    namespace: str,
    filter_json: str | None,
    as_json: bool,
) -> None:
    """Semantic search: the TOP_K memories closest to TEXT."""
    body: dict[str, Any] = {"query_text": text, "top_k": top_k, "namespace": namespace}
    if filter_json is not None:
        body["filter"] = _json_object(filter_json, "--filter")
    url = _miner_url(_settings(ctx), url)
    try:
        status, res = asyncio.run(_query(url, body, _caller_key(ctx)))
    except OSError as exc:
        raise click.ClickException(f"cannot reach the miner at {url}: {exc}") from None
    if status != 200:
        raise click.ClickException(str(res.get("error") or f"HTTP {status}"))
    if as_json:
        _echo_json(res)
        return
    for i, hit in enumerate(res["results"], 1):
        click.echo(f"{i:>3}  {hit['score']:.4f}  {hit['cid']}  {json.dumps(hit['metadata'])}")
    click.echo(f"({res['latency_ms']} ms)")


# --- index ------------------------------------------------------------------------------


@click.group("index")
def index() -> None:
    """The miner's store projection (USearch + metadata)."""


async def _rebuild(s: Settings) -> dict[str, Any]:
    from engram.bus import open_bus
    from engram.miner.node import open_store
    from engram.miner.projection import StoreRunner

    bus = await open_bus(s)
    try:
        store = await asyncio.to_thread(open_store, s)
        runner = StoreRunner(bus.js, store, publisher=None)
        n = await runner.rebuild()
        out = {
            "replayed": n,
            "memories": len(store),
            "applied_seq": store.applied_seq,
            "refused": runner.stats.refused,
        }
        store.close()
        return out
    finally:
        await bus.close()


@index.command("rebuild")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.pass_context
def index_rebuild(ctx: click.Context, data_dir: str | None) -> None:
    """Replay MEMORY from sequence 1 into a fresh index (stop the miner first)."""
    _echo_json(asyncio.run(_rebuild(_settings(ctx, data_dir))))


@index.command("stats")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.pass_context
def index_stats(ctx: click.Context, data_dir: str | None) -> None:
    """Memories per namespace and the applied sequence, from the last snapshot."""
    s = _settings(ctx, data_dir)
    root = s.data_path / "store"
    cur = root / "CURRENT"
    if not cur.exists():
        _echo_json({"applied_seq": 0, "namespaces": {}, "snapshot": None})
        return
    snap = root / "snapshots" / cur.read_text().strip()
    manifest = json.loads((snap / "manifest.json").read_text())
    _echo_json(
        {"applied_seq": manifest["seq"], "namespaces": manifest["counts"], "snapshot": str(snap)}
    )


def register(main: click.Group) -> None:
    for cmd in (miner, ingest, query, index, retrieve):
        main.add_command(cmd)


@click.group(cls=EngramGroup)
@click.option("--config", "config", type=click.Path(dir_okay=False))
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False))
@click.option("--log-level", default=None)
@click.pass_context
def standalone(
    ctx: click.Context, config: str | None, data_dir: str | None, log_level: str | None
) -> None:
    """Miner commands without the rest of the engram CLI (``python -m engram.miner``)."""
    ctx.ensure_object(dict).update(config=config, data_dir=data_dir, log_level=log_level)


standalone.add_command(miner_run, "run")
standalone.add_command(miner_worker, "worker")
standalone.add_command(index_rebuild, "rebuild")
register(standalone)
