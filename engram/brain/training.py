"""Training jobs: an exported dataset → a trainer backend → a model the brain swaps in.

``POST /api/llm/train`` exports the dataset (``DatasetExported``) and, when a trainer is
configured (``brain_trainer``), publishes ``TrainingRequested``. The built-in ``trainer``
agent consumes it, runs the backend and publishes ``TrainingFinished``; the brain then
hot-swaps the result in (``ModelSwapped`` naming the job): requests in flight finish on the
old engine, the next ones use the trained one.

Backends, one interface (:class:`Trainer`):

* ``lora`` (:mod:`engram.brain.lora`): a LoRA adapter trained here, on the CPU, over the
  brain's own GGUF (the ``lora`` extra: JAX and ``gguf``), written as a GGUF adapter that
  llama.cpp applies over the unchanged base.
* ``openai`` (:mod:`engram.brain.finetune`): an OpenAI-compatible fine-tuning API (upload
  the JSONL, create the job, poll it); the fine-tuned model id is served by the ``openai``
  engine.

The job id derives from the dataset's hash and the base model, so a request redelivered or
sent twice trains once: ``TrainingRequested`` and ``TrainingFinished`` have message ids
(JetStream drops a copy inside its duplicate window), and past that window the job's own
events say it is done (:func:`job_history`): the trainer does not train a finished job
again, it only swaps in what it trained if that never happened, and ``POST
/api/llm/train`` answers 200 with the job instead of requesting it again.
"""

from __future__ import annotations

import hashlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from engram.config import ConfigError, Settings
from streams.errors import InputError
from streams.events import ModelSwapped, TrainingFailed, TrainingFinished, TrainingRequested
from streams.replay import replay_batches

from .agents import AgentContext, agent

__all__ = [
    "JobHistory",
    "TrainJob",
    "TrainResult",
    "Trainer",
    "build_trainer",
    "job_history",
    "job_id_for",
    "trainer_agent",
]

log = structlog.get_logger("engram.brain.training")

#: called with a short stage name and the fraction done (0..1)
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class TrainJob:
    """What a backend trains: the dataset (chat-format JSONL) over the base model."""

    job_id: str
    dataset_path: Path
    dataset_sha256: str
    base_model: str
    base_engine: str
    base_path: str
    out_dir: Path

    @classmethod
    def from_event(cls, event: TrainingRequested, data_path: Path) -> TrainJob:
        return cls(
            job_id=event.job_id,
            dataset_path=Path(event.dataset_path),
            dataset_sha256=event.dataset_sha256,
            base_model=event.base_model,
            base_engine=event.base_engine,
            base_path=event.base_path,
            out_dir=data_path / "brain" / "trained",
        )


@dataclass(frozen=True)
class TrainResult:
    """A trained model: the engine kind that serves it, the name it is served under, and
    for a LoRA the adapter file (over ``base_path``)."""

    engine: str
    model: str
    base_path: str = ""
    adapter: str = ""
    adapter_sha256: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer(ABC):
    """A training backend. :meth:`train` may take minutes; it reports progress and raises
    :class:`~streams.errors.InputError` for a job it can never do (retrying is useless) and
    anything else for a failure worth retrying."""

    name: str = ""

    @abstractmethod
    async def train(self, job: TrainJob, progress: Progress | None = None) -> TrainResult:
        """Train ``job`` and return the model to swap in."""


def job_id_for(trainer: str, dataset_sha256: str, base_model: str, base_path: str) -> str:
    key = f"{trainer}\0{dataset_sha256}\0{base_model}\0{base_path}".encode()
    return f"train-{hashlib.sha256(key).hexdigest()[:16]}"


#: the packages each backend needs, and the extra that installs them
_NEEDS = {"lora": (("jax", "gguf"), "lora"), "openai": (("openai",), "brain")}


