"""Scoring rules as tables: latency, recall over the round, composite, EMA, slash, folding."""

from __future__ import annotations

import math

import pytest

from engram.validator.scoring import (
    SCORER_VERSION,
    MinerRound,
    ScoringParams,
    UnknownScorerVersion,
    composite,
    ema,
    fold_weights,
    latency_score,
    mean_latency_score,
    mean_recall,
    proof_rate,
    scorer_for,
    slash_reason,
)


@pytest.mark.parametrize(
    ("ms", "want"),
    [
        (0.0, 1.0),
        (50.0, 1.0),
        (100.0, 1.0),
        (100.4, 0.999),
        (200.0, 0.75),
        (300.0, 0.5),
        (400.0, 0.25),
        (499.0, 0.0025),
        (500.0, 0.0),
        (10_000.0, 0.0),
        (None, 0.0),
        (math.inf, 0.0),
        (math.nan, 0.0),
    ],
)
def test_latency_score_is_linear_between_100_and_500_ms(ms: float | None, want: float) -> None:
    assert latency_score(ms) == pytest.approx(want, abs=1e-9)


def test_recall_is_averaged_over_every_sample_of_the_round_not_the_last() -> None:
    assert mean_recall([1.0, 0.0, 0.5, 0.5]) == 0.5
    assert mean_recall([0.2]) == pytest.approx(0.2)
    assert mean_recall([]) == 0.0
    assert mean_recall([1.5, -1.0]) == 0.5  # clamped to 0..1 per sample
    assert mean_latency_score([50.0, 300.0, None]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("recall", "lat", "proofs", "want"),
    [
        (1.0, 1.0, 1.0, 1.0),
        (0.0, 0.0, 0.0, 0.0),
        (1.0, 0.0, 0.0, 0.5),
        (0.0, 1.0, 0.0, 0.3),
        (0.0, 0.0, 1.0, 0.2),
        (0.8, 0.5, 0.9, 0.4 + 0.15 + 0.18),
    ],
)
def test_composite_weights_are_50_30_20(
    recall: float, lat: float, proofs: float, want: float
) -> None:
    assert composite(recall, lat, proofs) == pytest.approx(want)


def test_ema_starts_from_zero_and_moves_by_alpha() -> None:
    assert ema(None, 1.0, 0.3) == pytest.approx(0.3)
    assert ema(0.3, 1.0, 0.3) == pytest.approx(0.51)
    assert ema(0.5, 0.5, 0.3) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("verdicts", "rate", "slashed"),
    [
        ((), 0.0, False),
        ((False,) * 4, 0.0, False),  # fewer than 5 challenges: never slashed
        ((False,) * 5, 0.0, True),
        ((True, True, False, False, False), 0.4, True),
        ((True, True, True, False, False), 0.6, False),
        ((True, False) * 5, 0.5, False),  # exactly 0.5 is not below
        ((True,) * 3 + (False,) * 3, 0.5, False),
    ],
)
def test_proof_rate_and_slash(verdicts: tuple[bool, ...], rate: float, slashed: bool) -> None:
    assert proof_rate(verdicts) == pytest.approx(rate)
    assert bool(slash_reason(verdicts)) is slashed


def test_proof_rate_is_rolling_over_the_window() -> None:
    p = ScoringParams(proof_window=4)
    verdicts = (False,) * 10 + (True,) * 4
    assert proof_rate(verdicts, p) == 1.0
    assert slash_reason(verdicts, p) == ""
    assert "0.00" in slash_reason((True,) * 10 + (False,) * 4, p)


def test_scorer_round_records_version_and_slashes_to_zero() -> None:
    s = scorer_for(SCORER_VERSION)
    honest = s.score(
        MinerRound(recall_samples=(1.0, 0.8), latencies_ms=(50.0, 300.0), verdicts=(True,) * 5),
        previous_ema=0.5,
    )
    assert honest.recall == pytest.approx(0.9)
    assert honest.latency_score == pytest.approx(0.75)
    assert honest.proof_success_rate == 1.0
    assert honest.composite == pytest.approx(0.45 + 0.225 + 0.2)
    assert honest.ema == pytest.approx(0.3 * 0.875 + 0.7 * 0.5)
    assert honest.scorer_version == SCORER_VERSION and not honest.slashed

    cheat = s.score(
        MinerRound(recall_samples=(1.0,), latencies_ms=(10.0,), verdicts=(False,) * 5),
        previous_ema=0.9,
    )
    assert cheat.slashed and cheat.ema == 0.0 and "proof rate" in cheat.reason
    assert cheat.composite == pytest.approx(0.8)  # the composite is kept for the audit


def test_unknown_scorer_version_is_refused() -> None:
    with pytest.raises(UnknownScorerVersion):
        scorer_for(999)


@pytest.mark.parametrize(
    ("uids", "emas", "slashed", "want_uids", "want"),
    [
        ([2, 0, 1], {0: 1.0, 1: 1.0, 2: 2.0}, (), [0, 1, 2], [0.25, 0.25, 0.5]),
        ([0, 1, 2], {0: 1.0, 1: 1.0, 2: 2.0}, (2,), [0, 1, 2], [0.5, 0.5, 0.0]),
        ([0, 1], {0: 0.5, 7: 9.0}, (), [0, 1], [1.0, 0.0]),  # uid 7 left the metagraph
        ([0, 1], {}, (), [0, 1], [0.0, 0.0]),
        ([0, 1], {0: math.nan, 1: -1.0}, (), [0, 1], [0.0, 0.0]),
        ([], {0: 1.0}, (), [], []),
        ([3, 3, 1], {1: 1.0, 3: 3.0}, (), [1, 3], [0.25, 0.75]),
    ],
)
def test_fold_weights(
    uids: list[int],
    emas: dict[int, float],
    slashed: tuple[int, ...],
    want_uids: list[int],
    want: list[float],
) -> None:
    got_uids, got = fold_weights(uids, emas, slashed)
    assert got_uids == want_uids
    assert got == pytest.approx(want)
    assert not got or sum(got) == pytest.approx(1.0) or sum(got) == 0.0


def test_slash_counts_every_challenge_when_only_a_window_is_kept() -> None:
    from engram.validator.scorer import KEEP

    assert scorer_for(SCORER_VERSION).params.proof_window <= KEEP
    s = scorer_for(SCORER_VERSION)
    window_only = MinerRound(verdicts=(False,) * 3, challenges=40)
    got = s.score(window_only, None)
    assert got.slashed and got.challenges == 40 and "40 challenges" in got.reason
    assert not s.score(MinerRound(verdicts=(False,) * 3), None).slashed  # only 3 known
