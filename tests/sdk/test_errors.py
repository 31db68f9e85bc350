"""Every error type of the SDK, through both drivers (sync and async share one core).

Against the real signed miner wherever the miner can produce the condition: refusals
(400), unknown CIDs (404), a missing (401) or an unstaked (403) signature, the in-flight
limit (503 + Retry-After, held by real stalled connections), and a port nobody listens on.
What a healthy miner never answers on demand (a 500, a 409, an ingest stuck accepted) is
served by a scripted stdlib HTTP server on loopback.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from engram.sdk import (
    AuthError,
    BadRequest,
    Conflict,
    EngramError,
    Forbidden,
    IngestError,
    IngestRefused,
    IngestTimeout,
    InputError,
    InvalidCID,
    InvalidCIDError,
    MinerOfflineError,
    NotFound,
    Offline,
    QueryError,
    QueryRefused,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
)
from streams.errors import EngramError as Root

from .conftest import CLIENT, MAX_INFLIGHT, STRANGER, caller

UNKNOWN = "v1::" + "ab" * 32


def test_the_tree_has_one_root() -> None:
    assert EngramError is Root
    for cls in (QueryRefused, IngestRefused, NotFound, Unauthorized, Forbidden, Conflict):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError)
    for cls in (Offline, ServerError, RateLimited, IngestTimeout):
        assert issubclass(cls, Unavailable)
    assert issubclass(IngestRefused, IngestError) and issubclass(QueryRefused, QueryError)
    assert MinerOfflineError is Offline and InvalidCIDError is InvalidCID


def test_refusals_carry_the_servers_reason(url: str, ns: str, driver: str) -> None:
    call = caller(driver, url, hotkey=CLIENT, namespace=ns)
    with pytest.raises(QueryRefused) as q:
        call("query", "hello", top_k=0)
    assert q.value.status == 400 and "top_k" in q.value.reason
    assert isinstance(q.value, BadRequest) and isinstance(q.value, QueryError)
    with pytest.raises(IngestRefused) as i:
        call("ingest", "fine", namespace="bad ns")
    assert i.value.status == 400 and "namespace" in i.value.reason
    with pytest.raises(IngestRefused) as e:
        call("ingest_embedding", [float("nan")] * 384)
    assert "JSON" in e.value.reason


def test_unknown_and_malformed_cids(url: str, ns: str, driver: str) -> None:
    call = caller(driver, url, hotkey=CLIENT, namespace=ns)
    with pytest.raises(NotFound) as nf:
        call("get", UNKNOWN)
    assert nf.value.status == 404 and "unknown CID" in nf.value.reason
    for bad in ("nope", "v1::xyz", "v1::" + "ab" * 31, None):
        with pytest.raises(InvalidCID):
            call("get", bad)


def test_auth_missing_signature_and_unstaked_hotkey(url: str, ns: str, driver: str) -> None:
    with pytest.raises(Unauthorized) as u:
        caller(driver, url, namespace=ns)("query", "hello")
    assert u.value.status == 401 and "btauth" in u.value.reason
    stranger = caller(driver, url, hotkey=STRANGER, namespace=ns)
    assert stranger("query", "hello") == []  # any valid signature may query
    with pytest.raises(Forbidden) as f:
        stranger("ingest", "no stake, no ingest")
    assert f.value.status == 403 and "stake" in f.value.reason
    assert isinstance(f.value, AuthError)


def test_offline(driver: str) -> None:
    with pytest.raises(Offline) as off:
        caller(driver, "http://127.0.0.1:9", retries=1, timeout=2)("health")
    assert off.value.url == "http://127.0.0.1:9"
    assert caller(driver, "http://127.0.0.1:9", retries=0)("is_online") is False
    # chunks in flight on several threads or tasks: the first error comes out as itself
    with pytest.raises(Offline):
        caller(driver, "http://127.0.0.1:9", retries=0, timeout=2)(
            "batch_ingest", [f"t{i}" for i in range(10)], chunk_size=2, concurrency=3
        )


class Stalled:
    """Requests whose body never finishes: each holds one of the axon's in-flight slots."""

    def __init__(self, url: str, n: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.socks = []
        for _ in range(n):
            s = socket.create_connection((host, int(port)))
            s.sendall(
                b"POST /QuerySynapse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"query_'
            )
            self.socks.append(s)
        # until the axon holds them all: a further request is refused at the limit (503)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/stats", timeout=5).close()
            except urllib.error.HTTPError as err:
                if err.code == 503:
                    return
            time.sleep(0.05)
        raise AssertionError("the stalled requests never filled the in-flight limit")

    def release(self) -> None:
        for s in self.socks:
            s.close()


def test_rate_limited_then_retried_after_retry_after(url: str, ns: str, driver: str) -> None:
    stalled = Stalled(url, MAX_INFLIGHT)
    try:
        with pytest.raises(RateLimited) as rl:
            caller(driver, url, hotkey=CLIENT, namespace=ns, retries=0)("query", "busy?")
        assert rl.value.status == 503 and rl.value.retry_after_s == 1.0
        assert "in flight" in rl.value.reason
        # with retries, the client waits the miner's Retry-After (1 s) and gets through
        threading.Timer(0.3, stalled.release).start()
        t0 = time.monotonic()
        assert caller(driver, url, hotkey=CLIENT, namespace=ns, retries=2)("query", "x") == []
        assert time.monotonic() - t0 >= 0.9
    finally:
        stalled.release()


# --- what a healthy miner does not answer on demand: a scripted HTTP server ---------------


class Script(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Script

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self.server.requests.append((self.command, self.path))
        status, body, headers = (
            self.server.answers.pop(0) if self.server.answers else (200, {"status": "ok"}, {})
        )
        headers = dict(headers)
        if "X-Delay" in headers:  # answer late (not sent as a header)
            time.sleep(float(headers.pop("X-Delay")))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def script() -> Iterator[Script]:
    srv = Script()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_5xx_is_retried_with_backoff_then_raised(script: Script, driver: str) -> None:
    script.answers = [(500, {"error": "boom"}, {})] * 3
    with pytest.raises(ServerError) as se:
        caller(driver, script.url, retries=2)("stats")
    assert se.value.status == 500 and se.value.reason == "boom"
    assert len(script.requests) == 3  # one try + two retries
    script.requests.clear()
    script.answers = [(502, {"error": "flaky"}, {}), (200, {"memories": 7}, {})]
    assert caller(driver, script.url, retries=2)("stats") == {"memories": 7}
    assert len(script.requests) == 2


def test_4xx_is_never_retried(script: Script, driver: str) -> None:
    script.answers = [(409, {"error": "namespace limit"}, {})]
    with pytest.raises(Conflict) as c:
        caller(driver, script.url, retries=3)("ingest", "x")
    assert c.value.reason == "namespace limit" and len(script.requests) == 1


def test_a_retry_after_beyond_the_cap_is_not_waited_for(script: Script, driver: str) -> None:
    script.answers = [(429, {"error": "slow down"}, {"Retry-After": "3600"})]
    t0 = time.monotonic()
    with pytest.raises(RateLimited) as rl:
        caller(driver, script.url, retries=3)("stats")
    assert rl.value.retry_after_s == 3600 and time.monotonic() - t0 < 5
    assert len(script.requests) == 1


def test_accepted_but_not_stored_in_time_is_an_ingest_timeout(script: Script, driver: str) -> None:
    pending = {"status": "pending", "cid": None, "error": None}
    script.answers = [(202, {"status": "accepted", "cid": None, "error": None}, {})] + [
        (200, pending, {})
    ] * 50
    with pytest.raises(IngestTimeout) as t:
        caller(driver, script.url, wait_s=0.5)("ingest", "slow", request_id="r-1")
    assert t.value.request_id == "r-1"
    assert ("GET", "/ingest/r-1?kind=text") in script.requests


def test_a_malformed_cid_from_a_miner_is_refused(script: Script, driver: str) -> None:
    script.answers = [(200, {"status": "stored", "cid": "v1::bogus", "error": None}, {})]
    with pytest.raises(InvalidCID):
        caller(driver, script.url)("ingest", "x")


def test_a_miner_that_answers_too_late_times_out(script: Script, driver: str) -> None:
    script.answers = [(200, {"memories": 1}, {"X-Delay": "1.5"})] * 2
    t0 = time.monotonic()
    with pytest.raises(Offline) as off:
        caller(driver, script.url, timeout=0.3, retries=1)("stats")
    assert "0.3" in str(off.value) and time.monotonic() - t0 < 1.5
    assert len(script.requests) == 2  # a timeout is retried like a refused connection