def build_trainer(settings: Settings) -> Trainer | None:
    """The configured backend (``brain_trainer``), or None for ``none``; a backend whose
    packages are missing is a :class:`ConfigError` naming the extra, at start."""
    needs = _NEEDS.get(settings.brain_trainer)
    if needs is not None:
        missing = [m for m in needs[0] if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"brain_trainer = {settings.brain_trainer!r} needs {', '.join(missing)}: "
                f"pip install 'engram[{needs[1]}]'"
            )
    if settings.brain_trainer == "lora":
        from .lora import LoraTrainer

        return LoraTrainer.from_settings(settings)
    if settings.brain_trainer == "openai":
        from .finetune import OpenAIFineTuneTrainer

        trainer: Trainer = OpenAIFineTuneTrainer.from_settings(settings)
        return trainer
    return None


@dataclass
class JobHistory:
    """What the bus holds of one training job."""

    requested: TrainingRequested | None = None  # the first request
    failures: list[TrainingFailed] = field(default_factory=list)
    finished: TrainingFinished | None = None
    swapped: bool = False
    #: final failures so far (the next retry round's number)
    final_failures: int = 0
    #: the last word is a final failure (no request came after it)
    failed: bool = False


async def job_history(js: Any, job_id: str) -> JobHistory:
    """Replay the job's events (``TrainingRequested``/``Failed``/``Finished`` and the
    ``ModelSwapped`` naming it) from the BRAIN stream."""
    history = JobHistory()
    async for items in replay_batches(
        js,
        "BRAIN",
        subjects=[
            TrainingRequested.SUBJECT,
            TrainingFailed.SUBJECT,
            TrainingFinished.SUBJECT,
            ModelSwapped.SUBJECT,
        ],
        idle_s=0.3,
    ):
        for item in items:
            ev = item.event
            if getattr(ev, "job_id", None) != job_id:
                continue
            if isinstance(ev, TrainingRequested):
                history.requested = history.requested or ev
                history.failed = False
            elif isinstance(ev, TrainingFailed):
                history.failures.append(ev)
                if ev.final:
                    history.final_failures += 1
                    history.failed = True
            elif isinstance(ev, TrainingFinished):
                history.finished = history.finished or ev
            elif isinstance(ev, ModelSwapped):
                history.swapped = True
    return history


@agent(on=TrainingRequested, name="trainer", builtin=True)
async def trainer_agent(event: TrainingRequested, ctx: AgentContext) -> None:
    """Run the job with the brain's backend, publish the result, swap it in."""
    brain: Any = ctx.brain
    if brain is None or brain.trainer is None:
        raise InputError(f"{event.job_id}: no trainer backend is configured on this brain")
    trainer: Trainer = brain.trainer
    if trainer.name != event.trainer:
        raise InputError(f"{event.job_id}: asks for trainer {event.trainer!r}, not {trainer.name}")
    history = await job_history(brain.bus.js, event.job_id)
    if history.finished is not None:  # a redelivery, or a request past the duplicate window
        log.info("already trained", job=event.job_id, model=history.finished.model)
        if not history.swapped:  # stopped between the two: swap it in now
            await brain.swap_trained(history.finished)
        return
    job = TrainJob.from_event(event, brain.settings.data_path)
    attempt = brain.training_attempt(event.job_id, event.retry)
    log.info("training", job=event.job_id, trainer=trainer.name, attempt=attempt)
    try:
        result = await trainer.train(job, brain.training_progress(event.job_id))
    except Exception as exc:
        brain.training_failed(event.job_id, repr(exc)[:500])
        await ctx.publisher.publish(
            TrainingFailed(
                causation_id=event.event_id,
                job_id=event.job_id,
                trainer=trainer.name,
                error=repr(exc)[:2000],
                attempt=attempt,
                retry=event.retry,
                final=isinstance(exc, InputError) or attempt >= brain.settings.worker_max_deliver,
            )
        )
        raise
    finished = TrainingFinished(
        causation_id=event.event_id,
        job_id=event.job_id,
        trainer=trainer.name,
        model=result.model,
        engine=result.engine,
        base_path=result.base_path,
        adapter=result.adapter,
        adapter_sha256=result.adapter_sha256,
        metrics=result.metrics,
    )
    await ctx.publisher.publish(finished)
    await brain.swap_trained(finished)
