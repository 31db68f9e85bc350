"""The miner trusts the chain, not a list; replays are refused node-wide.

Real parts only: a LocalChain in JetStream KV on its own nats-server (as in a devnet, where
the chain lives apart from each miner's bus), real sr25519 keys, real HTTP on loopback,
and a real miner node for the challenge path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import bittensor_core
import msgspec
import pytest
from aiohttp import web
from bittensor.http_auth import sign

import engram.core as core
from engram.bus import Bus
from engram.chain.local import LocalChain
from engram.config import ConfigError, Settings
from engram.miner.auth import AUTH_KEY, AxonAuth, build_auth, caller_of
from engram.miner.axon import Axon, make_app
from engram.miner.client import AxonClient
from engram.miner.node import MinerNode, cache_dir
from engram.miner.nonces import BTAUTH_BUCKET, CHALLENGE_BUCKET, SharedNonces
from engram.miner.trust import open_chain_trust
from engram.natsd import EmbeddedNats

MINER = bittensor_core.Keypair.from_uri("//TrustMiner")
VALIDATOR = bittensor_core.Keypair.from_uri("//TrustValidator")
NO_PERMIT = bittensor_core.Keypair.from_uri("//TrustNoPermit")
POOR = bittensor_core.Keypair.from_uri("//TrustPoorValidator")
STRANGER = bittensor_core.Keypair.from_uri("//TrustStranger")


@pytest.fixture
def chain_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """The chain's own server (the devnet's), apart from the miner's bus."""
    server = EmbeddedNats(data_dir=tmp_path / "chain-nats", sync="always").start(reuse=False)
    try:
        yield server
    finally:
        server.stop()


async def _subnet(url: str) -> AsyncIterator[LocalChain]:
    import nats

    nc = await nats.connect(url)
    try:
        # permits: the 2 largest stakes; NO_PERMIT (the 3rd) has none
        chain = await LocalChain.open(nc.jetstream(), MINER.ss58_address, max_validators=2)
        await chain.register()
        await chain.register(VALIDATOR.ss58_address, stake=5000.0)
        await chain.register(POOR.ss58_address, stake=5.0)
        await chain.register(NO_PERMIT.ss58_address, stake=1.0)
        yield chain
    finally:
        await nc.close()


@pytest.fixture
async def subnet(chain_server: EmbeddedNats) -> AsyncIterator[LocalChain]:
    async for chain in _subnet(chain_server.url):
        yield chain


def echo_app(auth: AxonAuth) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"caller": caller_of(request)})

    app = web.Application(middlewares=[auth.middleware()])
    app[AUTH_KEY] = auth
    for path in ("/IngestSynapse", "/ChallengeSynapse", "/QuerySynapse"):
        app.router.add_post(path, echo)
    return app


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for r in runners:
        await r.cleanup()


async def post(
    url: str, path: str, key: Any, body: bytes = b"{}", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    if headers is None:
        headers = sign(key, method="POST", path=path, body=body, receiver_ss58=MINER.ss58_address)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + path, data=body, headers={**headers, "Content-Type": "application/json"}
        ) as r,
    ):
        return r.status, await r.json(), headers


def chain_settings(settings: Settings, chain_url: str, **kw: Any) -> Settings:
    return msgspec.structs.replace(
        settings,
        chain="local",
        chain_nats_url=chain_url,
        chain_refresh_s=0.1,
        axon_validator_min_stake=100.0,
        axon_auth="signed",
        **kw,
    )


