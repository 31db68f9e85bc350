"""``engram validator run``: every validator step on the existing runners, in one process.

Workers (durable consumers, ``streams.worker.Worker``): challenger, evaluator,
dispatcher, verifier, repair planner, repairer, weights setter. Projections
(``streams.projection``): scorer, weight folder, replication. Plus the scheduler. The
VALIDATION and WEIGHTS streams hold every fact; a restart resumes each step where the log
says it stopped (see each module). User memories enter through :attr:`ValidatorNode.routed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from engram.bus import Bus, open_bus
from engram.chain.base import Chain
from engram.chain.local import LocalChain
from engram.config import Settings
from streams.projection import ProjectionRunner
from streams.topology import consumer
from streams.worker import BatchHandler, Worker

from .challenges import Challenger, Dispatcher, Verifier
from .config import ValidatorConfig
from .evaluator import Embed, Evaluator
from .http import MinerHttp
from .ledger import ProbeLedger
from .repair import RepairPlanner, RepairWorker, ReplicationProjection, peers_of
from .routed import RoutedClient
from .scheduler import Scheduler
from .scorer import ScorerService
from .weights import ChainSetter, WeightFolder

__all__ = ["ValidatorNode", "load_validator_key"]

log = structlog.get_logger("engram.validator.node")

ChainFactory = Callable[[Bus, Any], Awaitable[Chain]]


def load_validator_key(settings: Settings) -> Any:
    """``<data_dir>/keys/validator_hotkey`` (a bittensor hotkey file), created on first use."""
    from engram.miner.auth import load_or_create_key

    keypair, created = load_or_create_key(Path(settings.data_path) / "keys" / "validator_hotkey")
    if created:
        log.info("generated a validator hotkey", hotkey=keypair.ss58_address)
    return keypair


async def local_chain(bus: Bus, keypair: Any, *, netuid: int = 1, stake: float = 1000.0) -> Chain:
    """The devnet's chain: registers this validator with ``stake`` (so it has a permit)."""
    chain = await LocalChain.open(bus.js, keypair.ss58_address, netuid)
    await chain.register(stake=0.0)
    graph = await chain.metagraph()
    me = graph.by_hotkey(keypair.ss58_address)
    if me is not None and me.stake < stake:
        await chain.add_stake(keypair.ss58_address, stake - me.stake)
    return chain


