"""``engram bench bus|core|floats|ingest``: benchmarks printing one JSON object last."""

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


@bench_group.command("floats")
@click.option("--count", default=5_000_000, show_default=True, help="Random 64-bit patterns.")
@click.option("--ordinary", default=1_000_000, show_default=True, help="Everyday values.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON line on stdout.")
@click.pass_context
def bench_floats(ctx: click.Context, count: int, ordinary: int, seed: int, as_json: bool) -> None:
    """engram-core's float text vs Python's repr: random patterns, every tie family, edges.

    Exits 1 if any value is formatted differently (``mismatches`` > 0).
    """
    from engram.bench.floats import run

    get_settings(ctx)
    result = run(count=count, seed=seed, ordinary=ordinary)
    print_json(result)
    if result["mismatches"]:
        ctx.exit(1)


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


if importlib.util.find_spec("engram.validator.bench") is not None:

    @bench_group.command("validator")
    @click.option("--miners", default=64, show_default=True)
    @click.option("--challenges", default=1, show_default=True, help="Per miner and round.")
    @click.option("--slowest-ms", default=200.0, show_default=True, help="Slowest stub axon.")
    @click.option("--rounds", default=50, show_default=True, help="Rounds in the audited log.")
    @click.option("--json", "as_json", is_flag=True, help="Print only the JSON line on stdout.")
    @click.pass_context
    def bench_validator(
        ctx: click.Context,
        miners: int,
        challenges: int,
        slowest_ms: float,
        rounds: int,
        as_json: bool,
    ) -> None:
        """A challenge round across stub axons with set latencies, and audit replay speed."""
        from engram.validator.bench import run

        get_settings(ctx)
        print_json(
            run_async(
                run(miners=miners, challenges=challenges, slowest_ms=slowest_ms, rounds=rounds)
            )
        )


if importlib.util.find_spec("engram.bench.brain") is not None:  # the brain (issue 11)

    @bench_group.command("brain")
    @click.option("--users", default=10, show_default=True)
    @click.option("--sessions", default=10, show_default=True, help="Sessions per user.")
    @click.option("--turns", default=12, show_default=True, help="Turns per session.")
    @click.option("--max-tokens", default=24, show_default=True)
    @click.option("--seed", default=7, show_default=True, help="The generated set's seed.")
    @click.option("--recall-only", is_flag=True, help="Skip generation: the recall figures.")
    @click.option("--json", "as_json", is_flag=True, help="Print only the JSON line on stdout.")
    @click.pass_context
    def bench_brain(
        ctx: click.Context,
        users: int,
        sessions: int,
        turns: int,
        max_tokens: int,
        seed: int,
        recall_only: bool,
        as_json: bool,
    ) -> None:
        """Hybrid vs dense recall and answers with/without memory on a generated chat set."""
        from engram.bench.brain import run

        get_settings(ctx)
        print_json(
            run(
                users=users,
                sessions=sessions,
                turns=turns,
                max_tokens=max_tokens,
                seed=seed,
                recall_only=recall_only,
            )
        )


def register(main: click.Group) -> None:
    main.add_command(bench_group)