async def test_validators_and_stake_come_from_the_chain(
    bus: Bus, settings: Settings, subnet: LocalChain, chain_server: EmbeddedNats, serve: Any
) -> None:
    s = chain_settings(settings, chain_server.url, axon_min_stake=50.0)
    trust = await open_chain_trust(s, bus, MINER)
    assert trust is not None
    stop = asyncio.Event()
    task = trust.start(stop)
    try:
        auth = build_auth(s, "127.0.0.1", trust.registry, keypair=MINER)
        assert auth.mode == "signed"
        url = await serve(echo_app(auth))

        status, out, _ = await post(url, "/ChallengeSynapse", VALIDATOR)
        assert status == 200 and out["caller"] == VALIDATOR.ss58_address
        refused = {
            NO_PERMIT: "has no validator permit",
            POOR: "has stake 5; a validator needs 100",
            STRANGER: "is not registered on netuid 1",
        }
        for key, reason in refused.items():
            status, out, _ = await post(url, "/ChallengeSynapse", key)
            assert status == 403 and reason in out["error"], out
        # ingest needs axon_min_stake (50) from the same view
        status, out, _ = await post(url, "/IngestSynapse", POOR)
        assert status == 403 and "ingest needs 50" in out["error"], out
        assert (await post(url, "/IngestSynapse", VALIDATOR))[0] == 200

        # stake changes on the chain are seen after the registry's refresh
        await subnet.add_stake(POOR.ss58_address, 200.0)
        for _ in range(100):
            if (await post(url, "/ChallengeSynapse", POOR))[0] == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the stake change was never seen")
        assert (await post(url, "/IngestSynapse", POOR))[0] == 200
    finally:
        stop.set()
        await task
        await trust.close()


async def test_a_permit_newer_than_the_cached_metagraph_is_honoured_at_once(
    bus: Bus, settings: Settings, subnet: LocalChain, chain_server: EmbeddedNats, serve: Any
) -> None:
    """A validator registered after the miner's last metagraph read is not turned away for
    a whole refresh period: the refusal re-reads the chain first (rate-limited)."""
    s = msgspec.structs.replace(chain_settings(settings, chain_server.url), chain_refresh_s=3600.0)
    trust = await open_chain_trust(s, bus, MINER)
    assert trust is not None
    reads = 0
    sync = trust.registry.sync

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await sync()

    trust.registry.sync = counted  # type: ignore[method-assign]
    try:
        url = await serve(echo_app(build_auth(s, "127.0.0.1", trust.registry, keypair=MINER)))
        late = bittensor_core.Keypair.from_uri("//TrustLateValidator")
        assert not trust.registry.is_validator(late.ss58_address)
        await subnet.register(late.ss58_address, stake=500.0)  # after the miner's read
        status, out, _ = await post(url, "/ChallengeSynapse", late)
        assert status == 200 and out["caller"] == late.ss58_address, out
        assert reads == 1
        # strangers cannot make the miner read the chain on every request
        for _ in range(5):
            status, out, _ = await post(url, "/ChallengeSynapse", STRANGER)
            assert status == 403 and "is not registered" in out["error"]
        assert reads <= 2  # five refusals, at most one more read (one per miss_refresh_s)
    finally:
        await trust.close()


async def test_chain_none_keeps_the_static_list(settings: Settings, bus: Bus) -> None:
    assert await open_chain_trust(settings, bus, MINER) is None
    with pytest.raises(ConfigError, match="chain = local or bittensor"):
        build_auth(msgspec.structs.replace(settings, axon_min_stake=1.0), "0.0.0.0", keypair=MINER)
    with pytest.raises(ConfigError, match="chain: must be"):
        Settings(chain="ethereum")


async def test_a_replay_to_another_axon_process_is_refused(
    bus: Bus, serve: Any, settings: Settings
) -> None:
    """Two axon apps of one node share the btauth nonce store (KV on the node's bus)."""
    from engram.miner.auth import StaticRegistry

    registry = StaticRegistry(validators=frozenset({VALIDATOR.ss58_address}))
    apps = []
    for _ in range(2):  # each "process" opens the bucket itself and has its own memory store
        shared = await SharedNonces.open(bus.js, BTAUTH_BUCKET, 60.0)
        apps.append(AxonAuth("signed", MINER, registry, shared_nonces=shared))
    first, second = [await serve(echo_app(a)) for a in apps]
    alone = await serve(echo_app(AxonAuth("signed", MINER, registry)))

    status, _, headers = await post(first, "/QuerySynapse", STRANGER)
    assert status == 200
    status, out, _ = await post(first, "/QuerySynapse", STRANGER, headers=headers)
    assert status == 401 and "already accepted" in out["error"], out
    status, out, _ = await post(second, "/QuerySynapse", STRANGER, headers=headers)
    assert status == 401 and "nonce already used" in out["error"], out
    # a process with only its own memory would have accepted it
    assert (await post(alone, "/QuerySynapse", STRANGER, headers=headers))[0] == 200


