"""The one exception tree of Engram: every error Engram raises derives from
:class:`EngramError`, split into "you called it wrong" and "something we depend on failed".

``streams`` is the lowest layer, so the root lives here; ``engram.errors`` re-exports it and
adds the node-level classes. Catch :class:`EngramError` to catch anything of ours;
:class:`InputError` (also a ``ValueError``) for refusals of input; :class:`Unavailable` for
a dependency (the bus, a miner, the chain) that did not answer, which retrying may cure.
"""

from __future__ import annotations

__all__ = ["EngramError", "InputError", "Unavailable", "short"]

#: The most characters of a caller's input that an error message repeats.
MAX_ECHO = 120


def short(value: object, limit: int = MAX_ECHO) -> str:
    """``repr`` of a value, capped: error messages never echo a large input back."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text)} characters)"


class EngramError(Exception):
    """The root of every Engram error."""


class InputError(EngramError, ValueError):
    """The input is not acceptable (malformed, out of range, not allowed): do not retry."""


class Unavailable(EngramError):
    """A dependency did not answer or failed; the same call may succeed later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
