"""Everyday commands: ``config show``, ``nats up|status``, ``doctor``, ``demo``, ``replay``."""

from __future__ import annotations

import datetime as dt
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from . import get_settings, print_json, run_async

if TYPE_CHECKING:
    from engram.ops import Position

console = Console(stderr=True)


@click.group("config")
def config_group() -> None:
    """Show settings."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings (defaults < TOML file < ENGRAM_* env), secrets masked."""
    shown = get_settings(ctx).shown()
    if as_json:
        print_json(shown)
        return
    table = Table("setting", "value", title="engram settings")
    for key, value in shown.items():
        table.add_row(key, "(embedded)" if key == "nats_url" and value is None else str(value))
    Console().print(table)


@click.group("nats")
def nats_group() -> None:
    """The embedded NATS server (used when ENGRAM_NATS_URL is not set)."""


@nats_group.command("up")
@click.option(
    "--port", type=int, default=None, help="Client port (default: settings, else a free one)."
)
@click.pass_context
def nats_up(ctx: click.Context, port: int | None) -> None:
    """Run the embedded nats-server with JetStream in the foreground until Ctrl-C."""
    from engram.natsd import EmbeddedNats

    s = get_settings(ctx)
    server = EmbeddedNats(
        data_dir=s.data_path / "nats",
        port=port or s.nats_port,
        monitor_port=s.nats_monitor_port,
        sync=s.nats_sync,
    )
    server.start()
    if not server.owned:
        console.print(f"[yellow]already running[/] at {server.url} (data dir {server.data_dir})")
        return
    console.print(
        f"[green]nats-server up[/] at [bold]{server.url}[/]  "
        f"store {server.store_dir}  sync_interval={s.nats_sync}"
    )
    console.print("Ctrl-C to stop.")
    stopped = False

    def _stop(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stopped and server.process is not None and server.process.poll() is None:
            time.sleep(0.2)
    finally:
        server.stop()
        console.print("nats-server stopped")


@nats_group.command("status")
@click.pass_context
def nats_status(ctx: click.Context) -> None:
    """Is the embedded server for this data dir running? Streams and messages if so."""
    from engram.natsd import server_status

    s = get_settings(ctx)
    if s.nats_url:
        print_json({"external": True, "url": s.shown()["nats_url"]})
        return
    status = server_status(s.data_path / "nats")
    print_json(status)
    if not status["running"]:
        sys.exit(1)


@click.command("doctor")
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """What this installation uses: Python, engram-core backend, nats-server, settings."""
    from engram.natsd import NatsServerError, find_nats_server

    s = get_settings(ctx)
    report: dict[str, object] = {"python": platform.python_version(), "data_dir": str(s.data_path)}
    try:
        from engram import core

        report["core"] = core.backend_info()
    except ImportError as exc:
        report["core"] = {"error": str(exc)}
    try:
        report["nats_server"] = find_nats_server()
    except NatsServerError as exc:
        report["nats_server"] = f"missing: {exc}"
    report["nats"] = "external" if s.nats_url else "embedded"
    print_json(report)


@click.command("demo")
@click.option("--events", default=200, show_default=True, help="How many demo events to publish.")
@click.option("--no-miner", is_flag=True, help="Only the event-layer part (no model load).")
@click.option(
    "--data-dir",
    "demo_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Run in this data dir and keep it (default: a temporary one, removed afterwards).",
)
@click.pass_context
def demo(ctx: click.Context, events: int, no_miner: bool, demo_dir: str | None) -> None:
    """Engram end to end: events, a worker, a live projection checked against a rebuild; then
    a miner that ingests facts, answers questions and a storage challenge.

    Without --data-dir (here or before the command) it runs on its own embedded server in a
    temporary directory that is removed afterwards; only the model cache is kept, under the
    configured data dir. Either way the consumers it creates are deleted."""
    from engram.demo import run_demo

    obj = ctx.ensure_object(dict)
    if demo_dir:
        obj["data_dir"] = demo_dir
    if obj.get("data_dir"):
        result = run_async(run_demo(get_settings(ctx), events, miner=not no_miner))
        result["data_dir"] = str(get_settings(ctx).data_path)
        result["data_dir_removed"] = False
        print_json(result)
        return
    configured = get_settings(ctx)
    with tempfile.TemporaryDirectory(prefix="engram-demo-") as tmp:
        if configured.nats_url:
            console.print("demo: ignoring ENGRAM_NATS_URL; using a temporary embedded server")
        # the model is a cache, not state: share the configured data dir's
        cache = configured.data_path / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / "cache").symlink_to(cache, target_is_directory=True)
        s = msgspec.structs.replace(configured, data_dir=tmp, nats_url=None)
        result = run_async(run_demo(s, events, miner=not no_miner))
    result["data_dir"] = tmp
    result["data_dir_removed"] = not Path(tmp).exists()
    print_json(result)


