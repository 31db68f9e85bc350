"""``engram bench ingest``: an embedded miner, end to end, against baselines from the same run.

Texts are real English: paragraphs of the docstrings installed with Python and the
project's dependencies (offline, deterministic for a given environment). The benchmark
measures, in order:

* ``raw_embed_docs_per_s``: fastembed alone (the same model object, ``embed`` with the
  pipeline's batch size, arrival order) on the texts; ``raw_embed_sorted_docs_per_s`` is
  our length-sorted batching alone, sorted over the *whole* corpus at once (a stronger
  baseline than the worker, which can only sort the window it has fetched);
  ``pipeline_vs_raw``/``pipeline_vs_sorted`` are the pipeline over each;
* ``pipeline_docs_per_s``: publish every ``IngestRequested`` → all queryable in the index
  (embed worker → JetStream → store projection), end to end;
* ``recall_at_10``: HNSW answers vs exact brute force over the same stored vectors, for
  200 held-out query texts; ``search_p50_ms``: the index alone;
* ``query_p50_ms``/``query_p99_ms``: HTTP ``/QuerySynapse`` with text, sequential.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import random
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["corpus", "run", "run_index_scale"]

_MODULES = (
    "numpy numpy.linalg numpy.random numpy.fft numpy.ma numpy.polynomial os os.path re json "
    "collections asyncio email http urllib logging argparse typing pathlib subprocess socket "
    "threading decimal fractions statistics random datetime calendar string textwrap difflib "
    "unittest doctest inspect ast tokenize dis pickle sqlite3 csv zipfile tarfile gzip hashlib "
    "hmac secrets ssl selectors shutil glob fnmatch tempfile io codecs locale gettext "
    "functools itertools operator contextlib abc enum dataclasses heapq bisect array weakref "
    "copy pprint reprlib numbers math cmath queue sched multiprocessing concurrent.futures "
    "xml.etree.ElementTree html.parser mailbox imaplib smtplib ftplib poplib uuid ipaddress "
    "wave colorsys pdb trace timeit cProfile tracemalloc gc sys platform ctypes struct "
    "binascii base64 plistlib configparser netrc shlex cmd optparse getopt warnings traceback "
    "importlib runpy site venv compileall pyclbr symtable http.server http.client "
    "http.cookies urllib.request email.message email.utils unittest.mock zoneinfo graphlib "
    "fileinput filecmp linecache pkgutil sysconfig click rich.console rich.table rich.progress "
    "aiohttp aiohttp.web msgspec structlog nats.aio.client prometheus_client"
).split()


def corpus(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct English paragraphs (40-600 characters) from installed docstrings."""
    lowered: dict[str, str] = {}
    for name in _MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        objs: list[Any] = [mod]
        try:
            members = inspect.getmembers(mod)
        except Exception:
            members = []
        for _, obj in members:
            if inspect.isclass(obj) or callable(obj):
                objs.append(obj)
                if inspect.isclass(obj):
                    objs.extend(v for k, v in vars(obj).items() if not k.startswith("_"))
        for obj in objs:
            try:
                doc = inspect.getdoc(obj)
            except Exception:
                continue
            for para in (doc or "").split("\n\n"):
                text = " ".join(para.split())
                if 40 <= len(text) <= 600 and not text.startswith((">>>", "..", "-", "=")):
                    # the model lower-cases: texts equal but for case are the same memory
                    lowered.setdefault(text.lower(), text)
    seen = set(lowered.values())
    texts = sorted(seen)
    random.Random(seed).shuffle(texts)
    if len(texts) < n:
        raise RuntimeError(f"only {len(texts)} distinct paragraphs available; asked for {n}")
    return texts[:n]


