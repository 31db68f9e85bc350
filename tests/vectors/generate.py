"""Write the shared test vectors (tests/vectors/*.json) from the Python reference.

Deterministic: fixed seeds, fixed nonces and hotkeys, so re-running gives the same files.
The expected outputs come from ``engram.core._fallback`` (the pure-Python reference), and
the canonical JSON is also checked against ``json.dumps`` here. Both backends are tested
against these files by pytest (tests/core/) and the Rust crate by ``cargo test``
(engram-core/tests/vectors.rs). Run: ``python tests/vectors/generate.py``.
"""

from __future__ import annotations

import json
import random
import struct
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from engram.core import _fallback as ref  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
NONCE = bytes(range(32)).hex()  # 000102...1f
NONCE2 = bytes(range(32, 64)).hex()
HOTKEY = bytes(range(0xA0, 0xC0)).hex()  # a0a1...bf


def f32le(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def embedding(seed: int, dim: int) -> bytes:
    rng = random.Random(seed)
    return f32le([rng.gauss(0.0, 1.0) for _ in range(dim)])


def vec(data: bytes) -> memoryview:
    return memoryview(data).cast("f")


def dumps_reference(meta: dict[str, Any], version: str | None) -> bytes:
    obj = dict(meta)
    if version is not None:
        obj["model_version"] = version
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


FLOATS = [
    0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 2.5, 1.5, 100.0, 1e15, 1e16, 1.5e16, 1e17, 1e22,
    123456789.125, 0.0001, 0.00012345, 1e-05, 1.5e-05, 1e-07, 5e-324, 2.2250738585072014e-308,
    1.7976931348623157e308, 0.30000000000000004, 1 / 3, 2 / 3, 3.141592653589793,
    9007199254740993.0, 4.35, 1234567.0, 1e100, 1.5e300, -2.5e-300, 12345678901234567.0,
    0.1 + 0.2, 100.0 / 7.0, 6.02214076e23, 1.602176634e-19,
]  # fmt: skip

CANONICAL_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("empty", {}, None),
    ("empty_with_version", {}, MODEL),
    ("strings", {"text": "hello world", "source": "wiki"}, MODEL),
    ("key_order", {"b": 1, "a": 2, "B": 3, "aa": 4, "_": 5, "A": 6}, None),
    # Code-point order, not UTF-16 order: U+FF01 sorts before U+1F600 (a JS sort differs).
    ("key_order_astral", {"\U0001f600": 1, "\uff01": 2, "z": 3, "\u00e9": 4}, None),
    ("version_overrides", {"model_version": "old", "x": "y"}, MODEL),
    ("version_absent_keeps_key", {"model_version": "mine"}, None),
    (
        "unicode",
        {"fr": "café crème", "ja": "日本語", "emoji": "😀🎉", "mixed": "a\u00e9\u20ac\U0001f600z",
         "é_key": 1, "日": "本", "😀": True},
        MODEL,
    ),
    (
        "escapes",
        {"quote": 'say "hi"', "backslash": "a\\b", "newline": "l1\nl2", "tab": "a\tb",
         "cr": "a\rb", "bs": "\b", "ff": "\f", "nul": "\x00", "ctl": "\x01\x1f", "del": "\x7f",
         "slash": "a/b", "ls": "\u2028\u2029"},
        None,
    ),
    (
        "numbers",
        {"zero": 0, "one": 1, "neg": -42, "big": 2**53 + 1, "i64_min": -(2**63),
         "i64_max": 2**63 - 1, "u64_max": 2**64 - 1, "f": 0.1, "nf": -2.5, "whole": 3.0,
         "tiny": 1e-7, "huge": 1.5e300, "e16": 1e16, "e15": 1e15, "negzero": -0.0},
        MODEL,
    ),
    ("booleans_null", {"t": True, "f": False, "n": None}, MODEL),
    (
        "nested",
        {"tags": ["a", "b", {"z": 1, "y": [1, 2.5, None, [], {}]}], "obj": {"b": {"c": {"d": []}},
         "a": [True, False]}, "empty_list": [], "empty_obj": {}},
        MODEL,
    ),
    ("floats", {f"f{i:02d}": v for i, v in enumerate(FLOATS)}, None),
]  # fmt: skip


def canonical_vectors() -> dict[str, Any]:
    cases = []
    for name, meta, version in CANONICAL_CASES:
        out = ref.canonical_json(meta, version)
        assert out == dumps_reference(meta, version), name
        cases.append(
            {"name": name, "metadata": meta, "model_version": version, "canonical": out.decode()}
        )
    floats = [
        {"bits": struct.pack(">d", v).hex(), "value": v, "text": ref.float_repr(v)} for v in FLOATS
    ]
    for f in floats:
        assert f["text"] == repr(f["value"])
    return {
        "description": "canonical_json(metadata, model_version) -> canonical (ASCII text); "
        "floats: f64 big-endian bits -> Python repr text",
        "cases": cases,
        "floats": floats,
    }


