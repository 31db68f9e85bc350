"""``engram publish FILE|-``: a trusted producer's bulk ingest straight onto the bus.

Reads JSONL (one memory a line: a JSON string, or an object with ``text`` and optional
``metadata``, ``namespace``, ``request_id``; a line that is not JSON is taken as plain
text) from FILE or standard input, publishes it with
:class:`engram.sdk.publisher.DirectPublisher` and waits for each memory to be stored.
Prints one JSON summary on stdout; progress goes to stderr. Exits 1 if anything failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from typing import IO, Any

import click
from rich.console import Console

from engram.cli import get_settings, print_json

__all__ = ["publish", "register"]

_stderr = Console(stderr=True)


def _lines(stream: IO[str]) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = line.rstrip("\n")
        yield n, row


async def _publish(
    settings: Any,
    items: list[tuple[int, Any]],
    *,
    caller: str,
    namespace: str,
    metadata: dict[str, Any],
    batch: int,
    wait: bool,
    timeout_s: float,
) -> list[Any]:
    from rich.progress import Progress

    from engram.sdk.publisher import DirectPublisher

    async with DirectPublisher.connect(settings, caller=caller) as pub:
        with Progress(console=_stderr, transient=True) as bar:
            sent = bar.add_task("published", total=len(items))
            stored = bar.add_task("stored", total=len(items), visible=wait)

            def progress(published: int, confirmed: int) -> None:
                bar.update(sent, completed=published)
                bar.update(stored, completed=confirmed)

            return await pub.publish(
                items,
                namespace=namespace,
                metadata=metadata,
                wait=wait,
                timeout_s=timeout_s,
                batch=batch,
                progress=progress,
            )


@click.command("publish")
@click.argument("source", type=click.File("r", encoding="utf-8"))
@click.option("--namespace", default="public", show_default=True)
@click.option("--metadata", "metadata_json", default="{}", help="JSON object added to each.")
@click.option("--caller", default="direct", show_default=True, help="Idempotency-id scope.")
@click.option("--batch", default=256, show_default=True, help="Events per publish batch.")
@click.option("--no-wait", is_flag=True, help="Return once JetStream acknowledged.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, help="Wait for stored.")
@click.option("--json", "as_json", is_flag=True, help="Print every item's outcome too.")
@click.pass_context
def publish(
    ctx: click.Context,
    source: IO[str],
    namespace: str,
    metadata_json: str,
    caller: str,
    batch: int,
    no_wait: bool,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Publish each line of FILE (``-``: standard input) as an ingest on the bus and wait
    until it is stored. Re-publishing the same lines stores nothing twice."""
    try:
        metadata = json.loads(metadata_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from None
    if not isinstance(metadata, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--metadata")
    items = list(_lines(source))
    if not items:
        raise click.ClickException("nothing to publish")
    settings = get_settings(ctx)
    results = asyncio.run(
        _publish(
            settings,
            items,
            caller=caller,
            namespace=namespace,
            metadata=metadata,
            batch=max(1, batch),
            wait=not no_wait,
            timeout_s=timeout_s,
        )
    )
    counts: dict[str, int] = {"stored": 0, "duplicate": 0, "pending": 0, "rejected": 0}
    counts["invalid"] = 0
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        counts["duplicate"] += r.duplicate
    failed = [
        {"line": r.line, "request_id": r.request_id, "status": r.status, "error": r.error}
        for r in results
        if r.status in ("rejected", "invalid")
    ]
    out: dict[str, Any] = {"published": len(results) - counts["invalid"], **counts}
    out["failed"] = failed[:50]
    if as_json:
        out["items"] = [
            {"line": r.line, "request_id": r.request_id, "status": r.status, "cid": r.cid}
            for r in results
        ]
    print_json(out)
    if failed or (not no_wait and counts["pending"]):
        sys.exit(1)


def register(main: click.Group) -> None:
    main.add_command(publish)
