"""The miner end to end over real HTTP: ingest → embed worker → JetStream → store → query."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import aiohttp
import numpy as np
import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestServer

import engram.core as core
from engram.miner.axon import (
    MAX_CHALLENGE_AHEAD_S,
    STATUS,
    Busy,
    Conflict,
    Expired,
    Invalid,
    NotFound,
    Refused,
    TooLarge,
    Unreadable,
    UnsupportedMediaType,
    make_app,
    status_of,
)
from engram.miner.node import MinerNode
from streams.errors import InputError, Unavailable

DOCS = [
    "The mitochondria is the powerhouse of the cell.",
    "Paris is the capital and most populous city of France.",
    "A binary search tree keeps its keys in sorted order.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The Great Wall of China stretches thousands of kilometres.",
    "Espresso is coffee brewed by forcing hot water through finely ground beans.",
]


async def ingest(http: aiohttp.ClientSession, text: str, **extra: object) -> dict:
    async with http.post("/IngestSynapse", json={"text": text, **extra}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body


async def query(http: aiohttp.ClientSession, **body: object) -> tuple[int, dict]:
    async with http.post("/QuerySynapse", json=body) as r:
        return r.status, await r.json()


async def test_ingest_then_query_finds_it_at_rank_1(http: aiohttp.ClientSession, node: MinerNode):
    cids = [(await ingest(http, d, metadata={"n": i}))["cid"] for i, d in enumerate(DOCS)]
    assert len(set(cids)) == len(DOCS) and all(c.startswith("v1::") for c in cids)
    status, res = await query(http, query_text="What city is the capital of France?", top_k=3)
    assert status == 200 and res["error"] is None
    assert res["results"][0]["cid"] == cids[1]
    assert res["results"][0]["metadata"] == {"n": 1}
    assert 0.3 < res["results"][0]["score"] <= 1.0001
    assert res["results"][0]["score"] >= res["results"][1]["score"]
    # the same text twice: one CID, one vector
    again = await ingest(http, DOCS[1], metadata={"n": 1})
    assert again["cid"] == cids[1] and again["duplicate"] is True
    async with http.get("/stats") as r:
        stats = await r.json()
    assert stats["memories"] == len(DOCS)
    # query by vector, namespaces and filters
    vec = node.axon.embedder.embed_one(DOCS[3]).tolist()
    _, res = await query(http, query_vector=vec, top_k=1)
    assert res["results"][0]["cid"] == cids[3] and res["results"][0]["score"] == pytest.approx(
        1, abs=0.01
    )
    _, res = await query(http, query_text="coffee", top_k=5, filter={"n": 2})
    assert [h["cid"] for h in res["results"]] == [cids[2]]


async def test_private_namespace_and_retrieve(http: aiohttp.ClientSession):
    pub = await ingest(http, DOCS[0])
    priv = await ingest(http, "my secret diary entry about espresso", namespace="alice")
    _, res = await query(http, query_text="secret diary", top_k=10)
    assert priv["cid"] not in [h["cid"] for h in res["results"]]
    _, res = await query(http, query_text="secret diary", top_k=10, namespace="alice")
    assert [h["cid"] for h in res["results"]] == [priv["cid"]]
    async with http.get(f"/retrieve/{pub['cid']}") as r:
        got = await r.json()
    assert r.status == 200 and got["text"] == DOCS[0] and len(got["embedding"]) == 384
    # the CID is the protocol's CID over the stored vector
    vec = np.asarray(got["embedding"], dtype=np.float32)
    assert core.compute_cid(vec, {}, got["model_version"]) == pub["cid"]


async def test_raw_embedding_and_batch_ingest(http: aiohttp.ClientSession, node: MinerNode):
    vec = node.axon.embedder.embed_one("a raw vector about volcanoes")
    async with http.post(
        "/IngestSynapse", json={"raw_embedding": vec.tolist(), "metadata": {"k": "v"}}
    ) as r:
        body = await r.json()
    assert r.status == 200
    assert body["cid"] == core.compute_cid(vec, {"k": "v"}, node.axon.embedder.model_version)
    items = [{"text": d, "metadata": {"i": i}} for i, d in enumerate(DOCS)]
    async with http.post("/IngestBatch", json={"items": items}) as r:
        body = await r.json()
    assert r.status == 200 and [x["status"] for x in body["results"]] == ["stored"] * len(DOCS)
    _, res = await query(http, query_text="volcanoes", top_k=1)
    assert res["results"][0]["metadata"] == {"k": "v"}


async def test_challenges_v2_verify_once_and_v1_is_off_by_default(http: aiohttp.ClientSession):
    cid = (await ingest(http, DOCS[2]))["cid"]
    async with http.get(f"/retrieve/{cid}") as r:
        vec = np.asarray((await r.json())["embedding"], dtype=np.float32)
    hotkey = "ab" * 32
    ch = core.new_challenge(cid, hotkey)
    body = {**ch.as_dict(), "version": 2}
    async with http.post("/ChallengeSynapse", json=body) as r:
        ans = await r.json()
    assert r.status == 200, ans
    assert ans["embedding_hash"] == core.embedding_hash(vec)
    assert core.verify_proof(ch, ans["proof"], version=2, vec=vec)
    # the same nonce again (upper-case hex is the same nonce): answered once only
    for again in (body, {**body, "nonce_hex": ch.nonce_hex.upper()}):
        async with http.post("/ChallengeSynapse", json=again) as r:
            assert r.status == 409 and "already answered" in (await r.json())["error"]
    # v1 (the seeds' scheme, no hotkey binding) is answered only when the operator enables it
    v1 = core.new_challenge(cid, hotkey)
    for refused in (
        {**v1.as_dict(), "version": 1},
        {k: v for k, v in v1.as_dict().items() if k != "validator_hotkey_hex"},
    ):
        async with http.post("/ChallengeSynapse", json=refused) as r:
            got = await r.json()
        assert r.status == 400 and "proof version 1 is disabled" in got["error"], got
    # a refused challenge did not use its nonce up
    async with http.post("/ChallengeSynapse", json={**v1.as_dict(), "version": 2}) as r:
        assert r.status == 200


async def test_the_nonce_store_is_bounded_and_drains(http: aiohttp.ClientSession, node: MinerNode):
    assert node.axon is not None
    cid = (await ingest(http, DOCS[0]))["cid"]
    node.axon.max_live_nonces = 1

    async def ask(ttl: int) -> aiohttp.ClientResponse:
        body = {**core.new_challenge(cid, "ef" * 32, ttl_s=ttl).as_dict(), "version": 2}
        async with http.post("/ChallengeSynapse", json=body) as r:
            await r.read()
            return r

    first = await ask(2)
    assert first.status == 200
    full = await ask(2)  # over the bound: refused (its nonce is used up all the same)
    assert full.status == 503 and int(full.headers["Retry-After"]) > 0
    await asyncio.sleep(3.5)  # both have expired and are forgotten at the next challenge
    assert (await ask(60)).status == 200
    assert (await ask(60)).status == 503


async def test_challenge_expiry_must_be_finite_and_near(http: aiohttp.ClientSession):
    cid = (await ingest(http, DOCS[5]))["cid"]
    base = core.new_challenge(cid, "cd" * 32).as_dict()
    now = time.time()
    cases = [
        (now + MAX_CHALLENGE_AHEAD_S + 120, 400, "ahead"),
        (1e300, 400, "ahead"),
        (now - 1, 410, "expired"),
        (now + MAX_CHALLENGE_AHEAD_S - 120, 200, None),
        (now + 30.5, 200, None),  # a float expiry is fine
    ]
    for expires_at, status, reason in cases:
        body = {**base, "nonce_hex": secrets.token_hex(32), "expires_at": expires_at}
        async with http.post("/ChallengeSynapse", json=body) as r:
            got = await r.json()
        assert r.status == status, (expires_at, got)
        assert reason is None or reason in got["error"]


async def test_metadata_is_judged_by_engram_core(http: aiohttp.ClientSession, node: MinerNode):
    """What the core can hash is accepted (and hashed as the core does); what it refuses is
    a 400 with the core's reason, never a 202 for work that cannot complete."""
    label = node.axon.embedder.model_version
    deep: dict = {"leaf": 1}
    for _ in range(62):  # 64 containers with the metadata object itself: the core's limit
        deep = {"d": deep}
    edge = {"u64": 2**64 - 1, "i64": -(2**63), "deep": deep, "s": "caf\u00e9 😀"}
    core.canonical_json(edge, label)  # the core accepts it ...
    got = await ingest(http, "metadata at the core's limits", metadata=edge)
    async with http.get(f"/retrieve/{got['cid']}") as r:
        vec = np.asarray((await r.json())["embedding"], dtype=np.float32)
    assert got["cid"] == core.compute_cid(vec, edge, label)  # ... and so does the axon
    for bad, reason in (
        ({"n": 2**64}, "must lie in -2**63"),
        ({"n": -(2**63) - 1}, "must lie in -2**63"),
        ({"deeper": {"d": deep}}, "metadata refused"),
    ):
        with pytest.raises(core.InvalidMetadata):
            core.canonical_json(bad, label)
        async with http.post("/IngestSynapse", json={"text": "x", "metadata": bad}) as r:
            body = await r.json()
        assert r.status == 400 and reason in body["error"], body


