"""BittensorChain through the SDK's injectable ``Substrate`` seam: metagraph sync,
permits and stake, set_weights (plain and commit-reveal), serving the axon, reconnects."""

from __future__ import annotations

from typing import Any

import bittensor
import pytest
from bittensor_core import Keypair

from engram.chain import Chain, ChainRefused, ChainUnavailable
from engram.chain.subtensor import BittensorChain
from streams.retry import Backoff

from .fake_substrate import FakeNeuron, FakeSubnet, FakeSubstrate

FAST = Backoff(initial=0.001, maximum=0.005, jitter=0.0)


def _setup(**subnet: Any) -> tuple[Keypair, FakeSubstrate, BittensorChain, list[bittensor.Client]]:
    vali = Keypair.create_from_uri("//Alice")
    sub = FakeSubstrate(
        FakeSubnet(
            neurons=[
                FakeNeuron(vali.ss58_address, stake_tao=1500.0, permit=True),
                FakeNeuron("5Miner1", stake_tao=1.5, axon=("10.0.0.1", 8091)),
                FakeNeuron("5Miner2"),
            ],
            **subnet,
        )
    )
    made: list[bittensor.Client] = []

    def factory() -> bittensor.Client:
        c = bittensor.Client("local", substrate=sub, fallback_endpoints=[])
        made.append(c)
        return c

    chain = BittensorChain(vali, 7, network="local", client_factory=factory, backoff=FAST)
    return vali, sub, chain, made


async def test_metagraph_sync_permits_stake_and_axons() -> None:
    vali, _sub, chain, _ = _setup()
    assert isinstance(chain, Chain)
    assert chain.hotkey == vali.ss58_address and chain.name == "bittensor"
    graph = await chain.metagraph()
    assert graph.block == 1000 and graph.netuid == 7
    assert graph.uids == [0, 1, 2]
    assert graph.hotkeys == [vali.ss58_address, "5Miner1", "5Miner2"]
    assert [n.validator_permit for n in graph.neurons] == [True, False, False]
    assert [n.stake for n in graph.neurons] == [1500.0, 1.5, 0.0]
    assert [n.axon for n in graph.neurons] == [None, "10.0.0.1:8091", None]
    assert await chain.block() == 1000


async def test_set_weights_plain_goes_through_the_sdk_and_is_quantised() -> None:
    vali, sub, chain, _ = _setup()
    receipt = await chain.set_weights([1, 2], [0.25, 0.75])
    call, signer = sub.submitted[-1]
    assert signer == vali.ss58_address
    assert call.function == "set_mechanism_weights"
    assert call.params["netuid"] == 7 and call.params["dests"] == [1, 2]
    # the SDK normalises to u16 with the largest weight at 65535
    assert call.params["weights"] == [21845, 65535]
    assert receipt.block == 1001 and receipt.extrinsic == "1001-2" and not receipt.commit_reveal


async def test_set_weights_commit_reveal_where_the_subnet_requires_it() -> None:
    _vali, sub, chain, _ = _setup(commit_reveal=True)
    receipt = await chain.set_weights([1, 2], [0.5, 0.5])
    call, _ = sub.submitted[-1]
    assert call.function == "commit_timelocked_mechanism_weights"
    assert isinstance(call.params["commit"], bytes | bytearray) and call.params["reveal_round"] > 0
    assert receipt.commit_reveal


async def test_refusals_are_chain_refused_not_retried() -> None:
    _vali, sub, chain, _ = _setup()
    with pytest.raises(ChainRefused):
        await chain.set_weights([1, 2], [0.0, 0.0])  # nothing to set
    sub.subnet.neurons[0].permit = False
    with pytest.raises(ChainRefused, match="Permit"):
        await chain.set_weights([1], [1.0])
    stranger = BittensorChain(
        Keypair.create_from_uri("//Bob"),
        7,
        network="local",
        client_factory=lambda: bittensor.Client("local", substrate=sub),
        backoff=FAST,
    )
    with pytest.raises(ChainRefused, match="not registered"):
        await stranger.set_weights([1], [1.0])
    with pytest.raises(ChainRefused, match="does not exist"):
        await BittensorChain(
            Keypair.create_from_uri("//Alice"),
            99,
            network="local",
            client_factory=lambda: bittensor.Client("local", substrate=sub),
        ).metagraph()


async def test_serve_axon_publishes_the_endpoint() -> None:
    _vali, sub, chain, _ = _setup()
    await chain.serve_axon("192.168.1.20", 9000)
    graph = await chain.metagraph()
    assert graph.neurons[0].axon == "192.168.1.20:9000"
    assert sub.submitted[-1][0].function == "serve_axon"


async def test_connection_failures_reconnect_with_backoff_then_give_up() -> None:
    _vali, sub, chain, made = _setup()
    sub.fail_next = 2
    graph = await chain.metagraph()
    assert len(graph.neurons) == 3
    assert chain.reconnects == 2 and len(made) == 3  # a fresh client per reconnect
    assert sub.closes >= 2

    sub.fail_next = 100
    with pytest.raises(ChainUnavailable):
        await chain.block()
