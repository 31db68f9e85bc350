"""``engram bench floats``: engram-core's float text against Python's ``repr``, exhaustively
where it matters.

Canonical JSON writes floats as Python ``repr(float)`` does; two miners on different backends
must give the same memory the same CID. This sweep compares the Rust formatter
(``engram_core.float_reprs``) with ``float.__repr__`` over

- ``patterns``: seeded random 64-bit patterns (the finite ones), which cover every binade
  (exponent) evenly, subnormals included;
- ``tie_cases``: every family of exact ties constructed below, where the float lies exactly
  halfway between the two shortest digit strings that read back as it (Rust's own ``{}``
  rounds such a tie up, Python keeps the even digit);
- ``edge_cases``: every power of two (2^-1074 … 2^1023), every power of ten that is a float,
  and both neighbours of each, plus the notation boundaries (1e16, 1e-4) and their
  neighbours.

- ``ordinary``: a million values of everyday magnitude (normal samples scaled by 10^-6 ..
  10^9), the kind metadata holds; engram-core formats these with 128-bit integers, the
  random patterns (mostly huge or tiny exponents) with a bignum.

Figures: ``mismatches`` (must be 0), ``first_mismatch`` (the bits, as hex, or null),
``rust_per_s`` and ``python_per_s`` (values formatted per second, over the patterns, ties
and edges), ``ordinary_rust_per_s`` and ``ordinary_python_per_s`` (the everyday values).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import Any

import numpy as np

CHUNK = 250_000
#: Everyday values timed on their own (see ``ordinary`` above).
ORDINARY = 1_000_000
#: Most members drawn from one family of ties (a family: one binade, one digit position).
TIES_PER_FAMILY = 2048


def random_patterns(count: int, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float64]]:
    """``count`` finite float64 values from uniformly random 64-bit patterns (seeded)."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    have = 0
    while have < count:
        bits = rng.integers(0, 2**64, size=count - have + 64, dtype=np.uint64)
        values = bits.view(np.float64)
        values = values[np.isfinite(values)][: count - have]
        parts.append(values)
        have += len(values)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def is_tie(value: float, frac_digits: int, twice_scaled: int) -> bool:
    """Whether Python's ``repr(value)`` has ``frac_digits`` decimals and lies exactly half a
    unit of its last digit from ``value`` (``twice_scaled`` = ``2 * value * 10**frac_digits``,
    an odd integer)."""
    x = Decimal(repr(value)).scaleb(frac_digits)
    return bool(x == x.to_integral_value() and abs(2 * int(x) - twice_scaled) == 1)


def tie_families() -> Iterator[tuple[int, int]]:
    """Every (binade ``E``, decimals ``j``) where a float in ``[2^E, 2^(E+1))`` can lie
    exactly between two ``j``-decimal strings that both read back as it.

    Such a float is ``(2D+1) / (2 * 10^j)``; being a float, it is ``m / 2^(j+1)`` with ``m``
    odd (and ``5^j`` dividing ``2D+1``), so ``j+1 <= 52-E`` (on the float grid) and
    ``m >= 1``. Both strings read back as it only if the gap between floats, ``2^(E-52)``,
    is at least ``10^-j``; and they are the shortest only if ``(j-1)``-decimal strings are
    spaced wider than that gap (else one lies in the interval). So ``j`` is the least with
    ``10^-j <= 2^(E-52)``: one family per binade, about 2^-27 .. 2^51 (whole numbers never
    tie). Members whose nearest shorter string still reads back are filtered out by
    :func:`is_tie`.
    """
    for big_e in range(-1022, 1024):
        e = big_e - 52
        if e >= 0:
            break
        j = 0
        while 10**j < 2 ** (-e):
            j += 1
        if j >= 1 and j + 1 <= -e and big_e + j + 1 >= 0:
            yield big_e, j


def tie_cases(per_family: int = TIES_PER_FAMILY, seed: int = 0) -> list[float]:
    """Exact ties, positive and negative: every member of small families, a seeded sample
    of ``per_family`` members of larger ones."""
    rng = random.Random(seed)
    out: list[float] = []
    for big_e, j in tie_families():
        lo, hi = 2 ** (big_e + j + 1), 2 ** (big_e + j + 2)  # m in [lo, hi), m odd
        odd_count = (hi - lo) // 2 if lo > 1 else 1
        if odd_count <= per_family:
            ms: Iterable[int] = range(lo + 1 if lo > 1 else 1, hi, 2)
        else:
            ms = [lo + 1 + 2 * rng.randrange(odd_count) for _ in range(per_family)]
        five_j = 5**j
        for m in ms:
            v = math.ldexp(m, -(j + 1))
            if is_tie(v, j, m * five_j):
                out.append(v)
                out.append(-v)
    return out


