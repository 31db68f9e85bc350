"""Private memory (issue 9), against a real miner in ``signed`` mode: real NATS, the real
model, real HTTP on loopback, real btauth/1 signatures from several hotkeys.

Alice owns a private namespace; Bob and Carol are other hotkeys; the validator is in the
miner's allowlist. Another hotkey gets nothing from any path; a grant opens exactly what
it says; a revocation closes it at once; a delete survives a restart, a snapshot restore
and a rebuild from sequence 1; the validator's v2 proofs work on private memories.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import bittensor_core
import msgspec
import numpy as np
import pytest

from engram import core
from engram.blobs.samples import make_png
from engram.bus import open_bus
from engram.config import Settings
from engram.miner.auth import public_key_hex
from engram.miner.client import AxonClient
from engram.miner.embedder import Embedder
from engram.miner.node import MinerNode, open_store
from engram.miner.projection import StoreRunner
from tests.miner.conftest import VALIDATOR, start_node

ALICE = bittensor_core.Keypair.from_uri("//AccessAlice")
BOB = bittensor_core.Keypair.from_uri("//AccessBob")
CAROL = bittensor_core.Keypair.from_uri("//AccessCarol")

NS = "alice-notes"
NOTE = "My bank PIN is hidden under the blue teapot in the kitchen."


class Who:
    """One hotkey's signed view of a miner."""

    def __init__(self, http: aiohttp.ClientSession, key: Any) -> None:
        self.axon = AxonClient(http, key)
        self.hotkey = str(key.ss58_address) if key is not None else None

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        return await self.axon.request(method, path, body)

    async def ingest(self, text: str, ns: str = NS, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.call("POST", "/IngestSynapse", {"text": text, "namespace": ns, **kw})

    async def query(self, ns: str = NS, **kw: Any) -> list[dict[str, Any]]:
        status, out = await self.call("POST", "/QuerySynapse", {"namespace": ns, **kw})
        assert status == 200, out
        return list(out["results"])

    async def listing(self, ns: str = NS, **params: str) -> dict[str, Any]:
        qs = urllib.parse.urlencode({"namespace": ns, **params})
        status, out = await self.call("GET", f"/memories?{qs}")
        assert status == 200, out
        return out


@pytest.fixture
async def people(signed_node: MinerNode) -> AsyncIterator[dict[str, Who]]:
    async with aiohttp.ClientSession(base_url=signed_node.url) as http:
        yield {
            "alice": Who(http, ALICE),
            "bob": Who(http, BOB),
            "carol": Who(http, CAROL),
            "validator": Who(http, VALIDATOR),
            "nobody": Who(http, None),
        }


async def _alice_private(alice: Who) -> str:
    status, out = await alice.call(
        "POST", "/namespaces", {"namespace": NS, "visibility": "private"}
    )
    assert status == 201, out
    assert out == {"namespace": NS, "visibility": "private", "owner": alice.hotkey, "grants": []}
    status, out = await alice.ingest(NOTE, metadata={"topic": "secrets"})
    assert status == 200 and out["status"] == "stored", out
    return str(out["cid"])


async def test_another_hotkey_gets_nothing_from_any_path(
    people: dict[str, Who], embedder: Embedder
) -> None:
    alice, bob = people["alice"], people["bob"]
    cid = await _alice_private(alice)
    vec = embedder.embed_one("where is the bank PIN").tolist()
    # the owner reads it every way
    assert [h["cid"] for h in await alice.query(query_text="where is my PIN", top_k=3)] == [cid]
    assert (await alice.query(query_vector=vec, top_k=3))[0]["cid"] == cid
    status, got = await alice.call("GET", f"/retrieve/{cid}")
    assert status == 200 and got["text"] == NOTE and got["namespace"] == NS
    page = await alice.listing()
    assert [(m["cid"], m["text"]) for m in page["memories"]] == [(cid, NOTE)]
    _, stats = await alice.call("GET", "/stats")
    assert stats["namespaces"].get(NS) == 1

    # Bob: nothing, and nothing that tells a private namespace from one that is not there
    assert await bob.query(query_text="where is my PIN", top_k=3) == []
    assert await bob.query(query_vector=vec, top_k=3) == []
    assert await bob.query(query_text="PIN", filter={"topic": "secrets"}) == []
    for path in (f"/retrieve/{cid}", f"/retrieve/{cid}?namespace={NS}"):
        status, out = await bob.call("GET", path)
        assert status == 404 and out["error"].startswith("unknown CID")
    assert await bob.listing() == {"memories": [], "next_cursor": None}
    assert await bob.listing() == await bob.listing(ns="no-such-namespace")
    _, stats = await bob.call("GET", "/stats")
    assert NS not in stats["namespaces"] and stats["memories"] == 0
    status, _ = await bob.call("GET", f"/stats?namespace={NS}")
    assert status == 404
    status, _ = await bob.call("GET", f"/namespaces/{NS}")
    assert status == 404
    status, out = await bob.call("DELETE", f"/memory/{cid}")
    assert status == 404 and out["error"].startswith("unknown CID")
    status, _ = await bob.ingest("Bob writes into Alice's notes")
    assert status == 404
    grant = {"hotkey": BOB.ss58_address, "access": "read"}
    status, _ = await bob.call("POST", f"/namespaces/{NS}/grants", grant)
    assert status == 404
    status, _ = await bob.call("POST", "/namespaces", {"namespace": NS, "visibility": "public"})
    assert status == 409
    # unsigned: this miner is signed, so not even that far
    status, _ = await people["nobody"].call("POST", "/QuerySynapse", {"query_text": "PIN"})
    assert status == 401
    # a validator challenges the vector but reads no text either
    status, _ = await people["validator"].call("GET", f"/retrieve/{cid}")
    assert status == 404
    # and Alice's memory is untouched by all that
    status, got = await alice.call("GET", f"/retrieve/{cid}")
    assert status == 200 and got["text"] == NOTE


async def test_blob_bytes_of_a_private_namespace_are_its_readers_only(
    people: dict[str, Who],
) -> None:
    """An image uploaded into Alice's private namespace: Bob cannot fetch its bytes or its
    status (the 404 of an unknown blob), nor upload into her namespace; a read grant
    opens the bytes to him."""
    alice, bob = people["alice"], people["bob"]
    await _alice_private(alice)
    png = make_png(seed_text="alice-private")
    body = {"data_b64": base64.b64encode(png).decode(), "namespace": NS}
    status, out = await alice.call("POST", "/blob", body)
    assert status == 202, out
    cid = out["content_cid"]
    async with alice.axon.http.get(f"/blob/{cid}") as r:  # unsigned: signed mode says who?
        assert r.status == 401
    status, _ = await alice.call("GET", f"/blob/{cid}")
    assert status == 200
    status, _ = await alice.call("GET", f"/blob/{cid}/status")
    assert status == 200
    for path in (f"/blob/{cid}", f"/blob/{cid}/status"):
        status, out = await bob.call("GET", path)
        assert status == 404, (path, out)
    other = {"data_b64": base64.b64encode(make_png(seed_text="bob")).decode(), "namespace": NS}
    status, out = await bob.call("POST", "/blob", other)
    assert status == 404 and out["error"].startswith("unknown namespace")
    status, _ = await alice.call(
        "POST", f"/namespaces/{NS}/grants", {"hotkey": BOB.ss58_address, "access": "read"}
    )
    assert status == 200
    status, out = await bob.call("GET", f"/blob/{cid}/status")
    assert status == 200 and out["namespace"] == NS


async def test_a_grant_opens_what_it_says_and_a_revocation_closes_it_at_once(
    people: dict[str, Who],
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    cid = await _alice_private(alice)
    status, out = await alice.call(
        "POST", f"/namespaces/{NS}/grants", {"hotkey": BOB.ss58_address, "access": "read"}
    )
    assert status == 200 and out["granted"] is True
    status, out = await alice.call(
        "POST", f"/namespaces/{NS}/grants", {"hotkey": CAROL.ss58_address, "access": "write"}
    )
    assert status == 200
    # read: Bob reads every way, but may not write, grant nor delete
    assert [h["cid"] for h in await bob.query(query_text="teapot PIN")] == [cid]
    status, got = await bob.call("GET", f"/retrieve/{cid}")
    assert status == 200 and got["text"] == NOTE
    assert [m["cid"] for m in (await bob.listing())["memories"]] == [cid]
    status, _ = await bob.ingest("Bob's line")
    assert status == 403
    status, _ = await bob.call("DELETE", f"/memory/{cid}")
    assert status == 403
    status, _ = await bob.call(
        "POST", f"/namespaces/{NS}/grants", {"hotkey": CAROL.ss58_address, "access": "read"}
    )
    assert status == 403
    status, info = await bob.call("GET", f"/namespaces/{NS}")
    assert status == 200 and info["owner"] == ALICE.ss58_address and info["grants"] == []
    # write: Carol writes, but reads nothing, not even what she wrote
    status, out = await carol.ingest("Carol's reminder: water the ferns on Sunday.")
    assert status == 200 and out["status"] == "stored"
    carols = out["cid"]
    assert await carol.query(query_text="ferns") == []
    status, _ = await carol.call("GET", f"/retrieve/{carols}")
    assert status == 404
    assert (await carol.listing())["memories"] == []
    # the owner sees the grants; Alice and Bob see Carol's memory
    status, info = await alice.call("GET", f"/namespaces/{NS}")
    assert info["grants"] == sorted(
        [
            {"hotkey": BOB.ss58_address, "access": "read"},
            {"hotkey": CAROL.ss58_address, "access": "write"},
        ],
        key=lambda g: (g["hotkey"], g["access"]),
    )
    assert carols in [h["cid"] for h in await bob.query(query_text="ferns")]
    # revocation: closed on the next request, no waiting
    status, out = await alice.call("DELETE", f"/namespaces/{NS}/grants/{BOB.ss58_address}")
    assert status == 200 and out["revoked"] == ["read", "write"]
    assert await bob.query(query_text="teapot PIN") == []
    status, _ = await bob.call("GET", f"/retrieve/{cid}")
    assert status == 404
    status, out = await alice.call(
        "DELETE", f"/namespaces/{NS}/grants/{CAROL.ss58_address}?access=write"
    )
    assert status == 200 and out["grants"] == []
    status, _ = await carol.ingest("Carol again")
    assert status == 404


async def test_grants_and_creation_are_events_the_store_audits(
    people: dict[str, Who], signed_node: MinerNode
) -> None:
    alice = people["alice"]
    await _alice_private(alice)
    await alice.call(
        "POST", f"/namespaces/{NS}/grants", {"hotkey": BOB.ss58_address, "access": "read"}
    )
    await alice.call("DELETE", f"/namespaces/{NS}/grants/{BOB.ss58_address}?access=read")
    assert signed_node.store is not None
    with signed_node.store.reading() as db:
        rows = db.execute(
            "SELECT kind, namespace, subject, access, by, outcome FROM access_log ORDER BY seq"
        ).fetchall()
    assert rows == [
        ("NamespaceCreated", NS, ALICE.ss58_address, "private", ALICE.ss58_address, "created"),
        ("AccessGranted", NS, BOB.ss58_address, "read", ALICE.ss58_address, "granted"),
        ("AccessRevoked", NS, BOB.ss58_address, "read", ALICE.ss58_address, "revoked"),
    ]
    # creating again: the same owner gets its namespace back, nobody else gets it
    status, out = await alice.call(
        "POST", "/namespaces", {"namespace": NS, "visibility": "private"}
    )
    assert status == 200 and out["owner"] == ALICE.ss58_address
    status, _ = await alice.call("POST", "/namespaces", {"namespace": NS, "visibility": "public"})
    assert status == 409
    # a namespace first written by an ingest is public with no owner: it cannot be claimed
    status, _ = await people["bob"].ingest("a public fact about tea", ns="teas")
    assert status == 200
    status, out = await people["bob"].call("GET", "/namespaces/teas")
    assert status == 200 and out == {
        "namespace": "teas",
        "visibility": "public",
        "owner": None,
        "grants": [],
    }
    status, _ = await alice.call(
        "POST", "/namespaces", {"namespace": "teas", "visibility": "private"}
    )
    assert status == 409
    status, _ = await alice.call(
        "POST", "/namespaces/teas/grants", {"hotkey": CAROL.ss58_address, "access": "read"}
    )
    assert status == 403
    status, _ = await people["nobody"].call(
        "POST", "/namespaces", {"namespace": "x", "visibility": "private"}
    )
    assert status == 401


async def test_list_pages_in_store_order_with_a_filter(people: dict[str, Who]) -> None:
    alice = people["alice"]
    await alice.call("POST", "/namespaces", {"namespace": NS, "visibility": "private"})
    items = [
        {
            "text": f"note number {i} about {'tea' if i % 2 else 'coffee'}",
            "namespace": NS,
            "metadata": {"i": i, "drink": "tea" if i % 2 else "coffee"},
        }
        for i in range(7)
    ]
    status, out = await alice.call("POST", "/IngestBatch", {"items": items})
    assert status == 200, out
    cids = [r["cid"] for r in out["results"]]
    seen, cursor = [], None
    while True:
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        page = await alice.listing(**params)
        seen += [m["metadata"]["i"] for m in page["memories"]]
        assert len(page["memories"]) <= 3
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == list(range(7)) and len(seen) == 7
    assert {m["cid"] for m in (await alice.listing(limit="1000"))["memories"]} == set(cids)
    tea = await alice.listing(filter=json.dumps({"drink": "tea"}))
    assert sorted(m["metadata"]["i"] for m in tea["memories"]) == [1, 3, 5]
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"cursor": "x"}, {"filter": "[1]"}):
        qs = urllib.parse.urlencode({"namespace": NS, **bad})
        status, out = await alice.call("GET", f"/memories?{qs}")
        assert status == 400 and out["error"], bad


