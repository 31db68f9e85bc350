"""``engram console``: the web console on its own, for a bus an operator names."""

from __future__ import annotations

import asyncio
import signal

import click
import msgspec
from rich.console import Console

from . import get_settings, run_async

__all__ = ["console", "register"]


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


def register(main: click.Group) -> None:
    main.add_command(console)
