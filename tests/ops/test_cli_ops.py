"""The operator commands through the real ``engram`` entry point (subprocesses) against a
real nats-server, with dead letters made by a real worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engram.bus import Bus, open_bus
from engram.config import Settings
from engram.natsd import EmbeddedNats
from streams.events import DemoNoted
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker
from tests.streams.test_cluster import cluster  # noqa: F401 - the 3-node cluster fixture

ROOT = Path(__file__).resolve().parents[2]
ENGRAM = [sys.executable, "-m", "engram.cli"]
SPEC = ConsumerSpec("ops-test", "INGEST", ("engram.ingest.demo",), ack_wait_s=5.0)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}


async def engram(
    *args: str, data_dir: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [*ENGRAM, "--data-dir", str(data_dir), "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=ROOT,
    )


@dataclass
class Handler:
    """Refuses note "bad" until fixed, as a worker with a bug would."""

    fixed: bool = False
    handled: list[int] = field(default_factory=list)

    async def __call__(self, batch: list[Delivery]) -> None:
        for d in batch:
            assert isinstance(d.event, DemoNoted)
            if d.event.note == "bad" and not self.fixed:
                d.poison("note 'bad' is not supported")
            else:
                self.handled.append(d.event.n)


@dataclass
class World:
    url: str
    bus: Bus
    handler: Handler
    data_dir: Path
    between: float  # a time after the first five events and before the last five


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    server = EmbeddedNats(data_dir=tmp_path / "nats", sync="always").start(reuse=False)
    bus = await open_bus(Settings(data_dir=str(tmp_path / "d"), nats_url=server.url))
    handler = Handler()
    worker = Worker(bus.js, SPEC, handler, bus.publisher, fetch_wait_s=0.1, max_deliver=2)
    task = asyncio.create_task(worker.run())
    try:
        await bus.publisher.publish_many(DemoNoted(n=i, note="ok") for i in range(1, 6))
        await asyncio.sleep(1.2)
        between = time.time()
        await asyncio.sleep(0.2)
        await bus.publisher.publish_many(
            [DemoNoted(n=6, note="bad"), *(DemoNoted(n=i, note="ok") for i in range(7, 10))]
        )
        # and bytes that are no event at all (a producer with a bug)
        await bus.js.publish("engram.ingest.demo", b"\x01garbage", headers={"Nats-Msg-Id": "junk"})
        for _ in range(100):
            if len(handler.handled) >= 8 and worker.stats.dead_lettered >= 2:
                break
            await asyncio.sleep(0.05)
        assert worker.stats.dead_lettered == 2
        yield World(server.url, bus, handler, tmp_path / "cli", between)
    finally:
        worker.stop()
        await task
        await bus.close()
        server.stop()


async def test_status_shows_streams_lag_and_dlq_depth(world: World) -> None:
    r = await engram("status", "--nats-url", world.url, "--json", data_dir=world.data_dir)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    streams = {s["name"]: s for s in out["streams"]}
    assert streams["INGEST"]["messages"] == 10 and streams["INGEST"]["bytes"] > 500
    assert streams["DLQ"]["messages"] == 2
    [c] = [c for c in out["consumers"] if c["name"] == "ops-test"]
    assert c["stream"] == "INGEST" and c["lag"] == 0 and c["delivered_seq"] == 10
    assert out["dlq"] == {
        "depth": 2,
        "dead_lettered": 2,
        "retried": 0,
        "by_consumer": {"ops-test": 2},
    }
    assert out["nodes"] and out["nats"]["connected"] is True
    # the table a human reads
    r = await engram("status", "--nats-url", world.url, data_dir=world.data_dir)
    assert r.returncode == 0, r.stderr
    assert "INGEST" in r.stdout and "ops-test" in r.stdout and "DLQ depth" in r.stdout


async def test_replay_between_sequences_and_from_a_time(world: World) -> None:
    args = ("replay", "INGEST", "--nats-url", world.url)
    r = await engram(*args, "--from", "2", "--to", "4", "--json", data_dir=world.data_dir)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["seq"], x["kind"], x["n"]) for x in rows] == [
        (2, "DemoNoted", 2),
        (3, "DemoNoted", 3),
        (4, "DemoNoted", 4),
    ]
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(world.between))
    frac = f"{world.between % 1:.3f}"[1:]
    r = await engram(*args, "--from", when + frac, data_dir=world.data_dir)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5, r.stdout  # 4 events after the pause, then the junk
    assert "DemoNoted n=6 note=bad" in lines[0] and "not an event" in lines[-1]
    r = await engram(*args, "--from", "yesterday-ish", data_dir=world.data_dir)
    assert r.returncode == 2 and "not a sequence, an ISO time or an age" in r.stderr
    r = await engram("replay", "NOSUCH", "--nats-url", world.url, data_dir=world.data_dir)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "NotFoundError" in r.stderr


async def test_tail_prints_live_events_until_count_or_ctrl_c(world: World) -> None:
    cmd = [*ENGRAM, "--log-level", "warning", "tail", "engram.ingest.>", "--nats-url", world.url]

    async def started(*extra: str) -> asyncio.subprocess.Process:
        p = await asyncio.create_subprocess_exec(
            *cmd, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=_env(), cwd=ROOT,
        )  # fmt: skip
        assert p.stderr is not None
        line = await asyncio.wait_for(p.stderr.readline(), 30)
        assert b"tailing" in line, line
        return p

    p = await started("--count", "3", "--json")
    await world.bus.publisher.publish_many(DemoNoted(n=100 + i, note="live") for i in range(4))
    out, _ = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 0
    rows = [json.loads(x) for x in out.decode().splitlines()]
    assert [(x["kind"], x["n"], x["subject"]) for x in rows] == [
        ("DemoNoted", 100 + i, "engram.ingest.demo") for i in range(3)
    ]
    p = await started()
    await world.bus.publisher.publish(DemoNoted(n=200, note="readable"))
    await asyncio.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 0, err
    [line] = out.decode().splitlines()
    assert "DemoNoted" in line and "n=200 note=readable" in line
    assert "[engram.ingest.demo]" in line and "1 events" in err.decode()


async def test_dlq_list_show_and_retry_once_fixed(world: World) -> None:
    d = world.data_dir
    url = ("--nats-url", world.url)
    r = await engram("dlq", "list", *url, "--json", data_dir=d)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    # in the order they were dead-lettered: when the bad event and the junk arrive in one
    # fetch, the junk (which cannot be decoded) goes first
    assert [x["seq"] for x in rows] == sorted(x["seq"] for x in rows)
    rows.sort(key=lambda x: x["stream_seq"])
    assert [(x["status"], x["consumer"], x["stream_seq"]) for x in rows] == [
        ("dead", "ops-test", 6),
        ("dead", "ops-test", 10),
    ]
    bad, junk = rows
    assert bad["error_type"] == "Poison" and "not supported" in bad["error"]
    assert junk["error_type"] == "EventDecodeError"
    r = await engram("dlq", "show", str(bad["seq"]), *url, "--json", data_dir=d)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["original_event"]["kind"] == "DemoNoted" and shown["original_event"]["n"] == 6
    assert shown["original_headers"]["Nats-Msg-Id"].startswith("demo:")
    r = await engram("dlq", "show", str(junk["seq"]), *url, data_dir=d)
    assert r.returncode == 0 and "not an event" in r.stdout and "016761726261676" in r.stdout
    r = await engram("dlq", "show", "999", *url, data_dir=d)
    assert r.returncode == 1 and "no dead letter at DLQ sequence 999" in r.stderr

    world.handler.fixed = True  # the bug is fixed: send the dead letter back
    r = await engram("dlq", "retry", str(bad["seq"]), *url, "--json", data_dir=d)
    assert r.returncode == 0, r.stderr
    [done] = json.loads(r.stdout)
    assert done["stream"] == "INGEST" and done["stream_seq"] == 11
    assert done["msg_id"] == f"dlq-retry:{bad['seq']}:1"
    for _ in range(100):
        if 6 in world.handler.handled:
            break
        await asyncio.sleep(0.05)
    assert world.handler.handled.count(6) == 1  # the worker did it, once
    msg = await world.bus.js.get_msg("INGEST", 11)
    assert msg.headers is not None and msg.headers["Engram-Retry-Of"] == f"DLQ:{bad['seq']}"
    assert msg.subject == "engram.ingest.demo"

    r = await engram("dlq", "retry", str(bad["seq"]), *url, data_dir=d)
    assert r.returncode == 1 and "already retried" in r.stderr
    r = await engram("dlq", "list", *url, "--json", data_dir=d)
    assert [x["seq"] for x in json.loads(r.stdout)] == [junk["seq"]]
    r = await engram("dlq", "list", "--all", *url, "--json", data_dir=d)
    # both, in dead-letter order (the junk may have died first; see the top)
    shown_all = json.loads(r.stdout)
    assert [x["seq"] for x in shown_all] == sorted([bad["seq"], junk["seq"]])
    assert {x["seq"]: x["status"] for x in shown_all} == {
        bad["seq"]: "retried",
        junk["seq"]: "dead",
    }
    r = await engram("dlq", "retry", "--all", *url, data_dir=d)
    assert r.returncode == 0 and "1 retried" in r.stderr
    # the junk is still junk: the worker dead-letters the retried copy again, a new entry
    for _ in range(100):
        if (await world.bus.js.stream_info("DLQ")).state.messages == 5:
            break
        await asyncio.sleep(0.05)
    r = await engram("status", *url, "--json", data_dir=d)
    assert json.loads(r.stdout)["dlq"]["depth"] == 1
    r = await engram("dlq", "list", *url, "--json", data_dir=d)
    [again] = json.loads(r.stdout)
    assert again["stream_seq"] == 12 and again["error_type"] == "EventDecodeError"
    r = await engram("dlq", "retry", *url, data_dir=d)
    assert r.returncode == 2 and "sequence numbers or --all" in r.stderr


async def test_no_bus_is_one_clear_line(tmp_path: Path) -> None:
    r = await engram("status", data_dir=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "no nats-server is running" in r.stderr and "--nats-url" in r.stderr


async def test_completion_scripts(tmp_path: Path) -> None:
    for shell, marker in (
        ("bash", "complete -o"),
        ("zsh", "compdef"),
        ("fish", "complete --no-files --command engram"),
    ):
        r = await engram("completion", shell, data_dir=tmp_path)
        assert r.returncode == 0 and "_ENGRAM_COMPLETE" in r.stdout, shell
        assert marker in r.stdout and "engram" in r.stdout, shell


@pytest.mark.parametrize(
    ("words", "cword", "expect"),
    [
        ("engram dl", 1, "dlq"),
        ("engram replay VAL", 2, "VALIDATION"),
        ("engram dlq re", 2, "retry"),
    ],
)
async def test_shell_completion(words: str, cword: int, expect: str) -> None:
    env = {**_env(), "_ENGRAM_COMPLETE": "bash_complete", "COMP_WORDS": words}
    env["COMP_CWORD"] = str(cword)
    script = Path(sys.executable).with_name("engram")  # the console script, as a shell runs it
    r = await asyncio.to_thread(
        subprocess.run, [str(script)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=30
    )
    assert f"plain,{expect}" in r.stdout.splitlines(), r.stdout


async def test_status_names_the_cluster_nodes_and_a_dead_one(
    cluster: dict[str, tuple[subprocess.Popen[bytes], int, int]],  # noqa: F811
    tmp_path: Path,
) -> None:
    url = ",".join(f"nats://127.0.0.1:{port}" for _, port, _ in cluster.values())
    s = Settings(data_dir=str(tmp_path / "d"), nats_url=url, stream_replicas=3)
    bus = await open_bus(s)
    try:
        await bus.publisher.publish(DemoNoted(n=1))
        leader = (await bus.js.stream_info("INGEST")).cluster.leader  # type: ignore[union-attr]
    finally:
        await bus.close()
    r = await engram("status", "--nats-url", url, "--json", data_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    nodes = {n["name"]: n for n in out["nodes"]}
    assert set(nodes) == {"engram-n1", "engram-n2", "engram-n3"}
    assert "INGEST" in nodes[str(leader)]["leads"]
    assert all(s["replicas"] == 3 for s in out["streams"])
    follower = next(n for n in nodes if n != leader)
    proc, _, _ = cluster[follower]
    proc.kill()  # a replica goes away: status says which node is behind
    await asyncio.to_thread(proc.wait, 5)
    behind: dict[str, list[str]] = {}
    for _ in range(30):
        r = await engram("status", "--nats-url", url, "--json", data_dir=tmp_path)
        if r.returncode == 0:  # (1 with the reason while the cluster re-elects its leader)
            behind = {n["name"]: n["behind"] for n in json.loads(r.stdout)["nodes"]}
            if "INGEST" in behind.get(follower, []):
                break
        else:
            assert "Traceback" not in r.stderr
        await asyncio.sleep(1)
    assert "INGEST" in behind[follower], behind
