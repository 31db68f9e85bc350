"""The web console in a real browser (headless Debian Chromium) on a real devnet: the
devnet command prints the console's URL, the pages show its miners with live scores,
the playground's query reaches a miner and shows its hits, a CID page shows proofs;
each page is saved as a screenshot (tests/artifacts/ or $ENGRAM_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from .cdp import Browser, artifacts_dir

ROOT = Path(__file__).resolve().parents[2]


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return await r.json()


async def _post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body) as r:
        return r.status, await r.json()


async def _text(path: Path) -> str:
    return await asyncio.to_thread(path.read_text, errors="replace")


async def _wait_url(err: Path, proc: asyncio.subprocess.Process) -> str:
    for _ in range(600):
        m = re.search(r"console: (http://127\.0\.0\.1:\d+/)", await _text(err))
        if m:
            return m.group(1)
        assert proc.returncode is None, await _text(err)
        await asyncio.sleep(0.2)
    raise AssertionError("the devnet printed no console URL:\n" + await _text(err))


async def _wait_scored(url: str) -> dict[str, Any]:
    """Until every miner has a score and two weight sets have passed."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        net = await _get(url + "api/console/network")
        miners = net["miners"]
        if (
            len(miners) == 3
            and all(m["score"] is not None and m["weight"] is not None for m in miners)
            and sum(net["replication"].values()) > 0
            and net["weight_sets"] >= 2
        ):
            return net  # type: ignore[no-any-return]
        await asyncio.sleep(1)
    raise AssertionError(f"the devnet scored nobody in time: {net}")


async def test_console_in_a_browser_on_a_live_devnet(tmp_path: Path) -> None:
    shots = artifacts_dir() / "console"
    err = tmp_path / "devnet.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    env["ENGRAM_DATA_DIR"] = str(tmp_path / "home")  # the model cache lives here
    cmd = [sys.executable, "-m", "engram.cli", "devnet", "--fast", "--miners", "2"]
    err_f = await asyncio.to_thread(err.open, "wb")
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--adversary", "lossy", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=err_f, env=env, cwd=ROOT,
    )  # fmt: skip
    err_f.close()
    try:
        url = await _wait_url(err, proc)
        net = await _wait_scored(url)
        hotkeys = sorted(m["hotkey"] for m in net["miners"])
        # bad input is a 4xx with a reason, never a 500
        status, body = await _post(url + "api/console/query", b"not json")
        assert status == 400 and "JSON object" in body["error"]
        status, body = await _post(url + "api/console/query", json.dumps({"text": "x", "uid": 99}))
        assert status == 404 and "uid 99" in body["error"]
        async with aiohttp.ClientSession() as http, http.get(url + "api/console/cid/v2::x") as r:
            assert r.status == 400 and "not a CID" in (await r.json())["error"]

        # the operator's status, on the devnet's bus, with a miner's index size (signed /stats)
        nats = (await _get(url + "api/console/overview"))["nats"]
        axon = next(m["axon"] for m in net["miners"] if m["label"] == "honest")
        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engram.cli", "--data-dir", str(tmp_path / "op"), "status",
            "--nats-url", f"nats://{nats}", "--miner", f"http://{axon}", "--json",
            stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
        )  # fmt: skip
        report = json.loads((await asyncio.wait_for(status.communicate(), 60))[0])
        [index] = report["indexes"]
        assert index["source"] == "miner" and index["memories"] >= 12, index  # user memories
        assert {c["name"] for c in report["consumers"]} >= {"validator-verifier"}

        async with Browser() as b:
            await b.goto(url)  # / redirects to the console, Network first
            await b.wait_for("document.querySelectorAll('#miners tbody tr').length === 3")
            await b.wait_for(
                "[...document.querySelectorAll('#miners .score')].every(td => /^\\d\\.\\d{3}$/"
                ".test(td.textContent))"
            )
            shown = await b.js(
                "[...document.querySelectorAll('#miners .hotkey')].map(td => td.textContent)"
            )
            assert sorted(shown) == hotkeys
            rows = await b.js(
                "[...document.querySelectorAll('#miners tbody tr')].map(tr => "
                "[tr.children[2].textContent, Number(tr.querySelector('.score').textContent)])"
            )
            honest = [score for role, score in rows if role == "honest"]
            [lossy] = [score for role, score in rows if role == "lossy"]
            assert len(honest) == 2 and lossy < min(honest), rows  # it loses half its data
            # one line per miner in each chart, drawn from the validator's history
            for chart in ("score", "recall", "proof", "latency", "weight"):
                await b.wait_for(
                    f"document.querySelectorAll('#chart-{chart} path.series').length === 3"
                )
            await b.wait_for("document.querySelector('#replication .repbar').children.length > 0")
            await b.screenshot(shots / "network.png")

            await b.goto(url + "console/#/bus")
            cells = "[...document.querySelectorAll('#streams td')]"
            await b.wait_for(f"{cells}.some(t => t.textContent === 'VALIDATION')")
            await b.wait_for(
                "document.querySelector('#consumers').textContent.includes('validator-verifier')"
            )
            await b.wait_for("document.querySelectorAll('#events .ev').length >= 10")  # live (SSE)
            kinds = await b.js(
                "[...document.querySelectorAll('#events .kind')].map(e => e.textContent)"
            )
            assert {"ProofVerified", "ChallengeIssued"} & set(kinds)
            await b.screenshot(shots / "bus.png")

            await b.goto(url + "console/#/memory")
            await b.wait_for("document.querySelectorAll('#q-miner option').length === 4")
            await b.js(
                "document.querySelector('#q-text').value = 'Which planet is the biggest?';"
                "document.querySelector('#q-go').click(); true"
            )
            await b.wait_for("document.querySelectorAll('#q-results .hit').length === 5")
            top = await b.js("document.querySelector('#q-results .hit').textContent")
            # the devnet's user memory n=2 is "Jupiter is the biggest planet ..."
            assert "n: 2" in top and "user: devnet" in top, top
            assert "hits from miner uid" in await b.js(
                "document.querySelector('#q-meta').textContent"
            )
            await b.screenshot(shots / "memory.png")

            cid = await b.js("document.querySelector('#q-results .hit a.cid').textContent")
            await b.js("document.querySelector('#q-results .hit a.cid').click(); true")
            await b.wait_for(f"location.hash === '#/cid/{cid}'")
            await b.wait_for("document.querySelectorAll('#cid-ids tr').length === 6")
            await b.wait_for(
                "document.querySelector('#cid-record').textContent.includes('devnet')", 30
            )
            proofs = "[...document.querySelectorAll('#cid-proofs td')]"
            await b.wait_for(f"{proofs}.some(t => t.textContent === 'passed')", 60)
            ids = await b.js("document.querySelector('#cid-ids').textContent")
            assert cid in ids and cid[4:] in ids
            await b.screenshot(shots / "cid.png")
            assert b.exceptions == [] and b.console_errors == []
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, (await _text(err))[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["console_url"] == url
    assert sorted(w["hotkey"] for w in result["weights"].values()) == hotkeys
    for name in ("network", "bus", "memory", "cid"):
        assert (await asyncio.to_thread((shots / f"{name}.png").stat)).st_size > 20_000