async def test_delete_survives_restart_snapshot_restore_and_rebuild(
    signed_settings: Settings, model_cache: Path, tmp_path: Path
) -> None:
    node = await start_node(signed_settings, model_cache)
    root = signed_settings.data_path / "store"
    saved = tmp_path / "saved-store"
    try:
        async with aiohttp.ClientSession(base_url=node.url) as http:
            alice, bob = Who(http, ALICE), Who(http, BOB)
            cid = await _alice_private(alice)
            status, out = await alice.ingest(
                "The spare key is with the neighbour.", request_id="k2"
            )
            keep = out["cid"]
            # Bob's memory in the public namespace: he may delete it, Alice may not
            status, out = await bob.ingest("Public: the library opens at nine.", ns="public")
            bobs = out["cid"]
            status, _ = await alice.call("DELETE", f"/memory/{bobs}")
            assert status == 403
            # a snapshot from before the delete, kept aside (a backup to restore)
            assert node.store is not None
            node.store.snapshot()
            shutil.copytree(root, saved, ignore=shutil.ignore_patterns("LOCK", "live.sqlite*"))
            status, out = await bob.call("DELETE", f"/memory/{cid}")
            assert status == 404
            status, out = await alice.call("DELETE", f"/memory/{cid}")
            assert status == 200 and out == {"cid": cid, "deleted": True, "namespaces": [NS]}
            status, out = await bob.call("DELETE", f"/memory/{bobs}")
            assert status == 200 and out["deleted"] is True
            hits = await alice.query(query_text="bank PIN teapot", top_k=5)
            assert [h["cid"] for h in hits] == [keep]
            status, _ = await alice.call("GET", f"/retrieve/{cid}")
            assert status == 404
            assert [m["cid"] for m in (await alice.listing())["memories"]] == [keep]
            status, _ = await alice.call("DELETE", f"/memory/{cid}")
            assert status == 404  # already gone
            # the old ingest delivered again, after the delete (past JetStream's
            # de-duplication window: a new message id): it stays deleted
            with node.store.reading() as db:
                (orig_seq,) = db.execute(
                    "SELECT seq FROM requests WHERE cid=? AND namespace=?", (cid, NS)
                ).fetchone()
            bus = await open_bus(signed_settings)
            try:
                msg = await bus.js.get_msg("MEMORY", orig_seq)
                ack = await bus.publisher.publish_raw(
                    [(msg.subject, msg.data, {"Nats-Msg-Id": f"redelivered-{time.time()}"})]
                )
                assert await node.runner.wait_for_seq(ack[0].seq)  # type: ignore[union-attr]
            finally:
                await bus.close()
            status, _ = await alice.call("GET", f"/retrieve/{cid}")
            assert status == 404
        applied = node.store.applied_seq
    finally:
        await node.stop()

    async def gone_afterstart_node(what: str) -> None:
        n = await start_node(signed_settings, model_cache)
        try:
            assert n.store is not None and n.store.applied_seq >= applied, what
            async with aiohttp.ClientSession(base_url=n.url) as http:
                alice = Who(http, ALICE)
                status, _ = await alice.call("GET", f"/retrieve/{cid}")
                assert status == 404, what
                status, _ = await alice.call("GET", f"/retrieve/{keep}")
                assert status == 200, what
                assert [m["cid"] for m in (await alice.listing())["memories"]] == [keep], what
                assert bobs not in [
                    h["cid"] for h in await alice.query(ns="public", query_text="library")
                ]
        finally:
            await n.stop()

    await gone_afterstart_node("restart")
    # restore the backup from before the delete: the replay deletes it again
    shutil.rmtree(root)
    shutil.copytree(saved, root)
    await gone_afterstart_node("snapshot restore")
    # rebuild from sequence 1 into a fresh store
    other = msgspec.structs.replace(signed_settings, data_dir=str(tmp_path / "rebuilt"))
    bus = await open_bus(other)
    try:
        store = open_store(other)
        runner = StoreRunner(bus.js, store, publisher=None)
        await runner.rebuild()
        assert store.applied_seq >= applied
        assert [r.cid for r in store.records(NS)] == [keep]
        assert store.holders(cid) == [] and store.holders(bobs) == []
        info = store.access.info(NS)
        assert info is not None and info.private and info.owner == ALICE.ss58_address
        with store.reading() as db:
            deletes = db.execute(
                "SELECT subject, by FROM access_log WHERE kind='Deleted' ORDER BY seq"
            ).fetchall()
        assert deletes == [(cid, ALICE.ss58_address), (bobs, BOB.ss58_address)]
        store.close()
    finally:
        await bus.close()


