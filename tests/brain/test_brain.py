"""The brain end to end: a real nats-server, the real embedder and SmolLM2 on llama.cpp, the
real HTTP server, and the real ``openai`` client. One server for the module (loading and
warming take seconds); completions are kept short."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import base58
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from nacl.signing import SigningKey
from nats.js import api

from engram.brain.engines import packaged_gguf
from engram.brain.server import bound_port, make_app
from streams.events import DeadLettered, ModelSwapped, decode

from .servers import Server, brain_server

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.asyncio(loop_scope="module")

FAILING_AGENT = """
from engram.brain.agents import agent
from streams.events import CompletionGenerated

CALLS = []

@agent(on=CompletionGenerated, name="always-fails")
async def always_fails(event, ctx):
    CALLS.append(event.completion_id)
    raise RuntimeError("this agent always fails")
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    root = tmp_path_factory.mktemp("brain")
    agents = root / "agents"
    agents.mkdir()
    (agents / "failing.py").write_text(FAILING_AGENT)
    async with brain_server(root, "brain-test", brain_agents_dir=str(agents)) as server:
        yield server


def texts(memories: list[dict[str, Any]]) -> str:
    return " | ".join(m["memory"] for m in memories)


async def test_chat_through_the_openai_client(server: Server) -> None:
    client = server.client
    models = await client.models.list()
    model = models.data[0].id
    assert model == server.brain.model

    reply = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        user="carol",
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.model_extra is not None and "memories" in reply.model_extra

    pieces, usage, finishes = [], None, []
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8,
        user="carol",
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert "".join(pieces).strip()
    assert finishes and usage is not None and usage.completion_tokens > 0

    # the wire format ends with the OpenAI sentinel
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            server.url + "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "Hi"}],
                "stream": True,
                "max_tokens": 4,
                "memory": {"write": False},
            },
        ) as r,
    ):
        body = await r.text()
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert body.rstrip().endswith("data: [DONE]")


async def test_bad_requests_are_4xx_json(server: Server) -> None:
    assert (await server.post("/v1/chat/completions", b"{not json"))[0] == 400
    status, body = await server.post("/v1/chat/completions", {"messages": []})
    assert status == 400 and "messages" in body["error"]
    status, body = await server.post(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    )
    assert status == 400 and "max_tokens" in body["error"]
    status, body = await server.post("/v1/feedback", {"completion_id": "chatcmpl-nope"})
    assert status == 404 and body["error"]
    status, body = await server.get("/v1/memories/bafy-nothing?user_id=carol")
    assert status == 404
    status, body = await server.post("/v1/memories", {"user_id": "carol"})
    assert status == 400 and "memory" in body["error"]
    status, body = await server.post("/v1/memories/search", {"user_id": "carol", "query": " "})
    assert status == 400 and "query" in body["error"]
    status, body = await server.post("/admin/model", {"path": "/nonexistent.gguf"})
    assert status == 400 and "not a file" in body["error"]
    status, body = await server.post("/v1/auth/verify", {"address": "x" * 40, "nonce": "n"})
    assert status == 401 and "nonce" in body["error"]
    status, spec = await server.get("/openapi.json")
    assert status == 200 and "/v1/chat/completions" in spec["paths"]


async def test_memory_recalled_in_a_later_session_never_for_another_user(server: Server) -> None:
    client = server.client
    await client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "My cat is called Pixel and she is grey."}],
        max_tokens=8,
        extra_body={"memory": {"user_id": "alice", "session_id": "monday"}},
    )
    await client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "I live in Oslo near the harbour."}],
        max_tokens=8,
        extra_body={"memory": {"user_id": "bob", "session_id": "monday"}},
    )
    assert await server.brain.settle(timeout=60)

    question = [{"role": "user", "content": "What is my cat called?"}]
    later = await client.chat.completions.create(
        model="x",
        messages=question,
        max_tokens=16,
        extra_body={"memory": {"user_id": "alice", "session_id": "friday", "write": False}},
    )
    assert later.model_extra is not None
    assert "Pixel" in texts(later.model_extra["memories"])

    other = await client.chat.completions.create(
        model="x",
        messages=question,
        max_tokens=16,
        extra_body={"memory": {"user_id": "bob", "session_id": "friday", "write": False}},
    )
    assert other.model_extra is not None
    assert "Pixel" not in texts(other.model_extra["memories"])
    assert "Oslo" in texts(other.model_extra["memories"])

    # the mem0-style API agrees, and the memories are Engram memories with CIDs
    status, listed = await server.get("/v1/memories?user_id=bob")
    assert status == 200 and "Pixel" not in texts(listed["results"])
    status, found = await server.post(
        "/v1/memories/search", {"user_id": "alice", "query": "cat name", "top_k": 3}
    )
    assert status == 200 and "Pixel" in found["results"][0]["memory"]
    cid = found["results"][0]["id"]
    assert (await server.get(f"/v1/memories/{cid}?user_id=bob"))[0] == 404
    status, history = await server.get(f"/v1/memories/{cid}/history")
    assert status == 200 and history["results"][0]["event"] == "ADD"


