"""``engram audit weights`` on a real nats-server: OK for an honest log, exit 1 and the
culprit named for a forged score; ``engram validator run --help`` lists the options."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from engram.bus import open_bus
from engram.cli import main
from engram.config import Settings
from engram.natsd import EmbeddedNats
from engram.validator.bench import _synthetic_log
from streams.events import Event, ScoreUpdated


def _publish(url: str, tmp: Path, events: list[Event]) -> None:
    async def go() -> None:
        bus = await open_bus(Settings(data_dir=str(tmp / "pub"), nats_url=url, node_id="t"))
        try:
            await bus.publisher.publish_many(events)
        finally:
            await bus.close()

    asyncio.run(go())


@pytest.mark.parametrize("forge", [False, True])
def test_audit_weights_cli(
    nats_server: EmbeddedNats, tmp_path: Path, forge: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    validation, weights = _synthetic_log(miners=3, rounds=10, validator="5V")
    if forge:
        i = next(k for k, e in enumerate(validation) if isinstance(e, ScoreUpdated))
        e = validation[i]
        assert isinstance(e, ScoreUpdated)
        validation[i] = msgspec.structs.replace(e, ema=e.ema * 2 + 0.1)
    _publish(nats_server.url, tmp_path, validation + weights)
    monkeypatch.setenv("ENGRAM_NATS_URL", nats_server.url)
    result = CliRunner().invoke(
        main,
        ["--data-dir", str(tmp_path / "cli"), "audit", "weights", "--validator", "5V", "--json"],
    )
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["ok"] is (not forge)
    assert result.exit_code == (1 if forge else 0)
    assert report["scores_checked"] == 30 and len(report["epochs"]) == 1
    if forge:
        assert (
            len(report["score_mismatches"]) == 1 and "ema recorded" in report["score_mismatches"][0]
        )
    else:
        assert all(m["reason"] == "" or m["slashed"] for m in report["epochs"][0]["miners"])


def test_validator_run_help() -> None:
    out = CliRunner().invoke(main, ["validator", "run", "--help"]).output
    for opt in (
        "--chain",
        "--netuid",
        "--evaluation-s",
        "--challenge-s",
        "--weights-s",
        "--proof-version",
    ):
        assert opt in out
