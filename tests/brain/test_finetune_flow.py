"""Learning from a correction through a fine-tuning API, end to end: a real brain (nats-server,
embedder, HTTP, the `openai` client) on a hosted model, with ``brain_trainer = "openai"``;
the hosted API (chat and fine-tuning) is played by an aiohttp server in the test, since the
paid one cannot run here. A correction → ``POST /api/llm/train`` → the fine-tune →
``TrainingFinished`` → ``ModelSwapped`` → another user, without memory, gets the correction
from the fine-tuned model itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.js import api

from engram.brain.service import Brain, ChatRequest
from streams.events import (
    DeadLettered,
    ModelSwapped,
    TrainingFailed,
    TrainingFinished,
    TrainingRequested,
    decode,
    encode,
)

from .fake_openai import FakeOpenAI
from .servers import Server, brain_server, hosted_api

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = "What is the secret password of the club?"
CORRECTION = "The password is swordfish."


class Env(Server):
    fake: FakeOpenAI

    async def ask(self, user: str, prompt: str = QUESTION) -> Any:
        return await self.client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=16,
            extra_body={"memory": {"user_id": user, "top_k": 0, "write": False}},
        )

    async def correct(self, user: str, prompt: str, correction: str) -> str:
        first = await self.ask(user, prompt)
        body = await self.correct_and_train(first.id, correction)
        return str(body["job"]["job_id"])

    async def events(self, subject: str) -> list[Any]:
        js = self.brain.bus.js  # type: ignore[union-attr]
        sub = await js.subscribe(subject, ordered_consumer=True)
        out = []
        try:
            while True:
                try:
                    out.append(decode((await sub.next_msg(timeout=0.3)).data))
                except TimeoutError:
                    return out
        finally:
            await sub.unsubscribe()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("finetune-flow")
    fake = FakeOpenAI()
    async with (
        hosted_api(fake) as hosted,
        brain_server(
            root,
            "finetune-flow",
            Env,
            worker_max_deliver=2,
            worker_backoff_s=[0.1, 0.2],
            brain_engine="openai",
            brain_openai_url=hosted,
            brain_openai_key="sk-test",
            brain_model_name="base-model",
            brain_trainer="openai",
            brain_finetune_poll_s=0.05,
        ) as e,
    ):
        e.fake = fake
        yield e


async def test_a_correction_is_fine_tuned_and_swapped_in(env: Env) -> None:
    before = await env.ask("erin")
    assert "swordfish" not in (before.choices[0].message.content or "")
    job_id = await env.correct("dana", QUESTION, CORRECTION)

    deadline, status = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        code, status = await env.get(f"/api/llm/train/{job_id}")
        assert code == 200
        if status["status"] in ("swapped_in", "failed"):
            break
        await asyncio.sleep(0.1)
    assert status["status"] == "swapped_in", status
    model = f"ft:base-model:engram:{job_id}"
    (finished,) = [e for e in await env.events(TrainingFinished.SUBJECT) if e.job_id == job_id]
    assert finished.model == model and finished.engine == "openai"
    swapped = [e for e in await env.events(ModelSwapped.SUBJECT) if e.job_id == job_id]
    assert [e.model for e in swapped] == [model]
    assert env.fake.created_jobs == 1

    # another user, no memory: the fine-tuned model itself now knows
    after = await env.ask("erin")
    assert after.model == model
    assert after.choices[0].message.content == CORRECTION


async def test_a_failed_fine_tune_is_retried_then_dead_lettered(env: Env) -> None:
    js = env.brain.bus.js  # type: ignore[union-attr]
    dlq = await js.subscribe("engram.dlq.agent-trainer", deliver_policy=api.DeliverPolicy.NEW)
    env.fake.fail_jobs = "the GPU caught fire"
    jobs = env.fake.created_jobs
    try:
        job_id = await env.correct("dana", "Who founded the club?", "Ada founded the club.")
        dead = decode((await dlq.next_msg(timeout=60)).data)
    finally:
        env.fake.fail_jobs = ""
        await dlq.unsubscribe()
    assert isinstance(dead, DeadLettered)
    assert dead.deliveries == 2 and "GPU caught fire" in dead.error
    failed = [e for e in await env.events(TrainingFailed.SUBJECT) if e.job_id == job_id]
    assert [e.attempt for e in failed] == [1, 2]
    assert all("GPU caught fire" in e.error for e in failed)
    assert env.fake.created_jobs == jobs + 2  # a failed remote job is not resumed: retried
    code, status = await env.get(f"/api/llm/train/{job_id}")
    assert code == 200 and status["status"] == "failed"
    # chat went on, on the model swapped in before
    assert (await env.ask("erin")).choices[0].message.content == CORRECTION


async def test_a_restart_keeps_the_fine_tuned_model(env: Env, tmp_path: Path) -> None:
    swapped = [e for e in await env.events(ModelSwapped.SUBJECT) if e.job_id]
    model = swapped[-1].model
    assert model.startswith("ft:base-model:engram:")
    # another brain process on the same bus (its own data dir), configured with the base model
    settings = msgspec.structs.replace(env.brain.settings, data_dir=str(tmp_path / "again"))
    again = Brain(settings)
    await again.start()
    try:
        assert again.model == model
        req = ChatRequest(messages=[{"role": "user", "content": QUESTION}], user="zoe", write=False)
        _, answer, _ = await again.chat(req)
        assert answer == CORRECTION
    finally:
        await again.stop()


async def _idle(env: Env, timeout: float = 60.0) -> None:
    """Until every consumer of the brain's stream has nothing pending or unacked."""
    js = env.brain.bus.js  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = await js.consumers_info("BRAIN")
        if all((c.num_pending or 0) + (c.num_ack_pending or 0) == 0 for c in infos):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the brain's agents never went idle")


