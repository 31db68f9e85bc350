"""btauth/1 on the axon: real sr25519 keys (bittensor SDK), real HTTP on loopback.

Most tests run the real middleware and policy on a tiny aiohttp app (no model, no NATS);
one runs the real axon app of a miner node in "signed" mode.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import bittensor_core
import msgspec
import pytest
from aiohttp import web
from bittensor.http_auth import sign

import engram.core as core
from engram.config import ConfigError, Settings, load_settings
from engram.miner.auth import (
    AUTH_KEY,
    Access,
    AxonAuth,
    StaticRegistry,
    build_auth,
    caller_of,
    check_access,
    is_loopback,
    load_or_create_key,
    resolve_mode,
)
from engram.miner.axon import make_app
from engram.miner.client import AxonClient, client_keypair
from engram.miner.node import MinerNode

MINER = bittensor_core.Keypair.from_uri("//EngramMiner")
VALIDATOR = bittensor_core.Keypair.from_uri("//EngramValidator")
CLIENT = bittensor_core.Keypair.from_uri("//EngramClient")
OTHER = bittensor_core.Keypair.from_uri("//SomeoneElse")

Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an app on a free loopback port; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for r in runners:
        await r.cleanup()


def tiny_app(auth: AxonAuth) -> web.Application:
    """The axon's routes with echo handlers; the handler reads the body the middleware read."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.json() if request.body_exists else None
        return web.json_response({"body": body, "caller": caller_of(request)})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **request.app[AUTH_KEY].public_info()})

    app = web.Application(middlewares=[auth.middleware()])
    app[AUTH_KEY] = auth
    for path in ("/IngestSynapse", "/IngestBatch", "/QuerySynapse", "/ChallengeSynapse"):
        app.router.add_post(path, echo)
    app.router.add_get("/retrieve/{cid}", echo)
    app.router.add_get("/stats", echo)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", health)
    return app


def make_auth(mode: str = "signed", **kw: Any) -> AxonAuth:
    registry = StaticRegistry(validators=frozenset({VALIDATOR.ss58_address}), **kw)
    return AxonAuth("signed" if mode == "signed" else "open", MINER, registry)


