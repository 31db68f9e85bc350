"""No input gives a 500: a table of malformed requests against every endpoint of a real
miner (real NATS, the real model), each answered with a JSON 4xx that says why, and the
miner healthy after each one.

One miner serves the whole table (starting one per case would take minutes); every case
checks ``/health`` afterwards and the last tests check that a good ingest and query still
work and that ``/metrics`` counted the refusals.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from engram.config import Settings
from engram.miner.limits import MAX_BODY_BYTES, MAX_JSON_DEPTH, check_json_depth
from engram.miner.node import MinerNode, cache_dir
from engram.natsd import EmbeddedNats

pytestmark = pytest.mark.asyncio(loop_scope="module")

DIM = 384
JSON = "application/json"
#: a challenge expiry comfortably inside the axon's 1 h window for the whole module
SOON = int(time.time()) + 1800
UNIT = [1.0] + [0.0] * (DIM - 1)
CID0 = "v1::" + "0" * 64
CHALLENGE: dict[str, Any] = {
    "cid": CID0,
    "nonce_hex": "00" * 32,
    "expires_at": SOON,
    "validator_hotkey_hex": "11" * 32,
}
DEEP = 100_000


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def deep_array(n: int = DEEP) -> bytes:
    return b"[" * n + b"]" * n


def deep_object(n: int = DEEP) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


def nested_meta(levels: int) -> dict[str, Any]:
    """``levels`` containers counting the metadata object itself."""
    value: Any = 1
    for _ in range(levels - 1):
        value = {"a": value}
    return {"m": value} if levels > 1 else {}


def splice(template: dict[str, Any], key: str, raw: bytes) -> bytes:
    """``template`` as JSON with ``key`` set to the raw JSON text ``raw`` (NaN, lone
    surrogate escapes, deep nesting: things ``json.dumps`` will not write)."""
    marker = "__RAW__"
    text = js({**template, key: marker})
    return text.replace(f'"{marker}"'.encode(), raw)


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: bytes | None = None
    status: int = 400
    reason: str = ""
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": JSON})
    no_content_type: bool = False


POSTS = ("/IngestSynapse", "/IngestBatch", "/QuerySynapse", "/ChallengeSynapse")
GOOD = {
    "/IngestSynapse": {"text": "a valid text"},
    "/IngestBatch": {"items": [{"text": "a valid text"}]},
    "/QuerySynapse": {"query_text": "a valid query"},
    "/ChallengeSynapse": CHALLENGE,
}


def body_cases() -> list[Case]:
    """Bodies that are not a JSON object in UTF-8, sent to every POST endpoint."""
    out: list[Case] = []
    for path in POSTS:
        good = js(GOOD[path])
        name = path.strip("/")
        table: list[tuple[str, bytes, int, str, dict[str, str], bool]] = [
            ("empty", b"", 400, "empty", {"Content-Type": JSON}, False),
            ("blank", b"  \n ", 400, "empty", {"Content-Type": JSON}, False),
            ("not-json", b"{not json", 400, "not valid JSON", {"Content-Type": JSON}, False),
            ("truncated", good[:-3], 400, "not valid JSON", {"Content-Type": JSON}, False),
            ("trailing", good + b" x", 400, "not valid JSON", {"Content-Type": JSON}, False),
            ("array", b"[]", 400, "JSON object", {"Content-Type": JSON}, False),
            ("array-of-body", b"[" + good + b"]", 400, "JSON object", {}, False),
            ("string", b'"hello"', 400, "JSON object", {}, False),
            ("number", b"42", 400, "JSON object", {}, False),
            ("null", b"null", 400, "JSON object", {}, False),
            ("deep-array", deep_array(), 400, "nests 100000", {}, False),
            ("deep-object", deep_object(), 400, "nests 100000", {}, False),
            ("deep-in-field", splice(GOOD[path], "extra", deep_array()), 400, "nests", {}, False),
            ("nan", splice(GOOD[path], "extra", b"NaN"), 400, "not valid JSON", {}, False),
            ("infinity", splice(GOOD[path], "extra", b"-Infinity"), 400, "not valid", {}, False),
            ("huge-float", splice(GOOD[path], "extra", b"1e999"), 400, "out of range", {}, False),
            ("surrogate", splice(GOOD[path], "x", b'"\\ud800"'), 400, "surrogate", {}, False),
            ("bad-utf8", splice(GOOD[path], "x", b'"\xff\xfe"'), 400, "UTF-8", {}, False),
            ("bom", b"\xef\xbb\xbf" + good, 400, "not valid", {}, False),
            ("text-plain", good, 415, "application/json", {"Content-Type": "text/plain"}, False),
            (
                "form",
                b"text=hello",
                415,
                "application/json",
                {"Content-Type": "application/x-www-form-urlencoded"},
                False,
            ),
            (
                "multipart",
                b"--b\r\n\r\nx\r\n--b--\r\n",
                415,
                "application/json",
                {"Content-Type": "multipart/form-data; boundary=b"},
                False,
            ),
            ("no-type", good, 415, "application/json", {}, True),
            ("octet", good, 415, "", {"Content-Type": "application/octet-stream"}, False),
            ("json-suffix", good, 415, "", {"Content-Type": "application/ld+json"}, False),
            (
                "charset-bogus",
                good,
                415,
                "charset",
                {"Content-Type": "application/json; charset=bogus"},
                False,
            ),
            (
                "charset-latin1",
                good,
                415,
                "charset",
                {"Content-Type": "application/json; charset=latin-1"},
                False,
            ),
            ("ctype-garbage", good, 415, "application/json", {"Content-Type": ";;;=="}, False),
            (
                "gzip-garbage",
                b"this is not gzip",
                400,
                "could not be read",
                {"Content-Type": JSON, "Content-Encoding": "gzip"},
                False,
            ),
            (
                "gzip-bomb",
                gzip.compress(b'{"x":"' + b"0" * (MAX_BODY_BYTES + 10) + b'"}'),
                413,
                "larger than",
                {"Content-Type": JSON, "Content-Encoding": "gzip"},
                False,
            ),
            (
                "too-large",
                b'{"x":"' + b"a" * (MAX_BODY_BYTES + 10) + b'"}',
                413,
                "larger than",
                {},
                False,
            ),
        ]
        for cid, body, status, reason, headers, no_type in table:
            out.append(
                Case(
                    f"{name}-{cid}",
                    path,
                    body,
                    status,
                    reason,
                    headers={} if no_type else headers or {"Content-Type": JSON},
                    no_content_type=no_type,
                )
            )
    return out


def ingest_cases() -> list[Case]:
    p = "/IngestSynapse"
    t = {"text": "hello there"}
    raw = {"raw_embedding": UNIT}
    rows: list[tuple[str, bytes, str]] = [
        ("text-int", js({"text": 5}), "text must be a string"),
        ("text-list", js({"text": ["a"]}), "text must be a string"),
        ("text-null", js({"text": None}), "text must be a string"),
        ("text-empty", js({"text": ""}), "text is empty"),
        ("text-blank", js({"text": " \n\t "}), "text is empty"),
        ("text-long", js({"text": "x" * 8193}), "the limit is 8192"),
        ("text-high-surrogate", b'{"text":"\\ud800 hi"}', "surrogate"),
        ("text-low-surrogate", b'{"text":"\\udc00"}', "surrogate"),
        ("text-reversed-pair", b'{"text":"\\ude00\\ud83d"}', "surrogate"),
        ("nothing", js({}), "give text or raw_embedding"),
        ("metadata-int-2**70", js({**t, "metadata": {"n": 2**70}}), "must lie in -2**63"),
        ("metadata-int--2**70", js({**t, "metadata": {"n": -(2**70)}}), "must lie in -2**63"),
        ("metadata-int-2**64", js({**t, "metadata": {"n": 2**64}}), "must lie in -2**63"),
        (
            "metadata-huge-int",
            splice({**t}, "metadata", b'{"n":' + b"9" * 500 + b"}"),
            "must lie in -2**63",
        ),
        ("metadata-deep-1e5", splice(t, "metadata", deep_object()), "nests"),
        ("metadata-deep-65", js({**t, "metadata": nested_meta(65)}), "metadata refused"),
        ("metadata-key-surrogate", splice(t, "metadata", b'{"\\ud800":"v"}'), "surrogate"),
        ("metadata-value-surrogate", splice(t, "metadata", b'{"k":"\\udfff"}'), "surrogate"),
        ("metadata-list", js({**t, "metadata": ["a"]}), "JSON object"),
        ("metadata-string", js({**t, "metadata": "k=v"}), "JSON object"),
        ("metadata-number", js({**t, "metadata": 3}), "JSON object"),
        ("metadata-false", js({**t, "metadata": False}), "JSON object"),
        ("metadata-empty-list", js({**t, "metadata": []}), "JSON object"),
        ("metadata-model-version", js({**t, "metadata": {"model_version": "x"}}), "model_version"),
        ("metadata-large", js({**t, "metadata": {"k": "v" * 5000}}), "the limit is 4096"),
        ("metadata-nan", splice(t, "metadata", b'{"f":NaN}'), "not valid JSON"),
        ("metadata-1e999", splice(t, "metadata", b'{"f":1e999}'), "out of range"),
        ("namespace-newline", js({**t, "namespace": "public\n"}), "namespace"),
        ("namespace-empty", js({**t, "namespace": ""}), "namespace"),
        ("namespace-int", js({**t, "namespace": 7}), "namespace"),
        ("namespace-list", js({**t, "namespace": ["public"]}), "namespace"),
        ("namespace-long", js({**t, "namespace": "n" * 65}), "namespace"),
        ("namespace-space", js({**t, "namespace": "my space"}), "namespace"),
        ("namespace-nul", js({**t, "namespace": "pub\u0000"}), "namespace"),
        ("namespace-unicode", js({**t, "namespace": "püblic"}), "namespace"),
        ("request-id-int", js({**t, "request_id": 12}), "request_id"),
        ("request-id-empty", js({**t, "request_id": ""}), "request_id"),
        ("request-id-long", js({**t, "request_id": "r" * 129}), "request_id"),
        ("request-id-crlf", js({**t, "request_id": "a\r\nNats-Msg-Id: b"}), "request_id"),
        ("request-id-unicode", js({**t, "request_id": "idé"}), "request_id"),
        ("request-id-bool", js({**t, "request_id": True}), "request_id"),
        ("model-version-other", js({**t, "model_version": "other"}), "not served"),
        ("model-version-int", js({**t, "model_version": 1}), "not served"),
        ("model-version-bool", js({**t, "model_version": True}), "not served"),
        ("model-version-identity", js({**t, "model_version": "all-MiniLM-L6-v2-int8"}), "'v1'"),
        ("raw-short", js({"raw_embedding": [0.1] * 10}), "10 dimensions"),
        ("raw-empty", js({"raw_embedding": []}), "0 dimensions"),
        ("raw-not-unit", js({"raw_embedding": [1.0] * DIM}), "unit-normalised"),
        ("raw-zero", js({"raw_embedding": [0.0] * DIM}), "unit-normalised"),
        ("raw-string", js({"raw_embedding": "1,0,0"}), "list of numbers"),
        ("raw-dict", js({"raw_embedding": {"0": 1.0}}), "list of numbers"),
        ("raw-strings", js({"raw_embedding": ["1"] * DIM}), "list of numbers"),
        ("raw-bools", js({"raw_embedding": [True] + [False] * (DIM - 1)}), "list of numbers"),
        ("raw-nested", js({"raw_embedding": [[1.0]] * DIM}), "list of numbers"),
        ("raw-1e39", js({"raw_embedding": [1e39] + [0.0] * (DIM - 1)}), "float32"),
        ("raw-2**70", js({"raw_embedding": [2**70] + [0] * (DIM - 1)}), "unit-normalised"),
        ("raw-2**130", js({"raw_embedding": [2**130] + [0] * (DIM - 1)}), "float32"),
        ("raw-nan", splice(raw, "raw_embedding", b"[NaN" + b",0" * (DIM - 1) + b"]"), "not valid"),
        ("raw-bad-metadata", js({**raw, "metadata": {"n": 2**70}}), "must lie in -2**63"),
        ("raw-bad-namespace", js({**raw, "namespace": "x\n"}), "namespace"),
    ]
    return [Case(f"ingest-{n}", p, b, 400, r) for n, b, r in rows]


def batch_cases() -> list[Case]:
    p = "/IngestBatch"
    ok = {"items": [{"text": "fine"}]}
    rows: list[tuple[str, bytes, int, str]] = [
        ("items-missing", js({}), 400, "items must be"),
        ("items-object", js({"items": {"text": "x"}}), 400, "items must be"),
        ("items-string", js({"items": "x"}), 400, "items must be"),
        ("items-empty", js({"items": []}), 400, "items must be"),
        ("items-null", js({"items": None}), 400, "items must be"),
        ("item-int", js({"items": [1]}), 400, "invalid item"),
        ("item-null", js({"items": [None]}), 400, "invalid item"),
        ("item-list", js({"items": [["text", "x"]]}), 400, "invalid item"),
        ("too-many", js({"items": [{"text": "a"}] * 1001}), 413, "the limit is 1000"),
        ("one-bad", js({"items": [{"text": "ok"}, {"text": "y" * 9000}]}), 400, "invalid item"),
        ("item-metadata-2**70", js({"items": [{"text": "a", "metadata": {"n": 2**70}}]}), 400, ""),
        ("item-surrogate", b'{"items":[{"text":"\\ud800"}]}', 400, "surrogate"),
        (
            "item-deep-metadata",
            splice({"items": "x"}, "items", b'[{"text":"a","metadata":' + deep_object() + b"}]"),
            400,
            "nests",
        ),
        (
            "item-namespace-newline",
            js({"items": [{"text": "a", "namespace": "public\n"}]}),
            400,
            "",
        ),
        ("timeout-string", js({**ok, "timeout_s": "5"}), 400, "timeout_s"),
        ("timeout-null", js({**ok, "timeout_s": None}), 400, "timeout_s"),
        ("timeout-negative", js({**ok, "timeout_s": -1}), 400, "timeout_s"),
        ("timeout-huge", js({**ok, "timeout_s": 1e300}), 400, "timeout_s"),
        ("timeout-bool", js({**ok, "timeout_s": True}), 400, "timeout_s"),
        ("timeout-list", js({**ok, "timeout_s": [5]}), 400, "timeout_s"),
        ("timeout-nan", splice(ok, "timeout_s", b"NaN"), 400, "not valid JSON"),
        ("timeout-infinity", splice(ok, "timeout_s", b"Infinity"), 400, "not valid JSON"),
        ("wait-string", js({**ok, "wait": "yes"}), 400, "wait"),
        ("wait-int", js({**ok, "wait": 1}), 400, "wait"),
        ("wait-null", js({**ok, "wait": None}), 400, "wait"),
    ]
    return [Case(f"batch-{n}", p, b, s, r) for n, b, s, r in rows]


def query_cases() -> list[Case]:
    p = "/QuerySynapse"
    q = {"query_text": "hello"}
    v = {"query_vector": UNIT}
    rows: list[tuple[str, bytes, str]] = [
        ("nothing", js({"top_k": 5}), "query_text or query_vector"),
        ("text-int", js({"query_text": 3}), "non-empty string"),
        ("text-empty", js({"query_text": ""}), "non-empty string"),
        ("text-blank", js({"query_text": "   "}), "non-empty string"),
        ("text-list", js({"query_text": ["a"]}), "non-empty string"),
        ("text-long", js({"query_text": "q" * 8193}), "the limit is 8192"),
        ("text-surrogate", b'{"query_text":"\\ud800"}', "surrogate"),
        ("text-low-surrogate", b'{"query_text":"ab\\udc00cd"}', "surrogate"),
        ("vector-1e39", js({"query_vector": [1e39] + [0.0] * (DIM - 1)}), "float32"),
        ("vector--1e39", js({"query_vector": [0.0] * (DIM - 1) + [-1e39]}), "float32"),
        (
            "vector-huge-int",
            splice(v, "query_vector", b"[" + b"9" * 400 + b",0" * (DIM - 1) + b"]"),
            "float32",
        ),
        ("vector-nan", splice(v, "query_vector", b"[NaN" + b",0" * (DIM - 1) + b"]"), "not valid"),
        ("vector-short", js({"query_vector": [0.5] * 3}), "3 dimensions"),
        ("vector-string", js({"query_vector": "0.5"}), "list of numbers"),
        ("vector-dict", js({"query_vector": {"a": 1}}), "list of numbers"),
        ("vector-bools", js({"query_vector": [True] * DIM}), "list of numbers"),
        ("vector-nulls", js({"query_vector": [None] * DIM}), "list of numbers"),
        ("vector-deep", splice(v, "query_vector", deep_array()), "nests"),
        ("top-k-zero", js({**q, "top_k": 0}), "top_k must be"),
        ("top-k-101", js({**q, "top_k": 101}), "top_k must be"),
        ("top-k-negative", js({**q, "top_k": -1}), "top_k must be"),
        ("top-k-string", js({**q, "top_k": "5"}), "top_k must be"),
        ("top-k-float", js({**q, "top_k": 5.5}), "top_k must be"),
        ("top-k-bool", js({**q, "top_k": True}), "top_k must be"),
        ("top-k-2**70", js({**q, "top_k": 2**70}), "top_k must be"),
        ("filter-list", js({**q, "filter": [1]}), "filter"),
        ("filter-string", js({**q, "filter": "a=b"}), "filter"),
        ("filter-int", js({**q, "filter": 1}), "filter"),
        ("filter-deep-1e5", splice(q, "filter", deep_object()), "nests"),
        ("filter-deep-70", js({**q, "filter": nested_meta(70)}), "filter refused"),
        ("filter-2**70", js({**q, "filter": {"n": 2**70}}), "must lie in -2**63"),
        ("filter-key-surrogate", splice(q, "filter", b'{"\\udbff":1}'), "surrogate"),
        ("namespace-newline", js({**q, "namespace": "public\n"}), "namespace"),
        ("namespace-int", js({**q, "namespace": 5}), "namespace"),
        ("namespace-empty", js({**q, "namespace": ""}), "namespace"),
    ]
    return [Case(f"query-{n}", p, b, 400, r) for n, b, r in rows]


def challenge_cases() -> list[Case]:
    p = "/ChallengeSynapse"
    c = CHALLENGE
    big_cid = "v1::" + "f" * (3 * 1024 * 1024)
    rows: list[tuple[str, bytes, int, str]] = [
        ("cid-missing", js({k: v for k, v in c.items() if k != "cid"}), 400, "cid is required"),
        ("cid-int", js({**c, "cid": 5}), 400, "cid is required"),
        ("cid-empty", js({**c, "cid": ""}), 400, "cid is required"),
        ("cid-3mb", js({**c, "cid": big_cid}), 400, "no CID is longer"),
        ("cid-300", js({**c, "cid": "v1::" + "a" * 300}), 400, "no CID is longer"),
        ("cid-unknown", js(c), 404, "unknown CID"),
        ("nonce-missing", js({k: v for k, v in c.items() if k != "nonce_hex"}), 400, "nonce_hex"),
        ("nonce-short", js({**c, "nonce_hex": "00" * 16}), 400, "nonce_hex"),
        ("nonce-not-hex", js({**c, "nonce_hex": "zz" * 32}), 400, "nonce_hex"),
        ("nonce-int", js({**c, "nonce_hex": 0}), 400, "nonce_hex"),
        ("version-true", js({**c, "version": True}), 400, "integer 1 or 2"),
        ("version-string", js({**c, "version": "2"}), 400, "integer 1 or 2"),
        ("version-3", js({**c, "version": 3}), 400, "integer 1 or 2"),
        ("version-float", js({**c, "version": 2.0}), 400, "integer 1 or 2"),
        ("proof-version-true", js({**c, "proof_version": True}), 400, "integer 1 or 2"),
        ("version-1-disabled", js({**c, "version": 1}), 400, "disabled"),
        (
            "seed-shape-v1-disabled",
            js({k: v for k, v in c.items() if k != "validator_hotkey_hex"}),
            400,
            "disabled",
        ),
        (
            "hotkey-missing",
            js({k: v for k, v in c.items() if k != "validator_hotkey_hex"} | {"version": 2}),
            400,
            "validator_hotkey_hex",
        ),
        ("hotkey-short", js({**c, "validator_hotkey_hex": "11" * 8}), 400, "validator_hotkey_hex"),
        (
            "expires-missing",
            js({k: v for k, v in c.items() if k != "expires_at"}),
            400,
            "expires_at",
        ),
        ("expires-nan", splice(c, "expires_at", b"NaN"), 400, "not valid JSON"),
        ("expires-infinity", splice(c, "expires_at", b"Infinity"), 400, "not valid JSON"),
        ("expires-minus-infinity", splice(c, "expires_at", b"-Infinity"), 400, "not valid JSON"),
        ("expires-1e999", splice(c, "expires_at", b"1e999"), 400, "out of range"),
        ("expires-1e300", js({**c, "expires_at": 1e300}), 400, "ahead"),
        ("expires-huge-int", splice(c, "expires_at", b"9" * 400), 400, "ahead"),
        ("expires-2h", js({**c, "expires_at": int(time.time()) + 7200}), 400, "ahead"),
        ("expires-string", js({**c, "expires_at": "2000000000"}), 400, "expires_at"),
        ("expires-null", js({**c, "expires_at": None}), 400, "expires_at"),
        ("expires-bool", js({**c, "expires_at": True}), 400, "expires_at"),
        ("expired", js({**c, "expires_at": 1}), 410, "expired"),
        ("expired-negative", js({**c, "expires_at": -(2**70)}), 410, "expired"),
    ]
    return [Case(f"challenge-{n}", p, b, s, r) for n, b, s, r in rows]


def get_cases() -> list[Case]:
    none: dict[str, str] = {}
    return [
        Case("retrieve-unknown", "/retrieve/" + CID0, None, 404, "unknown CID", "GET", none),
        Case("retrieve-junk", "/retrieve/nope", None, 404, "unknown CID", "GET", none),
        Case("retrieve-long", "/retrieve/" + "c" * 6000, None, 400, "no CID", "GET", none),
        Case(
            "retrieve-ns-newline",
            f"/retrieve/{CID0}?namespace=a%0A",
            None,
            400,
            "namespace",
            "GET",
            none,
        ),
        Case(
            "retrieve-ns-empty", f"/retrieve/{CID0}?namespace=", None, 400, "namespace", "GET", none
        ),
        Case(
            "retrieve-ns-bad-utf8",
            f"/retrieve/{CID0}?namespace=%ff",
            None,
            400,
            "namespace",
            "GET",
            none,
        ),
        Case("retrieve-empty", "/retrieve/", None, 404, "", "GET", none),
        Case("retrieve-post", "/retrieve/" + CID0, b"{}", 405, "", "POST"),
        Case("retrieve-delete", "/retrieve/" + CID0, None, 405, "", "DELETE", none),
        Case("health-post", "/health", b"{}", 405, "", "POST"),
        Case("health-put", "/health", b"{}", 405, "", "PUT"),
        Case("health-delete", "/health", None, 405, "", "DELETE", none),
        Case("health-subpath", "/health/deep", None, 404, "", "GET", none),
        Case("stats-post", "/stats", b"{}", 405, "", "POST"),
        Case("stats-patch", "/stats", b"{}", 405, "", "PATCH"),
        Case("stats-subpath", "/stats/x", None, 404, "", "GET", none),
        Case("metrics-post", "/metrics", b"x", 405, "", "POST", {"Content-Type": "text/plain"}),
        Case("metrics-delete", "/metrics", None, 405, "", "DELETE", none),
        Case("metrics-subpath", "/metrics/x", None, 404, "", "GET", none),
        Case("ingest-get", "/IngestSynapse", None, 405, "", "GET", none),
        Case("batch-put", "/IngestBatch", b"{}", 405, "", "PUT"),
        Case("query-get", "/QuerySynapse", None, 405, "", "GET", none),
        Case("challenge-get", "/ChallengeSynapse", None, 405, "", "GET", none),
        Case("unknown-route", "/nope", None, 404, "", "GET", none),
        Case("trailing-slash", "/IngestSynapse/", b"{}", 404, ""),
        Case("lowercase-route", "/ingestsynapse", b"{}", 404, ""),
    ]


CASES = body_cases() + ingest_cases() + batch_cases() + query_cases() + challenge_cases()
CASES += get_cases()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge_node(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> AsyncIterator[MinerNode]:
    tmp = tmp_path_factory.mktemp("edge")
    server = EmbeddedNats(data_dir=tmp / "nats", sync="always").start(reuse=False)
    settings = Settings(
        data_dir=str(tmp / "data"),
        nats_url=server.url,
        node_id="edge",
        embed_batch=32,
        embed_batch_wait_s=0.02,
        axon_auth="open",  # malformed requests, unsigned, on loopback
    )
    cache = cache_dir(settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(model_cache, target_is_directory=True)
    node = MinerNode(settings, port=0, ingest_wait_s=15.0)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(edge_node: MinerNode) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=edge_node.url) as session:
        yield session


async def send(http: aiohttp.ClientSession, case: Case) -> tuple[int, str, bytes]:
    async with http.request(
        case.method,
        case.path,
        data=case.body,
        headers=case.headers,
        skip_auto_headers=["Content-Type"] if case.no_content_type else (),
    ) as r:
        return r.status, r.content_type, await r.read()


async def test_the_table_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.path.split("?")[0].rsplit("/", 1)[0] or c.path for c in CASES} >= {
        "/IngestSynapse",
        "/IngestBatch",
        "/QuerySynapse",
        "/ChallengeSynapse",
        "/retrieve",
        "/health",
        "/stats",
        "/metrics",
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_request_gets_a_json_4xx_with_a_reason(
    client: aiohttp.ClientSession, case: Case
) -> None:
    status, ctype, raw = await send(client, case)
    assert status == case.status, raw[:500]
    assert ctype == JSON, raw[:200]
    body = json.loads(raw)
    assert isinstance(body["error"], str) and body["error"], body
    assert case.reason in body["error"], body
    assert len(raw) < 1024, f"the refusal echoes the input ({len(raw)} bytes)"
    async with client.get("/health") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_after_the_table_the_miner_still_ingests_and_answers(
    client: aiohttp.ClientSession, edge_node: MinerNode
) -> None:
    for case in CASES[:: max(1, len(CASES) // 20)]:  # a sample again, in this test's order
        try:
            status, _, _ = await send(client, case)
        except Exception as exc:
            raise AssertionError(case.id) from exc
        assert status == case.status
    async with client.post(
        "/IngestSynapse", json={"text": "volcanoes erupt molten rock", "metadata": {"n": 1}}
    ) as r:
        stored = await r.json()
        assert r.status == 200 and stored["status"] == "stored", stored
    async with client.post("/QuerySynapse", json={"query_text": "lava", "top_k": 1}) as r:
        res = await r.json()
    assert r.status == 200 and res["results"][0]["cid"] == stored["cid"]
    # no refused input reached the store or made a namespace
    async with client.get("/stats") as r:
        stats = await r.json()
    assert stats["memories"] == 1 and list(stats["namespaces"]) == ["public"], stats


async def test_refusals_are_counted_by_status_in_metrics(client: aiohttp.ClientSession) -> None:
    async def counts() -> dict[str, float]:
        async with client.get("/metrics") as r:
            text = await r.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("engram_axon_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                out[labels] = float(value)
        return out

    before = await counts()
    picks = {
        400: next(c for c in CASES if c.status == 400 and c.path == "/QuerySynapse"),
        404: next(c for c in CASES if c.id == "challenge-cid-unknown"),
        405: next(c for c in CASES if c.id == "health-post"),
        410: next(c for c in CASES if c.id == "challenge-expired"),
        413: next(c for c in CASES if c.id == "IngestSynapse-too-large"),
        415: next(c for c in CASES if c.id == "IngestBatch-charset-bogus"),
    }
    for case in picks.values():
        await send(client, case)
    after = await counts()
    for status, case in picks.items():
        endpoint = "unmatched" if status == 405 else case.path  # no route for the method
        key = f'engram_axon_requests_total{{endpoint="{endpoint}",status="{status}"}}'
        assert after.get(key, 0) - before.get(key, 0) == 1, (key, after)


def json_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((json_depth(v) for v in value), default=0)
    return 0


def random_json(rng: random.Random, depth: int) -> Any:
    """A spine of up to ``depth`` nested containers with leaf siblings whose strings are
    full of brackets, quotes and backslashes."""
    tricky = ['"', "\\\\", "[", "]", "{", "}", '\\"', "a", "é", "\\u005b"]

    def text() -> str:
        return "".join(rng.choice(tricky) for _ in range(rng.randrange(8)))

    if depth == 0 or rng.random() < 0.03:
        return text()
    items = [text() for _ in range(rng.randrange(3))]
    items.insert(rng.randrange(len(items) + 1), random_json(rng, depth - 1))
    if rng.random() < 0.5:
        return items
    return {text() + str(i): v for i, v in enumerate(items)}


async def test_the_depth_check_agrees_with_the_parsed_depth() -> None:
    rng = random.Random(20261122)
    for _ in range(400):
        doc = random_json(rng, rng.randrange(1, 90))
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        limit = rng.randrange(1, 90)
        refused = check_json_depth(text, limit) is not None
        assert refused == (json_depth(doc) > limit), (json_depth(doc), limit, text[:200])


async def test_the_depth_check_limits_and_strings() -> None:
    at_limit = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert check_json_depth(at_limit) is None
    assert "nests 73" in (check_json_depth(b"[" + at_limit + b"]") or "")
    in_string = json.dumps({"text": "[" * 10_000 + '\\"{{{' * 100}).encode()
    assert check_json_depth(in_string) is None
    escaped_then_deep = b'{"a":"\\\\","b":' + deep_array(200) + b"}"
    assert "nests 201" in (check_json_depth(escaped_then_deep) or "")
    # bodies with very many strings take another path: same answers
    many = json.dumps([["[", '\\"{'] * 25_000]).encode()
    assert check_json_depth(many) is None
    assert "nests 101" in (check_json_depth(many[:-1] + b"," + deep_array(100) + b"]") or "")