def _stream_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion for a stream name (the streams Engram defines)."""
    from streams.topology import STREAMS

    return [s.name for s in STREAMS if s.name.startswith(incomplete.upper())]


class _PositionType(click.ParamType):  # type: ignore[type-arg]  # generic in click >= 8.2
    name = "SEQ|TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Position:
        from engram.ops import Position, parse_position
        from streams.errors import InputError

        if isinstance(value, Position):
            return value
        try:
            return parse_position(str(value))
        except InputError as exc:
            self.fail(str(exc), param, ctx)


@click.command("replay")
@click.argument("stream", shell_complete=_stream_names)
@click.option(
    "--from",
    "start",
    type=_PositionType(),
    default=None,
    help="First message: a sequence, an ISO time (UTC) or an age (10m, 2h) [default: 1].",
)
@click.option(
    "--to", "end", type=_PositionType(), default=None, help="Last message: a sequence or time."
)
@click.option("--subject", "subjects", multiple=True, help="Only these subjects (repeatable).")
@click.option("--limit", type=int, default=0, help="Stop after N events (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (vectors and bytes as lengths).")
@click.option("--from-seq", type=int, default=None, hidden=True)  # older spellings of --from
@click.option("--since", type=click.DateTime(), default=None, hidden=True)
@click.option("--nats-url", default=None, metavar="URL", help="NATS to read.")
@click.pass_context
def replay_cmd(
    ctx: click.Context,
    stream: str,
    start: Any,
    end: Any,
    subjects: tuple[str, ...],
    limit: int,
    as_json: bool,
    from_seq: int | None,
    since: dt.datetime | None,
    nats_url: str | None,
) -> None:
    """Print a stream's events in order, from --from up to --to (default: all of it).
    One readable line each; --json prints JSON lines a script can parse."""
    from engram.ops import Position, connect, event_json, summarize
    from streams.replay import replay_raw

    if start is None:
        if since is not None:
            start = Position(time=since.replace(tzinfo=dt.UTC))
        else:
            start = Position(seq=from_seq or 1)
    s = get_settings(ctx)
    if nats_url:
        s = msgspec.structs.replace(s, nats_url=nats_url)

    async def _run() -> int:
        bus = await connect(s)
        n = 0
        try:
            async for item in replay_raw(
                bus.js,
                stream.upper(),
                start_seq=start.seq or 1,
                start_time=start.time,
                subjects=list(subjects) or None,
            ):
                at = item.event.time if item.event is not None else None
                if end is not None and end.passed(item.seq, at):
                    break
                if item.event is None:
                    if as_json:
                        print_json(
                            {"seq": item.seq, "subject": item.subject, "malformed": item.error}
                        )
                    else:
                        click.echo(f"{item.seq:>8}  {item.subject}  <not an event: {item.error}>")
                elif as_json:
                    print_json({"seq": item.seq, "subject": item.subject, **event_json(item.event)})
                else:
                    when = dt.datetime.fromtimestamp(item.event.time, dt.UTC)
                    click.echo(
                        f"{item.seq:>8}  {when.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}  "
                        f"{summarize(item.event)}"
                    )
                n += 1
                if limit and n >= limit:
                    break
        finally:
            await bus.close()
        return n

    n = run_async(_run())
    if not as_json:
        console.print(f"{n} events from {stream.upper()}")


def register(main: click.Group) -> None:
    for cmd in (config_group, nats_group, doctor, demo, replay_cmd):
        main.add_command(cmd)
