"""Streams and consumers as data, and an idempotent ``ensure`` that creates or updates them."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from .errors import EngramError, Unavailable
from .retry import retry

__all__ = [
    "CONSUMERS",
    "STREAMS",
    "ConsumerSpec",
    "StreamSpec",
    "TopologyError",
    "consumer",
    "ensure",
    "ensure_consumer",
    "stream_for",
]


T = TypeVar("T")


class TopologyError(EngramError):
    """The server refused a stream as configured; the message names the stream, what we
    asked for, what it has, and the server's own answer."""


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str = ""
    max_age_s: float = 0.0  # 0 = keep forever (the log is the source of truth)
    max_bytes: int = -1
    duplicate_window_s: float = 120.0  # Nats-Msg-Id de-duplication window

    def config(self, replicas: int = 1) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            description=self.description or None,
            subjects=list(self.subjects),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            num_replicas=replicas,
            allow_direct=True,
            # atomic batches: many events stored in one write (one fsync; streams/publisher)
            allow_atomic=True,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer: one per worker kind; many processes may share it."""

    durable: str
    stream: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_ack_pending: int = 1024
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def config(self, replicas: int = 1) -> api.ConsumerConfig:
        filters = list(self.filter_subjects)
        return api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            description=self.description or None,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            # Unlimited at the server: the worker runner itself counts deliveries and moves a
            # message that keeps failing to the dead-letter stream, so none is dropped silently.
            max_deliver=-1,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
            max_ack_pending=self.max_ack_pending,
            num_replicas=replicas,
        )


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("INGEST", ("engram.ingest.>",), "IngestRequested: texts clients asked to remember"),
    StreamSpec(
        "BLOBS", ("engram.blob.>",), "BlobReceived, BlobArchived, BlobArchiveFailed, BlobDescribed"
    ),
    StreamSpec(
        "MEMORY",
        ("engram.memory.>",),
        "Embedded, Deleted, IngestRejected: the source of truth for the index",
    ),
    StreamSpec(
        "NOTICES",
        ("engram.notice.>",),
        "Stored: derived notices, published once each (never replayed into state)",
    ),
    StreamSpec(
        "VALIDATION", ("engram.validation.>",), "challenges, verdicts, recall samples, scores"
    ),
    StreamSpec("WEIGHTS", ("engram.weights.>",), "WeightsProposed, WeightsSet"),
    StreamSpec(
        "BRAIN",
        ("engram.brain.>",),
        "the brain's prompt flow: prompts, recalls, completions, scores, feedback, swaps",
    ),
    StreamSpec(
        "DLQ", ("engram.dlq.>",), "DeadLettered: events a worker gave up on, with the cause"
    ),
)

CONSUMERS: tuple[ConsumerSpec, ...] = (
    ConsumerSpec("embedder", "INGEST", ("engram.ingest.requested",), description="embed worker"),
    # the validator (engram/validator/): one durable consumer per step
    ConsumerSpec(
        "validator-challenger",
        "VALIDATION",
        ("engram.validation.tick.challenge",),
        description="challenge tick -> ChallengeIssued per miner",
    ),
    ConsumerSpec(
        "validator-evaluator",
        "VALIDATION",
        ("engram.validation.tick.evaluation",),
        ack_wait_s=120.0,
        description="evaluation tick -> probes ingested and queried -> RecallSampled",
    ),
    ConsumerSpec(
        "validator-dispatcher",
        "VALIDATION",
        ("engram.validation.challenge.issued",),
        ack_wait_s=60.0,
        description="ChallengeIssued -> signed HTTP to the miner -> ChallengeAnswered",
    ),
    ConsumerSpec(
        "validator-verifier",
        "VALIDATION",
        ("engram.validation.challenge.answered",),
        description="ChallengeAnswered -> ProofVerified",
    ),
    ConsumerSpec(
        "validator-repair-planner",
        "VALIDATION",
        ("engram.validation.tick.challenge",),
        description="challenge tick -> RepairRequested per CID short of replicas",
    ),
    ConsumerSpec(
        "validator-repairer",
        "VALIDATION",
        ("engram.validation.repair.requested",),
        ack_wait_s=120.0,
        description="RepairRequested -> copy from a proven replica -> Repaired",
    ),
    ConsumerSpec(
        "validator-weights-setter",
        "WEIGHTS",
        ("engram.weights.proposed",),
        ack_wait_s=120.0,
        description="WeightsProposed -> the chain -> WeightsSet",
    ),
)


def consumer(durable: str) -> ConsumerSpec:
    """The consumer spec named ``durable``."""
    for spec in CONSUMERS:
        if spec.durable == durable:
            return spec
    raise KeyError(f"no consumer {durable!r}")


def stream_for(subject: str) -> StreamSpec:
    """The stream whose subjects capture ``subject``."""
    for spec in STREAMS:
        for pattern in spec.subjects:
            prefix = pattern.removesuffix(">")
            if subject.startswith(prefix) or subject == prefix.rstrip("."):
                return spec
    raise KeyError(f"no stream captures subject {subject!r}")


def _differs(want: api.StreamConfig, have: api.StreamConfig) -> bool:
    return (
        sorted(want.subjects or []) != sorted(have.subjects or [])
        or (want.max_age or 0) != (have.max_age or 0)
        or (want.duplicate_window or 0) != (have.duplicate_window or 0)
        or (want.description or None) != (have.description or None)
        or (want.max_bytes or -1) != (have.max_bytes or -1)
        or (want.num_replicas or 1) != (have.num_replicas or 1)
        or bool(want.allow_atomic) != bool(have.allow_atomic)
    )


def _refused(name: str, want: int, have: int | None, exc: APIError) -> TopologyError:
    actual = "absent" if have is None else f"R{have}"
    hint = (
        " (a single nats-server holds R1 only; R3/R5 need a JetStream cluster)"
        if want > 1 and exc.err_code == 10074
        else ""
    )
    return TopologyError(
        f"stream {name}: wanted R{want} replicas, has {actual}; "
        f"the server answered: {exc.description or exc} (code {exc.code}, "
        f"err_code {exc.err_code}){hint}"
    )


async def ensure(
    js: JetStreamContext,
    streams: tuple[StreamSpec, ...] = STREAMS,
    replicas: int = 1,
) -> dict[str, str]:
    """Create missing streams and update changed ones. Returns ``{name: created|updated|ok}``.

    Safe to call from every process at start-up, concurrently. A change of ``replicas`` is
    applied to existing streams (JetStream moves R1 to R3 in place); a server that cannot
    hold it raises :class:`TopologyError` rather than leaving the stream as it was.
    """
    outcome: dict[str, str] = {}
    for spec in streams:
        want = spec.config(replicas)
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await _placed(functools.partial(js.add_stream, want), spec.name)
                outcome[spec.name] = "created"
                continue
            except APIError as exc:  # raced with another process creating it
                if exc.err_code != 10058:  # stream name already in use
                    raise _refused(spec.name, replicas, None, exc) from exc
                info = await js.stream_info(spec.name)
        if _differs(want, info.config):
            try:
                await _placed(functools.partial(js.update_stream, want), spec.name)
            except APIError as exc:
                raise _refused(spec.name, replicas, info.config.num_replicas, exc) from exc
            outcome[spec.name] = "updated"
        else:
            outcome[spec.name] = "ok"
    return outcome


#: how long a create or update waits for a cluster that is still forming (err 10005)
PLACEMENT_WAIT_S = 30.0


class _PeersForming(Unavailable):
    """The meta layer does not see enough peers online yet (nodes starting together)."""


async def _placed(call: Callable[[], Awaitable[T]], name: str) -> T:
    """``call`` (a stream create or update), retried with backoff for up to
    :data:`PLACEMENT_WAIT_S` while the server answers "no suitable peers for placement"
    (err 10005): a node that starts with its peers must not fail because one of them has
    not been seen yet. Any other refusal, or the last one, is raised as the server's."""

    async def attempt() -> T:
        try:
            return await call()
        except APIError as exc:
            if exc.err_code == 10005:
                raise _PeersForming(str(exc)) from exc
            raise

    try:
        return await retry(
            attempt,
            what=f"placing stream {name}",
            retry_on=(_PeersForming,),
            deadline_s=PLACEMENT_WAIT_S,
        )
    except _PeersForming as exc:
        assert isinstance(exc.__cause__, APIError)
        raise exc.__cause__ from None


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec, replicas: int = 1) -> None:
    """Create or update a durable consumer (add_consumer is create-or-update on the server)."""
    await js.add_consumer(spec.stream, config=spec.config(replicas))
