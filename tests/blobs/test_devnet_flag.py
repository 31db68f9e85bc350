"""``engram devnet --blobs`` without arlocal says so (and how to install it) before
starting anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_devnet_blobs_without_arlocal_says_how_to_install_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    env["ENGRAM_ARLOCAL_BIN"] = str(tmp_path / "no-arlocal-here")
    proc = subprocess.run(
        [sys.executable, "-m", "engram.cli", "devnet", "--blobs", "--epochs", "1", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "--blobs: arlocal" in proc.stderr and "just arlocal-setup" in proc.stderr
