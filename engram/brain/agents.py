"""Agents: small async handlers of brain events, each run as a worker (a durable consumer on
the BRAIN stream) with the runner's retries and dead letters.

Write one with :func:`agent`::

    from engram.brain.agents import AgentContext, agent
    from streams.events import CompletionGenerated

    @agent(on=CompletionGenerated)
    async def shout(event: CompletionGenerated, ctx: AgentContext) -> None:
        ctx.log.info("answered", completion=event.completion_id)

and register its module under the entry point group ``engram.agents`` (any object: loading
the module registers the agents it decorates), or drop the file into ``brain_agents_dir``.
A handler that raises is retried with backoff; after ``worker_max_deliver`` deliveries the
event is dead-lettered (``DeadLettered`` on ``engram.dlq.agent-<name>``); an
:class:`~streams.errors.InputError` is dead-lettered at once. Chat never waits for agents.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import structlog

from streams.errors import InputError
from streams.events import Event
from streams.publisher import Publisher
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

__all__ = [
    "ENTRY_POINT_GROUP",
    "AgentContext",
    "AgentRunner",
    "AgentSpec",
    "agent",
    "load_agents",
    "registered",
]

ENTRY_POINT_GROUP = "engram.agents"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")

log = structlog.get_logger("engram.brain.agents")


@dataclass
class AgentContext:
    """What an agent may use: the publisher (to emit events), the brain (recall, settings)."""

    publisher: Publisher
    brain: Any = None
    log: Any = field(default_factory=lambda: log)


Handler = Callable[[Any, AgentContext], Awaitable[None]]


@dataclass(frozen=True)
class AgentSpec:
    name: str
    on: tuple[type[Event], ...]
    handler: Handler
    builtin: bool = False

    @property
    def durable(self) -> str:
        return f"agent-{self.name}"

    def consumer(self) -> ConsumerSpec:
        return ConsumerSpec(
            self.durable,
            "BRAIN",
            tuple(sorted({e.SUBJECT for e in self.on})),
            ack_wait_s=120.0,
            max_ack_pending=256,
            description=f"brain agent {self.name}",
        )


_REGISTRY: dict[str, AgentSpec] = {}


def agent(
    *, on: type[Event] | Sequence[type[Event]], name: str | None = None, builtin: bool = False
) -> Callable[[Handler], Handler]:
    """Register the decorated ``async def handler(event, ctx)`` for events of ``on``."""
    kinds = (on,) if isinstance(on, type) else tuple(on)

    def wrap(fn: Handler) -> Handler:
        agent_name = (name or fn.__name__).replace("_", "-").lower()
        if not _NAME.match(agent_name):
            raise InputError(f"agent name {agent_name!r}: 1-48 of a-z 0-9 _ -")
        if not asyncio.iscoroutinefunction(fn):
            raise InputError(f"agent {agent_name}: the handler must be `async def`")
        _REGISTRY[agent_name] = AgentSpec(agent_name, kinds, fn, builtin)
        return fn

    return wrap


def registered() -> list[AgentSpec]:
    return list(_REGISTRY.values())


def load_agents(folder: str | Path | None = None) -> list[AgentSpec]:
    """Import the built-ins, every ``engram.agents`` entry point and the ``*.py`` files of
    ``folder``; returns every registered agent."""
    from . import builtin, training  # noqa: F401 - registers the built-in agents

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            log.warning("agent entry point failed to load", entry_point=ep.name, error=repr(exc))
    if folder:
        for path in sorted(Path(folder).expanduser().glob("*.py")):
            mod_name = f"engram_agents_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                log.warning("agent module failed to load", path=str(path), error=repr(exc))
    return registered()


@dataclass
class AgentRunner:
    """One :class:`~streams.worker.Worker` per agent."""

    js: Any
    publisher: Publisher
    specs: list[AgentSpec]
    context: AgentContext
    max_deliver: int = 5
    backoff_s: tuple[float, ...] = (0.5, 2.0, 8.0, 30.0)
    replicas: int = 1
    workers: list[Worker] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _handler(self, spec: AgentSpec) -> Callable[[list[Delivery]], Awaitable[None]]:
        async def handle(deliveries: list[Delivery]) -> None:
            for d in deliveries:
                if not isinstance(d.event, spec.on):
                    continue
                try:
                    await spec.handler(d.event, self.context)
                except InputError as exc:
                    d.poison(exc)
                except Exception as exc:
                    log.warning(
                        "agent failed", agent=spec.name, error=repr(exc), attempt=d.num_delivered
                    )
                    d.retry(exc)

        return handle

    async def start(self) -> None:
        for spec in self.specs:
            worker = Worker(
                js=self.js,
                spec=spec.consumer(),
                handler=self._handler(spec),
                publisher=self.publisher,
                batch=16,
                fetch_wait_s=0.5,
                concurrency=1,
                max_deliver=self.max_deliver,
                backoff_s=self.backoff_s,
                replicas=self.replicas,
            )
            self.workers.append(worker)
            self._tasks.append(asyncio.create_task(worker.run(), name=spec.durable))
        for worker in self.workers:
            await worker.wait_ready()

    async def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def stats(self) -> dict[str, dict[str, Any]]:
        return {w.name: w.stats.as_dict() for w in self.workers}
