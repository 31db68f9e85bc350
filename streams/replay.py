"""Replay: an ordered read of a stream from a sequence or a time, yielding typed events.

Replays use an ephemeral pull consumer with no acks (the server forgets it when idle), read
in batches. Without ``follow`` a replay stops at the stream's last sequence as it was when
the replay started; with ``follow`` it keeps waiting for new events.
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

__all__ = ["Replayed", "replay", "replay_raw"]


@dataclass(frozen=True)
class Replayed:
    seq: int
    subject: str
    event: Event | None  # None when the bytes are not a known event
    error: str | None = None
    data: bytes = b""


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
    info = await js.stream_info(stream)
    end_seq = info.state.last_seq
    if not follow and (info.state.messages == 0 or start_seq > end_seq):
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
    await js.add_consumer(stream, config=config)
    sub = await js.pull_subscribe_bind(consumer=config.name, stream=stream)
    idle = 0
    try:
        while True:
            if stop_event is not None and stop_event.is_set():
                return
            try:
                msgs = await sub.fetch(batch, timeout=idle_s)
            except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                idle += 1
                if follow and idle % 5:
                    continue
                # Ask the server: after a restart an ephemeral consumer is gone (this raises,
                # and the caller resumes from its last sequence with a new one); without
                # follow, stop only when nothing is pending (a slow server is not the end).
                info = await js.consumer_info(stream, str(config.name))
                if not follow and info.num_pending == 0:
                    return
                continue
            idle = 0
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                try:
                    yield Replayed(
                        seq=seq, subject=msg.subject, event=decode(msg.data), data=msg.data
                    )
                except EventDecodeError as exc:
                    yield Replayed(
                        seq=seq, subject=msg.subject, event=None, error=str(exc), data=msg.data
                    )
                if not follow and seq >= end_seq:
                    return
    finally:
        # the consumer may already be gone with the connection; the server drops it when idle
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, str(config.name))


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
