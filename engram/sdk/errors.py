"""The SDK's exceptions: one tree under :class:`streams.errors.EngramError`.

::

    EngramError
    ├── InputError (ValueError)         do not retry the same call
    │   ├── InvalidCID                   a CID that is not well-formed (yours or a miner's)
    │   └── RequestRefused               the miner refused the request (4xx): .status, .reason
    │       ├── BadRequest               400/405/408/410/413/415/422: the server's reason
    │       │   ├── IngestRefused        … on an ingest (also an IngestError)
    │       │   └── QueryRefused         … on a query (also a QueryError)
    │       ├── AuthError                401/403
    │       │   ├── Unauthorized         401: unsigned, bad or stale signature
    │       │   └── Forbidden            403: signed, but not allowed
    │       ├── NotFound                 404: unknown CID / memory / route
    │       └── Conflict                 409
    └── Unavailable                      retrying later may help (.retry_after_s)
        ├── Offline                      the miner did not answer (refused, timed out, DNS)
        ├── ServerError                  5xx after the retries
        ├── RateLimited                  429, or 503 with Retry-After (busy, bus down)
        └── IngestTimeout                accepted, not yet stored within the wait

The predecessor SDK's names are kept: ``MinerOfflineError`` (= :class:`Offline`),
``InvalidCIDError`` (= :class:`InvalidCID`), ``IngestError`` and ``QueryError`` (bases of
the refusals of an ingest or a query).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.errors import EngramError, InputError, Unavailable, short

__all__ = [
    "AuthError",
    "BadRequest",
    "Conflict",
    "EngramError",
    "Forbidden",
    "IngestError",
    "IngestRefused",
    "IngestTimeout",
    "InputError",
    "InvalidCID",
    "InvalidCIDError",
    "MinerOfflineError",
    "NotFound",
    "Offline",
    "QueryError",
    "QueryRefused",
    "RateLimited",
    "RequestRefused",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "error_for",
    "refused_here",
]


class IngestError(EngramError):
    """Predecessor name: an ingest the miner refused (every ingest refusal is one)."""


class QueryError(EngramError):
    """Predecessor name: a query the miner refused (every query refusal is one)."""


class InvalidCID(InputError):
    """A CID that is not well-formed: ``v1::`` and 64 hex digits (or ``sha256:`` and 64 hex
    digits for a blob's content CID)."""

    def __init__(self, cid: object) -> None:
        super().__init__(f"not a well-formed CID: {short(cid, 90)}")
        self.cid = cid


class RequestRefused(InputError):
    """The miner answered with a 4xx: ``status``, its ``reason`` (the JSON ``error``), the
    ``url`` asked and the whole JSON ``body``."""

    def __init__(
        self, status: int, reason: str, url: str = "", body: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason
        self.url = url
        self.body: Mapping[str, Any] = body or {}


class BadRequest(RequestRefused):
    """The request is malformed or out of range; ``reason`` says why."""


class IngestRefused(BadRequest, IngestError):
    """An ingest the miner refused (or that its embed worker rejected: 422)."""


class QueryRefused(BadRequest, QueryError):
    """A query the miner refused."""


class AuthError(RequestRefused):
    """Authentication or authorisation failed."""


class Unauthorized(AuthError):
    """401: the miner wants a valid btauth/1 signature (give the client a ``hotkey``)."""


class Forbidden(AuthError):
    """403: the signature is valid but the hotkey may not do this."""


class NotFound(RequestRefused):
    """404: no such CID, memory, blob or route on this miner."""


class Conflict(RequestRefused):
    """409: the request conflicts with the miner's state (e.g. its namespace limit)."""


class Offline(Unavailable):
    """The miner could not be reached (connection refused or reset, timeout, DNS)."""

    def __init__(self, url: str, cause: object = None) -> None:
        super().__init__(f"cannot reach the miner at {url}: {cause}")
        self.url = url
        self.cause = cause


class ServerError(Unavailable):
    """The miner failed (5xx) on every try."""

    def __init__(
        self, status: int, reason: str, url: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status}: {reason}", retry_after_s)
        self.status = status
        self.reason = reason
        self.url = url


class RateLimited(ServerError):
    """The miner asked to come back later (429, or 503 with ``Retry-After``); see
    ``retry_after_s``."""


class IngestTimeout(Unavailable):
    """The miner accepted the ingest but had not stored it within the wait; ingesting
    again with the same ``request_id`` is safe (it is never stored twice)."""

    def __init__(self, request_id: str, waited_s: float) -> None:
        super().__init__(
            f"ingest {request_id!r} accepted but not stored within {waited_s:g}s; "
            "ask again with the same request_id"
        )
        self.request_id = request_id


#: predecessor names
MinerOfflineError = Offline
InvalidCIDError = InvalidCID

_BY_STATUS: dict[int, type[RequestRefused]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (the delta form; an HTTP date is read as 1 s)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def error_for(
    status: int,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    op: str = "",
    url: str = "",
) -> EngramError:
    """The exception for an HTTP error answer (``headers`` lower-cased). ``op`` is the
    SDK call (``ingest``, ``query``, …) so a refused ingest is an :class:`IngestRefused`."""
    reason = body.get("error")
    reason = str(reason) if reason else f"HTTP {status}"
    retry_after = retry_after_of(headers)
    if status == 429 or (status == 503 and retry_after is not None):
        return RateLimited(status, reason, url, retry_after)
    if status >= 500:
        return ServerError(status, reason, url, retry_after)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = IngestRefused if op == "ingest" else QueryRefused if op == "query" else BadRequest
    return cls(status, reason, url, body)


def refused_here(op: str, reason: str) -> BadRequest:
    """A request the SDK refuses before sending it (``status`` 0): NaN in a vector,
    metadata that is not JSON, an item without text."""
    cls = IngestRefused if op == "ingest" else QueryRefused if op == "query" else BadRequest
    return cls(0, reason)
