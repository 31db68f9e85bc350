"""The scorer: a projection over VALIDATION that turns each ``RecallSampled`` into one
``ScoreUpdated``, exactly once, across restarts.

:class:`ScoreBook` is the pure fold shared with the audit: proof verdicts per miner (in
stream order), the last EMA per miner, and the rounds already scored. When the projection
applies a ``RecallSampled`` for a (round, uid) without a ``ScoreUpdated`` yet, it
snapshots the round's input (its recall and latency samples, and the verdicts applied
*before* it) as pending. :class:`ScorerService` scores pending rounds one at a time in
stream order with the recorded scorer version and the miner's last EMA, publishes
``ScoreUpdated`` (message id ``score:<round>:<uid>``) and waits until the projection has
applied it before the next, so the next round's EMA starts from it.

A restart replays the stream: rounds whose ``ScoreUpdated`` is on the stream are done, the
others are pending again, so nothing is counted twice or lost. A uid that changes hotkey
(deregistered, taken by another miner) starts from scratch.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import structlog
from nats.js import JetStreamContext

from streams.events import Event, ProofVerified, RecallSampled, ScoreUpdated
from streams.projection import Projection, ProjectionRunner
from streams.publisher import Publisher

from .scoring import SCORER_VERSION, MinerRound, RoundScore, scorer_for

__all__ = ["Pending", "ScoreBook", "ScorerProjection", "ScorerService"]

log = structlog.get_logger("engram.validator.scorer")


@dataclass(frozen=True)
class Pending:
    seq: int
    sample: RecallSampled
    measured: MinerRound


#: Verdicts kept per miner: more than any scorer version's rolling window needs.
KEEP = 256
#: Challenge ids remembered to drop a verdict counted before.
SEEN_IDS = 200_000


@dataclass
class ScoreBook:
    """Verdicts, EMAs and scored rounds per miner uid, folded in stream order."""

    verdicts: dict[int, deque[bool]] = field(default_factory=dict)  # the newest KEEP
    counts: dict[int, int] = field(default_factory=dict)  # every verdict
    ema: dict[int, float] = field(default_factory=dict)
    slashed: dict[int, bool] = field(default_factory=dict)
    hotkeys: dict[int, str] = field(default_factory=dict)
    scored: set[tuple[str, int]] = field(default_factory=set)
    # challenge ids already counted (the newest SEEN_IDS): a verdict re-published beyond
    # JetStream's de-duplication window is not counted twice
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def _owner(self, uid: int, hotkey: str) -> None:
        if hotkey and self.hotkeys.get(uid, hotkey) != hotkey:
            self.verdicts.pop(uid, None)
            self.counts.pop(uid, None)
            self.ema.pop(uid, None)
            self.slashed.pop(uid, None)
        if hotkey:
            self.hotkeys[uid] = hotkey

    def on_verdict(self, e: ProofVerified) -> None:
        if e.void:  # not the miner's fault: not counted
            return
        if e.challenge_id in self.seen:
            return
        self.seen[e.challenge_id] = None
        if len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        self._owner(e.miner_uid, e.miner_hotkey)
        window = self.verdicts.get(e.miner_uid)
        if window is None:
            window = self.verdicts[e.miner_uid] = deque(maxlen=KEEP)
        window.append(e.passed)
        self.counts[e.miner_uid] = self.counts.get(e.miner_uid, 0) + 1

    def measured(self, e: RecallSampled) -> MinerRound:
        self._owner(e.miner_uid, e.miner_hotkey)
        recalls = tuple(e.recalls) if e.recalls else (e.recall_at_10,) * max(e.queries, 1)
        latencies = tuple(e.latencies_ms) if e.latencies_ms else (e.latency_ms,) * max(e.queries, 1)
        return MinerRound(
            recall_samples=recalls,
            latencies_ms=latencies,
            verdicts=tuple(self.verdicts.get(e.miner_uid, ())),
            challenges=self.counts.get(e.miner_uid, 0),
        )

    def on_score(self, e: ScoreUpdated) -> bool:
        """Apply a score; a second one for the same (round, uid) is ignored (False)."""
        return self.record(e.round_id, e.miner_uid, e.miner_hotkey, e.ema, e.slashed)

    def record(self, round_id: str, uid: int, hotkey: str, ema: float, slashed: bool) -> bool:
        if (round_id, uid) in self.scored:
            return False
        self._owner(uid, hotkey)
        self.ema[uid] = ema
        self.slashed[uid] = slashed
        self.scored.add((round_id, uid))
        return True

    def score(self, p: Pending, version: int = SCORER_VERSION) -> RoundScore:
        return scorer_for(version).score(p.measured, self.ema.get(p.sample.miner_uid))


def score_event(p: Pending, s: RoundScore) -> ScoreUpdated:
    return ScoreUpdated(
        causation_id=p.sample.event_id,
        miner_uid=p.sample.miner_uid,
        miner_hotkey=p.sample.miner_hotkey,
        round_id=p.sample.round_id,
        recall=s.recall,
        latency_score=s.latency_score,
        proof_success_rate=s.proof_success_rate,
        composite=s.composite,
        ema=s.ema,
        slashed=s.slashed,
        reason=s.reason,
        challenges=s.challenges,
        scorer_version=s.scorer_version,
    )


class ScorerProjection(Projection):
    stream = "VALIDATION"
    subjects = [ProofVerified.SUBJECT, RecallSampled.SUBJECT, ScoreUpdated.SUBJECT]

    def __init__(self) -> None:
        super().__init__()
        self.book = ScoreBook()
        self.pending: dict[tuple[str, int], Pending] = {}
        self.last: dict[int, ScoreUpdated] = {}  # the newest score per miner uid

    def apply(self, seq: int, event: Event) -> None:
        if isinstance(event, ProofVerified):
            self.book.on_verdict(event)
        elif isinstance(event, RecallSampled):
            key = (event.round_id, event.miner_uid)
            if key not in self.book.scored and key not in self.pending:
                self.pending[key] = Pending(seq, event, self.book.measured(event))
        elif isinstance(event, ScoreUpdated):
            if self.book.on_score(event):
                self.last[event.miner_uid] = event
            self.pending.pop((event.round_id, event.miner_uid), None)

    def reset(self) -> None:
        super().reset()
        self.book = ScoreBook()
        self.pending = {}
        self.last = {}


class ScorerService:
    """Follows the projection and publishes a ``ScoreUpdated`` per pending round."""

    def __init__(
        self,
        js: JetStreamContext,
        publisher: Publisher,
        *,
        scorer_version: int = SCORER_VERSION,
        poll_s: float = 0.05,
    ) -> None:
        scorer_for(scorer_version)  # refuse an unknown version at start
        self.projection = ScorerProjection()
        self.runner = ProjectionRunner(js, self.projection, snapshot_every_events=10**9)
        self.publisher = publisher
        self.version = scorer_version
        self.poll_s = poll_s
        self.published = 0

    async def score_pending(self) -> int:
        """Score every pending round in stream order; returns how many were published."""
        n = 0
        while self.projection.pending:
            key, p = min(self.projection.pending.items(), key=lambda kv: kv[1].seq)
            s = self.projection.book.score(p, self.version)
            ack = await self.publisher.publish(score_event(p, s))
            if not await self.runner.wait_for(ack.seq, timeout=30.0):
                raise TimeoutError(f"projection did not apply ScoreUpdated seq {ack.seq}")
            self.projection.pending.pop(key, None)  # (applied; a duplicate ack also lands here)
            n += 1
            self.published += 1
        return n

    async def run(self, stop: asyncio.Event) -> None:
        # the runner catches up before scoring: a round scored before a restart is only
        # known to be done once its ScoreUpdated has been applied
        await self.runner.run_beside(self.score_pending, stop, every_s=self.poll_s, what="scoring")
