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
from pathlib import Path
from typing import Any

import click

from engram.config import ConfigError, Settings, load_settings
from engram.log import configure_logging

__all__ = ["index", "ingest", "miner", "query", "register", "standalone"]

DEFAULT_URL = "http://127.0.0.1:8091"


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


def _items(source: str, metadata: dict[str, Any], namespace: str) -> Iterator[dict[str, Any]]:
    """TEXT, a text file (one memory), a directory (each file), or JSONL (one per line:
    a string or an object with text/metadata/namespace)."""
    path = Path(source)
    if not path.exists():
        yield {"text": source, "metadata": metadata, "namespace": namespace}
        return
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if f.suffix in (".jsonl", ".ndjson"):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise click.ClickException(f"{f}:{n}: not JSON: {exc}") from None
                if isinstance(row, str):
                    row = {"text": row}
                yield {
                    "text": row.get("text"),
                    "metadata": {**metadata, **(row.get("metadata") or {})},
                    "namespace": row.get("namespace") or namespace,
                }
        else:
            try:
                text = f.read_text()
            except UnicodeDecodeError:
                continue  # binary file in a directory
            yield {"text": text, "metadata": {**metadata, "source": str(f)}, "namespace": namespace}


def _caller_key(ctx: click.Context) -> Any:
    """The caller's hotkey for btauth/1 (generated once under the data dir), or None when it
    cannot be had (then requests go unsigned: fine for an axon in "open" mode)."""
    from engram.miner.client import client_keypair

    try:
        return client_keypair(_settings(ctx))
    except OSError as exc:
        click.echo(f"warning: no client hotkey ({exc}); sending unsigned requests", err=True)
        return None


async def _ingest(
    url: str, items: list[dict[str, Any]], batch: int, wait: bool, key: Any = None
) -> dict[str, Any]:
    import aiohttp
    from rich.progress import Progress

    from engram.miner.client import AxonClient

    stored = accepted = failed = 0
    errors: list[str] = []
    async with aiohttp.ClientSession(base_url=url) as http:
        axon = AxonClient(http, key)
        with Progress(transient=False) as bar:
            task = bar.add_task("ingesting", total=len(items))
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                status, body = await axon.post(
                    "/IngestBatch", {"items": chunk, "wait": wait, "timeout_s": 60}
                )
                if status >= 400:
                    failed += len(chunk)
                    detail = body.get("items") or []
                    errors.append(
                        body.get("error", "")
                        + "".join(f"; item {start + d['index']}: {d['error']}" for d in detail[:5])
                    )
                else:
                    for res in body["results"]:
                        stored += res["status"] == "stored"
                        accepted += res["status"] == "accepted"
                bar.advance(task, len(chunk))
    return {"stored": stored, "accepted": accepted, "failed": failed, "errors": errors}


@click.command("ingest")
@click.argument("source")
@click.option("--url", default=DEFAULT_URL, show_default=True, help="The miner's axon.")
@click.option("--namespace", default="public", show_default=True)
@click.option("--metadata", "metadata_json", default="{}", help="JSON object added to each.")
@click.option("--batch", default=64, show_default=True)
@click.option("--no-wait", is_flag=True, help="Return once accepted by JetStream.")
@click.pass_context
def ingest(
    ctx: click.Context,
    source: str,
    url: str,
    namespace: str,
    metadata_json: str,
    batch: int,
    no_wait: bool,
) -> None:
    """Remember TEXT, a FILE, every file of a DIR, or each line of a JSONL file."""
    try:
        metadata = json.loads(metadata_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from None
    items = list(_items(source, metadata, namespace))
    if not items:
        raise click.ClickException(f"nothing to ingest in {source}")
    try:
        key = _caller_key(ctx)
        result = asyncio.run(_ingest(url, items, max(1, min(batch, 1000)), not no_wait, key))
    except OSError as exc:
        raise click.ClickException(f"cannot reach the miner at {url}: {exc}") from None
    _echo_json(result)
    if result["failed"]:
        sys.exit(1)


async def _query(url: str, body: dict[str, Any], key: Any = None) -> tuple[int, dict[str, Any]]:
    import aiohttp

    from engram.miner.client import AxonClient

    async with aiohttp.ClientSession(base_url=url) as http:
        return await AxonClient(http, key).post("/QuerySynapse", body)


@click.command("query")
@click.argument("text")
@click.option("--url", default=DEFAULT_URL, show_default=True)
@click.option("--top-k", default=10, show_default=True)
@click.option("--namespace", default="public", show_default=True)
@click.option("--filter", "filter_json", default=None, help="JSON object: metadata equality.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def query(
    ctx: click.Context,
    text: str,
    url: str,
    top_k: int,
    namespace: str,
    filter_json: str | None,
    as_json: bool,
) -> None:
    """Semantic search: the TOP_K memories closest to TEXT."""
    body: dict[str, Any] = {"query_text": text, "top_k": top_k, "namespace": namespace}
    if filter_json:
        body["filter"] = json.loads(filter_json)
    try:
        status, res = asyncio.run(_query(url, body, _caller_key(ctx)))
    except OSError as exc:
        raise click.ClickException(f"cannot reach the miner at {url}: {exc}") from None
    if status != 200:
        raise click.ClickException(res.get("error") or f"HTTP {status}")
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
    for cmd in (miner, ingest, query, index):
        main.add_command(cmd)


@click.group()
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
