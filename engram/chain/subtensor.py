"""The bittensor chain through the bittensor SDK (``bittensor`` ≥ 11.3, the async
:class:`bittensor.Client`).

* metagraph: ``client.subnets.metagraph(netuid)`` — one runtime-API call — turned into
  our :class:`~engram.chain.base.Metagraph` (uids, hotkeys, total stake, validator
  permits, axon endpoints);
* weights: the SDK's ``SetWeights`` intent, which preflights registration and the rate
  limit, conforms the weights to the subnet's hyperparameters (max-weight clip, u16) and
  submits a plain ``set_mechanism_weights`` or, where the subnet has commit-reveal on, a
  timelocked commit the chain reveals by itself; the receipt says which;
* axon: the SDK's ``ServeAxon`` intent;
* a connection failure (``RpcConnectionError``, ``ConnectionNotReady``, OS errors,
  timeouts) closes the client, builds a fresh one and retries with
  :class:`streams.retry.Backoff`; a refusal by the chain (``ChainError``, or the SDK's
  own validation) is :class:`ChainRefused` at once.

The client comes from ``client_factory`` (default: ``bittensor.Client(network)``); tests
pass one built with the SDK's ``substrate=`` seam. The SDK is imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from streams.errors import Unavailable
from streams.retry import Backoff, retry

from .base import ChainRefused, ChainUnavailable, Metagraph, Neuron, WeightsReceipt

__all__ = ["BittensorChain"]

log = structlog.get_logger("engram.chain.subtensor")

T = TypeVar("T")

#: Delays between reconnect attempts (0.5 s doubling up to 30 s).
RECONNECT = Backoff(initial=0.5, maximum=30.0)


class _Reconnect(Unavailable):
    """Internal: the connection failed; reconnect and retry."""


class BittensorChain:
    """The :class:`~engram.chain.base.Chain` on a bittensor network, acting for the hotkey
    of ``wallet`` (a ``bittensor.Wallet``, a wallet name, or a hotkey ``Keypair``)."""

    def __init__(
        self,
        wallet: Any,
        netuid: int,
        *,
        network: str = "finney",
        client_factory: Callable[[], Any] | None = None,
        backoff: Backoff = RECONNECT,
        attempts: int = 6,
        version_key: int = 0,
    ) -> None:
        import bittensor
        from bittensor.signing import as_ss58, as_wallet

        self._bt = bittensor
        wallet = as_wallet(wallet)  # a wallet name ("cold" or "cold/hot") becomes a Wallet
        self._wallet = wallet
        self._netuid = netuid
        self._network = network
        self._factory = client_factory or (lambda: bittensor.Client(network))
        self._backoff = backoff
        self._attempts = attempts
        self._version_key = version_key
        self._client: Any | None = None
        self._lock = asyncio.Lock()
        self.reconnects = 0
        self._hotkey = str(as_ss58(wallet, "hotkey_ss58"))

    # -- the Chain interface ------------------------------------------------------------

    @property
    def name(self) -> str:
        return "bittensor"

    @property
    def netuid(self) -> int:
        return self._netuid

    @property
    def hotkey(self) -> str:
        return self._hotkey

    async def block(self) -> int:
        return int(await self._call("block", lambda c: c.block()))

    async def metagraph(self) -> Metagraph:
        graph = await self._call(
            "metagraph", lambda c: c.subnets.metagraph(self._netuid, commitments=False)
        )
        if graph is None:
            raise ChainRefused(f"netuid {self._netuid} does not exist on {self._network}")
        neurons = tuple(
            Neuron(
                uid=int(n.uid),
                hotkey=str(n.hotkey),
                coldkey=str(n.coldkey),
                stake=int(n.total_stake.rao) / 1e9,  # subnet stake (alpha), not TAO
                validator_permit=bool(n.validator_permit),
                axon=n.axon,
                active=bool(n.active),
            )
            for n in graph.neurons
        )
        return Metagraph(netuid=self._netuid, block=int(graph.block), neurons=neurons)

    async def set_weights(
        self, uids: Sequence[int], weights: Sequence[float], *, version_key: int | None = None
    ) -> WeightsReceipt:
        from bittensor.intents.weights import SetWeights

        try:
            intent = SetWeights(
                netuid=self._netuid,
                uids=[int(u) for u in uids],
                weights=[float(w) for w in weights],
                version_key=self._version_key if version_key is None else version_key,
            )
        except self._bt.BittensorError as exc:
            raise ChainRefused(f"weights refused: {exc}") from exc
        result = await self._call("set_weights", lambda c: c.execute(intent, self._wallet))
        if not result.success:
            raise ChainRefused(f"set_weights failed: {result.message}")
        return WeightsReceipt(
            block=_block_of(result.extrinsic_id),
            extrinsic=str(result.extrinsic_id or result.block_hash or ""),
            message=str(result.message or ""),
            commit_reveal="reveal_round" in (result.data or {}),
        )

    async def serve_axon(self, host: str, port: int) -> None:
        from bittensor.intents.serving import ServeAxon

        intent = ServeAxon(netuid=self._netuid, ip=host, port=port)
        result = await self._call("serve_axon", lambda c: c.execute(intent, self._wallet))
        if not result.success:
            raise ChainRefused(f"serve_axon failed: {result.message}")

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    # -- connection handling ------------------------------------------------------------

    async def _connected(self) -> Any:
        async with self._lock:
            if self._client is None:
                client = self._factory()
                try:
                    await client.connect()
                except self._connection_errors() as exc:
                    with contextlib.suppress(Exception):
                        await client.close()
                    raise _Reconnect(repr(exc)) from exc
                self._client = client
            return self._client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        return (self._bt.RpcConnectionError, self._bt.ConnectionNotReady, OSError, TimeoutError)

    async def _call(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        async def once() -> T:
            client = await self._connected()
            try:
                return await op(client)
            except self._connection_errors() as exc:
                async with self._lock:
                    if self._client is client:
                        await self._drop()
                self.reconnects += 1
                raise _Reconnect(repr(exc)) from exc
            except self._bt.BittensorError as exc:  # ChainError, PolicyError, validation
                raise ChainRefused(f"{what}: {exc}") from exc

        try:
            return await retry(
                once,
                what=f"bittensor {what}",
                retry_on=(_Reconnect,),
                backoff=self._backoff,
                attempts=self._attempts,
            )
        except _Reconnect as exc:
            raise ChainUnavailable(
                f"bittensor {what}: no connection after {self._attempts} attempts ({exc})"
            ) from exc


def _block_of(extrinsic_id: str | None) -> int:
    """The block number of an extrinsic id ``"<block>-<index>"`` (0 if absent)."""
    m = re.fullmatch(r"(\d+)-\d+", extrinsic_id or "")
    return int(m.group(1)) if m else 0
