"""A script written for the predecessor Engram SDK runs with only its import line changed.

The body of :func:`predecessor_script` uses the predecessor's names and shapes only:
``EngramClient(miner_url, timeout, keypair=...)``, ``ingest(text, metadata)`` → CID,
``ingest_embedding(embedding, metadata)``, ``batch_ingest_file(path, return_errors)``,
``query(text, top_k)`` / ``query_by_vector(vector, top_k)`` → dicts with ``cid``,
``score``, ``metadata``, ``health()``, ``is_online()``, and its exception names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# was: from engram.sdk import EngramClient (the predecessor package); the one changed line
from engram.sdk import EngramClient, IngestError, InvalidCIDError, MinerOfflineError, QueryError

from .conftest import CLIENT


def predecessor_script(miner_url: str, keypair: Any, jsonl: Path) -> dict[str, Any]:
    client = EngramClient(miner_url, 30.0, keypair=keypair)
    out: dict[str, Any] = {"online": client.is_online(), "health": client.health()}
    out["cid"] = client.ingest("The transformer architecture changed everything.")
    out["cid2"] = client.ingest("Attention is all you need.", metadata={"paper": "vaswani"})
    results = client.query("attention mechanisms in deep learning", top_k=5)
    out["query"] = [(r["cid"], r["score"], r["metadata"]) for r in results]
    vec = [0.0] * 384
    vec[3] = 1.0
    out["raw"] = client.ingest_embedding(vec, {"k": "v"})
    out["by_vector"] = [r["cid"] for r in client.query_by_vector(vec, top_k=1)]
    out["file"] = client.batch_ingest_file(jsonl)
    out["file_errors"] = client.batch_ingest_file(jsonl, return_errors=True)
    try:
        client.ingest("")
    except IngestError as exc:
        out["ingest_error"] = str(exc)
    try:
        client.query("", top_k=5)
    except QueryError as exc:
        out["query_error"] = str(exc)
    try:
        EngramClient("http://127.0.0.1:9", 2.0).health()
    except MinerOfflineError as exc:
        out["offline"] = exc.url
    out["offline_is_online"] = EngramClient("http://127.0.0.1:9", 2.0).is_online()
    out["invalid_cid_error"] = InvalidCIDError.__name__
    return out


def test_predecessor_script_runs_unchanged(url: str, tmp_path: Path) -> None:
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text(
        json.dumps({"text": "first record", "metadata": {"i": 1}})
        + "\n{broken\n"
        + json.dumps({"text": "second record"})
        + "\n"
    )
    out = predecessor_script(url, CLIENT, jsonl)
    assert out["online"] is True and out["health"]["status"] == "ok"
    assert out["health"]["vectors"] == out["health"]["memories"] and "uid" in out["health"]
    assert out["cid"].startswith("v1::") and out["cid2"] != out["cid"]
    cids = [c for c, _s, _m in out["query"]]
    assert out["cid2"] in cids and out["cid"] in cids
    assert dict((c, m) for c, _s, m in out["query"])[out["cid2"]] == {"paper": "vaswani"}
    assert [s for _c, s, _m in out["query"]] == sorted(
        (s for _c, s, _m in out["query"]), reverse=True
    )
    assert out["by_vector"] == [out["raw"]]
    assert len(out["file"]) == 2 and all(c.startswith("v1::") for c in out["file"])
    cids_again, errors = out["file_errors"]
    assert cids_again == out["file"]  # the same records again: the same memories
    assert len(errors) == 1 and errors[0].startswith("line 2:")
    assert "text" in out["ingest_error"] and "query_text" in out["query_error"]
    assert out["offline"] == "http://127.0.0.1:9" and out["offline_is_online"] is False
