"""Whom the miner's axon trusts, from settings (issue 8, "the miner trusts the chain, not
a list").

``chain = local | bittensor``: the validator registry is a
:class:`~engram.chain.registry.ChainRegistry` over the chain's metagraph (a validator
holds a permit and at least ``axon_validator_min_stake``; ``axon_min_stake`` for ingest is
read from the same view), refreshed every ``chain_refresh_s``. The local chain lives in a
JetStream KV bucket on ``chain_nats_url`` (the devnet's server) or, unset, on the node's
own bus. ``chain = none``: the static ``axon_validators`` list (no stake known).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import nats
import structlog

from engram.bus import Bus, connect_options
from engram.chain.base import Chain, ChainError
from engram.chain.registry import ChainRegistry
from engram.config import Settings

__all__ = ["ChainTrust", "open_chain_trust"]

log = structlog.get_logger("engram.miner.trust")

#: how long the miner waits for its first metagraph before serving (then it keeps trying
#: in the background; until it has one, nobody is a validator)
FIRST_SYNC_S = 10.0


@dataclass
class ChainTrust:
    """The chain-backed registry and what it holds open (a second NATS connection when
    the local chain lives on another server)."""

    registry: ChainRegistry
    nc: Any | None = None  # nats.aio.client.Client
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self, stop: asyncio.Event) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.registry.run(stop), name="chain-registry")
        return self._task

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()


async def _chain(settings: Settings, bus: Bus, keypair: Any) -> tuple[Chain, Any | None]:
    if settings.chain == "bittensor":
        from engram.chain.subtensor import BittensorChain

        remote: Chain = await asyncio.to_thread(
            BittensorChain, keypair, settings.chain_netuid, network=settings.chain_network
        )
        return remote, None
    from engram.chain.local import LocalChain

    nc = None
    js = bus.js
    if settings.chain_nats_url:
        nc = await nats.connect(**connect_options(settings, settings.chain_nats_url))
        js = nc.jetstream(timeout=10)
    chain = await LocalChain.join(js, str(keypair.ss58_address), settings.chain_netuid)
    return chain, nc


async def open_chain_trust(settings: Settings, bus: Bus, keypair: Any) -> ChainTrust | None:
    """The chain-backed registry (first metagraph read, bounded), or None for
    ``chain = none``."""
    if settings.chain == "none":
        return None
    chain, nc = await _chain(settings, bus, keypair)
    registry = ChainRegistry(
        chain,
        min_validator_stake=settings.axon_validator_min_stake,
        refresh_s=settings.chain_refresh_s,
    )
    try:
        graph = await asyncio.wait_for(registry.sync(), FIRST_SYNC_S)
        log.info(
            "validators from the chain",
            chain=chain.name,
            netuid=chain.netuid,
            block=graph.block,
            validators=sum(registry.is_validator(h) for h in graph.hotkeys),
        )
    except (ChainError, OSError, TimeoutError) as exc:
        log.warning("no metagraph yet; nobody may challenge until one is read", error=repr(exc))
    return ChainTrust(registry, nc)
