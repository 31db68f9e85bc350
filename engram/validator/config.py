"""The validator's settings (cadences, fan-out, timeouts, proof version)."""

from __future__ import annotations

from dataclasses import dataclass

from streams.errors import InputError

from .scoring import SCORER_VERSION

__all__ = ["ValidatorConfig"]


@dataclass(frozen=True)
class ValidatorConfig:
    # cadences (seconds); seconds in tests
    evaluation_s: float = 120.0
    challenge_s: float = 300.0
    weights_s: float = 600.0
    # challenges
    challenges_per_miner: int = 4
    challenge_ttl_s: int = 60
    proof_version: int = 2  # 2 (default) or 1 (seed-compatible)
    # dispatcher
    http_timeout_s: float = 5.0
    max_inflight: int = 64  # concurrent HTTP requests to miners
    # scoring
    scorer_version: int = SCORER_VERSION
    # chain setter
    set_weights_attempts: int = 5
    version_key: int = 0

    def __post_init__(self) -> None:
        for name in ("evaluation_s", "challenge_s", "weights_s", "http_timeout_s"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be > 0")
        if self.proof_version not in (1, 2):
            raise InputError("proof_version must be 1 or 2")
        if self.max_inflight < 1 or self.challenges_per_miner < 0 or self.challenge_ttl_s < 1:
            raise InputError("max_inflight >= 1, challenges_per_miner >= 0, challenge_ttl_s >= 1")

    def cadences(self) -> dict[str, float]:
        return {
            "evaluation": self.evaluation_s,
            "challenge": self.challenge_s,
            "weights": self.weights_s,
        }