async def test_v2_proofs_pass_for_private_memories(
    people: dict[str, Who], embedder: Embedder
) -> None:
    alice, validator = people["alice"], people["validator"]
    cid = await _alice_private(alice)
    own = embedder.embed_one(NOTE)  # the validator's ground truth: its own embedding
    challenge = core.new_challenge(cid, public_key_hex(VALIDATOR.ss58_address), ttl_s=60)
    body = {
        "cid": cid,
        "nonce_hex": challenge.nonce_hex,
        "expires_at": challenge.expires_at,
        "validator_hotkey_hex": challenge.validator_hotkey_hex,
        "version": 2,
    }
    status, out = await validator.call("POST", "/ChallengeSynapse", body)
    assert status == 200, out
    assert NOTE not in json.dumps(out) and "text" not in out
    assert core.verify_proof(challenge, out["proof"], version=2, vec=np.asarray(own, np.float32))
    # Bob is no validator: the challenge path is not a way round the access rules
    challenge = core.new_challenge(cid, public_key_hex(BOB.ss58_address), ttl_s=60)
    status, _ = await people["bob"].call(
        "POST",
        "/ChallengeSynapse",
        {
            **body,
            "nonce_hex": challenge.nonce_hex,
            "validator_hotkey_hex": challenge.validator_hotkey_hex,
        },
    )
    assert status == 403


