"""Small helpers for validator tests: read what a stream holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.js import JetStreamContext

from streams.events import Event
from streams.replay import replay_raw


async def events_of(js: JetStreamContext, stream: str, kind: type[Event]) -> list[Event]:
    out: list[Event] = []
    async for item in replay_raw(
        js, stream, subjects=[kind.SUBJECT] if "tick" not in kind.SUBJECT else None
    ):
        if isinstance(item.event, kind):
            out.append(item.event)
    return out


async def until(cond: Callable[[], object], timeout: float = 20.0, every: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _maybe(cond()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


async def _maybe(value: object) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)
