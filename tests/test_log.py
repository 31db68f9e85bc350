"""Logs: JSON lines when not on a terminal, with the bound event ids."""

from __future__ import annotations

import io
import json

import structlog

from engram.log import configure_logging, get_logger


def test_json_logs_carry_context_when_not_a_terminal() -> None:
    out = io.StringIO()
    configure_logging("info", "auto", stream=out)
    try:
        with structlog.contextvars.bound_contextvars(event_id="ev-123", worker="embedder"):
            get_logger("t").info("batch done", n=3)
        get_logger("t").debug("hidden at info level")
    finally:
        configure_logging("info", "console")
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0]["event"] == "batch done" and lines[0]["event_id"] == "ev-123"
    assert (
        lines[0]["worker"] == "embedder" and lines[0]["level"] == "info" and "timestamp" in lines[0]
    )