async def test_json_with_an_explicit_utf8_charset_is_accepted(http: aiohttp.ClientSession):
    payload = json.dumps({"query_text": "capital of France", "top_k": 1}).encode()
    for ctype in ("application/json; charset=utf-8", "Application/JSON; charset=UTF8"):
        async with http.post("/QuerySynapse", data=payload, headers={"Content-Type": ctype}) as r:
            assert r.status == 200, await r.text()


async def test_unexpected_errors_are_json_500s_and_counted(node: MinerNode):
    """An exception nobody expected becomes a generic JSON 500 (no internals leaked), and
    /metrics counts it like any other response."""
    app = make_app(node.axon)

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    app.router.add_get("/broken", broken)
    async with TestServer(app) as server, aiohttp.ClientSession(base_url=server.make_url("/")) as c:
        with structlog.testing.capture_logs() as logs:
            async with c.get("/broken") as r:
                body = await r.json()
        assert r.status == 500 and "secret" not in body["error"] and body["error"]
        failed = [e for e in logs if e["event"] == "axon request failed"]
        assert failed and failed[0]["log_level"] == "error" and failed[0].get("exc_info")
        assert failed[0]["endpoint"] == "/broken"
        async with c.get("/metrics") as r:
            text = await r.text()
    assert 'engram_axon_requests_total{endpoint="/broken",status="500"} 1.0' in text


