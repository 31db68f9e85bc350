"""A headless Chromium driven over the Chrome DevTools Protocol (a websocket, with
aiohttp): navigate, evaluate JavaScript, wait for a condition, take a screenshot, and
collect the page's uncaught exceptions. Debian's ``chromium``; nothing downloaded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Browser", "find_chromium"]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise RuntimeError("no chromium found: `apt-get install -y chromium` (.ci/run does)")


class Browser:
    def __init__(self, width: int = 1440, height: int = 1000) -> None:
        self.width, self.height = width, height
        self.exceptions: list[str] = []
        self.console_errors: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="engram-chromium-")
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *[
                find_chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._proc.stderr is not None
        port = await asyncio.wait_for(self._devtools_port(self._proc.stderr), 30)
        self._drain = asyncio.create_task(self._drain_stderr(self._proc.stderr))
        self._http = aiohttp.ClientSession()
        for _ in range(50):
            async with self._http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self._ws = await self._http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    @staticmethod
    async def _devtools_port(stderr: asyncio.StreamReader) -> int:
        while line := (await stderr.readline()).decode(errors="replace"):
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                return int(m.group(1))
        raise RuntimeError("chromium did not open its DevTools port")

    @staticmethod
    async def _drain_stderr(stderr: asyncio.StreamReader) -> None:
        """Chromium's log: read and dropped, so a full pipe never blocks the browser."""
        while await stderr.read(65536):
            pass

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                text = (details.get("exception") or {}).get("description") or details.get("text")
                self.exceptions.append(str(text))
            elif data.get("method") == "Runtime.consoleAPICalled":
                if data["params"].get("type") == "error":
                    args = data["params"].get("args") or []
                    self.console_errors.append(" ".join(str(a.get("value")) for a in args))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        i = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        await self._ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        out = await asyncio.wait_for(fut, 30)
        if "error" in out:
            raise RuntimeError(f"{method}: {out['error']}")
        return out.get("result") or {}

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def js(self, expression: str) -> Any:
        out = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return (out.get("result") or {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                last = await self.js(expression)
                if last:
                    return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for: {expression} (last value {last!r})")

    async def screenshot(self, path: Path) -> Path:
        """The whole page (not only the viewport) as a PNG."""
        size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": self.width, "height": size["height"], "scale": 1}
        out = await self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        data = base64.b64decode(out["data"])

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        await asyncio.to_thread(write)
        return path

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._drain is not None:
            await asyncio.gather(self._drain, return_exceptions=True)
        self._profile.cleanup()


def artifacts_dir() -> Path:
    """Where screenshots go: ``$ENGRAM_TEST_ARTIFACTS`` or tests/artifacts/ (gitignored)."""
    env = os.environ.get("ENGRAM_TEST_ARTIFACTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "artifacts"
