"""``engram demo``: Engram end to end on the embedded defaults.

Part 1, the event layer: a projection starts following the stream live; then the demo
publishes events (each twice, to show de-duplication by message id) and one malformed
message, and runs a worker that tallies them. The live projection (applied event by event as
they arrived) is compared with one rebuilt from sequence 1: ``rebuild_equal``.

Part 2, the miner: starts a miner (embed worker, store projection, axon on a free port) on
the same server, ingests facts whose vectors the demo embedded itself (as ``raw_embedding``,
with the model the miner serves), asks questions in text, and answers a v2 storage
challenge for the top hit, verified against the demo's own vector, as a validator would.

The command runs in a temporary data dir (removed afterwards) unless ``--data-dir`` is given;
either way the consumers the demo creates are deleted before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import Progress

from engram.bus import open_bus
from engram.config import Settings
from streams.errors import Unavailable
from streams.events import DemoNoted, Event
from streams.projection import Projection, ProjectionRunner
from streams.replay import replay_raw
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

__all__ = ["DemoTally", "run_bus_demo", "run_demo", "run_miner_demo"]

console = Console(stderr=True)

#: Events per publish call; the live projection's progress is sampled after each.
CHUNK = 100


class DemoTally(Projection):
    """Count and sum of demo events: a tiny deterministic projection."""

    stream = "INGEST"
    subjects = ["engram.ingest.demo"]

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.total = 0

    def apply(self, seq: int, event: Event) -> None:
        if isinstance(event, DemoNoted):
            self.count += 1
            self.total += event.n

    def reset(self) -> None:
        super().reset()
        self.count = self.total = 0

    def state(self) -> dict[str, int]:
        return {"count": self.count, "total": self.total, "last_seq": self.last_seq}


FACTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Mount Everest is the highest mountain above sea level, in the Himalayas.",
    "The Python programming language was created by Guido van Rossum.",
    "Honey never spoils: archaeologists found edible honey in Egyptian tombs.",
    "The mitochondrion is the powerhouse of the cell, producing ATP.",
    "Jupiter is the largest planet in the Solar System.",
    "The Great Wall of China stretches for thousands of kilometres.",
    "Rust is a systems language focused on memory safety without garbage collection.",
    "Octopuses have three hearts and blue blood.",
]
QUESTIONS = [
    "Which planet is the biggest?",
    "who made python",
    "how do plants make energy from sunlight",
]


async def run_miner_demo(settings: Settings) -> dict[str, Any]:
    import aiohttp
    import bittensor_core
    import msgspec
    import numpy as np

    from engram import core
    from engram.miner.auth import public_key_hex
    from engram.miner.client import AxonClient
    from engram.miner.node import MinerNode, load_embedder

    # the demo signs every request (btauth/1) with its own hotkey, which this miner also
    # trusts as a validator so that the demo can challenge it
    demo_key = bittensor_core.Keypair.from_uri("//EngramDemo")
    settings = msgspec.structs.replace(
        settings, axon_auth="signed", axon_validators=[demo_key.ss58_address]
    )
    node = MinerNode(settings, port=0)
    with console.status("starting a miner (loading the embedding model)"):
        await node.start()
    try:
        console.print(f"[green]miner[/] axon at {node.url}")
        # The client's side: embed the facts here, with the model the miner serves (the same
        # process-wide instance, so it is loaded once), and keep the vectors.
        embedder = await asyncio.to_thread(load_embedder, settings, "query")
        vectors = await asyncio.to_thread(embedder.embed, FACTS)
        metadata = [{"source": "demo", "n": i} for i in range(len(FACTS))]
        cids = core.compute_cids(vectors, metadata, embedder.model_version)
        async with aiohttp.ClientSession(base_url=node.url) as http:
            axon = AxonClient(http, demo_key)
            items = [
                {"raw_embedding": vectors[i].tolist(), "metadata": metadata[i]}
                for i in range(len(FACTS))
            ]
            _, ingest = await axon.post("/IngestBatch", {"items": items, "timeout_s": 60})
            answers = []
            for q in QUESTIONS:
                _, res = await axon.post("/QuerySynapse", {"query_text": q, "top_k": 1})
                top = res["results"][0]
                answers.append(
                    {
                        "question": q,
                        "answer": FACTS[top["metadata"]["n"]],
                        "score": round(top["score"], 3),
                        "cid": top["cid"],
                        "latency_ms": res.get("latency_ms"),
                    }
                )
            n = FACTS.index(answers[0]["answer"])
            challenge = core.new_challenge(
                answers[0]["cid"], public_key_hex(demo_key.ss58_address), ttl_s=60
            )
            body = {
                "cid": challenge.cid,
                "nonce_hex": challenge.nonce_hex,
                "expires_at": challenge.expires_at,
                "validator_hotkey_hex": challenge.validator_hotkey_hex,
                "version": 2,
            }
            _, proof = await axon.post("/ChallengeSynapse", body)
        # the validator's side: the proof must match the vector the demo embedded itself,
        # never one fetched from the miner under test
        own = np.ascontiguousarray(vectors[n], dtype=np.float32)
        verified = core.verify_proof(challenge, proof["proof"], version=2, vec=own)
        return {
            "axon": node.url,
            "ingested": sum(1 for x in ingest["results"] if x["status"] == "stored"),
            "answers": answers,
            "cids_match_local": all(a["cid"] in cids for a in answers),
            "storage_proof_v2_verified": bool(verified),
        }
    finally:
        await node.stop()


async def run_demo(settings: Settings, events: int = 200, miner: bool = True) -> dict[str, Any]:
    result = await run_bus_demo(settings, events)
    if miner:
        result["miner"] = await run_miner_demo(settings)
    return result


async def _settled(js: Any, durable: str, deadline_s: float) -> None:
    """Wait until the consumer has nothing left to deliver and nothing unacknowledged."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        info = await js.consumer_info("INGEST", durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise Unavailable(f"the demo worker did not finish within {deadline_s} s")


