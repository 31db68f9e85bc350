"""The scoring policy against the issue's adversaries, through the same fold the scorer
and the audit use (ScoreBook → scorer → fold_weights), over several rounds: every
adversary ends below every honest miner; hash-only (v2 proofs fail) is slashed to 0."""

from __future__ import annotations

from engram.validator.scorer import Pending, ScoreBook, score_event
from engram.validator.scoring import fold_weights
from streams.events import ProofVerified, RecallSampled

# per kind: recall per query, latency per query (ms), proof passes per round of 4
KINDS: dict[str, tuple[float, float, int]] = {
    "honest-a": (1.0, 60.0, 4),
    "honest-b": (0.95, 120.0, 4),
    "slow": (1.0, 60.0 + 400.0, 4),  # +400 ms
    "lossy": (0.5, 60.0, 2),  # dropped half: half the recall, half the proofs
    "wrong": (0.0, 60.0, 0),  # random CIDs: nothing recalled, nothing proven
    "hash-only": (1.0, 60.0, 0),  # keeps hashes: v2 proofs fail (test_verdict.py)
    "copycat": (0.0, 150.0, 0),  # forwards queries: the probes are not where it sends them
}


def test_every_adversary_ends_below_every_honest_miner() -> None:
    book = ScoreBook()
    uids = {kind: uid for uid, kind in enumerate(KINDS)}
    seq = 0
    for rnd in range(8):
        for kind, (recall, latency, passes) in KINDS.items():
            uid = uids[kind]
            for k in range(4):
                book.on_verdict(
                    ProofVerified(challenge_id=f"{rnd}:{uid}:{k}", miner_uid=uid, passed=k < passes)
                )
            sample = RecallSampled(
                round_id=f"r{rnd}",
                miner_uid=uid,
                recall_at_10=recall,
                latency_ms=latency,
                queries=4,
                recalls=[recall] * 4,
                latencies_ms=[latency] * 4,
            )
            seq += 1
            p = Pending(seq, sample, book.measured(sample))
            book.on_score(score_event(p, book.score(p)))
    slashed = [u for u, s in book.slashed.items() if s]
    order, weights = fold_weights(uids.values(), book.ema, slashed)
    w = {kind: weights[order.index(uid)] for kind, uid in uids.items()}
    honest = min(w["honest-a"], w["honest-b"])
    for kind in ("slow", "lossy", "wrong", "hash-only", "copycat"):
        assert w[kind] < honest, (kind, w)
    assert w["hash-only"] == 0.0 and book.slashed[uids["hash-only"]]
    assert w["wrong"] == 0.0 and w["copycat"] == 0.0
    # slow and lossy keep what the rules give them (composite 0.7 and 0.65 against ~1.0)
    assert w["slow"] < 0.8 * w["honest-a"] and w["lossy"] < 0.8 * w["honest-a"]
