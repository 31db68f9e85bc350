"""``engram console``: the web console on its own, for a bus an operator names."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import click
import msgspec
from rich.console import Console

from . import get_settings, run_async

if TYPE_CHECKING:
    from engram.bus import Bus
    from engram.config import Settings

__all__ = ["console", "register", "run_with_console"]


@click.command("console")
@click.option(
    "--nats-url",
    default=None,
    metavar="URL",
    help="The validator's NATS [default: ENGRAM_NATS_URL, else the data dir's embedded one].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", type=int, default=8093, show_default=True, help="0: a free port.")
@click.pass_context
def console(ctx: click.Context, nats_url: str | None, host: str, port: int) -> None:
    """Serve the web console (Network, Bus, Memory) until Ctrl-C. Queries from its
    playground are signed with this data dir's client hotkey."""
    from engram.console import ConsoleServer
    from engram.miner.client import client_keypair
    from engram.ops import connect

    s = get_settings(ctx)
    if nats_url:
        s = msgspec.structs.replace(s, nats_url=nats_url)
    err = Console(stderr=True)

    async def _run() -> None:
        keypair = await asyncio.to_thread(client_keypair, s)
        bus = await connect(s)
        server = ConsoleServer(bus, host=host, port=port, keypair=keypair)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            url = await server.start()
            err.print(f"console: [bold]{url}[/]  (bus {bus.url}; Ctrl-C stops)")
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await server.stop()
            await bus.close()

    run_async(_run())


async def run_with_console(
    run: Coroutine[Any, Any, None],
    bus_of: Callable[[], Bus | None],
    settings: Settings,
    host: str,
    port: int,
) -> None:
    """Run a node (``run``) and serve the console on its bus once it has one (``bus_of``);
    the console stops with the node."""
    from engram.console import ConsoleServer
    from engram.miner.client import client_keypair

    task = asyncio.ensure_future(run)
    while (bus := bus_of()) is None and not task.done():
        await asyncio.sleep(0.1)
    if bus is None:
        await task
        return
    keypair = await asyncio.to_thread(client_keypair, settings)
    server = ConsoleServer(bus, host=host, port=port, keypair=keypair)
    try:
        url = await server.start()
        Console(stderr=True).print(f"console: [bold]{url}[/]")
        await task
    finally:
        await server.stop()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def register(main: click.Group) -> None:
    main.add_command(console)
