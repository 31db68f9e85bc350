"""The event catalogue: every fact Engram records, as frozen msgspec Structs.

Every event shares one envelope (``event_id``, ``time``, ``producer``, ``causation_id``,
``schema_version``) and a ``kind`` tag, so one decoder reads any event on the bus.
Events travel as msgpack; vectors travel as little-endian float32 ``bytes``.

Schema evolution rules (enforced by review and by ``tests/streams/test_events.py``):

* a new field always has a default, so old events still decode;
* a field never changes its type and is never renamed; deprecate and add a new one;
* a breaking change bumps ``SCHEMA_VERSION`` of that kind and adds an upcaster to
  ``UPCASTERS`` that turns the old shape (a dict) into the new one before decoding.
"""

from __future__ import annotations

import os
import random as _random
import time as _time
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias

import msgspec

from .errors import InputError

__all__ = [
    "ALL_EVENTS",
    "BRAIN_EVENTS",
    "AccessGranted",
    "AccessRevoked",
    "BlobArchiveFailed",
    "BlobArchived",
    "BlobDescribed",
    "BlobReceived",
    "CadenceTicked",
    "ChallengeAnswered",
    "ChallengeIssued",
    "CompletionGenerated",
    "CompletionScored",
    "DatasetExported",
    "DeadLetterRetried",
    "DeadLettered",
    "Deleted",
    "DemoNoted",
    "Embedded",
    "Event",
    "EventDecodeError",
    "FeedbackGiven",
    "IngestRejected",
    "IngestRequested",
    "MemoryRecalled",
    "ModelSwapped",
    "NamespaceCreated",
    "PromptReceived",
    "PromptRewriteSuggested",
    "ProofVerified",
    "RecallSampled",
    "RepairRequested",
    "Repaired",
    "ScoreUpdated",
    "Stored",
    "TrainingFailed",
    "TrainingFinished",
    "TrainingRequested",
    "WeightsProposed",
    "WeightsSet",
    "decode",
    "encode",
    "new_event_id",
    "request_key",
]


#: The random bits of event ids: a generator of its own, seeded from the OS (and again in
#: a forked child, which would otherwise repeat its parent's ids), so that ``random.seed``
#: elsewhere (a test, Hypothesis) cannot make two events share an id. Ids need to be
#: unique, not unpredictable: ``uuid.uuid4`` (a system call per id) cost ~3x as much, on
#: every event the pipeline publishes.
_ids = _random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


