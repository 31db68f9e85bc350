"""``engram ingest`` and ``engram query`` as a user runs them (real subprocesses) against a
real miner found through ENGRAM_MINER_HOST/ENGRAM_MINER_PORT."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from engram.miner.limits import MAX_TEXT_CHARS
from engram.miner.node import MinerNode

ROOT = Path(__file__).resolve().parents[2]


async def engram(node: MinerNode, home: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    env.update(ENGRAM_MINER_HOST=node.host, ENGRAM_MINER_PORT=str(node.port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engram.cli",
        "--data-dir",
        str(home),
        "--log-level",
        "warning",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_folder_ingest_reports_each_file_and_one_bad_file_fails_alone(
    node: MinerNode, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Axolotls can regrow their limbs and parts of their heart.")
    (docs / "b.txt").write_text("Basalt is a dark volcanic rock formed from cooled lava.")
    (docs / "huge.txt").write_text("word " * (MAX_TEXT_CHARS // 5 + 10))
    (docs / "image.bin").write_bytes(b"\xff\xfe\x00\x81binary")
    (docs / "rows.jsonl").write_text('"Cirrus clouds are thin and wispy."\n')
    home = tmp_path / "client"
    code, out, err = await engram(node, home, "ingest", str(docs), "--batch", "64")
    assert code == 1, err  # something failed ...
    report = json.loads(out)  # ... and stdout is one clean JSON document
    assert report["stored"] == 3 and report["failed"] == 2  # ... but only the bad files
    files = {Path(f["source"]).name: f for f in report["files"]}
    assert files["a.txt"]["stored"] == 1 and files["b.txt"]["stored"] == 1
    assert files["rows.jsonl"]["stored"] == 1
    assert files["huge.txt"]["failed"] == 1 and "limit" in files["huge.txt"]["errors"][0]["error"]
    assert files["image.bin"]["errors"] == [{"error": "not UTF-8 text"}]

    code, out, err = await engram(node, home, "query", "regrowing limbs", "--top-k", "1", "--json")
    assert code == 0, err
    hits = json.loads(out)["results"]  # the whole of stdout is the JSON answer
    assert hits[0]["metadata"]["source"].endswith("a.txt")


async def test_query_filter_reaches_the_miner(node: MinerNode, tmp_path: Path) -> None:
    home = tmp_path / "client"
    for i, text in enumerate(["Tea is brewed from leaves.", "Coffee is brewed from beans."]):
        code, _, err = await engram(node, home, "ingest", text, "--metadata", json.dumps({"i": i}))
        assert code == 0, err
    flt = json.dumps({"i": 1})
    code, out, err = await engram(node, home, "query", "tea leaves", "--filter", flt, "--json")
    assert code == 0, err
    assert [h["metadata"]["i"] for h in json.loads(out)["results"]] == [1]
