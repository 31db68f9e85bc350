"""The chain-backed validator registry for the miner's axon (issue 8, "the miner trusts
the chain, not a list").

:class:`ChainRegistry` answers the miner's ``ValidatorRegistry`` questions
(``is_validator``, ``stake``, ``knows_stake``; see ``engram.miner.auth``) from a
:class:`~engram.chain.base.Chain`'s metagraph: a validator is a hotkey holding a validator
permit with at least ``min_validator_stake``. The answers are synchronous (the auth
middleware asks per request), so the metagraph is cached and refreshed in the background
every ``refresh_s``; a failed refresh keeps the last good view (logged) and retries with
:class:`streams.retry.Backoff`. Until the first sync, nobody is a validator.

A hotkey refused as "not a validator" makes :meth:`recheck` read the metagraph again before
the 403 goes out (at most once per ``miss_refresh_s``; concurrent misses share one read,
bounded by ``miss_wait_s``): a validator that got its permit after the last refresh is not
turned away for up to ``refresh_s`` (the devnet's first epoch lost challenges that way).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from streams.retry import Backoff, sleep_or_stop

from .base import Chain, ChainError, Metagraph

__all__ = ["ChainRegistry"]

log = structlog.get_logger("engram.chain.registry")


@dataclass
class ChainRegistry:
    chain: Chain
    min_validator_stake: float = 0.0
    refresh_s: float = 60.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=60.0))
    miss_refresh_s: float = 5.0
    miss_wait_s: float = 3.0
    graph: Metagraph | None = None
    _stakes: dict[str, float] = field(default_factory=dict)
    _validators: frozenset[str] = frozenset()
    _miss_read: asyncio.Task[Metagraph] | None = None
    _miss_read_at: float = float("-inf")

    def is_validator(self, hotkey_ss58: str) -> bool:
        return hotkey_ss58 in self._validators

    def stake(self, hotkey_ss58: str) -> float:
        return self._stakes.get(hotkey_ss58, 0.0)

    @property
    def knows_stake(self) -> bool:
        return True

    def why_not_validator(self, hotkey_ss58: str) -> str:
        """Why ``hotkey_ss58`` may not challenge (for the 403's reason)."""
        if self.graph is None:
            return "the miner has not read the metagraph yet; retry shortly"
        neuron = self.graph.by_hotkey(hotkey_ss58)
        if neuron is None:
            return f"hotkey {hotkey_ss58} is not registered on netuid {self.graph.netuid}"
        if not neuron.validator_permit:
            return f"hotkey {hotkey_ss58} has no validator permit (block {self.graph.block})"
        if neuron.stake < self.min_validator_stake:
            return (
                f"hotkey {hotkey_ss58} has stake {neuron.stake:g}; a validator needs "
                f"{self.min_validator_stake:g}"
            )
        return f"hotkey {hotkey_ss58} is not a validator"

    def apply(self, graph: Metagraph) -> None:
        """Adopt a metagraph (pure; used by :meth:`sync`)."""
        self.graph = graph
        self._stakes = {n.hotkey: n.stake for n in graph.neurons}
        self._validators = frozenset(
            n.hotkey
            for n in graph.neurons
            if n.validator_permit and n.stake >= self.min_validator_stake
        )

    async def recheck(self, hotkey_ss58: str) -> bool:
        """``is_validator`` after reading the metagraph again, when the last read for a miss
        is older than ``miss_refresh_s`` (else the current view answers)."""
        if self._miss_read is None:
            now = time.monotonic()
            if now - self._miss_read_at < self.miss_refresh_s:
                return self.is_validator(hotkey_ss58)
            self._miss_read_at = now
            self._miss_read = asyncio.ensure_future(self.sync())
            self._miss_read.add_done_callback(self._miss_read_done)
        try:
            await asyncio.wait_for(asyncio.shield(self._miss_read), self.miss_wait_s)
        except (ChainError, OSError, TimeoutError) as exc:
            log.warning("metagraph re-read for a refused hotkey failed", error=repr(exc))
        return self.is_validator(hotkey_ss58)

    def _miss_read_done(self, task: asyncio.Task[Metagraph]) -> None:
        self._miss_read = None
        if not task.cancelled():
            task.exception()  # retrieved: a failure was logged by the waiter

    async def sync(self) -> Metagraph:
        graph = await self.chain.metagraph()
        self.apply(graph)
        return graph

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every ``refresh_s`` until ``stop``; failures back off and keep the old view."""
        failures = 0
        while not stop.is_set():
            try:
                graph = await self.sync()
                failures = 0
                delay = self.refresh_s
                log.debug("metagraph synced", block=graph.block, validators=len(self._validators))
            except (ChainError, OSError, TimeoutError) as exc:
                delay = self.backoff.delay(failures)
                failures += 1
                log.warning("metagraph sync failed; keeping the last view", error=repr(exc))
            if await sleep_or_stop(delay, stop):
                return
