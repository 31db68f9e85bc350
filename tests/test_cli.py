"""The `engram` command as a user runs it (real subprocesses, embedded NATS)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[1]
ENGRAM = [sys.executable, "-m", "engram.cli"]


def engram(
    *args: str, data_dir: Path | None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    full_env.update(env or {})
    where = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run(
        [*ENGRAM, *where, "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


def last_json(out: str) -> dict:  # type: ignore[type-arg]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_demo_runs_in_a_temporary_dir_and_leaves_nothing_behind(tmp_path: Path) -> None:
    home = tmp_path / "home"  # the configured data dir: only the model cache may appear
    r = engram("demo", "--events", "120", data_dir=None, env={"ENGRAM_DATA_DIR": str(home)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert out["embedded"] is True
    assert out["published"] == 120 and out["duplicates_dropped"] == 120
    assert out["worker_handled"] == 120 and out["dead_lettered"] == 1
    assert "malformed event" in out["dead_letter_causes"][0]
    assert out["rebuild_equal"] is True and out["projection_live"]["count"] == 120
    assert out["projection_live_progress"] == [100, 120]  # followed live, chunk by chunk
    miner = out["miner"]
    assert miner["ingested"] == 10 and miner["storage_proof_v2_verified"] is True
    assert miner["cids_match_local"] is True
    answers = {a["question"]: a["answer"] for a in miner["answers"]}
    assert "Jupiter" in answers["Which planet is the biggest?"]
    assert "Guido" in answers["who made python"]
    # the temporary dir (server store, index, consumers, events) is gone
    assert out["data_dir_removed"] is True and not Path(out["data_dir"]).exists()
    assert sorted(p.name for p in home.iterdir()) == ["cache"]


def test_demo_with_a_data_dir_keeps_it_but_deletes_its_consumers(tmp_path: Path) -> None:
    import asyncio

    import nats

    from engram.natsd import EmbeddedNats

    for _ in range(2):  # a second run on the same dir still checks itself
        r = engram(
            "demo", "--events", "30", "--no-miner", "--data-dir", str(tmp_path), data_dir=None
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["rebuild_equal"] is True and out["data_dir_removed"] is False
    assert out["projection_live"]["count"] == 60  # both runs' events are kept
    # the embedded server was stopped with the command
    status = engram("nats", "status", data_dir=tmp_path)
    assert status.returncode == 1 and last_json(status.stdout)["running"] is False

    async def consumers() -> list[str]:
        server = EmbeddedNats(data_dir=tmp_path / "nats").start(reuse=False)
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            names = [c.name for s in ("INGEST", "DLQ") for c in await js.consumers_info(s)]
            await nc.close()
            return names
        finally:
            server.stop()

    assert asyncio.run(consumers()) == []


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
    # the main job (the first command) is the devnet, installed the same way
    install = ci.rsplit("&&", 1)[0]
    assert blocks[0] == f"{install}&& engram devnet"


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    from engram.cli import main

    return CliRunner().invoke(main, ["--log-level", "warning", *args], env=env)


def test_bad_filter_json_is_one_line(tmp_path: Path) -> None:
    r = run_cli("--data-dir", str(tmp_path), "query", "x", "--filter", "{nope")
    assert r.exit_code == 2 and r.exception is not None and isinstance(r.exception, SystemExit)
    assert "--filter" in r.output and "not JSON" in r.output
    r = run_cli("--data-dir", str(tmp_path), "query", "x", "--filter", "[1]")
    assert r.exit_code == 2 and "must be a JSON object" in r.output


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("{broken", "not JSON"),
        ("42", "a row must be a string or a JSON object"),
        ('{"text": 1}', '"text" must be a string'),
        ('{"text": "a", "metadata": [1]}', '"metadata" must be a JSON object'),
    ],
)
def test_bad_jsonl_row_names_its_line(tmp_path: Path, row: str, reason: str) -> None:
    f = tmp_path / "rows.jsonl"
    f.write_text('"first"\n\n{"text": "second"}\n' + row + "\n")
    r = run_cli("--data-dir", str(tmp_path), "ingest", str(f))
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    [line] = r.output.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"Error: {f}:4: ") and reason in line


def test_ingest_and_query_follow_the_miner_host_and_port_settings(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"ENGRAM_MINER_HOST": "127.0.0.1", "ENGRAM_MINER_PORT": str(port)}
    for args in (["ingest", "hello"], ["query", "hello"]):
        r = run_cli("--data-dir", str(tmp_path), *args, env=env)
        assert r.exit_code == 1, r.output
        assert f"cannot reach the miner at http://127.0.0.1:{port}" in r.output
        assert "Traceback" not in r.output


def test_errors_from_the_bus_are_one_line(tmp_path: Path) -> None:
    r = engram("replay", "NOSUCH", data_dir=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("Error:")]
    # operator commands never start a server for the occasion: no bus is one line too
    # (a missing stream on a running server: tests/ops/test_cli_ops.py)
    assert "NoBus" in line and "engram nats up" in line
