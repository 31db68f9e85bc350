"""Every core test runs against both backends: the Rust module and the Python fallback.

The Rust backend is skipped when ``engram_core`` is not installed, except under CI (or
``ENGRAM_REQUIRE_RUST=1``), where a missing extension fails the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from engram.core import Backend, backends

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
REQUIRE_RUST = bool(os.environ.get("CI") or os.environ.get("ENGRAM_REQUIRE_RUST"))


def load_vectors(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture(params=["rust", "python"])
def core(request: pytest.FixtureRequest) -> Backend:
    available = backends()
    if request.param not in available:
        if REQUIRE_RUST:
            pytest.fail("engram_core (Rust) is not importable; run `pip install ./engram-core`")
        pytest.skip("engram_core (Rust) is not installed")
    return available[request.param]


@pytest.fixture(scope="session")
def both() -> tuple[Backend, Backend]:
    """(rust, python) for parity tests."""
    available = backends()
    if "rust" not in available:
        if REQUIRE_RUST:
            pytest.fail("engram_core (Rust) is not importable; run `pip install ./engram-core`")
        pytest.skip("engram_core (Rust) is not installed")
    return available["rust"], available["python"]
