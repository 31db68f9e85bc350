"""A local chain for the devnet and the tests, its state in JetStream KV.

Several processes (the devnet's miners and validators) share one subnet through the KV
bucket ``engram_chain``:

* ``subnet.<netuid>``: the subnet (neurons in uid order: hotkey, coldkey, stake, axon,
  registration block; parameters; the block clock's genesis and offset), updated by
  compare-and-set on the entry's revision, so concurrent registrations never lose one;
* ``weights.<netuid>.<uid>``: the last weights each validator set, with their block.

The block clock needs no ticking process: ``block = floor((now - genesis) / block_time_s)
+ offset``, read by everyone from the same genesis (``advance`` moves the offset, for
tests). Validator permits follow stake like the real chain: the ``max_validators``
largest stakes above ``min_validator_stake`` (ties to the lower uid). Nothing is signed:
the devnet trusts its loopback, a real subnet uses :class:`BittensorChain`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec
import nats.errors
from nats.js import JetStreamContext, api
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from streams.retry import Backoff, retry

from .base import ChainRefused, ChainUnavailable, Metagraph, Neuron, WeightsReceipt

__all__ = ["BUCKET", "LocalChain", "NeuronRecord", "SubnetState", "WeightRecord"]

BUCKET = "engram_chain"
T = TypeVar("T")


class NeuronRecord(msgspec.Struct, kw_only=True):
    hotkey: str
    coldkey: str = ""
    stake: float = 0.0
    axon: str | None = None
    registered_at: int = 0


class SubnetState(msgspec.Struct, kw_only=True):
    netuid: int
    genesis: float
    block_time_s: float = 12.0
    offset: int = 0
    max_uids: int = 256
    max_validators: int = 64
    min_validator_stake: float = 0.0
    weights_rate_limit: int = 0  # blocks between two weight sets of one validator
    neurons: list[NeuronRecord] = msgspec.field(default_factory=list)

    def block_at(self, now: float) -> int:
        return max(math.floor((now - self.genesis) / self.block_time_s), 0) + self.offset

    def permits(self) -> set[int]:
        eligible = [
            (-n.stake, uid)
            for uid, n in enumerate(self.neurons)
            if n.stake > 0 and n.stake >= self.min_validator_stake
        ]
        return {uid for _s, uid in sorted(eligible)[: self.max_validators]}

    def uid_of(self, hotkey: str) -> int | None:
        for uid, n in enumerate(self.neurons):
            if n.hotkey == hotkey:
                return uid
        return None


class WeightRecord(msgspec.Struct, kw_only=True):
    uids: list[int]
    weights: list[float]
    block: int


_CAS = Backoff(initial=0.005, factor=2.0, maximum=0.2, jitter=0.5)
_NATS_DOWN = (nats.errors.Error, TimeoutError, OSError)


class LocalChain:
    """The :class:`~engram.chain.base.Chain` of the devnet, acting for ``hotkey``."""

    def __init__(
        self,
        kv: KeyValue,
        hotkey: str,
        netuid: int = 1,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = kv
        self._hotkey = hotkey
        self._netuid = netuid
        self._clock = clock

    # -- set-up -----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        hotkey: str,
        netuid: int = 1,
        *,
        block_time_s: float = 12.0,
        max_uids: int = 256,
        max_validators: int = 64,
        min_validator_stake: float = 0.0,
        weights_rate_limit: int = 0,
        clock: Callable[[], float] = time.time,
        replicas: int = 1,
    ) -> LocalChain:
        """Bind to the bucket (created if missing) and the subnet (created with these
        parameters if missing; an existing subnet keeps its own)."""
        kv = await _guard(lambda: _bucket(js, replicas))
        chain = cls(kv, hotkey, netuid, clock=clock)
        state = SubnetState(
            netuid=netuid,
            genesis=clock(),
            block_time_s=block_time_s,
            max_uids=max_uids,
            max_validators=max_validators,
            min_validator_stake=min_validator_stake,
            weights_rate_limit=weights_rate_limit,
        )
        try:
            await _guard(lambda: kv.create(chain._subnet_key, msgspec.json.encode(state)))
        except KeyWrongLastSequenceError:
            pass  # another process created it first: keep theirs
        return chain

    @classmethod
    async def join(
        cls, js: JetStreamContext, hotkey: str, netuid: int = 1, *, replicas: int = 1
    ) -> LocalChain:
        """Bind to the subnet without creating it (a miner reads the chain the devnet
        made; until the subnet exists, reads raise :class:`ChainRefused`)."""
        kv = await _guard(lambda: _bucket(js, replicas))
        return cls(kv, hotkey, netuid)

    def acting_as(self, hotkey: str) -> LocalChain:
        """The same subnet, acting for another hotkey (the devnet runs several nodes)."""
        return LocalChain(self._kv, hotkey, self._netuid, clock=self._clock)

    # -- the Chain interface ------------------------------------------------------------

    @property
    def name(self) -> str:
        return "local"

    @property
    def netuid(self) -> int:
        return self._netuid

    @property
    def hotkey(self) -> str:
        return self._hotkey

    async def block(self) -> int:
        state, _rev = await self._read()
        return state.block_at(self._clock())

    async def metagraph(self) -> Metagraph:
        state, _rev = await self._read()
        permits = state.permits()
        neurons = tuple(
            Neuron(
                uid=uid,
                hotkey=n.hotkey,
                coldkey=n.coldkey,
                stake=n.stake,
                validator_permit=uid in permits,
                axon=n.axon,
            )
            for uid, n in enumerate(state.neurons)
        )
        return Metagraph(netuid=self._netuid, block=state.block_at(self._clock()), neurons=neurons)

    async def set_weights(
        self, uids: Sequence[int], weights: Sequence[float], *, version_key: int = 0
    ) -> WeightsReceipt:
        state, _rev = await self._read()
        uid = state.uid_of(self._hotkey)
        if uid is None:
            raise ChainRefused(f"hotkey {self._hotkey} is not registered on netuid {self._netuid}")
        if uid not in state.permits():
            raise ChainRefused(f"uid {uid} has no validator permit on netuid {self._netuid}")
        if len(uids) != len(weights):
            raise ChainRefused(f"{len(uids)} uids but {len(weights)} weights")
        if len(set(uids)) != len(uids):
            raise ChainRefused("duplicate uids in a weight set")
        if any(u < 0 or u >= len(state.neurons) for u in uids):
            raise ChainRefused(f"a uid is outside 0..{len(state.neurons) - 1}")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ChainRefused("weights must be finite and non-negative")
        total = math.fsum(weights)
        if total <= 0:
            raise ChainRefused("all weights are zero; nothing to set")
        block = state.block_at(self._clock())
        last = await self.weights(uid)
        if last is not None and state.weights_rate_limit:
            since = block - last.block
            if since < state.weights_rate_limit:
                raise ChainRefused(
                    f"weights were set {since} blocks ago; the rate limit is "
                    f"{state.weights_rate_limit} blocks"
                )
        record = WeightRecord(
            uids=list(uids),
            weights=[w / total for w in weights],
            block=block,
        )
        key = self._weights_key(uid)
        rev = await _guard(lambda: self._kv.put(key, msgspec.json.encode(record)))
        return WeightsReceipt(block=block, extrinsic=f"local:{self._netuid}:{uid}:{rev}")

    async def serve_axon(self, host: str, port: int) -> None:
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        def change(state: SubnetState) -> None:
            uid = state.uid_of(self._hotkey)
            if uid is None:
                raise ChainRefused(
                    f"hotkey {self._hotkey} is not registered on netuid {self._netuid}"
                )
            state.neurons[uid].axon = endpoint

        await self._update(change)

    # -- devnet administration ----------------------------------------------------------

    async def register(
        self, hotkey: str | None = None, *, stake: float = 0.0, coldkey: str = ""
    ) -> int:
        """Register ``hotkey`` (default: the acting one); returns its uid. Registering a
        registered hotkey returns its uid and leaves it as it is."""
        hk = hotkey or self._hotkey
        out: list[int] = []

        def change(state: SubnetState) -> None:
            out.clear()
            uid = state.uid_of(hk)
            if uid is not None:
                out.append(uid)
                return
            if len(state.neurons) >= state.max_uids:
                raise ChainRefused(f"netuid {self._netuid} is full ({state.max_uids} uids)")
            state.neurons.append(
                NeuronRecord(
                    hotkey=hk,
                    coldkey=coldkey,
                    stake=float(stake),
                    registered_at=state.block_at(self._clock()),
                )
            )
            out.append(len(state.neurons) - 1)

        await self._update(change)
        return out[0]

    async def add_stake(self, hotkey: str, amount: float) -> float:
        """Add (or with a negative amount remove) stake; returns the new stake."""
        out: list[float] = []

        def change(state: SubnetState) -> None:
            out.clear()
            uid = state.uid_of(hotkey)
            if uid is None:
                raise ChainRefused(f"hotkey {hotkey} is not registered on netuid {self._netuid}")
            n = state.neurons[uid]
            n.stake = max(n.stake + amount, 0.0)
            out.append(n.stake)

        await self._update(change)
        return out[0]

    async def advance(self, blocks: int) -> int:
        """Move the block clock forward by ``blocks`` (tests); returns the new block."""

        def change(state: SubnetState) -> None:
            state.offset += max(int(blocks), 0)

        state = await self._update(change)
        return state.block_at(self._clock())

    async def weights(self, uid: int) -> WeightRecord | None:
        """The last weights validator ``uid`` set, or None."""
        try:
            entry = await _guard(lambda: self._kv.get(self._weights_key(uid)))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return msgspec.json.decode(entry.value or b"", type=WeightRecord)

    # -- KV plumbing --------------------------------------------------------------------

    @property
    def _subnet_key(self) -> str:
        return f"subnet.{self._netuid}"

    def _weights_key(self, uid: int) -> str:
        return f"weights.{self._netuid}.{uid}"

    async def _read(self) -> tuple[SubnetState, int]:
        try:
            entry = await _guard(lambda: self._kv.get(self._subnet_key))
        except (KeyNotFoundError, KeyDeletedError):
            raise ChainRefused(f"netuid {self._netuid} does not exist on the local chain") from None
        state = msgspec.json.decode(entry.value or b"", type=SubnetState)
        return state, int(entry.revision or 0)

    async def _update(self, change: Callable[[SubnetState], None]) -> SubnetState:
        """Read, change and write back with compare-and-set, retrying on a lost race."""

        async def once() -> SubnetState:
            state, rev = await self._read()
            change(state)
            await _guard(
                lambda: self._kv.update(self._subnet_key, msgspec.json.encode(state), last=rev)
            )
            return state

        return await retry(
            once,
            what="local chain update",
            retry_on=(KeyWrongLastSequenceError,),
            backoff=_CAS,
            attempts=100,
        )


async def _bucket(js: JetStreamContext, replicas: int) -> KeyValue:
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            api.KeyValueConfig(bucket=BUCKET, history=5, replicas=replicas)
        )


async def _guard(call: Callable[[], Awaitable[T]]) -> T:
    """Run a KV call; the bus being unreachable becomes :class:`ChainUnavailable`."""
    try:
        return await call()
    except (KeyNotFoundError, KeyDeletedError, KeyWrongLastSequenceError, BucketNotFoundError):
        raise
    except _NATS_DOWN as exc:
        raise ChainUnavailable(f"local chain unreachable: {exc!r}") from exc
