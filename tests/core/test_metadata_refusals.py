"""One validation of metadata for both backends: what one refuses the other refuses, with the
same class (``InvalidMetadata``) and the same short sentence, and ``canonical_json`` (what the
axon calls) refuses exactly what ``compute_cid``/``compute_cids`` (what the worker calls)
refuse. Everything accepted gives identical bytes and CIDs."""

from __future__ import annotations

import enum
import math
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from engram.core import Backend
from engram.core.errors import CoreError, InvalidMetadata

VEC = np.array([1.0, -2.0, 0.25, 0.0], dtype=np.float32)
MAX_MESSAGE = 200


def nested_lists(depth: int) -> Any:
    obj: Any = []
    for _ in range(depth - 1):
        obj = [obj]
    return obj


def nested_dicts(depth: int) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for _ in range(depth - 1):
        obj = {"k": obj}
    return obj


class OddHashKey(str):
    """A key equal as text to another but hashed apart: a dict can hold both."""

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


class Tricky(str):
    """Methods that lie; the core reads the text itself."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        raise RuntimeError("never called")

    def __str__(self) -> str:
        return "lie"


class LyingInt(int):
    def __int__(self) -> int:
        return 2**100

    def __le__(self, other: object) -> bool:
        return False


class LyingDict(dict):  # type: ignore[type-arg]
    def items(self) -> Any:  # type: ignore[override]
        return [("lie", 1)]

    def __iter__(self) -> Any:
        return iter(["lie"])


class LyingList(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter(["lie"])


class Color(enum.IntEnum):
    RED = 1


cyclic_list: list[Any] = []
cyclic_list.append(cyclic_list)
cyclic_dict: dict[str, Any] = {}
cyclic_dict["self"] = cyclic_dict
HugeName = type("A" * 100_000, (), {})

REFUSED: dict[str, Any] = {
    "int 2**64": {"n": 2**64},
    "int -2**63-1": {"n": -(2**63) - 1},
    "int 2**70": {"n": 2**70},
    "int 10**5000 (no decimal text)": {"n": 10**5000},
    "int in list": {"n": [1, 2**64]},
    "int in tuple": {"n": (1, -(2**65))},
    "nested dicts 65": nested_dicts(65),
    "nested lists 64 under the top": {"l": nested_lists(64)},
    "nested lists 100000": {"l": nested_lists(100_000)},
    "cyclic list": {"l": cyclic_list},
    "cyclic dict": cyclic_dict,
    "surrogate key": {"\ud800": 1},
    "surrogate value": {"k": "\udfff"},
    "surrogate in list": {"k": ["a", "\ud83d"]},
    "surrogate nested key": {"a": {"b\udc00": 1}},
    "surrogate pair as two code points": {"k": "\ud83d\ude00"},
    "int key": {1: "a"},
    "None key": {None: 1},
    "bytes key": {b"k": 1},
    "tuple key": {("a",): 1},
    "bool key": {True: 1},
    "nan": {"f": math.nan},
    "inf": {"f": math.inf},
    "-inf in list": {"f": [1.0, -math.inf]},
    "bytes": {"b": b"x"},
    "bytearray": {"b": bytearray(b"x")},
    "set": {"s": {1}},
    "frozenset": {"s": frozenset()},
    "object": {"o": object()},
    "numpy int64": {"n": np.int64(1)},
    "numpy bool": {"b": np.bool_(True)},
    "numpy array": {"a": np.zeros(2)},
    "decimal": {"d": Decimal("1.5")},
    "complex": {"c": 1j},
    "huge class name": {"x": HugeName()},
    "duplicate key text": {OddHashKey("a"): 1, "a": 2},
    "top-level list": [("a", 1)],
    "top-level None": None,
    "top-level str": "{}",
    "top-level huge class name": HugeName(),
}

ACCEPTED: dict[str, Any] = {
    "int limits": {"lo": -(2**63), "hi": 2**64 - 1, "i64": 2**63 - 1},
    "nested dicts 64": nested_dicts(64),
    "nested lists 63 under the top": {"l": nested_lists(63)},
    "numpy float64 (a float)": {"f": np.float64(0.1)},
    "float tie": {"": 562949953421312.25},
    "str subclass": {Tricky("key"): Tricky("value")},
    "int subclass": {"n": LyingInt(7), "e": Color.RED},
    "dict subclass": {"d": LyingDict(a=1)},
    "list subclass": {"l": LyingList([1, 2])},
    "astral and escapes": {"\U0001f600": "\x00\x7f\u2028"},
    # The version replaces the key, so what the metadata held there is never hashed.
    "model_version key replaced": {"model_version": 2**80, "a": None},
}


def run(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except CoreError as e:
        return type(e).__name__, str(e)


@pytest.mark.parametrize("meta", REFUSED.values(), ids=list(REFUSED))
def test_refused_by_both_alike(both: tuple[Backend, Backend], meta: Any) -> None:
    rust, py = both
    for version in ("v", None):
        r, p = run(rust.canonical_json, meta, version), run(py.canonical_json, meta, version)
        assert r[0] == "InvalidMetadata", r
        assert r == p
        assert len(r[1]) <= MAX_MESSAGE, r[1][:300]
    # What the axon checks (canonical_json) is what the worker needs (compute_cid[s]).
    for core in (rust, py):
        with pytest.raises(InvalidMetadata) as one:
            core.compute_cid(VEC, meta, "v")
        assert str(one.value) == r[1]
        with pytest.raises(InvalidMetadata) as batch:
            core.compute_cids(VEC.reshape(1, -1), [meta], "v")
        assert str(batch.value) == f"row 0: {r[1]}"


@pytest.mark.parametrize("meta", ACCEPTED.values(), ids=list(ACCEPTED))
def test_accepted_by_both_alike(both: tuple[Backend, Backend], meta: Any) -> None:
    rust, py = both
    canon = rust.canonical_json(meta, "v")
    assert canon == py.canonical_json(meta, "v")
    assert b"lie" not in canon
    cid = rust.compute_cid(VEC, meta, "v")
    assert cid == py.compute_cid(VEC, meta, "v")
    assert rust.compute_cids(VEC.reshape(1, -1), [meta], "v") == [cid]
    assert py.compute_cids(VEC.reshape(1, -1), [meta], "v") == [cid]


def test_first_refusal_is_the_same_when_several(both: tuple[Backend, Backend]) -> None:
    rust, py = both
    meta = {"z": math.nan, "a": 2**64, "m": {"\ud800": 1}}
    assert run(rust.canonical_json, meta, "v") == run(py.canonical_json, meta, "v")
    assert run(rust.canonical_json, meta, "v")[1].startswith("metadata integers")
