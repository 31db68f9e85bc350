"""The float sweep of ``engram bench floats``, small enough for CI: Rust's float text equals
Python's ``repr`` on seeded random bit patterns, constructed exact ties and edge values."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from engram.bench import floats
from engram.core import Backend
from engram.core.errors import InvalidArgument, InvalidMetadata


def test_tie_construction_finds_real_ties() -> None:
    families = list(floats.tie_families())
    assert (49, 1) in families  # 2^49 + 0.25 = 562949953421312.25 lives here
    assert floats.is_tie(562949953421312.25, 1, 5629499534213122 * 2 + 1)
    ties = floats.tie_cases(per_family=64)
    assert len(ties) > 1000
    for v in ties:
        # The printed digits are exactly half a unit of their last digit away from v.
        printed = Decimal(repr(v))
        unit = Decimal(1).scaleb(printed.as_tuple().exponent)  # type: ignore[arg-type]
        assert 2 * abs(Decimal(v) - printed) == unit, v


def test_sweep(both: tuple[Backend, Backend]) -> None:
    rust, py = both
    parts = {
        "ties": np.array(floats.tie_cases(per_family=256, seed=1), dtype=np.float64),
        "edges": np.array(floats.edge_cases(), dtype=np.float64),
        "random": floats.random_patterns(200_000, seed=1),
    }
    for name, values in parts.items():
        want = list(map(float.__repr__, values.tolist()))
        got = rust.float_reprs(values)
        if got != want:
            i = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
            pytest.fail(
                f"{name}: {values[i]!r} (bits {values[i : i + 1].view(np.uint64)[0]:#018x}) "
                f"-> rust {got[i]!r}, python {want[i]!r}"
            )
        assert py.float_reprs(values) == want


def test_float_reprs_arguments(core: Backend) -> None:
    assert core.float_reprs(np.array([], dtype=np.float64)) == []
    assert core.float_reprs(np.array([0.5, -0.0])) == ["0.5", "-0.0"]
    with pytest.raises(InvalidMetadata, match="value 1"):
        core.float_reprs(np.array([1.0, math.nan]))
    for bad in (np.zeros(3, dtype=np.float32), np.zeros((2, 2)), np.zeros(6)[::2], [1.0], "x"):
        with pytest.raises(InvalidArgument):
            core.float_reprs(bad)


def test_bench_floats_cli(both: tuple[Backend, Backend]) -> None:
    import json

    from click.testing import CliRunner

    from engram.cli import main

    result = CliRunner().invoke(
        main, ["bench", "floats", "--count", "2000", "--ordinary", "2000", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["patterns"] == 2000
    assert figures["tie_cases"] > 100_000
    assert figures["mismatches"] == 0 and figures["first_mismatch"] is None
    assert figures["rust_per_s"] > 0 and figures["python_per_s"] > 0