def _raw_baselines(
    fastembed_default: Any, embedder: Any, texts: list[str], batch: int
) -> tuple[float, float]:
    """Both with the model batch size the pipeline uses. ``raw``: fastembed alone with its
    default settings (one session, every core), arrival order. ``sorted``: the pipeline's
    own embedder (its sessions and threads), length-sorted over the whole corpus."""
    fastembed_default.embed(texts[:batch])  # warm
    embedder.embed(texts[: batch * embedder.sessions], batch)
    t0 = time.perf_counter()
    list(fastembed_default._model.embed(texts, batch_size=batch))
    raw = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    embedder.embed(texts, batch)
    return raw, len(texts) / (time.perf_counter() - t0)


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


async def _run(docs: int, queries: int, data_dir: Path) -> dict[str, Any]:
    import aiohttp
    import msgspec

    from engram.config import Settings
    from engram.miner.embedder import get_embedder
    from engram.miner.node import MinerNode, cache_dir, load_embedder
    from streams.events import IngestRequested

    texts = corpus(docs + queries)
    corpus_texts, query_texts = texts[:docs], texts[docs:]
    settings = Settings(
        data_dir=str(data_dir),
        node_id="bench",
        nats_sync="always",
        log_level="warning",
        snapshot_every_events=max(docs * 2, 10_000),
        snapshot_every_s=3600.0,
    )
    # batch 32: on 2 cores ~10% faster than 64 on length-sorted text (and than 16 at once)
    settings = msgspec.structs.replace(settings, embed_batch=32, embed_batch_wait_s=0.05)
    # --- baselines first: fastembed alone, same texts, same process, same model object ----
    embedder = await asyncio.to_thread(load_embedder, settings, "embed")
    plain = await asyncio.to_thread(
        get_embedder,
        settings.embed_model,
        cache_dir=cache_dir(settings),
        batch_size=settings.embed_batch,
    )
    raw, raw_sorted = await asyncio.to_thread(
        _raw_baselines, plain, embedder, corpus_texts, settings.embed_batch
    )

    node = MinerNode(settings, port=0, ingest_wait_s=30.0)
    await node.start()
    try:
        assert node.handler is not None and node.store is not None and node.bus is not None
        assert node.handler.embedder is embedder  # the worker uses the model just measured

        # --- the pipeline: publish → queryable ---------------------------------------------
        events = [IngestRequested(request_id=uuid.uuid4().hex, text=t) for t in corpus_texts]
        store = node.store
        t0 = time.perf_counter()
        for start in range(0, docs, 500):
            await node.bus.publisher.publish_many(events[start : start + 500])
        runner = node.runner
        assert runner is not None
        while runner.stats.stored < docs:  # distinct texts: every one is a new memory
            await asyncio.sleep(0.01)
        pipeline_s = time.perf_counter() - t0
        pipeline = docs / pipeline_s

        # --- recall: HNSW vs exact over the same stored vectors -----------------------------
        recs = store.records("public")
        keys = np.array([r.key for r in recs], dtype=np.uint64)
        matrix = np.stack([r.vector for r in recs])
        qvecs = node.axon.embedder.embed(query_texts)  # type: ignore[union-attr]
        truth = np.argsort(-(qvecs @ matrix.T), axis=1)[:, :10]
        hits = 0
        search_ms: list[float] = []
        for i, q in enumerate(qvecs):
            t = time.perf_counter()
            got, _ = store.search_keys(q, 10)
            search_ms.append((time.perf_counter() - t) * 1000)
            hits += len(set(got.tolist()) & set(keys[truth[i]].tolist()))
        recall = hits / (10 * len(qvecs))

        # --- HTTP queries with text, sequential ---------------------------------------------
        query_ms: list[float] = []
        async with aiohttp.ClientSession(base_url=node.url) as http:
            for q in query_texts[:10]:  # warm-up
                async with http.post("/QuerySynapse", json={"query_text": q}) as r:
                    await r.read()
            for q in query_texts:
                t = time.perf_counter()
                async with http.post("/QuerySynapse", json={"query_text": q, "top_k": 10}) as r:
                    await r.read()
                    assert r.status == 200
                query_ms.append((time.perf_counter() - t) * 1000)
        embed_one_ms = []
        for q in query_texts[:100]:
            t = time.perf_counter()
            node.axon.embedder.embed_one(q)  # type: ignore[union-attr]
            embed_one_ms.append((time.perf_counter() - t) * 1000)
        return {
            "docs": docs,
            "queries": len(query_texts),
            "mean_chars": round(float(np.mean([len(t) for t in corpus_texts])), 1),
            "pipeline_docs_per_s": round(pipeline, 1),
            "pipeline_seconds": round(pipeline_s, 2),
            "raw_embed_docs_per_s": round(raw, 1),
            "raw_embed_sorted_docs_per_s": round(raw_sorted, 1),
            "embed_batch": settings.embed_batch,
            "embed_sessions": embedder.sessions,
            "pipeline_embed_seconds": round(node.handler.embed_seconds, 2),
            "pipeline_redelivered": node.worker.stats.fetched - docs if node.worker else None,
            "pipeline_vs_raw": round(pipeline / raw, 3),
            "pipeline_vs_sorted": round(pipeline / raw_sorted, 3),
            "recall_at_10": round(recall, 4),
            "query_p50_ms": _pct(query_ms, 50),
            "query_p99_ms": _pct(query_ms, 99),
            "search_p50_ms": _pct(search_ms, 50),
            "search_p99_ms": _pct(search_ms, 99),
            "embed_one_p50_ms": _pct(embed_one_ms, 50),
            "index": {
                "dtype": store.dtype,
                "metric": "ip",
                "connectivity": store.connectivity,
                "expansion_search": store.expansion_search,
            },
            "nats_sync": settings.nats_sync,
        }
    finally:
        await node.stop()


