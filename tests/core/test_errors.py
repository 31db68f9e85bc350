"""Bad input gives a clear exception from engram.core.errors, the same class from both
backends, and never a panic or a crash."""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from engram.core import Backend
from engram.core.errors import (
    ChallengeExpired,
    CoreError,
    InvalidArgument,
    InvalidEmbedding,
    InvalidEmbeddingDtype,
    InvalidHex,
    InvalidHotkey,
    InvalidMerkleInput,
    InvalidMetadata,
    InvalidNonce,
)

N = "00" * 32
HK = "ab" * 32
EH = "11" * 32
V = np.ones(4, dtype=np.float32)
M = np.ones((3, 4), dtype=np.float32)


class Weird:
    pass


def nan_vec() -> np.ndarray[Any, Any]:
    v = V.copy()
    v[2] = np.nan
    return v


def big_endian() -> np.ndarray[Any, Any]:
    return V.astype(">f4")


CASES: list[tuple[str, Callable[[Backend], object], type[Exception]]] = [
    # Embeddings
    ("nan", lambda c: c.embedding_hash(nan_vec()), InvalidEmbedding),
    ("inf", lambda c: c.embedding_hash(np.array([1, np.inf], dtype=np.float32)), InvalidEmbedding),
    ("-inf_list", lambda c: c.embedding_hash([1.0, float("-inf")]), InvalidEmbedding),
    ("nan_list", lambda c: c.compute_cid([float("nan")], {}, "m"), InvalidEmbedding),
    ("f32_overflow_list", lambda c: c.embedding_hash([1e39]), InvalidEmbedding),
    ("empty", lambda c: c.embedding_hash(np.zeros(0, dtype=np.float32)), InvalidEmbedding),
    ("empty_list", lambda c: c.embedding_hash([]), InvalidEmbedding),
    ("float64", lambda c: c.embedding_hash(V.astype(np.float64)), InvalidEmbeddingDtype),
    ("int32", lambda c: c.embedding_hash(V.astype(np.int32)), InvalidEmbeddingDtype),
    ("float16", lambda c: c.embedding_hash(V.astype(np.float16)), InvalidEmbeddingDtype),
    ("big_endian", lambda c: c.embedding_hash(big_endian()), InvalidEmbeddingDtype),
    ("bytes", lambda c: c.embedding_hash(b"\x00\x00\x80\x3f"), InvalidEmbeddingDtype),
    ("str", lambda c: c.embedding_hash("1.0"), InvalidEmbeddingDtype),
    ("none", lambda c: c.embedding_hash(None), InvalidEmbeddingDtype),
    ("str_in_list", lambda c: c.embedding_hash([1.0, "2"]), InvalidEmbeddingDtype),
    ("nested_list", lambda c: c.embedding_hash([[1.0]]), InvalidEmbeddingDtype),
    ("2d_for_single", lambda c: c.embedding_hash(M), InvalidEmbedding),
    ("0d", lambda c: c.embedding_hash(np.float32(1.0)), InvalidEmbedding),
    ("0d_array", lambda c: c.embedding_hash(np.array(1.0, np.float32)), InvalidEmbedding),
    ("non_contiguous", lambda c: c.embedding_hash(np.ones(8, np.float32)[::2]), InvalidEmbedding),
    ("1d_for_batch", lambda c: c.embedding_hashes(V), InvalidEmbedding),
    ("3d_for_batch", lambda c: c.embedding_hashes(M.reshape(3, 2, 2)), InvalidEmbedding),
    ("f_order_batch", lambda c: c.embedding_hashes(np.asfortranarray(M)), InvalidEmbedding),
    ("col_slice_batch", lambda c: c.embedding_hashes(np.ones((3, 8), np.float32)[:, ::2]),
     InvalidEmbedding),
    ("dim0_batch", lambda c: c.embedding_hashes(np.zeros((3, 0), np.float32)), InvalidEmbedding),
    ("list_for_batch", lambda c: c.embedding_hashes([[1.0]]), InvalidEmbeddingDtype),
    ("f64_batch", lambda c: c.compute_cids(M.astype(np.float64), [{}] * 3, "m"),
     InvalidEmbeddingDtype),
    ("nan_in_batch", lambda c: c.compute_cids(np.stack([V, nan_vec()]), [{}, {}], "m"),
     InvalidEmbedding),
    # Metadata
    ("meta_not_dict", lambda c: c.canonical_json([1]), InvalidMetadata),  # type: ignore[arg-type]
    ("meta_bytes", lambda c: c.canonical_json({"a": b"x"}), InvalidMetadata),
    ("meta_set", lambda c: c.canonical_json({"a": {1}}), InvalidMetadata),
    ("meta_nan", lambda c: c.canonical_json({"a": float("nan")}), InvalidMetadata),
    ("meta_inf", lambda c: c.compute_cid(V, {"a": [float("inf")]}, "m"), InvalidMetadata),
    ("meta_int_key", lambda c: c.canonical_json({1: "a"}), InvalidMetadata),
    ("meta_none_key", lambda c: c.canonical_json({None: "a"}), InvalidMetadata),
    ("meta_big_int", lambda c: c.canonical_json({"a": 2**64}), InvalidMetadata),
    ("meta_small_int", lambda c: c.canonical_json({"a": -(2**63) - 1}), InvalidMetadata),
    ("meta_surrogate", lambda c: c.canonical_json({"a": "\ud800"}), InvalidMetadata),
    ("meta_surrogate_key", lambda c: c.canonical_json({"\udfff": 1}), InvalidMetadata),
    ("meta_object", lambda c: c.canonical_json({"a": Weird()}), InvalidMetadata),
    ("meta_np_scalar", lambda c: c.canonical_json({"a": np.float32(1)}), InvalidMetadata),
    ("meta_too_deep", lambda c: c.canonical_json(deep(70)), InvalidMetadata),
    ("meta_count", lambda c: c.compute_cids(M, [{}] * 2, "m"), InvalidMetadata),
    ("metas_not_list", lambda c: c.compute_cids(M, ({}, {}, {}), "m"), InvalidMetadata),
    ("meta_bad_row", lambda c: c.compute_cids(M, [{}, {"x": {1}}, {}], "m"), InvalidMetadata),
    ("version_not_str", lambda c: c.compute_cid(V, {}, 3), InvalidArgument),
    ("version_not_str_canon", lambda c: c.canonical_json({}, b"v"), InvalidArgument),
    # Hex, nonces, hotkeys
    ("nonce_short", lambda c: c.proof_v1("00" * 31, EH), InvalidNonce),
    ("nonce_long", lambda c: c.proof_v1("00" * 33, EH), InvalidNonce),
    ("nonce_not_hex", lambda c: c.proof_v1("zz" * 32, EH), InvalidNonce),
    ("nonce_spaces", lambda c: c.proof_v1(" 0" * 32, EH), InvalidNonce),
    ("nonce_not_str", lambda c: c.proof_v1(b"0" * 64, EH), InvalidNonce),
    ("eh_not_hex", lambda c: c.proof_v1(N, "g" * 64), InvalidHex),
    ("eh_short", lambda c: c.proof_v1(N, "ab"), InvalidHex),
    ("eh_non_ascii", lambda c: c.proof_v1(N, "\u0661" * 64), InvalidHex),
    ("hotkey_short", lambda c: c.proof_v2("ab", N, V), InvalidHotkey),
    ("hotkey_not_hex", lambda c: c.proof_v2("x" * 64, N, V), InvalidHotkey),
    ("v2_nonce", lambda c: c.proof_v2(HK, "x", V), InvalidNonce),
    ("v2_nan", lambda c: c.proof_v2(HK, N, nan_vec()), InvalidEmbedding),
    ("batch_nonce", lambda c: c.proofs_v2(HK, [N, N, "q"], M), InvalidNonce),
    ("batch_nonce_count", lambda c: c.proofs_v2(HK, [N], M), InvalidArgument),
    ("batch_nonces_not_list", lambda c: c.proofs_v2(HK, N, M), InvalidArgument),
    ("batch_v1_count", lambda c: c.proofs_v1([N], [EH, EH]), InvalidArgument),
    ("batch_v1_hash", lambda c: c.proofs_v1([N], ["zz"]), InvalidHex),
    ("verify_bad_nonce", lambda c: c.verify_proof_v1("00", EH, "00" * 32, 10, 0), InvalidNonce),
    ("expired", lambda c: c.verify_proof_v1(N, EH, "00" * 32, 10, 10), ChallengeExpired),
    ("expired_v2", lambda c: c.verify_proof_v2(HK, N, V, "x", 10, 11.5), ChallengeExpired),
    ("expired_nan_now", lambda c: c.verify_proof_v2(HK, N, V, "x", 10, float("nan")),
     ChallengeExpired),
    # Content and Merkle
    ("content_str", lambda c: c.content_cid("text"), InvalidArgument),
    ("merkle_empty", lambda c: c.merkle_root([]), InvalidMerkleInput),
    ("merkle_not_list", lambda c: c.merkle_root((("a", EH),)), InvalidMerkleInput),
    ("merkle_bad_leaf", lambda c: c.merkle_root([("a", EH, "x")]), InvalidMerkleInput),
    ("merkle_leaf_list", lambda c: c.merkle_root([["a", EH]]), InvalidMerkleInput),
    ("merkle_bad_hash", lambda c: c.merkle_root([("a", "zz")]), InvalidHex),
    ("merkle_index", lambda c: c.merkle_proof([("a", EH)], 1), InvalidMerkleInput),
    ("merkle_neg_index", lambda c: c.merkle_proof([("a", EH)], -1), InvalidMerkleInput),
    ("merkle_bad_side", lambda c: c.verify_merkle_proof(EH, ("a", EH), [("X", EH)]),
     InvalidMerkleInput),
    ("merkle_bad_step_hash", lambda c: c.verify_merkle_proof(EH, ("a", EH), [("L", "0")]),
     InvalidHex),
    ("merkle_bad_root", lambda c: c.verify_merkle_proof("r", ("a", EH), []), InvalidHex),
]  # fmt: skip


