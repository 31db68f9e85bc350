"""The ``engram`` command line."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from engram.config import ConfigError, Settings, load_settings
from engram.log import configure_logging
from streams.errors import EngramError

__all__ = ["EngramGroup", "main"]

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def get_settings(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings(obj.get("config"), data_dir=obj.get("data_dir"))
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        s: Settings = obj["settings"]
        configure_logging(
            obj.get("log_level") or s.log_level, obj.get("log_format") or s.log_format
        )
    return obj["settings"]  # type: ignore[no-any-return]


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=False, default=str))


def _reported(exc: BaseException) -> bool:
    """Errors of ours or of what we talk to (the bus, the network, files): one line for the
    user. Anything else is a bug and keeps its traceback."""
    return isinstance(exc, EngramError | OSError) or type(exc).__module__.startswith("nats.")


class EngramGroup(click.Group):
    """A command group whose commands report an error as one line (``Error: ...``, exit 1)
    instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not _reported(exc):
                raise
            text = str(exc) or type(exc).__name__
            raise click.ClickException(f"{type(exc).__name__}: {text}"[:500]) from None


@click.group(cls=EngramGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), help="TOML settings file.")
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False), help="Where state lives.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default=None)
@click.version_option(package_name="engram")
@click.pass_context
def main(
    ctx: click.Context,
    config: str | None,
    data_dir: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Engram: content-addressed semantic memory on NATS JetStream."""
    ctx.ensure_object(dict).update(
        config=config, data_dir=data_dir, log_level=log_level, log_format=log_format
    )


from . import base as _base  # noqa: E402
from . import bench as _bench  # noqa: E402

_base.register(main)
_bench.register(main)

if importlib.util.find_spec("engram.cli.miner") is not None:  # the miner's commands
    from . import miner as _miner

    _miner.register(main)

if importlib.util.find_spec("engram.cli.publish") is not None:  # the direct publisher
    from . import publish as _publish

    _publish.register(main)


if importlib.util.find_spec("engram.cli.validator") is not None:  # the validator's commands
    from . import validator as _validator

    _validator.register(main)


if importlib.util.find_spec("engram.cli.devnet") is not None:  # the devnet
    from . import devnet as _devnet

    _devnet.register(main)


# operator commands (status, tail, dlq, completion) and the web console
from . import ops as _ops  # noqa: E402

_ops.register(main)
if importlib.util.find_spec("engram.cli.console") is not None:
    from . import console as _console

    _console.register(main)
if importlib.util.find_spec("engram.cli.brain") is not None:  # the brain (issue 11)
    from . import brain as _brain

    _brain.register(main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
