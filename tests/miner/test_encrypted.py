"""Encryption at the edge (issue 9, engram.sdk.crypto) through a real signed miner: the
client embeds and encrypts; the miner's store files and its event log hold only
ciphertext; the owner finds, reads and decrypts its memory; another key cannot."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import bittensor_core
import pytest

from engram.bus import open_bus
from engram.config import Settings
from engram.miner.client import AxonClient
from engram.miner.embedder import Embedder
from engram.miner.node import MinerNode
from engram.sdk.crypto import METADATA_KEY, DecryptError, EdgeCipher, encrypted_ingest, is_token

OWNER = bittensor_core.Keypair.from_uri("//EdgeOwner")
NS = "owner-diary"
SECRET = "Tuesday: told Maria about the surprise party at the lighthouse."
META = {"mood": "excited", "people": ["Maria"], "day": "tuesday"}


def test_tokens_are_bound_to_the_key_the_field_and_the_namespace(tmp_path: Path) -> None:
    mine = EdgeCipher.from_keypair(OWNER, NS)
    token = mine.encrypt_text(SECRET)
    assert is_token(token) and SECRET not in token
    assert mine.decrypt_text(token) == SECRET
    assert mine.encrypt_text(SECRET) != token  # a fresh nonce every time
    # the same key from the owner's key file
    path = tmp_path / "hotkey"
    path.write_bytes(bittensor_core.serialized_keypair_to_keyfile_data(OWNER))
    assert EdgeCipher.from_keyfile(path, NS).decrypt_text(token) == SECRET
    other_key = EdgeCipher.from_keypair(bittensor_core.Keypair.from_uri("//Eve"), NS)
    other_ns = EdgeCipher.from_keypair(OWNER, "another-namespace")
    for cipher in (other_key, other_ns):
        with pytest.raises(DecryptError):
            cipher.decrypt_text(token)
    with pytest.raises(DecryptError):  # a text token is not a metadata token
        mine.decrypt_metadata({METADATA_KEY: token})
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(DecryptError):
        mine.decrypt_text(flipped)
    meta = mine.encrypt_metadata(META, clear=["day"])
    assert meta["day"] == "tuesday" and "mood" not in meta and "Maria" not in str(meta)
    assert mine.decrypt_metadata(meta) == META


async def test_an_encrypted_memory_round_trips_and_the_miner_holds_only_ciphertext(
    signed_node: MinerNode, signed_settings: Settings, embedder: Embedder
) -> None:
    cipher = EdgeCipher.from_keypair(OWNER, NS)
    async with aiohttp.ClientSession(base_url=signed_node.url) as http:
        owner = AxonClient(http, OWNER)
        status, out = await owner.post("/namespaces", {"namespace": NS, "visibility": "private"})
        assert status == 201, out
        body = encrypted_ingest(cipher, embedder, SECRET, META, clear=["day"], request_id="d1")
        status, out = await owner.post("/IngestSynapse", body)
        assert status == 200 and out["status"] == "stored", out
        cid = out["cid"]
        # search by a vector embedded here too: the question never leaves in clear
        question = embedder.embed_one("who did I tell about the party?")
        status, out = await owner.post(
            "/QuerySynapse",
            {"namespace": NS, "query_vector": [float(x) for x in question], "top_k": 3},
        )
        assert status == 200 and [h["cid"] for h in out["results"]] == [cid], out
        # metadata filters work on what was left in clear
        status, out = await owner.post(
            "/QuerySynapse",
            {
                "namespace": NS,
                "query_vector": [float(x) for x in question],
                "filter": {"day": "tuesday"},
            },
        )
        assert [h["cid"] for h in out["results"]] == [cid]
        status, got = await owner.get(f"/retrieve/{cid}")
        assert status == 200 and is_token(got["text"])
        assert cipher.decrypt_text(got["text"]) == SECRET
        assert cipher.decrypt_metadata(got["metadata"]) == META
        status, page = await owner.get(f"/memories?namespace={NS}")
        (listed,) = page["memories"]
        assert cipher.decrypt_text(listed["text"]) == SECRET
    # what the miner holds: its store files (live and snapshot sqlite, indexes) and the
    # MEMORY stream hold no word of the plaintext
    assert signed_node.store is not None
    signed_node.store.snapshot()
    files = [p for p in (signed_settings.data_path / "store").rglob("*") if p.is_file()]
    assert any(p.name == "live.sqlite" for p in files)
    assert any(p.name == "meta.sqlite" for p in files)
    needles = [b"lighthouse", b"Maria", b"surprise", b"excited"]
    for p in files:
        data = p.read_bytes()
        assert not any(n in data for n in needles), p
    with signed_node.store.reading() as db:
        (stored_text,) = db.execute("SELECT text FROM memories WHERE cid=?", (cid,)).fetchone()
    assert is_token(stored_text)
    bus = await open_bus(signed_settings)
    try:
        info = await bus.js.stream_info("MEMORY")
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await bus.js.get_msg("MEMORY", seq)
            assert not any(n in (msg.data or b"") for n in needles)
    finally:
        await bus.close()
