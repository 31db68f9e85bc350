"""``engram devnet``: a whole subnet on loopback (NATS, local chain, miners, adversaries,
a validator) with a live table on stderr; Ctrl-C stops everything it started."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from engram.log import configure_logging

__all__ = ["devnet", "register"]


class _Stderr:
    """``sys.stderr`` as it is when written to (rich's Live replaces it while it runs)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.__stderr__ is not None and sys.__stderr__.isatty()


@click.command("devnet")
@click.option(
    "--miners", type=click.IntRange(min=0), default=3, show_default=True, help="Honest miners."
)
@click.option(
    "--adversary",
    "adversaries",
    multiple=True,
    type=click.Choice(["hash-only", "lossy", "slow", "wrong", "copycat"]),
    help="Add one misbehaving miner of this kind (repeatable).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Exit by itself after this many weight epochs.",
)
@click.option(
    "--fast", is_flag=True, help="Seconds-scale cadences (evaluation, challenges, weights)."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object last on stdout (weights, audit_ok, replication).",
)
@click.option(
    "--blobs",
    is_flag=True,
    help="Run arlocal and ingest a PNG and a 3-page PDF through a miner (needs arlocal).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep state here (default: a temporary dir removed at exit).",
)
@click.option("--no-console", is_flag=True, help="Do not serve the web console.")
@click.option(
    "--console-port", type=int, default=0, help="The web console's port [default: a free one]."
)
@click.pass_context
def devnet(
    ctx: click.Context,
    miners: int,
    adversaries: tuple[str, ...],
    epochs: int | None,
    fast: bool,
    as_json: bool,
    blobs: bool,
    data_dir: str | None,
    no_console: bool,
    console_port: int,
) -> None:
    """Run a devnet: NATS, the local chain, miners and a validator on loopback."""
    if blobs:  # say so before anything starts
        from engram.blobs.arlocal import ArLocalMissing, find_arlocal

        try:
            find_arlocal()
        except ArLocalMissing as exc:
            raise click.ClickException(f"--blobs: {exc}") from None
    from rich.console import Console
    from rich.live import Live

    from engram.devnet import Devnet, DevnetConfig, DevnetView
    from engram.devnet.view import render

    obj = ctx.ensure_object(dict)
    # the table is the interface: logs only for warnings unless asked, written through
    # whatever sys.stderr is at the time, so the live display prints them above the table
    configure_logging(
        obj.get("log_level") or "warning", obj.get("log_format") or "auto", stream=_Stderr()
    )
    config = DevnetConfig(
        miners=miners,
        adversaries=adversaries,
        epochs=epochs,
        fast=fast,
        blobs=blobs,
        data_dir=Path(data_dir) if data_dir else None,
        console=not no_console,
        console_port=console_port,
    )
    console = Console(stderr=True)
    if not console.is_terminal:  # a log or a pipe: room for every column
        console.width = 120
    live = Live(console=console, refresh_per_second=4, transient=False, auto_refresh=True)
    last = [0.0]
    shown = [False]  # the console's URL, printed once when it serves

    def on_change(view: DevnetView) -> None:
        if view.console_url and not shown[0]:
            shown[0] = True
            console.print(f"console: [bold]{view.console_url}[/]")
        now = time.monotonic()
        if now - last[0] >= 0.2:  # the Live refreshes 4x/s; rebuilding more often is waste
            last[0] = now
            live.update(render(view))

    net = Devnet(config, on_change=on_change)
    started = time.monotonic()

    async def go() -> dict[str, Any]:
        with live:
            try:
                return await net.run()
            finally:
                live.update(render(net.view))

    try:
        result = asyncio.run(go())
    except (asyncio.CancelledError, KeyboardInterrupt):
        console.print("\ndevnet stopped while starting")
        sys.exit(130)
    result["seconds"] = round(time.monotonic() - started, 1)
    console.print(
        f"\naudit: {'OK' if result['audit_ok'] else 'FAILED'} · epochs {result['epochs']} · "
        f"{result['seconds']} s"
    )
    if as_json:
        click.echo(json.dumps(result))
    if result["audit_ok"] is False:
        ctx.exit(1)


def register(main: click.Group) -> None:
    main.add_command(devnet)
