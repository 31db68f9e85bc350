"""A local Arweave gateway (the npm package ``arlocal``) on a free loopback port, for the
tests and ``engram devnet --blobs``. It is installed by ``just arlocal-setup`` (npm, from
``ops/arlocal/package.json``) into ``ops/arlocal/node_modules`` or, for CI, into
``${XDG_CACHE_HOME:-~/.cache}/engram-ci/arlocal/node_modules``; ``ENGRAM_ARLOCAL_BIN``
names another ``arlocal`` executable."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from engram.natsd import set_parent_death_signal
from streams.errors import EngramError

__all__ = ["ArLocal", "ArLocalMissing", "find_arlocal"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = (
    "arlocal (a local Arweave gateway, npm) is not installed: run `just arlocal-setup` "
    "(needs node and npm), or set ENGRAM_ARLOCAL_BIN to an arlocal executable"
)


class ArLocalMissing(EngramError):
    """arlocal is not installed where Engram looks for it."""


def _candidates() -> list[Path]:
    if env := os.environ.get("ENGRAM_ARLOCAL_BIN"):  # named: that one only
        return [Path(env)]
    out = []
    out.append(REPO_ROOT / "ops" / "arlocal" / "node_modules" / ".bin" / "arlocal")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    out.append(cache / "engram-ci" / "arlocal" / "node_modules" / ".bin" / "arlocal")
    return out


def find_arlocal() -> Path:
    """The arlocal executable, or :class:`ArLocalMissing` saying how to install it."""
    if shutil.which("node") is None:
        raise ArLocalMissing(f"node is not on PATH; {SETUP_HINT}")
    for path in _candidates():
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ArLocalMissing(SETUP_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ArLocal:
    """``with ArLocal() as gw: gw.url``: arlocal in its own temporary directory (its
    database), stopped and removed on exit."""

    port: int = 0
    start_timeout_s: float = 60.0
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    _log: Path | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ArLocal:
        exe = find_arlocal()
        self.port = self.port or _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="engram-arlocal-"))
        self._log = self.workdir / "arlocal.log"
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(exe), str(self.port), "--hidelogs", "--dbpath", "db"],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=set_parent_death_signal,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._log.read_text(errors="replace")[-800:]
                self.stop()
                raise ArLocalMissing(f"arlocal exited at start ({self.proc.returncode}): {tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/info", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise ArLocalMissing(
            f"arlocal did not answer on {self.url} within {self.start_timeout_s} s"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ArLocal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
