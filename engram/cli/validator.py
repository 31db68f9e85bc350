"""Validator commands: ``engram validator run``."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from engram.config import ConfigError, Settings, load_settings
from engram.log import configure_logging

__all__ = ["register", "validator"]


def _settings(ctx: click.Context, data_dir: str | None = None) -> Settings:
    obj = ctx.ensure_object(dict)
    try:
        s = load_settings(obj.get("config"), data_dir=data_dir or obj.get("data_dir"))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(obj.get("log_level") or s.log_level, obj.get("log_format") or s.log_format)
    return s


@click.group("validator")
def validator() -> None:
    """Run an Engram validator."""


@validator.command("run")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option(
    "--chain",
    "chain_kind",
    type=click.Choice(["local", "bittensor"]),
    default="local",
    show_default=True,
    help="local: the devnet's chain in JetStream KV; bittensor: the real chain.",
)
@click.option("--netuid", type=int, default=1, show_default=True)
@click.option("--network", default="finney", show_default=True, help="bittensor network.")
@click.option("--wallet", default=None, help="bittensor wallet name (cold/hot); --chain bittensor")
@click.option("--evaluation-s", type=float, default=120.0, show_default=True)
@click.option("--challenge-s", type=float, default=300.0, show_default=True)
@click.option("--weights-s", type=float, default=600.0, show_default=True)
@click.option("--proof-version", type=click.Choice(["1", "2"]), default="2", show_default=True)
@click.option(
    "--console-port",
    type=int,
    default=None,
    help="Also serve the web console on 127.0.0.1:PORT (0: a free port).",
)
@click.pass_context
def validator_run(
    ctx: click.Context,
    data_dir: str | None,
    chain_kind: str,
    netuid: int,
    network: str,
    wallet: str | None,
    evaluation_s: float,
    challenge_s: float,
    weights_s: float,
    proof_version: str,
    console_port: int | None,
) -> None:
    """Issue challenges, sample recall, score miners and set weights, as events on the bus
    (its embedded NATS by default, or ENGRAM_NATS_URL)."""
    from engram.bus import Bus
    from engram.validator.config import ValidatorConfig
    from engram.validator.node import ValidatorNode, local_chain

    s = _settings(ctx, data_dir)
    cfg = ValidatorConfig(
        evaluation_s=evaluation_s,
        challenge_s=challenge_s,
        weights_s=weights_s,
        proof_version=int(proof_version),
    )

    async def make_chain(bus: Bus, keypair: Any) -> Any:
        if chain_kind == "local":
            return await local_chain(bus, keypair, netuid=netuid)
        from engram.chain.subtensor import BittensorChain

        return BittensorChain(wallet or keypair, netuid, network=network)

    node = ValidatorNode(s, cfg, chain_factory=make_chain)
    if console_port is None:
        asyncio.run(node.run())
    else:  # the web console on the validator's bus, served by this process
        from .console import run_with_console

        asyncio.run(run_with_console(node.run(), lambda: node.bus, s, "127.0.0.1", console_port))


@click.group("audit")
def audit_group() -> None:
    """Audit what the validator recorded."""


@audit_group.command("weights")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--epoch", type=int, default=None, help="Only this epoch.")
@click.option("--validator", default=None, help="Only this validator's ticks (ss58).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def audit_weights(
    ctx: click.Context,
    data_dir: str | None,
    epoch: int | None,
    validator: str | None,
    as_json: bool,
) -> None:
    """Replay VALIDATION from the start with the recorded scorer versions, recompute every
    weight set, and say whether it equals the recorded one; explain each miner's weight."""
    import json

    from engram.bus import open_bus
    from engram.validator.audit import audit

    s = _settings(ctx, data_dir)

    async def go() -> Any:
        bus = await open_bus(s)
        try:
            return await audit(bus.js, validator=validator, epoch=epoch)
        finally:
            await bus.close()

    report = asyncio.run(go())
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(
            f"audit {'OK' if report.ok else 'FAILED'}: {report.events} events, "
            f"{report.scores_checked} scores recomputed, {len(report.epochs)} weight sets"
        )
        for m in report.score_mismatches:
            click.echo(f"  score mismatch: {m}")
        for e in report.epochs:
            state = "ok" if e.ok else f"MISMATCH ({e.problem})"
            click.echo(f"epoch {e.epoch} (scorer v{e.scorer_version}): {state}")
            for x in e.miners:
                why = f"slashed: {x.reason}" if x.slashed else (x.reason or "")
                click.echo(
                    f"  uid {x.uid:>4} weight {x.weight:.4f} ema {x.ema:.4f} recall "
                    f"{x.recall:.3f} latency {x.latency_score:.3f} proofs "
                    f"{x.proof_success_rate:.2f} ({x.challenges}) {why}"
                )
    if not report.ok:
        ctx.exit(1)


def register(main: click.Group) -> None:
    main.add_command(validator)
    main.add_command(audit_group)
