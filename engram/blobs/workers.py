"""The blob workers' common shape on the runner (``streams.worker.Worker``)."""

from __future__ import annotations

from typing import Any

from streams.publisher import Publisher
from streams.topology import ConsumerSpec
from streams.worker import Worker

__all__ = ["DEFAULT_BACKOFF_S", "blob_worker"]

DEFAULT_BACKOFF_S = (0.5, 2.0, 8.0, 30.0)


def blob_worker(
    js: Any,
    spec: ConsumerSpec,
    handler: Any,
    publisher: Publisher,
    *,
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    replicas: int = 1,
) -> Worker:
    """A few blobs at a time, two in flight. The handler gives up by itself (an event that
    says so) at ``handler.max_attempts``; the runner's own limit is one above, for a worker
    that dies on a blob every time."""
    return Worker(
        js=js,
        spec=spec,
        handler=handler,
        publisher=publisher,
        batch=4,
        fetch_wait_s=0.2,
        concurrency=2,
        max_deliver=handler.max_attempts + 1,
        backoff_s=backoff_s,
        replicas=replicas,
    )