def ordinary_values(count: int, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Everyday magnitudes: normal samples times 10^-6 .. 10^9 (seeded)."""
    rng = np.random.default_rng(seed + 1)
    return rng.standard_normal(count) * 10.0 ** rng.integers(-6, 10, size=count)


def edge_cases() -> list[float]:
    """Powers of two and of ten, their neighbours, the notation boundaries, extremes."""
    values: set[float] = set()
    for n in range(-1074, 1024):
        values.add(math.ldexp(1.0, n))
    for n in range(-323, 309):
        values.add(float(f"1e{n}"))
    for v in list(values):
        values.add(math.nextafter(v, 0.0))
        values.add(math.nextafter(v, math.inf))
    values.update([5e-324, 2.225073858507201e-308, 2.2250738585072014e-308, 1.7976931348623157e308])
    values.update([9999999999999998.0, 1e16, 1.0000000000000002e16, 0.0001, 0.00001])
    values.update([0.0, -0.0])
    values.discard(math.inf)
    return sorted(values) + sorted(-v for v in values)


def _compare(rust: Callable[[Any], list[str]], values: np.ndarray[Any, Any]) -> dict[str, Any]:
    mismatches = 0
    first: str | None = None
    rust_s = python_s = 0.0
    for start in range(0, len(values), CHUNK):
        chunk = values[start : start + CHUNK]
        t0 = time.perf_counter()
        got = rust(chunk)
        t1 = time.perf_counter()
        want = list(map(float.__repr__, chunk.tolist()))
        t2 = time.perf_counter()
        rust_s += t1 - t0
        python_s += t2 - t1
        if got != want:
            bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
            mismatches += len(bad)
            if first is None:
                first = f"0x{int(chunk[bad[0] : bad[0] + 1].view(np.uint64)[0]):016x}"
    return {"mismatches": mismatches, "first": first, "rust_s": rust_s, "python_s": python_s}


def run(
    count: int = 5_000_000,
    seed: int = 0,
    per_family: int = TIES_PER_FAMILY,
    ordinary: int = ORDINARY,
) -> dict[str, Any]:
    """Run the sweep; the result's ``mismatches`` must be 0."""
    from engram.core import backends

    rust = backends().get("rust")
    if rust is None:
        raise RuntimeError("engram_core (Rust) is not installed; run `pip install ./engram-core`")
    ties = np.array(tie_cases(per_family, seed), dtype=np.float64)
    edges = np.array(edge_cases(), dtype=np.float64)
    randoms = random_patterns(count, seed)
    total: dict[str, Any] = {"mismatches": 0, "first": None, "rust_s": 0.0, "python_s": 0.0}
    for values in (ties, edges, randoms):
        part = _compare(rust.float_reprs, values)
        total["mismatches"] += part["mismatches"]
        total["rust_s"] += part["rust_s"]
        total["python_s"] += part["python_s"]
        if total["first"] is None:
            total["first"] = part["first"]
    everyday = _compare(rust.float_reprs, ordinary_values(ordinary, seed))
    if total["first"] is None:
        total["first"] = everyday["first"]
    n = len(ties) + len(edges) + len(randoms)
    return {
        "patterns": len(randoms),
        "tie_cases": len(ties),
        "tie_families": sum(1 for _ in tie_families()),
        "edge_cases": len(edges),
        "ordinary": ordinary,
        "seed": seed,
        "mismatches": total["mismatches"] + everyday["mismatches"],
        "first_mismatch": total["first"],
        "ordinary_rust_per_s": _rate(ordinary, everyday["rust_s"]),
        "ordinary_python_per_s": _rate(ordinary, everyday["python_s"]),
        "rust_threads": getattr(rust, "THREADS", None),
        "rust_per_s": _rate(n, total["rust_s"]),
        "python_per_s": _rate(n, total["python_s"]),
    }


def _rate(n: int, seconds: float) -> int | None:
    return round(n / seconds) if seconds > 0 else None
