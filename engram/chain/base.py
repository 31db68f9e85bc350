"""The chain interface: what Engram needs from a chain, whichever chain it is.

Two implementations share it: :class:`engram.chain.local.LocalChain` (the devnet and the
tests; state in JetStream KV) and :class:`engram.chain.subtensor.BittensorChain` (the
bittensor SDK). A chain object acts for one hotkey (the node's own) on one subnet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from streams.errors import EngramError, InputError, Unavailable

__all__ = [
    "Chain",
    "ChainError",
    "ChainRefused",
    "ChainUnavailable",
    "Metagraph",
    "Neuron",
    "WeightsReceipt",
]


class ChainError(EngramError):
    """Anything the chain adapters raise."""


class ChainRefused(ChainError, InputError):
    """The chain refused the call (not registered, no permit, rate limit, bad weights):
    retrying the same call will not help."""


class ChainUnavailable(ChainError, Unavailable):
    """The chain did not answer; the same call may succeed later."""


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str  # ss58
    stake: float = 0.0  # in the chain's token units (TAO / alpha), not rao
    validator_permit: bool = False
    axon: str | None = None  # "host:port" when served
    coldkey: str = ""
    active: bool = True


@dataclass(frozen=True)
class Metagraph:
    """A subnet at one block; ``neurons`` ordered by uid."""

    netuid: int
    block: int
    neurons: tuple[Neuron, ...] = field(default_factory=tuple)

    @property
    def uids(self) -> list[int]:
        return [n.uid for n in self.neurons]

    @property
    def hotkeys(self) -> list[str]:
        return [n.hotkey for n in self.neurons]

    @property
    def validators(self) -> list[Neuron]:
        return [n for n in self.neurons if n.validator_permit]

    def by_hotkey(self, hotkey: str) -> Neuron | None:
        for n in self.neurons:
            if n.hotkey == hotkey:
                return n
        return None

    def by_uid(self, uid: int) -> Neuron | None:
        for n in self.neurons:
            if n.uid == uid:
                return n
        return None


@dataclass(frozen=True)
class WeightsReceipt:
    """A weight set the chain accepted."""

    block: int
    extrinsic: str  # extrinsic id/hash on a real chain, a local id on LocalChain
    message: str = ""
    commit_reveal: bool = False


@runtime_checkable
class Chain(Protocol):
    """One subnet, seen and acted on by one hotkey."""

    @property
    def name(self) -> str:
        """``local`` or ``bittensor`` (recorded in ``WeightsSet.chain``)."""
        ...

    @property
    def netuid(self) -> int: ...

    @property
    def hotkey(self) -> str:
        """The ss58 address this chain object acts for."""
        ...

    async def block(self) -> int:
        """The current block number."""
        ...

    async def metagraph(self) -> Metagraph:
        """Uids, hotkeys, stakes, validator permits and axon endpoints, now."""
        ...

    async def set_weights(
        self, uids: Sequence[int], weights: Sequence[float], *, version_key: int = 0
    ) -> WeightsReceipt:
        """Set this hotkey's weights (raises :class:`ChainRefused` or
        :class:`ChainUnavailable`)."""
        ...

    async def serve_axon(self, host: str, port: int) -> None:
        """Publish this hotkey's axon endpoint."""
        ...
