"""The event catalogue: every kind round-trips, the envelope is filled, decoding is strict."""

from __future__ import annotations

import os
import random
import uuid

import msgspec
import pytest

from streams import events as ev
from streams.events import (
    ALL_EVENTS,
    DemoNoted,
    Embedded,
    EventDecodeError,
    IngestRequested,
    decode,
    encode,
)
from streams.topology import STREAMS, stream_for


def test_every_event_kind_has_a_subject_captured_by_a_stream() -> None:
    for kind in ALL_EVENTS:
        assert kind.SUBJECT, kind
        assert stream_for(kind.SUBJECT).name in {s.name for s in STREAMS}


def test_every_event_kind_in_the_catalogue_decodes() -> None:
    """An event kind missing from the decoder's union would be dead-lettered as malformed
    by every consumer: each catalogued kind is in it."""
    import typing

    union = set(typing.get_args(ev.AnyEvent))
    assert [k.__name__ for k in ALL_EVENTS if k not in union] == []


def test_round_trip_keeps_every_field_and_the_envelope() -> None:
    e = Embedded(
        cid="v1::ab",
        vector=b"\x00\x00\x80?",
        dim=1,
        metadata={"k": [1, 2.5, None, "é"]},
        causation_id="cause-1",
        producer="node-a",
    )
    back = decode(encode(e))
    assert back == e
    assert back.kind == "Embedded"
    assert back.event_id and back.time > 0 and back.schema_version == 1


def test_event_ids_are_unique_and_time_ordered() -> None:
    ids = [ev.new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids[0][:8] <= ids[-1][:8]  # leading hex digits carry the millisecond clock
    for i in ids[:50]:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 7 and u.variant == uuid.RFC_4122


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_event_ids_do_not_repeat_after_a_seed_or_a_fork() -> None:
    state = random.getstate()
    try:
        random.seed(7)
        first = ev.new_event_id()
        random.seed(7)  # a test (or Hypothesis) seeding the global generator
        assert ev.new_event_id()[14:] != first[14:]
    finally:
        random.setstate(state)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids must not be the parent's next ones
        try:
            os.write(write, ev.new_event_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child) == 36 and child[14:] != ev.new_event_id()[14:]


def test_idempotency_key_is_the_request_id_scoped_by_caller() -> None:
    a = IngestRequested(request_id="req-1", text="hello", caller="alice")
    b = IngestRequested(request_id="req-1", text="hello", caller="alice")
    c = IngestRequested(request_id="req-1", text="hello", caller="bob")
    assert a.event_id != b.event_id
    assert a.msg_id() == b.msg_id() == "ingest:text:alice:req-1" != c.msg_id()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        msgspec.msgpack.encode({"kind": "Nope"}),
        msgspec.msgpack.encode({"kind": "IngestRequested", "text": "missing request id"}),
        msgspec.msgpack.encode({"kind": "DemoNoted", "n": "not an int"}),
    ],
)
def test_malformed_bytes_raise_a_clear_decode_error(payload: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode(payload)


def test_old_events_without_new_fields_still_decode() -> None:
    # an event written before `note` and `payload` existed
    old = msgspec.msgpack.encode({"kind": "DemoNoted", "n": 3, "event_id": "x", "time": 1.0})
    got = decode(old)
    assert isinstance(got, DemoNoted) and got.n == 3 and got.note == "" and got.payload == b""


def test_upcaster_turns_an_old_schema_into_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # schema v0 of DemoNoted called the field `number`
    old = msgspec.msgpack.encode({"kind": "DemoNoted", "number": 7, "schema_version": 0})
    with pytest.raises(EventDecodeError):
        decode(old)
    monkeypatch.setitem(
        ev.UPCASTERS,
        "DemoNoted",
        {
            0: lambda d: {
                **{k: v for k, v in d.items() if k != "number"},
                "n": d["number"],
                "schema_version": 1,
            }
        },
    )
    got = decode(old)
    assert isinstance(got, DemoNoted) and got.n == 7 and got.schema_version == 1
