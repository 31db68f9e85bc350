"""``engram devnet``: a whole subnet on loopback, in one process that owns every part.

* **the devnet's nats-server** (embedded, a child process): the local chain's KV
  (``engram_chain``) and the validator's streams (VALIDATION, WEIGHTS, its consumers);
* **N honest miners**, each a real :class:`~engram.miner.node.MinerNode` with its own data
  dir, hotkey and its *own* embedded nats-server, as a real miner runs: a miner's MEMORY
  stream is its own and nobody else's;
* **adversaries** (``--adversary KIND``): a real miner behind an
  :class:`~engram.devnet.adversaries.AdversaryProxy` (``copycat``: the proxy alone);
* **one validator** (:class:`~engram.validator.node.ValidatorNode`) on the devnet's server.

Every miner is registered on the local chain with its axon (the proxy's, for an
adversary) before the validator starts, so uids are 0..N-1 for the honest miners, then the
adversaries in the order given, then the validator. One loaded model is shared: the
validator and the miners' embed workers use one instance, the miners' queries another.

Every child process is a nats-server armed with a parent-death signal; a clean stop
(SIGINT/SIGTERM, or ``--epochs`` reached) stops the validator, audits its log, then stops
the proxies, the miners and the servers, and removes a temporary data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from nats.aio.msg import Msg

from engram.blobs.arlocal import ArLocal
from engram.blobs.arweave import load_wallet
from engram.bus import Bus, open_bus
from engram.chain.local import LocalChain
from engram.config import Settings
from engram.miner.auth import load_or_create_key, miner_keypair
from engram.miner.client import client_keypair
from engram.miner.embedder import Embedder, get_embedder
from engram.miner.node import MinerNode
from engram.natsd import EmbeddedNats
from engram.validator.audit import audit
from engram.validator.config import ValidatorConfig
from engram.validator.node import ValidatorNode, load_validator_key
from streams.errors import InputError, Unavailable
from streams.events import decode

from .adversaries import AdversaryProxy, check_kind
from .blobs import ingest_devnet_blobs
from .view import DevnetView, MinerRow

if TYPE_CHECKING:
    from engram.console import ConsoleServer

__all__ = ["Devnet", "DevnetConfig", "DevnetFailed"]


class DevnetFailed(Unavailable):
    """A part of the devnet stopped by itself (the validator ended without being asked)."""


log = structlog.get_logger("engram.devnet")

#: seconds-scale cadences (``--fast``): several evaluation and challenge rounds per epoch,
#: so a miner that fails its proofs is slashed before the first epoch with scores ends
FAST = ValidatorConfig(
    evaluation_s=2.0, challenge_s=1.5, weights_s=8.0, http_timeout_s=10.0, challenge_ttl_s=30
)
#: the devnet's default cadences: slower than --fast, much faster than production's
NORMAL = ValidatorConfig(evaluation_s=15.0, challenge_s=20.0, weights_s=60.0)


#: What a devnet user remembers (routed to 3 miners each by the validator's client).
USER_MEMORIES = (
    "Bees tell each other where flowers are with a waggle dance.",
    "The Great Barrier Reef is the largest coral reef system on Earth.",
    "Jupiter is the biggest planet in the solar system.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Rosetta Stone helped scholars read Egyptian hieroglyphs.",
    "Octopuses have three hearts and blue blood.",
    "Mount Everest is the highest mountain above sea level.",
    "Honey never spoils if it is kept sealed.",
    "The Amazon rainforest produces a fifth of the world's oxygen from its plants.",
    "Light from the Sun takes about eight minutes to reach Earth.",
    "The piano has eighty-eight keys.",
    "Penguins live almost only in the Southern Hemisphere.",
)


@dataclass(frozen=True)
class DevnetConfig:
    miners: int = 3
    adversaries: tuple[str, ...] = ()
    epochs: int | None = None  # stop by itself after this many weight epochs
    fast: bool = False
    data_dir: Path | None = None  # None: a temporary dir, removed at exit
    netuid: int = 1
    console: bool = True  # serve the web console (engram.console) on console_port
    console_port: int = 0  # 0: a free port
    blobs: bool = False  # arlocal + a PNG and a PDF ingested through miner-0 (engram.blobs)

    def __post_init__(self) -> None:
        if self.miners < 0 or self.miners + len(self.adversaries) < 1:
            raise InputError("the devnet needs at least one miner")
        for kind in self.adversaries:
            check_kind(kind)
        if "copycat" in self.adversaries and self.miners < 1:
            raise InputError("copycat forwards to an honest miner: give --miners 1 or more")
        if self.epochs is not None and self.epochs < 1:
            raise InputError("--epochs must be >= 1")

    def validator_config(self) -> ValidatorConfig:
        return FAST if self.fast else NORMAL


@dataclass
class Member:
    """One miner of the devnet: a real node, an adversary's proxy, or both."""

    label: str
    hotkey: str
    node: MinerNode | None = None
    proxy: AdversaryProxy | None = None
    uid: int = -1

    @property
    def axon(self) -> tuple[str, int]:
        if self.proxy is not None:
            return self.proxy.host, self.proxy.port
        assert self.node is not None
        return self.node.host, self.node.port


