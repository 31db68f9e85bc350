"""An in-memory chain behind the bittensor SDK's own ``Substrate`` interface — the seam the
SDK documents for tests (``bittensor.Client(substrate=...)``). Only the live chain is faked;
everything above it (the SDK's intents, preflight, conforming, commit-reveal encryption,
metagraph decoding, our adapter) is the real code."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from bittensor import Balance, ExtrinsicResult, RpcConnectionError

RAO = 1_000_000_000


@dataclass
class FakeNeuron:
    hotkey: str
    coldkey: str = "5Cold"
    stake_tao: float = 0.0
    permit: bool = False
    axon: tuple[str, int] | None = None
    last_update: int = 0


@dataclass
class FakeSubnet:
    netuid: int = 7
    neurons: list[FakeNeuron] = field(default_factory=list)
    commit_reveal: bool = False
    rate_limit: int = 0
    min_allowed_weights: int = 0
    max_weight_limit: int = 65535
    tempo: int = 360


class FakeSubstrate:
    """Chain state in memory; counts calls; can drop the connection ``fail_next`` times."""

    def __init__(self, subnet: FakeSubnet, block: int = 1000) -> None:
        self.subnet = subnet
        self.block = block
        self.token_symbols: dict[int, str] = {}
        self.submitted: list[tuple[Any, str]] = []  # (call, signer ss58)
        self.fail_next = 0  # raise RpcConnectionError on this many next reads
        self.connects = 0
        self.closes = 0

    # lifecycle
    def balance(self, rao: int, netuid: int = 0) -> Balance:
        return Balance.from_rao(int(rao), netuid)

    async def connect(self) -> None:
        self.connects += 1

    async def close(self) -> None:
        self.closes += 1

    def _maybe_fail(self) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RpcConnectionError("connection reset by fake peer")

    # reads
    async def block_hash(self, block: int | None = None) -> str:
        return f"0x{(self.block if block is None else block):064x}"

    async def block_number(self) -> int:
        self._maybe_fail()
        return self.block

    async def finalized_block_number(self) -> int:
        return self.block

    async def block_time(self) -> float:
        return 12.0

    async def spec_version(self) -> int:
        return 400

    def _uid(self, hotkey: str) -> int | None:
        for uid, n in enumerate(self.subnet.neurons):
            if n.hotkey == hotkey:
                return uid
        return None

    async def query(
        self,
        module: str,
        storage_function: str,
        params: list | None = None,
        block_hash: str | None = None,
    ) -> Any:
        self._maybe_fail()
        s = self.subnet
        p = params or []
        if module == "SubtensorModule":
            match storage_function:
                case "Uids":
                    return self._uid(p[1]) if p[0] == s.netuid else None
                case "CommitRevealWeightsEnabled":
                    return s.commit_reveal
                case "WeightsSetRateLimit":
                    return s.rate_limit
                case "LastUpdate":
                    return [n.last_update for n in s.neurons]
                case "MinAllowedWeights":
                    return s.min_allowed_weights
                case "MaxWeightsLimit":
                    return s.max_weight_limit
                case "SubnetEpochConsensus":
                    return "Yuma"
                case "ValidatorPermit":
                    return [n.permit for n in s.neurons]
                case "Tempo":
                    return s.tempo
                case "RevealPeriodEpochs":
                    return 1
                case "LastEpochBlock":
                    return self.block - 10
                case "PendingEpochAt" | "SubnetEpochIndex":
                    return 0
                case "BlocksSinceLastStep":
                    return 10
        return None

    async def map_has_entries(
        self, module: str, storage_function: str, params: list, block_hash: str | None = None
    ) -> bool:
        return False

    async def query_map(
        self,
        module: str,
        storage_function: str,
        params: list | None = None,
        block_hash: str | None = None,
    ) -> list[tuple[Any, Any]]:
        return []

    async def query_batch(
        self,
        module: str,
        storage_function: str,
        param_sets: list[list],
        block_hash: str | None = None,
    ) -> list[Any]:
        return [await self.query(module, storage_function, ps, block_hash) for ps in param_sets]

    async def runtime_call(
        self, api: str, method: str, params: list, block_hash: str | None = None
    ) -> Any:
        self._maybe_fail()
        if (api, method) == ("SubnetInfoRuntimeApi", "get_metagraph"):
            if params[0] != self.subnet.netuid:
                return None
            ns = self.subnet.neurons

            def axon(n: FakeNeuron) -> dict[str, int]:
                if n.axon is None:
                    return {"ip": 0, "port": 0, "ip_type": 4}
                return {"ip": int(ipaddress.ip_address(n.axon[0])), "port": n.axon[1], "ip_type": 4}

            return {
                "netuid": self.subnet.netuid,
                "name": "engram",
                "symbol": "E",
                "block": self.block,
                "tempo": self.subnet.tempo,
                "last_step": self.block - 10,
                "blocks_since_last_step": 10,
                "owner_hotkey": "5Owner",
                "owner_coldkey": "5OwnerCold",
                "network_registered_at": 1,
                "num_uids": len(ns),
                "max_uids": 256,
                "hotkeys": [n.hotkey for n in ns],
                "coldkeys": [n.coldkey for n in ns],
                "axons": [axon(n) for n in ns],
                "active": [True for _ in ns],
                "validator_permit": [n.permit for n in ns],
                "total_stake": [int(n.stake_tao * RAO) for n in ns],
                "alpha_stake": [int(n.stake_tao * RAO) for n in ns],
                "tao_stake": [0 for _ in ns],
            }
        raise NotImplementedError(f"{api}.{method}")

    async def constant(self, module: str, name: str) -> Any:
        return None

    async def decode_scale(self, type_string: str, data: Any) -> Any:
        raise NotImplementedError

    async def get_block(
        self, block_number: int | None = None, block_hash: str | None = None
    ) -> dict | None:
        return None

    async def blocks(self, *, finalized: bool = False) -> AsyncIterator[dict]:  # pragma: no cover
        if False:
            yield {}

    async def events(self, block_hash: str | None = None) -> list[dict]:
        return []

    # calls
    async def compose(self, call: Any) -> Any:
        return call

    async def estimate_fee(self, call: Any, keypair: Any) -> Balance:
        return Balance.from_rao(1000)

    async def estimate_weight(self, call: Any, keypair: Any) -> dict:
        return {"ref_time": 1, "proof_size": 1}

    async def account_next_index(self, address: str) -> int:
        return len(self.submitted)

    async def mev_next_key(self) -> bytes | None:
        return None

    async def submit(
        self,
        call: Any,
        keypair: Any,
        *,
        nonce: int | None = None,
        period: int | None = None,
        wait_for_inclusion: bool = True,
        wait_for_finalization: bool = True,
    ) -> ExtrinsicResult:
        self._maybe_fail()
        signer = keypair.ss58_address
        self.submitted.append((call, signer))
        uid = self._uid(signer)
        if call.function in ("set_mechanism_weights", "commit_timelocked_mechanism_weights"):
            if uid is None or not self.subnet.neurons[uid].permit:
                return ExtrinsicResult(success=False, message="NeuronNoValidatorPermit")
            self.subnet.neurons[uid].last_update = self.block
        if call.function == "serve_axon" and uid is not None:
            ip = str(ipaddress.ip_address(call.params["ip"]))
            self.subnet.neurons[uid].axon = (ip, call.params["port"])
        self.block += 1
        return ExtrinsicResult(
            success=True,
            message="Success",
            block_hash=await self.block_hash(self.block),
            extrinsic_id=f"{self.block}-2",
        )