def new_event_id() -> str:
    """A time-ordered unique id (UUIDv7 layout: 48-bit ms timestamp + 74 random bits)."""
    ms = int(_time.time() * 1000)
    rand = _ids.getrandbits(74)
    value = (
        (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _now() -> float:
    return _time.time()


def request_key(kind: str, caller: str, request_id: str) -> str:
    """The idempotency key of an ingest: a ``request_id`` is unique per caller and kind
    (``text`` or ``raw``), not globally, so two clients choosing the same id never meet."""
    return f"{kind}:{caller}:{request_id}"


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", omit_defaults=False):
    """Envelope shared by every event."""

    SUBJECT: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: str = msgspec.field(default_factory=new_event_id)
    time: float = msgspec.field(default_factory=_now)
    producer: str = ""
    causation_id: str | None = None
    schema_version: int = 1

    @property
    def kind(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    def subject(self) -> str:
        return self.SUBJECT

    def msg_id(self) -> str:
        """The JetStream de-duplication id (``Nats-Msg-Id``) for this event."""
        return self.event_id


# --- ingest -----------------------------------------------------------------------------


class IngestRequested(Event, frozen=True, kw_only=True, tag="IngestRequested"):
    """A client asked to remember a text. ``request_id`` is the client's idempotency key,
    scoped by ``caller`` (the signing hotkey, or ``anonymous``): see :func:`request_key`."""

    SUBJECT: ClassVar[str] = "engram.ingest.requested"

    request_id: str
    text: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    namespace: str = "public"
    model_version: str = ""
    caller: str = ""

    def request_key(self) -> str:
        return request_key("text", self.caller, self.request_id)

    def msg_id(self) -> str:
        return f"ingest:{self.request_key()}"


# --- memory -----------------------------------------------------------------------------


class Embedded(Event, frozen=True, kw_only=True, tag="Embedded"):
    """A text turned into a vector with its CID; the source of truth for the index."""

    SUBJECT: ClassVar[str] = "engram.memory.embedded"

    cid: str
    vector: bytes  # little-endian float32
    dim: int
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    namespace: str = "public"
    model_version: str = ""
    request_id: str = ""
    text: str | None = None
    caller: str = ""
    #: "text" (embedded by the embed worker from an IngestRequested) or "raw" (a client's
    #: own vector); with ``caller`` and ``request_id`` it forms the request key
    request_kind: str = ""

    def request_key(self) -> str:
        return request_key(self.request_kind, self.caller, self.request_id)

    def msg_id(self) -> str:
        return f"embedded:{self.request_key()}" if self.request_id else f"embedded:{self.cid}"


class IngestRejected(Event, frozen=True, kw_only=True, tag="IngestRejected"):
    """An accepted ingest that will never be stored (the embed worker refused it), so that
    the store can answer its client: recorded in the store's request table."""

    SUBJECT: ClassVar[str] = "engram.memory.rejected"

    request_id: str
    reason: str
    caller: str = ""
    request_kind: str = "text"
    namespace: str = "public"

    def request_key(self) -> str:
        return request_key(self.request_kind, self.caller, self.request_id)

    def msg_id(self) -> str:
        return f"rejected:{self.request_key()}"


class Stored(Event, frozen=True, kw_only=True, tag="Stored"):
    """The store projection applied an ``Embedded`` event; the memory is queryable.

    A derived notice, not a source fact: it lives on the NOTICES stream (never on MEMORY,
    which rebuilds the index), with the MEMORY sequence it reports as its message id, and
    the store publishes it once per sequence (a persisted high-water mark)."""

    SUBJECT: ClassVar[str] = "engram.notice.stored"

    cid: str
    request_id: str = ""
    duplicate: bool = False
    memory_seq: int = 0
    caller: str = ""
    request_kind: str = ""

    def msg_id(self) -> str:
        return f"stored:{self.memory_seq}" if self.memory_seq else self.event_id


class Deleted(Event, frozen=True, kw_only=True, tag="Deleted"):
    """A memory removed from a namespace (``namespace`` empty: from every namespace, the
    old shape) by the hotkey ``by`` (issue 9: the log keeps who deleted what)."""

    SUBJECT: ClassVar[str] = "engram.memory.deleted"

    cid: str
    reason: str = ""
    namespace: str = ""
    by: str = ""


# --- access (issue 9): namespaces with owners; on MEMORY, in order with the memories -----


class NamespaceCreated(Event, frozen=True, kw_only=True, tag="NamespaceCreated"):
    """``owner`` (a btauth/1 hotkey) created ``namespace``, ``public`` or ``private``. The
    first creation wins; a later one for a namespace that exists changes nothing."""

    SUBJECT: ClassVar[str] = "engram.memory.namespace.created"

    namespace: str
    visibility: str  # "public" | "private"
    owner: str


class AccessGranted(Event, frozen=True, kw_only=True, tag="AccessGranted"):
    """The owner ``by`` let ``hotkey`` ``read`` or ``write`` ``namespace``."""

    SUBJECT: ClassVar[str] = "engram.memory.access.granted"

    namespace: str
    hotkey: str
    access: str  # "read" | "write"
    by: str


class AccessRevoked(Event, frozen=True, kw_only=True, tag="AccessRevoked"):
    """The owner ``by`` took ``access`` (``read``, ``write``) to ``namespace`` back."""

    SUBJECT: ClassVar[str] = "engram.memory.access.revoked"

    namespace: str
    hotkey: str
    access: str
    by: str


# --- blobs ------------------------------------------------------------------------------


class BlobReceived(Event, frozen=True, kw_only=True, tag="BlobReceived"):
    """Bytes kept in the Object Store under ``object_name``; ``content_cid`` is
    ``"sha256:" + hex`` of them, ``media_type`` sniffed from them (engram.blobs). One per
    blob: the same bytes uploaded again publish nothing new."""

    SUBJECT: ClassVar[str] = "engram.blob.received"

    content_cid: str
    object_name: str  # name in the JetStream Object Store bucket
    size: int
    media_type: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    namespace: str = "public"  # where its memories go
    caller: str = ""  # whose request-id scope its memories' ingests use

    def msg_id(self) -> str:
        return f"received:{self.content_cid}"


class BlobArchived(Event, frozen=True, kw_only=True, tag="BlobArchived"):
    SUBJECT: ClassVar[str] = "engram.blob.archived"

    content_cid: str
    arweave_tx: str
    gateway: str = ""

    def msg_id(self) -> str:
        return f"archived:{self.content_cid}"


class BlobArchiveFailed(Event, frozen=True, kw_only=True, tag="BlobArchiveFailed"):
    """The archiver gave up on a blob after ``attempts`` tries; its bytes stay in the Object
    Store and its memories are stored all the same (the upload is non-fatal)."""

    SUBJECT: ClassVar[str] = "engram.blob.archive_failed"

    content_cid: str
    reason: str
    attempts: int = 0

    def msg_id(self) -> str:
        return f"archive-failed:{self.content_cid}"


class BlobDescribed(Event, frozen=True, kw_only=True, tag="BlobDescribed"):
    """What a blob shows or says: an image's description, or a PDF's page texts
    (``parts``, one per memory). Each memory's ``IngestRequested`` names this event as its
    cause, so an audit walks from a memory back to its bytes."""

    SUBJECT: ClassVar[str] = "engram.blob.described"

    content_cid: str
    description: str
    describer: str = ""
    media_type: str = ""
    parts: list[str] = msgspec.field(default_factory=list)

    def msg_id(self) -> str:
        return f"described:{self.content_cid}"


# --- validation -------------------------------------------------------------------------


class CadenceTicked(Event, frozen=True, kw_only=True, tag="CadenceTicked"):
    """The validator's scheduler: one ``cadence`` period (``evaluation``, ``challenge``,
    ``weights``) began. ``seq`` is ``floor(time / period_s)``, so a restarted scheduler
    re-publishes the same tick under the same message id and JetStream drops it."""

    SUBJECT: ClassVar[str] = "engram.validation.tick"

    cadence: str
    seq: int
    period_s: float
    validator: str = ""  # the validator's hotkey (ss58)

    def subject(self) -> str:
        return f"{self.SUBJECT}.{self.cadence}"

    def msg_id(self) -> str:
        return f"tick:{self.validator}:{self.cadence}:{self.seq}"


class ChallengeIssued(Event, frozen=True, kw_only=True, tag="ChallengeIssued"):
    SUBJECT: ClassVar[str] = "engram.validation.challenge.issued"

    challenge_id: str
    miner_uid: int
    miner_hotkey: str
    cid: str
    nonce_hex: str
    expires_at: float
    validator_hotkey_hex: str
    proof_version: int = 2
    round_id: str = ""
    miner_axon: str = ""  # host:port the dispatcher calls
    # a user memory routing placed on this miner (not a probe): its verdict counts for
    # replication (engram.validator.repair)
    replicated: bool = False

    def msg_id(self) -> str:
        return f"issued:{self.challenge_id}"


class ChallengeAnswered(Event, frozen=True, kw_only=True, tag="ChallengeAnswered"):
    SUBJECT: ClassVar[str] = "engram.validation.challenge.answered"

    challenge_id: str
    miner_uid: int
    embedding_hash: str | None = None
    proof: str | None = None
    latency_ms: float = 0.0
    error: str | None = None
    status: int = 0  # the HTTP status (0: no answer: timeout or connection error)
    miner_hotkey: str = ""
    # the challenge as issued (copied by the dispatcher, so the verifier needs no lookup)
    cid: str = ""
    nonce_hex: str = ""
    expires_at: float = 0.0
    validator_hotkey_hex: str = ""
    proof_version: int = 2
    round_id: str = ""
    replicated: bool = False

    def msg_id(self) -> str:
        return f"answered:{self.challenge_id}"


class ProofVerified(Event, frozen=True, kw_only=True, tag="ProofVerified"):
    SUBJECT: ClassVar[str] = "engram.validation.proof.verified"

    challenge_id: str
    miner_uid: int
    passed: bool
    reason: str = ""
    cid: str = ""
    miner_hotkey: str = ""
    round_id: str = ""
    # the miner is not to blame (the challenge expired before it was sent, the validator
    # lost its ground truth): recorded, but not counted in the proof rate
    void: bool = False
    replicated: bool = False  # a routed user memory (see ChallengeIssued)

    def msg_id(self) -> str:
        return f"verified:{self.challenge_id}"


class RecallSampled(Event, frozen=True, kw_only=True, tag="RecallSampled"):
    SUBJECT: ClassVar[str] = "engram.validation.recall.sampled"

    round_id: str
    miner_uid: int
    recall_at_10: float
    latency_ms: float
    queries: int = 1
    miner_hotkey: str = ""
    # per-query measurements of the round (recall averaged over every one of them)
    recalls: list[float] = msgspec.field(default_factory=list)
    latencies_ms: list[float | None] = msgspec.field(default_factory=list)

    def msg_id(self) -> str:
        return f"recall:{self.round_id}:{self.miner_uid}"


class ScoreUpdated(Event, frozen=True, kw_only=True, tag="ScoreUpdated"):
    SUBJECT: ClassVar[str] = "engram.validation.score.updated"

    miner_uid: int
    recall: float
    latency_score: float
    proof_success_rate: float
    composite: float
    ema: float
    scorer_version: int = 1
    round_id: str = ""
    miner_hotkey: str = ""
    slashed: bool = False
    reason: str = ""
    challenges: int = 0

    def msg_id(self) -> str:
        return f"score:{self.round_id}:{self.miner_uid}" if self.round_id else self.event_id


class RepairRequested(Event, frozen=True, kw_only=True, tag="RepairRequested"):
    """A CID lost a replica: copy it from ``source`` (a miner that proved it) to ``target``
    (the next-closest miner routing now assigns it to). One per round, CID and target."""

    SUBJECT: ClassVar[str] = "engram.validation.repair.requested"

    round_id: str
    cid: str
    source_uid: int
    source_hotkey: str
    target_uid: int
    target_hotkey: str

    def msg_id(self) -> str:
        return f"repair:{self.round_id}:{self.cid}:{self.target_hotkey}"


class Repaired(Event, frozen=True, kw_only=True, tag="Repaired"):
    """The outcome of a :class:`RepairRequested` (``ok`` False with the reason)."""

    SUBJECT: ClassVar[str] = "engram.validation.repair.done"

    request_id: str  # the RepairRequested's event id
    round_id: str
    cid: str
    target_uid: int
    target_hotkey: str
    ok: bool
    reason: str = ""
    source_hotkey: str = ""

    def msg_id(self) -> str:
        return f"repaired:{self.round_id}:{self.cid}:{self.target_hotkey}"


# --- weights ----------------------------------------------------------------------------


class WeightsProposed(Event, frozen=True, kw_only=True, tag="WeightsProposed"):
    SUBJECT: ClassVar[str] = "engram.weights.proposed"

    epoch: int
    uids: list[int]
    weights: list[float]
    scorer_version: int = 1
    block: int = 0
    netuid: int = 0

    def msg_id(self) -> str:
        return f"weights-proposed:{self.netuid}:{self.epoch}"


class WeightsSet(Event, frozen=True, kw_only=True, tag="WeightsSet"):
    SUBJECT: ClassVar[str] = "engram.weights.set"

    epoch: int
    success: bool
    chain: str = "local"
    message: str = ""
    block: int = 0
    extrinsic: str = ""  # the extrinsic hash on a real chain, the local id on LocalChain
    attempts: int = 1
    netuid: int = 0

    def msg_id(self) -> str:
        # one outcome per epoch and attempt; a successful set is unique per epoch
        suffix = "ok" if self.success else f"fail:{self.attempts}"
        return f"weights-set:{self.netuid}:{self.epoch}:{suffix}"


# --- dead letters and demo --------------------------------------------------------------


class DeadLettered(Event, frozen=True, kw_only=True, tag="DeadLettered"):
    """A message a worker gave up on: the original bytes and headers plus the cause."""

    SUBJECT: ClassVar[str] = "engram.dlq"

    original_subject: str
    original_data: bytes
    original_headers: dict[str, str] = msgspec.field(default_factory=dict)
    stream: str = ""
    stream_seq: int = 0
    consumer: str = ""
    deliveries: int = 0
    error: str = ""
    error_type: str = ""

    def subject(self) -> str:
        # engram.dlq.<consumer> so operators can subscribe per worker
        return f"{self.SUBJECT}.{self.consumer or 'unknown'}"

    def msg_id(self) -> str:
        # one dead letter per original message, however often the worker retries publishing
        return f"dlq:{self.stream}:{self.stream_seq}:{self.consumer}"


class DeadLetterRetried(Event, frozen=True, kw_only=True, tag="DeadLetterRetried"):
    """An operator sent a dead letter's original message back to its subject
    (``engram dlq retry``), under ``republished_msg_id`` (fresh: the original id may still
    sit in the de-duplication window). ``attempt`` counts retries of that dead letter."""

    SUBJECT: ClassVar[str] = "engram.dlq.retried"

    dlq_seq: int  # the DeadLettered's sequence on the DLQ stream
    original_subject: str
    republished_msg_id: str
    republished_seq: int = 0  # where the original landed again
    republished_stream: str = ""
    attempt: int = 1
    operator: str = ""

    def msg_id(self) -> str:
        return f"dlq-retried:{self.dlq_seq}:{self.attempt}"


class DemoNoted(Event, frozen=True, kw_only=True, tag="DemoNoted"):
    """A small event used by ``engram demo`` and the bus benchmark."""

    SUBJECT: ClassVar[str] = "engram.ingest.demo"

    n: int
    note: str = ""
    payload: bytes = b""

    def msg_id(self) -> str:
        return f"demo:{self.event_id}"


# --- brain (engram/brain/): the prompt flow, agents' verdicts, learning, model swaps -----


class PromptReceived(Event, frozen=True, kw_only=True, tag="PromptReceived"):
    """A chat request reached the brain (the last user turn, and who asked)."""

    SUBJECT: ClassVar[str] = "engram.brain.prompt"

    completion_id: str
    user: str
    prompt: str
    session_id: str = ""
    agent_id: str = ""
    model: str = ""

    def msg_id(self) -> str:
        return f"prompt:{self.completion_id}"


class MemoryRecalled(Event, frozen=True, kw_only=True, tag="MemoryRecalled"):
    """What recall found for a prompt and what was injected (CIDs with fused scores)."""

    SUBJECT: ClassVar[str] = "engram.brain.recalled"

    completion_id: str
    user: str
    cids: list[str] = msgspec.field(default_factory=list)
    scores: list[float] = msgspec.field(default_factory=list)
    injected: int = 0
    lesson_cid: str = ""  # a correction recalled for this prompt, if any
    recall_ms: float = 0.0

    def msg_id(self) -> str:
        return f"recalled:{self.completion_id}"


class CompletionGenerated(Event, frozen=True, kw_only=True, tag="CompletionGenerated"):
    """The answer, with what made it: the agents (memory writer, scorer, ...) consume it."""

    SUBJECT: ClassVar[str] = "engram.brain.completion"

    completion_id: str
    user: str
    prompt: str
    answer: str
    model: str = ""
    session_id: str = ""
    agent_id: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    memories_used: list[str] = msgspec.field(default_factory=list)
    write_memory: bool = True
    finish_reason: str = "stop"
    lesson_cid: str = ""

    def msg_id(self) -> str:
        return f"completion:{self.completion_id}"


class CompletionScored(Event, frozen=True, kw_only=True, tag="CompletionScored"):
    """A scorer's verdict on a completion (0..1) with its reasons."""

    SUBJECT: ClassVar[str] = "engram.brain.scored"

    completion_id: str
    score: float
    scorer: str = "heuristic"
    reasons: list[str] = msgspec.field(default_factory=list)

    def msg_id(self) -> str:
        return f"scored:{self.scorer}:{self.completion_id}"


class PromptRewriteSuggested(Event, frozen=True, kw_only=True, tag="PromptRewriteSuggested"):
    """The prompt fixer's suggestion for a prompt whose answer scored low."""

    SUBJECT: ClassVar[str] = "engram.brain.rewrite"

    completion_id: str
    original: str
    rewrite: str
    reason: str = ""

    def msg_id(self) -> str:
        return f"rewrite:{self.completion_id}"


class FeedbackGiven(Event, frozen=True, kw_only=True, tag="FeedbackGiven"):
    """A user's verdict on a completion; a ``correction`` becomes a lesson."""

    SUBJECT: ClassVar[str] = "engram.brain.feedback"

    completion_id: str
    user: str
    prompt: str = ""
    answer: str = ""
    score: float | None = None
    correction: str = ""


class DatasetExported(Event, frozen=True, kw_only=True, tag="DatasetExported"):
    """A training job wrote a chat-format dataset (JSONL) of scored and corrected
    completions; ``sha256`` is its content hash, ``version`` counts exports."""

    SUBJECT: ClassVar[str] = "engram.brain.dataset"

    version: int
    sha256: str
    path: str
    examples: int
    corrected: int = 0
    trainer: str = ""

    def msg_id(self) -> str:
        return f"dataset:{self.sha256}"


class ModelSwapped(Event, frozen=True, kw_only=True, tag="ModelSwapped"):
    """The brain's engine changed without a restart (requests in flight finish on the old)."""

    SUBJECT: ClassVar[str] = "engram.brain.model"

    model: str
    previous: str = ""
    engine: str = ""
    path: str = ""
    adapter: str = ""  # a LoRA adapter (GGUF) applied over ``path``
    job_id: str = ""  # the training job whose result this is


class TrainingRequested(Event, frozen=True, kw_only=True, tag="TrainingRequested"):
    """Train ``trainer`` on an exported dataset over the model current at request time.
    The ``trainer`` agent consumes it; the job id derives from the dataset and the base."""

    SUBJECT: ClassVar[str] = "engram.brain.train.requested"

    job_id: str
    trainer: str
    dataset_path: str
    dataset_sha256: str
    dataset_version: int
    base_model: str
    base_engine: str = ""
    base_path: str = ""
    #: 0 for the job's first request; n for the request made after its n-th final failure
    #: (a retry asked for: its own message id, so the duplicate window does not drop it)
    retry: int = 0

    def msg_id(self) -> str:
        return f"train:{self.job_id}" + (f":retry-{self.retry}" if self.retry else "")


class TrainingFinished(Event, frozen=True, kw_only=True, tag="TrainingFinished"):
    """A training job produced a model: a LoRA adapter (``adapter`` with its SHA-256) over
    the base, or a fine-tuned model id served by an API (``model``)."""

    SUBJECT: ClassVar[str] = "engram.brain.train.finished"

    job_id: str
    trainer: str
    model: str
    engine: str
    base_path: str = ""
    adapter: str = ""
    adapter_sha256: str = ""
    metrics: dict[str, float] = msgspec.field(default_factory=dict)

    def msg_id(self) -> str:
        return f"trained:{self.job_id}"


class TrainingFailed(Event, frozen=True, kw_only=True, tag="TrainingFailed"):
    """One attempt of a training job failed (the agent retries; the last attempt is also
    dead-lettered)."""

    SUBJECT: ClassVar[str] = "engram.brain.train.failed"

    job_id: str
    trainer: str
    error: str
    attempt: int = 1
    final: bool = False  # no retry follows (a job the backend can never do, or the last)

    retry: int = 0  # the request's ``retry`` round

    def msg_id(self) -> str:
        return f"train-failed:{self.job_id}:{self.retry}:{self.attempt}"


BRAIN_EVENTS: tuple[type[Event], ...] = (
    PromptReceived,
    MemoryRecalled,
    CompletionGenerated,
    CompletionScored,
    PromptRewriteSuggested,
    FeedbackGiven,
    DatasetExported,
    ModelSwapped,
    TrainingRequested,
    TrainingFinished,
    TrainingFailed,
)
# --- end brain ---------------------------------------------------------------------------


ALL_EVENTS: tuple[type[Event], ...] = (
    IngestRequested,
    Embedded,
    IngestRejected,
    Stored,
    Deleted,
    NamespaceCreated,
    AccessGranted,
    AccessRevoked,
    BlobReceived,
    BlobArchived,
    BlobArchiveFailed,
    BlobDescribed,
    CadenceTicked,
    ChallengeIssued,
    ChallengeAnswered,
    ProofVerified,
    RecallSampled,
    ScoreUpdated,
    RepairRequested,
    Repaired,
    WeightsProposed,
    WeightsSet,
    DeadLettered,
    DeadLetterRetried,
    DemoNoted,
    *BRAIN_EVENTS,
)

AnyEvent: TypeAlias = (
    IngestRequested
    | Embedded
    | IngestRejected
    | Stored
    | Deleted
    | NamespaceCreated
    | AccessGranted
    | AccessRevoked
    | BlobReceived
    | BlobArchived
    | BlobArchiveFailed
    | BlobDescribed
    | CadenceTicked
    | ChallengeIssued
    | ChallengeAnswered
    | ProofVerified
    | RecallSampled
    | ScoreUpdated
    | RepairRequested
    | Repaired
    | WeightsProposed
    | WeightsSet
    | DeadLettered
    | DeadLetterRetried
    | DemoNoted
    | PromptReceived
    | MemoryRecalled
    | CompletionGenerated
    | CompletionScored
    | PromptRewriteSuggested
    | FeedbackGiven
    | DatasetExported
    | ModelSwapped
    | TrainingRequested
    | TrainingFinished
    | TrainingFailed
)

# kind -> {old schema_version -> function(dict) -> dict}; applied before typed decoding.
UPCASTERS: dict[str, dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}

_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)
_RAW_DECODER = msgspec.msgpack.Decoder(dict[str, Any])


class EventDecodeError(InputError):
    """The bytes are not a known Engram event (malformed, unknown kind, wrong types)."""


def encode(event: Event) -> bytes:
    return _ENCODER.encode(event)


def decode(data: bytes) -> Event:
    """Decode any Engram event; raises :class:`EventDecodeError` with the reason."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        if UPCASTERS:
            try:
                raw = _RAW_DECODER.decode(data)
            except msgspec.DecodeError:
                raise EventDecodeError(str(exc)) from None
            ups = UPCASTERS.get(str(raw.get("kind")), {})
            version = int(raw.get("schema_version", 1))
            if version in ups:
                try:
                    return _DECODER.decode(_ENCODER.encode(ups[version](raw)))
                except msgspec.DecodeError as exc2:
                    raise EventDecodeError(str(exc2)) from None
        raise EventDecodeError(str(exc)) from None
