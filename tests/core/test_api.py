"""The public API: curated names, backend switch, challenges with expiry and replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import engram.core as core
from engram.core import (
    Backend,
    Challenge,
    ChallengeExpired,
    ChallengeReplayed,
    InvalidArgument,
    InvalidEmbedding,
    InvalidHotkey,
    NonceStore,
    answer,
    backends,
    new_challenge,
    verify_proof,
)

HK = "ab" * 32
VEC = np.linspace(-1, 1, 16, dtype=np.float32)


def test_all_is_honest() -> None:
    public = {n for n in dir(core) if not n.startswith("_")}
    modules = {"challenge", "errors"}
    assert set(core.__all__) == public - modules


def test_backends_have_the_same_functions() -> None:
    names = {n for n in Backend.__dict__ if not n.startswith("_")}
    for b in backends().values():
        assert all(callable(getattr(b, n)) for n in names)


def test_backend_info() -> None:
    info = core.backend_info()
    assert info["backend"] == core.BACKEND in ("rust", "python")
    assert info["rust_available"] == ("rust" in backends())
    json.dumps(info)


@pytest.mark.parametrize("choice", ["python", "rust", "auto"])
def test_env_switch(choice: str) -> None:
    if choice == "rust" and "rust" not in backends():
        pytest.skip("engram_core not installed")
    env = {**os.environ, "ENGRAM_CORE_BACKEND": choice}
    code = "import engram.core as c; print(c.BACKEND, c.compute_cid([1.0], {}, 'm'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    auto = "rust" if "rust" in backends() else "python"
    want = {"python": "python", "rust": "rust"}.get(choice, auto)
    assert out[0] == want
    assert out[1] == backends()["python"].compute_cid([1.0], {}, "m")


def test_env_switch_rejects_unknown() -> None:
    env = {**os.environ, "ENGRAM_CORE_BACKEND": "fortran"}
    r = subprocess.run(
        [sys.executable, "-c", "import engram.core"], env=env, capture_output=True, text=True
    )
    assert r.returncode != 0 and "ENGRAM_CORE_BACKEND" in r.stderr


@pytest.mark.parametrize("version", [1, 2])
def test_challenge_round_trip(core: Backend, version: int) -> None:
    ch = new_challenge("v1::abc", HK, ttl_s=30, now=1000.0, backend=core)
    assert ch.expires_at == 1030 and len(ch.nonce_hex) == 64
    assert Challenge.from_dict(json.loads(json.dumps(ch.as_dict()))) == ch
    proof = answer(ch, version=version, vec=VEC, backend=core)
    store = NonceStore()
    kw = {"version": version, "vec": VEC, "backend": core}
    assert verify_proof(ch, proof, now=1029.9, nonce_store=store, **kw)
    with pytest.raises(ChallengeReplayed):
        verify_proof(ch, proof, now=1010, nonce_store=store, **kw)
    # Upper-case hex is the same nonce.
    upper = Challenge(ch.cid, ch.nonce_hex.upper(), ch.expires_at, ch.validator_hotkey_hex)
    with pytest.raises(ChallengeReplayed):
        verify_proof(upper, proof, now=1010, nonce_store=store, **kw)
    with pytest.raises(ChallengeExpired):
        verify_proof(ch, proof, now=1030, **kw)
    assert not verify_proof(ch, "00" * 32, now=1000, **kw)
    assert not verify_proof(ch, "not hex", now=1000, **kw)


def test_v1_accepts_hash_and_v2_binds_validator(core: Backend) -> None:
    ch = new_challenge("v1::abc", HK, now=0, backend=core)
    eh = core.embedding_hash(VEC)
    p1 = answer(ch, version=1, embedding_hash=eh, backend=core)
    assert verify_proof(ch, p1, version=1, embedding_hash=eh, now=1, backend=core)
    # A v2 proof for another validator's challenge with the same nonce does not verify.
    other = Challenge(ch.cid, ch.nonce_hex, ch.expires_at, "cd" * 32)
    p2 = answer(other, vec=VEC, backend=core)
    assert not verify_proof(ch, p2, vec=VEC, now=1, backend=core)


def test_nonce_store_forgets_expired() -> None:
    store = NonceStore()
    store.consume("aa" * 32, expires_at=10, now=0)
    assert "AA" * 32 in store
    store.consume("bb" * 32, expires_at=100, now=11)
    assert len(store) == 1


def test_challenge_bad_input() -> None:
    with pytest.raises(InvalidHotkey):
        new_challenge("v1::x", "abc")
    with pytest.raises(InvalidArgument):
        new_challenge("", HK)
    with pytest.raises(InvalidArgument):
        new_challenge("v1::x", HK, ttl_s=0)
    ch = new_challenge("v1::x", HK)
    with pytest.raises(InvalidEmbedding):
        verify_proof(ch, "00", version=2)
    with pytest.raises(InvalidArgument):
        verify_proof(ch, "00", version=3, vec=VEC)


def test_batch_releases_gil_and_is_thread_safe(core: Backend) -> None:
    from concurrent.futures import ThreadPoolExecutor

    m = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
    metas = [{"i": i} for i in range(2000)]
    want = core.compute_cids(m, metas, "v")
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: core.compute_cids(m, metas, "v"), range(8)))
    assert all(r == want for r in results)


def test_native_stub_matches_module() -> None:
    """engram-core/engram_core.pyi lists exactly the native module's public names."""
    import re
    from pathlib import Path

    rust = backends().get("rust")
    if rust is None:
        pytest.skip("engram_core not installed")
    stub = (Path(__file__).resolve().parents[2] / "engram-core" / "engram_core.pyi").read_text()
    declared = set(re.findall(r"^def (\w+)\(", stub, re.M))
    declared |= set(re.findall(r"^(\w+): ", stub, re.M))
    public = {n for n in dir(rust) if not n.startswith("_")} | {"__version__"}
    public -= {"engram_core"}  # the package's inner extension module
    assert declared == public
    protocol = {n for n in Backend.__dict__ if not n.startswith("_")}
    assert protocol <= declared
