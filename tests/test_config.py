"""Settings: defaults < TOML file < environment; bad values name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from engram.config import ConfigError, load_settings


def test_defaults_are_safe() -> None:
    s = load_settings(path=None, environ={})
    assert s.nats_url is None  # embedded server by default
    assert s.nats_sync == "always"  # an acked event survives a machine crash
    assert s.miner_port == 8091


def test_file_then_env_precedence(tmp_path: Path) -> None:
    f = tmp_path / "engram.toml"
    f.write_text('worker_max_deliver = 7\n\n[nats]\nurl = "nats://file:4222"\nport = 4999\n')
    s = load_settings(f, environ={"ENGRAM_NATS_URL": "nats://env:4222"})
    assert s.nats_url == "nats://env:4222"  # env beats file
    assert s.nats_port == 4999 and s.worker_max_deliver == 7  # file beats defaults


def test_env_values_are_converted() -> None:
    s = load_settings(
        environ={"ENGRAM_WORKER_MAX_DELIVER": "4", "ENGRAM_WORKER_BACKOFF_S": "1, 2.5"}
    )
    assert s.worker_max_deliver == 4 and s.worker_backoff_s == [1.0, 2.5]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ENGRAM_NATS_PORT": "abc"}, "nats_port"),
        ({"ENGRAM_NATS_PORT": "70000"}, "nats_port"),
        ({"ENGRAM_STREAM_REPLICAS": "2"}, "stream_replicas"),
        ({"ENGRAM_LOG_FORMAT": "xml"}, "log_format"),
        ({"ENGRAM_NATS_SYNC": "sometimes"}, "nats_sync"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(environ=env)


def test_unknown_file_keys_are_rejected(tmp_path: Path) -> None:
    f = tmp_path / "engram.toml"
    f.write_text("[nats]\nulr = 'typo'\n")
    with pytest.raises(ConfigError, match="nats_ulr"):
        load_settings(f, environ={})


def test_secrets_are_masked_when_shown() -> None:
    s = load_settings(
        environ={
            "ENGRAM_NATS_PASSWORD": "hunter2",
            "ENGRAM_NATS_TOKEN": "tok",
            "ENGRAM_NATS_URL": "nats://alice:s3cret@host:4222",
        }
    )
    shown = s.shown()
    text = repr(shown)
    assert "hunter2" not in text and "tok'" not in text and "s3cret" not in text
    assert shown["nats_url"] == "nats://alice:********@host:4222"


def test_every_setting_is_read_somewhere() -> None:
    """A setting nothing reads is a promise the code does not keep: each field of Settings
    must be used by the code outside engram/config.py (or by a Settings property it uses)."""
    import inspect
    import re

    from engram.config import Settings

    properties = [v.fget for v in vars(Settings).values() if isinstance(v, property) and v.fget]

    root = Path(__file__).resolve().parents[1]
    code = "\n".join(
        f.read_text()
        for pkg in ("engram", "streams")
        for f in (root / pkg).rglob("*.py")
        if f != root / "engram" / "config.py"
    ) + "\n".join(inspect.getsource(f) for f in properties)
    unused = [name for name in Settings.__struct_fields__ if not re.search(rf"\.{name}\b", code)]
    assert unused == [], f"settings nothing reads: {unused}"


def test_removed_worker_settings_are_refused_in_a_file(tmp_path: Path) -> None:
    f = tmp_path / "engram.toml"
    f.write_text("[worker]\nbatch = 64\nconcurrency = 2\n")
    with pytest.raises(ConfigError, match="worker_batch, worker_concurrency"):
        load_settings(f, environ={})
