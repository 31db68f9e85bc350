"""The offline embedder: the packaged int8 all-MiniLM-L6-v2, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engram.miner.embedder import DEFAULT_MODEL_VERSION, Embedder, packaged_model_dir


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


def test_offline_no_download(monkeypatch, model_cache: Path):
    """A fresh instance loads with the network switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import socket

    def no_network(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    e = Embedder(cache_dir=model_cache, batch_size=8)
    assert e.embed_one("offline works").shape == (384,)
