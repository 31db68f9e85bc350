"""Weights: the folder proposes a weight set each epoch, the setter puts it on chain.

* :class:`FolderProjection` follows VALIDATION (``ScoreUpdated`` and the ``weights``
  ticks). At a tick it snapshots every miner's EMA and slash flag as applied *before* the
  tick, so the proposal depends only on the log. :class:`WeightFolder` folds the snapshot
  over the metagraph's uids (``scoring.fold_weights``) and publishes one
  ``WeightsProposed`` per epoch (message id ``weights-proposed:<netuid>:<epoch>``); after
  a restart the epochs already on the WEIGHTS stream are skipped, and of several missed
  epochs only the newest is proposed.
* :class:`ChainSetter` (worker ``validator-weights-setter``): ``WeightsProposed`` →
  ``Chain.set_weights``; a chain that does not answer is retried with
  :class:`streams.retry.Backoff`; the outcome is a ``WeightsSet`` (block and extrinsic or
  local id on success, the reason on failure).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog
from nats.js import JetStreamContext

from engram.chain.base import Chain, ChainRefused, ChainUnavailable
from streams.events import CadenceTicked, Event, ScoreUpdated, WeightsProposed, WeightsSet
from streams.projection import Projection, ProjectionRunner
from streams.publisher import Publisher
from streams.replay import replay_raw
from streams.retry import Backoff, retry
from streams.worker import Delivery

from .scoring import SCORER_VERSION, scorer_for

__all__ = ["ChainSetter", "EpochSnapshot", "FolderProjection", "WeightFolder", "propose"]

log = structlog.get_logger("engram.validator.weights")


@dataclass(frozen=True)
class EpochSnapshot:
    epoch: int
    seq: int
    tick_id: str
    ema: dict[int, float]
    slashed: frozenset[int]


class FolderProjection(Projection):
    stream = "VALIDATION"
    subjects = [ScoreUpdated.SUBJECT, f"{CadenceTicked.SUBJECT}.weights"]

    def __init__(self, validator: str) -> None:
        super().__init__()
        self.validator = validator
        self.ema: dict[int, float] = {}
        self.slashed: dict[int, bool] = {}
        self.scored: set[tuple[str, int]] = set()
        self.epochs: dict[int, EpochSnapshot] = {}

    def apply(self, seq: int, event: Event) -> None:
        if isinstance(event, ScoreUpdated):
            key = (event.round_id, event.miner_uid)
            if key in self.scored:
                return
            self.scored.add(key)
            self.ema[event.miner_uid] = event.ema
            self.slashed[event.miner_uid] = event.slashed
        elif (
            isinstance(event, CadenceTicked)
            and event.cadence == "weights"
            and event.validator == self.validator
            and event.seq not in self.epochs
        ):
            self.epochs[event.seq] = EpochSnapshot(
                epoch=event.seq,
                seq=seq,
                tick_id=event.event_id,
                ema=dict(self.ema),
                slashed=frozenset(u for u, s in self.slashed.items() if s),
            )

    def reset(self) -> None:
        super().reset()
        self.ema, self.slashed, self.scored, self.epochs = {}, {}, set(), {}


def propose(
    snap: EpochSnapshot, uids: list[int], netuid: int, block: int, version: int = SCORER_VERSION
) -> WeightsProposed:
    order, weights = scorer_for(version).fold(uids, snap.ema, snap.slashed)
    return WeightsProposed(
        causation_id=snap.tick_id,
        epoch=snap.epoch,
        uids=order,
        weights=weights,
        scorer_version=version,
        block=block,
        netuid=netuid,
    )


class WeightFolder:
    def __init__(
        self,
        js: JetStreamContext,
        publisher: Publisher,
        chain: Chain,
        *,
        validator: str,
        scorer_version: int = SCORER_VERSION,
        poll_s: float = 0.1,
    ) -> None:
        self.js = js
        self.publisher = publisher
        self.chain = chain
        self.projection = FolderProjection(validator)
        self.runner = ProjectionRunner(js, self.projection, snapshot_every_events=10**9)
        self.version = scorer_version
        self.poll_s = poll_s
        self.proposed: set[int] = set()
        self.published: list[WeightsProposed] = []

    async def load_proposed(self) -> None:
        """Epochs already proposed on this netuid (from the WEIGHTS stream)."""
        async for item in replay_raw(self.js, "WEIGHTS", subjects=[WeightsProposed.SUBJECT]):
            e = item.event
            if isinstance(e, WeightsProposed) and e.netuid == self.chain.netuid:
                self.proposed.add(e.epoch)

    async def fold_due(self) -> list[WeightsProposed]:
        """Propose the newest epoch not yet proposed (older missed ones are skipped)."""
        due = [e for e in self.projection.epochs if e not in self.proposed]
        if not due:
            return []
        newest = max(due)
        self.proposed.update(e for e in due if e != newest)
        graph = await self.chain.metagraph()
        miners = [n.uid for n in graph.neurons if n.hotkey != self.chain.hotkey]
        event = propose(
            self.projection.epochs[newest], miners, self.chain.netuid, graph.block, self.version
        )
        await self.publisher.publish(event)
        self.proposed.add(newest)
        self.published.append(event)
        log.info("weights proposed", epoch=newest, uids=event.uids, weights=event.weights)
        return [event]

    async def run(self, stop: asyncio.Event) -> None:
        await self.load_proposed()
        await self.runner.run_beside(
            self.fold_due, stop, every_s=self.poll_s, what="weight folding"
        )


@dataclass
class ChainSetter:
    chain: Chain
    publisher: Publisher
    attempts: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=60.0))
    version_key: int = 0

    done: set[tuple[int, int]] = field(default_factory=set)  # (netuid, epoch) set on chain

    async def load_done(self, js: JetStreamContext) -> None:
        """Epochs already set on chain (from WEIGHTS), so a redelivered proposal is not
        sent to the chain twice."""
        async for item in replay_raw(js, "WEIGHTS", subjects=[WeightsSet.SUBJECT]):
            e = item.event
            if isinstance(e, WeightsSet) and e.success:
                self.done.add((e.netuid, e.epoch))

    async def handle(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            p = d.event
            if not isinstance(p, WeightsProposed):
                continue
            newest = max((e for n, e in self.done if n == p.netuid), default=None)
            if (p.netuid, p.epoch) in self.done or (newest is not None and p.epoch < newest):
                log.info("weights already set for this or a newer epoch", epoch=p.epoch)
                continue
            outcome = await self.set(p)
            await self.publisher.publish(outcome)
            if outcome.success:
                self.done.add((p.netuid, p.epoch))

    async def set(self, p: WeightsProposed) -> WeightsSet:
        tries = 0

        async def once() -> WeightsSet:
            nonlocal tries
            tries += 1
            receipt = await self.chain.set_weights(p.uids, p.weights, version_key=self.version_key)
            return WeightsSet(
                causation_id=p.event_id,
                epoch=p.epoch,
                success=True,
                chain=self.chain.name,
                message=receipt.message,
                block=receipt.block,
                extrinsic=receipt.extrinsic,
                attempts=tries,
                netuid=p.netuid,
            )

        def failed(message: str) -> WeightsSet:
            return WeightsSet(
                causation_id=p.event_id,
                epoch=p.epoch,
                success=False,
                chain=self.chain.name,
                message=message[:300],
                attempts=tries,
                netuid=p.netuid,
            )

        if not any(w > 0 for w in p.weights):
            return failed("all weights are zero; nothing to set")
        try:
            return await retry(
                once,
                what=f"set weights epoch {p.epoch}",
                retry_on=(ChainUnavailable,),
                backoff=self.backoff,
                attempts=self.attempts,
            )
        except ChainRefused as exc:
            return failed(f"refused: {exc}")
        except ChainUnavailable as exc:
            return failed(f"chain unavailable after {tries} attempts: {exc}")
