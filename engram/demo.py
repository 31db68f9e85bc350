"""``engram demo``: Engram end to end on the embedded defaults.

Part 1, the event layer: publishes demo events (each twice, to show de-duplication by
message id) and one malformed message, runs a worker that tallies them, builds a projection
live, then rebuilds it from sequence 1 and checks the two are equal.

Part 2, the miner: starts a miner (embed worker, store projection, axon on a free port) on
the same embedded server, ingests a few facts over HTTP, asks questions, and answers a v2
storage challenge for the top hit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import numpy as np
from rich.console import Console
from rich.progress import Progress

from engram.bus import open_bus
from engram.config import Settings
from streams.events import DemoNoted, Event
from streams.projection import Projection, ProjectionRunner
from streams.replay import replay_raw
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

console = Console(stderr=True)


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

    from engram import core
    from engram.miner.node import MinerNode

    node = MinerNode(settings, port=0)
    with console.status("starting a miner (loading the embedding model)"):
        await node.start()
    try:
        console.print(f"[green]miner[/] axon at {node.url}")
        async with aiohttp.ClientSession() as http:
            items = [
                {"text": t, "metadata": {"source": "demo", "n": i}} for i, t in enumerate(FACTS)
            ]
            async with http.post(
                f"{node.url}/IngestBatch", json={"items": items, "timeout_s": 60}
            ) as r:
                ingest = await r.json()
            answers = []
            for q in QUESTIONS:
                async with http.post(
                    f"{node.url}/QuerySynapse", json={"query_text": q, "top_k": 1}
                ) as r:
                    res = await r.json()
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
            challenge = core.new_challenge(answers[0]["cid"], "11" * 32, ttl_s=60)
            body = {
                "cid": challenge.cid,
                "nonce_hex": challenge.nonce_hex,
                "expires_at": challenge.expires_at,
                "validator_hotkey_hex": challenge.validator_hotkey_hex,
                "version": 2,
            }
            async with http.post(f"{node.url}/ChallengeSynapse", json=body) as r:
                proof = await r.json()
            async with http.get(f"{node.url}/retrieve/{answers[0]['cid']}") as r:
                vector = np.asarray((await r.json())["embedding"], np.float32)
        # the validator's side: recompute the proof from the vector it knows (here: retrieved)
        verified = core.verify_proof(challenge, proof["proof"], version=2, vec=vector)
        return {
            "axon": node.url,
            "ingested": sum(1 for x in ingest["results"] if x["status"] == "stored"),
            "answers": answers,
            "storage_proof_v2_verified": bool(verified),
        }
    finally:
        await node.stop()


async def run_demo(settings: Settings, events: int = 200, miner: bool = True) -> dict[str, Any]:
    result = await run_bus_demo(settings, events)
    if miner:
        result["miner"] = await run_miner_demo(settings)
    return result


async def run_bus_demo(settings: Settings, events: int = 200) -> dict[str, Any]:
    started = time.perf_counter()
    bus = await open_bus(settings)
    try:
        console.print(f"[green]bus[/] {bus.url} ({'embedded' if bus.server else 'external'})")
        originals = [DemoNoted(n=i, note="demo", producer=settings.producer) for i in range(events)]
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("publishing (each event twice)", total=2 * events)
            fresh = dup = 0
            for i in range(0, events, 100):
                chunk = originals[i : i + 100]
                for ack in await bus.publisher.publish_many(chunk + chunk):
                    if ack.duplicate:
                        dup += 1
                    else:
                        fresh += 1
                progress.advance(task, 2 * len(chunk))
        await bus.js.publish(
            "engram.ingest.demo",
            b"\xc1 not an event",
            headers={"Nats-Msg-Id": f"bad:{time.time()}"},
        )

        seen: dict[str, int] = {"handled": 0}

        async def tally(batch: list[Delivery]) -> None:
            seen["handled"] += len(batch)

        worker = Worker(
            bus.js,
            ConsumerSpec(f"demo-{int(time.time())}", "INGEST", ("engram.ingest.demo",)),
            tally,
            bus.publisher,
            batch=settings.worker_batch,
        )
        task_ = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while (
            seen["handled"] + worker.stats.dead_lettered < events + 1
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        worker.stop()
        await task_

        live = DemoTally()
        await ProjectionRunner(bus.js, live).catch_up()
        rebuilt = DemoTally()
        await ProjectionRunner(bus.js, rebuilt).rebuild()
        dead = [
            msgspec.structs.asdict(r.event)["error"]
            async for r in replay_raw(bus.js, "DLQ")
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
            "projection_rebuilt": rebuilt.state(),
            "rebuild_equal": live.state() == rebuilt.state(),
            "seconds": round(time.perf_counter() - started, 2),
        }
    finally:
        await bus.close()
