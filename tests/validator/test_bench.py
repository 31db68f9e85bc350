"""``engram bench validator`` on a small scale: every challenge passes, the audit of the
synthetic log is OK, and the figures the issue asks for are present."""

from __future__ import annotations

from engram.validator.bench import run


async def test_bench_validator_small() -> None:
    out = await run(miners=4, challenges=2, slowest_ms=50.0, rounds=10)
    assert out["challenges"] == 8 and out["passed"] == 8
    assert out["slowest_miner_s"] == 0.05 and out["round_s"] >= 0.05
    assert out["audit_ok"] and out["audit_epochs"] == 1 and out["audit_events"] > 4 * 10 * 6
    for key in ("round_s", "slowest_miner_s", "audit_events_per_s", "rss_mib"):
        assert out[key] > 0
