"""The console's JSON API over a real nats-server holding validator events, and the
standalone ``engram console`` command (a real subprocess)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from engram.bus import Bus
from engram.console import ConsoleServer
from streams.events import (
    ChallengeIssued,
    DemoNoted,
    ProofVerified,
    RecallSampled,
    ScoreUpdated,
    WeightsProposed,
    WeightsSet,
)

ROOT = Path(__file__).resolve().parents[2]
CID = "v1::" + "ab" * 32
HOTKEYS = ("5Alice", "5Bob")


async def _seed(bus: Bus) -> None:
    events: list[Any] = []
    for r in range(3):
        for uid, hk in enumerate(HOTKEYS):
            events += [
                ChallengeIssued(
                    challenge_id=f"c{r}{uid}", miner_uid=uid, miner_hotkey=hk, cid=CID,
                    nonce_hex="00", expires_at=0, validator_hotkey_hex="", miner_axon="127.0.0.1:9",
                    replicated=True,
                ),
                ProofVerified(
                    challenge_id=f"c{r}{uid}", miner_uid=uid, miner_hotkey=hk, cid=CID,
                    passed=uid == 0 or r < 2, replicated=True, reason="" if uid == 0 else "wrong",
                ),
                RecallSampled(round_id=f"r{r}", miner_uid=uid, miner_hotkey=hk,
                              recall_at_10=0.9 - uid / 10, latency_ms=20 + uid),
                ScoreUpdated(round_id=f"r{r}", miner_uid=uid, miner_hotkey=hk, recall=0.9,
                             latency_score=1, proof_success_rate=1 - uid / 3, composite=0.8,
                             ema=0.2 * (r + 1) - uid / 10),
            ]  # fmt: skip
        events += [
            WeightsProposed(epoch=r, uids=[0, 1], weights=[0.7, 0.3]),
            WeightsSet(epoch=r, success=True),
        ]
    await bus.publisher.publish_many(events)


async def test_api_folds_validator_events_and_refuses_bad_input(bus: Bus) -> None:
    await _seed(bus)
    server = ConsoleServer(bus, labels={"5Alice": "honest"})
    url = await server.start()
    try:
        async with aiohttp.ClientSession(base_url=url) as http:

            async def get(path: str, status: int = 200) -> Any:
                async with http.get(path) as r:
                    body = await r.json()
                    assert r.status == status, body
                    return body

            for _ in range(100):
                net = await get("/api/console/network")
                if net["weight_sets"] == 3 and net["validation_events"] == 24:
                    break
                await asyncio.sleep(0.05)
            alice, bob = net["miners"]
            assert (alice["hotkey"], alice["label"], alice["axon"]) == (
                "5Alice",
                "honest",
                "127.0.0.1:9",
            )
            assert alice["score"] == 0.6000000000000001 and alice["weight"] == 0.7
            assert (bob["proofs"], bob["proofs_passed"], bob["recall"]) == (3, 2, 0.8)
            # only two miners: the one that failed last is not confirmed, so 1 of 3 replicas
            assert net["replication"] == {"HEALTHY": 0, "DEGRADED": 0, "CRITICAL": 1, "LOST": 0}
            hist = await get("/api/console/network/history")
            assert [p["score"] for p in hist["0"]["history"]] == [0.2, 0.4, 0.6000000000000001]
            assert [w["weight"] for w in hist["1"]["weights"]] == [0.3, 0.3, 0.3]

            cid = await get(f"/api/console/cid/{CID}")
            assert cid["status"] == "CRITICAL" and cid["record"] is None  # axon :9 is down
            assert [(p["uid"], p["passed"]) for p in cid["proofs"][:2]] == [(1, False), (0, True)]
            assert cid["verdicts"] == {"5Alice": True, "5Bob": False}
            unknown = "v1::" + "cd" * 32
            assert "unknown CID" in (await get(f"/api/console/cid/{unknown}", 404))["error"]
            assert "not a CID" in (await get("/api/console/cid/v1::XYZ", 400))["error"]
            assert "integer" in (await get("/api/console/events?after=x", 400))["error"]

            # live events: what is published now appears in the feed
            last = (await get("/api/console/events"))["last"]
            await bus.publisher.publish(DemoNoted(n=7, note="hello console"))
            for _ in range(100):
                new = (await get(f"/api/console/events?after={last}"))["events"]
                if new:
                    break
                await asyncio.sleep(0.05)
            assert new[0]["kind"] == "DemoNoted" and "note=hello console" in new[0]["summary"]

            async def post(body: Any, status: int) -> str:
                async with http.post("/api/console/query", json=body) as r:
                    assert r.status == status
                    return str((await r.json())["error"])

            assert "non-empty" in await post({"text": "  "}, 400)
            assert "top_k" in await post({"text": "x", "top_k": 0}, 400)
            assert "uid 5" in await post({"text": "x", "uid": 5}, 404)
            assert "cannot reach the miner at 127.0.0.1:9" in await post({"text": "x"}, 502)
            bus_state = await get("/api/console/bus")
            assert {s["name"] for s in bus_state["streams"]} >= {"VALIDATION", "WEIGHTS", "DLQ"}
            assert (await get("/api/console/dlq"))["depth"] == 0
            async with http.get("/console/") as r:
                assert r.status == 200 and "Engram console" in await r.text()
            async with http.get("/nope") as r:
                assert r.status == 404
    finally:
        await server.stop()


async def test_engram_console_command_serves_until_ctrl_c(bus: Bus, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engram.cli", "--data-dir", str(tmp_path), "console",
        "--nats-url", bus.url, "--port", "0",
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        seen = ""
        while not (m := re.search(r"console: (http://127\.0\.0\.1:\d+/)", seen)):
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert line, seen  # (logs come first: the client hotkey it generated)
            seen += line
        async with aiohttp.ClientSession() as http, http.get(m.group(1) + "api/console/bus") as r:
            names = {s["name"] for s in (await r.json())["streams"]}
            assert r.status == 200 and "VALIDATION" in names
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err


async def test_validator_serves_the_console(nats_server: Any, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    env["ENGRAM_NATS_URL"] = nats_server.url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engram.cli", "--data-dir", str(tmp_path), "validator", "run",
        "--console-port", "0", "--evaluation-s", "3600", "--challenge-s", "3600",
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        seen = ""
        while not (m := re.search(r"console: (http://127\.0\.0\.1:\d+/)", seen)):
            line = (await asyncio.wait_for(proc.stderr.readline(), 120)).decode()
            assert line, seen
            seen += line
        async with aiohttp.ClientSession(base_url=m.group(1)) as http:
            async with http.get("/api/console/bus") as r:
                consumers = {c["name"] for c in (await r.json())["consumers"]}
            for _ in range(100):  # the validator's steps bind their consumers
                if "validator-verifier" in consumers:
                    break
                await asyncio.sleep(0.1)
                async with http.get("/api/console/bus") as r:
                    consumers = {c["name"] for c in (await r.json())["consumers"]}
            assert "validator-verifier" in consumers
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