async def test_open_mode_serves_unsigned_callers_public_namespaces_only(
    node: MinerNode,
) -> None:
    async with aiohttp.ClientSession(base_url=node.url) as http:
        alice, anon = Who(http, ALICE), Who(http, None)
        cid = await _alice_private(alice)  # signed requests still work in open mode
        status, out = await anon.ingest("An open fact: water boils at 100 C.", ns="public")
        assert status == 200, out
        assert await anon.query(ns="public", query_text="boiling water")
        assert await anon.query(query_text="bank PIN") == []
        status, _ = await anon.call("GET", f"/retrieve/{cid}")
        assert status == 404
        assert (await anon.listing())["memories"] == []
        status, _ = await anon.ingest("anonymous into a private namespace")
        assert status == 404
        # an unsigned challenge (open mode only) reaches public memories only
        for target, expected in ((out["cid"], 200), (cid, 404)):
            ch = core.new_challenge(target, "11" * 32, ttl_s=60)
            status, _ = await anon.call(
                "POST",
                "/ChallengeSynapse",
                {
                    "cid": target,
                    "nonce_hex": ch.nonce_hex,
                    "expires_at": ch.expires_at,
                    "validator_hotkey_hex": ch.validator_hotkey_hex,
                    "version": 2,
                },
            )
            assert status == expected, target
        for method, path, body in (
            ("POST", "/namespaces", {"namespace": "mine", "visibility": "private"}),
            ("DELETE", f"/memory/{cid}", None),
            ("POST", f"/namespaces/{NS}/grants", {"hotkey": BOB.ss58_address, "access": "read"}),
        ):
            status, out = await anon.call(method, path, body)
            assert status == 401 and "signed" in out["error"], (path, out)
        async with http.delete(f"/memory/{cid}") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "btauth/1"


