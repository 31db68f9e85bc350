"""Replay: an ordered read of a stream from a sequence or a time, yielding typed events.

Replays use an ephemeral pull consumer with no acks (the server forgets it when idle), read
in batches. Without ``follow`` a replay stops after the messages that matched when it
started (the server's pending count, never a quiet timer); with ``follow`` it keeps waiting
for new events.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import FetchTimeoutError

from .events import Event, EventDecodeError, decode

__all__ = ["Replayed", "replay", "replay_batches", "replay_raw"]


@dataclass(frozen=True)
class Replayed:
    seq: int
    subject: str
    event: Event | None  # None when the bytes are not a known event
    error: str | None = None
    data: bytes = b""


async def replay_batches(
    js: JetStreamContext,
    stream: str,
    *,
    start_seq: int = 1,
    start_time: dt.datetime | None = None,
    subjects: list[str] | None = None,
    follow: bool = False,
    batch: int = 512,
    idle_s: float = 1.0,
    stop_event: asyncio.Event | None = None,
) -> AsyncIterator[list[Replayed]]:
    """Yield the messages of ``stream`` in stream order, one fetched batch at a time.

    Without ``follow`` the replay ends when it has read every message that matched when it
    started: the consumer's ``num_pending`` at creation is that count, so the end is decided
    by the server's bookkeeping, never by a quiet spell (a slow server is not the end).
    """
    info = await js.stream_info(stream)
    if not follow and (info.state.messages == 0 or start_seq > info.state.last_seq):
        return
    if start_time is not None:
        policy, opt_seq, opt_time = api.DeliverPolicy.BY_START_TIME, None, start_time
    else:
        policy, opt_seq, opt_time = api.DeliverPolicy.BY_START_SEQUENCE, max(start_seq, 1), None
    config = api.ConsumerConfig(
        deliver_policy=policy,
        opt_start_seq=opt_seq,
        opt_start_time=opt_time,
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=30.0,
        filter_subject=subjects[0] if subjects and len(subjects) == 1 else None,
        filter_subjects=subjects if subjects and len(subjects) > 1 else None,
        mem_storage=True,
        name=f"replay-{uuid.uuid4().hex[:16]}",
    )
    created = await js.add_consumer(stream, config=config)
    # what matched when the replay began: exactly these are read before a non-follow end
    remaining = created.num_pending or 0
    if not follow and remaining == 0:
        await _forget_consumer(js, stream, str(config.name))
        return
    sub = await js.pull_subscribe_bind(consumer=config.name, stream=stream)
    idle = 0
    last_seen = 0
    try:
        while True:
            if stop_event is not None and stop_event.is_set():
                return
            want = batch if follow else min(batch, remaining)
            try:
                msgs = await sub.fetch(want, timeout=idle_s)
            except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                idle += 1
                if idle % 5 == 0:
                    # after a server restart an ephemeral consumer is gone: this raises and
                    # the caller resumes from its last sequence with a new one
                    ci = await js.consumer_info(stream, str(config.name))
                    delivered = ci.delivered.stream_seq if ci.delivered else 0
                    if not follow and not ci.num_pending and (delivered or 0) <= last_seen:
                        return  # messages were removed from the stream meanwhile
                continue
            idle = 0
            out: list[Replayed] = []
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                try:
                    event: Event | None = decode(msg.data)
                    error = None
                except EventDecodeError as exc:
                    event, error = None, str(exc)
                out.append(Replayed(seq, msg.subject, event, error, msg.data))
            if out:
                last_seen = out[-1].seq
            if not follow:
                out = out[:remaining]
                remaining -= len(out)
            if out:
                yield out
            if not follow and remaining <= 0:
                return
    finally:
        # the consumer may already be gone with the connection; the server drops it when idle
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await _forget_consumer(js, stream, str(config.name))


#: How long a replay waits to delete its ephemeral consumer. After a server restart the
#: delete can hang for the whole JetStream API timeout; the server drops an idle consumer by
#: itself after ``inactive_threshold``, so a replay never waits long for it.
FORGET_TIMEOUT_S = 1.0


async def _forget_consumer(js: JetStreamContext, stream: str, name: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(js.delete_consumer(stream, name), FORGET_TIMEOUT_S)


async def replay_raw(
    js: JetStreamContext,
    stream: str,
    *,
    start_seq: int = 1,
    start_time: dt.datetime | None = None,
    subjects: list[str] | None = None,
    follow: bool = False,
    batch: int = 512,
    idle_s: float = 1.0,
    stop_event: asyncio.Event | None = None,
) -> AsyncIterator[Replayed]:
    """Yield every message of ``stream`` in stream order, decoded where possible."""
    async for items in replay_batches(
        js,
        stream,
        start_seq=start_seq,
        start_time=start_time,
        subjects=subjects,
        follow=follow,
        batch=batch,
        idle_s=idle_s,
        stop_event=stop_event,
    ):
        for item in items:
            yield item


async def replay(
    js: JetStreamContext,
    stream: str,
    *,
    start_seq: int = 1,
    start_time: dt.datetime | None = None,
    subjects: list[str] | None = None,
    follow: bool = False,
) -> AsyncIterator[tuple[int, Event]]:
    """Yield ``(stream_seq, event)`` in order, skipping messages that are not events."""
    async for item in replay_raw(
        js, stream, start_seq=start_seq, start_time=start_time, subjects=subjects, follow=follow
    ):
        if item.event is not None:
            yield item.seq, item.event
