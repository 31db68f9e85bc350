"""Chain adapters behind one interface (:class:`Chain`): the local chain of the devnet and
the tests (:class:`LocalChain`, state in JetStream KV) and the bittensor SDK
(:class:`BittensorChain`, imported lazily: ``from engram.chain.subtensor import ...``)."""

from .base import (
    Chain,
    ChainError,
    ChainRefused,
    ChainUnavailable,
    Metagraph,
    Neuron,
    WeightsReceipt,
)
from .local import LocalChain

__all__ = [
    "Chain",
    "ChainError",
    "ChainRefused",
    "ChainUnavailable",
    "LocalChain",
    "Metagraph",
    "Neuron",
    "WeightsReceipt",
]
