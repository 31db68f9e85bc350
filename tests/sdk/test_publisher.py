"""The direct publisher against the real miner's bus: IngestRequested in, Stored notices
confirmed, idempotent re-publishing, rejections reported; and ``engram publish``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec

from engram.bus import open_bus
from engram.sdk import EngramClient
from engram.sdk.publisher import DirectPublisher

from .conftest import CLIENT, LiveMiner


def _settings(live: LiveMiner, tmp_path: Path):  # type: ignore[no-untyped-def]
    return msgspec.structs.replace(live.settings, data_dir=str(tmp_path / "pub"))


async def test_publish_waits_for_stored_and_is_idempotent(
    live_miner: LiveMiner, ns: str, tmp_path: Path
) -> None:
    items = [
        "Ravens can solve multi-step puzzles.",
        {"text": "Octopuses have three hearts.", "metadata": {"animal": "octopus"}},
        {"text": ""},  # invalid: refused here, never published
        {"text": "Tardigrades survive in space.", "request_id": "tardi"},
    ]
    seen: list[tuple[int, int]] = []
    async with DirectPublisher.connect(_settings(live_miner, tmp_path), caller="etl") as pub:
        first = await pub.publish(
            items, namespace=ns, batch=2, progress=lambda p, c: seen.append((p, c))
        )
        assert [r.status for r in first] == ["stored", "stored", "invalid", "stored"]
        assert first[3].request_id == "tardi" and "text" in str(first[2].error)
        assert seen[-1] == (3, 3)
        # again: JetStream drops the duplicate publishes; the earlier notices confirm them
        again = await pub.publish(items, namespace=ns)
        assert [r.cid for r in again] == [r.cid for r in first]
        assert [r.status for r in again] == ["stored", "stored", "invalid", "stored"]

    sdk = EngramClient(live_miner.url, hotkey=CLIENT, namespace=ns)
    assert sdk.stats()["namespaces"][ns] == 3  # stored once each
    hit = sdk.query("animal with several hearts", top_k=1, include_text=True)[0]
    assert hit.cid == first[1].cid and hit.text == "Octopuses have three hearts."
    # the same memory through the axon has the same CID: the same events, the same bytes
    same = sdk.ingest("Octopuses have three hearts.", {"animal": "octopus"})
    assert same == first[1].cid


async def test_a_rejected_ingest_is_reported(live_miner: LiveMiner, ns: str) -> None:
    bus = await open_bus(live_miner.settings)
    try:
        # a producer configured for a model this miner does not serve: the embed worker
        # refuses it (IngestRejected) and the publisher reports the reason
        pub = DirectPublisher(bus.js, bus.publisher, caller="wrong-model", model_version="v9")
        await pub.start()
        try:
            (res,) = await pub.publish(["never embedded"], namespace=ns, timeout_s=30)
        finally:
            await pub.close()
        assert res.status == "rejected" and "v9" in str(res.error)
    finally:
        await bus.close()


def test_engram_publish_cli(live_miner: LiveMiner, ns: str, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        ENGRAM_NATS_URL=live_miner.nats_url,
        ENGRAM_DATA_DIR=str(tmp_path / "cli"),
        ENGRAM_LOG_LEVEL="warning",
    )
    f = tmp_path / "notes.jsonl"
    f.write_text(
        json.dumps({"text": "Mercury is closest to the sun", "metadata": {"p": 1}})
        + "\nplain text line about Venus\n"
        + json.dumps({"text": "  "})
        + "\n"
    )
    cmd = [sys.executable, "-m", "engram.cli", "publish", "--namespace", ns, "--json"]
    out = subprocess.run(
        [*cmd, str(f)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 1, out.stderr  # one line was invalid
    summary = json.loads(out.stdout)
    assert summary["stored"] == 2 and summary["invalid"] == 1 and summary["published"] == 2
    assert summary["failed"][0]["line"] == 3
    cids = [i["cid"] for i in summary["items"] if i["cid"]]
    # from standard input, the valid lines again: stored already, nothing new
    stdin = f.read_text().splitlines()[:2]
    out2 = subprocess.run(
        [*cmd, "-"], env=env, input="\n".join(stdin), capture_output=True, text=True, timeout=120
    )
    assert out2.returncode == 0, out2.stderr
    again = json.loads(out2.stdout)
    assert again["stored"] == 2 and [i["cid"] for i in again["items"]] == cids
    sdk = EngramClient(live_miner.url, hotkey=CLIENT, namespace=ns)
    assert sdk.stats()["namespaces"][ns] == 2
    assert sdk.query("the planet nearest the sun", top_k=1)[0].cid == cids[0]
