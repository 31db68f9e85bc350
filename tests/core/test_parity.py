"""Hypothesis: random embeddings and metadata give identical outputs from Rust and the
fallback (and the fallback's canonical JSON equals json.dumps).

Runs under the deterministic Hypothesis profile (tests/conftest.py): the same examples every
run. A failure found here (or with ENGRAM_HYPOTHESIS=explore) becomes a fixed vector in
tests/vectors/generate.py, as the float tie 562949953421312.25 did."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engram.core import Backend
from engram.core.errors import CoreError

parity = settings(max_examples=300, deadline=None)

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
vectors = st.integers(1, 64).flatmap(lambda n: arrays(np.float32, n, elements=finite32))
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
ints = st.integers(-(2**63), 2**64 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | ints | floats | text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
metadata = st.dictionaries(text, json_values, max_size=6)
hexes = st.binary(min_size=32, max_size=32).map(bytes.hex)


def reference(meta: dict[str, Any], version: str | None) -> bytes:
    obj = dict(meta)
    if version is not None:
        obj["model_version"] = version
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


@parity
@given(floats)
def test_float_text(both: tuple[Backend, Backend], x: float) -> None:
    rust, py = both
    assert rust.float_repr(x) == py.float_repr(x) == repr(x)


@parity
@given(st.integers(0, 2**64 - 1))
def test_float_text_from_bits(both: tuple[Backend, Backend], bits: int) -> None:
    rust, _ = both
    (x,) = struct.unpack("<d", bits.to_bytes(8, "little"))
    if x != x or x in (float("inf"), float("-inf")):
        return
    assert rust.float_repr(x) == repr(x)


@parity
@given(metadata, st.none() | text)
def test_canonical_json(both: tuple[Backend, Backend], meta: dict[str, Any], v: str | None) -> None:
    rust, py = both
    out = rust.canonical_json(meta, v)
    assert out == py.canonical_json(meta, v) == reference(meta, v)


@parity
@given(vectors, metadata, text)
def test_cid(both: tuple[Backend, Backend], vec: Any, meta: dict[str, Any], v: str) -> None:
    rust, py = both
    assert rust.embedding_hash(vec) == py.embedding_hash(vec)
    assert rust.compute_cid(vec, meta, v) == py.compute_cid(vec, meta, v)
    assert rust.compute_cid(vec.tolist(), meta, v) == rust.compute_cid(vec, meta, v)


@settings(max_examples=100, deadline=None)
@given(
    st.tuples(st.integers(0, 8), st.integers(1, 24)).flatmap(
        lambda s: arrays(np.float32, s, elements=finite32)
    ),
    st.lists(metadata, min_size=8, max_size=8),
)
def test_batches(both: tuple[Backend, Backend], m: Any, metas: list[dict[str, Any]]) -> None:
    rust, py = both
    metas = metas[: m.shape[0]]
    assert rust.compute_cids(m, metas, "v") == py.compute_cids(m, metas, "v")
    assert rust.embedding_hashes(m) == py.embedding_hashes(m)


@parity
@given(hexes, hexes, vectors)
def test_proofs(both: tuple[Backend, Backend], hotkey: str, nonce: str, vec: Any) -> None:
    rust, py = both
    eh = py.embedding_hash(vec)
    assert rust.proof_v1(nonce, eh) == py.proof_v1(nonce, eh)
    p2 = py.proof_v2(hotkey, nonce, vec)
    assert rust.proof_v2(hotkey, nonce, vec) == p2
    assert rust.verify_proof_v2(hotkey, nonce, vec, p2, 10, 0)


@parity
@given(st.lists(st.tuples(text, hexes), min_size=1, max_size=17), st.data())
def test_merkle(both: tuple[Backend, Backend], leaves: list[tuple[str, str]], data: Any) -> None:
    rust, py = both
    root = rust.merkle_root(leaves)
    assert root == py.merkle_root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    proof = rust.merkle_proof(leaves, i)
    assert proof == py.merkle_proof(leaves, i)
    assert py.verify_merkle_proof(root, leaves[i], proof)


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.integers() | st.text() | st.none(), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=2)
    ),
    max_leaves=8,
)


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except CoreError as e:
        return ("error", type(e).__name__)


def refusal(fn: Any, *args: Any) -> Any:
    """Like :func:`outcome`, with the message (metadata refusals read alike in both)."""
    try:
        return ("ok", fn(*args))
    except CoreError as e:
        return ("error", type(e).__name__, str(e))


@parity
@given(anything, anything)
def test_same_verdict_on_arbitrary_input(both: tuple[Backend, Backend], a: Any, b: Any) -> None:
    rust, py = both
    meta = {"k": a}
    assert refusal(rust.canonical_json, meta) == refusal(py.canonical_json, meta)
    assert refusal(rust.canonical_json, a) == refusal(py.canonical_json, a)
    assert outcome(rust.embedding_hash, a) == outcome(py.embedding_hash, a)
    assert outcome(rust.proof_v1, a, b) == outcome(py.proof_v1, a, b)
    assert outcome(rust.merkle_root, a) == outcome(py.merkle_root, a)
