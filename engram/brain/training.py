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
sent twice trains once (``TrainingRequested`` and ``TrainingFinished`` have message ids).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from engram.config import Settings
from streams.errors import InputError
from streams.events import TrainingFailed, TrainingFinished, TrainingRequested

from .agents import AgentContext, agent

__all__ = [
    "TrainJob",
    "TrainResult",
    "Trainer",
    "build_trainer",
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


def build_trainer(settings: Settings) -> Trainer | None:
    """The configured backend (``brain_trainer``), or None for ``none``."""
    if settings.brain_trainer == "lora":
        from .lora import LoraTrainer

        return LoraTrainer.from_settings(settings)
    if settings.brain_trainer == "openai":
        from .finetune import OpenAIFineTuneTrainer

        trainer: Trainer = OpenAIFineTuneTrainer.from_settings(settings)
        return trainer
    return None


@agent(on=TrainingRequested, name="trainer", builtin=True)
async def trainer_agent(event: TrainingRequested, ctx: AgentContext) -> None:
    """Run the job with the brain's backend, publish the result, swap it in."""
    brain: Any = ctx.brain
    if brain is None or brain.trainer is None:
        raise InputError(f"{event.job_id}: no trainer backend is configured on this brain")
    trainer: Trainer = brain.trainer
    if trainer.name != event.trainer:
        raise InputError(f"{event.job_id}: asks for trainer {event.trainer!r}, not {trainer.name}")
    job = TrainJob.from_event(event, brain.settings.data_path)
    attempt = brain.training_attempt(event.job_id)
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