async def run_bus_demo(
    settings: Settings, events: int = 200, *, live: DemoTally | None = None
) -> dict[str, Any]:
    """The event-layer part. ``live`` is the projection that follows the stream (tests pass
    one that misbehaves, to show ``rebuild_equal`` can be false)."""
    started = time.perf_counter()
    live = DemoTally() if live is None else live
    durable = f"demo-{uuid.uuid4().hex[:12]}"
    bus = await open_bus(settings)
    try:
        console.print(f"[green]bus[/] {bus.url} ({'embedded' if bus.server else 'external'})")
        # follow the stream from before the first event is published
        follower = ProjectionRunner(bus.js, live)
        following = asyncio.create_task(follower.run())
        originals = [DemoNoted(n=i, note="demo", producer=settings.producer) for i in range(events)]
        progress_seen: list[int] = []
        fresh = dup = 0
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("publishing (each event twice)", total=2 * events)
            for i in range(0, events, CHUNK):
                chunk = originals[i : i + CHUNK]
                acks = await bus.publisher.publish_many(chunk + chunk)
                for ack in acks:
                    if ack.duplicate:
                        dup += 1
                    else:
                        fresh += 1
                # the live projection applies each chunk as it arrives
                if not await follower.wait_for(max(a.seq for a in acks), timeout=30):
                    raise Unavailable("the live projection did not keep up within 30 s")
                progress_seen.append(live.count)
                progress.advance(task, 2 * len(chunk))
        bad = await bus.js.publish(
            "engram.ingest.demo",
            b"\xc1 not an event",
            headers={"Nats-Msg-Id": f"bad:{durable}"},
        )

        seen: dict[str, int] = {"handled": 0}

        async def tally(batch: list[Delivery]) -> None:
            seen["handled"] += len(batch)

        worker = Worker(
            bus.js,
            ConsumerSpec(durable, "INGEST", ("engram.ingest.demo",), description="engram demo"),
            tally,
            bus.publisher,
            batch=CHUNK,
        )
        try:
            running = asyncio.create_task(worker.run())
            await asyncio.wait_for(worker.wait_ready(), 30)
            await _settled(bus.js, durable, deadline_s=30)
            worker.stop()
            await running
        finally:
            with contextlib.suppress(Exception):
                await bus.js.delete_consumer("INGEST", durable)

        await follower.wait_for(bad.seq, timeout=30)
        follower.stop()
        await following
        rebuilt = DemoTally()
        await ProjectionRunner(bus.js, rebuilt).rebuild()
        dead = [
            msgspec.structs.asdict(r.event)["error"]
            async for r in replay_raw(bus.js, "DLQ", subjects=[f"engram.dlq.{durable}"])
            if r.event is not None
        ]
        return {
            "nats_url": bus.url,
            "embedded": bus.server is not None,
            "published": fresh,
            "duplicates_dropped": dup,
            "worker_handled": seen["handled"],
            "dead_lettered": worker.stats.dead_lettered,
            "dead_letter_causes": dead[-1:],
            "projection_live": live.state(),
            "projection_live_progress": progress_seen,
            "projection_rebuilt": rebuilt.state(),
            "rebuild_equal": live.state() == rebuilt.state(),
            "seconds": round(time.perf_counter() - started, 2),
        }
    finally:
        await bus.close()
