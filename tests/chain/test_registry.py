"""The chain-backed validator registry on the local chain (real nats-server): permits and
stake decide who may challenge; the view follows the chain."""

from __future__ import annotations

import asyncio

from engram.bus import Bus
from engram.chain import LocalChain
from engram.chain.registry import ChainRegistry


async def test_registry_follows_permits_and_stake_on_the_chain(bus: Bus) -> None:
    chain = await LocalChain.open(bus.js, "5Miner", max_validators=2)
    await chain.register()
    await chain.register("5BigVali", stake=5000.0)
    await chain.register("5SmallVali", stake=10.0)
    await chain.register("5Nobody")
    reg = ChainRegistry(chain, min_validator_stake=100.0, refresh_s=0.05)
    assert not reg.is_validator("5BigVali")  # nothing known before the first sync
    await reg.sync()
    assert reg.knows_stake
    assert reg.is_validator("5BigVali")
    assert not reg.is_validator("5SmallVali")  # a permit but below the minimum stake
    assert not reg.is_validator("5Nobody") and not reg.is_validator("5Miner")
    assert reg.stake("5SmallVali") == 10.0 and reg.stake("5Unknown") == 0.0

    stop = asyncio.Event()
    task = asyncio.create_task(reg.run(stop))
    try:
        await chain.add_stake("5SmallVali", 1000.0)
        for _ in range(100):
            if reg.is_validator("5SmallVali"):
                break
            await asyncio.sleep(0.05)
        assert reg.is_validator("5SmallVali")
    finally:
        stop.set()
        await task
