"""The miner end to end over real HTTP: ingest → embed worker → JetStream → store → query."""

from __future__ import annotations

import time

import aiohttp
import numpy as np
import pytest

import engram.core as core
from engram.miner.node import MinerNode

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


async def test_challenges_v1_and_v2_verify(http: aiohttp.ClientSession):
    cid = (await ingest(http, DOCS[2]))["cid"]
    async with http.get(f"/retrieve/{cid}") as r:
        vec = np.asarray((await r.json())["embedding"], dtype=np.float32)
    hotkey = "ab" * 32
    for version in (1, 2):
        ch = core.new_challenge(cid, hotkey)
        body = {
            "cid": cid,
            "nonce_hex": ch.nonce_hex,
            "expires_at": ch.expires_at,
            "validator_hotkey_hex": hotkey,
            "version": version,
        }
        async with http.post("/ChallengeSynapse", json=body) as r:
            ans = await r.json()
        assert r.status == 200, ans
        assert ans["embedding_hash"] == core.embedding_hash(vec)
        assert core.verify_proof(
            ch, ans["proof"], version=version, vec=vec, embedding_hash=ans["embedding_hash"]
        )


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
                "expires_at": 2e9,
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
    async with http.post("/QuerySynapse", data=b"{not json") as r:
        assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
    async with http.post("/IngestSynapse", data=b"x" * (5 * 1024 * 1024)) as r:
        assert r.status == 413 and "larger than" in (await r.json())["error"]


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
