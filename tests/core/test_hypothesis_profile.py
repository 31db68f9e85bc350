"""The Hypothesis profile every test runs under by default is deterministic."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SEEN: list[int] = []


@pytest.mark.skipif(os.environ.get("ENGRAM_HYPOTHESIS", "deterministic") != "deterministic",
                    reason="another Hypothesis profile was chosen")  # fmt: skip
def test_default_profile_is_deterministic() -> None:
    current = settings.default
    assert current.derandomize is True
    assert current.database is None
    assert current.deadline is None

    @given(st.integers())
    def draw(x: int) -> None:
        SEEN.append(x)

    draw()
    first = list(SEEN)
    SEEN.clear()
    draw()
    assert SEEN == first and len(first) > 10
