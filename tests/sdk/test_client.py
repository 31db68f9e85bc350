"""EngramClient (sync, urllib) against a real signed miner on loopback: every method."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import engram.core as core
from engram.chain import LocalChain, Metagraph
from engram.sdk import EngramClient, Hit, IngestRefused, ItemResult, Memory, Offline

from .conftest import CLIENT, MINER, LiveMiner


@pytest.fixture
def client(url: str, ns: str) -> EngramClient:
    return EngramClient(url, hotkey=CLIENT, namespace=ns, timeout=20)


def unit(dim: int, hot: int) -> list[float]:
    v = [0.01] * dim
    v[hot] = 1.0
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_health_stats_and_identity(client: EngramClient) -> None:
    h = client.health()
    assert h["status"] == "ok" and h["auth"] == "signed"
    assert h["hotkey_ss58"] == MINER.ss58_address and h["model_version"] == "v1"
    assert client.is_online()
    assert client.hotkey == CLIENT.ss58_address
    s = client.stats()
    assert s["dim"] == 384 and "memories" in s


def test_ingest_get_query_and_idempotent_retry(client: EngramClient, ns: str) -> None:
    cid = client.ingest(
        "Photosynthesis turns sunlight into chemical energy.",
        {"topic": "biology"},
        request_id="bio-1",
    )
    assert cid.startswith("v1::") and len(cid) == 68
    # the same request id again: the same memory, not a second one
    assert (
        client.ingest(
            "Photosynthesis turns sunlight into chemical energy.",
            {"topic": "biology"},
            request_id="bio-1",
        )
        == cid
    )
    client.ingest("The stock market fell sharply on Tuesday.", {"topic": "finance"})
    assert client.stats()["namespaces"][ns] == 2

    mem = client.get(cid)
    assert isinstance(mem, Memory)
    assert mem.text == "Photosynthesis turns sunlight into chemical energy."
    assert mem.metadata == {"topic": "biology"} and mem.namespace == ns
    assert mem.embedding is not None and len(mem.embedding) == 384

    hits = client.query("how do plants make energy from light", top_k=2)
    assert hits[0].cid == cid
    assert isinstance(hits[0], Hit) and hits[0]["cid"] == cid  # a dict too (predecessor)
    assert hits[0].score > hits[1].score and hits[0].text is None

    only = client.query("plants", top_k=5, filter={"topic": "finance"}, include_text=True)
    assert len(only) == 1 and only[0].metadata == {"topic": "finance"}
    assert only[0].text == "The stock market fell sharply on Tuesday."
    # another namespace does not see these
    assert client.query("plants", namespace=f"{ns}-other") == []


def test_ingest_embedding_cid_is_the_protocol_cid_and_query_by_vector(
    client: EngramClient,
) -> None:
    import numpy as np

    vec = unit(384, 7)
    cid = client.ingest_embedding(vec, {"kind": "raw"})
    want = core.compute_cid(np.asarray(vec, dtype=np.float32), {"kind": "raw"}, "v1")
    assert cid == want
    hits = client.query_by_vector(np.asarray(vec, dtype=np.float32), top_k=1)
    assert hits[0].cid == cid and hits[0].score == pytest.approx(1.0, abs=0.01)


def test_batch_ingest_chunks_progress_and_per_item_results(client: EngramClient) -> None:
    seen: list[tuple[int, int | None]] = []
    items = [
        "alpha centauri is the closest star system",
        {"text": "beta decay emits an electron", "metadata": {"n": 2}, "request_id": "b-2"},
        {"text": "   "},  # refused by the miner: blank text
        {"text": "gamma rays are high-energy photons"},
        {"metadata": {"no": "text"}},  # refused here: no text
        {"text": "delta is a river mouth", "metadata": "not an object"},
    ]
    results = client.batch_ingest(
        items, chunk_size=2, concurrency=3, progress=lambda d, t: seen.append((d, t))
    )  # three chunks on three threads at once
    assert [type(r) for r in results] == [ItemResult] * 6
    assert [r.index for r in results] == list(range(6))
    assert [r.status for r in results] == [
        "stored", "stored", "invalid", "stored", "invalid", "invalid",
    ]  # fmt: skip
    assert results[1].request_id == "b-2" and all(r.cid for r in results if r.ok)
    assert "text" in str(results[2].error) and "metadata" in str(results[5].error)
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert client.query("closest star", top_k=1)[0].cid == results[0].cid


def test_batch_ingest_jsonl_file_reports_lines(client: EngramClient, tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"text": "one fish", "metadata": {"i": 1}}),
                "{not json",
                json.dumps("two fish"),
                "",
                json.dumps([1, 2]),
            ]
        )
    )
    res = client.batch_ingest(f)
    assert [(r.line, r.status) for r in res] == [
        (1, "stored"), (2, "invalid"), (3, "stored"), (5, "invalid"),
    ]  # fmt: skip
    assert "not JSON" in str(res[1].error)


def test_failover_to_the_next_miner(url: str, ns: str) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    c = EngramClient([dead, url], hotkey=CLIENT, namespace=ns, retries=0)
    assert c.health()["status"] == "ok"
    assert c.base_url == url
    with pytest.raises(Offline):
        EngramClient(dead, retries=1, timeout=2).health()


async def _metagraph(live: LiveMiner) -> Metagraph:
    from engram.bus import open_bus

    bus = await open_bus(live.settings)
    try:
        chain = await LocalChain.join(bus.js, MINER.ss58_address, 1)
        dead = chain.acting_as("5DeadMinerAxonNobodyListensOn")
        await chain.register(dead.hotkey)
        await dead.serve_axon("127.0.0.1", 9)
        return await chain.metagraph()
    finally:
        await bus.close()


def test_from_subnet_picks_the_live_miner(live_miner: LiveMiner, ns: str) -> None:
    graph = live_miner.call(_metagraph(live_miner))
    assert len([n for n in graph.neurons if n.axon]) == 2
    c = EngramClient.from_subnet(graph, hotkey=CLIENT, namespace=ns, probe_timeout=2)
    assert c.urls == [live_miner.url]
    cid = c.ingest("found through the chain")
    assert c.query("found through the chain", top_k=1)[0].cid == cid


def test_the_sync_client_imports_no_aiohttp(url: str, ns: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from engram.sdk import EngramClient
        c = EngramClient({url!r}, hotkey="//EngramSDKClient", namespace={ns!r})
        c.ingest("sans aiohttp")
        assert c.query("sans aiohttp")[0].metadata == {{}}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "numpy"))
        print(loaded)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
    # unsigned: bittensor is not even imported
    unsigned = textwrap.dedent(
        f"""
        import sys
        from engram.sdk import EngramClient
        assert EngramClient({url!r}).health()["status"] == "ok"
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"aiohttp", "bittensor"}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", unsigned], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_an_ingest_the_worker_rejects_is_an_ingest_refused(client: EngramClient) -> None:
    # the axon validates what it can; a bad model_version is refused on arrival
    with pytest.raises(IngestRefused) as exc:
        client.ingest_embedding(unit(384, 1), model_version="v9")
    assert exc.value.status == 400 and "v9" in exc.value.reason


def test_upload_media_types_are_read_from_the_bytes() -> None:
    from engram.sdk.protocol import image_type

    assert image_type(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert image_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert image_type(b"%PDF-1.4") == "application/pdf"
    assert image_type(b"????", "scan.tiff") == "image/tiff"
    assert image_type(b"????") == "application/octet-stream"


def test_the_readme_quick_start_runs(url: str) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Build on Engram: the SDK", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 5  # install → first query
    code = code.replace("http://127.0.0.1:8091", url)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "Engram remembers what you tell it." not in out.stdout  # a hit: cid, score, metadata
    assert "'source': 'readme'" in out.stdout and "'cid': 'v1::" in out.stdout


def test_hotkey_from_a_key_file(url: str, ns: str, tmp_path: Path) -> None:
    from engram.keys import load_or_create_key

    kp, created = load_or_create_key(tmp_path / "keys" / "app_hotkey")
    assert created
    for given in (tmp_path / "keys" / "app_hotkey", str(tmp_path / "keys" / "app_hotkey")):
        c = EngramClient(url, hotkey=given, namespace=ns)
        assert c.hotkey == kp.ss58_address
        assert c.query("signed with a key file") == []  # a valid signature may query