async def test_a_correction_changes_the_next_similar_answer(server: Server) -> None:
    client = server.client
    first = await client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "What is the secret password of the club?"}],
        max_tokens=12,
        extra_body={"memory": {"user_id": "dana"}},
    )
    assert "swordfish" not in (first.choices[0].message.content or "").lower()
    status, _ = await server.post(
        "/v1/feedback",
        {"completion_id": first.id, "score": 0.0, "correction": "The password is swordfish."},
    )
    assert status == 202
    assert await server.brain.settle(timeout=60)

    again = await client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "what's the club's secret password?"}],
        max_tokens=12,
        extra_body={"memory": {"user_id": "dana"}},
    )
    assert "swordfish" in (again.choices[0].message.content or "").lower()
    # a lesson is the user's own: another user still gets the model's answer
    stranger = await client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "what's the club's secret password?"}],
        max_tokens=12,
        extra_body={"memory": {"user_id": "erin"}},
    )
    assert "swordfish" not in (stranger.choices[0].message.content or "").lower()

    status, dataset = await server.post("/api/llm/train", {})
    assert status == 200 and dataset["corrected"] >= 1 and len(dataset["sha256"]) == 64
    exported = await asyncio.to_thread(Path(dataset["path"]).read_text)
    assert "swordfish" in exported


async def test_a_failing_agent_is_retried_then_dead_lettered_without_blocking_chat(
    server: Server,
) -> None:
    js = server.brain.bus.js  # type: ignore[union-attr]
    sub = await js.subscribe("engram.dlq.agent-always-fails", deliver_policy=api.DeliverPolicy.NEW)
    started = time.perf_counter()
    reply = await server.client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Count to three."}], max_tokens=8
    )
    assert reply.choices[0].message.content is not None
    assert time.perf_counter() - started < 20
    dead = None
    deadline = time.monotonic() + 30
    while dead is None and time.monotonic() < deadline:
        msg = await sub.next_msg(timeout=deadline - time.monotonic())
        event = decode(msg.data)
        assert isinstance(event, DeadLettered)
        inner = decode(event.original_data)
        if getattr(inner, "completion_id", None) == reply.id:
            dead = event
    assert dead is not None
    assert dead.deliveries == 3 and "always fails" in dead.error
    await sub.unsubscribe()
    # meanwhile the built-in agents went on: the turn was remembered
    assert await server.brain.settle(timeout=60)


async def test_hot_swap_mid_stream(server: Server) -> None:
    before = server.brain.model
    stream = await server.client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=40,
        stream=True,
        extra_body={"memory": {"write": False}},
    )
    got, models, finish, swapped = [], set(), None, None
    async for chunk in stream:
        models.add(chunk.model)
        for c in chunk.choices:
            got.append(c.delta.content or "")
            finish = c.finish_reason or finish
        if swapped is None and "".join(got).strip():
            status, swapped = await server.post(
                "/admin/model", {"path": str(packaged_gguf()), "name": "smollm2-swapped"}
            )
            assert status == 200, swapped
    assert swapped is not None and swapped["previous"] == before
    assert models == {before} and finish in ("stop", "length") and len("".join(got)) > 10
    listed = await server.client.models.list()
    assert [m.id for m in listed.data] == ["smollm2-swapped"]
    after = await server.client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert after.model == "smollm2-swapped"
    info = await server.brain.bus.js.get_last_msg("BRAIN", ModelSwapped.SUBJECT)  # type: ignore[union-attr]
    assert decode(info.data).model == "smollm2-swapped"  # type: ignore[attr-defined]


