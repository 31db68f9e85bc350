"""Request limits and validation, as pure functions: each returns the reason a value is
refused (a sentence for the client) or ``None`` when it is acceptable.

Metadata (and query filters, which match metadata) are judged by engram-core itself
(:func:`engram.core.canonical_json`), so what the axon accepts is exactly what the core can
hash: "accepted" always means "will complete".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from engram import core
from streams.errors import short

__all__ = [
    "F32_MAX",
    "MAX_BATCH_ITEMS",
    "MAX_BODY_BYTES",
    "MAX_CID_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_BYTES",
    "MAX_TEXT_CHARS",
    "MAX_TIMEOUT_S",
    "TOP_K_MAX",
    "check_filter",
    "check_ingest",
    "check_json_depth",
    "check_metadata",
    "check_namespace",
    "check_request_id",
    "check_text",
    "check_timeout",
    "check_top_k",
    "check_vector",
]

MAX_TEXT_CHARS = 8192
MAX_METADATA_BYTES = 4096
TOP_K_MAX = 100
MAX_BATCH_ITEMS = 1000
#: one request body; a full batch of maximal items is far larger, batches must be split
MAX_BODY_BYTES = 4 * 1024 * 1024
#: containers nested in one request body: metadata may nest 64 deep (engram-core's limit,
#: the top-level object counting as 1) inside a batch item inside ``items`` inside the body
MAX_JSON_DEPTH = 72
#: longer strings are not CIDs of any kind (``v1::`` + 64 hex is 68)
MAX_CID_CHARS = 256
#: the longest an ``/IngestBatch`` may ask to wait for its memories to be stored
MAX_TIMEOUT_S = 60.0
#: the largest finite float32; a larger number is not a float32 value
F32_MAX = float(np.finfo(np.float32).max)

_NAMESPACE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# bracket → +1 / -1 (as int8 bytes); every other byte is deleted
_SIGNS = bytes(1 if i in b"[{" else 255 if i in b"]}" else 0 for i in range(256))
_NOT_BRACKETS = bytes(i for i in range(256) if i not in b"[]{}")
_SIGN_OF = np.frombuffer(_SIGNS, dtype=np.int8)
_QUOTE = ord('"')
_MANY_STRINGS = 20_000


def check_json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Refuse a JSON text nesting more than ``limit`` containers, before it is parsed
    (a parser would recurse once per level). Most bodies hold fewer brackets than the
    limit and cost two ``bytes.count``; others a few passes in C and one vectorised
    running sum over their brackets (brackets inside strings do not count)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return None
    # drop escaped backslashes, then escaped quotes (JSON escapes pair up left to right):
    # every quote left opens or closes a string; brackets between such pairs do not count
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in body else body
    if plain.count(b'"') < _MANY_STRINGS:  # the pieces between quotes, every other one
        outside = b"".join(plain.split(b'"')[::2])
        brackets = np.frombuffer(outside.translate(_SIGNS, _NOT_BRACKETS), dtype=np.int8)
    else:  # a mask instead of a million small pieces
        data = np.frombuffer(plain, dtype=np.uint8)
        brackets = _SIGN_OF[data]
        brackets[np.cumsum(data == _QUOTE, dtype=np.int32) & 1 == 1] = 0
    depth = int(brackets.cumsum(dtype=np.int32).max(initial=0))
    if depth > limit:
        return f"the JSON nests {depth} containers deep; the limit is {limit}"
    return None


def check_text(text: Any) -> str | None:
    if not isinstance(text, str):
        return "text must be a string"
    if not text.strip():
        return "text is empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
    return None


def check_metadata(metadata: Any, model_version: str | None = None) -> str | None:
    """What engram-core refuses (its ``InvalidMetadata`` reason), plus the axon's size cap
    on the canonical bytes that go into the CID."""
    if not isinstance(metadata, Mapping):
        return "metadata must be a JSON object"
    if "model_version" in metadata:
        return "metadata must not contain 'model_version' (it is added to the CID by the miner)"
    try:
        canonical = core.canonical_json(dict(metadata), model_version)
    except core.CoreError as exc:
        return short_reason(f"metadata refused: {exc}")
    if len(canonical) > MAX_METADATA_BYTES:
        return f"metadata is {len(canonical)} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
    return None


def check_namespace(namespace: Any) -> str | None:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        return "namespace must be 1-64 characters of A-Z a-z 0-9 _ . : -"
    return None


def check_request_id(request_id: Any) -> str | None:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        return "request_id must be 1-128 printable ASCII characters without spaces"
    return None


def check_ingest(
    text: Any, metadata: Any, namespace: Any, model_version: str | None = None
) -> str | None:
    return check_text(text) or check_metadata(metadata, model_version) or check_namespace(namespace)


def check_top_k(top_k: Any) -> str | None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= TOP_K_MAX:
        return f"top_k must be an integer from 1 to {TOP_K_MAX}"
    return None


def check_vector(vector: Any, dim: int) -> str | None:
    """A list of ``dim`` numbers that are finite float32 values (|x| ≤ 3.4e38)."""
    if not isinstance(vector, list):
        return "vector must be a list of numbers"
    if len(vector) != dim:
        return f"vector has {len(vector)} dimensions; this miner's model has {dim}"
    for x in vector:
        if not isinstance(x, int | float) or isinstance(x, bool):
            return "vector must be a list of numbers"
        if not -F32_MAX <= x <= F32_MAX:  # False for NaN too
            return f"vector holds {short(x, 40)}: not a finite float32 value"
    return None


def check_filter(flt: Any) -> str | None:
    """``None`` or an object of metadata key → value (equality) that metadata could hold."""
    if flt is None:
        return None
    if not isinstance(flt, Mapping):
        return "filter must be a JSON object of metadata key → value (equality)"
    try:
        core.canonical_json(dict(flt))
    except core.CoreError as exc:
        return short_reason(f"filter refused: {exc}")
    return None


def check_timeout(value: Any) -> str | None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_TIMEOUT_S
    ):
        return f"timeout_s must be a number of seconds from 0 to {MAX_TIMEOUT_S:g}"
    return None


def short_reason(reason: str, limit: int = 200) -> str:
    """``reason`` capped at about ``limit`` characters, keeping its start and its end (a
    reason may quote a large input in its middle: "integer 999…999 is outside …")."""
    if len(reason) <= limit:
        return reason
    tail = limit // 3
    return f"{reason[: limit - tail - 1]}…{reason[-tail:]}"
