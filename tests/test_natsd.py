"""The embedded nats-server: starts with JetStream and fsync-always, is joined by a second
process on the same data dir, stops cleanly, and keeps acked events across a crash."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import nats
import pytest

from engram.bus import open_bus
from engram.config import Settings
from engram.natsd import EmbeddedNats, server_status
from streams.events import DemoNoted
from streams.replay import replay


def _jsz(server: EmbeddedNats) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/jsz") as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_embedded_server_syncs_every_write_and_stops_cleanly(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path).start()
    try:
        assert server.owned and server.process is not None
        assert _jsz(server)["config"]["sync_always"] is True
        status = server_status(tmp_path)
        assert status["running"] is True and status["port"] == server.port
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert server_status(tmp_path) == {"running": False, "data_dir": str(tmp_path)}


def test_second_process_joins_the_running_server(tmp_path: Path) -> None:
    first = EmbeddedNats(data_dir=tmp_path).start()
    try:
        second = EmbeddedNats(data_dir=tmp_path).start()
        assert not second.owned and second.url == first.url
        second.stop()  # not ours: must not stop the first one's server
        assert first.process is not None and first.process.poll() is None
    finally:
        first.stop()


async def test_acked_events_survive_a_server_crash(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), node_id="t")
    bus = await open_bus(settings)
    assert bus.server is not None
    await bus.publisher.publish_many([DemoNoted(n=i) for i in range(100)])
    bus.server.kill()  # SIGKILL the server right after the acks
    await bus.nc.close()

    bus2 = await open_bus(settings)  # restarts the embedded server on the same store
    try:
        got = [e.n async for _, e in replay(bus2.js, "INGEST")]  # type: ignore[attr-defined]
        assert got == list(range(100))
    finally:
        await bus2.close()


async def test_external_url_is_used_when_given(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    bus = await open_bus(Settings(data_dir=str(tmp_path / "client"), nats_url=nats_server.url))
    try:
        assert bus.server is None and bus.url == nats_server.url
        assert not (tmp_path / "client" / "nats").exists()  # no embedded server was started
    finally:
        await bus.close()


async def test_token_auth_against_a_protected_server(tmp_path: Path) -> None:
    server = EmbeddedNats(
        data_dir=tmp_path / "s", extra_config='authorization { token: "s3cret" }\n'
    ).start()
    try:
        import pytest

        with pytest.raises(Exception):  # noqa: B017 - wrong token is refused by the server
            await nats.connect(
                server.url, token="wrong", max_reconnect_attempts=0, allow_reconnect=False
            )
        bus = await open_bus(
            Settings(data_dir=str(tmp_path), nats_url=server.url, nats_token="s3cret")
        )
        await bus.publisher.publish(DemoNoted(n=1))
        await bus.close()
    finally:
        server.stop()


def test_a_picked_port_taken_before_the_server_binds_is_picked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process may bind the port we picked before nats-server does: the server is
    started again on a fresh port instead of failing the caller."""
    import socket

    import engram.natsd as natsd

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    picks = iter([taken])
    real = natsd.free_port

    def racy(host: str = "127.0.0.1") -> int:
        return next(picks, None) or real(host)

    monkeypatch.setattr(natsd, "free_port", racy)
    server = EmbeddedNats(data_dir=tmp_path / "n")
    try:
        server.start(reuse=False)
        assert server.port != taken and server.ready()
        assert "address already in use" in server.log_file.read_text()
    finally:
        server.stop()
        holder.close()
