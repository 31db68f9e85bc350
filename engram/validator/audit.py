"""The audit: replay VALIDATION from the start, recompute every score and weight set with
the scorer version recorded in the events, and say whether each equals what was recorded.

Independent of the live pipeline's state: the audit folds the log itself
(:class:`~engram.validator.scorer.ScoreBook`), recomputes each ``ScoreUpdated`` from the
``RecallSampled`` it answers and the verdicts before it, and carries its *own* EMAs
forward, so one tampered score is reported and does not poison the rest. Each recorded
``WeightsProposed`` is recomputed from the recomputed EMAs at its epoch's tick over the
uids it names; floats must be equal, not close (the same arithmetic in the same order).
Every miner's weight is explained: recall, latency score, proof rate, slashed and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from streams.errors import Unavailable
from streams.events import (
    CadenceTicked,
    Event,
    EventDecodeError,
    ProofVerified,
    RecallSampled,
    ScoreUpdated,
    WeightsProposed,
    WeightsSet,
    decode,
)

from .scorer import Pending, ScoreBook
from .scoring import RoundScore, UnknownScorerVersion, scorer_for

__all__ = ["AuditReport", "EpochAudit", "MinerExplanation", "audit", "audit_events"]

_FIELDS = ("recall", "latency_score", "proof_success_rate", "composite", "ema", "slashed")


@dataclass(frozen=True)
class MinerExplanation:
    uid: int
    hotkey: str
    weight: float
    ema: float
    recall: float
    latency_score: float
    proof_success_rate: float
    challenges: int
    slashed: bool
    reason: str


@dataclass
class EpochAudit:
    epoch: int
    scorer_version: int
    uids: list[int]
    recorded: list[float]
    recomputed: list[float]
    ok: bool
    set_on_chain: bool | None = None
    miners: list[MinerExplanation] = field(default_factory=list)
    problem: str = ""


@dataclass
class AuditReport:
    ok: bool
    epochs: list[EpochAudit]
    score_mismatches: list[str]
    scores_checked: int
    events: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Snapshot:
    ema: dict[int, float]
    slashed: dict[int, bool]
    last: dict[int, tuple[str, RoundScore]]


def audit_events(
    validation: Iterable[tuple[int, Event]],
    weights: Iterable[Event],
    *,
    validator: str | None = None,
    epoch: int | None = None,
) -> AuditReport:
    """The audit over events already read (``validation`` in stream order, with seqs)."""
    book = ScoreBook()
    pending: dict[tuple[str, int], Pending] = {}
    last: dict[int, tuple[str, RoundScore]] = {}
    snapshots: dict[int, _Snapshot] = {}
    mismatches: list[str] = []
    checked = 0
    count = 0
    for seq, e in validation:
        count += 1
        if isinstance(e, ProofVerified):
            book.on_verdict(e)
        elif isinstance(e, RecallSampled):
            key = (e.round_id, e.miner_uid)
            if key not in book.scored and key not in pending:
                pending[key] = Pending(seq, e, book.measured(e))
        elif isinstance(e, ScoreUpdated):
            key = (e.round_id, e.miner_uid)
            if key in book.scored:
                continue  # a duplicate: the pipeline ignores it too
            p = pending.pop(key, None)
            if p is None:
                mismatches.append(f"seq {seq}: ScoreUpdated {key} answers no RecallSampled")
                continue
            try:
                s = scorer_for(e.scorer_version).score(p.measured, book.ema.get(e.miner_uid))
            except UnknownScorerVersion as exc:
                mismatches.append(f"seq {seq}: {exc}")
                continue
            checked += 1
            diff = [f for f in _FIELDS if getattr(s, f) != getattr(e, f)]
            if diff:
                mismatches.append(
                    f"seq {seq}: ScoreUpdated round {e.round_id} uid {e.miner_uid}: "
                    + ", ".join(
                        f"{f} recorded {getattr(e, f)!r} != {getattr(s, f)!r}" for f in diff
                    )
                )
            # carry the recomputed EMA forward
            book.record(e.round_id, e.miner_uid, e.miner_hotkey, s.ema, s.slashed)
            last[e.miner_uid] = (e.miner_hotkey, s)
        elif (
            isinstance(e, CadenceTicked)
            and e.cadence == "weights"
            and (validator is None or e.validator == validator)
            and e.seq not in snapshots
        ):
            snapshots[e.seq] = _Snapshot(dict(book.ema), dict(book.slashed), dict(last))

    epochs: list[EpochAudit] = []
    sets = {w.epoch: w.success for w in weights if isinstance(w, WeightsSet) and w.success}
    for w in weights:
        if not isinstance(w, WeightsProposed) or (epoch is not None and w.epoch != epoch):
            continue
        snap = snapshots.get(w.epoch)
        if snap is None:
            epochs.append(
                EpochAudit(
                    w.epoch,
                    w.scorer_version,
                    w.uids,
                    w.weights,
                    [],
                    False,
                    problem="no weights tick for this epoch in VALIDATION",
                )
            )
            continue
        try:
            scorer = scorer_for(w.scorer_version)
        except UnknownScorerVersion as exc:
            epochs.append(
                EpochAudit(
                    w.epoch, w.scorer_version, w.uids, w.weights, [], False, problem=str(exc)
                )
            )
            continue
        slashed = [u for u, s in snap.slashed.items() if s]
        uids, recomputed = scorer.fold(w.uids, snap.ema, slashed)
        ok = uids == w.uids and recomputed == w.weights
        miners = []
        for uid, weight in zip(uids, recomputed, strict=True):
            hotkey, s = snap.last.get(uid, ("", None))  # type: ignore[assignment]
            miners.append(
                MinerExplanation(
                    uid=uid,
                    hotkey=hotkey,
                    weight=weight,
                    ema=snap.ema.get(uid, 0.0),
                    recall=s.recall if s else 0.0,
                    latency_score=s.latency_score if s else 0.0,
                    proof_success_rate=s.proof_success_rate if s else 0.0,
                    challenges=s.challenges if s else 0,
                    slashed=s.slashed if s else False,
                    reason=(s.reason if s else "never scored"),
                )
            )
        epochs.append(
            EpochAudit(
                epoch=w.epoch,
                scorer_version=w.scorer_version,
                uids=w.uids,
                recorded=w.weights,
                recomputed=recomputed,
                ok=ok,
                set_on_chain=sets.get(w.epoch, False),
                miners=miners,
                problem="" if ok else "recomputed weights differ from the recorded ones",
            )
        )
    ok = not mismatches and all(e.ok for e in epochs)
    return AuditReport(ok, epochs, mismatches, checked, count)


def _stream_seq(reply: str) -> int:
    """The stream sequence from a JetStream delivery's reply subject (``$JS.ACK.…``, the
    9-token form or the 12-token form with domain and account hash)."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