def deep(n: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _ in range(n):
        d = {"a": d}
    return d


@pytest.mark.parametrize(("name", "call", "exc"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises(core: Backend, name: str, call: Callable[[Backend], object],
                          exc: type[Exception]) -> None:  # fmt: skip
    with pytest.raises(exc) as info:
        call(core)
    assert type(info.value) is exc, f"{name}: {type(info.value).__name__}: {info.value}"
    assert isinstance(info.value, CoreError)
    assert str(info.value)  # says what was wrong


def test_type_errors_are_type_errors() -> None:
    assert issubclass(InvalidEmbeddingDtype, TypeError)
    assert issubclass(InvalidEmbeddingDtype, InvalidEmbedding)
    assert issubclass(InvalidArgument, TypeError)
    assert issubclass(CoreError, ValueError)


def test_depth_limit_is_exact(core: Backend) -> None:
    assert core.canonical_json(deep(63))  # 64 levels with the top
    with pytest.raises(InvalidMetadata):
        core.canonical_json(deep(64))


def test_other_buffers_accepted(core: Backend) -> None:
    want = core.embedding_hash(np.array([1, 2, 3], dtype=np.float32))
    assert core.embedding_hash(array.array("f", [1, 2, 3])) == want
    assert core.embedding_hash(memoryview(array.array("f", [1, 2, 3]))) == want
    assert core.embedding_hash((1, 2, 3)) == want
    assert core.embedding_hash(np.array([1, 2, 3], dtype="<f4")) == want


def test_read_only_and_offset_arrays(core: Backend) -> None:
    v = np.arange(9, dtype=np.float32)
    ro = v[1:5].copy()
    ro.flags.writeable = False
    assert core.embedding_hash(ro) == core.embedding_hash(v[1:5])
    # Unaligned memory (offset by one byte inside a bytes buffer).
    raw = b"\x00" + v[1:5].tobytes()
    unaligned = np.frombuffer(raw, dtype=np.float32, offset=1)
    assert core.embedding_hash(unaligned) == core.embedding_hash(v[1:5])


def test_malformed_proof_is_false_not_error(core: Backend) -> None:
    for bad in ["", "zz" * 32, "00", None, 5, "0" * 65]:
        assert core.verify_proof_v1(N, EH, bad, 10, 0) is False  # type: ignore[arg-type]
        assert core.verify_proof_v2(HK, N, V, bad, 10, 0) is False  # type: ignore[arg-type]


def test_big_batch_errors_name_the_row(core: Backend) -> None:
    """Batches large enough for the Rust pipeline report the same error class and row."""
    m = np.ones((9000, 8), dtype=np.float32)
    metas: list[dict[str, Any]] = [{"i": i} for i in range(9000)]
    m[7001, 3] = np.inf
    with pytest.raises(InvalidEmbedding, match="row 7001"):
        core.compute_cids(m, metas, "v")
    metas[8500] = {"bad": {1, 2}}
    with pytest.raises(InvalidMetadata, match="row 8500"):  # metadata is checked first
        core.compute_cids(m, metas, "v")
    m[7001, 3] = 0
    with pytest.raises(InvalidEmbeddingDtype):
        core.compute_cids(m.astype(np.float64), metas, "v")
    metas[8500] = {"ok": 1}
    assert len(set(core.compute_cids(m, metas, "v"))) == 9000
