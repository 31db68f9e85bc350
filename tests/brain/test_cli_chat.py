"""`engram brain chat` offline, as a newcomer runs it: two sessions, the second remembers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")


def chat(
    data_dir: Path, lines: str, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGRAM_DATA_DIR": str(data_dir), "ENGRAM_LOG_LEVEL": "warning"}
    env.update({f"ENGRAM_{k.upper()}": v for k, v in settings.items()})
    env.pop("ENGRAM_NATS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "engram.cli", "brain", "chat", "--user", "newcomer",
         "--max-tokens", "8", *args],
        input=lines,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )  # fmt: skip


def test_chat_remembers_across_sessions(tmp_path: Path) -> None:
    first = chat(tmp_path, "My bicycle is painted bright orange.\n/quit\n")
    assert "brain>" in first.stdout
    second = chat(tmp_path, "What colour is my bicycle?\n/quit\n")
    assert "brain>" in second.stdout
    assert "memories" in second.stderr  # "(N memories)": the first session was recalled
    assert "orange" in second.stderr  # and shown as recalled


def test_fix_then_train_changes_the_model_itself(tmp_path: Path) -> None:
    """/fix, then /train: a LoRA is trained here and swapped in, so even a session that
    neither recalls nor remembers gets the corrected answer."""
    pytest.importorskip("jax")
    lora = {"brain_trainer": "lora", "brain_lora_steps": "10"}
    first = chat(
        tmp_path,
        "What is the capital of Zorbia?\n"
        "/fix The capital of Zorbia is Blorptown.\n/train\n/quit\n",
        "--max-tokens", "16",
        **lora,
    )  # fmt: skip
    assert "blorptown" not in first.stdout.lower()
    assert "now answering as" in first.stderr, first.stderr[-2000:]
    second = chat(
        tmp_path, "What is the capital of Zorbia?\n/quit\n", "--no-memory", "--max-tokens", "16",
        **lora,
    )  # fmt: skip
    assert "blorptown" in second.stdout.lower(), second.stdout
