"""The event layer against a real nats-server with JetStream (started per test)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engram.bus import Bus
from streams.events import DeadLettered, DemoNoted, Event, IngestRequested, encode
from streams.projection import Projection, ProjectionRunner
from streams.replay import replay, replay_raw
from streams.topology import STREAMS, ConsumerSpec, ensure
from streams.worker import Delivery, Poison, Worker

DEMO = ("engram.ingest.demo",)


class Tally(Projection):
    """A projection with a file snapshot: n -> count, plus the applied sequence."""

    stream = "INGEST"
    subjects = ["engram.ingest.demo"]

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.path = path
        self.counts: dict[int, int] = {}
        self.applied = 0

    def apply(self, seq: int, event: Event) -> None:
        assert isinstance(event, DemoNoted)
        self.counts[event.n] = self.counts.get(event.n, 0) + 1
        self.applied += 1

    def snapshot(self) -> None:
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last_seq": self.last_seq, "counts": self.counts}))
        tmp.replace(self.path)

    def restore(self) -> None:
        if self.path and self.path.exists():
            data = json.loads(self.path.read_text())
            self.last_seq = data["last_seq"]
            self.counts = {int(k): v for k, v in data["counts"].items()}

    def reset(self) -> None:
        super().reset()
        self.counts = {}


async def run_worker_until(worker: Worker, cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(worker.run())
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            assert asyncio.get_running_loop().time() < deadline, f"timed out; stats={worker.stats}"
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await task


async def dead_letters(bus: Bus) -> list[DeadLettered]:
    return [e async for _, e in replay(bus.js, "DLQ") if isinstance(e, DeadLettered)]


async def test_ensure_creates_all_streams_and_is_idempotent(bus: Bus) -> None:
    again = await ensure(bus.js, STREAMS)
    assert set(again.values()) == {"ok"}
    names = {s.name for s in STREAMS}
    assert names == {
        "INGEST",
        "BLOBS",
        "MEMORY",
        "NOTICES",
        "VALIDATION",
        "WEIGHTS",
        "BRAIN",
        "DLQ",
    }
    info = await bus.js.stream_info("MEMORY")
    assert info.config.duplicate_window == 120


async def test_publish_consume_round_trip(bus: Bus) -> None:
    sent = [DemoNoted(n=i, note=f"n{i}", producer="test") for i in range(50)]
    acks = await bus.publisher.publish_many(sent)
    assert [a.seq for a in acks] == list(range(1, 51))
    got: list[Event] = []

    async def handler(batch: list[Delivery]) -> None:
        got.extend(d.event for d in batch)

    w = Worker(bus.js, ConsumerSpec("rt", "INGEST", DEMO), handler, bus.publisher, batch=16)
    await run_worker_until(w, lambda: len(got) >= 50)
    assert got == sent  # same events, same order, every field (incl. envelope) intact
    assert w.stats.acked == 50
    info = await bus.js.consumer_info("INGEST", "rt")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_duplicate_publish_with_same_id_is_stored_once(bus: Bus) -> None:
    first = await bus.publisher.publish(IngestRequested(request_id="req-42", text="hello"))
    again = await bus.publisher.publish(IngestRequested(request_id="req-42", text="hello"))
    assert not first.duplicate
    assert again.duplicate and again.seq == first.seq
    info = await bus.js.stream_info("INGEST")
    assert info.state.messages == 1


async def test_poison_event_goes_to_dead_letter_with_its_cause(bus: Bus) -> None:
    await bus.publisher.publish_many([DemoNoted(n=i) for i in range(5)])
    handled: list[int] = []

    async def handler(batch: list[Delivery]) -> None:
        for d in batch:
            assert isinstance(d.event, DemoNoted)
            if d.event.n == 3:
                d.poison(ValueError("n=3 is not allowed"))
            else:
                handled.append(d.event.n)

    w = Worker(bus.js, ConsumerSpec("poison", "INGEST", DEMO), handler, bus.publisher)
    await run_worker_until(w, lambda: len(handled) == 4 and w.stats.dead_lettered == 1)
    [dead] = await dead_letters(bus)
    assert dead.error == "ValueError: n=3 is not allowed" and dead.error_type == "ValueError"
    assert dead.consumer == "poison" and dead.stream == "INGEST" and dead.stream_seq == 4
    original = DemoNoted(n=3)
    assert dead.original_subject == original.subject()
    assert dead.subject() == "engram.dlq.poison"


async def test_failing_handler_is_retried_with_backoff_then_dead_lettered(bus: Bus) -> None:
    await bus.publisher.publish(DemoNoted(n=1))
    attempts: list[int] = []

    async def handler(batch: list[Delivery]) -> None:
        attempts.append(batch[0].num_delivered)
        raise RuntimeError("downstream is down")

    w = Worker(
        bus.js,
        ConsumerSpec("flaky", "INGEST", DEMO),
        handler,
        bus.publisher,
        max_deliver=3,
        backoff_s=(0.05, 0.1),
    )
    await run_worker_until(w, lambda: w.stats.dead_lettered == 1)
    assert attempts == [1, 2, 3]
    [dead] = await dead_letters(bus)
    assert "failed 3 times" in dead.error and "downstream is down" in dead.error


async def test_handler_error_then_success_loses_nothing(bus: Bus) -> None:
    await bus.publisher.publish_many([DemoNoted(n=i) for i in range(10)])
    seen: set[int] = set()
    failed_once = False

    async def handler(batch: list[Delivery]) -> None:
        nonlocal failed_once
        if not failed_once:
            failed_once = True
            raise ConnectionError("transient")
        seen.update(d.event.n for d in batch)  # type: ignore[attr-defined]

    w = Worker(
        bus.js, ConsumerSpec("transient", "INGEST", DEMO), handler, bus.publisher, backoff_s=(0.05,)
    )
    await run_worker_until(w, lambda: len(seen) == 10)
    assert w.stats.dead_lettered == 0 and w.stats.retried >= 1


async def test_malformed_message_is_dead_lettered_and_the_worker_keeps_running(bus: Bus) -> None:
    await bus.publisher.publish(DemoNoted(n=1))
    await bus.js.publish("engram.ingest.demo", b"\x93garbage", headers={"Nats-Msg-Id": "bad-1"})
    await bus.publisher.publish(DemoNoted(n=2))
    got: list[int] = []

    async def handler(batch: list[Delivery]) -> None:
        got.extend(d.event.n for d in batch)  # type: ignore[attr-defined]

    w = Worker(bus.js, ConsumerSpec("malformed", "INGEST", DEMO), handler, bus.publisher, batch=1)
    await run_worker_until(w, lambda: got == [1, 2] and w.stats.dead_lettered == 1)
    [dead] = await dead_letters(bus)
    assert dead.original_data == b"\x93garbage" and dead.error.startswith("malformed event")
    assert dead.original_headers.get("Nats-Msg-Id") == "bad-1"
    # and it keeps handling new events after the bad one
    await bus.publisher.publish(DemoNoted(n=3))
    w2 = Worker(bus.js, ConsumerSpec("malformed", "INGEST", DEMO), handler, bus.publisher)
    await run_worker_until(w2, lambda: got == [1, 2, 3])


async def test_whole_batch_poison_exception(bus: Bus) -> None:
    await bus.publisher.publish_many([DemoNoted(n=i) for i in range(3)])

    async def handler(batch: list[Delivery]) -> None:
        raise Poison("schema no longer supported")

    w = Worker(bus.js, ConsumerSpec("allpoison", "INGEST", DEMO), handler, bus.publisher)
    await run_worker_until(w, lambda: w.stats.dead_lettered == 3)
    assert {d.error for d in await dead_letters(bus)} == {"Poison: schema no longer supported"}


async def test_replay_from_sequence_and_from_time(bus: Bus) -> None:
    await bus.publisher.publish_many([DemoNoted(n=i) for i in range(10)])
    seqs = [s async for s, _ in replay(bus.js, "INGEST", start_seq=4)]
    assert seqs == list(range(4, 11))
    await asyncio.sleep(1.1)
    import datetime as dt

    mark = dt.datetime.now(dt.UTC)
    await bus.publisher.publish_many([DemoNoted(n=100 + i) for i in range(3)])
    later = [e.n async for _, e in replay(bus.js, "INGEST", start_time=mark)]  # type: ignore[attr-defined]
    assert later == [100, 101, 102]
    # replay of an empty stream ends at once
    assert [x async for x in replay_raw(bus.js, "WEIGHTS")] == []


async def test_replay_rebuilds_a_projection_equal_to_the_live_one(bus: Bus, tmp_path: Path) -> None:
    live = Tally(tmp_path / "live.json")
    runner = ProjectionRunner(bus.js, live)
    task = asyncio.create_task(runner.run())
    events = [DemoNoted(n=i % 7) for i in range(300)]
    acks = await bus.publisher.publish_many(events)
    assert await runner.wait_for(acks[-1].seq, timeout=20)
    runner.stop()
    await task
    rebuilt = Tally(tmp_path / "rebuilt.json")
    await ProjectionRunner(bus.js, rebuilt).rebuild()
    assert rebuilt.counts == live.counts and rebuilt.last_seq == live.last_seq == 300
    assert sum(rebuilt.counts.values()) == 300


async def test_projection_restarted_resumes_from_its_checkpoint(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "tally.json"
    await bus.publisher.publish_many([DemoNoted(n=1) for _ in range(40)])
    first = Tally(path)
    r1 = ProjectionRunner(bus.js, first)
    first.restore()
    await r1.catch_up()
    assert json.loads(path.read_text())["last_seq"] == 40

    await bus.publisher.publish_many([DemoNoted(n=2) for _ in range(10)])
    second = Tally(path)  # a new process: state comes from the snapshot
    r2 = ProjectionRunner(bus.js, second)
    task = asyncio.create_task(r2.run())
    assert await r2.wait_for(50, timeout=20)
    r2.stop()
    await task
    assert second.applied == 10  # only the new events were applied
    assert second.counts == {1: 40, 2: 10}


@pytest.mark.parametrize("n", [1, 1000])
async def test_publisher_acks_every_event(bus: Bus, n: int) -> None:
    acks = await bus.publisher.publish_many(DemoNoted(n=i) for i in range(n))
    assert len(acks) == n and len({a.seq for a in acks}) == n
    assert (await bus.js.stream_info("INGEST")).state.messages == n


async def test_events_carry_the_producer(bus: Bus) -> None:
    await bus.publisher.publish(DemoNoted(n=1))
    [(_, e)] = [x async for x in replay(bus.js, "INGEST")]
    assert e.producer == "test"
    raw = encode(DemoNoted(n=1, producer="explicit"))
    assert b"explicit" in raw


async def test_long_work_is_kept_alive_with_in_progress(bus: Bus) -> None:
    await bus.publisher.publish(DemoNoted(n=1))
    calls: list[int] = []

    async def slow(batch: list[Delivery]) -> None:
        calls.append(batch[0].num_delivered)
        await asyncio.sleep(3.5)  # far past the 1 s ack_wait

    spec = ConsumerSpec("slow", "INGEST", DEMO, ack_wait_s=1.0)
    w = Worker(bus.js, spec, slow, bus.publisher, concurrency=2)
    await run_worker_until(w, lambda: w.stats.acked == 1)
    assert calls == [1]  # never redelivered while it was being worked on
    assert w.stats.dead_lettered == 0


async def test_ensure_updates_a_stream_whose_spec_changed(bus: Bus) -> None:
    from streams.topology import StreamSpec

    changed = StreamSpec("WEIGHTS", ("engram.weights.>", "engram.weights2.>"), "more subjects")
    assert await ensure(bus.js, (changed,)) == {"WEIGHTS": "updated"}
    info = await bus.js.stream_info("WEIGHTS")
    assert sorted(info.config.subjects or []) == ["engram.weights.>", "engram.weights2.>"]
    assert await ensure(bus.js, (changed,)) == {"WEIGHTS": "ok"}


async def test_messages_that_arrive_while_every_slot_is_busy_are_not_done_twice(bus: Bus) -> None:
    """The only slot is held past ack_wait while a fetch's stragglers wait in the client: none
    may be redelivered (every delivery is the first) and none lost."""
    n = 3000
    await bus.publisher.publish_many([DemoNoted(n=i, payload=b"x" * 512) for i in range(n)])
    seen: list[tuple[int, int]] = []  # (n, num_delivered)
    first = True

    async def handler(batch: list[Delivery]) -> None:
        nonlocal first
        if first:  # hold the only slot well past ack_wait
            first = False
            await asyncio.sleep(4.0)
        seen.extend((d.event.n, d.num_delivered) for d in batch)  # type: ignore[attr-defined]

    spec = ConsumerSpec("late", "INGEST", DEMO, ack_wait_s=1.5, max_ack_pending=n)
    w = Worker(bus.js, spec, handler, bus.publisher, batch=1000, fetch_wait_s=0.01, concurrency=1)
    await run_worker_until(w, lambda: len({x for x, _ in seen}) == n, timeout=60)
    await asyncio.sleep(2.0)  # a redelivery would show up here
    assert sorted(x for x, _ in seen) == list(range(n)), f"done twice: {len(seen) - n}"
    assert {d for _, d in seen} == {1}, "a message was redelivered"
    info = await bus.js.consumer_info("INGEST", "late")
    assert info.num_redelivered == 0 and info.num_ack_pending == 0 and info.num_pending == 0
    assert w.stats.parked > 0, "no late arrivals: the test did not exercise them"