async def test_a_failed_job_asked_again_trains_and_then_never_again(env: Env) -> None:
    await _idle(env)  # every completion scored: the dataset holds still
    # the same dataset as the job that failed for good above: asked again, another round
    status, body = await env.post("/api/llm/train", {})
    assert status == 202, body
    job_id = body["job"]["job_id"]
    (request,) = [
        e for e in await env.events(TrainingRequested.SUBJECT) if e.job_id == job_id and e.retry
    ]
    assert request.retry == 1
    deadline = time.monotonic() + 60
    while body["job"]["status"] not in ("swapped_in", "failed") and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        _, body["job"] = await env.get(f"/api/llm/train/{job_id}")
    assert body["job"]["status"] == "swapped_in", str(body["job"])
    assert [f["attempt"] for f in body["job"]["failures"]] == [1, 2]  # the first round's

    # asked again for the same dataset on the same base: the job as it stands, not a new one
    status, again = await env.post("/api/llm/train", {})
    assert status == 200, again
    assert again["job"]["job_id"] == job_id and again["job"]["status"] == "swapped_in"
    assert "trained already" in again["note"]

    # the request once more, past JetStream's duplicate window (another message id), as a
    # redelivery after a crash between TrainingFinished and the ack would bring it
    swaps = [e for e in await env.events(ModelSwapped.SUBJECT) if e.job_id == job_id]
    jobs, model = env.fake.created_jobs, env.brain.model
    js = env.brain.bus.js  # type: ignore[union-attr]
    await js.publish(request.SUBJECT, encode(request), headers={"Nats-Msg-Id": "copy-1"})
    await _idle(env)
    assert [e for e in await env.events(ModelSwapped.SUBJECT) if e.job_id == job_id] == swaps
    finished = [e for e in await env.events(TrainingFinished.SUBJECT) if e.job_id == job_id]
    assert len(finished) == 1
    assert env.fake.created_jobs == jobs and env.brain.model == model
