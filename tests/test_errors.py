"""One exception tree: every exception class Engram defines derives from EngramError."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil

import pytest

import engram
import streams
from streams.errors import EngramError, InputError, Unavailable, short
from streams.retry import Backoff, retry


def _modules() -> list[str]:
    names = []
    for pkg in (engram, streams):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            names.append(info.name)
    return names


def test_every_exception_class_has_one_root() -> None:
    strays = []
    for name in _modules():
        mod = importlib.import_module(name)
        for obj_name, obj in vars(mod).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == mod.__name__
                and not issubclass(obj, EngramError)
            ):
                strays.append(f"{name}.{obj_name}")
    assert strays == []


def test_input_errors_are_value_errors_and_unavailable_carries_retry_after() -> None:
    assert issubclass(InputError, ValueError)
    exc = Unavailable("bus down", retry_after_s=2.0)
    assert exc.retry_after_s == 2.0 and not isinstance(exc, ValueError)


def test_short_caps_what_an_error_repeats() -> None:
    huge = "x" * 3_000_000
    out = short(huge)
    assert len(out) < 200 and "3000002 characters" in out
    assert short("cid") == "'cid'"


def test_backoff_grows_and_caps() -> None:
    b = Backoff(initial=0.1, factor=2, maximum=0.5, jitter=0)
    assert [b.delay(i) for i in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    j = Backoff(initial=1.0, jitter=0.1)
    assert all(0.9 <= j.delay(0) <= 1.1 for _ in range(50))


async def test_retry_until_success_then_gives_up_after_attempts() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("not yet")
        return "ok"

    fast = Backoff(initial=0.001, jitter=0)
    assert await retry(flaky, what="flaky", backoff=fast) == "ok" and calls == 3

    async def never() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await retry(never, what="never", backoff=fast, attempts=4)

    async def wrong() -> None:
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        await retry(wrong, what="wrong", retry_on=(ConnectionError,), backoff=fast)


async def test_retry_stops_when_told() -> None:
    stop = asyncio.Event()

    async def never() -> None:
        stop.set()
        raise ConnectionError("down")

    with pytest.raises(asyncio.CancelledError):
        await retry(never, what="stopped", backoff=Backoff(initial=10), stop=stop)
