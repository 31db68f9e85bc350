"""The memory store with real USearch index files and a real sqlite metadata store."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import msgspec
import numpy as np
import pytest

from engram.core import compute_cids
from engram.miner import store as store_module
from engram.miner.store import FilterTooBroad, MemoryStore, StoreError, matches_filter
from streams.events import Deleted, Embedded

DIM = 384


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cid_of(vec: np.ndarray, metadata: dict, model_version: str = "") -> str:
    return compute_cids(vec.reshape(1, -1).astype(np.float32), [metadata], model_version)[0]


def emb(i: int, vec: np.ndarray, ns: str = "public", **meta: object) -> Embedded:
    metadata = {"i": i, **meta}
    return Embedded(
        cid=cid_of(vec, metadata) if np.all(np.isfinite(vec)) else f"v1::{i:064x}",
        vector=vec.astype("<f4").tobytes(),
        dim=DIM,
        metadata=metadata,
        namespace=ns,
        request_id=f"r{i}",
        text=f"text {i}",
    )


def clustered(rng: np.random.Generator, n: int, clusters: int = 30) -> np.ndarray:
    """Like real embeddings: points around topic centroids (random 384-d vectors are a
    worst case for any graph index and say little about recall on text)."""
    cent = unit(rng, clusters)
    v = cent[rng.integers(0, clusters, n)] + 0.03 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_apply_search_and_idempotence(tmp_path, rng):
    store = MemoryStore(tmp_path)
    vecs = unit(rng, 50)
    res = store.apply_batch([(i + 1, emb(i, vecs[i])) for i in range(50)])
    assert [r.kind for r in res] == ["stored"] * 50
    assert store.applied_seq == 50 and len(store) == 50
    hits = store.search(vecs[17], 3)
    assert hits[0].metadata["i"] == 17 and hits[0].score == pytest.approx(1.0, abs=1e-2)
    # the same event redelivered under a later sequence: one record, one vector
    again = store.apply_batch([(51, emb(17, vecs[17]))])
    assert again[0].kind == "duplicate" and len(store) == 50
    # an already-applied sequence is skipped entirely
    assert store.apply_batch([(10, emb(999, vecs[0]))]) == []
    rec = store.get(emb(17, vecs[17]).cid)
    assert rec is not None and rec.text == "text 17"
    np.testing.assert_array_equal(rec.vector, vecs[17])  # exact f32, not the bf16 copy


def test_delete_then_readd_is_remove_plus_add(tmp_path, rng):
    store = MemoryStore(tmp_path)
    vecs = unit(rng, 5)
    store.apply_batch([(i + 1, emb(i, vecs[i])) for i in range(5)])
    cid = emb(2, vecs[2]).cid
    store.apply_batch([(6, Deleted(cid=cid))])
    assert store.get(cid) is None and len(store) == 4
    assert all(h.cid != cid for h in store.search(vecs[2], 5))
    # the same ingest delivered again after the delete does not bring it back (issue 9)
    (res,) = store.apply_batch([(7, emb(2, vecs[2]))])
    assert res.kind == "duplicate" and store.get(cid) is None and len(store) == 4
    # a new ingest of the same content (another request id) stores it again
    again = msgspec.structs.replace(emb(2, vecs[2]), request_id="r2-again")
    store.apply_batch([(8, again)])
    assert store.search(vecs[2], 1)[0].cid == cid and len(store) == 5


def test_namespaces_are_partitions(tmp_path, rng):
    store = MemoryStore(tmp_path)
    vecs = unit(rng, 20)
    store.apply_batch([(i + 1, emb(i, vecs[i], ns="public")) for i in range(18)])
    store.apply_batch([(19, emb(18, vecs[18], ns="alice")), (20, emb(0, vecs[0], ns="alice"))])
    assert store.namespaces() == {"alice": 2, "public": 18}
    assert [h.cid for h in store.search(vecs[18], 5)] != [] and all(
        h.metadata["i"] != 18 for h in store.search(vecs[18], 18)
    )
    private = store.search(vecs[0], 5, namespace="alice")
    assert {h.metadata["i"] for h in private} == {18, 0}
    assert store.search(vecs[0], 5, namespace="nobody") == []


def test_filters_keep_recall(tmp_path, rng):
    """Equality filters: broad ones via over-fetch, selective ones exactly."""
    store = MemoryStore(tmp_path)
    n = 3000
    vecs = clustered(rng, n)
    store.apply_batch(
        [
            (i + 1, emb(i, vecs[i], color=("red" if i % 2 else "blue"), rare=(i % 500 == 0)))
            for i in range(n)
        ]
    )
    queries = vecs[rng.integers(0, n, 30)] + 0.02 * rng.standard_normal((30, DIM))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    for flt in ({"color": "red"}, {"rare": True}, {"color": "blue", "rare": True}):
        mask = np.array(
            [
                matches_filter({"color": ("red" if i % 2 else "blue"), "rare": (i % 500 == 0)}, flt)
                for i in range(n)
            ]
        )
        found = total = 0
        for q in queries:
            hits = store.search(q, 10, filter=flt)
            scores = vecs @ q
            scores[~mask] = -np.inf
            truth = {int(i) for i in np.argsort(-scores)[: min(10, mask.sum())]}
            assert all(matches_filter(h.metadata, flt) for h in hits)
            found += len(truth & {h.metadata["i"] for h in hits})
            total += len(truth)
        assert found / total >= 0.97, (flt, found / total)
    assert store.search(queries[0], 10, filter={"color": "green"}) == []
    assert not matches_filter({"x": 1}, {"x": True})


def test_snapshot_restore_and_replay(tmp_path, rng):
    vecs = unit(rng, 40)
    events = [(i + 1, emb(i, vecs[i])) for i in range(40)]
    store = MemoryStore(tmp_path)
    store.apply_batch(events[:25])
    snap = store.snapshot()
    assert snap.name == f"{25:020d}"
    store.apply_batch(events[25:])  # applied after the snapshot, then "crash"
    store.close()

    reopened = MemoryStore(tmp_path)
    assert reopened.applied_seq == 25 and len(reopened) == 25  # exactly the snapshot
    reopened.apply_batch(events)  # the runner replays from applied_seq + 1
    assert reopened.applied_seq == 40 and len(reopened) == 40

    fresh = MemoryStore(tmp_path / "rebuilt")
    fresh.apply_batch(events)
    for q in unit(rng, 10):
        assert [h.cid for h in fresh.search(q, 10)] == [h.cid for h in reopened.search(q, 10)]
    # same keys, same records: a replay from seq 1 rebuilds the same state
    assert [(r.key, r.cid) for r in fresh.records()] == [(r.key, r.cid) for r in reopened.records()]


def test_queries_and_applies_run_while_a_snapshot_writes(tmp_path, rng, monkeypatch):
    """The store lock is held only to pin a view: with the snapshot parked just before it
    writes any file, a query and an apply (in other threads) both complete, and the
    snapshot still holds exactly the state as of the moment it was taken."""
    n = 5000
    vecs = clustered(rng, n + 100)
    store = MemoryStore(tmp_path)
    for start in range(0, n, 1000):
        store.apply_batch([(i + 1, emb(i, vecs[i])) for i in range(start, start + 1000)])
    parked, release = threading.Event(), threading.Event()
    write = MemoryStore._write_snapshot

    def slow_write(self: MemoryStore, view: object, keep: int) -> object:
        parked.set()
        assert release.wait(60), "the test never released the snapshot"
        return write(self, view, keep)  # type: ignore[arg-type]

    monkeypatch.setattr(MemoryStore, "_write_snapshot", slow_write)
    with ThreadPoolExecutor(2) as pool:
        snap = pool.submit(store.snapshot)
        assert parked.wait(60)
        try:
            hits = pool.submit(store.search, vecs[7], 5).result(timeout=30)
            assert hits[0].metadata["i"] == 7
            later = [(n + i + 1, emb(n + i, vecs[n + i])) for i in range(100)]
            pool.submit(store.apply_batch, later).result(timeout=30)
            assert not snap.done()  # both answered while the snapshot was in progress
        finally:
            release.set()
        path = snap.result(timeout=60)
    assert path.name == f"{n:020d}" and store.applied_seq == n + 100
    store.close()
    reopened = MemoryStore(tmp_path)
    assert reopened.applied_seq == n and len(reopened) == n  # the view, not later applies
    assert reopened.get(emb(n, vecs[n]).cid) is None
    assert reopened.search(vecs[7], 1)[0].metadata["i"] == 7


def test_snapshots_are_pruned_and_reset_forgets(tmp_path, rng):
    vecs = unit(rng, 6)
    store = MemoryStore(tmp_path)
    for i in range(6):
        store.apply_batch([(i + 1, emb(i, vecs[i]))])
        store.snapshot(keep=2)
    assert len(list((tmp_path / "snapshots").iterdir())) == 2
    store.reset()
    assert store.applied_seq == 0 and len(store) == 0
    with pytest.raises(StoreError, match="open in another process"):
        MemoryStore(tmp_path)
    store.close()
    assert MemoryStore(tmp_path).applied_seq == 0


def test_bad_vectors_are_rejected(tmp_path, rng):
    store = MemoryStore(tmp_path)
    bad = Embedded(cid="v1::x", vector=b"\0" * 12, dim=3)
    with pytest.raises(StoreError, match="3 dimensions"):
        store.apply_batch([(1, bad)], raise_on_reject=True)
    nan = np.full(DIM, np.nan, dtype=np.float32)
    res = store.apply_batch([(2, emb(1, nan)), (3, emb(2, unit(rng, 1)[0]))])
    assert res[0].kind == "rejected" and "NaN" in res[0].error and res[1].kind == "stored"
    assert len(store) == 1 and store.applied_seq == 3


def test_equality_filters_compare_json_values(tmp_path, rng):
    """str / int / bool / null are distinct JSON values: True != 1, "1" != 1, 0 != False,
    null matches an explicit null only; an integral float equals its int."""
    values = ["1", 1, True, None, False, 0, 1.0, "x"]
    store = MemoryStore(tmp_path)
    vecs = unit(rng, len(values) + 1)
    events = [(i + 1, emb(i, vecs[i], v=value)) for i, value in enumerate(values)]
    events.append((len(values) + 1, emb(len(values), vecs[-1])))  # no "v" at all
    assert all(r.kind == "stored" for r in store.apply_batch(events))
    expect = [  # pairs, not a dict: Python would merge True/1/1.0 and False/0 as keys
        ("1", {0}),
        (1, {1, 6}),
        (True, {2}),
        (None, {3}),
        (False, {4}),
        (0, {5}),
        (1.0, {1, 6}),
        ("x", {7}),
    ]
    for value, want in expect:
        got = {h.metadata["i"] for h in store.search(vecs[0], 20, filter={"v": value})}
        assert got == want, (value, got)
        assert got == {i for i, v in enumerate(values) if matches_filter({"v": v}, {"v": value})}
    both = store.search(vecs[0], 20, filter={"v": 1, "i": 6})
    assert [h.metadata["i"] for h in both] == [6]
    assert store.search(vecs[0], 20, filter={"v": "missing"}) == []
    # deleted records leave the filter index too
    store.apply_batch([(20, Deleted(cid=events[2][1].cid))])
    assert store.search(vecs[0], 20, filter={"v": True}) == []


def test_a_filter_reads_the_index_not_the_namespace(tmp_path):
    store = MemoryStore(tmp_path)
    sql, args = store._match_sql("public", {"color": "red", "n": 3})
    plan = " ".join(str(r[-1]) for r in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
    assert "meta_kv" in plan and "SCAN" not in plan.replace("SCAN CONSTANT", ""), plan


def test_broad_filters_over_fetch_within_bounds(tmp_path, rng, monkeypatch):
    """Past the exact-ranking cap a filter over-fetches from HNSW (recall vs exact holds);
    one too rare among the nearest neighbours for the fetch cap is refused, not scanned."""
    n = 3000
    vecs = clustered(rng, n)
    store = MemoryStore(tmp_path)
    store.apply_batch(
        [
            (i + 1, emb(i, vecs[i], color=("red" if i % 2 else "blue"), bucket=i % 40))
            for i in range(n)
        ]
    )
    monkeypatch.setattr(store_module, "FILTER_EXACT_MAX", 200)  # 1500 "red": over-fetch
    queries = unit(rng, 20)
    found = total = 0
    red = np.array([i % 2 == 1 for i in range(n)])
    for q in queries:
        hits = store.search(q, 10, filter={"color": "red"})
        assert all(h.metadata["color"] == "red" for h in hits)
        scores = vecs @ q
        scores[~red] = -np.inf
        truth = {int(i) for i in np.argsort(-scores)[:10]}
        found += len(truth & {h.metadata["i"] for h in hits})
        total += 10
    assert found / total >= 0.95, found / total
    monkeypatch.setattr(store_module, "FILTER_EXACT_MAX", 50)  # 75 per bucket
    monkeypatch.setattr(store_module, "FILTER_FETCH_MAX", 100)
    with pytest.raises(FilterTooBroad, match="narrow the filter"):
        store.search(queries[0], 10, filter={"bucket": 7})


def test_the_number_of_namespaces_is_bounded(tmp_path, rng):
    store = MemoryStore(tmp_path, max_namespaces=2)
    vecs = unit(rng, 4)
    res = store.apply_batch(
        [
            (1, emb(0, vecs[0], ns="a")),
            (2, emb(1, vecs[1], ns="b")),
            (3, emb(2, vecs[2], ns="c")),
            (4, emb(3, vecs[3], ns="a")),
        ]
    )
    assert [r.kind for r in res] == ["stored", "stored", "rejected", "stored"]
    assert "limit of 2 namespaces" in res[2].error and res[2].error_type == "StoreRejected"
    assert store.namespaces() == {"a": 2, "b": 1} and store.applied_seq == 4
    assert store.accepts_namespace("a") and not store.accepts_namespace("c")


def test_a_snapshot_serialises_only_the_namespaces_that_changed(tmp_path, rng):
    vecs = unit(rng, 30)
    store = MemoryStore(tmp_path)
    store.apply_batch(
        [(i + 1, emb(i, vecs[i], ns="big" if i < 20 else "small")) for i in range(25)]
    )
    first = store.snapshot()
    store.apply_batch([(26, emb(25, vecs[25], ns="small"))])
    second = store.snapshot()
    big = "ns-" + b"big".hex() + ".usearch"
    small = "ns-" + b"small".hex() + ".usearch"
    # "big" did not change: the same file (a hard link), not a new serialisation
    assert (first / big).stat().st_ino == (second / big).stat().st_ino
    assert (first / small).stat().st_ino != (second / small).stat().st_ino
    store.close()
    reopened = MemoryStore(tmp_path)
    assert reopened.namespaces() == {"big": 20, "small": 6}
    assert reopened.search(vecs[3], 1, namespace="big")[0].metadata["i"] == 3
    assert reopened.search(vecs[25], 1, namespace="small")[0].metadata["i"] == 25


def test_one_batch_gives_what_the_events_give_one_at_a_time(tmp_path, rng):
    """The index changes of a batch wait for its commit; duplicates, deletes and re-adds
    inside one batch, and a refused event, end as they do applied one by one."""
    vecs = unit(rng, 12)
    bad = msgspec.structs.replace(emb(11, vecs[11]), cid=emb(0, vecs[0]).cid)  # wrong CID
    events = [emb(i, vecs[i]) for i in range(8)]
    events += [
        emb(3, vecs[3]),  # a duplicate of one stored this batch
        Deleted(cid=emb(4, vecs[4]).cid),  # stored this batch, then deleted
        msgspec.structs.replace(emb(4, vecs[4]), request_id="r4-again"),  # and stored again
        Deleted(cid=emb(5, vecs[5]).cid),  # stored this batch, deleted for good
        bad,
        emb(8, vecs[8], ns="other"),
        emb(9, vecs[9], ns="other"),
        Deleted(cid=emb(9, vecs[9], ns="other").cid, namespace="other"),
    ]
    items = [(i + 1, ev) for i, ev in enumerate(events)]
    batched, single = MemoryStore(tmp_path / "a"), MemoryStore(tmp_path / "b")
    got = [(r.seq, r.kind) for r in batched.apply_batch(items)]
    want = [(r.seq, r.kind) for item in items for r in single.apply_batch([item])]
    assert got == want
    assert ("duplicate" in dict(got).values()) and dict(got)[13] == "rejected"
    for store in (batched, single):
        assert len(store) == 8  # 0-7 but 5, and 8
        assert store.search(vecs[4], 1)[0].cid == emb(4, vecs[4]).cid
        assert all(h.cid != emb(5, vecs[5]).cid for h in store.search(vecs[5], 8))
        assert [h.metadata["i"] for h in store.search(vecs[8], 2, namespace="other")] == [8]
    # and the same after a snapshot and a reopen
    batched.snapshot()
    batched.close()
    again = MemoryStore(tmp_path / "a")
    assert len(again) == 8 and again.search(vecs[7], 1)[0].metadata["i"] == 7


def test_an_event_that_fails_midway_leaves_no_vector(tmp_path, rng, monkeypatch):
    store = MemoryStore(tmp_path)
    vecs = unit(rng, 3)
    real = store._record_request

    def record(res):  # the store's own bookkeeping fails after the vector was staged
        if res.request_id == "r1":
            raise RuntimeError("disk on fire")
        real(res)

    monkeypatch.setattr(store, "_record_request", record)
    res = store.apply_batch([(i + 1, emb(i, vecs[i])) for i in range(3)])
    assert [r.kind for r in res] == ["stored", "rejected", "stored"]
    assert "disk on fire" in res[1].error
    assert len(store) == 2 and store.get(emb(1, vecs[1]).cid) is None
    assert all(h.metadata["i"] != 1 for h in store.search(vecs[1], 3))
