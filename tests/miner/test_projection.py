"""The store projection on the one projection runner, against a real nats-server, real
sqlite and real USearch files: what it refuses, what it dead-letters, how a rebuild ends."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np

from engram.bus import Bus
from engram.config import Settings
from engram.core import compute_cids
from engram.miner import store as store_module
from engram.miner.auth import load_or_create_key
from engram.miner.client import AxonClient
from engram.miner.limits import MAX_TEXT_CHARS
from engram.miner.node import MinerNode, cache_dir
from engram.miner.projection import StoreRunner
from engram.miner.store import MemoryStore
from streams.events import (
    DeadLettered,
    Deleted,
    DemoNoted,
    Embedded,
    IngestRequested,
    Stored,
    encode,
)
from streams.replay import replay

DIM = 384


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def embedded(vec: np.ndarray, i: int, ns: str = "public", **meta: object) -> Embedded:
    metadata = {"i": i, **meta}
    cid = compute_cids(vec.reshape(1, -1), [metadata], "")[0]
    return Embedded(
        cid=cid,
        vector=vec.astype("<f4").tobytes(),
        dim=DIM,
        metadata=metadata,
        namespace=ns,
        request_id=f"r{i}",
        request_kind="raw",
        caller="tester",
    )


async def dead_letters(bus: Bus) -> list[DeadLettered]:
    info = await bus.js.stream_info("DLQ")
    if not info.state.messages:
        return []
    return [e async for _, e in replay(bus.js, "DLQ") if isinstance(e, DeadLettered)]


def state(store: MemoryStore) -> list[tuple[object, ...]]:
    """Every record, key by key, with its exact vector bytes."""
    return [
        (r.key, r.cid, r.namespace, r.metadata, r.deleted, r.request_id, r.vector.tobytes())
        for r in store.records()
    ]


async def test_a_forged_cid_is_dead_lettered_and_later_events_still_apply(
    bus: Bus, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 3)
    good1, good2 = embedded(vecs[0], 0), embedded(vecs[2], 2)
    honest = embedded(vecs[1], 1)
    forged = msgspec.structs.replace(honest, cid=good1.cid)  # claims another memory's CID
    acks = await bus.publisher.publish_many([good1, forged, good2])
    store = MemoryStore(tmp_path / "store")
    runner = StoreRunner(bus.js, store, publisher=bus.publisher)
    assert await runner.catch_up() == 3
    assert store.applied_seq == acks[-1].seq and len(store) == 2
    assert store.get(good2.cid) is not None
    assert store.get(good1.cid) is not None and store.get(good1.cid).metadata == {"i": 0}  # type: ignore[union-attr]
    (dead,) = await dead_letters(bus)
    assert dead.consumer == "store" and dead.stream_seq == acks[1].seq
    assert "CID mismatch" in dead.error and honest.cid in dead.error
    assert dead.error_type == "StoreRejected" and dead.original_data  # the bytes, for audit
    # the client of the forged request learns it was refused
    status = store.find_request(forged.request_key())
    assert status is not None and status.status == "rejected" and "CID mismatch" in status.reason
    store.close()


async def test_malformed_bytes_on_memory_are_dead_lettered_and_skipped(
    bus: Bus, tmp_path: Path
) -> None:
    garbage = b"\xc1 not an event"
    bad = await bus.js.publish(Embedded.SUBJECT, garbage, headers={"Nats-Msg-Id": "x1"})
    good = await bus.publisher.publish(embedded(unit(np.random.default_rng(12), 1)[0], 0))
    store = MemoryStore(tmp_path / "store")
    runner = StoreRunner(bus.js, store, publisher=bus.publisher)
    assert await runner.catch_up() == 2
    assert store.applied_seq == good.seq and len(store) == 1
    (dead,) = await dead_letters(bus)
    assert dead.stream_seq == bad.seq and dead.error_type == "EventDecodeError"
    assert dead.original_data == b"\xc1 not an event" and dead.consumer == "store"
    assert runner.stats.malformed == 1 and runner.stats.dead_lettered == 1
    store.close()


async def test_an_event_whose_apply_raises_is_dead_lettered_alone(bus: Bus, tmp_path: Path) -> None:
    """A real sqlite failure (a trigger that aborts inserts into namespace "boom") while
    the runner follows: only that event is dead-lettered; the projection goes on."""
    rng = np.random.default_rng(2)
    vecs = unit(rng, 5)
    store = MemoryStore(tmp_path / "store")
    store.db.execute(
        "CREATE TEMP TRIGGER boom BEFORE INSERT ON main.memories WHEN NEW.namespace = 'boom'"
        " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    runner = StoreRunner(bus.js, store, publisher=bus.publisher, batch=64, idle_s=0.05)
    task = asyncio.create_task(runner.run())
    try:
        events = [embedded(vecs[0], 0), embedded(vecs[1], 1, ns="boom"), embedded(vecs[2], 2)]
        acks = await bus.publisher.publish_many(events)
        assert await runner.wait_for_seq(acks[-1].seq, timeout=30)
        later = await bus.publisher.publish_many([embedded(vecs[3], 3), embedded(vecs[4], 4)])
        assert await runner.wait_for_seq(later[-1].seq, timeout=30)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
    assert len(store) == 4 and store.namespaces() == {"public": 4}
    (dead,) = await dead_letters(bus)
    assert dead.stream_seq == acks[1].seq and dead.error_type == "ApplyError"
    assert "disk on fire" in dead.error
    assert runner.stats.refused == 1 and runner.stats.stored == 4
    store.close()


async def test_rebuild_on_a_busy_server_equals_the_live_index(bus: Bus, tmp_path: Path) -> None:
    """A rebuild ends when the stream is exhausted, not after a quiet spell: with a tiny
    fetch batch and idle timeout, and another publisher keeping the server busy, the
    rebuilt store equals the store that followed the stream live, key by key."""
    rng = np.random.default_rng(3)
    n = 600
    vecs = unit(rng, n)
    live = MemoryStore(tmp_path / "live")
    follower = StoreRunner(bus.js, live, publisher=bus.publisher, batch=64, idle_s=0.05)
    task = asyncio.create_task(follower.run())
    try:
        events: list[Embedded | Deleted] = [
            embedded(vecs[i], i, ns="public" if i % 3 else "alice", tag=i % 7) for i in range(n)
        ]
        readd = msgspec.structs.replace(embedded(vecs[5], 5, ns="alice"), request_id="again")
        events += [Deleted(cid=events[5].cid), readd]
        acks = []
        for start in range(0, len(events), 100):
            acks += await bus.publisher.publish_many(events[start : start + 100])
        assert await follower.wait_for_seq(acks[-1].seq, timeout=60)
    finally:
        follower.stop()
        await asyncio.wait_for(task, 30)

    stop = asyncio.Event()

    async def keep_busy() -> None:
        i = 0
        while not stop.is_set():
            await bus.publisher.publish_many(
                [DemoNoted(n=i + j, payload=b"x" * 2048) for j in range(50)]
            )
            i += 50

    noise = asyncio.create_task(keep_busy())
    try:
        rebuilt = MemoryStore(tmp_path / "rebuilt")
        runner = StoreRunner(bus.js, rebuilt, batch=3, idle_s=0.005)
        replayed = await runner.rebuild()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await noise
    assert replayed == len(events) and not any(a.duplicate for a in acks)
    assert rebuilt.applied_seq == live.applied_seq == acks[-1].seq
    assert len(rebuilt) == len(live) == n
    assert state(rebuilt) == state(live)
    assert rebuilt.namespaces() == live.namespaces()
    q = vecs[10]
    assert [h.cid for h in rebuilt.search(q, 10)] == [h.cid for h in live.search(q, 10)]
    rebuilt.close()
    live.close()


async def test_stored_notices_go_to_notices_once_per_sequence(bus: Bus, tmp_path: Path) -> None:
    """``Stored`` is published on NOTICES (never on MEMORY), past the high-water mark only:
    reopening the store at an older snapshot and replaying publishes nothing again."""
    rng = np.random.default_rng(4)
    vecs = unit(rng, 30)
    root = tmp_path / "store"
    store = MemoryStore(root)
    runner = StoreRunner(bus.js, store, publisher=bus.publisher)
    acks = await bus.publisher.publish_many([embedded(vecs[i], i) for i in range(10)])
    await runner.catch_up()  # snapshots at seq 10
    acks += await bus.publisher.publish_many([embedded(vecs[i], i) for i in range(10, 30)])
    await runner._apply_from(follow=False)  # applied and notified, no snapshot: a "crash"
    assert store.applied_seq == acks[-1].seq and store.notified_seq == acks[-1].seq
    store.close()

    reopened = MemoryStore(root)
    assert reopened.applied_seq == acks[9].seq  # the snapshot
    again = StoreRunner(bus.js, reopened, publisher=bus.publisher)
    assert await again.catch_up() == 20
    assert again.stats.stored == 20 and again.stats.notices == 0
    notices = [e async for _, e in replay(bus.js, "NOTICES") if isinstance(e, Stored)]
    assert sorted(e.memory_seq for e in notices) == [a.seq for a in acks]
    assert {e.request_id for e in notices} == {f"r{i}" for i in range(30)}
    memory = [e async for _, e in replay(bus.js, "MEMORY")]
    assert not any(isinstance(e, Stored) for e in memory)
    reopened.close()


# --- request ids are per caller; refused ingests are visible ------------------------------


async def test_two_callers_with_the_same_request_id_get_their_own_memories(
    node: MinerNode, tmp_path: Path
) -> None:
    ka, _ = load_or_create_key(tmp_path / "a")
    kb, _ = load_or_create_key(tmp_path / "b")
    vec = unit(np.random.default_rng(6), 1)[0].tolist()
    async with aiohttp.ClientSession(base_url=node.url) as http:
        a, b = AxonClient(http, ka), AxonClient(http, kb)
        sa, ra = await a.post("/IngestSynapse", {"text": "copper violin", "request_id": "same"})
        sb, rb = await b.post("/IngestSynapse", {"text": "glacier thunder", "request_id": "same"})
        assert (sa, sb) == (200, 200), (ra, rb)
        assert ra["cid"] != rb["cid"] and not ra["duplicate"] and not rb["duplicate"]
        # a raw ingest by the same caller with the same id is another request
        sr, rr = await a.post("/IngestSynapse", {"raw_embedding": vec, "request_id": "same"})
        assert sr == 200 and not rr["duplicate"] and rr["cid"] not in (ra["cid"], rb["cid"])
        # the same caller repeating itself gets its own memory back
        s2, r2 = await a.post("/IngestSynapse", {"text": "something else", "request_id": "same"})
        assert s2 == 200 and r2["duplicate"] and r2["cid"] == ra["cid"]
        # each caller's status is its own
        assert (await a.get("/ingest/same?kind=text"))[1]["cid"] == ra["cid"]
        assert (await a.get("/ingest/same?kind=raw"))[1]["cid"] == rr["cid"]
        assert (await b.get("/ingest/same"))[1]["cid"] == rb["cid"]
        anon = AxonClient(http)
        assert (await anon.get("/ingest/same"))[1]["status"] == "pending"
    for cid, text in ((ra["cid"], "copper violin"), (rb["cid"], "glacier thunder")):
        rec = node.store.get(cid)  # type: ignore[union-attr]
        assert rec is not None and rec.text == text


async def test_a_request_id_is_remembered_past_the_deduplication_window(
    node: MinerNode, bus: Bus, http: aiohttp.ClientSession
) -> None:
    """JetStream forgets a message id after two minutes; the store's request table does
    not: a request id seen before (here: published under another message id, as if long
    ago) is answered with its first memory and nothing new is published."""
    vecs = unit(np.random.default_rng(13), 2)
    first = embedded(vecs[0], 0)
    first = msgspec.structs.replace(first, caller="anonymous", request_id="old")
    ack = await bus.js.publish(first.SUBJECT, encode(first), headers={"Nats-Msg-Id": "long-ago"})
    assert node.runner is not None and await node.runner.wait_for_seq(ack.seq)
    before = (await bus.js.stream_info("MEMORY")).state.messages
    body = {"raw_embedding": vecs[1].tolist(), "request_id": "old"}  # other content
    async with http.post("/IngestSynapse", json=body) as r:
        out = await r.json()
    assert r.status == 200 and out["duplicate"] and out["cid"] == first.cid, out
    assert (await bus.js.stream_info("MEMORY")).state.messages == before
    batch = {"items": [body, {**body, "request_id": "new"}]}
    async with http.post("/IngestBatch", json=batch) as r:
        out = await r.json()
    assert [x["duplicate"] for x in out["results"]] == [True, False], out
    assert out["results"][0]["cid"] == first.cid != out["results"][1]["cid"]


async def test_an_ingest_the_worker_rejects_is_reported_to_its_client(
    node: MinerNode, bus: Bus, http: aiohttp.ClientSession
) -> None:
    """A request that reached the bus but that the embed worker refuses ends as
    ``rejected`` with the reason (an IngestRejected event, recorded by the store)."""
    too_long = IngestRequested(
        request_id="too-long", text="x" * (MAX_TEXT_CHARS + 1), caller="anonymous"
    )
    await bus.publisher.publish(too_long)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        async with http.get("/ingest/too-long") as r:
            out = await r.json()
        if out["status"] != "pending" or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert r.status == 200 and out["status"] == "rejected", out
    assert "limit" in out["error"] and out["cid"] is None
    # it was also dead-lettered by the worker, with the same cause
    dead = [d for d in await dead_letters(bus) if d.consumer == "embedder"]
    assert len(dead) == 1 and "limit" in dead[0].error
    # another caller's same id knows nothing of it
    async with http.get("/ingest/too-long", headers={"X-Engram-Scope": "other"}) as r:
        assert (await r.json())["status"] == "pending"


# --- store work never blocks the event loop ------------------------------------------------

#: The bound for /health, /metrics and a vector query while the store works. They need no
#: store lock (/health, /metrics) or wait for one event's apply at most (a query), so on an
#: idle machine each takes ~1-5 ms; 50 ms fails if any of them waited for a whole batch, a
#: snapshot or a filtered scan (each takes 100 ms to seconds here). The CI box is 2 cores
#: shared by several test runs (load average ~10 seen), where the OS alone can park a
#: process for 100+ ms: so the bound applies to the best of three tries of each probe
#: (a probe that waits for a lock waits every time) and, under real load, to the 90th
#: percentile, with the maxima printed.
BOUND_S = 0.050


async def _timed(http: aiohttp.ClientSession, method: str, path: str, body: object = None) -> float:
    t0 = time.perf_counter()
    async with http.request(method, path, json=body) as r:
        await r.read()
        assert r.status == 200, (path, r.status, await r.text())
    return time.perf_counter() - t0


async def _best_of_3(
    http: aiohttp.ClientSession, method: str, path: str, body: object = None
) -> float:
    return min([await _timed(http, method, path, body) for _ in range(3)])


async def test_health_metrics_and_queries_need_no_lock_a_writer_or_snapshot_holds(
    node: MinerNode, bus: Bus, http: aiohttp.ClientSession
) -> None:
    """Deterministic: while another thread holds what a long apply batch holds (both store
    locks) /health and /metrics still answer; while it holds what a snapshot holds (the
    writer lock, for as long as it serialises the indexes) queries answer too."""
    store, runner = node.store, node.runner
    assert store is not None and runner is not None
    vecs = unit(np.random.default_rng(9), 50)
    acks = await bus.publisher.publish_many([embedded(vecs[i], i) for i in range(50)])
    assert await runner.wait_for_seq(acks[-1].seq, timeout=60)
    query = {"query_vector": vecs[3].tolist(), "top_k": 5}
    for locks, probes in (
        ((store._write_lock, store._lock), [("GET", "/health", None), ("GET", "/metrics", None)]),
        ((store._write_lock,), [("GET", "/health", None), ("POST", "/QuerySynapse", query)]),
    ):
        held, release = threading.Event(), threading.Event()

        def hold(
            locks: tuple[Any, ...] = locks,
            held: threading.Event = held,
            release: threading.Event = release,
        ) -> None:
            with contextlib.ExitStack() as stack:
                for lock in locks:
                    stack.enter_context(lock)
                held.set()
                release.wait(30)

        holder = asyncio.ensure_future(asyncio.to_thread(hold))
        try:
            assert await asyncio.to_thread(held.wait, 10)
            for method, path, body in probes:
                took = await _best_of_3(http, method, path, body)
                assert took < BOUND_S, (path, locks, took)
            async with http.get("/health") as r:
                assert (await r.json())["memories"] == 50
        finally:
            release.set()
            await holder


def _summary(values: list[float]) -> dict[str, float]:
    ms = np.array(values) * 1000
    return {
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p90": round(float(np.percentile(ms, 90)), 1),
        "max": round(float(ms.max()), 1),
    }


async def _probe_while(
    http: aiohttp.ClientSession, busy: asyncio.Future[object], query: list[float]
) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {"health": [], "metrics": [], "query": []}
    while not busy.done():
        lat["health"].append(await _timed(http, "GET", "/health"))
        lat["metrics"].append(await _timed(http, "GET", "/metrics"))
        lat["query"].append(
            await _timed(http, "POST", "/QuerySynapse", {"query_vector": query, "top_k": 10})
        )
    await busy
    return lat


async def test_health_metrics_and_queries_answer_while_the_store_works(
    node: MinerNode, bus: Bus, http: aiohttp.ClientSession
) -> None:
    """Measured under real work: an ingest of 3,000 vectors (batches applied in a thread, a
    background snapshot every 50 events: miner_settings), a forced snapshot of 4,000, and
    filtered scans, while /health, /metrics and a vector query are called in a loop."""
    store, runner = node.store, node.runner
    assert store is not None and runner is not None
    rng = np.random.default_rng(8)
    n = 3000
    vecs = unit(rng, n + 1000)
    query = vecs[3].tolist()
    events = [embedded(vecs[i], i, color=i % 50) for i in range(n + 1000)]  # not on the clock
    report: dict[str, dict[str, object]] = {}

    async def load(lo: int, hi: int) -> None:
        acks = []
        for start in range(lo, hi, 500):
            acks += await bus.publisher.publish_many(events[start : min(start + 500, hi)])
        assert await runner.wait_for_seq(acks[-1].seq, timeout=240)

    async def scans() -> None:
        for flt in ({"color": 7}, {"color": 7, "i": 357}) * 20:
            await asyncio.to_thread(store.search, vecs[5], 10, filter=flt)

    async def phase(name: str, work: Any) -> None:
        t0 = time.perf_counter()
        lat = await _probe_while(http, asyncio.ensure_future(work), query)
        report[name] = {k: _summary(v) for k, v in lat.items() if v}
        report[name]["busy_s"] = round(time.perf_counter() - t0, 2)
        report[name]["samples"] = len(lat["health"])
        for probe, values in lat.items():
            assert float(np.percentile(values, 90)) < BOUND_S, (name, probe, report)

    await phase("ingest+snapshots", load(0, n))
    assert len(store) == n
    await load(n, n + 1000)  # more applied, so the snapshot below is not the current one
    await phase("snapshot", asyncio.to_thread(store.snapshot))
    await phase("filtered", scans())
    print("latency ms per phase:", report)


async def test_the_axon_refuses_past_the_namespace_and_filter_bounds(
    miner_settings: Settings, model_cache: Path, monkeypatch: Any
) -> None:
    settings = msgspec.structs.replace(miner_settings, store_max_namespaces=2)
    cache = cache_dir(settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(model_cache, target_is_directory=True)
    node = MinerNode(settings, port=0, ingest_wait_s=15.0, embed_in_process=False)
    await node.start()
    try:
        vecs = unit(np.random.default_rng(10), 120)
        async with aiohttp.ClientSession(base_url=node.url) as http:
            for ns in ("public", "alice", "bob"):
                body = {"raw_embedding": vecs[0].tolist(), "namespace": ns}
                async with http.post("/IngestSynapse", json=body) as r:
                    out = await r.json()
                if ns == "bob":
                    assert r.status == 409 and "limit of 2 namespaces" in out["error"], out
                else:
                    assert r.status == 200, out
            items = [
                {"raw_embedding": vecs[i].tolist(), "metadata": {"b": i % 4}} for i in range(1, 120)
            ]
            async with http.post("/IngestBatch", json={"items": items}) as r:
                assert r.status == 200, await r.text()
            monkeypatch.setattr(store_module, "FILTER_EXACT_MAX", 10)
            monkeypatch.setattr(store_module, "FILTER_FETCH_MAX", 12)
            body = {"query_vector": vecs[1].tolist(), "top_k": 10, "filter": {"b": 1}}
            async with http.post("/QuerySynapse", json=body) as r:
                out = await r.json()
            assert r.status == 422 and "narrow the filter" in out["error"], out
            async with http.get("/health") as r:
                assert r.status == 200 and (await r.json())["memories"] == 121
    finally:
        await node.stop()
