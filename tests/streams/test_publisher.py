"""The publisher's atomic batches against a real nats-server: many events for one stream are
stored in one write, and every way a batch can be refused falls back to publishing event by
event without losing or duplicating anything."""

from __future__ import annotations

from engram.bus import Bus
from streams.events import DemoNoted, WeightsSet
from streams.publisher import ATOMIC_MAX, Publisher
from streams.replay import replay
from streams.topology import STREAMS, ensure


async def _ns(bus: Bus, stream: str = "INGEST") -> list[int]:
    return [e.n async for _, e in replay(bus.js, stream) if isinstance(e, DemoNoted)]


async def test_a_run_for_one_stream_is_one_atomic_batch_in_order(bus: Bus) -> None:
    acks = await bus.publisher.publish_many(DemoNoted(n=i) for i in range(50))
    assert (bus.publisher.batches, bus.publisher.fallbacks) == (1, 0)
    assert [a.seq for a in acks] == list(range(1, 51))  # each ack names its own event
    assert not any(a.duplicate for a in acks)
    assert await _ns(bus) == list(range(50))


async def test_a_batch_holding_a_stored_id_falls_back_and_stores_only_the_new(bus: Bus) -> None:
    old = [DemoNoted(n=i) for i in range(5)]
    await bus.publisher.publish_many(old)
    new = [DemoNoted(n=i) for i in range(5, 8)]
    acks = await bus.publisher.publish_many([*new[:1], *old, *new[1:]])
    assert bus.publisher.fallbacks == 1  # the server refused the batch: a duplicate id
    assert [bool(a.duplicate) for a in acks] == [False, True, True, True, True, True, False, False]
    assert await _ns(bus) == [0, 1, 2, 3, 4, 5, 6, 7]  # nothing lost, nothing twice
    again = await bus.publisher.publish_many(old)  # all already held: all duplicates
    assert all(a.duplicate for a in again)
    assert (await bus.js.stream_info("INGEST")).state.messages == 8


async def test_events_for_two_streams_go_as_two_batches(bus: Bus) -> None:
    weights = [WeightsSet(epoch=e, success=True, netuid=1) for e in range(3)]
    acks = await bus.publisher.publish_many([DemoNoted(n=1), DemoNoted(n=2), *weights])
    assert bus.publisher.batches == 2
    assert [a.stream for a in acks] == ["INGEST", "INGEST", "WEIGHTS", "WEIGHTS", "WEIGHTS"]
    assert (await bus.js.stream_info("WEIGHTS")).state.messages == 3


async def test_more_events_than_the_server_takes_in_one_batch_are_split(bus: Bus) -> None:
    n = ATOMIC_MAX + 10
    acks = await bus.publisher.publish_many(DemoNoted(n=i) for i in range(n))
    assert bus.publisher.batches == 2 and bus.publisher.fallbacks == 0
    assert [a.seq for a in acks] == list(range(1, n + 1))
    assert await _ns(bus) == list(range(n))


async def test_a_stream_without_atomic_publishing_is_published_event_by_event(
    bus: Bus,
) -> None:
    """A stream created before atomic batches (or by another tool) still gets every event;
    the publisher stops trying batches there after the first refusal."""
    ingest = next(s for s in STREAMS if s.name == "INGEST")
    old = ingest.config()
    old.allow_atomic = False
    await bus.js.update_stream(old)
    pub = Publisher(bus.js, producer="test", nc=bus.nc)
    await pub.publish_many(DemoNoted(n=i) for i in range(3))
    await pub.publish_many(DemoNoted(n=i) for i in range(3, 6))
    assert (pub.batches, pub.fallbacks) == (0, 1)
    assert await _ns(bus) == list(range(6))
    # ensure() turns atomic publishing back on for such a stream
    assert (await ensure(bus.js, (ingest,)))["INGEST"] == "updated"
    assert (await bus.js.stream_info("INGEST")).config.allow_atomic


async def test_without_a_connection_the_publisher_sends_event_by_event(bus: Bus) -> None:
    pub = Publisher(bus.js, producer="test")
    acks = await pub.publish_many(DemoNoted(n=i) for i in range(4))
    assert pub.batches == 0 and [a.seq for a in acks] == [1, 2, 3, 4]
    assert await _ns(bus) == [0, 1, 2, 3]
