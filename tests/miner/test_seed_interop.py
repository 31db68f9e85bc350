"""A client written from the seed documents talks to our miner.

Everything the client checks is computed here from the published layout with ``hashlib``,
``hmac`` and ``struct`` (docs/protocol.md, shared/design/PROTOCOL.md), never with
``engram.core``: the CID of a ``raw_embedding`` sent with ``model_version`` "v1", the v1
proof over the vector the client itself sent. Also: the protocol version label ("v1") and
the model identity are reported apart, and the ONNX weights are pinned by SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import secrets
import shutil
import struct
import time
from pathlib import Path

import aiohttp
import msgspec
import pytest

from engram.config import ConfigError, Settings, load_settings
from engram.miner.embedder import (
    DEFAULT_MODEL_ID,
    MODEL_SHA256,
    Embedder,
    EmbedderError,
    packaged_model_dir,
    verify_model_file,
)

DIM = 384
LABEL = "v1"  # the seeds' model version string in CIDs


@pytest.fixture
def miner_settings(settings: Settings) -> Settings:
    """The operator enabled v1 proofs for validators that follow the seeds, and open mode
    (the seeds' clients do not sign)."""
    return msgspec.structs.replace(
        settings,
        embed_batch=32,
        embed_batch_wait_s=0.02,
        axon_proof_versions=[1, 2],
        axon_auth="open",
    )


def seed_vector(seed: int) -> list[float]:
    """A unit vector whose values are exact float32 numbers (what a client would send)."""
    rng = random.Random(seed)
    v = [rng.gauss(0.0, 1.0) for _ in range(DIM)]
    n = math.sqrt(sum(x * x for x in v))
    return list(struct.unpack(f"<{DIM}f", struct.pack(f"<{DIM}f", *(x / n for x in v))))


def f32_le(vec: list[float]) -> bytes:
    return struct.pack(f"<{len(vec)}f", *vec)


def seed_cid(vec: list[float], metadata: dict[str, object]) -> str:
    """The seed layout: SHA-256 over f32_le(embedding) || canonical JSON of the metadata
    with ``model_version`` added (sorted keys, no whitespace, ASCII escapes)."""
    canonical = json.dumps(
        {**metadata, "model_version": LABEL},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return "v1::" + hashlib.sha256(f32_le(vec) + canonical.encode("ascii")).hexdigest()


async def post(http: aiohttp.ClientSession, path: str, body: dict) -> tuple[int, dict]:
    async with http.post(path, json=body) as r:
        return r.status, await r.json()


async def test_a_seed_client_ingests_finds_and_proves_a_raw_embedding(
    http: aiohttp.ClientSession,
):
    vec = seed_vector(7)
    metadata = {"source": "seed-client", "title": "café notes"}
    status, got = await post(
        http,
        "/IngestSynapse",
        {"raw_embedding": vec, "metadata": metadata, "model_version": LABEL},
    )
    assert status == 200, got
    assert got["cid"] == seed_cid(vec, metadata) and got["error"] is None

    # a distractor, so rank 1 means something
    other = seed_vector(8)
    status, _ = await post(http, "/IngestSynapse", {"raw_embedding": other, "model_version": "v1"})
    assert status == 200

    status, res = await post(http, "/QuerySynapse", {"query_vector": vec, "top_k": 2})
    assert status == 200 and res["error"] is None
    top = res["results"][0]
    assert top["cid"] == got["cid"] and top["metadata"] == metadata
    assert top["score"] == pytest.approx(1.0, abs=1e-3)
    assert res["results"][1]["score"] < 0.5

    # the seeds' challenge: {cid, nonce_hex, expires_at}, no version, no hotkey
    nonce = secrets.token_bytes(32)
    challenge = {"cid": got["cid"], "nonce_hex": nonce.hex(), "expires_at": int(time.time()) + 60}
    status, ans = await post(http, "/ChallengeSynapse", challenge)
    assert status == 200, ans
    expected_hash = hashlib.sha256(f32_le(vec)).hexdigest()
    expected_proof = hmac.new(nonce, expected_hash.encode("ascii"), hashlib.sha256).hexdigest()
    assert ans["embedding_hash"] == expected_hash
    assert hmac.compare_digest(ans["proof"], expected_proof)
    # answered once
    status, ans = await post(http, "/ChallengeSynapse", challenge)
    assert status == 409, ans

    # unknown CIDs are 404 on every path a seed client uses
    unknown = "v1::" + hashlib.sha256(b"never stored").hexdigest()
    status, ans = await post(http, "/ChallengeSynapse", {**challenge, "cid": unknown})
    assert status == 404 and "unknown CID" in ans["error"]
    async with http.get(f"/retrieve/{unknown}") as r:
        assert r.status == 404 and "unknown CID" in (await r.json())["error"]


async def test_text_ingests_use_the_label_and_health_reports_the_identity(
    http: aiohttp.ClientSession,
):
    async with http.post(
        "/IngestSynapse", json={"text": "Lisbon is the capital of Portugal."}
    ) as r:
        got = await r.json()
        assert r.status == 200, got
    async with http.get(f"/retrieve/{got['cid']}") as r:
        rec = await r.json()
    assert rec["model_version"] == LABEL
    assert got["cid"] == seed_cid(rec["embedding"], {})  # the embedding is float32-exact
    for path in ("/health", "/stats"):
        async with http.get(path) as r:
            info = await r.json()
        assert info["model_version"] == LABEL and info["model"] == DEFAULT_MODEL_ID, info
    # the identity is not a version label: a client sending it is told which label to use
    status, ans = await post(
        http, "/IngestSynapse", {"text": "x", "model_version": DEFAULT_MODEL_ID}
    )
    assert status == 400 and "'v1'" in ans["error"] and DEFAULT_MODEL_ID in ans["error"]


def test_the_packaged_weights_are_pinned_by_sha256(model_cache: Path, tmp_path: Path):
    folder = packaged_model_dir(model_cache)
    onnx = folder / "model.onnx"
    with onnx.open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == MODEL_SHA256
    verify_model_file(onnx)  # the real file passes

    # a cache folder whose model.onnx differs by one byte is refused at load
    cache = tmp_path / "cache"
    forged = cache / "models" / DEFAULT_MODEL_ID
    shutil.copytree(folder, forged, symlinks=False)
    data = bytearray((forged / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (forged / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(EmbedderError, match="not the pinned model"):
        Embedder(cache_dir=cache)
    # the record of an earlier verification does not vouch for a replaced file
    assert (folder / ".sha256-verified").exists()
    shutil.copy(folder / ".sha256-verified", forged / ".sha256-verified")
    with pytest.raises(EmbedderError, match="not the pinned model"):
        verify_model_file(forged / "model.onnx")


def test_v1_proofs_are_an_operator_setting(tmp_path: Path):
    empty = tmp_path / "engram.toml"
    empty.write_text("")

    def load(env: dict[str, str]) -> Settings:
        return load_settings(empty, environ=env, data_dir=str(tmp_path))

    assert load({}).axon_proof_versions == [2]
    assert load({"ENGRAM_AXON_PROOF_VERSIONS": "1,2"}).axon_proof_versions == [1, 2]
    for bad in ("3", "", "0,2"):
        with pytest.raises(ConfigError, match="axon_proof_versions"):
            load({"ENGRAM_AXON_PROOF_VERSIONS": bad})