async def test_wallet_sign_in(server: Server) -> None:
    # a second app on the same brain, in wallet mode
    wallet_brain = copy.copy(server.brain)
    wallet_brain.settings = msgspec.structs.replace(server.brain.settings, brain_auth="wallet")
    runner = web.AppRunner(make_app(wallet_brain))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{bound_port(runner)}"
    w = Server(wallet_brain, url, server.nats)
    try:
        key = SigningKey.generate()
        address = base58.b58encode(bytes(key.verify_key)).decode()
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert (await w.post("/v1/chat/completions", body))[0] == 401

        status, issued = await w.post("/v1/auth/nonce", {"address": address, "scheme": "solana"})
        assert status == 200
        signature = base58.b58encode(key.sign(issued["message"].encode()).signature).decode()
        verify = {
            "address": address,
            "scheme": "solana",
            "nonce": issued["nonce"],
            "signature": signature,
        }
        status, session = await w.post("/v1/auth/verify", verify)
        assert status == 200, session
        token = session["token"]
        status, replayed = await w.post("/v1/auth/verify", verify)
        assert status == 401 and "already used" in replayed["error"]

        other = SigningKey.generate()
        status, issued2 = await w.post("/v1/auth/nonce", {"address": address, "scheme": "solana"})
        forged = base58.b58encode(other.sign(issued2["message"].encode()).signature).decode()
        status, refused = await w.post(
            "/v1/auth/verify", {**verify, "nonce": issued2["nonce"], "signature": forged}
        )
        assert status == 401 and "does not verify" in refused["error"]

        status, answer = await w.post("/v1/chat/completions", body, token=token)
        assert status == 200 and answer["choices"][0]["message"]["content"] is not None
        status, refused = await w.post(
            "/v1/chat/completions", {**body, "user": "someone-else"}, token=token
        )
        assert status == 401
        assert (await w.post("/v1/chat/completions", body, token=token + "x"))[0] == 401
    finally:
        await runner.cleanup()


async def test_live_logs_stream_the_brain_events(server: Server) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(server.url + "/api/system/logs?kind=CompletionGenerated&user=frank") as r,
    ):
        assert r.headers["Content-Type"].startswith("text/event-stream")
        await asyncio.sleep(0.2)
        await server.client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, user="frank"
        )
        async with asyncio.timeout(20):
            async for line in r.content:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    assert event["kind"] == "CompletionGenerated" and event["user"] == "frank"
                    break


async def test_the_openai_engine_talks_to_a_compatible_server(server: Server) -> None:
    from engram.brain.engines import OpenAIEngine

    engine = OpenAIEngine(f"{server.url}/v1", name="upstream")
    try:
        chunks = [
            c
            async for c in engine.generate([{"role": "user", "content": "Say yes."}], max_tokens=4)
        ]
    finally:
        await engine.close()
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].completion_tokens > 0


async def test_mem0_style_update_and_delete_from_the_events(server: Server) -> None:
    status, added = await server.post(
        "/v1/memories", {"user_id": "gina", "memory": "I prefer tea over coffee."}
    )
    assert status == 202 and added["results"][0]["status"] == "queued"
    assert await server.brain.settle(timeout=60)
    status, listed = await server.get("/v1/memories?user_id=gina")
    (memory,) = listed["results"]
    cid = memory["id"]

    async with aiohttp.ClientSession() as s:
        async with s.put(
            f"{server.url}/v1/memories/{cid}", json={"memory": "I prefer coffee over tea now."}
        ) as r:
            assert r.status == 202
        assert await server.brain.settle(timeout=60)
        _, listed = await server.get("/v1/memories?user_id=gina")
        assert [m["memory"] for m in listed["results"]] == ["I prefer coffee over tea now."]
        new_cid = listed["results"][0]["id"]
        async with s.delete(f"{server.url}/v1/memories/{new_cid}?user_id=hank") as r:
            assert r.status == 404  # another user's memory does not exist for them
        async with s.delete(f"{server.url}/v1/memories/{new_cid}?user_id=gina") as r:
            assert r.status == 202
    assert await server.brain.settle(timeout=60)
    _, listed = await server.get("/v1/memories?user_id=gina")
    assert listed["results"] == []
    _, history = await server.get(f"/v1/memories/{cid}/history")
    assert [h["event"] for h in history["results"]][:2] == ["ADD", "UPDATE"]
    _, history = await server.get(f"/v1/memories/{new_cid}/history")
    assert [h["event"] for h in history["results"]] == ["ADD", "DELETE"]


async def test_hotkey_sign_in(server: Server) -> None:
    import bittensor_core

    key = bittensor_core.Keypair.from_uri("//Alice")
    status, issued = await server.post(
        "/v1/auth/nonce", {"address": key.ss58_address, "scheme": "btauth"}
    )
    assert status == 200
    signature = key.sign(issued["message"].encode()).hex()
    body = {
        "address": key.ss58_address,
        "scheme": "btauth",
        "nonce": issued["nonce"],
        "signature": signature,
    }
    status, session = await server.post("/v1/auth/verify", body)
    assert status == 200 and session["user"] == key.ss58_address
    assert (await server.post("/v1/auth/verify", body))[0] == 401


async def test_the_seed_paths(server: Server) -> None:
    status, user = await server.post("/api/user/create", {"user": "ivy"})
    assert status == 201 and user["namespace"] == "brain.ivy"
    status, answer = await server.post(
        "/api/llm/query", {"prompt": "Say hi.", "user": "ivy", "max_tokens": 4}
    )
    assert status == 200 and answer["answer"] and answer["completion_id"].startswith("chatcmpl-")
    assert (await server.post("/api/llm/query", {"prompt": ""}))[0] == 400
