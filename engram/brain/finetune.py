"""The ``openai`` trainer: an OpenAI-compatible fine-tuning API (``brain_trainer = "openai"``).

Through the ``openai`` client: upload the dataset (``files.create``, purpose ``fine-tune``),
create the job (``fine_tuning.jobs.create``) and poll it (``fine_tuning.jobs.retrieve``,
with its events for progress) until it succeeds, fails or is cancelled. The fine-tuned model
id (``ft:...``) is the result; the brain's ``openai`` engine serves it.

Idempotent: the job carries ``metadata.engram_job = <job id>`` (and the job id as its
``suffix``); a redelivered ``TrainingRequested`` first lists the jobs with that metadata and
resumes polling the one it finds, so one request never pays for two fine-tunes (an uploaded
file is likewise found by its name and size). A refusal of the request itself (400, 401,
403, 404, 422, a job failed on an invalid file, a cancelled job) is an
:class:`~streams.errors.InputError` (dead-lettered at once); anything else (a 5xx, a
timeout, a job the provider failed) is retried by the agent runner, resuming the same job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import openai
import structlog
from openai import AsyncOpenAI

from engram.config import Settings
from streams.errors import InputError, Unavailable

from .training import Progress, Trainer, TrainJob, TrainResult

__all__ = ["FineTuneError", "OpenAIFineTuneTrainer", "check_dataset"]

log = structlog.get_logger("engram.brain.finetune")

T = TypeVar("T")

#: HTTP statuses that mean the request itself is wrong (retrying cannot help)
REFUSED = frozenset({400, 401, 403, 404, 413, 422})
#: the metadata key naming the Engram job a fine-tuning job belongs to
JOB_KEY = "engram_job"
#: remote job states a retry does not resume
_DEAD = frozenset({"failed", "cancelled"})
#: rough share of the wall time per status before the job reports steps
STAGE_FRACTION = {"validating_files": 0.02, "queued": 0.05, "running": 0.1}


class FineTuneError(Unavailable):
    """The fine-tuning API failed in a way worth retrying."""


def check_dataset(data: bytes) -> int:
    """The number of examples of a chat-format JSONL dataset; InputError when a line is not
    ``{"messages": [...]}`` ending with an assistant message."""
    n = 0
    for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"dataset line {i}: not JSON ({exc})") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
            or messages[-1].get("role") != "assistant"
        ):
            raise InputError(f"dataset line {i}: needs messages ending with an assistant turn")
        n += 1
    if n == 0:
        raise InputError("the dataset has no examples")
    return n


class OpenAIFineTuneTrainer(Trainer):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str = "",
        poll_s: float = 10.0,
        timeout_s: float = 120.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InputError(
                "the openai trainer needs brain_finetune_url (or brain_openai_url): "
                f"an http(s) URL ending in /v1, not {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.poll_s = poll_s
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIFineTuneTrainer:
        s = settings
        return cls(
            s.brain_finetune_url or s.brain_openai_url,
            api_key=s.brain_finetune_key or s.brain_openai_key,
            model=s.brain_finetune_model,
            poll_s=s.brain_finetune_poll_s,
        )

    def _client(self) -> AsyncOpenAI:
        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key or "unused",
            timeout=self.timeout_s,
            max_retries=2,
        )

    async def train(self, job: TrainJob, progress: Progress | None = None) -> TrainResult:
        report = progress or (lambda stage, fraction: None)
        base = self.model or job.base_model
        if not base:
            raise InputError(f"{job.job_id}: no base model to fine-tune (brain_finetune_model)")
        async with self._client() as client:
            found = await _call(self._find_job(client, job.job_id))
            if found is not None:
                log.info("resuming fine-tuning job", job=job.job_id, remote=found.id)
                ft = found
            else:
                data = await asyncio.to_thread(_read, job)
                examples = check_dataset(data)
                report("upload", 0.0)
                file_id = await _call(self._upload(client, job, data))
                ft = await _call(
                    client.fine_tuning.jobs.create(
                        model=base,
                        training_file=file_id,
                        suffix=job.job_id[:64],
                        metadata={JOB_KEY: job.job_id},
                    )
                )
                log.info("fine-tuning job created", job=job.job_id, remote=ft.id, examples=examples)
            return await self._poll(client, ft.id, job, report)

    async def _find_job(self, client: AsyncOpenAI, job_id: str) -> Any:
        """The remote job made for ``job_id`` that is still running or has succeeded (a
        redelivery resumes it); a failed or cancelled one is never resumed: a retry makes a
        new job."""
        seen = 0
        async for ft in client.fine_tuning.jobs.list(metadata={JOB_KEY: job_id}, limit=20):
            if (ft.metadata or {}).get(JOB_KEY) == job_id and ft.status not in _DEAD:
                return ft
            seen += 1
            if seen >= 100:  # a server ignoring the filter: do not page through everything
                break
        return None

    async def _upload(self, client: AsyncOpenAI, job: TrainJob, data: bytes) -> str:
        filename = f"engram-{job.job_id}-{job.dataset_sha256[:12]}.jsonl"
        async for f in client.files.list(purpose="fine-tune"):
            if f.filename == filename and f.bytes == len(data):
                return f.id
        uploaded = await client.files.create(
            file=(filename, data, "application/jsonl"), purpose="fine-tune"
        )
        return uploaded.id

    async def _poll(
        self, client: AsyncOpenAI, remote: str, job: TrainJob, report: Progress
    ) -> TrainResult:
        while True:
            ft = await _call(client.fine_tuning.jobs.retrieve(remote))
            if ft.status == "succeeded":
                break
            if ft.status == "cancelled":
                raise InputError(f"{job.job_id}: fine-tuning job {remote} was cancelled")
            if ft.status == "failed":
                code = ft.error.code if ft.error else ""
                message = ft.error.message if ft.error else "no error given"
                cause = f"{job.job_id}: fine-tuning job {remote} failed: {code} {message}"
                if code.startswith("invalid"):
                    raise InputError(cause)
                raise FineTuneError(cause)
            fraction, _ = await self._steps(client, remote)
            report(
                ft.status, fraction if fraction is not None else STAGE_FRACTION.get(ft.status, 0.0)
            )
            await asyncio.sleep(self.poll_s)
        if not ft.fine_tuned_model:
            raise FineTuneError(f"{job.job_id}: job {remote} succeeded without a model id")
        _, metrics = await self._steps(client, remote)
        if ft.trained_tokens is not None:
            metrics["trained_tokens"] = float(ft.trained_tokens)
        report("succeeded", 1.0)
        log.info("fine-tuned", job=job.job_id, model=ft.fine_tuned_model)
        return TrainResult(engine="openai", model=ft.fine_tuned_model, metrics=metrics)

    async def _steps(
        self, client: AsyncOpenAI, remote: str
    ) -> tuple[float | None, dict[str, float]]:
        """The fraction done and the latest metrics, from the job's newest metrics event."""
        page = await _call(client.fine_tuning.jobs.list_events(remote, limit=20))
        for event in page.data:
            data = event.data if isinstance(event.data, dict) else {}
            if event.type != "metrics" or "step" not in data:
                continue
            metrics = {
                k: float(v)
                for k, v in data.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            total = metrics.get("total_steps") or 0.0
            fraction = 0.1 + 0.85 * min(metrics["step"] / total, 1.0) if total > 0 else None
            return fraction, metrics
        return None, {}


def _read(job: TrainJob) -> bytes:
    try:
        return job.dataset_path.read_bytes()
    except OSError as exc:
        raise InputError(f"{job.job_id}: cannot read the dataset: {exc}") from exc


async def _call(call: Awaitable[T]) -> T:
    """Await an API call, mapping the client's errors onto the project's."""
    try:
        return await call
    except openai.APIStatusError as exc:
        cause = f"the fine-tuning API answered {exc.status_code}: {exc.message}"
        if exc.status_code in REFUSED:
            raise InputError(cause) from exc
        raise FineTuneError(cause) from exc
    except openai.APIError as exc:  # connection errors, timeouts, unreadable replies
        raise FineTuneError(f"the fine-tuning API: {exc!r}") from exc
