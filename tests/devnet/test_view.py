"""The devnet's view: a pure fold of validator events into rows (no I/O), and the table."""

from __future__ import annotations

import pytest
from rich.console import Console

from engram.devnet import DevnetConfig, DevnetView, MinerRow
from engram.devnet.view import render
from streams.errors import InputError
from streams.events import ProofVerified, RecallSampled, ScoreUpdated, WeightsProposed, WeightsSet


def _view() -> DevnetView:
    return DevnetView(
        rows={0: MinerRow(0, "hk0", "honest", "a:1"), 1: MinerRow(1, "hk1", "hash-only", "a:2")}
    )


def test_epochs_count_accepted_weight_sets_that_give_a_weight() -> None:
    v = _view()
    v.apply(WeightsProposed(epoch=10, uids=[0, 1], weights=[0.0, 0.0]))
    v.apply(WeightsSet(epoch=10, success=True))  # before any score: not an epoch
    v.apply(WeightsProposed(epoch=11, uids=[0, 1], weights=[1.0, 0.0]))
    v.apply(WeightsSet(epoch=11, success=False, message="refused"))  # refused: not yet
    assert v.epochs == [] and v.rows[0].weight is None
    v.apply(WeightsSet(epoch=11, success=True, attempts=2))
    v.apply(WeightsSet(epoch=11, success=True, attempts=2))  # a redelivery counts once
    assert v.epochs == [11] and v.rows[0].weight == 1.0 and v.rows[1].weight == 0.0


def test_rows_follow_recall_proofs_and_scores() -> None:
    v = _view()
    v.apply(RecallSampled(round_id="r1", miner_uid=0, recall_at_10=0.75, latency_ms=40.0))
    v.apply(RecallSampled(round_id="r2", miner_uid=0, recall_at_10=0.5, latency_ms=60.0))
    v.apply(
        ProofVerified(challenge_id="c1", miner_uid=1, passed=False, reason="v2 mismatch", cid="x")
    )
    v.apply(ProofVerified(challenge_id="c2", miner_uid=1, passed=True, cid="y"))
    v.apply(ProofVerified(challenge_id="c3", miner_uid=1, passed=False, cid="z", void=True))
    v.apply(
        ScoreUpdated(
            miner_uid=1, recall=1.0, latency_score=1.0, proof_success_rate=0.5, composite=0.9,
            ema=0.0, slashed=True, reason="proof rate",
        )
    )  # fmt: skip
    r0, r1 = v.rows[0], v.rows[1]
    assert (r0.recall, r0.recall_max, r0.latency_ms) == (0.5, 0.75, 60.0)
    assert (r1.passed, r1.proofs, r1.replicas_ok) == (1, 2, 1)  # the void one is not counted
    assert r1.failures == {"v2 mismatch": 1} and r1.slashed and r1.score == 0.0
    w = v.weights()
    assert w["1"]["label"] == "hash-only" and w["1"]["weight"] == 0.0 and w["1"]["slashed"]
    console = Console(width=120, record=True)
    console.print(render(v))
    text = console.export_text()
    assert "hash-only" in text and "slashed" in text and "1/2" in text


def test_config_refuses_what_cannot_run() -> None:
    with pytest.raises(InputError):
        DevnetConfig(adversaries=("sneaky",))
    with pytest.raises(InputError):
        DevnetConfig(miners=0, adversaries=("copycat",))
    with pytest.raises(InputError):
        DevnetConfig(miners=0)


def test_the_command_offers_every_adversary_kind() -> None:
    import click

    from engram.cli.devnet import devnet
    from engram.devnet.adversaries import KINDS

    (opt,) = [p for p in devnet.params if p.name == "adversaries"]
    assert isinstance(opt.type, click.Choice) and tuple(opt.type.choices) == KINDS