def test_each_refusal_type_has_one_status():
    assert issubclass(Refused, InputError)
    expected = {
        Invalid: 400,
        Unreadable: 400,
        NotFound: 404,
        Busy: 503,
        Conflict: 409,
        Expired: 410,
        TooLarge: 413,
        UnsupportedMediaType: 415,
    }
    for cls, status in expected.items():
        exc = cls("why")
        assert STATUS[cls] == status and exc.status == status and status_of(exc) == status
        assert isinstance(exc, InputError)
    assert status_of(core.InvalidMetadata("x")) == 400
    assert status_of(core.ChallengeReplayed("x")) == 409
    assert status_of(core.ChallengeExpired("x")) == 410
    assert status_of(Unavailable("bus down", retry_after_s=2)) == 503
    assert status_of(RuntimeError("bug")) == 500
    assert status_of(Refused(422, "legacy form")) == 422
    assert len(Invalid("x" * 10_000).reason) <= 200


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/IngestSynapse", {"text": "x" * 8193}, 400, "8193 characters; the limit is 8192"),
        ("/IngestSynapse", {"text": "hi", "metadata": {"k": "v" * 5000}}, 400, "the limit is 4096"),
        ("/IngestSynapse", {"text": "hi", "metadata": ["not", "an", "object"]}, 400, "JSON object"),
        ("/IngestSynapse", {"text": ""}, 400, "text is empty"),
        ("/IngestSynapse", {"text": "hi", "namespace": "no spaces"}, 400, "namespace"),
        ("/IngestSynapse", {"text": "hi", "model_version": "other"}, 400, "not served"),
        ("/IngestSynapse", {"raw_embedding": [0.1] * 10}, 400, "10 dimensions"),
        ("/IngestSynapse", {"raw_embedding": [1.0] * 384}, 400, "unit-normalised"),
        ("/QuerySynapse", {"query_text": "hi", "top_k": 0}, 400, "top_k must be"),
        ("/QuerySynapse", {"query_text": "hi", "top_k": 101}, 400, "top_k must be"),
        ("/QuerySynapse", {"query_vector": [0.5] * 3}, 400, "3 dimensions"),
        ("/QuerySynapse", {"top_k": 5}, 400, "query_text or query_vector"),
        ("/QuerySynapse", {"query_text": "hi", "filter": [1]}, 400, "filter"),
        ("/ChallengeSynapse", {"cid": "v1::00", "nonce_hex": "zz"}, 400, "nonce_hex"),
        (
            "/ChallengeSynapse",
            {
                "cid": "v1::" + "0" * 64,
                "nonce_hex": "00" * 32,
                "expires_at": time.time() + 600,
                "validator_hotkey_hex": "11" * 32,
            },
            404,
            "unknown CID",
        ),
        (
            "/ChallengeSynapse",
            {
                "cid": "v1::" + "0" * 64,
                "nonce_hex": "00" * 32,
                "expires_at": 1,
                "validator_hotkey_hex": "11" * 32,
            },
            410,
            "expired",
        ),
        ("/IngestBatch", {"items": [{"text": "ok"}, {"text": "y" * 9000}]}, 400, "invalid item"),
        ("/IngestBatch", {"items": [{"text": "a"}] * 1001}, 413, "the limit is 1000"),
    ],
)
async def test_limits_answer_4xx_with_a_reason(http, path, body, status, reason):
    async with http.post(path, json=body) as r:
        got = await r.json()
    assert r.status == status, got
    assert reason in got["error"]


