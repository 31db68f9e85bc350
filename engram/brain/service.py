"""The brain: a memory-augmented LLM runtime on the bus.

The prompt flow is events on the BRAIN stream (docs/architecture.md, "Brain")::

    PromptReceived → recall (hybrid, the user's namespace) → MemoryRecalled
      → generate (the current engine) → CompletionGenerated → agents

The answer goes back to the caller as soon as it is generated: the events are published by
background tasks (awaited on stop, so nothing accepted is lost) and the agents (memory
writer, scorer, prompt fixer, feedback) consume them as workers. On the embedded defaults
the brain runs what it needs in this process: the bus (embedded nats-server), the embed
worker (the miner's, on the shared ``embedder`` consumer) and its recall projection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from engram.bus import Bus, open_bus
from engram.config import Settings
from streams.errors import InputError
from streams.events import (
    CompletionGenerated,
    DatasetExported,
    Event,
    MemoryRecalled,
    ModelSwapped,
    PromptReceived,
    TrainingFinished,
    TrainingRequested,
)
from streams.projection import ProjectionRunner
from streams.worker import Worker

from .agents import AgentContext, AgentRunner, AgentSpec, load_agents
from .builtin import namespace_of
from .engines import Chunk, Engine, EngineHolder, approx_tokens, build_engine, packaged_gguf
from .judge import close_judge
from .recall import Hit, RecallIndex
from .training import Progress, Trainer, build_trainer, job_history, job_id_for

__all__ = ["Brain", "ChatRequest", "Prepared"]

log = structlog.get_logger("engram.brain")

#: completions kept in memory for ``/v1/feedback`` (older ones are refused with 404)
RECENT_COMPLETIONS = 10_000
MEMORY_HEADER = "Things you remember about this user (use them if relevant):"


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    user: str = "anonymous"
    session_id: str = ""
    agent_id: str = ""
    top_k: int | None = None
    write: bool = True
    max_tokens: int | None = None
    temperature: float = 0.0
    recall: bool = True


@dataclass
class Prepared:
    """A request after recall: the messages the engine sees and what was injected."""

    completion_id: str
    request: ChatRequest
    prompt: str
    messages: list[dict[str, str]]
    memories: list[Hit]
    lesson: Hit | None
    recall_ms: float
    inject_ms: float
    created: int = field(default_factory=lambda: int(time.time()))


class Brain:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        agents: list[AgentSpec] | None = None,
        embed_worker: bool = True,
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._agent_specs = agents
        self._embed_worker = embed_worker
        self.bus: Bus | None = None
        self.holder: EngineHolder | None = None
        self.index = RecallIndex(settings.data_path / "brain" / "recall.sqlite")
        self.runner: ProjectionRunner | None = None
        self.agents: AgentRunner | None = None
        self.embedder: Any = None
        self._workers: list[Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.recent: OrderedDict[str, CompletionGenerated] = OrderedDict()
        self.listeners: set[asyncio.Queue[Event]] = set()
        self.trainer: Trainer | None = build_trainer(settings)
        #: training jobs run by this process: job id → status, stage, progress, attempts
        self.jobs: dict[str, dict[str, Any]] = {}
        #: the untrained model under the current one (name, engine kind, path): what the
        #: next training job trains (a dataset holds every correction so far, so a job
        #: starts from the base, never from an earlier job's result)
        self.base: tuple[str, str, str] = ("", "", "")

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        from engram.miner.node import load_embedder
        from engram.miner.workers import make_embed_worker

        s = self.settings
        self.bus = await open_bus(s)
        self.embedder = await asyncio.to_thread(load_embedder, s, "query")
        self.index.embedder = self.embedder  # sentence vectors of long memories
        engine = self._engine
        trained = await self._trained_model() if engine is None else None
        if trained is not None:
            engine = await self._trained_engine(
                trained.engine, trained.path, trained.model, trained.adapter
            )
            log.info("trained model restored", model=trained.model, job=trained.job_id)
            self.base = await self._job_base(trained.job_id) or self.base
        if engine is None:
            engine = await asyncio.to_thread(
                build_engine,
                s.brain_engine,
                path=s.brain_model_path,
                name=s.brain_model_name,
                openai_url=s.brain_openai_url,
                openai_key=s.brain_openai_key,
                context_tokens=s.brain_context_tokens,
            )
        self.holder = EngineHolder(engine)
        if trained is None:
            self.base = _engine_key(engine)
        if self._embed_worker:
            worker, _ = make_embed_worker(
                self.bus.js,
                self.bus.publisher,
                self.embedder,
                producer=s.producer,
                batch=64,
                fetch_wait_s=0.05,
                max_deliver=s.worker_max_deliver,
                backoff_s=tuple(s.worker_backoff_s),
                replicas=s.stream_replicas,
            )
            self._workers.append(worker)
            self._tasks.append(asyncio.create_task(worker.run(), name="brain-embed"))
        self.runner = ProjectionRunner(self.bus.js, self.index, batch=256, idle_s=0.2)
        await self.runner.catch_up()
        self._tasks.append(asyncio.create_task(self.runner.run(), name="brain-recall"))
        specs = (
            self._agent_specs
            if self._agent_specs is not None
            else load_agents(s.brain_agents_dir or None)
        )
        self.agents = AgentRunner(
            self.bus.js,
            self.bus.publisher,
            specs,
            AgentContext(self.bus.publisher, self),
            max_deliver=s.worker_max_deliver,
            backoff_s=tuple(s.worker_backoff_s),
            replicas=s.stream_replicas,
        )
        await self.agents.start()
        self._tasks.append(asyncio.create_task(self._tail_events(), name="brain-logs"))
        log.info("brain started", model=engine.name, engine=engine.kind, agents=len(specs))

    async def stop(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.settings.stop_grace_s + 10)
        if self.agents is not None:
            await self.agents.stop()
        await close_judge(self)
        for w in self._workers:
            w.stop()
        if self.runner is not None:
            self.runner.stop()
        for t in self._tasks:
            if t.get_name() == "brain-logs":
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.holder is not None:
            await self.holder.close()
        if self.bus is not None:
            await self.bus.close()
        self.index.close()

    async def _trained_model(self) -> ModelSwapped | None:
        """The last swap, when it put in a trained model over the base these settings
        name (so a restart keeps what training taught; a changed base setting wins)."""
        from streams.events import decode

        assert self.bus is not None
        s = self.settings
        try:
            msg = await self.bus.js.get_last_msg("BRAIN", ModelSwapped.SUBJECT)
            last = decode(msg.data or b"")
        except Exception:  # no swap yet (or no stream): the configured model
            return None
        if not isinstance(last, ModelSwapped) or not last.job_id or last.engine != s.brain_engine:
            return None
        if last.engine == "llama":
            base = s.brain_model_path or str(packaged_gguf())
            if last.path != base or not last.adapter:
                return None
            return last if await asyncio.to_thread(Path(last.adapter).is_file) else None
        return last  # a fine-tuned model id, served by the same API

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def publish(self, event: Event) -> None:
        assert self.bus is not None
        await self.bus.publisher.publish(event)

    def publish_later(self, event: Event) -> None:
        """Publish without making the caller wait (awaited by :meth:`stop`)."""
        self._spawn(self.publish(event))

    @property
    def model(self) -> str:
        assert self.holder is not None
        return self.holder.current.name

    # --- the live event tail (``/api/system/logs``) -------------------------------------

    async def _tail_events(self) -> None:
        from streams.events import decode

        assert self.bus is not None
        sub = await self.bus.nc.subscribe("engram.>")
        try:
            async for msg in sub.messages:
                if not self.listeners or msg.subject.startswith("$"):
                    continue
                try:
                    event = decode(msg.data)
                except InputError:
                    continue
                for q in list(self.listeners):
                    if q.qsize() < 1000:
                        q.put_nowait(event)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- the prompt flow ----------------------------------------------------------------

    async def prepare(self, req: ChatRequest) -> Prepared:
        """Check the request, publish PromptReceived, recall and inject memories."""
        if not req.messages or req.messages[-1].get("role") != "user":
            raise InputError("messages must end with a user message")
        prompt = str(req.messages[-1].get("content") or "")
        if not prompt.strip():
            raise InputError("the last user message is empty")
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.publish_later(
            PromptReceived(
                completion_id=cid,
                user=req.user,
                prompt=prompt,
                session_id=req.session_id,
                agent_id=req.agent_id,
                model=self.model,
            )
        )
        memories: list[Hit] = []
        lesson: Hit | None = None
        started = time.perf_counter()
        if req.recall:
            ns = namespace_of(req.user)
            k = req.top_k if req.top_k is not None else self.settings.brain_top_k
            vec = await asyncio.to_thread(self.embedder.embed_one, prompt)
            lesson = self.index.lesson_for(ns, vec, self.settings.brain_lesson_similarity)
            if k > 0:
                memories = await asyncio.to_thread(
                    self.index.search, ns, prompt, vec, k, session_id=req.session_id
                )
        recalled = time.perf_counter()
        in_context = {" ".join(m.get("content", "").lower().split()) for m in req.messages}
        injected, budget = [], self.settings.brain_memory_tokens
        for hit in memories:
            line = _memory_line(hit)
            cost = approx_tokens(line)
            if " ".join(hit.text.lower().split()) in in_context:
                continue
            if cost > budget:
                continue
            injected.append(hit)
            budget -= cost
        messages = [dict(m) for m in req.messages]
        if injected:  # into the final user turn: small models ignore the system prompt
            block = "\n".join(_memory_line(h) for h in injected)
            messages[-1]["content"] = f"{MEMORY_HEADER}\n{block}\n\n{prompt}"
        done = time.perf_counter()
        prepared = Prepared(
            completion_id=cid,
            request=req,
            prompt=prompt,
            messages=messages,
            memories=injected,
            lesson=lesson,
            recall_ms=(recalled - started) * 1000,
            inject_ms=(done - recalled) * 1000,
        )
        self.publish_later(
            MemoryRecalled(
                completion_id=cid,
                user=req.user,
                cids=[h.cid for h in injected],
                scores=[round(h.score, 6) for h in injected],
                injected=len(injected),
                lesson_cid=lesson.cid if lesson else "",
                recall_ms=round(prepared.recall_ms, 3),
            )
        )
        return prepared

    async def generate(self, prep: Prepared) -> AsyncIterator[Chunk]:
        """Stream the answer; publishes CompletionGenerated when it is complete."""
        assert self.holder is not None
        req = prep.request
        max_tokens = req.max_tokens or self.settings.brain_max_tokens
        started = time.perf_counter()
        parts: list[str] = []
        final = Chunk("", "stop")
        async with self.holder.acquire() as engine:
            model = engine.name
            if prep.lesson is not None:  # a corrected answer for this very question
                answer = str(prep.lesson.metadata.get("answer", ""))
                parts.append(answer)
                yield Chunk(answer)
                final = Chunk("", "stop", approx_tokens(prep.prompt), approx_tokens(answer))
            else:
                async for chunk in engine.generate(
                    prep.messages, max_tokens=max_tokens, temperature=req.temperature
                ):
                    if chunk.finish_reason is None:
                        parts.append(chunk.text)
                        yield chunk
                    else:
                        final = chunk
        if final.finish_reason == "cancelled":
            return
        event = CompletionGenerated(
            completion_id=prep.completion_id,
            user=req.user,
            prompt=prep.prompt,
            answer="".join(parts),
            model=model,
            session_id=req.session_id,
            agent_id=req.agent_id,
            prompt_tokens=final.prompt_tokens,
            completion_tokens=final.completion_tokens,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            memories_used=[h.cid for h in prep.memories],
            write_memory=req.write,
            finish_reason=final.finish_reason or "stop",
            lesson_cid=prep.lesson.cid if prep.lesson else "",
        )
        self.recent[prep.completion_id] = event
        while len(self.recent) > RECENT_COMPLETIONS:
            self.recent.popitem(last=False)
        self.publish_later(event)
        yield final

    async def chat(self, req: ChatRequest) -> tuple[Prepared, str, Chunk]:
        """One whole completion: (prepared, answer, final chunk with counts)."""
        prep = await self.prepare(req)
        parts, final = [], Chunk("", "stop")
        async for chunk in self.generate(prep):
            if chunk.finish_reason is None:
                parts.append(chunk.text)
            else:
                final = chunk
        return prep, "".join(parts), final

    # --- model swaps --------------------------------------------------------------------

    async def swap(self, engine: Engine, *, job_id: str = "") -> ModelSwapped:
        assert self.holder is not None
        old = await self.holder.swap(engine)
        if not job_id:  # another base (an operator's swap); a trained one keeps its base
            self.base = _engine_key(engine)
        adapter = getattr(engine, "adapter", None)
        event = ModelSwapped(
            model=engine.name,
            previous=old.name,
            engine=engine.kind,
            path=str(getattr(engine, "path", "")),
            adapter=str(adapter or ""),
            job_id=job_id,
        )
        await self.publish(event)
        log.info("model swapped", model=engine.name, previous=old.name)
        return event

    # --- training (engram/brain/training.py) -------------------------------------------

    def training_request(self, dataset: DatasetExported) -> TrainingRequested | None:
        """The job that trains the configured backend on ``dataset`` over the current
        model (None without a trainer or without examples)."""
        if self.trainer is None or not dataset.examples:
            return None
        name, kind, base_path = self.base
        return TrainingRequested(
            causation_id=dataset.event_id,
            job_id=job_id_for(self.trainer.name, dataset.sha256, name, base_path),
            trainer=self.trainer.name,
            dataset_path=dataset.path,
            dataset_sha256=dataset.sha256,
            dataset_version=dataset.version,
            base_model=name,
            base_engine=kind,
            base_path=base_path,
        )

    async def _job_base(self, job_id: str) -> tuple[str, str, str] | None:
        """The base a training job trained, from its request on the bus."""
        assert self.bus is not None
        req = (await job_history(self.bus.js, job_id)).requested
        return None if req is None else (req.base_model, req.base_engine, req.base_path)

    async def request_training(
        self, dataset: DatasetExported
    ) -> tuple[TrainingRequested | None, bool]:
        """Request the job that trains ``dataset`` (see :meth:`training_request`) and say
        whether it was published: a job already trained is not requested again; one whose
        last word is a final failure is requested for another round."""
        job = self.training_request(dataset)
        if job is None:
            return None, False
        assert self.bus is not None
        history = await job_history(self.bus.js, job.job_id)
        if history.finished is not None:
            return job, False
        if history.failed:
            job = msgspec.structs.replace(job, retry=history.final_failures)
        await self.publish(job)
        return job, True

    def training_attempt(self, job_id: str, retry: int = 0) -> int:
        """The attempt number (from 1) of this retry round of the job, now running."""
        job = self.jobs.setdefault(job_id, {"attempts": 0})
        if job.get("retry", 0) != retry:
            job.update(retry=retry, attempts=0)
        job.update(status="running", stage="starting", progress=0.0, error="")
        job["attempts"] += 1
        return int(job["attempts"])

    def training_progress(self, job_id: str) -> Progress:
        def report(stage: str, fraction: float) -> None:
            self.jobs.setdefault(job_id, {"attempts": 0}).update(
                stage=stage, progress=round(min(1.0, max(0.0, fraction)), 3)
            )

        return report

    def training_failed(self, job_id: str, error: str) -> None:
        self.jobs.setdefault(job_id, {"attempts": 0}).update(status="failed", error=error)

    async def _trained_engine(self, kind: str, path: str, model: str, adapter: str) -> Engine:
        """A trained model's engine: base + adapter (llama), or the fine-tuned model id on
        the fine-tuning API's endpoint (openai)."""
        s = self.settings
        return await asyncio.to_thread(
            build_engine,
            kind,
            path=path,
            name=model,
            openai_url=s.brain_finetune_url or s.brain_openai_url,
            openai_key=s.brain_finetune_key or s.brain_openai_key,
            context_tokens=s.brain_context_tokens,
            adapter=adapter,
        )

    async def swap_trained(self, done: TrainingFinished) -> ModelSwapped:
        """Load what a job trained and swap it in (no restart, no dropped request)."""
        engine = await self._trained_engine(done.engine, done.base_path, done.model, done.adapter)
        base = await self._job_base(done.job_id)
        event = await self.swap(engine, job_id=done.job_id)
        self.base = base or self.base
        self.jobs.setdefault(done.job_id, {"attempts": 0}).update(
            status="finished", stage="swapped in", progress=1.0, model=done.model
        )
        return event

    # --- waiting for memories (tests, `engram brain chat` on exit) ----------------------

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait until every memory the brain asked to write is recallable (or ``timeout``)."""
        assert self.bus is not None and self.runner is not None
        deadline = time.monotonic() + timeout
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)
        while time.monotonic() < deadline:
            if await self._pending() == 0:
                info = await self.bus.js.stream_info("MEMORY")
                if await self.runner.wait_for(info.state.last_seq, timeout=1.0):
                    return True
            await asyncio.sleep(0.1)
        return False

    async def _pending(self) -> int:
        assert self.bus is not None
        total = 0
        # the consumers that write memories (other agents may be retrying: not waited for)
        for name in ("embedder", "agent-memory-writer", "agent-feedback"):
            stream = "INGEST" if name == "embedder" else "BRAIN"
            try:
                ci = await self.bus.js.consumer_info(stream, name)
            except Exception:
                continue
            total += int(ci.num_pending or 0) + int(ci.num_ack_pending or 0)
        return total


def _engine_key(engine: Engine) -> tuple[str, str, str]:
    return (engine.name, engine.kind, str(getattr(engine, "path", "")))


def _memory_line(hit: Hit) -> str:
    if hit.kind == "lesson":
        return f'- Asked "{hit.text}", the right answer is: {hit.metadata.get("answer", "")}'
    who = "The user said" if hit.role == "user" else "You said"
    return f"- {who}: {hit.text}"


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background publish failed", error=repr(task.exception()))
