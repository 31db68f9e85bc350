"""`engram brain chat` offline, as a newcomer runs it: two sessions, the second remembers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")


def chat(data_dir: Path, lines: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGRAM_DATA_DIR": str(data_dir), "ENGRAM_LOG_LEVEL": "warning"}
    env.pop("ENGRAM_NATS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "engram.cli", "brain", "chat", "--user", "newcomer",
         "--max-tokens", "8"],
        input=lines,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=True,
    )  # fmt: skip


def test_chat_remembers_across_sessions(tmp_path: Path) -> None:
    first = chat(tmp_path, "My bicycle is painted bright orange.\n/quit\n")
    assert "brain>" in first.stdout
    second = chat(tmp_path, "What colour is my bicycle?\n/quit\n")
    assert "brain>" in second.stdout
    assert "memories" in second.stderr  # "(N memories)": the first session was recalled
    assert "orange" in second.stderr  # and shown as recalled
