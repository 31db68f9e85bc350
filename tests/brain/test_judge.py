"""The LLM judge: a real brain (nats-server, embedder, HTTP) whose judge is either the
packaged SmolLM2 on llama.cpp or a hosted API played by an aiohttp server in the test (a
paid API cannot run here) behind the real :class:`OpenAIEngine`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from nats.js import api

from engram.brain.judge import JUDGE_MARKER, judge_messages, judge_of, parse_verdict
from engram.brain.service import Brain, ChatRequest
from engram.config import ConfigError, Settings
from streams.events import (
    CompletionGenerated,
    CompletionScored,
    DeadLettered,
    IngestRequested,
    decode,
)

from .fake_openai import FakeOpenAI
from .servers import brain_server, hosted_api

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: what the hosted chat model answers and what the hosted judge says of it, by topic
TOPICS = {
    "capital": ("The capital of France is Berlin.", "Score: 2/10 - wrong capital"),
    "colour": ("Blue is a calm colour for walls.", "Score: 9/10 - a fine colour"),
    "weather": ("It is sunny and warm here.", "I would rather not grade this one."),
    "explode": ("This answer upsets the judge.", 500),
}


def hosted(model: str, messages: list[dict[str, Any]]) -> str | int:
    case = str(messages[-1].get("content", "")) if messages else ""
    for topic, (answer, verdict) in TOPICS.items():
        if topic in case:
            return verdict if model == "judge-model" else answer
    return "I do not know."


class Env:
    def __init__(self, brain: Brain, url: str, fake: FakeOpenAI | None = None) -> None:
        self.brain = brain
        self.url = url
        self.fake = fake

    @property
    def js(self) -> Any:
        assert self.brain.bus is not None
        return self.brain.bus.js

    async def chat(self, prompt: str, user: str = "judged") -> str:
        req = ChatRequest(messages=[{"role": "user", "content": prompt}], user=user, write=False)
        prep, _, _ = await self.brain.chat(req)
        return prep.completion_id

    async def scores(self, completion_id: str, want: int, timeout: float = 30.0) -> list[Any]:
        """The CompletionScored events of a completion, once ``want`` exist (or timeout)."""
        deadline = time.monotonic() + timeout
        found: list[Any] = []
        while time.monotonic() < deadline:
            found = [e for e in await stream_events(self.js, CompletionScored.SUBJECT)]
            found = [e for e in found if e.completion_id == completion_id]
            if len(found) >= want:
                return found
            await asyncio.sleep(0.2)
        return found

    async def idle(self, consumer: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ci = await self.js.consumer_info("BRAIN", consumer)
            if not ci.num_pending and not ci.num_ack_pending:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{consumer} still busy after {timeout}s")


async def stream_events(js: Any, subject: str) -> list[Any]:
    """Every event on ``subject`` in the BRAIN stream so far."""
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL)
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except TimeoutError:
                break
            out.append(decode(msg.data))
    finally:
        await sub.unsubscribe()
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hosted_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    """A brain whose chat model and judge are both hosted (the fake API)."""
    root = tmp_path_factory.mktemp("judge-hosted")
    fake = FakeOpenAI()
    fake.reply = hosted
    async with (
        hosted_api(fake) as api_url,
        brain_server(
            root,
            "judge-test",
            brain_engine="openai",
            brain_openai_url=api_url,
            brain_model_name="chat-upstream",
            brain_judge="openai",
            brain_judge_url=api_url,
            brain_judge_model="judge-model",
            brain_judge_key="sk-judge",
        ) as server,
    ):
        yield Env(server.brain, server.url, fake)


async def test_verdicts_are_parsed_never_invented() -> None:
    assert parse_verdict("Score: 7/10 - clear and correct") == (0.7, "clear and correct")
    assert parse_verdict('{"score": 8, "reason": "right city"}') == (0.8, "right city")
    assert parse_verdict('Verdict: {"score": 0.25, "reason": "vague"}') == (0.25, "vague")
    assert parse_verdict("I'd say 3 out of 10, it rambles.") == (0.3, "it rambles.")
    assert parse_verdict("Rating: 80% - mostly right") == (0.8, "mostly right")
    assert parse_verdict("**Score:** 10/10") == (1.0, "**Score:** 10/10")
    for unscored in ("I cannot decide.", "The answer is 10.", "Score: 12/10 - wow", ""):
        assert parse_verdict(unscored) is None
    case = judge_messages("Why?", "Because.")[-1]["content"]
    assert case.startswith(JUDGE_MARKER) and "Because." in case


async def test_judge_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="brain_judge"):
        Settings(brain_judge="gpt")
    with pytest.raises(ConfigError, match="brain_judge_url"):
        Settings(brain_judge="openai", brain_judge_model="m")
    with pytest.raises(ConfigError, match="brain_judge_model"):
        Settings(brain_judge="openai", brain_judge_url="http://127.0.0.1:1/v1")
    s = Settings(brain_judge="openai", brain_judge_url="http://h/v1", brain_judge_model="m")
    assert s.brain_judge_key is None
    s = Settings(brain_judge="llama", brain_judge_key="sk-secret")
    assert "sk-secret" not in json.dumps(s.shown())


async def test_a_hosted_judge_scores_beside_the_heuristics(hosted_env: Env) -> None:
    cid = await hosted_env.chat("What is the capital of France?")
    scored = {e.scorer: e for e in await hosted_env.scores(cid, want=2)}
    assert set(scored) == {"heuristic", "judge:judge-model"}
    judged = scored["judge:judge-model"]
    assert judged.score == 0.2 and "wrong capital" in judged.reasons[0]
    assert scored["heuristic"].score >= 0.7  # the heuristics cannot tell Berlin is wrong
    # the judge saw the prompt and the answer
    _, messages = next(c for c in hosted_env.fake.chats if c[0] == "judge-model")  # type: ignore[union-attr]
    assert "capital of France" in messages[-1]["content"]
    assert "Berlin" in messages[-1]["content"]
    # built once per brain
    assert await judge_of(hosted_env.brain) is await judge_of(hosted_env.brain)


async def test_a_reply_without_a_score_publishes_no_judge_score(hosted_env: Env) -> None:
    cid = await hosted_env.chat("How is the weather today?")
    scored = await hosted_env.scores(cid, want=1)
    await hosted_env.idle("agent-judge")
    asked = [m for model, m in hosted_env.fake.chats if model == "judge-model"]  # type: ignore[union-attr]
    assert any("sunny and warm" in m[-1]["content"] for m in asked)
    scored = await hosted_env.scores(cid, want=1, timeout=0.5)
    assert [e.scorer for e in scored] == ["heuristic"]


async def test_a_failing_judge_is_retried_then_dead_lettered_without_blocking_chat(
    hosted_env: Env,
) -> None:
    sub = await hosted_env.js.subscribe(
        "engram.dlq.agent-judge", deliver_policy=api.DeliverPolicy.NEW
    )
    started = time.perf_counter()
    cid = await hosted_env.chat("Please explode now.")
    assert time.perf_counter() - started < 5  # chat never waits for the judge
    msg = await sub.next_msg(timeout=30)
    dead = decode(msg.data)
    await sub.unsubscribe()
    assert isinstance(dead, DeadLettered)
    assert decode(dead.original_data).completion_id == cid  # type: ignore[attr-defined]
    assert dead.deliveries == 3 and "500" in dead.error
    judged = [
        m
        for model, m in hosted_env.fake.chats  # type: ignore[union-attr]
        if model == "judge-model" and "explode" in m[-1]["content"]
    ]
    assert len(judged) == 3
    assert [e.scorer for e in await hosted_env.scores(cid, want=1)] == ["heuristic"]


async def test_the_dataset_prefers_the_judges_score(hosted_env: Env) -> None:
    bad = await hosted_env.chat("Tell me the capital of France.")
    good = await hosted_env.chat("Name a colour for my walls.")
    bad_scores = {e.scorer: e.score for e in await hosted_env.scores(bad, want=2)}
    assert bad_scores == {"heuristic": 1.0, "judge:judge-model": 0.2}
    assert len(await hosted_env.scores(good, want=2)) == 2
    async with (
        aiohttp.ClientSession() as s,
        s.post(hosted_env.url + "/api/llm/train", json={}) as r,
    ):
        assert r.status in (200, 202)
        body = await r.json()
    exported = await asyncio.to_thread(Path(body["path"]).read_text)
    assert "Blue is a calm colour" in exported
    assert "Berlin" not in exported


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    """A brain on SmolLM2 judged by SmolLM2 (a second llama.cpp engine)."""
    pytest.importorskip("llama_cpp")
    root = tmp_path_factory.mktemp("judge-local")
    async with brain_server(root, "judge-test", brain_judge="llama") as server:
        yield Env(server.brain, server.url)


async def test_the_packaged_model_judges_offline(local_env: Env) -> None:
    prompt = "What is the capital of France?"
    req = ChatRequest(messages=[{"role": "user", "content": prompt}], user="lena", write=False)
    prep, answer, _ = await local_env.brain.chat(req)
    scored = {e.scorer: e for e in await local_env.scores(prep.completion_id, want=2, timeout=60)}
    judge = await judge_of(local_env.brain)
    assert judge is not None and judge.kind == "llama"
    verdict = scored[f"judge:{judge.name}"]
    assert 0.0 <= verdict.score <= 1.0
    # the score and the reason are what the model said (temperature 0: it says it again)
    said = "".join(
        [c.text async for c in judge.generate(judge_messages(prompt, answer), max_tokens=48)]
    )
    assert parse_verdict(said.strip()) == (verdict.score, verdict.reasons[0])
    assert verdict.reasons[0] in said


async def test_a_brain_judging_itself_does_not_judge_its_judging(local_env: Env) -> None:
    """The judge pointed at this very brain over HTTP: the judge's own completion comes back
    as a CompletionGenerated, and no agent scores it, judges it or remembers it."""
    brain = local_env.brain
    from engram.brain.judge import close_judge

    await close_judge(brain)
    brain.settings = msgspec.structs.replace(
        brain.settings,
        brain_judge="openai",
        brain_judge_url=f"{local_env.url}/v1",
        brain_judge_model="the-brain-itself",
    )
    before = len(await stream_events(local_env.js, IngestRequested.SUBJECT))
    cid = await local_env.chat("Name a planet.", user="mira")
    deadline = time.monotonic() + 60
    generated: list[Any] = []
    while time.monotonic() < deadline:
        generated = await stream_events(local_env.js, CompletionGenerated.SUBJECT)
        if any(e.prompt.startswith(JUDGE_MARKER) for e in generated):
            break
        await asyncio.sleep(0.2)
    judging = [e for e in generated if e.prompt.startswith(JUDGE_MARKER)]
    assert len(judging) >= 1, "the judge's request went through the brain"
    for name in ("agent-judge", "agent-scorer", "agent-memory-writer"):
        await local_env.idle(name, timeout=60)
    generated = await stream_events(local_env.js, CompletionGenerated.SUBJECT)
    judging = [e for e in generated if e.prompt.startswith(JUDGE_MARKER)]
    assert len(judging) == 1  # nothing judged the judge's completion
    scored = await stream_events(local_env.js, CompletionScored.SUBJECT)
    assert not [e for e in scored if e.completion_id == judging[0].completion_id]
    ours = [e for e in scored if e.completion_id == cid]
    assert "heuristic" in {e.scorer for e in ours}
    # the judge's request wrote no memory (the user's own chat asked for none either)
    assert len(await stream_events(local_env.js, IngestRequested.SUBJECT)) == before
