"""Request limits and validation, as pure functions: each returns the reason a value is
refused (a sentence for the client) or ``None`` when it is acceptable."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_BATCH_ITEMS",
    "MAX_BODY_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_TEXT_CHARS",
    "TOP_K_MAX",
    "check_filter",
    "check_ingest",
    "check_metadata",
    "check_namespace",
    "check_text",
    "check_top_k",
    "check_vector",
]

MAX_TEXT_CHARS = 8192
MAX_METADATA_BYTES = 4096
TOP_K_MAX = 100
MAX_BATCH_ITEMS = 1000
#: one request body; a full batch of maximal items is far larger, batches must be split
MAX_BODY_BYTES = 4 * 1024 * 1024
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _finite(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return value is None or isinstance(value, str | int | bool)


def check_text(text: Any) -> str | None:
    if not isinstance(text, str):
        return "text must be a string"
    if not text.strip():
        return "text is empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
    return None


def check_metadata(metadata: Any) -> str | None:
    if not isinstance(metadata, Mapping):
        return "metadata must be a JSON object"
    if not _finite(dict(metadata)):
        return "metadata must hold only JSON values (finite numbers, string keys)"
    size = len(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        return f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
    if "model_version" in metadata:
        return "metadata must not contain 'model_version' (it is added to the CID by the miner)"
    return None


def check_namespace(namespace: Any) -> str | None:
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        return "namespace must be 1-64 characters of A-Z a-z 0-9 _ . : -"
    return None


def check_ingest(text: Any, metadata: Any, namespace: Any) -> str | None:
    return check_text(text) or check_metadata(metadata) or check_namespace(namespace)


def check_top_k(top_k: Any) -> str | None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= TOP_K_MAX:
        return f"top_k must be an integer from 1 to {TOP_K_MAX}"
    return None


def check_vector(vector: Any, dim: int) -> str | None:
    if not isinstance(vector, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in vector
    ):
        return "vector must be a list of numbers"
    if len(vector) != dim:
        return f"vector has {len(vector)} dimensions; this miner's model has {dim}"
    if not all(math.isfinite(x) for x in vector):
        return "vector has NaN or infinite values"
    return None


def check_filter(flt: Any) -> str | None:
    if flt is None:
        return None
    if not isinstance(flt, Mapping) or not _finite(dict(flt)):
        return "filter must be a JSON object of metadata key → value (equality)"
    return None