async def call(
    url: str,
    path: str,
    body: bytes = b'{"query_text": "hi"}',
    *,
    key: Any = CLIENT,
    receiver: str | None = None,
    sent_body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    **sign_kw: Any,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Sign (unless key is None) and send; returns (status, JSON, the headers sent)."""
    if headers is None:
        headers = {}
        if key is not None:
            headers = sign(
                key,
                method=method,
                path=path,
                body=body,
                receiver_ss58=receiver or MINER.ss58_address,
                **sign_kw,
            )
    async with aiohttp.ClientSession() as http:
        data = body if sent_body is None else sent_body
        async with http.request(
            method,
            url + path,
            data=data if method == "POST" else None,
            headers={**headers, "Content-Type": "application/json"},
        ) as r:
            return r.status, await r.json(), headers


# --- the middleware over HTTP -----------------------------------------------------------


async def test_signed_request_passes_and_the_handler_reads_the_body(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    status, out, _ = await call(url, "/QuerySynapse", b'{"query_text": "hi"}')
    assert status == 200, out
    assert out == {"body": {"query_text": "hi"}, "caller": CLIENT.ss58_address}


async def test_tampered_body_is_401(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    status, out, _ = await call(url, "/QuerySynapse", sent_body=b'{"query_text": "bye"}')
    assert status == 401 and "signature does not verify" in out["error"]


async def test_wrong_receiver_is_401(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    status, out, _ = await call(url, "/QuerySynapse", receiver=OTHER.ss58_address)
    assert status == 401 and "different receiving hotkey" in out["error"]


async def test_replayed_request_is_401(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    status, _, headers = await call(url, "/QuerySynapse")
    assert status == 200
    status, out, _ = await call(url, "/QuerySynapse", headers=headers)
    assert status == 401 and "already accepted" in out["error"]


async def test_stale_nonce_is_401(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    old = time.time_ns() - 60 * 10**9
    status, out, _ = await call(url, "/QuerySynapse", nonce_ns=old)
    assert status == 401 and "freshness window" in out["error"]
    ahead = time.time_ns() + 60 * 10**9
    status, out, _ = await call(url, "/QuerySynapse", nonce_ns=ahead)
    assert status == 401 and "in the future" in out["error"]


async def test_signed_path_includes_the_query_string(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    status, out, _ = await call(url, "/retrieve/abc?namespace=alice", b"", method="GET")
    assert status == 200 and out["caller"] == CLIENT.ss58_address
    headers = sign(
        CLIENT, method="GET", path="/retrieve/abc", body=b"", receiver_ss58=MINER.ss58_address
    )
    status, _, _ = await call(
        url, "/retrieve/abc?namespace=bob", b"", method="GET", headers=headers
    )
    assert status == 401


async def test_unsigned_in_signed_mode_is_401_with_a_reason(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    for path in ("/QuerySynapse", "/IngestSynapse", "/ChallengeSynapse"):
        status, out, _ = await call(url, path, key=None)
        assert status == 401 and "requires btauth/1 signed requests" in out["error"]
    async with aiohttp.ClientSession() as http, http.get(url + "/stats") as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "btauth/1"
    # liveness and metrics stay open
    for path in ("/health", "/metrics"):
        async with aiohttp.ClientSession() as http, http.get(url + path) as r:
            assert r.status == 200


async def test_unsigned_in_open_mode_is_allowed(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("open")))
    status, out, _ = await call(url, "/QuerySynapse", key=None)
    assert status == 200 and out == {"body": {"query_text": "hi"}, "caller": None}
    status, _, _ = await call(url, "/ChallengeSynapse", key=None)
    assert status == 200


async def test_bad_signature_in_open_mode_is_401(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("open")))
    status, out, _ = await call(url, "/QuerySynapse", key=CLIENT)
    assert status == 200 and out["caller"] == CLIENT.ss58_address  # a good one passes
    body = b'{"query_text": "hi"}'
    forged = sign(
        OTHER, method="POST", path="/QuerySynapse", body=body, receiver_ss58=MINER.ss58_address
    )
    forged["X-Bittensor-Hotkey"] = CLIENT.ss58_address  # claims to be CLIENT
    status, out, _ = await call(url, "/QuerySynapse", headers=forged)
    assert status == 401 and "signature does not verify" in out["error"]
    broken = {"X-Bittensor-Version": "1", "X-Bittensor-Hotkey": CLIENT.ss58_address}
    status, out, _ = await call(url, "/QuerySynapse", headers=broken)
    assert status == 401 and "missing X-Bittensor-Nonce" in out["error"]


async def test_challenges_need_an_allowlisted_validator(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    status, out, _ = await call(url, "/ChallengeSynapse", key=CLIENT)
    assert status == 403 and "not a validator" in out["error"]
    status, out, _ = await call(url, "/ChallengeSynapse", key=VALIDATOR)
    assert status == 200 and out["caller"] == VALIDATOR.ss58_address
    # a validator is also an ordinary caller elsewhere
    status, _, _ = await call(url, "/QuerySynapse", key=VALIDATOR)
    assert status == 200


async def test_ingest_minimum_stake(serve: Serve) -> None:
    registry = StaticRegistry(stakes={CLIENT.ss58_address: 5.0, VALIDATOR.ss58_address: 50.0})
    url = await serve(tiny_app(AxonAuth("signed", MINER, registry, min_stake=10.0)))
    status, out, _ = await call(url, "/IngestSynapse", key=CLIENT)
    assert status == 403 and "ingest needs 10" in out["error"]
    assert (await call(url, "/IngestBatch", key=VALIDATOR))[0] == 200
    assert (await call(url, "/QuerySynapse", key=CLIENT))[0] == 200  # queries need no stake


async def test_client_signs_for_the_receiver_from_health(serve: Serve) -> None:
    url = await serve(tiny_app(make_auth("signed")))
    async with aiohttp.ClientSession(base_url=url) as http:
        axon = AxonClient(http, CLIENT)
        assert await axon.receiver() == MINER.ss58_address
        for _ in range(3):  # a fresh nonce each time: no replay refusals
            status, out = await axon.post("/QuerySynapse", {"query_text": "hi"})
            assert status == 200 and out["caller"] == CLIENT.ss58_address
        status, out = await axon.get("/retrieve/abc?namespace=alice")
        assert status == 200 and out["caller"] == CLIENT.ss58_address
        status, out = await AxonClient(http, None).post("/QuerySynapse", {"query_text": "hi"})
        assert status == 401


# --- decisions, modes and keys (pure) -------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "host", "expected"),
    [
        ("auto", "127.0.0.1", "open"),
        ("auto", "127.8.9.10", "open"),
        ("auto", "localhost", "open"),
        ("auto", "::1", "open"),
        ("auto", "[::1]", "open"),
        ("auto", "0.0.0.0", "signed"),
        ("auto", "::", "signed"),
        ("auto", "192.168.1.5", "signed"),
        ("auto", "miner.example.org", "signed"),
        ("open", "0.0.0.0", "open"),
        ("signed", "127.0.0.1", "signed"),
    ],
)
def test_auto_resolves_by_bind_address(mode: str, host: str, expected: str) -> None:
    assert resolve_mode(mode, host) == expected
    if mode == "auto":
        assert is_loopback(host) == (expected == "open")


@pytest.mark.parametrize(
    ("access", "mode", "caller", "status"),
    [
        (Access.PUBLIC, "signed", None, None),
        (Access.CALLER, "signed", None, 401),
        (Access.CALLER, "open", None, None),
        (Access.CALLER, "signed", "client", None),
        (Access.VALIDATOR, "signed", "client", 403),
        (Access.VALIDATOR, "signed", "validator", None),
        (Access.VALIDATOR, "open", "client", None),  # open: unsigned would pass anyway
        (Access.INGEST, "signed", "client", 403),
        (Access.INGEST, "signed", "validator", None),
        (Access.INGEST, "open", "client", None),
    ],
)
def test_check_access_table(access: Access, mode: str, caller: str | None, status: int) -> None:
    registry = StaticRegistry(frozenset({"validator"}), {"validator": 2.0, "client": 0.5})
    got = check_access(
        access,
        mode="signed" if mode == "signed" else "open",
        caller=caller,
        registry=registry,
        min_stake=1.0,
    )
    assert (got.status if got else None) == status


def test_key_is_generated_once_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "miner_hotkey"
    kp, created = load_or_create_key(path)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, created = load_or_create_key(path)
    assert not created and again.ss58_address == kp.ss58_address
    assert not [p for p in path.parent.iterdir() if p.name != "miner_hotkey"]  # no temp left
    # a bittensor hotkey file (the SDK's own format) is accepted as is
    data = bittensor_core.serialized_keypair_to_keyfile_data(VALIDATOR)
    wallet_hotkey = tmp_path / "hotkey"
    wallet_hotkey.write_bytes(data)
    os.chmod(wallet_hotkey, 0o600)
    assert load_or_create_key(wallet_hotkey)[0].ss58_address == VALIDATOR.ss58_address


def test_build_auth_from_settings(tmp_path: Path) -> None:
    s = Settings(data_dir=str(tmp_path), axon_validators=[VALIDATOR.ss58_address])
    # the default is signed on every bind, loopback included (issue 9)
    assert build_auth(s, "127.0.0.1").mode == "signed"
    s = msgspec.structs.replace(s, axon_auth="auto")
    local, exposed = build_auth(s, "127.0.0.1"), build_auth(s, "0.0.0.0")
    assert (local.mode, exposed.mode) == ("open", "signed")
    assert local.hotkey_ss58 == exposed.hotkey_ss58  # generated once, then kept
    assert (tmp_path / "keys" / "miner_hotkey").is_file()
    assert local.registry.is_validator(VALIDATOR.ss58_address)
    seeded = Settings(data_dir=str(tmp_path), miner_hotkey_seed="//EngramMiner")
    assert build_auth(seeded, "0.0.0.0").hotkey_ss58 == MINER.ss58_address
    with pytest.raises(ConfigError, match="axon_min_stake"):
        build_auth(Settings(data_dir=str(tmp_path), axon_min_stake=1.0), "0.0.0.0")
    with pytest.raises(ConfigError, match="miner_hotkey_seed"):
        build_auth(Settings(data_dir=str(tmp_path), miner_hotkey_seed="not a key"), "::1")
    with pytest.raises(ConfigError, match="axon_validators"):
        bad = "5" + "1" * 47  # ss58-shaped but with a bad checksum
        build_auth(Settings(data_dir=str(tmp_path), axon_validators=[bad]), "::1")


def test_auth_settings_validate_and_read_the_environment() -> None:
    env = {
        "ENGRAM_AXON_AUTH": "signed",
        "ENGRAM_AXON_VALIDATORS": f"{VALIDATOR.ss58_address}, {CLIENT.ss58_address}",
    }
    s = load_settings(path=None, environ=env)
    assert s.axon_auth == "signed"
    assert s.axon_validators == [VALIDATOR.ss58_address, CLIENT.ss58_address]
    # signed on every bind unless the operator says otherwise (issue 9)
    assert load_settings(path=None, environ={}).axon_auth == "signed"
    assert load_settings(path=None, environ={"ENGRAM_AXON_AUTH": "auto"}).axon_auth == "auto"
    with pytest.raises(ConfigError, match="axon_auth"):
        load_settings(path=None, environ={"ENGRAM_AXON_AUTH": "sometimes"})
    with pytest.raises(ConfigError, match="axon_validators"):
        load_settings(path=None, environ={"ENGRAM_AXON_VALIDATORS": "0xdeadbeef"})
    seeded = load_settings(path=None, environ={"ENGRAM_MINER_HOTKEY_SEED": "//secret"})
    assert seeded.shown()["miner_hotkey_seed"] == "********"


def test_client_key_lives_under_the_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=str(tmp_path))
    assert client_keypair(s).ss58_address == client_keypair(s).ss58_address
    assert (tmp_path / "keys" / "client_hotkey").is_file()


# --- the real axon app, signed ------------------------------------------------------------


async def test_real_axon_in_signed_mode(node: MinerNode, serve: Serve) -> None:
    assert node.axon is not None
    # the node itself binds loopback, so "auto" left it open and it reports its hotkey
    async with aiohttp.ClientSession(base_url=node.url) as http, http.get("/health") as r:
        health = await r.json()
    assert health["auth"] == "open" and health["hotkey_ss58"].startswith("5")

    registry = StaticRegistry(validators=frozenset({VALIDATOR.ss58_address}))
    url = await serve(make_app(node.axon, AxonAuth("signed", MINER, registry)))
    async with aiohttp.ClientSession(base_url=url) as http:
        client = AxonClient(http, CLIENT)
        status, out = await client.post("/IngestSynapse", {"text": "Signed memories persist."})
        assert status == 200, out
        cid = out["cid"]
        status, out = await client.post("/QuerySynapse", {"query_text": "signed", "top_k": 1})
        assert status == 200 and out["results"][0]["cid"] == cid
        status, out = await AxonClient(http).post("/QuerySynapse", {"query_text": "signed"})
        assert status == 401 and "signed requests" in out["error"]
        ch = core.new_challenge(cid, VALIDATOR.public_key.hex())
        challenge = {**ch.as_dict(), "version": 2}
        status, out = await client.post("/ChallengeSynapse", challenge)
        assert status == 403 and "not a validator" in out["error"]
        # a registered validator signs a challenge naming another hotkey: no proof oracle
        for named in (OTHER.public_key.hex(), "ab" * 32):
            other = {**challenge, "validator_hotkey_hex": named}
            status, out = await AxonClient(http, VALIDATOR).post("/ChallengeSynapse", other)
            assert status == 403 and "names another hotkey" in out["error"], out
            assert "proof" not in out
        # ... and the refusals did not use the nonce up: the honest challenge is answered
        status, out = await AxonClient(http, VALIDATOR).post("/ChallengeSynapse", challenge)
        assert status == 200 and out["proof"], out
        vec = node.axon.store.get(cid)
        assert vec is not None
        assert core.verify_proof(ch, out["proof"], version=2, vec=vec.vector)
        async with http.get("/metrics") as r:
            text = await r.text()
        assert 'endpoint="/ChallengeSynapse",status="403"' in text  # refusals are counted


async def test_open_mode_binds_signed_challenges_only(node: MinerNode) -> None:
    """The node binds loopback, so it is open: a signed challenge must still name its
    signer; an unsigned one is answered for any hotkey (/retrieve gives the vector anyway)."""
    async with aiohttp.ClientSession(base_url=node.url) as http:
        status, out = await AxonClient(http).post("/IngestSynapse", {"text": "Open axons."})
        assert status == 200, out
        cid = out["cid"]
        named_other = {**core.new_challenge(cid, OTHER.public_key.hex()).as_dict(), "version": 2}
        status, out = await AxonClient(http, CLIENT).post("/ChallengeSynapse", named_other)
        assert status == 403 and "names another hotkey" in out["error"], out
        status, out = await AxonClient(http).post("/ChallengeSynapse", named_other)
        assert status == 200 and out["proof"], out
        mine = {**core.new_challenge(cid, CLIENT.public_key.hex()).as_dict(), "version": 2}
        status, out = await AxonClient(http, CLIENT).post("/ChallengeSynapse", mine)
        assert status == 200 and out["proof"], out


def test_cli_query_signs_with_the_client_key(tmp_path: Path) -> None:
    """``engram query`` against a signed axon: signed with <data_dir>/keys/client_hotkey."""
    import asyncio
    import json
    import threading

    from click.testing import CliRunner

    from engram.cli import main

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(tiny_app(make_auth("signed")), access_log=None)

    async def start() -> str:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        url = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        args = ["--data-dir", str(tmp_path), "query", "hello", "--url", url, "--json"]
        result = CliRunner().invoke(main, args, env={"ENGRAM_CONFIG": os.devnull})
        assert result.exit_code == 0, result.output
        out = json.loads(result.output.strip().splitlines()[-1])
        key = load_or_create_key(tmp_path / "keys" / "client_hotkey")[0]
        assert out["caller"] == key.ss58_address
        assert out["body"]["query_text"] == "hello"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