async def read_stream(
    js: JetStreamContext, stream: str, *, stall_s: float = 10.0
) -> list[tuple[int, Event]]:
    """Every event of ``stream`` from sequence 1 up to its last sequence now, in order.

    A throwaway push consumer (no acks, in memory) delivering to a plain subscription, the
    sequence read from the reply subject: several times faster than pull fetches (nats-py
    pays a timed queue get and a metadata parse per message), and the audit reads whole
    streams. Complete when as many messages arrived as the stream held; a stall raises
    :class:`streams.errors.Unavailable`. Messages that are not events are skipped (the
    projections skip them too).
    """
    info = await js.stream_info(stream)
    end, expected = info.state.last_seq, info.state.messages
    if expected == 0:
        return []
    raw: dict[int, bytes] = {}
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        if not msg.reply:
            return
        seq = _stream_seq(msg.reply)
        if seq <= end:
            raw[seq] = msg.data
            if len(raw) >= expected:
                done.set()

    nc = js._nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
    name = f"audit-{uuid.uuid4().hex[:16]}"
    try:
        await js.add_consumer(
            stream,
            config=api.ConsumerConfig(
                name=name,
                deliver_subject=inbox,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.NONE,
                mem_storage=True,
                inactive_threshold=30.0,
            ),
        )
        have = -1
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), stall_s)
            if not done.is_set() and len(raw) == have:
                raise Unavailable(f"reading {stream} stalled at {len(raw)}/{expected} messages")
            have = len(raw)
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    out: list[tuple[int, Event]] = []
    for seq in sorted(raw):
        try:
            out.append((seq, decode(raw[seq])))
        except EventDecodeError:
            continue
    return out


async def audit(
    js: JetStreamContext, *, validator: str | None = None, epoch: int | None = None
) -> AuditReport:
    """Replay VALIDATION and WEIGHTS from sequence 1 and audit them."""
    validation = await read_stream(js, "VALIDATION")
    weights = [e for _seq, e in await read_stream(js, "WEIGHTS")]
    return audit_events(validation, weights, validator=validator, epoch=epoch)
