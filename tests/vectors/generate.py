"""Write the shared test vectors (tests/vectors/*.json) from the Python reference.

Deterministic: fixed seeds, fixed nonces and hotkeys, so re-running gives the same files.
The expected outputs come from ``engram.core._fallback`` (the pure-Python reference), and
the canonical JSON is also checked against ``json.dumps`` here. Both backends are tested
against these files by pytest (tests/core/) and the Rust crate by ``cargo test``
(engram-core/tests/vectors.rs). Run: ``python tests/vectors/generate.py``.
"""

from __future__ import annotations

import json
import math
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

# Exact ties: the float lies exactly halfway between the two shortest digit strings that
# read back as it; Python (and engram-core) keep the even last digit, Rust's `{}` rounds up.
# One family per binade 2^-25 .. 2^50 (engram/bench/floats.py constructs them all).
FLOAT_TIES = [
    ("tie 2^49+1/4 (.2|.3, the parity failure)", math.ldexp(1, 49) + 0.25),
    ("tie 2^49+3/4 (.7|.8)", math.ldexp(1, 49) + 0.75),
    ("tie -(2^49+1/4)", -(math.ldexp(1, 49) + 0.25)),
    ("tie 2^43+1/16", math.ldexp(1, 43) + 0.0625),
    ("tie 2^34+2^-7", math.ldexp(1, 34) + math.ldexp(1, -7)),
    ("tie 2^26+2^-9", math.ldexp(1, 26) + math.ldexp(1, -9)),
    ("tie 2^17+2^-12", math.ldexp(1, 17) + math.ldexp(1, -12)),
    ("tie 2^9+2^-14", math.ldexp(1, 9) + math.ldexp(1, -14)),
    ("tie 1+2^-17", 1 + math.ldexp(1, -17)),
    ("tie -(1+2^-17)", -(1 + math.ldexp(1, -17))),
    ("tie 2049*2^-20", math.ldexp(2049, -20)),
    ("tie 33*2^-22", math.ldexp(33, -22)),
    ("tie 2^-25 (a power of two: narrower gap below)", math.ldexp(1, -25)),
]
FLOAT_EDGES = [
    ("min subnormal 2^-1074", 5e-324),
    ("second subnormal", math.ldexp(1, -1073)),
    ("3 * 2^-1074", math.ldexp(3, -1074)),
    ("max subnormal", math.ldexp(2**52 - 1, -1074)),
    ("min normal 2^-1022", math.ldexp(1, -1022)),
    ("next after min normal", math.nextafter(math.ldexp(1, -1022), 1.0)),
    ("max float", sys.float_info.max),
    ("-max float", -sys.float_info.max),
    ("negative zero", -0.0),
    ("1e16 - 2 (last fixed)", 9999999999999998.0),
    ("1e16 (first exponent form)", 1e16),
    ("1e16 + 2", 1.0000000000000002e16),
    ("1e-4 (last fixed)", 0.0001),
    ("below 1e-4", math.nextafter(0.0001, 0.0)),
    ("above 1e-4", math.nextafter(0.0001, 1.0)),
    ("1e-5 (exponent form)", 1e-05),
    ("below 1e-5", math.nextafter(1e-05, 0.0)),
    ("1e23 (nearest float below 10^23)", 1e23),
    ("2^53", 9007199254740992.0),
    ("2^53 + 2", 9007199254740994.0),
    ("2^63", 9223372036854775808.0),
    ("2^64", 18446744073709551616.0),
    ("integer 3", 3.0),
    ("integer -42", -42.0),
    ("integer 123456789", 123456789.0),
    ("integer 999999999999999", 999999999999999.0),
    ("integer 2^52 + 1", 4503599627370497.0),
] + [
    (f"2^{n}", math.ldexp(1, n))
    for n in (-1074, -1060, -1023, -1000, -900, -700, -500, -300, -100, -64, -53, -52, -17,
              -14, -10, -5, -1, 0, 1, 10, 49, 52, 54, 60, 100, 200, 300, 500, 700, 900,
              1000, 1022, 1023)
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
    # The metadata of the original parity failure: Rust gave 562949953421312.3.
    ("float_tie", {"": 562949953421312.25}, MODEL),
    ("float_ties", {name: v for name, v in FLOAT_TIES}, None),
    ("float_edges", {name: v for name, v in FLOAT_EDGES}, None),
]  # fmt: skip


def canonical_vectors() -> dict[str, Any]:
    cases = []
    for name, meta, version in CANONICAL_CASES:
        out = ref.canonical_json(meta, version)
        assert out == dumps_reference(meta, version), name
        cases.append(
            {"name": name, "metadata": meta, "model_version": version, "canonical": out.decode()}
        )
    named = [("", v) for v in FLOATS] + FLOAT_TIES + FLOAT_EDGES
    floats = [
        {"bits": struct.pack(">d", v).hex(), "value": v, "text": ref.float_repr(v), "name": name}
        for name, v in named
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
    ("float_tie", {"": 562949953421312.25, "t": 1.0000076293945312}),
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
