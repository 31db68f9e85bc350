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
    f.write_text('worker_batch = 7\n\n[nats]\nurl = "nats://file:4222"\nport = 4999\n')
    s = load_settings(f, environ={"ENGRAM_NATS_URL": "nats://env:4222"})
    assert s.nats_url == "nats://env:4222"  # env beats file
    assert s.nats_port == 4999 and s.worker_batch == 7  # file beats defaults


def test_env_values_are_converted() -> None:
    s = load_settings(
        environ={"ENGRAM_WORKER_CONCURRENCY": "4", "ENGRAM_WORKER_BACKOFF_S": "1, 2.5"}
    )
    assert s.worker_concurrency == 4 and s.worker_backoff_s == [1.0, 2.5]


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
