"""LocalChain against a real nats-server: registrations, uids, stakes, permits, axons,
weights, the block clock, shared by several connections."""

from __future__ import annotations

import asyncio

import pytest

from engram.bus import Bus, open_bus
from engram.chain import Chain, ChainRefused, LocalChain
from engram.config import Settings


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_registration_uids_stakes_permits_and_axons(bus: Bus) -> None:
    clock = Clock()
    chain = await LocalChain.open(
        bus.js, "5Validator", block_time_s=1.0, max_validators=1, clock=clock
    )
    assert isinstance(chain, Chain)
    assert await chain.register(stake=1000.0) == 0
    m1 = chain.acting_as("5Miner1")
    assert await m1.register() == 1
    assert await chain.register("5Miner2", stake=5.0) == 2
    assert await chain.register("5Miner1") == 1  # idempotent
    await m1.serve_axon("127.0.0.1", 8091)

    graph = await chain.metagraph()
    assert graph.uids == [0, 1, 2]
    assert graph.hotkeys == ["5Validator", "5Miner1", "5Miner2"]
    assert [n.validator_permit for n in graph.neurons] == [True, False, False]  # top-1 by stake
    assert graph.by_hotkey("5Miner1") is not None
    assert graph.by_hotkey("5Miner1").axon == "127.0.0.1:8091"  # type: ignore[union-attr]
    assert graph.by_uid(2).stake == 5.0  # type: ignore[union-attr]

    # stake moves the permit
    assert await chain.add_stake("5Miner2", 2000.0) == 2005.0
    graph = await chain.metagraph()
    assert [n.validator_permit for n in graph.neurons] == [False, False, True]

    with pytest.raises(ChainRefused):
        await chain.acting_as("5Nobody").serve_axon("127.0.0.1", 1)


async def test_block_clock_is_shared_and_advances(bus: Bus, settings: Settings) -> None:
    clock = Clock(1000.0)
    a = await LocalChain.open(bus.js, "5A", block_time_s=2.0, clock=clock)
    assert await a.block() == 0
    clock.t += 7.0
    assert await a.block() == 3
    other = await open_bus(settings)
    try:
        # a second connection joins the same subnet and keeps its genesis
        b = await LocalChain.open(other.js, "5B", block_time_s=99.0, clock=clock)
        assert await b.block() == 3
        assert await b.advance(10) == 13
        assert await a.block() == 13
    finally:
        await other.close()


async def test_weights_need_registration_and_a_permit_and_are_normalised(bus: Bus) -> None:
    clock = Clock()
    v = await LocalChain.open(bus.js, "5V", block_time_s=1.0, weights_rate_limit=5, clock=clock)
    with pytest.raises(ChainRefused, match="not registered"):
        await v.set_weights([0], [1.0])
    await v.register(stake=10.0)
    await v.register("5M1")
    await v.register("5M2")
    noperm = v.acting_as("5M1")
    with pytest.raises(ChainRefused, match="permit"):
        await noperm.set_weights([2], [1.0])

    receipt = await v.set_weights([1, 2], [1.0, 3.0])
    assert receipt.extrinsic.startswith("local:1:0:")
    rec = await v.weights(0)
    assert rec is not None and rec.uids == [1, 2] and rec.weights == [0.25, 0.75]
    assert rec.block == receipt.block

    with pytest.raises(ChainRefused, match="rate limit"):
        await v.set_weights([1], [1.0])
    clock.t += 5.0
    await v.set_weights([1], [1.0])

    for uids, weights in ([[1], [0.0]], [[1, 1], [1.0, 1.0]], [[9], [1.0]], [[1], [1.0, 2.0]]):
        await v.advance(10)
        with pytest.raises(ChainRefused):
            await v.set_weights(uids, weights)
    assert await v.weights(1) is None


async def test_concurrent_registrations_from_several_connections_lose_none(
    bus: Bus, settings: Settings
) -> None:
    base = await LocalChain.open(bus.js, "5Base")
    others = [await open_bus(settings) for _ in range(3)]
    try:
        chains = [await LocalChain.open(o.js, f"5Node{i}") for i, o in enumerate(others)]
        hotkeys = [f"5Hk{i:03d}" for i in range(30)]
        uids = await asyncio.gather(*(chains[i % 3].register(hk) for i, hk in enumerate(hotkeys)))
        assert sorted(uids) == list(range(30))
        graph = await base.metagraph()
        assert sorted(graph.hotkeys) == sorted(hotkeys)
        assert all(graph.by_uid(u).hotkey == hk for u, hk in zip(uids, hotkeys, strict=True))  # type: ignore[union-attr]
    finally:
        for o in others:
            await o.close()
