"""The offline embedder: the packaged int8 all-MiniLM-L6-v2, no network."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from engram.miner.embedder import (
    DEFAULT_MODEL_VERSION,
    MIN_SPLIT,
    Embedder,
    get_embedder,
    packaged_model_dir,
    split_batch_size,
)


def test_model_folder_is_assembled_once(model_cache: Path, embedder: Embedder):
    folder = packaged_model_dir(model_cache)
    names = {p.name for p in folder.iterdir()}
    assert {
        "model.onnx",
        "tokenizer.json",
        "config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    } <= names
    assert packaged_model_dir(model_cache) == folder


def test_vectors_are_unit_float32_in_input_order(embedder: Embedder):
    texts = ["a cat sat on the mat", "x", "a feline rested on a rug " * 20, "stock markets fell"]
    m = embedder.embed(texts, batch_size=2)  # sorted by length inside, order restored
    assert m.shape == (4, 384) and m.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(m[i], embedder.embed_one(t), atol=1e-5)
    sims = m @ m.T
    assert sims[0, 2] > sims[0, 3]  # semantics, not noise
    assert embedder.model_version == DEFAULT_MODEL_VERSION and embedder.dim == 384
    assert embedder.embed([]).shape == (0, 384)


def test_lengths_are_the_word_pieces_a_batch_pads_to(embedder: Embedder):
    # [CLS] hello world [SEP]; an empty text is the two special tokens; a long text is
    # truncated where the model truncates it. Characters rank the last two the other way:
    # one common 14-letter phrase is fewer pieces than 6 letters of nonsense.
    texts = ["hello world", "", "word " * 2000, "the government", "zxqvjk"]
    assert embedder.lengths(texts) == [4, 2, 256, 4, 7]
    assert embedder.lengths([]) == []


def test_given_lengths_only_change_the_batching(embedder: Embedder):
    texts = ["the sun rose", "x", "rain " * 30, "a dog barked at the mail carrier", "stocks fell"]
    m = embedder.embed(texts, batch_size=2)
    # any lengths (here the reverse of the truth) batch differently; rows stay in order
    odd = embedder.embed(texts, batch_size=2, lengths=[-x for x in embedder.lengths(texts)])
    np.testing.assert_allclose(odd, m, atol=1e-5)
    with pytest.raises(ValueError, match="2 lengths for 5 texts"):
        embedder.embed(texts, lengths=[1, 2])


def test_offline_no_download(monkeypatch, model_cache: Path):
    """A fresh instance loads with the network switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import socket

    def no_network(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    e = Embedder(cache_dir=model_cache, batch_size=8)
    assert e.embed_one("offline works").shape == (384,)


@pytest.mark.parametrize(
    ("n", "batch", "lanes", "expected"),
    [
        (64, 64, 2, 8),  # one small window → 4 batches per lane, not one batch on one core
        (64, 32, 2, 8),
        (16, 64, 2, 8),  # the smallest window that is split
        (15, 64, 2, 64),  # below 2 * MIN_SPLIT: one batch
        (256, 64, 2, 32),
        (400, 64, 4, 25),
        (20, 64, 4, MIN_SPLIT),  # never below MIN_SPLIT texts a batch
        (5000, 32, 2, 32),  # a big window keeps the configured batch
        (64, 64, 1, 64),  # one lane: nothing to split for
    ],
)
def test_split_batch_size(n: int, batch: int, lanes: int, expected: int):
    assert split_batch_size(n, batch, lanes) == expected


@pytest.fixture(scope="module")
def two_lanes(model_cache: Path) -> Embedder:
    return get_embedder(cache_dir=model_cache, batch_size=64, lanes=2)


def _definitions(n: int) -> list[str]:
    words = ["river", "bank", "money", "stone", "light", "music", "garden", "engine", "salt"]
    return [
        f"a {words[i % 9]} or {words[(i * 7) % 9]} used for thing number {i}" + " more" * (i % 5)
        for i in range(n)
    ]


def test_a_window_of_64_runs_on_every_lane(two_lanes: Embedder, embedder: Embedder):
    texts = _definitions(64)
    before = list(two_lanes.lane_texts)
    m = two_lanes.embed(texts)  # batch size 64: one model batch unless split
    done = [a - b for a, b in zip(two_lanes.lane_texts, before, strict=True)]
    assert sum(done) == 64 and all(d > 0 for d in done), done
    np.testing.assert_allclose(m, embedder.embed(texts), atol=1e-5)  # one lane, same vectors


def test_queries_and_batches_share_the_model_concurrently(two_lanes: Embedder):
    """One ONNX session run by the lanes and by query threads at once gives the same
    vectors as one call at a time."""
    batch = _definitions(300)
    queries = [f"what is a {w}?" for w in ("cat", "bank", "river", "song", "tool", "salt")]
    alone = two_lanes.embed(batch, 16)
    alone_q = np.stack([two_lanes.embed_one(q) for q in queries])
    with ThreadPoolExecutor(3) as pool:
        big = pool.submit(two_lanes.embed, batch, 16)
        qs = [pool.submit(two_lanes.embed_one, q) for q in queries * 3]
        together = big.result()
        got = np.stack([f.result() for f in qs])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(got, np.concatenate([alone_q] * 3), atol=1e-5)


def test_a_steady_query_load_keeps_a_core(two_lanes: Embedder):
    """While queries keep coming, only the first lane starts new model batches (the other
    finishes its first one and holds); the batch still completes, and correctly."""
    batch = _definitions(320)
    alone = two_lanes.embed(batch, 16)
    stop = threading.Event()

    def ask() -> int:
        n = 0
        while not stop.is_set():
            two_lanes.embed_one(f"what is a thing called number {n}?")
            n += 1
        return n

    with ThreadPoolExecutor(1) as pool:
        asking = pool.submit(ask)
        two_lanes.embed_one("meanwhile the asking thread is running")
        before = list(two_lanes.lane_texts)
        got = two_lanes.embed(batch, 16)
        done = [a - b for a, b in zip(two_lanes.lane_texts, before, strict=True)]
        stop.set()
        assert asking.result() > 0
    np.testing.assert_allclose(got, alone, atol=1e-5)
    assert sum(done) == 320
    assert done[1] < done[0] / 2, done  # lane 1: about its first batch only
