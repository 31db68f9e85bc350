"""``engram bench core``: engram-core (Rust) against the pure-Python fallback and hashlib.

Figures (per second, best of a few runs):
- ``rust_cids_per_s`` / ``python_cids_per_s``: ``compute_cids`` over the rows with small
  per-row metadata (the Python side is timed on a subset, default 10,000 rows, and reported
  as a rate, so 100k rows finish in seconds);
- ``sha256_rows_per_s``: ``hashlib.sha256(row).hexdigest()`` over the same float32 rows, one
  call each: the practical limit for hashing from Python;
- ``rust_proofs_per_s`` / ``python_proofs_per_s``: batch v2 proofs (one nonce per row);
- ``rust_hashes_per_s``: batch embedding hashes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engram import core

PYTHON_SUBSET = 10_000
MODEL = "bench-model"
HOTKEY = "ab" * 32


def _best_rate(n: int, fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best if best > 0 else float("inf")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def run(rows: int = 100_000, dim: int = 384, python_rows: int = PYTHON_SUBSET) -> dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((rows, dim), dtype=np.float32)
    metas = [{"text": f"document number {i}", "source": "bench", "i": i} for i in range(rows)]
    nonces = [core.backends()["python"].new_nonce() for _ in range(rows)]
    py_n = max(1, min(rows, python_rows))
    backends = core.backends()
    py = backends["python"]
    rust = backends.get("rust")

    row_bytes = [matrix[i].tobytes() for i in range(rows)]
    sha = hashlib.sha256

    def hash_rows() -> None:
        for r in row_bytes:
            sha(r).hexdigest()

    out: dict[str, Any] = {
        "backend": core.BACKEND,
        "rows": rows,
        "dim": dim,
        "python_rows": py_n,
        "threads": rust.THREADS if rust is not None else 1,
        "sha256_rows_per_s": round(_best_rate(rows, hash_rows, 2)),
        "python_cids_per_s": round(
            _best_rate(py_n, lambda: py.compute_cids(matrix[:py_n], metas[:py_n], MODEL), 2)
        ),
        "python_proofs_per_s": round(
            _best_rate(py_n, lambda: py.proofs_v2(HOTKEY, nonces[:py_n], matrix[:py_n]), 2)
        ),
        "rust_cids_per_s": None,
        "rust_proofs_per_s": None,
        "rust_hashes_per_s": None,
    }
    if rust is not None:
        got = rust.compute_cids(matrix[:py_n], metas[:py_n], MODEL)
        if got != py.compute_cids(matrix[:py_n], metas[:py_n], MODEL):
            raise AssertionError("Rust and Python CIDs differ")
        out["rust_cids_per_s"] = round(
            _best_rate(rows, lambda: rust.compute_cids(matrix, metas, MODEL), 3)
        )
        out["rust_proofs_per_s"] = round(
            _best_rate(rows, lambda: rust.proofs_v2(HOTKEY, nonces, matrix), 3)
        )
        out["rust_hashes_per_s"] = round(_best_rate(rows, lambda: rust.embedding_hashes(matrix), 3))
    out["rust_vs_python"] = _ratio(out["rust_cids_per_s"], out["python_cids_per_s"])
    out["rust_vs_sha256"] = _ratio(out["rust_cids_per_s"], out["sha256_rows_per_s"])
    out["rust_proofs_vs_python"] = _ratio(out["rust_proofs_per_s"], out["python_proofs_per_s"])
    return out


if __name__ == "__main__":  # pragma: no cover - manual use; the CLI wires `engram bench core`
    import json
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)))
