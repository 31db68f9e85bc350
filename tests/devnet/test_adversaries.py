"""Every adversary kind against honest miners in one in-process devnet (real miners,
nats-servers, local chain and validator; a smaller setup than the Must-show run)."""

from __future__ import annotations

from pathlib import Path

from engram.devnet import Devnet, DevnetConfig
from engram.devnet.adversaries import KINDS


async def test_each_adversary_ends_below_every_honest_miner(tmp_path: Path) -> None:
    kinds = ("lossy", "wrong", "copycat", "hash-only")
    assert set(kinds) | {"slow"} == set(KINDS)  # slow is in the Must-show run
    net = Devnet(
        DevnetConfig(miners=2, adversaries=kinds, epochs=2, fast=True, data_dir=tmp_path / "d")
    )
    out = await net.run(handle_signals=False)
    assert out["audit_ok"] is True, out["audit_problems"]
    rows = {r.label: r for r in net.view.rows.values() if r.label != "honest"}
    honest = [r for r in net.view.rows.values() if r.label == "honest"]
    assert len(honest) == 2 and set(rows) == set(kinds)
    floor = min(r.weight or 0.0 for r in honest)
    assert floor > 0.15, out["weights"]
    for kind, r in rows.items():
        assert (r.weight or 0.0) < floor, (kind, out["weights"])
    for r in honest:
        assert r.recall is not None and r.recall >= 0.75 and r.passed >= 0.9 * r.proofs > 0

    # hash-only: answers every v2 challenge, and every one fails; slashed to 0
    h = rows["hash-only"]
    assert h.proofs >= 5 and h.passed == 0 and h.slashed and h.weight == 0.0, h
    assert h.failures and all("v2" in reason for reason in h.failures), h.failures
    assert h.recall_max is not None and h.recall_max >= 0.75  # it does answer queries
    # copycat: no recall credit for probes it never stored, ever; no proof passes
    c = rows["copycat"]
    assert c.recall_max == 0.0 and c.proofs >= 5 and c.passed == 0 and c.weight == 0.0, c
    # wrong: random CIDs recall nothing, though it stores and proves honestly
    w = rows["wrong"]
    assert w.recall_max == 0.0 and w.passed >= 0.9 * w.proofs > 0, w
    # lossy: a part of its probes and challenges are lost
    lo = rows["lossy"]
    assert lo.proofs >= 8 and 0 < lo.passed < lo.proofs, lo
    assert lo.recall is not None and lo.recall < 0.9, lo
