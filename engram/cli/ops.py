"""Operator commands: ``engram status``, ``engram tail``, ``engram dlq``, ``engram completion``.

Each reads the bus named by ``--nats-url`` (else ``ENGRAM_NATS_URL``, else the embedded
server running for the data dir; none is started for the occasion). ``--json`` prints
clean JSON on stdout; tables and progress go to stderr or, for the tables a human asked
for, stdout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from engram.config import Settings
from streams.errors import InputError

from . import get_settings, print_json, run_async

__all__ = ["register"]

err = Console(stderr=True)


def nats_url_option(f: Any) -> Any:
    return click.option(
        "--nats-url",
        default=None,
        metavar="URL",
        help="NATS to inspect [default: ENGRAM_NATS_URL, else the data dir's embedded server].",
    )(f)


def bus_settings(ctx: click.Context, nats_url: str | None) -> Settings:
    s = get_settings(ctx)
    return msgspec.structs.replace(s, nats_url=nats_url) if nats_url else s


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# --- status ---------------------------------------------------------------------------


async def _miner_stats(url: str, keypair: Any) -> dict[str, Any]:
    import aiohttp

    from engram.miner.client import AxonClient

    try:
        async with aiohttp.ClientSession(
            base_url=url, timeout=aiohttp.ClientTimeout(total=10)
        ) as http:
            status, body = await AxonClient(http, keypair).get("/stats")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"url": url, "error": f"cannot reach the miner: {exc or type(exc).__name__}"}
    if status != 200:
        return {"url": url, "error": body.get("error") or f"HTTP {status}"}
    return {
        "url": url,
        "memories": body.get("memories"),
        "namespaces": body.get("namespaces"),
        "applied_seq": body.get("applied_seq"),
        "index_dtype": body.get("index_dtype"),
        "model_version": body.get("model_version"),
    }


@click.command("status")
@nats_url_option
@click.option(
    "--miner",
    "miners",
    multiple=True,
    metavar="URL",
    help="Also read this miner's index size from its axon /stats (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(
    ctx: click.Context, nats_url: str | None, miners: tuple[str, ...], as_json: bool
) -> None:
    """Nodes, streams (messages, bytes), consumer lag, index sizes and DLQ depth."""
    from engram.ops import bus_status, connect, index_status

    s = bus_settings(ctx, nats_url)

    async def _run() -> dict[str, Any]:
        bus = await connect(s)
        try:
            out = await bus_status(bus)
        finally:
            await bus.close()
        indexes: list[dict[str, Any]] = []
        local = index_status(s.data_path)
        if local is not None:
            indexes.append({"source": "local", **local})
        if miners:
            from engram.miner.client import client_keypair

            key = await asyncio.to_thread(client_keypair, s)
            for url in miners:
                indexes.append({"source": "miner", **await _miner_stats(url, key)})
        out["indexes"] = indexes
        return out

    out = run_async(_run())
    if as_json:
        print_json(out)
        return
    con = Console()
    nats = out["nats"]
    con.print(f"[bold]NATS[/] {nats['url']}  version {nats['version']}")
    nodes = Table("node", "leads", "replicates", "behind", title="nodes")
    for n in out["nodes"]:
        nodes.add_row(
            n["name"],
            ", ".join(n["leads"]) or "-",
            ", ".join(n["replicates"]) or "-",
            f"[red]{', '.join(n['behind'])}[/]" if n["behind"] else "-",
        )
    con.print(nodes)
    streams = Table("stream", "messages", "bytes", "seq", "consumers", "replicas", title="streams")
    for st in out["streams"]:
        streams.add_row(
            st["name"],
            str(st["messages"]),
            _bytes(st["bytes"]),
            f"{st['first_seq']}..{st['last_seq']}",
            str(st["consumers"]),
            f"R{st['replicas']}",
        )
    con.print(streams)
    cons = Table(
        "consumer", "stream", "lag", "pending", "ack pending", "redelivered", title="consumers"
    )
    for c in out["consumers"]:
        lag = str(c["lag"]) if not c["lag"] else f"[yellow]{c['lag']}[/]"
        cons.add_row(
            c["name"],
            c["stream"],
            lag,
            str(c["pending"]),
            str(c["ack_pending"]),
            str(c["redelivered"]),
        )
    con.print(cons)
    if out["indexes"]:
        idx = Table("index", "memories", "namespaces", "applied seq", "size", title="indexes")
        for i in out["indexes"]:
            where = i.get("path") or i.get("url") or "?"
            if "error" in i:
                idx.add_row(where, f"[red]{i['error']}[/]", "", "", "")
                continue
            size = _bytes(i["bytes_on_disk"]) if "bytes_on_disk" in i else "-"
            idx.add_row(
                where,
                str(i.get("memories")),
                str(len(i.get("namespaces") or {})),
                str(i.get("applied_seq")),
                size,
            )
        con.print(idx)
    dlq = out["dlq"]
    colour = "red" if dlq["depth"] else "green"
    by = ", ".join(f"{k} {v}" for k, v in dlq["by_consumer"].items())
    con.print(
        f"[bold]DLQ depth[/] [{colour}]{dlq['depth']}[/]"
        f"  ({dlq['dead_lettered']} dead-lettered, {dlq['retried']} retried)"
        + (f"  by consumer: {by}" if by else "")
    )


# --- tail -----------------------------------------------------------------------------


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


@click.command("tail")
@click.argument("subject", default="engram.>")
@nats_url_option
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.pass_context
def tail(
    ctx: click.Context, subject: str, nats_url: str | None, count: int | None, as_json: bool
) -> None:
    """Print events as they are published on SUBJECT (default: every Engram subject), one
    readable line each, until Ctrl-C or --count."""
    import time

    from nats.aio.msg import Msg

    from engram.ops import connect, event_json, summarize
    from streams.events import EventDecodeError, decode

    s = bus_settings(ctx, nats_url)

    async def _run() -> int:
        bus = await connect(s)
        done = asyncio.Event()
        seen = 0

        async def on_msg(msg: Msg) -> None:
            nonlocal seen
            if done.is_set():
                return
            now = time.time()
            try:
                event = decode(msg.data)
            except EventDecodeError as exc:
                if as_json:
                    print_json({"subject": msg.subject, "malformed": str(exc)})
                else:
                    click.echo(f"{_stamp(now)}  {msg.subject}  <{len(msg.data)} B, not an event>")
            else:
                if as_json:
                    print_json({"subject": msg.subject, **event_json(event)})
                else:
                    kind, _, rest = summarize(event).partition(" ")
                    click.echo(
                        f"{_stamp(event.time)}  {click.style(kind, fg='cyan', bold=True)}"
                        f"  {rest}  [{msg.subject}]"
                    )
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                done.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        try:
            await bus.nc.subscribe(subject, cb=on_msg)
            await bus.nc.flush()
            err.print(f"tailing [bold]{subject}[/] on {bus.url} (Ctrl-C stops)")
            await done.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await bus.close()
        return seen

    n = run_async(_run())
    err.print(f"{n} events")


# --- dlq ------------------------------------------------------------------------------


@click.group("dlq")
def dlq() -> None:
    """The dead-letter queue: messages a worker gave up on, with the cause."""


def _dlq_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="DLQ")
    t.add_column("seq", justify="right", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("time", no_wrap=True)
    t.add_column("consumer", overflow="fold", max_width=20)
    t.add_column("original", overflow="fold", max_width=28)
    t.add_column("cause", overflow="ellipsis", max_width=60, ratio=1)
    for r in rows:
        status = "[green]retried[/]" if r["status"] == "retried" else "[red]dead[/]"
        t.add_row(
            str(r["seq"]),
            status,
            _stamp(r["time"])[:8],
            r["consumer"],
            f"{r['stream']}:{r['stream_seq']} {r['original_subject']}",
            f"{r['error_type']}: {r['error']}"[:160],
        )
    return t


@dlq.command("list")
@nats_url_option
@click.option("--consumer", default=None, help="Only this worker's dead letters.")
@click.option("--all", "show_all", is_flag=True, help="Include the ones already retried.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_list(
    ctx: click.Context, nats_url: str | None, consumer: str | None, show_all: bool, as_json: bool
) -> None:
    """Dead letters waiting for an operator (--all: also the retried ones)."""
    from engram.ops import connect, dlq_entries

    s = bus_settings(ctx, nats_url)

    async def _run() -> list[dict[str, Any]]:
        bus = await connect(s)
        try:
            entries = await dlq_entries(bus.js)
        finally:
            await bus.close()
        return [
            e.as_json()
            for e in entries
            if (show_all or not e.retries) and (consumer is None or e.dead.consumer == consumer)
        ]

    rows = run_async(_run())
    if as_json:
        print_json(rows)
    else:
        Console().print(_dlq_table(rows))
        if not rows:
            err.print("the DLQ is empty" + ("" if show_all else " (of dead letters not retried)"))


async def _entry(js: Any, seq: int) -> Any:
    from engram.ops import dlq_entries

    for e in await dlq_entries(js):
        if e.seq == seq:
            return e
    raise InputError(f"no dead letter at DLQ sequence {seq} (see `engram dlq list --all`)")


@dlq.command("show")
@click.argument("seq", type=click.IntRange(min=1))
@nats_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_show(ctx: click.Context, seq: int, nats_url: str | None, as_json: bool) -> None:
    """One dead letter: the cause, the original headers and the original event decoded."""
    from engram.ops import connect

    s = bus_settings(ctx, nats_url)

    async def _run() -> dict[str, Any]:
        bus = await connect(s)
        try:
            return (await _entry(bus.js, seq)).as_json(full=True)  # type: ignore[no-any-return]
        finally:
            await bus.close()

    out = run_async(_run())
    if as_json:
        print_json(out)
        return
    con = Console()
    t = Table(show_header=False, title=f"dead letter {seq}")
    for key in ("status", "consumer", "original_subject", "stream", "stream_seq", "deliveries"):
        t.add_row(key, str(out[key]))
    t.add_row("time", dt.datetime.fromtimestamp(out["time"], dt.UTC).isoformat())
    t.add_row("cause", f"[red]{out['error_type']}[/]: {out['error']}")
    for k, v in out["original_headers"].items():
        t.add_row(f"header {k}", v)
    t.add_row("original bytes", str(out["original_bytes"]))
    for r in out["retries"]:
        t.add_row(f"retry {r['attempt']}", f"{r['msg_id']} -> {r['stream']}:{r['seq']}")
    con.print(t)
    if out["original_event"] is not None:
        con.print_json(data=out["original_event"])
    else:
        con.print(f"original (not an event), first bytes: {out['original_hex']}")


@dlq.command("retry")
@click.argument("seqs", nargs=-1, type=click.IntRange(min=1))
@nats_url_option
@click.option("--all", "retry_all", is_flag=True, help="Every dead letter not retried yet.")
@click.option("--consumer", default=None, help="With --all: only this worker's.")
@click.option("--force", is_flag=True, help="Send again one that was already retried.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_retry_cmd(
    ctx: click.Context,
    seqs: tuple[int, ...],
    nats_url: str | None,
    retry_all: bool,
    consumer: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Publish dead letters' original messages to their subjects again (a fresh message
    id each; the retry is recorded on the DLQ stream)."""
    from engram.ops import connect, dlq_entries, dlq_retry

    if bool(seqs) == retry_all:
        raise click.UsageError("give DLQ sequence numbers or --all (not both)")
    s = bus_settings(ctx, nats_url)

    async def _run() -> list[dict[str, Any]]:
        bus = await connect(s)
        try:
            entries = {e.seq: e for e in await dlq_entries(bus.js)}
            if retry_all:
                todo = [
                    e
                    for e in entries.values()
                    if not e.retries and (consumer is None or e.dead.consumer == consumer)
                ]
            else:
                todo = []
                for seq in seqs:
                    if seq not in entries:
                        raise InputError(f"no dead letter at DLQ sequence {seq}")
                    e = entries[seq]
                    if e.retries and not force:
                        raise InputError(
                            f"dead letter {seq} was already retried "
                            f"({len(e.retries)}x); --force sends it again"
                        )
                    todo.append(e)
            out = []
            for e in todo:
                r = await dlq_retry(bus.js, bus.publisher, e, operator=s.producer)
                out.append(
                    {
                        "seq": e.seq,
                        "subject": r.original_subject,
                        "msg_id": r.republished_msg_id,
                        "stream": r.republished_stream,
                        "stream_seq": r.republished_seq,
                        "attempt": r.attempt,
                    }
                )
            return out
        finally:
            await bus.close()

    out = run_async(_run())
    if as_json:
        print_json(out)
        return
    for r in out:
        click.echo(
            f"retried {r['seq']}: {r['subject']} -> {r['stream']}:{r['stream_seq']} "
            f"(msg id {r['msg_id']})"
        )
    err.print(f"{len(out)} retried")


# --- completion -----------------------------------------------------------------------


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script, e.g. ``eval "$(engram completion bash)"`` in
    ~/.bashrc, ``engram completion fish > ~/.config/fish/completions/engram.fish``."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the Choice allows only shells click knows
    root = ctx.find_root().command
    click.echo(cls(root, {}, "engram", "_ENGRAM_COMPLETE").source())


def register(main: click.Group) -> None:
    for cmd in (status, tail, dlq, completion):
        main.add_command(cmd)
