"""The verifier's verdict for one answer: v2 and v1 proofs, wrong proofs, hash-only
answers, expiry, replayed nonces, errors (engram-core computes and checks the bytes)."""

from __future__ import annotations

import numpy as np
import pytest

from engram.core import answer, embedding_hash, new_challenge
from engram.validator.challenges import SeenNonces, verdict
from streams.events import ChallengeAnswered

HOTKEY_HEX = "a0" * 32
VEC = np.linspace(-1.0, 1.0, 16, dtype=np.float32)
OTHER = VEC[::-1].copy()


def _answered(
    version: int = 2, *, vec: np.ndarray = VEC, at: float = 1000.0, **over: object
) -> ChallengeAnswered:
    c = new_challenge("v1::" + "ab" * 32, HOTKEY_HEX, ttl_s=60, now=at)
    proof = answer(c, version=version, vec=vec)
    fields: dict[str, object] = {
        "challenge_id": "v:challenge:1:3:0",
        "miner_uid": 3,
        "embedding_hash": embedding_hash(vec),
        "proof": proof,
        "latency_ms": 12.0,
        "cid": c.cid,
        "nonce_hex": c.nonce_hex,
        "expires_at": float(c.expires_at),
        "validator_hotkey_hex": c.validator_hotkey_hex,
        "proof_version": version,
        "time": at + 1.0,
    }
    fields.update(over)
    return ChallengeAnswered(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [1, 2])
def test_a_right_proof_passes(version: int) -> None:
    assert verdict(_answered(version), VEC, SeenNonces()) == (True, "")


@pytest.mark.parametrize("version", [1, 2])
def test_a_proof_over_another_vector_fails(version: int) -> None:
    ok, reason = verdict(_answered(version, vec=OTHER), VEC, SeenNonces())
    assert not ok and "wrong proof" in reason


def test_a_hash_only_miner_cannot_answer_v2() -> None:
    # it kept only the embedding hash: the best it can send is the v1 proof
    a = _answered(1)
    hash_only = _answered(2, proof=a.proof, nonce_hex=a.nonce_hex)
    ok, _reason = verdict(hash_only, VEC, SeenNonces())
    assert not ok


def test_an_answer_after_expiry_fails() -> None:
    late = _answered(2, time=1000.0 + 61.0)
    ok, reason = verdict(late, VEC, SeenNonces())
    assert not ok and reason.startswith("expired")


def test_a_nonce_reused_by_another_challenge_fails_but_a_redelivery_does_not() -> None:
    seen = SeenNonces()
    first = _answered(2)
    assert verdict(first, VEC, seen) == (True, "")
    assert verdict(first, VEC, seen) == (True, "")  # the same challenge delivered again
    replay = _answered(
        2, challenge_id="v:challenge:2:3:0", nonce_hex=first.nonce_hex, proof=first.proof
    )
    assert verdict(replay, VEC, seen) == (False, "replayed nonce")


@pytest.mark.parametrize(
    ("over", "want"),
    [
        ({"error": "timeout", "proof": None}, "no answer: timeout"),
        ({"proof": None}, "no proof"),
        ({"proof": "zz"}, "wrong proof (v2)"),
    ],
)
def test_errors_and_malformed_answers_fail_with_a_reason(
    over: dict[str, object], want: str
) -> None:
    assert verdict(_answered(2, **over), VEC, SeenNonces()) == (False, want)


def test_no_ground_truth_is_a_failure_with_its_reason() -> None:
    assert verdict(_answered(2), None, SeenNonces()) == (False, "no ground truth for this cid")


async def test_a_challenge_expired_before_dispatch_is_not_sent_and_voids() -> None:
    from engram.validator.challenges import NOT_SENT, Dispatcher
    from engram.validator.http import MinerHttp
    from engram.validator.scorer import ScoreBook
    from streams.events import ChallengeIssued, ProofVerified

    c = ChallengeIssued(
        challenge_id="v:challenge:1:3:0",
        miner_uid=3,
        miner_hotkey="5M",
        cid="v1::00",
        nonce_hex="11" * 32,
        expires_at=1.0,  # long ago
        validator_hotkey_hex=HOTKEY_HEX,
        miner_axon="127.0.0.1:9",  # nothing listens: sending would give a connection error
    )
    async with MinerHttp(None, timeout_s=1.0, max_inflight=1) as http:
        a = await Dispatcher(http, None).dispatch(c)  # type: ignore[arg-type]
    assert a.error == NOT_SENT and a.status == -1
    assert verdict(a, VEC, SeenNonces()) == (False, NOT_SENT)

    book = ScoreBook()
    book.on_verdict(ProofVerified(challenge_id="x", miner_uid=3, passed=False, void=True))
    book.on_verdict(ProofVerified(challenge_id="y", miner_uid=3, passed=True))
    assert list(book.verdicts[3]) == [True] and book.counts[3] == 1


def test_a_verdict_counted_once_even_if_published_twice_and_stale_ticks() -> None:
    from engram.validator.challenges import STALE_TICK_S, stale
    from engram.validator.scorer import ScoreBook
    from streams.events import CadenceTicked, ProofVerified

    book = ScoreBook()
    v = ProofVerified(challenge_id="c1", miner_uid=1, passed=False)
    book.on_verdict(v)
    book.on_verdict(ProofVerified(challenge_id="c1", miner_uid=1, passed=False))  # re-published
    assert list(book.verdicts[1]) == [False] and book.counts[1] == 1

    tick = CadenceTicked(cadence="challenge", seq=1, period_s=300, time=1000.0)
    assert not stale(tick, now=1000.0 + STALE_TICK_S)
    assert stale(tick, now=1000.0 + STALE_TICK_S + 1)
