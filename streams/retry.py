"""The one retry/backoff helper: exponential backoff with jitter, a cap, and a way out.

Every loop in Engram that waits for something to come back (a consumer to bind, streams to
be ensured, a projection to resume, a server to restart, a weight set to reach the chain)
uses :class:`Backoff` for its delays and :func:`retry` where the whole call is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import structlog

__all__ = ["Backoff", "retry", "sleep_or_stop"]

log = structlog.get_logger("engram.retry")

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial, initial·factor, …`` capped at ``maximum``, each ± ``jitter``·delay."""

    initial: float = 0.25
    factor: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based), jitter included."""
        base = min(self.initial * (self.factor ** max(attempt, 0)), self.maximum)
        if self.jitter:
            base *= 1.0 + random.uniform(-self.jitter, self.jitter)
        return max(base, 0.0)

    def delays(self) -> Iterator[float]:
        attempt = 0
        while True:
            yield self.delay(attempt)
            attempt += 1


async def sleep_or_stop(seconds: float, stop: asyncio.Event | None) -> bool:
    """Sleep ``seconds``, waking early when ``stop`` is set. Returns True if stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff: Backoff = Backoff(),
    attempts: int | None = None,
    deadline_s: float | None = None,
    stop: asyncio.Event | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> T:
    """Call ``call()`` until it returns, retrying on ``retry_on`` with ``backoff``.

    Gives up (re-raising the last error) after ``attempts`` calls or ``deadline_s`` seconds,
    and raises :class:`asyncio.CancelledError` if ``stop`` is set while waiting. Each failure
    is logged once with ``what`` and the next delay.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except retry_on as exc:
            attempt += 1
            if on_error is not None:
                on_error(exc)
            delay = backoff.delay(attempt - 1)
            out_of_tries = attempts is not None and attempt >= attempts
            out_of_time = deadline_s is not None and time.monotonic() - started + delay > deadline_s
            if out_of_tries or out_of_time:
                raise
            log.info("retrying", what=what, attempt=attempt, error=repr(exc), retry_in_s=delay)
            if await sleep_or_stop(delay, stop):
                raise asyncio.CancelledError(f"stopped while retrying {what}") from exc