async def test_other_refusals(http: aiohttp.ClientSession):
    async with http.get("/retrieve/v1::nope") as r:
        assert r.status == 404 and "unknown CID" in (await r.json())["error"]
    as_json = {"Content-Type": "application/json"}
    async with http.post("/QuerySynapse", data=b"{not json", headers=as_json) as r:
        assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
    async with http.post("/IngestSynapse", data=b"x" * (5 * 1024 * 1024), headers=as_json) as r:
        assert r.status == 413 and "larger than" in (await r.json())["error"]
    # a web page's form POST to a local open-mode miner is refused before anything is read
    form = {"text": "injected by a web page"}
    async with http.post("/IngestSynapse", data=form) as r:
        assert r.status == 415 and "application/json" in (await r.json())["error"]


async def test_health_stats_metrics(http: aiohttp.ClientSession):
    await ingest(http, DOCS[4])
    t0 = time.perf_counter()
    status, _res = await query(http, query_text="wall in china", top_k=1)
    assert status == 200 and time.perf_counter() - t0 < 2
    async with http.get("/health") as r:
        h = await r.json()
    assert r.status == 200 and h["status"] == "ok" and h["memories"] == 1
    async with http.get("/metrics") as r:
        text = await r.text()
    assert (
        r.status == 200 and "engram_axon_requests_total" in text and "engram_memories 1.0" in text
    )