EMBEDDINGS = [
    ("dim1", f32le([0.5])),
    ("dim4_simple", f32le([1.0, -2.0, 0.25, 0.0])),
    ("dim8_negzero_subnormal", f32le([-0.0, 1e-45, 3.4028234663852886e38, -1.0, 1, 2, 3, 4])),
    ("dim384_seed1", embedding(1, 384)),
    ("dim1536_seed2", embedding(2, 1536)),
]

CID_META: list[tuple[str, dict[str, Any]]] = [
    ("empty", {}),
    ("text", {"text": "The quick brown fox", "source": "test"}),
    ("unicode_numbers_nested", {"title": "Über café 😀", "n": 7, "score": 0.75,
                                 "tags": ["x", {"k": None}]}),
]  # fmt: skip


def cid_vectors() -> dict[str, Any]:
    cases = []
    for ename, data in EMBEDDINGS:
        for mname, meta in CID_META:
            cases.append(
                {
                    "name": f"{ename}/{mname}",
                    "embedding_f32le_hex": data.hex(),
                    "metadata": meta,
                    "model_version": MODEL,
                    "canonical": ref.canonical_json(meta, MODEL).decode(),
                    "embedding_hash": ref.embedding_hash(vec(data)),
                    "cid": ref.compute_cid(vec(data), meta, MODEL),
                }
            )
    contents = [b"", b"hello engram", bytes(range(256))]
    return {
        "description": "cid = 'v1::' + hex(sha256(f32le || canonical)); "
        "embedding_hash = hex(sha256(f32le)); content_cid = 'sha256:' + hex(sha256(bytes))",
        "cases": cases,
        "content": [{"data_hex": c.hex(), "content_cid": ref.content_cid(c)} for c in contents],
    }


def proof_vectors() -> dict[str, Any]:
    cases = []
    for ename, data in EMBEDDINGS:
        for nonce in (NONCE, NONCE2):
            eh = ref.embedding_hash(vec(data))
            cases.append(
                {
                    "name": f"{ename}/nonce{'1' if nonce == NONCE else '2'}",
                    "embedding_f32le_hex": data.hex(),
                    "embedding_hash": eh,
                    "nonce_hex": nonce,
                    "validator_hotkey_hex": HOTKEY,
                    "v2_key_hex": ref._v2_key(bytes.fromhex(HOTKEY), bytes.fromhex(nonce)).hex(),
                    "proof_v1": ref.proof_v1(nonce, eh),
                    "proof_v2": ref.proof_v2(HOTKEY, nonce, vec(data)),
                }
            )
    return {
        "description": "proof_v1 = hex(hmac_sha256(key=nonce, msg=ascii(embedding_hash))); "
        "proof_v2 = hex(hmac_sha256(key=sha256(hotkey || nonce), msg=f32le))",
        "cases": cases,
    }


def merkle_vectors() -> dict[str, Any]:
    cases = []
    for n in (1, 2, 3, 4, 5, 7, 8):
        leaves = []
        for i in range(n):
            data = embedding(100 + i, 16)
            meta = {"i": i}
            leaves.append((ref.compute_cid(vec(data), meta, MODEL), ref.embedding_hash(vec(data))))
        cases.append(
            {
                "name": f"leaves{n}",
                "leaves": [list(x) for x in leaves],
                "leaf_hashes": [ref.merkle_leaf(c, e) for c, e in leaves],
                "root": ref.merkle_root(leaves),
                "proofs": [[list(s) for s in ref.merkle_proof(leaves, i)] for i in range(n)],
            }
        )
    return {
        "description": "leaf = sha256(0x00 || u32be(len(cid)) || cid || eh32); "
        "node = sha256(0x01 || left || right); odd last node promoted; "
        "proof steps [side, sibling_hex], side = where the sibling sits (L/R)",
        "cases": cases,
    }


def main() -> None:
    files = {
        "canonical.json": canonical_vectors(),
        "cid.json": cid_vectors(),
        "proofs.json": proof_vectors(),
        "merkle.json": merkle_vectors(),
    }
    for name, data in files.items():
        text = json.dumps(data, indent=1, ensure_ascii=False, sort_keys=False) + "\n"
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {name}: {len(data['cases'])} cases")


if __name__ == "__main__":
    main()
