"""The `engram` command as a user runs it (real subprocesses, embedded NATS)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGRAM = [sys.executable, "-m", "engram.cli"]


def engram(
    *args: str, data_dir: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    full_env.update(env or {})
    return subprocess.run(
        [*ENGRAM, "--data-dir", str(data_dir), "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


def last_json(out: str) -> dict:  # type: ignore[type-arg]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_demo_runs_on_the_embedded_server(tmp_path: Path) -> None:
    r = engram("demo", "--events", "120", data_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["embedded"] is True
    assert out["published"] == 120 and out["duplicates_dropped"] == 120
    assert out["worker_handled"] == 120 and out["dead_lettered"] == 1
    assert "malformed event" in out["dead_letter_causes"][0]
    assert out["rebuild_equal"] is True and out["projection_live"]["count"] == 120
    miner = out["miner"]
    assert miner["ingested"] == 10 and miner["storage_proof_v2_verified"] is True
    answers = {a["question"]: a["answer"] for a in miner["answers"]}
    assert "Jupiter" in answers["Which planet is the biggest?"]
    assert "Guido" in answers["who made python"]
    # the embedded server was stopped with the command
    status = engram("nats", "status", data_dir=tmp_path)
    assert status.returncode == 1 and last_json(status.stdout)["running"] is False


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    r = engram(
        "config",
        "show",
        "--json",
        data_dir=tmp_path,
        env={"ENGRAM_NATS_PASSWORD": "hunter2", "ENGRAM_NATS_USER": "bob"},
    )
    assert r.returncode == 0, r.stderr
    shown = last_json(r.stdout)
    assert shown["nats_user"] == "bob" and shown["nats_password"] == "********"
    assert "hunter2" not in r.stdout + r.stderr
    assert shown["data_dir"] == str(tmp_path)


def test_bad_setting_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    r = engram("config", "show", data_dir=tmp_path, env={"ENGRAM_NATS_PORT": "lots"})
    assert r.returncode != 0
    assert "nats_port" in r.stderr and "Traceback" not in r.stderr


def test_doctor_names_the_core_backend_and_nats_server(tmp_path: Path) -> None:
    r = engram("doctor", data_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    report = last_json(r.stdout)
    assert report["core"]["backend"] in ("rust", "python")
    assert report["nats_server"].endswith("nats-server")


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in blocks, "the README's test command and .ci/run have drifted apart"
    assert any(b.endswith("engram demo") for b in blocks)
