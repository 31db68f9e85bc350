"""The issue's "Must show", exactly as a newcomer types it, as a real subprocess:
``engram devnet --miners 3 --adversary hash-only --adversary slow --epochs 2 --fast --json``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .helpers import devnet_cmd, env


def test_must_show_command_exits_by_itself_with_weights_audit_and_replication(
    tmp_path: Path,
) -> None:
    args = ["--miners", "3", "--adversary", "hash-only", "--adversary", "slow"]
    proc = subprocess.run(
        devnet_cmd(*args, "--epochs", "2", "--fast", "--json"),
        env=dict(env(), TMPDIR=str(tmp_path)),  # where its temporary data dir goes
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]  # nothing else on stdout
    out = json.loads(lines[-1])

    weights = out["weights"]
    labels = {uid: w["label"] for uid, w in weights.items()}
    assert sorted(labels.values()) == ["hash-only", "honest", "honest", "honest", "slow"]
    honest = [w["weight"] for w in weights.values() if w["label"] == "honest"]
    adversaries = {w["label"]: w for w in weights.values() if w["label"] != "honest"}
    assert all(isinstance(w["hotkey"], str) and w["hotkey"] for w in weights.values())

    # hash-only: every v2 proof failed, slashed, weight exactly 0
    hash_only = adversaries["hash-only"]
    assert hash_only["weight"] == 0.0 and hash_only["slashed"], hash_only
    assert hash_only["proofs"] >= 5 and hash_only["proofs_passed"] == 0
    assert hash_only["proof_failures"] and all("v2" in r for r in hash_only["proof_failures"])
    # every honest miner above every adversary; the honest hold most of the weight
    assert min(honest) > max(a["weight"] for a in adversaries.values()), weights
    assert sum(honest) > 0.7, weights
    assert abs(sum(w["weight"] for w in weights.values()) - 1.0) < 1e-6

    assert out["audit_ok"] is True, out.get("audit_problems")
    assert set(out["replication"]) == {"HEALTHY", "DEGRADED", "CRITICAL", "LOST"}
    assert sum(out["replication"].values()) > 0
    assert len(out["epochs"]) == 2
    assert not list(tmp_path.glob("engram-devnet-*"))  # its temporary data dir is gone