def test_the_store_applies_access_in_log_order(tmp_path: Path, embedder: Embedder) -> None:
    """The projection decides by the log, not by the clock: a write applied after the
    writer's revocation is refused on every replay; a namespace first written by an
    ingest cannot be created by someone later."""
    from engram.miner.store import MemoryStore
    from streams.events import AccessGranted, AccessRevoked, Embedded, NamespaceCreated

    vecs = embedder.embed(["one note", "another note"])
    metas = [{"i": 0}, {"i": 1}]
    cids = core.compute_cids(vecs, metas, embedder.model_version)

    def emb(i: int, caller: str, ns: str = NS) -> Embedded:
        return Embedded(
            cid=cids[i],
            vector=vecs[i].astype("<f4").tobytes(),
            dim=384,
            metadata=metas[i],
            namespace=ns,
            model_version=embedder.model_version,
            request_id=f"r{i}-{caller[:6]}",
            caller=caller,
            request_kind="raw",
        )

    a, c = ALICE.ss58_address, CAROL.ss58_address
    log = [
        NamespaceCreated(namespace=NS, visibility="private", owner=a),
        AccessGranted(namespace=NS, hotkey=c, access="write", by=a),
        emb(0, c),  # allowed: Carol holds write here
        AccessRevoked(namespace=NS, hotkey=c, access="write", by=a),
        emb(1, c),  # refused: applied after the revocation
        AccessGranted(namespace=NS, hotkey=c, access="read", by=c),  # not the owner: refused
        emb(0, c, ns="open-ns"),  # first write makes a public namespace with no owner
        NamespaceCreated(namespace="open-ns", visibility="private", owner=a),  # exists
    ]
    for root in ("live", "replayed"):
        store = MemoryStore(tmp_path / root)
        results = store.apply_batch(list(enumerate(log, start=1)))
        kinds = [(r.seq, r.kind, r.error if r.kind == "access" else "") for r in results]
        assert kinds[:4] == [
            (1, "access", "created"),
            (2, "access", "granted"),
            (3, "stored", ""),
            (4, "access", "revoked"),
        ]
        assert kinds[4][:2] == (5, "rejected") and "may not write" in results[4].error
        assert kinds[5:] == [
            (6, "access", "refused: not the owner"),
            (7, "stored", ""),
            (8, "access", "exists"),
        ]
        assert [r.cid for r in store.records(NS)] == [cids[0]]
        info = store.access.info("open-ns")
        assert info is not None and info.visibility == "public" and info.owner == ""
        store.close()