def run(docs: int = 5000, queries: int = 200) -> dict[str, Any]:
    """Run the benchmark on a throwaway embedded miner; returns the figures."""
    data_dir = Path(tempfile.mkdtemp(prefix="engram-bench-"))
    try:
        return asyncio.run(_run(docs, queries, data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def run_index_scale(n: int = 100_000, queries: int = 200, seed: int = 3) -> dict[str, Any]:
    """The index alone at ``n`` vectors (clustered synthetic unit vectors, like text
    embeddings): add rate, recall@10 vs brute force, search p50/p99, for bf16 and f32."""
    from engram.miner.store import MemoryStore

    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((max(n // 100, 10), 384)).astype(np.float32)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    data = cent[rng.integers(0, len(cent), n)] + 0.03 * rng.standard_normal((n, 384))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    qs = data[rng.integers(0, n, queries)] + 0.02 * rng.standard_normal((queries, 384))
    qs = (qs / np.linalg.norm(qs, axis=1, keepdims=True)).astype(np.float32)
    truth = np.argsort(-(qs @ data.T), axis=1)[:, :10] + 1  # keys are 1-based row ids
    out: dict[str, Any] = {"vectors": n, "queries": queries}
    for dtype in ("bf16", "f32"):
        root = Path(tempfile.mkdtemp(prefix="engram-index-"))
        try:
            store = MemoryStore(root, dtype=dtype)
            idx = store._index("public")
            t0 = time.perf_counter()
            idx.add(np.arange(1, n + 1, dtype=np.uint64), data)
            add_s = time.perf_counter() - t0
            ms, hits = [], 0
            for i, q in enumerate(qs):
                t = time.perf_counter()
                keys, _ = store.search_keys(q, 10)
                ms.append((time.perf_counter() - t) * 1000)
                hits += len(set(keys.tolist()) & set(truth[i].tolist()))
            out[dtype] = {
                "add_vectors_per_s": round(n / add_s),
                "recall_at_10": round(hits / (10 * queries), 4),
                "search_p50_ms": _pct(ms, 50),
                "search_p99_ms": _pct(ms, 99),
                "index_mib": round(idx.memory_usage / 2**20, 1),
            }
            store.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)
    out["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["data"] = "synthetic: n/100 random unit centroids + N(0, 0.03) noise, renormalised"
    return out
