"""The publisher: every event goes out with ``Nats-Msg-Id`` and waits for JetStream's ack.

Publishing uses nats-py's asynchronous JetStream publish (many messages in flight, acks
collected as they come back), so a batch costs about one round trip rather than one per
event. A publish whose ack does not arrive in time is sent again with the same message id,
after a short :class:`~streams.retry.Backoff` pause (a cluster electing a leader needs a
moment); JetStream's de-duplication window makes that safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import NoStreamResponseError

from .errors import Unavailable
from .events import Event, encode
from .retry import Backoff

__all__ = ["PublishError", "Publisher"]

HDR_MSG_ID = "Nats-Msg-Id"
HDR_KIND = "Engram-Kind"
#: The pause before sending unacknowledged publishes again.
RESEND_BACKOFF = Backoff(initial=0.1, maximum=2.0)


class PublishError(Unavailable):
    """JetStream did not accept the event (no stream, timeouts after retries, ...)."""


class Publisher:
    def __init__(
        self,
        js: JetStreamContext,
        producer: str = "",
        ack_timeout_s: float = 10.0,
        retries: int = 3,
        backoff: Backoff = RESEND_BACKOFF,
    ) -> None:
        self.js = js
        self.producer = producer
        self.ack_timeout_s = ack_timeout_s
        self.retries = retries
        self.backoff = backoff

    def stamp(self, event: Event) -> Event:
        """Fill the producer into the envelope when the caller left it empty."""
        if self.producer and not event.producer:
            return msgspec.structs.replace(event, producer=self.producer)
        return event

    @staticmethod
    def headers(event: Event) -> dict[str, str]:
        return {HDR_MSG_ID: event.msg_id(), HDR_KIND: event.kind}

    async def publish(self, event: Event) -> api.PubAck:
        """Publish one event and wait for its ack. ``ack.duplicate`` is true when JetStream
        already held an event with the same message id."""
        return (await self.publish_many([event]))[0]

    async def publish_many(self, events: Iterable[Event]) -> list[api.PubAck]:
        """Publish events with their acks in flight together; returns acks in order."""
        stamped = [self.stamp(e) for e in events]
        payloads = [(e.subject(), encode(e), self.headers(e)) for e in stamped]
        return await self.publish_raw(payloads)

    async def publish_raw(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]]
    ) -> list[api.PubAck]:
        """Publish pre-encoded ``(subject, payload, headers)``; headers must hold a msg id."""
        acks: list[api.PubAck | None] = [None] * len(messages)
        pending = list(range(len(messages)))
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff.delay(attempt - 1))
            futures: dict[asyncio.Future[api.PubAck], int] = {}
            for i in pending:
                subject, payload, headers = messages[i]
                futures[await self.js.publish_async(subject, payload, headers=dict(headers))] = i
            done, not_done = await asyncio.wait(futures, timeout=self.ack_timeout_s)
            for fut in not_done:
                fut.cancel()
            for fut in done:
                i = futures[fut]
                exc = fut.exception()
                if exc is None:
                    acks[i] = fut.result()
                elif isinstance(exc, NoStreamResponseError):
                    raise PublishError(
                        f"no JetStream stream captures subject {messages[i][0]!r}"
                    ) from exc
                else:
                    raise PublishError(f"publish to {messages[i][0]!r} failed: {exc}") from exc
            if not not_done:
                return [a for a in acks if a is not None]
            # not acked in time: send again with the same Nats-Msg-Id (de-duplicated)
            pending = sorted(futures[f] for f in not_done)
        raise PublishError(
            f"{len(pending)} publishes not acknowledged after {self.retries + 1} tries"
        )