@dataclass
class Devnet:
    config: DevnetConfig
    on_change: Callable[[DevnetView], None] | None = None
    members: list[Member] = field(default_factory=list)
    view: DevnetView = field(default_factory=lambda: DevnetView(rows={}))
    server: EmbeddedNats | None = None
    bus: Bus | None = None
    validator: ValidatorNode | None = None
    root: Path | None = None
    audit_ok: bool | None = None
    audit_problems: list[str] = field(default_factory=list)
    console: ConsoleServer | None = None
    arlocal: ArLocal | None = None
    blobs: list[dict[str, Any]] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    # --- start ----------------------------------------------------------------------------

    def _settings(self, name: str, nats_url: str | None) -> Settings:
        assert self.root is not None
        return Settings(
            data_dir=str(self.root / name),
            nats_url=nats_url,
            node_id=name,
            embed_batch=32,
            embed_batch_wait_s=0.02,
            stop_grace_s=3.0,
            # as on a real subnet: signed requests only, and storage challenges only from
            # validators the (local) chain lists, so a copycat cannot forward a challenge
            # to an honest miner and pass it
            axon_auth="signed",
            chain="local",
            chain_nats_url=self.server.url if self.server is not None else None,
            chain_refresh_s=1.0,
        )

    async def _start_miner(
        self, name: str, label: str, models: tuple[Embedder, Embedder]
    ) -> Member:
        s = self._settings(name, None)  # its own embedded nats-server
        if self.arlocal is not None and name == "miner-0":  # --blobs: it archives on arlocal
            s = msgspec.structs.replace(s, arweave_gateway_url=self.arlocal.url, arweave_local=True)
        hotkey = (await asyncio.to_thread(miner_keypair, s)).ss58_address
        node = MinerNode(
            s, port=0, ingest_wait_s=15.0, query_embedder=models[0], embedder=models[1]
        )
        member = Member(label, hotkey, node=node)
        self.members.append(member)  # before start: a failed start is still stopped
        await node.start()
        return member

    async def _start(self) -> None:
        cfg = self.config
        root = self.root
        assert root is not None
        # on the loop's thread: the parent-death signal follows the thread that spawns
        self.server = EmbeddedNats(data_dir=root / "nats", sync="always").start(reuse=False)
        if cfg.blobs:  # on the loop's thread too (a thread-pool thread may exit)
            self.arlocal = ArLocal().start()
        cache = root / "cache"
        wallet = None
        if cfg.blobs:  # an RSA-4096 key takes seconds: made while the models load
            path = root / "miner-0" / "keys" / "arweave_wallet.json"
            wallet = asyncio.create_task(asyncio.to_thread(load_wallet, path, create=True))
        query_model = await asyncio.to_thread(get_embedder, cache_dir=cache, batch_size=1)
        batch_model = await asyncio.to_thread(get_embedder, cache_dir=cache)
        models = (query_model, batch_model)
        if wallet is not None:
            await wallet
        self.batch_model = batch_model
        for i in range(cfg.miners):
            await self._start_miner(f"miner-{i}", "honest", models)
        honest = next((m for m in self.members if m.label == "honest"), None)
        for j, kind in enumerate(cfg.adversaries):
            name = f"adversary-{j}-{kind}"
            if kind == "copycat":
                assert honest is not None and honest.node is not None
                s = self._settings(name, None)
                key, _ = await asyncio.to_thread(
                    load_or_create_key, s.data_path / "keys" / "miner_hotkey"
                )
                member = Member(kind, key.ss58_address)
                target = f"{honest.node.host}:{honest.node.port}"
                self.members.append(member)
            else:
                member = await self._start_miner(name, kind, models)
                assert member.node is not None
                target = f"{member.node.host}:{member.node.port}"
            member.proxy = AdversaryProxy(kind, target, member.hotkey)
            await member.proxy.start()

        vs = self._settings("validator", self.server.url)
        keypair = await asyncio.to_thread(load_validator_key, vs)
        self.bus = bus = await open_bus(self._settings("devnet", self.server.url))
        chain = await LocalChain.open(bus.js, keypair.ss58_address, cfg.netuid)
        for m in self.members:
            m.uid = await chain.register(m.hotkey)
            host, port = m.axon
            await chain.acting_as(m.hotkey).serve_axon(host, port)
            self.view.rows[m.uid] = MinerRow(m.uid, m.hotkey, m.label, f"{host}:{port}")
        for subject in ("engram.validation.>", "engram.weights.>"):
            await bus.nc.subscribe(subject, cb=self._on_msg)
        if cfg.console:
            await self._start_console(bus)
        self.validator = ValidatorNode(
            vs,
            cfg.validator_config(),
            keypair=keypair,
            embed=batch_model.embed,
            model_version=batch_model.model_version,
            handle_signals=False,
        )

    async def _start_console(self, bus: Bus) -> None:
        """The web console on the devnet's bus: its URL goes into the view (the table's
        caption, ``console_url`` in the result)."""
        from engram.console import ConsoleServer
        from engram.miner.client import client_keypair

        keypair = await asyncio.to_thread(client_keypair, self._settings("console", None))
        labels = {m.hotkey: m.label for m in self.members}
        self.console = ConsoleServer(
            bus,
            port=self.config.console_port,
            keypair=keypair,
            labels=labels,
            title="Engram devnet",
        )
        self.view.console_url = await self.console.start()
        log.info("console", url=self.view.console_url)
        if self.on_change is not None:
            self.on_change(self.view)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except Exception:  # not an event of ours (an ack, a KV update): not for the view
            return
        before = len(self.view.epochs)
        self.view.apply(event)
        if self.config.epochs is not None and len(self.view.epochs) >= self.config.epochs:
            if before < self.config.epochs:
                log.info("epochs reached; stopping", epochs=self.view.epochs)
            self._stop.set()
        if self.on_change is not None:
            self.on_change(self.view)

    # --- run ------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Replica counts come from the validator's projection, not from events."""
        while True:
            await asyncio.sleep(1.0)
            if self.validator is not None and self.validator.chain is not None:
                try:
                    report = await self.validator.report()
                except Exception as exc:  # the chain or projection not ready: next second
                    log.debug("no report yet", error=repr(exc))
                    continue
                self.view.replication = dict(report.get("replication") or {})
                if self.on_change is not None:
                    self.on_change(self.view)

    async def run(self, *, handle_signals: bool = True) -> dict[str, Any]:
        """Start everything, run until :meth:`stop`, a signal or ``epochs``; stop it all and
        return the result (``weights``, ``audit_ok``, ``replication``, ...)."""
        temp = self.config.data_dir is None
        self.root = Path(tempfile.mkdtemp(prefix="engram-devnet-")) if temp else None
        if not temp:
            assert self.config.data_dir is not None
            self.root = self.config.data_dir.expanduser()
            self.root.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        refresher: asyncio.Task[None] | None = None
        task: asyncio.Task[None] | None = None
        try:
            starting = asyncio.create_task(self._start())
            stopped = asyncio.create_task(self._stop.wait())
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # stopped while starting
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                raise asyncio.CancelledError
            starting.result()
            assert self.validator is not None
            task = asyncio.create_task(self.validator.run(), name="validator")
            refresher = asyncio.create_task(self._refresh(), name="devnet-refresh")
            seeding = asyncio.create_task(self._seed_user_memories(), name="devnet-users")
            blobs = asyncio.create_task(self._blobs(), name="devnet-blobs")
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not blobs.done() and not task.done():  # the blobs' report is part of the result
                await asyncio.wait({blobs, task}, timeout=180, return_when=FIRST_COMPLETED)
            if task.done():  # the validator ended by itself: that is a failure
                task.result()
                raise DevnetFailed("the validator stopped by itself")
            with contextlib.suppress(Exception):
                report = await self.validator.report()
                self.view.replication = dict(report.get("replication") or {})
            self.validator.stop()
            await asyncio.wait_for(task, 60)
            await self._audit()
            return self.result()
        finally:
            if refresher is not None:
                refresher.cancel()
                seeding.cancel()
            if task is not None and not task.done():
                assert self.validator is not None
                self.validator.stop()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 30)
            await self._shutdown()
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            if temp and self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)

    async def _blobs(self) -> None:
        if self.arlocal is None:
            return
        node = next(m.node for m in self.members if m.node is not None)
        assert self.root is not None
        key = await asyncio.to_thread(client_keypair, self._settings("user", None))
        self.blobs = await ingest_devnet_blobs(node.url, self.arlocal.url, key)

    async def _seed_user_memories(self) -> None:
        """A user's memories, routed by the validator's client to 3 miners each (XOR
        routing), so challenges sample real user memories and the replication projection
        and repair have work (HEALTHY / DEGRADED / ... in the result)."""
        assert self.validator is not None
        while self.validator.routed is None:
            await asyncio.sleep(0.1)
        routed = self.validator.routed
        vectors = await asyncio.to_thread(self.batch_model.embed, list(USER_MEMORIES))
        for i, vec in enumerate(vectors):
            try:
                await routed.ingest(vec, {"user": "devnet", "n": i})
            except Exception as exc:  # a refusing miner is the validator's business
                log.warning("devnet user memory not routed", n=i, error=repr(exc))

    async def _audit(self) -> None:
        assert self.bus is not None and self.validator is not None
        assert self.validator.keypair is not None
        report = await audit(self.bus.js, validator=self.validator.keypair.ss58_address)
        self.audit_ok = report.ok
        self.audit_problems = list(report.score_mismatches) + [
            f"epoch {e.epoch}: {e.problem}" for e in report.epochs if not e.ok
        ]

    async def _shutdown(self) -> None:
        if self.console is not None:
            with contextlib.suppress(Exception):
                await self.console.stop()
        for m in self.members:
            if m.proxy is not None:
                with contextlib.suppress(Exception):
                    await m.proxy.stop()
        nodes = [m.node for m in self.members if m.node is not None]
        results = await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)
        for n, r in zip(nodes, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("miner stop failed", node=n.settings.node_id, error=repr(r))
                if n.bus is not None and n.bus.server is not None:
                    n.bus.server.stop()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
        if self.server is not None:
            self.server.stop()
        if self.arlocal is not None:
            await asyncio.to_thread(self.arlocal.stop)

    def result(self) -> dict[str, Any]:
        return {
            "weights": self.view.weights(),
            "audit_ok": self.audit_ok,
            "audit_problems": self.audit_problems,
            "replication": self.view.replication,
            "epochs": self.view.epochs,
            "events": self.view.events,
            "console_url": self.view.console_url,
            **({"blobs": self.blobs or []} if self.config.blobs else {}),
        }
