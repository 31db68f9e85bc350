"""Storage challenges as three workers on the VALIDATION stream.

* :class:`Challenger` (``validator-challenger``): a ``challenge`` tick → for every miner
  of the metagraph with an axon, up to ``challenges_per_miner`` CIDs the ledger says it
  holds — half user memories routing assigned to it, half the validator's probes
  (:func:`sample_cids`) → ``ChallengeIssued``. The challenge id is
  ``<validator>:<tick seq>:<uid>:<i>`` and the CIDs are drawn with a seed from the tick, so
  a redelivered tick issues the same challenge ids (JetStream drops the duplicates).
* :class:`Dispatcher` (``validator-dispatcher``): ``ChallengeIssued`` → signed
  ``POST /ChallengeSynapse`` to the miner's axon, bounded concurrency, timeouts → a
  ``ChallengeAnswered`` carrying the challenge, the answer or the error, and the latency
  the validator measured.
* :class:`Verifier` (``validator-verifier``): ``ChallengeAnswered`` → engram-core's
  ``verify_proof`` (v2 by default, v1 when the challenge says so) against the vector in
  the probe ledger, at the time the answer arrived (so an audit gets the same verdict),
  rejecting expired challenges and a nonce answered under another challenge id →
  ``ProofVerified`` with the reason on failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from engram.chain.base import Chain
from engram.core import (
    Challenge,
    ChallengeExpired,
    CoreError,
    new_challenge,
    verify_proof,
)
from streams.events import (
    CadenceTicked,
    ChallengeAnswered,
    ChallengeIssued,
    Event,
    ProofVerified,
)
from streams.publisher import Publisher
from streams.worker import Delivery

from .config import ValidatorConfig
from .http import MinerHttp
from .ledger import ProbeLedger

__all__ = [
    "NOT_SENT",
    "VOID_REASONS",
    "Challenger",
    "Dispatcher",
    "SeenNonces",
    "Verifier",
    "sample_cids",
    "stale",
    "verdict",
]

log = structlog.get_logger("engram.validator.challenges")


#: A tick older than this is not acted on (the validator was down; later ticks follow).
#: Below JetStream's 120 s de-duplication window, so whatever a redelivered tick publishes
#: again carries the same message ids and is dropped by the server.
STALE_TICK_S = 90.0


def stale(tick: CadenceTicked, now: float | None = None) -> bool:
    return (time.time() if now is None else now) - tick.time > STALE_TICK_S


@dataclass
class Challenger:
    chain: Chain
    ledger: ProbeLedger
    publisher: Publisher
    config: ValidatorConfig
    validator_hotkey_hex: str

    async def handle(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if isinstance(d.event, CadenceTicked) and d.event.cadence == "challenge":
                if stale(d.event):
                    log.info("stale challenge tick skipped", seq=d.event.seq)
                    continue
                await self.issue(d.event)

    async def issue(self, tick: CadenceTicked) -> list[ChallengeIssued]:
        graph = await self.chain.metagraph()
        me = self.chain.hotkey
        round_id = f"{tick.validator}:challenge:{tick.seq}"
        out: list[ChallengeIssued] = []
        for n in graph.neurons:
            if n.axon is None or n.hotkey == me:
                continue
            probes = await self.ledger.cids_for(n.hotkey)
            routed = await self.ledger.routed_for(n.hotkey)
            if not probes and not routed:
                continue
            seed = hashlib.sha256(f"{round_id}:{n.hotkey}".encode()).digest()
            picks = sample_cids(
                random.Random(seed), probes, routed, self.config.challenges_per_miner
            )
            user = set(routed)
            for i, cid in enumerate(picks):
                c = new_challenge(cid, self.validator_hotkey_hex, ttl_s=self.config.challenge_ttl_s)
                out.append(
                    ChallengeIssued(
                        causation_id=tick.event_id,
                        challenge_id=f"{round_id}:{n.uid}:{i}",
                        miner_uid=n.uid,
                        miner_hotkey=n.hotkey,
                        cid=c.cid,
                        nonce_hex=c.nonce_hex,
                        expires_at=float(c.expires_at),
                        validator_hotkey_hex=c.validator_hotkey_hex,
                        proof_version=self.config.proof_version,
                        round_id=round_id,
                        miner_axon=n.axon,
                        replicated=cid in user,
                    )
                )
        if out:
            await self.publisher.publish_many(out)
        log.info("challenges issued", round_id=round_id, count=len(out))
        return out


def sample_cids(rng: random.Random, probes: list[str], routed: list[str], n: int) -> list[str]:
    """``n`` CIDs to challenge: half (rounded up) from the user memories routed to the
    miner, the rest from the validator's probes, topped up from either when one runs
    short. A miner cannot tell which will be asked, so it must keep both."""
    n = min(n, len(set(probes) | set(routed)))
    want_routed = min(len(routed), (n + 1) // 2)
    picks = rng.sample(routed, want_routed)
    chosen = set(picks)
    rest = [c for c in probes if c not in chosen]
    picks += rng.sample(rest, min(n - len(picks), len(rest)))
    if len(picks) < n:  # few probes: more user memories
        chosen = set(picks)
        more = [c for c in routed if c not in chosen]
        picks += rng.sample(more, min(n - len(picks), len(more)))
    return picks


@dataclass
class Dispatcher:
    http: MinerHttp
    publisher: Publisher

    async def handle(self, deliveries: list[Delivery]) -> None:
        issued = [d.event for d in deliveries if isinstance(d.event, ChallengeIssued)]
        answers = await asyncio.gather(*(self.dispatch(c) for c in issued))
        if answers:
            await self.publisher.publish_many(answers)

    async def dispatch(self, c: ChallengeIssued) -> ChallengeAnswered:
        if time.time() >= c.expires_at:
            # delivered too late (the validator was down): not the miner's fault
            return self._answered(c, None, None, 0.0, NOT_SENT, -1)
        payload = {
            "cid": c.cid,
            "nonce_hex": c.nonce_hex,
            "expires_at": int(c.expires_at),
            "validator_hotkey_hex": c.validator_hotkey_hex,
        }
        if c.proof_version != 2:
            payload["proof_version"] = c.proof_version
        reply = await self.http.post(
            c.miner_axon, "/ChallengeSynapse", payload, receiver=c.miner_hotkey
        )
        proof = reply.body.get("proof") if reply.ok else None
        ehash = reply.body.get("embedding_hash") if reply.ok else None
        error = reply.error
        if error is None and not isinstance(proof, str):
            error = "answer has no proof"
        return self._answered(
            c,
            proof if isinstance(proof, str) else None,
            ehash if isinstance(ehash, str) else None,
            reply.latency_ms,
            error,
            reply.status,
        )

    @staticmethod
    def _answered(
        c: ChallengeIssued,
        proof: str | None,
        ehash: str | None,
        latency_ms: float,
        error: str | None,
        status: int,
    ) -> ChallengeAnswered:
        return ChallengeAnswered(
            causation_id=c.event_id,
            challenge_id=c.challenge_id,
            miner_uid=c.miner_uid,
            miner_hotkey=c.miner_hotkey,
            embedding_hash=ehash,
            proof=proof,
            latency_ms=latency_ms,
            error=error,
            status=status,
            cid=c.cid,
            nonce_hex=c.nonce_hex,
            expires_at=c.expires_at,
            validator_hotkey_hex=c.validator_hotkey_hex,
            proof_version=c.proof_version,
            round_id=c.round_id,
            replicated=c.replicated,
        )


@dataclass
class SeenNonces:
    """Nonce → the challenge id that used it, forgotten after expiry. The same challenge id
    again is a redelivery (same verdict); another challenge id is a replay."""

    _seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    _pruned_at: float = 0.0

    def check(self, nonce_hex: str, challenge_id: str, expires_at: float, now: float) -> bool:
        """True if fine, False if the nonce was used by another challenge."""
        if now - self._pruned_at > 60.0:  # forget nonces an hour past their expiry
            self._pruned_at = now
            for k in [k for k, (_c, exp) in self._seen.items() if exp <= now - 3600]:
                del self._seen[k]
        key = nonce_hex.lower()
        prior = self._seen.get(key)
        if prior is not None and prior[0] != challenge_id:
            return False
        self._seen[key] = (challenge_id, expires_at)
        return True


#: ``ChallengeAnswered.error`` of a challenge the dispatcher did not send (expired first).
NOT_SENT = "not sent: expired before dispatch"
#: Reasons that void a verdict: the miner is not to blame.
VOID_REASONS = (NOT_SENT, "no ground truth for this cid")


def verdict(answer: ChallengeAnswered, vector: Any | None, seen: SeenNonces) -> tuple[bool, str]:
    """The verdict for one answer (pure given the vector): ``(passed, reason)``."""
    if answer.error == NOT_SENT:
        return False, NOT_SENT
    if answer.error:
        return False, f"no answer: {answer.error}"[:200]
    if answer.proof is None:
        return False, "no proof"
    if vector is None:
        return False, "no ground truth for this cid"
    if not seen.check(answer.nonce_hex, answer.challenge_id, answer.expires_at, answer.time):
        return False, "replayed nonce"
    challenge = Challenge(
        cid=answer.cid,
        nonce_hex=answer.nonce_hex,
        expires_at=int(answer.expires_at),
        validator_hotkey_hex=answer.validator_hotkey_hex,
    )
    try:
        ok = verify_proof(
            challenge, answer.proof, version=answer.proof_version, vec=vector, now=answer.time
        )
    except ChallengeExpired:
        return False, "expired: answered after expires_at"
    except CoreError as exc:
        return False, f"invalid: {exc}"[:200]
    if not ok:
        return False, f"wrong proof (v{answer.proof_version})"
    return True, ""


@dataclass
class Verifier:
    ledger: ProbeLedger
    publisher: Publisher
    seen: SeenNonces = field(default_factory=SeenNonces)

    async def handle(self, deliveries: list[Delivery]) -> None:
        out: list[Event] = []
        for d in deliveries:
            a = d.event
            if not isinstance(a, ChallengeAnswered):
                continue
            rec = await self.ledger.vector(a.cid) if a.cid else None
            passed, reason = verdict(a, rec.array() if rec else None, self.seen)
            out.append(
                ProofVerified(
                    causation_id=a.event_id,
                    challenge_id=a.challenge_id,
                    miner_uid=a.miner_uid,
                    passed=passed,
                    reason=reason,
                    cid=a.cid,
                    miner_hotkey=a.miner_hotkey,
                    round_id=a.round_id,
                    void=reason in VOID_REASONS,
                    replicated=a.replicated,
                )
            )
        if out:
            await self.publisher.publish_many(out)