@dataclass
class ValidatorNode:
    settings: Settings
    config: ValidatorConfig = field(default_factory=ValidatorConfig)
    keypair: Any = None
    chain_factory: ChainFactory | None = None
    embed: Embed | None = None
    model_version: str = ""
    bus: Bus | None = None
    chain: Chain | None = None
    workers: list[Worker] = field(default_factory=list)
    scorer: ScorerService | None = None
    folder: WeightFolder | None = None
    scheduler: Scheduler | None = None
    replication: ReplicationProjection = field(default_factory=ReplicationProjection)
    handle_signals: bool = True  # False when an owner (the devnet) handles SIGINT/SIGTERM
    #: user memories in: routed to 3 miners, ground truth kept (set once running)
    routed: RoutedClient | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()
        for w in self.workers:
            w.stop()

    async def _embedder(self) -> tuple[Embed, str]:
        if self.embed is not None:
            return self.embed, self.model_version
        from engram.miner.node import load_embedder

        e = await asyncio.to_thread(load_embedder, self.settings, "embed")
        return e.embed, e.model_version

    async def _follow(self, runner: ProjectionRunner) -> None:
        task = asyncio.create_task(runner.run())
        try:
            await self._stop.wait()
        finally:
            runner.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def report(self) -> dict[str, Any]:
        """What the validator knows now, for dashboards and the devnet's table: per miner
        its last score, its last proposed weight, and replica counts per status."""
        if self.chain is None or self.scorer is None or self.folder is None:
            return {}
        graph = await self.chain.metagraph()
        last_weights: dict[int, float] = {}
        epoch = None
        if self.folder.published:
            p = self.folder.published[-1]
            epoch = p.epoch
            last_weights = dict(zip(p.uids, p.weights, strict=True))
        miners = {}
        for n in graph.neurons:
            if n.hotkey == self.chain.hotkey:
                continue
            s = self.scorer.projection.last.get(n.uid)
            miners[n.uid] = {
                "hotkey": n.hotkey,
                "axon": n.axon,
                "recall": s.recall if s else None,
                "latency_score": s.latency_score if s else None,
                "proof_success_rate": s.proof_success_rate if s else None,
                "challenges": s.challenges if s else 0,
                "ema": s.ema if s else None,
                "slashed": s.slashed if s else False,
                "reason": s.reason if s else "",
                "weight": last_weights.get(n.uid),
            }
        return {
            "block": graph.block,
            "epoch": epoch,
            "miners": miners,
            "replication": self.replication.counts(peers_of(graph, exclude={self.chain.hotkey})),
        }

    async def run(self) -> None:
        """Start every step and run until :meth:`stop` (or SIGTERM/SIGINT)."""
        s, cfg = self.settings, self.config
        keypair = self.keypair or await asyncio.to_thread(load_validator_key, s)
        self.bus = bus = await open_bus(s)
        http = MinerHttp(keypair, timeout_s=cfg.http_timeout_s, max_inflight=cfg.max_inflight)
        try:
            factory = self.chain_factory or local_chain
            self.chain = chain = await factory(bus, keypair)
            ledger = await ProbeLedger.open(bus.js, s.stream_replicas)
            embed, model_version = await self._embedder()
            pub = bus.publisher
            me = keypair.ss58_address

            def worker(name: str, handler: BatchHandler, batch: int = 64) -> Worker:
                return Worker(
                    bus.js,
                    consumer(name),
                    handler,
                    pub,
                    batch=batch,
                    fetch_wait_s=0.5,
                    concurrency=2,
                    max_deliver=s.worker_max_deliver,
                    backoff_s=s.worker_backoff_s,
                    replicas=s.stream_replicas,
                )

            challenger = Challenger(chain, ledger, pub, cfg, keypair.public_key.hex())
            evaluator = Evaluator(chain, ledger, pub, http, embed, model_version)
            setter = ChainSetter(
                chain, pub, attempts=cfg.set_weights_attempts, version_key=cfg.version_key
            )
            await setter.load_done(bus.js)
            planner = RepairPlanner(chain, self.replication, pub)
            repairer = RepairWorker(chain, http, ledger, pub)
            self.routed = RoutedClient(chain, http, ledger, model_version)
            self.workers = [
                worker("validator-challenger", challenger.handle, batch=1),
                worker("validator-evaluator", evaluator.handle, batch=1),
                worker("validator-dispatcher", Dispatcher(http, pub).handle, batch=256),
                worker("validator-verifier", Verifier(ledger, pub).handle),
                worker("validator-repair-planner", planner.handle, batch=1),
                worker("validator-repairer", repairer.handle, batch=16),
                worker("validator-weights-setter", setter.handle, batch=1),
            ]
            self.scorer = ScorerService(bus.js, pub, scorer_version=cfg.scorer_version)
            self.folder = WeightFolder(
                bus.js, pub, chain, validator=me, scorer_version=cfg.scorer_version
            )
            self.scheduler = Scheduler(bus.js, pub, cfg.cadences(), me)
            replication = ProjectionRunner(bus.js, self.replication, snapshot_every_events=10**9)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT) if self.handle_signals else ():
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
            log.info("validator started", hotkey=me, chain=chain.name, netuid=chain.netuid)
            await asyncio.gather(
                *(w.run() for w in self.workers),
                self.scorer.run(self._stop),
                self.folder.run(self._stop),
                self.scheduler.run(self._stop),
                self._follow(replication),
                self._stop.wait(),
            )
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT) if self.handle_signals else ():
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    asyncio.get_running_loop().remove_signal_handler(sig)
            await http.close()
            await bus.close()
