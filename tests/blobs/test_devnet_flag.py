"""``engram devnet --blobs``: with arlocal, a PNG and a 3-page PDF go through a miner's axon
and come back archived, verified and found; without arlocal it says so (and how to install
it) before starting anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engram.blobs.arlocal import find_arlocal

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    env.update(extra)
    return env


def devnet(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engram.cli", "devnet", "--blobs", *args],
        capture_output=True,
        text=True,
        env=_env(**extra),
        timeout=300,
    )


def test_devnet_blobs_reports_each_file_archived_verified_and_found(tmp_path: Path) -> None:
    find_arlocal()  # installed (just arlocal-setup), or this fails saying how
    proc = devnet("--miners", "1", "--epochs", "1", "--fast", "--json", TMPDIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]
    blobs = json.loads(lines[-1])["blobs"]
    assert [b["file"] for b in blobs] == ["red-disc.png", "marsh-notes.pdf"]
    for b in blobs:
        assert b["content_cid"].startswith("sha256:") and len(b["arweave_tx"]) == 43
        assert b["bytes_verified"] is True and b["found_by_query"] is True, b
    assert len(blobs[0]["engram_cids"]) == 1 and len(blobs[1]["engram_cids"]) == 3


def test_devnet_blobs_without_arlocal_says_how_to_install_it(tmp_path: Path) -> None:
    proc = devnet("--epochs", "1", "--json", ENGRAM_ARLOCAL_BIN=str(tmp_path / "no-arlocal"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "--blobs: arlocal" in proc.stderr and "just arlocal-setup" in proc.stderr
