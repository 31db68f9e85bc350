"""The shared vectors (tests/vectors/*.json), for both backends."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from engram.core import Backend

from .conftest import load_vectors

CANON = load_vectors("canonical.json")
CIDS = load_vectors("cid.json")
PROOFS = load_vectors("proofs.json")
MERKLE = load_vectors("merkle.json")


def f32(hex_: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.frombuffer(bytes.fromhex(hex_), dtype="<f4")


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


@pytest.mark.parametrize("case", CANON["cases"], ids=ids(CANON["cases"]))
def test_canonical_json(core: Backend, case: dict[str, Any]) -> None:
    got = core.canonical_json(case["metadata"], case["model_version"])
    assert got == case["canonical"].encode("ascii")


def test_float_text(core: Backend) -> None:
    for f in CANON["floats"]:
        (value,) = struct.unpack(">d", bytes.fromhex(f["bits"]))
        assert core.float_repr(value) == f["text"] == repr(value)


@pytest.mark.parametrize("case", CIDS["cases"], ids=ids(CIDS["cases"]))
def test_cid(core: Backend, case: dict[str, Any]) -> None:
    vec = f32(case["embedding_f32le_hex"])
    meta, version = case["metadata"], case["model_version"]
    assert core.canonical_json(meta, version) == case["canonical"].encode()
    assert core.embedding_hash(vec) == case["embedding_hash"]
    assert core.compute_cid(vec, meta, version) == case["cid"]
    # A list of floats gives the same bytes (the values are exact float32s).
    assert core.compute_cid(vec.tolist(), meta, version) == case["cid"]


def test_cid_batches(core: Backend) -> None:
    by_dim: dict[int, list[dict[str, Any]]] = {}
    for case in CIDS["cases"]:
        by_dim.setdefault(len(case["embedding_f32le_hex"]), []).append(case)
    for cases in by_dim.values():
        matrix = np.stack([f32(c["embedding_f32le_hex"]) for c in cases])
        metas = [c["metadata"] for c in cases]
        assert core.compute_cids(matrix, metas, cases[0]["model_version"]) == [
            c["cid"] for c in cases
        ]
        assert core.embedding_hashes(matrix) == [c["embedding_hash"] for c in cases]


def test_cid_batches_parallel_path(core: Backend) -> None:
    case = CIDS["cases"][-1]  # 1536-d
    matrix = np.tile(f32(case["embedding_f32le_hex"]), (1200, 1))
    cids = core.compute_cids(matrix, [case["metadata"]] * 1200, case["model_version"])
    assert set(cids) == {case["cid"]}
    assert set(core.embedding_hashes(matrix)) == {case["embedding_hash"]}


def test_content_cid(core: Backend) -> None:
    for c in CIDS["content"]:
        data = bytes.fromhex(c["data_hex"])
        assert core.content_cid(data) == c["content_cid"]
        assert core.content_cid(bytearray(data)) == c["content_cid"]


@pytest.mark.parametrize("case", PROOFS["cases"], ids=ids(PROOFS["cases"]))
def test_proofs(core: Backend, case: dict[str, Any]) -> None:
    vec = f32(case["embedding_f32le_hex"])
    nonce, hotkey, eh = case["nonce_hex"], case["validator_hotkey_hex"], case["embedding_hash"]
    assert core.proof_v1(nonce, eh) == case["proof_v1"]
    assert core.proof_v2(hotkey, nonce, vec) == case["proof_v2"]
    assert core.verify_proof_v1(nonce, eh, case["proof_v1"], 100, 99.9)
    assert core.verify_proof_v2(hotkey, nonce, vec, case["proof_v2"], 100, 0)
    assert not core.verify_proof_v2(hotkey, nonce, vec, case["proof_v1"], 100, 0)
    assert not core.verify_proof_v1(nonce, eh, case["proof_v2"], 100, 0)
    # Hex is case-insensitive on the way in.
    assert core.proof_v1(nonce.upper(), eh.upper()) == case["proof_v1"]


def test_proof_batches(core: Backend) -> None:
    cases = [c for c in PROOFS["cases"] if c["name"].startswith("dim384")]
    matrix = np.stack([f32(c["embedding_f32le_hex"]) for c in cases])
    hotkey = cases[0]["validator_hotkey_hex"]
    nonces = [c["nonce_hex"] for c in cases]
    assert core.proofs_v2(hotkey, nonces, matrix) == [c["proof_v2"] for c in cases]
    hashes = [c["embedding_hash"] for c in cases]
    assert core.proofs_v1(nonces, hashes) == [c["proof_v1"] for c in cases]
    big = np.tile(matrix[:1], (1000, 1))
    assert set(core.proofs_v2(hotkey, [nonces[0]] * 1000, big)) == {cases[0]["proof_v2"]}


@pytest.mark.parametrize("case", MERKLE["cases"], ids=ids(MERKLE["cases"]))
def test_merkle(core: Backend, case: dict[str, Any]) -> None:
    leaves = [(c, e) for c, e in case["leaves"]]
    assert [core.merkle_leaf(c, e) for c, e in leaves] == case["leaf_hashes"]
    root = core.merkle_root(leaves)
    assert root == case["root"]
    for i, want in enumerate(case["proofs"]):
        proof = core.merkle_proof(leaves, i)
        assert [list(s) for s in proof] == want
        assert core.verify_merkle_proof(root, leaves[i], proof)
        other = leaves[(i + 1) % len(leaves)]
        if other != leaves[i]:
            assert not core.verify_merkle_proof(root, other, proof)


def test_new_nonce(core: Backend) -> None:
    a, b = core.new_nonce(), core.new_nonce()
    assert len(a) == 64 and a != b
    bytes.fromhex(a)
