"""Validator fixtures: the real miner node of tests/miner (real NATS, model, store, axon)."""

from tests.miner.conftest import embedder, miner_settings, model_cache, node

__all__ = ["embedder", "miner_settings", "model_cache", "node"]
