"""Training: a correction → the exported dataset → a LoRA trained here (JAX over the GGUF)
→ hot-swapped into llama.cpp, so the next answer carries the correction without any memory.
Real nats-server, real embedder, SmolLM2 on llama.cpp, real HTTP and the `openai` client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.js import api

from engram.brain.engines import packaged_gguf
from engram.brain.service import Brain, ChatRequest
from streams.events import DeadLettered, TrainingFailed, TrainingRequested, decode

from .servers import Server, brain_server

pytest.importorskip("llama_cpp")
pytest.importorskip("jax")
pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = "What is the capital of Zorbia?"
CORRECTION = "The capital of Zorbia is Blorptown."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    root = tmp_path_factory.mktemp("brain-train")
    async with brain_server(
        root,
        "brain-train-test",
        worker_max_deliver=2,
        worker_backoff_s=[0.1, 0.2],
        brain_trainer="lora",
        brain_lora_steps=10,
    ) as server:
        yield server


async def _ask(server: Server, user: str, prompt: str = QUESTION) -> str:
    reply = await server.client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=16,
        extra_body={"memory": {"user_id": user, "top_k": 0, "write": False}},
    )
    return reply.choices[0].message.content or ""


async def test_the_jax_forward_pass_computes_what_llama_cpp_computes() -> None:
    """The trainer's model is llama.cpp's model: same logits on the same tokens (up to the
    quantized activations llama.cpp multiplies with), so an adapter trained on one works
    on the other. (Run as the trainer runs: in a child process.)"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engram.brain.lora", "--check", "--base", str(packaged_gguf()),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    figures = json.loads(out.decode().strip().splitlines()[-1])
    assert figures["tokens"] >= 15
    assert figures["min_logit_correlation"] > 0.995, figures
    assert figures["top1_agreement"] >= 0.75, figures


async def test_a_correction_trains_an_adapter_that_is_swapped_in(server: Server) -> None:
    base_model = server.brain.model
    before = await _ask(server, "yan")
    assert "blorptown" not in before.lower()
    first = await server.client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=16,
        extra_body={"memory": {"user_id": "zed"}},
    )
    started = await server.correct_and_train(first.id, CORRECTION)
    assert started["trainer"] == "lora" and started["corrected"] >= 1
    exported = await asyncio.to_thread(Path(started["path"]).read_text)
    assert CORRECTION in exported
    assert before not in exported  # the corrected prompt's other answer is a wrong one
    job_id = started["job"]["job_id"]
    assert started["job"]["status"] in ("queued", "running")

    seen_progress: set[float] = set()
    deadline = time.monotonic() + 600
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, job = await server.get(f"/api/llm/train/{job_id}")
        assert status == 200
        if job["status"] == "swapped_in":
            break
        assert job["status"] in ("queued", "running", "trained"), job
        seen_progress.add(job.get("progress", 0.0))
        await asyncio.sleep(1.0)
    assert job["status"] == "swapped_in", job
    assert any(0 < p < 1 for p in seen_progress), "progress was reported while training"
    assert job["metrics"]["loss_last"] < job["metrics"]["loss_first"] / 4
    adapter = Path(job["adapter"])
    digest = hashlib.sha256(await asyncio.to_thread(adapter.read_bytes)).hexdigest()
    assert digest == job["adapter_sha256"]

    # the brain now serves base + adapter, under a new name, without a restart
    models = await server.client.models.list()
    assert models.data[0].id == server.brain.model == job["model"] != base_model
    assert job_id in job["model"]
    # another user, no memory recalled: the answer comes from the trained weights
    after = await _ask(server, "yan")
    assert "blorptown" in after.lower(), after
    # and what it knew besides stays (the anchors hold it): not every capital is Blorptown
    neighbour = await _ask(server, "yan", "What is the capital of Germany?")
    assert "blorptown" not in neighbour.lower() and "berlin" in neighbour.lower(), neighbour
    assert job["metrics"]["anchors"] >= 4
    # a restart keeps what training taught (the last swap names the adapter over this base)
    s = server.brain.settings
    again = Brain(
        msgspec.structs.replace(s, data_dir=s.data_dir + "-restarted", node_id="brain-restarted"),
        agents=[],
        embed_worker=False,
    )
    await again.start()
    try:
        assert again.model == job["model"]
        _, answer, _ = await again.chat(
            ChatRequest(messages=[{"role": "user", "content": QUESTION}], user="yan", recall=False)
        )
        assert "blorptown" in answer.lower(), answer
    finally:
        await again.stop()
    status, unknown = await server.get("/api/llm/train/train-0000000000000000")
    assert status == 404 and "error" in unknown


async def test_a_job_the_trainer_cannot_do_is_dead_lettered_with_the_cause(
    server: Server,
) -> None:
    js = server.brain.bus.js  # type: ignore[union-attr]
    dlq = await js.subscribe("engram.dlq.agent-trainer", deliver_policy=api.DeliverPolicy.NEW)
    failed = await js.subscribe(TrainingFailed.SUBJECT, deliver_policy=api.DeliverPolicy.NEW)
    job = TrainingRequested(
        job_id="train-00000000000000ff",
        trainer="lora",
        dataset_path="/nonexistent.jsonl",
        dataset_sha256="0" * 64,
        dataset_version=1,
        base_model="gpt-hosted",
        base_engine="openai",
    )
    await server.brain.publish(job)
    dead = decode((await dlq.next_msg(timeout=30)).data)
    assert isinstance(dead, DeadLettered)
    assert "llama (GGUF) base" in dead.error and dead.deliveries == 1
    attempt = decode((await failed.next_msg(timeout=5)).data)
    assert isinstance(attempt, TrainingFailed) and attempt.job_id == job.job_id
    status, info = await server.get(f"/api/llm/train/{job.job_id}")
    assert status == 200 and info["status"] == "failed" and info["failures"]
    await dlq.unsubscribe()
    await failed.unsubscribe()
