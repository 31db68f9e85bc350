"""The scheduler: publishes a :class:`~streams.events.CadenceTicked` at each period start.

``seq = floor(now / period_s)``, and the message id is ``tick:<validator>:<cadence>:<seq>``,
so two schedulers (or a restarted one) publish each tick once within JetStream's
de-duplication window; beyond it, a restarted scheduler first reads the last tick of each
cadence from the stream and never re-publishes a ``seq`` at or below it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from streams.events import CadenceTicked, EventDecodeError, decode
from streams.publisher import Publisher
from streams.retry import sleep_or_stop

__all__ = ["Scheduler"]

log = structlog.get_logger("engram.validator.scheduler")


class Scheduler:
    def __init__(
        self,
        js: JetStreamContext,
        publisher: Publisher,
        cadences: Mapping[str, float],
        validator: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.js = js
        self.publisher = publisher
        self.cadences = dict(cadences)
        self.validator = validator
        self.clock = clock
        self.last: dict[str, int] = {}
        self.published = 0

    async def resume(self) -> None:
        """Read the last tick of each cadence already on the stream."""
        for cadence in self.cadences:
            subject = f"{CadenceTicked.SUBJECT}.{cadence}"
            try:
                msg = await self.js.get_last_msg("VALIDATION", subject)
            except NotFoundError:
                continue
            try:
                event = decode(msg.data or b"")
            except EventDecodeError:
                continue
            if isinstance(event, CadenceTicked) and event.validator == self.validator:
                self.last[cadence] = event.seq

    async def tick(self) -> list[CadenceTicked]:
        """Publish every cadence whose current period has not been ticked yet."""
        now = self.clock()
        out: list[CadenceTicked] = []
        for cadence, period in self.cadences.items():
            seq = math.floor(now / period)
            if seq <= self.last.get(cadence, -1):
                continue
            out.append(
                CadenceTicked(cadence=cadence, seq=seq, period_s=period, validator=self.validator)
            )
        if out:
            await self.publisher.publish_many(out)
            for t in out:
                self.last[t.cadence] = t.seq
            self.published += len(out)
        return out

    def next_due_in(self) -> float:
        now = self.clock()
        waits = [(math.floor(now / p) + 1) * p - now for p in self.cadences.values() if p > 0]
        return max(min(waits, default=1.0), 0.001)

    async def run(self, stop: asyncio.Event) -> None:
        await self.resume()
        log.info("scheduler started", cadences=self.cadences, resumed=self.last)
        while not stop.is_set():
            try:
                ticks = await self.tick()
                for t in ticks:
                    log.info("tick", cadence=t.cadence, seq=t.seq)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus is down: try again shortly
                log.warning("tick failed", error=repr(exc))
                if await sleep_or_stop(0.5, stop):
                    break
                continue
            if await sleep_or_stop(self.next_due_in(), stop):
                break
