"""Scoring: pure, versioned decisions from measurements to weights (no I/O).

Rules (PROTOCOL.md, "Scoring"), version 1:

* ``latency_score(ms)`` is 1 at ≤ 100 ms, 0 at ≥ 500 ms, linear between. The validator
  measures latency itself; a timeout or error counts as the worst latency.
* ``recall`` of a round is the mean of recall@10 over *every* sampled query of the round;
  the round's latency score is the mean of the per-query latency scores.
* ``proof_success_rate`` is the fraction of passed challenges over the last
  ``proof_window`` verdicts (a rolling window; no verdict yet = 0).
* ``composite = 0.50·recall + 0.30·latency_score + 0.20·proof_success_rate``.
* Scores are smoothed: ``ema = alpha·composite + (1-alpha)·ema_prev`` (the first round starts
  from 0, so one lucky round cannot grab the full score).
* A miner whose proof rate is below 0.5 after at least 5 challenges is *slashed*: its EMA
  and its weight are 0 while that holds.
* Weights: EMA scores normalised to sum 1 over the metagraph's uids in ascending uid
  order; slashed or unknown uids get 0.

Every :class:`~streams.events.ScoreUpdated` and :class:`~streams.events.WeightsProposed`
records the ``scorer_version`` it was computed with; an audit asks :func:`scorer_for`
for that version, so a later rule change never rewrites history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streams.errors import InputError

__all__ = [
    "SCORER_VERSION",
    "MinerRound",
    "RoundScore",
    "Scorer",
    "ScoringParams",
    "UnknownScorerVersion",
    "composite",
    "ema",
    "fold_weights",
    "latency_score",
    "mean_latency_score",
    "mean_recall",
    "proof_rate",
    "scorer_for",
    "slash_reason",
]

#: The scoring rules in force; bump it (and add a Scorer to ``_SCORERS``) on any change.
SCORER_VERSION = 1


class UnknownScorerVersion(InputError):
    """An event names a scorer version this build does not know."""


@dataclass(frozen=True)
class ScoringParams:
    """The constants of one scorer version."""

    recall_weight: float = 0.50
    latency_weight: float = 0.30
    proof_weight: float = 0.20
    latency_full_ms: float = 100.0
    latency_zero_ms: float = 500.0
    ema_alpha: float = 0.3
    slash_below: float = 0.5
    slash_min_challenges: int = 5
    proof_window: int = 50


def latency_score(ms: float | None, p: ScoringParams = ScoringParams()) -> float:
    """1 at ≤ ``latency_full_ms``, 0 at ≥ ``latency_zero_ms``, linear between.

    ``None`` (a timeout or an error) and non-finite values score 0.
    """
    if ms is None or not math.isfinite(ms):
        return 0.0
    if ms <= p.latency_full_ms:
        return 1.0
    if ms >= p.latency_zero_ms:
        return 0.0
    return (p.latency_zero_ms - ms) / (p.latency_zero_ms - p.latency_full_ms)


def mean_recall(samples: Sequence[float]) -> float:
    """Mean recall@10 over every sampled query of a round (0 with no sample)."""
    if not samples:
        return 0.0
    return math.fsum(_clamp01(s) for s in samples) / len(samples)


def mean_latency_score(
    latencies_ms: Sequence[float | None], p: ScoringParams = ScoringParams()
) -> float:
    """Mean of the per-query latency scores of a round (0 with no query)."""
    if not latencies_ms:
        return 0.0
    return math.fsum(latency_score(ms, p) for ms in latencies_ms) / len(latencies_ms)


def proof_rate(verdicts: Sequence[bool], p: ScoringParams = ScoringParams()) -> float:
    """Fraction of passed challenges over the last ``proof_window`` verdicts."""
    window = verdicts[-p.proof_window :] if p.proof_window > 0 else verdicts
    if not window:
        return 0.0
    return sum(map(bool, window)) / len(window)


def slash_reason(
    verdicts: Sequence[bool], p: ScoringParams = ScoringParams(), challenges: int | None = None
) -> str:
    """Why the miner is slashed, or ``""`` if it is not. ``challenges`` is the miner's total
    count of verdicts when ``verdicts`` holds only the most recent ones."""
    window = verdicts[-p.proof_window :] if p.proof_window > 0 else verdicts
    total = len(verdicts) if challenges is None else challenges
    if total < p.slash_min_challenges:
        return ""
    rate = proof_rate(verdicts, p)
    if rate < p.slash_below:
        passed = sum(1 for v in window if v)
        return (
            f"proof rate {rate:.2f} < {p.slash_below} "
            f"({passed}/{len(window)} passed, {total} challenges)"
        )
    return ""


def composite(
    recall: float, latency: float, proofs: float, p: ScoringParams = ScoringParams()
) -> float:
    """``0.50·recall + 0.30·latency + 0.20·proof rate`` (each clamped to 0..1)."""
    return (
        p.recall_weight * _clamp01(recall)
        + p.latency_weight * _clamp01(latency)
        + p.proof_weight * _clamp01(proofs)
    )


def ema(previous: float | None, value: float, alpha: float) -> float:
    """Exponential moving average; ``previous=None`` starts from 0."""
    prev = 0.0 if previous is None else previous
    return alpha * value + (1.0 - alpha) * prev


@dataclass(frozen=True)
class MinerRound:
    """What the validator measured for one miner in one round."""

    recall_samples: tuple[float, ...] = ()
    latencies_ms: tuple[float | None, ...] = ()
    verdicts: tuple[bool, ...] = ()  # the most recent proof verdicts, oldest first
    challenges: int | None = None  # every verdict so far (default: len(verdicts))


@dataclass(frozen=True)
class RoundScore:
    recall: float
    latency_score: float
    proof_success_rate: float
    composite: float
    ema: float
    slashed: bool
    reason: str
    challenges: int
    scorer_version: int


@dataclass(frozen=True)
class Scorer:
    """The rules of one ``version``; pure and deterministic."""

    version: int
    params: ScoringParams = field(default_factory=ScoringParams)

    def score(self, measured: MinerRound, previous_ema: float | None) -> RoundScore:
        p = self.params
        recall = mean_recall(measured.recall_samples)
        lat = mean_latency_score(measured.latencies_ms, p)
        rate = proof_rate(measured.verdicts, p)
        comp = composite(recall, lat, rate, p)
        total = len(measured.verdicts) if measured.challenges is None else measured.challenges
        reason = slash_reason(measured.verdicts, p, total)
        smoothed = 0.0 if reason else ema(previous_ema, comp, p.ema_alpha)
        return RoundScore(
            recall=recall,
            latency_score=lat,
            proof_success_rate=rate,
            composite=comp,
            ema=smoothed,
            slashed=bool(reason),
            reason=reason,
            challenges=total,
            scorer_version=self.version,
        )

    def fold(
        self, uids: Iterable[int], emas: Mapping[int, float], slashed: Iterable[int] = ()
    ) -> tuple[list[int], list[float]]:
        return fold_weights(uids, emas, slashed)


def fold_weights(
    uids: Iterable[int], emas: Mapping[int, float], slashed: Iterable[int] = ()
) -> tuple[list[int], list[float]]:
    """Normalise EMA scores to weights over ``uids`` (the metagraph), ascending uid order.

    Slashed uids, uids without a score and non-positive or non-finite scores get 0. If no
    uid has a positive score every weight is 0 (the chain setter then sets nothing).
    """
    order = sorted(set(uids))
    cut = set(slashed)
    raw = []
    for uid in order:
        value = emas.get(uid, 0.0)
        ok = uid not in cut and math.isfinite(value) and value > 0.0
        raw.append(value if ok else 0.0)
    total = math.fsum(raw)
    if total <= 0.0:
        return order, [0.0] * len(order)
    return order, [v / total for v in raw]


_SCORERS: dict[int, Scorer] = {1: Scorer(version=1)}


def scorer_for(version: int = SCORER_VERSION) -> Scorer:
    """The scorer of a recorded version (raises :class:`UnknownScorerVersion`)."""
    try:
        return _SCORERS[version]
    except KeyError:
        raise UnknownScorerVersion(
            f"scorer version {version} is unknown (this build knows {sorted(_SCORERS)})"
        ) from None


def _clamp01(x: float) -> float:
    if not math.isfinite(x):
        return 0.0
    return min(max(x, 0.0), 1.0)
