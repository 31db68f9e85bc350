"""structlog set-up: pretty on a terminal, JSON lines otherwise, stdlib logging routed in."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = ["RepeatLimiter", "configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class RepeatLimiter:
    """Lets the first ``burst`` lines with the same key through per ``interval_s``, then
    counts the rest; the first line of the next interval carries ``suppressed=<count>``.

    A storm of one error (a full fd table: "Too many open files" on every accept) becomes a
    handful of lines and a count instead of hundreds of thousands of lines.
    """

    def __init__(
        self,
        burst: int = 5,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.burst, self.interval_s, self.clock, self.max_keys = burst, interval_s, clock, max_keys
        self._seen: dict[str, list[float]] = {}  # key -> [window start, passed, suppressed]
        self._lock = threading.Lock()

    def check(self, key: str) -> tuple[bool, int]:
        """``(let through, lines suppressed before this one)`` for one line with ``key``."""
        if self.burst <= 0:
            return True, 0
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.interval_s:
                suppressed = int(entry[2]) if entry is not None else 0
                if entry is None and len(self._seen) >= self.max_keys:
                    self._seen.clear()  # bounded memory; a rare reset costs a few lines
                self._seen[key] = [now, 1, 0]
                return True, suppressed
            if entry[1] < self.burst:
                entry[1] += 1
                return True, 0
            entry[2] += 1
            return False, 0

    def processor(
        self, _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor (put it before the renderer)."""
        ok, suppressed = self.check(f"{method}:{event.get('event')}")
        if not ok:
            raise structlog.DropEvent
        if suppressed:
            event["suppressed"] = suppressed
        return event

    def filter(self, record: logging.LogRecord) -> bool:
        """A ``logging`` filter for the standard library's loggers (asyncio, aiohttp)."""
        decided = getattr(record, "_engram_repeat_ok", None)
        if decided is not None:  # one decision per record, however many handlers see it
            return bool(decided)
        ok, suppressed = self.check(f"{record.name}:{record.levelno}:{record.msg}")
        if ok and suppressed:
            record.msg = f"{record.msg} [{suppressed} similar lines suppressed]"
        record._engram_repeat_ok = ok
        return ok


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: Any = None,
    repeat_burst: int = 5,
    repeat_interval_s: float = 10.0,
) -> None:
    """Configure structlog once per process. ``fmt``: auto | console | json.

    The same message (same level and event text) is let through ``repeat_burst`` times per
    ``repeat_interval_s``; the rest are counted (:class:`RepeatLimiter`); 0 turns it off.
    """
    out = stream or sys.stderr
    limiter = RepeatLimiter(repeat_burst, repeat_interval_s)
    if fmt == "auto":
        fmt = "console" if hasattr(out, "isatty") and out.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty() if hasattr(out, "isatty") else False
        )
    structlog.configure(
        processors=[*shared, limiter.processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            _LEVELS.get(level.lower(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=max(_LEVELS.get(level.lower(), logging.INFO), logging.WARNING), stream=out
    )
    for handler in logging.getLogger().handlers:
        for old in [
            f for f in handler.filters if isinstance(getattr(f, "__self__", None), RepeatLimiter)
        ]:
            handler.removeFilter(old)
        handler.addFilter(limiter.filter)


def get_logger(name: str | None = None, **bound: Any) -> Any:
    log = structlog.get_logger(name) if name else structlog.get_logger()
    return log.bind(**bound) if bound else log