@pytest.fixture
async def chain_node(
    settings: Settings, model_cache: Path, chain_server: EmbeddedNats, subnet: LocalChain
) -> AsyncIterator[MinerNode]:
    s = chain_settings(settings, chain_server.url, miner_hotkey_seed="//TrustMiner")
    cache = cache_dir(s)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists():
        cache.symlink_to(model_cache, target_is_directory=True)
    node = MinerNode(s, port=0, ingest_wait_s=15.0)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def test_a_real_miner_node_gates_challenges_by_the_chain_and_shares_nonces(
    chain_node: MinerNode, serve: Any
) -> None:
    node = chain_node
    assert node.axon is not None and node.bus is not None and node.trust is not None
    async with aiohttp.ClientSession(base_url=node.url) as http:
        status, out = await AxonClient(http, STRANGER).post(
            "/IngestSynapse", {"text": "The chain decides who may challenge."}
        )
        assert status == 200, out
        cid = out["cid"]
        ch = core.new_challenge(cid, VALIDATOR.public_key.hex())
        body = {**ch.as_dict(), "version": 2}
        status, out = await AxonClient(http, NO_PERMIT).post("/ChallengeSynapse", body)
        assert status == 403 and "no validator permit" in out["error"], out

    # a second axon "process" of this node: its own Axon (own in-memory stores), sharing
    # the node's KV buckets
    second = Axon(
        node.store,  # type: ignore[arg-type]
        node.runner,  # type: ignore[arg-type]
        node.bus.publisher,
        node.axon.embedder,
        proof_versions=(2,),
        shared_nonces=await SharedNonces.open(node.bus.js, CHALLENGE_BUCKET, 3600.0),
    )
    auth = AxonAuth(
        "signed",
        MINER,
        node.trust.registry,
        shared_nonces=await SharedNonces.open(node.bus.js, BTAUTH_BUCKET, 60.0),
    )
    other = await serve(make_app(second, auth))

    raw = msgspec.json.encode(body)
    status, out, headers = await post(node.url, "/ChallengeSynapse", VALIDATOR, raw)
    assert status == 200, out
    assert core.verify_proof(ch, out["proof"], version=2, vec=node.store.get(cid).vector)  # type: ignore[union-attr]
    # the same signed request replayed to the other process: 401 (btauth nonce, shared)
    status, out, _ = await post(other, "/ChallengeSynapse", VALIDATOR, raw, headers)
    assert status == 401 and "nonce already used" in out["error"], out
    # freshly signed, same challenge nonce: 409 (challenge nonce, shared)
    status, out, _ = await post(other, "/ChallengeSynapse", VALIDATOR, raw)
    assert status == 409 and "already answered" in out["error"], out
    # a new challenge is answered by the other process
    fresh = {**core.new_challenge(cid, VALIDATOR.public_key.hex()).as_dict(), "version": 2}
    status, out, _ = await post(other, "/ChallengeSynapse", VALIDATOR, msgspec.json.encode(fresh))
    assert status == 200, out


async def test_the_shared_store_is_atomic_and_steps_aside_while_the_bus_is_down(bus: Bus) -> None:
    up = True
    store = await SharedNonces.open(bus.js, "engram_test_nonces", 60.0, available=lambda: up)
    other = await SharedNonces.open(bus.js, "engram_test_nonces", 60.0)
    # many claims of one key at once, from two "processes": exactly one wins
    wins = await asyncio.gather(*(s.claim("k.1") for s in (store, other) * 8))
    assert sum(wins) == 1
    up = False  # the node's bus guard says the bus is down: the local store decides alone
    assert await store.claim("k.1") and store.fallbacks == 1
    up = True
    assert not await store.claim("k.1")
    with pytest.raises(ValueError, match="not a replay-store key"):
        await store.claim("bad key with spaces")