async def test_malformed_access_requests_are_4xx_with_a_reason(people: dict[str, Who]) -> None:
    alice = people["alice"]
    await _alice_private(alice)
    cases: list[tuple[str, str, Any, int]] = [
        ("POST", "/namespaces", {"visibility": "private"}, 400),
        ("POST", "/namespaces", {"namespace": 7}, 400),
        ("POST", "/namespaces", {"namespace": "bad name!", "visibility": "private"}, 400),
        ("POST", "/namespaces", {"namespace": "x", "visibility": "secret"}, 400),
        ("POST", f"/namespaces/{NS}/grants", {"hotkey": "not-a-key", "access": "read"}, 400),
        ("POST", f"/namespaces/{NS}/grants", {"hotkey": BOB.ss58_address, "access": "own"}, 400),
        ("POST", f"/namespaces/{NS}/grants", [1, 2], 400),
        ("DELETE", f"/namespaces/{NS}/grants/{BOB.ss58_address}?access=all", None, 400),
        ("DELETE", f"/namespaces/{NS}/grants/nobody", None, 400),
        ("POST", "/namespaces/nope/grants", {"hotkey": BOB.ss58_address, "access": "read"}, 404),
        ("DELETE", "/memory/" + "c" * 300, None, 400),
        ("DELETE", "/memory/v1::unknown", None, 404),
        ("GET", "/namespaces/nope", None, 404),
        ("GET", "/memories?namespace=bad%20name", None, 400),
        ("GET", "/memories?limit=ten", None, 400),
    ]
    for method, path, body, expected in cases:
        status, out = await alice.call(method, path, body)
        assert status == expected and isinstance(out.get("error"), str), (path, body, out)
