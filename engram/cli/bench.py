"""``engram bench bus|core|ingest``: benchmarks that print one JSON object on the last line."""

from __future__ import annotations

import importlib.util

import click

from . import get_settings, print_json, run_async


@click.group("bench")
def bench_group() -> None:
    """Benchmarks (figures as ratios against a baseline measured in the same run)."""


@bench_group.command("bus")
@click.option("--events", default=20000, show_default=True)
@click.option("--payload", "size", default=1024, show_default=True, help="Payload bytes per event.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON line on stdout.")
@click.pass_context
def bench_bus(ctx: click.Context, events: int, size: int, as_json: bool) -> None:
    """Publisher and worker runner vs plain nats-py, on the embedded server."""
    from engram.bench.bus import run

    s = get_settings(ctx)
    result = run_async(run(events=events, size=size, sync=s.nats_sync))
    print_json(result)


@bench_group.command("core")
@click.option("--rows", default=100000, show_default=True)
@click.option("--dim", default=384, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON line on stdout.")
@click.pass_context
def bench_core(ctx: click.Context, rows: int, dim: int, as_json: bool) -> None:
    """engram-core (Rust) vs the pure-Python fallback vs hashlib, for CIDs and proofs."""
    from engram.bench.core import run

    get_settings(ctx)
    print_json(run(rows=rows, dim=dim))


if importlib.util.find_spec("engram.bench.ingest") is not None:

    @bench_group.command("ingest")
    @click.option("--docs", default=5000, show_default=True)
    @click.option(
        "--index-scale",
        type=int,
        default=None,
        help="Instead: the index alone at this many synthetic clustered vectors.",
    )
    @click.option("--queries", default=200, show_default=True, help="Held-out query texts.")
    @click.option(
        "--corpus",
        type=click.Choice(["wordnet", "docstrings"]),
        default="wordnet",
        show_default=True,
        help="Real texts: WordNet definitions (package wn) or installed docstrings.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print only the JSON line on stdout.")
    @click.pass_context
    def bench_ingest(
        ctx: click.Context,
        docs: int,
        index_scale: int | None,
        queries: int,
        corpus: str,
        as_json: bool,
    ) -> None:
        """End-to-end miner ingest, recall, query latency (idle and under ingest), batch
        ingest and memory on an embedded miner."""
        from engram.bench.ingest import run, run_index_scale

        get_settings(ctx)
        if index_scale:
            print_json(run_index_scale(index_scale, queries=queries))
        else:
            print_json(run(docs=docs, queries=queries, corpus=corpus))


def register(main: click.Group) -> None:
    main.add_command(bench_group)
