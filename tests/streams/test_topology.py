"""``ensure`` applies a change of replicas to existing streams, or says clearly why not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nats
import pytest

from engram.natsd import EmbeddedNats
from streams.retry import retry
from streams.topology import STREAMS, StreamSpec, TopologyError, ensure
from tests.streams.test_cluster import cluster  # noqa: F401 - the 3-node cluster fixture

ONE = (StreamSpec("INGEST", ("engram.ingest.>",), "ingest"),)


async def test_asking_a_single_server_for_r3_names_stream_replicas_and_answer(
    nats_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        assert await ensure(js, ONE, replicas=1) == {"INGEST": "created"}
        with pytest.raises(TopologyError) as err:
            await ensure(js, ONE, replicas=3)
        msg = str(err.value)
        assert "stream INGEST" in msg and "wanted R3" in msg and "has R1" in msg
        assert "not supported in non-clustered mode" in msg  # the server's own words
        assert (await js.stream_info("INGEST")).config.num_replicas == 1
        # a stream that does not exist yet: the same clear refusal, not a bare APIError
        with pytest.raises(TopologyError, match=r"stream BLOBS: wanted R3 replicas, has absent"):
            await ensure(js, STREAMS[1:2], replicas=3)
        assert await ensure(js, ONE, replicas=1) == {"INGEST": "ok"}
    finally:
        await nc.close()


async def test_r1_streams_become_r3_on_a_cluster(
    cluster: dict[str, tuple[subprocess.Popen[bytes], int, int]],  # noqa: F811
    tmp_path: Path,
) -> None:
    url = [f"nats://127.0.0.1:{port}" for _, port, _ in cluster.values()]
    nc = await nats.connect(servers=url)
    try:
        js = nc.jetstream(timeout=5)
        # a cluster that just started may still be electing its meta leader
        first = await retry(lambda: ensure(js, ONE, replicas=1), what="ensure", deadline_s=60)
        assert first == {"INGEST": "created"}
        assert (await js.stream_info("INGEST")).config.num_replicas == 1
        assert await ensure(js, ONE, replicas=3) == {"INGEST": "updated"}
        info = await js.stream_info("INGEST")
        assert info.config.num_replicas == 3
        assert await ensure(js, ONE, replicas=3) == {"INGEST": "ok"}
    finally:
        await nc.close()
