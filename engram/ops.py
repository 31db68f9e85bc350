"""What an operator reads off the bus: the state of streams and consumers, events as one
readable line each, and the dead-letter queue (list, inspect, send back).

Shared by the operator commands (``engram status|tail|dlq|replay``) and the web console's
Bus page; everything here reads JetStream's own bookkeeping (stream and consumer info) or
the streams themselves, never a private copy.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.js import JetStreamContext

from engram.bus import Bus, open_bus
from engram.config import Settings
from engram.natsd import server_status
from streams.errors import InputError, Unavailable
from streams.events import DeadLettered, DeadLetterRetried, Event, EventDecodeError, decode
from streams.publisher import HDR_KIND, HDR_MSG_ID, Publisher
from streams.replay import replay_raw

__all__ = [
    "DlqEntry",
    "NoBus",
    "Position",
    "bus_status",
    "connect",
    "dlq_entries",
    "dlq_retry",
    "event_json",
    "index_status",
    "parse_position",
    "summarize",
]

#: Envelope fields left out of one-line summaries (shown by ``--json``).
_ENVELOPE = frozenset({"event_id", "time", "producer", "causation_id", "schema_version"})
#: The header a retried message carries: which dead letter it came from.
HDR_RETRY_OF = "Engram-Retry-Of"


class NoBus(Unavailable):
    """No NATS to talk to: no URL configured and no embedded server running."""


async def connect(settings: Settings) -> Bus:
    """The bus an operator command inspects: ``nats_url`` when set, else the embedded
    server already running for the data dir. Never starts a server (a status read from a
    server started for the occasion would show an empty bus) and never changes streams."""
    if settings.nats_url:
        return await open_bus(settings, ensure_streams=False)
    nats_dir = settings.data_path / "nats"
    running = server_status(nats_dir)
    if not running.get("running"):
        raise NoBus(
            f"no nats-server is running for data dir {settings.data_path} "
            "(start one with `engram nats up`, or give --nats-url / ENGRAM_NATS_URL)"
        )
    url = f"nats://127.0.0.1:{running['port']}"
    return await open_bus(msgspec.structs.replace(settings, nats_url=url), ensure_streams=False)


# --- status ---------------------------------------------------------------------------


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


async def bus_status(bus: Bus) -> dict[str, Any]:
    """Nodes (the servers holding the streams), streams with messages and bytes, every
    durable consumer's lag (messages not delivered yet; ``ack_pending``: delivered, not
    acked), and the DLQ depth (dead letters not retried yet)."""
    js = bus.js
    nodes: dict[str, dict[str, Any]] = {}
    streams: list[dict[str, Any]] = []
    consumers: list[dict[str, Any]] = []
    infos = await js.streams_info()
    for info in sorted(infos, key=lambda i: i.config.name or ""):
        name = info.config.name or ""
        st = info.state
        cluster = info.cluster
        leader = cluster.leader if cluster is not None else None
        replicas: list[dict[str, Any]] = [
            {"name": str(r.name), "current": r.current, "lag": r.lag, "active_s": r.active}
            for r in ((cluster.replicas or []) if cluster is not None else [])
        ]
        for n in [leader, *(r["name"] for r in replicas)]:
            if n:
                nodes.setdefault(
                    str(n), {"name": str(n), "leads": [], "replicates": [], "behind": []}
                )
        if leader:
            nodes[str(leader)]["leads"].append(name)
        for r in replicas:
            nodes[r["name"]]["replicates"].append(name)
            if not r["current"]:  # offline, or catching up with the leader
                nodes[r["name"]]["behind"].append(name)
        streams.append(
            {
                "name": name,
                "subjects": list(info.config.subjects or []),
                "messages": st.messages,
                "bytes": st.bytes,
                "first_seq": st.first_seq,
                "last_seq": st.last_seq,
                "consumers": st.consumer_count,
                "replicas": info.config.num_replicas or 1,
                "leader": leader,
                "peers": replicas,
            }
        )
        for c in await js.consumers_info(name):
            if not c.config.durable_name:  # replays and other ephemeral readers
                continue
            pending = c.num_pending or 0
            ack_pending = c.num_ack_pending or 0
            consumers.append(
                {
                    "stream": name,
                    "name": c.name,
                    "filter": c.config.filter_subject or list(c.config.filter_subjects or []),
                    "pending": pending,
                    "ack_pending": ack_pending,
                    "lag": pending,  # not delivered yet (ack_pending: in flight)
                    "redelivered": c.num_redelivered or 0,
                    "waiting": c.num_waiting or 0,
                    "delivered_seq": c.delivered.stream_seq if c.delivered else 0,
                    "ack_floor_seq": c.ack_floor.stream_seq if c.ack_floor else 0,
                }
            )
    dlq: dict[str, Any] = {"depth": 0, "dead_lettered": 0, "retried": 0, "by_consumer": {}}
    if any(s["name"] == "DLQ" for s in streams):
        entries = await dlq_entries(js)
        waiting = [e for e in entries if not e.retries]
        dlq["dead_lettered"] = len(entries)
        dlq["retried"] = len(entries) - len(waiting)
        dlq["depth"] = len(waiting)
        by: dict[str, int] = {}
        for e in waiting:
            by[e.dead.consumer] = by.get(e.dead.consumer, 0) + 1
        dlq["by_consumer"] = by
    if not nodes and bus.nc.is_connected:  # a single server without clustering
        nodes["(standalone)"] = {
            "name": "(standalone)",
            "leads": [s["name"] for s in streams],
            "replicates": [],
            "behind": [],
        }
    return {
        "nats": {
            "url": bus.nc.connected_url.netloc if bus.nc.connected_url else None,
            "version": _version(bus),
            "connected": bus.nc.is_connected,
        },
        "nodes": list(nodes.values()),
        "streams": streams,
        "consumers": consumers,
        "dlq": dlq,
    }


def index_status(data_dir: Path) -> dict[str, Any] | None:
    """The local miner index (``<data_dir>/store``) as of its last snapshot: memories per
    namespace and bytes on disk; None when this data dir holds no index."""
    root = data_dir / "store"
    cur = root / "CURRENT"
    if not cur.exists():
        return None
    snap = root / "snapshots" / cur.read_text().strip()
    try:
        manifest = msgspec.json.decode((snap / "manifest.json").read_bytes())
    except (OSError, msgspec.DecodeError):
        return {"path": str(root), "error": "no readable snapshot manifest"}
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    counts = manifest.get("counts") or {}
    return {
        "path": str(root),
        "applied_seq": manifest.get("seq", 0),
        "memories": sum(int(v) for v in counts.values()),
        "namespaces": counts,
        "bytes_on_disk": size,
    }


# --- events as text -------------------------------------------------------------------


def _short(value: Any, limit: int = 48) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} B>"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 6:
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        text = msgspec.json.encode(value).decode()
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize(event: Event) -> str:
    """One readable line: the kind, then its own fields (``key=value``; empty and default
    values left out, long ones shortened)."""
    parts = [event.kind]
    for name in event.__struct_fields__:
        if name in _ENVELOPE:
            continue
        value = getattr(event, name)
        if value in ("", None, [], {}) or value is False:
            continue
        parts.append(f"{name}={_short(value)}")
    return " ".join(parts)


def event_json(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict: ``kind`` first, bytes as their length."""
    body: dict[str, Any] = {"kind": event.kind}
    for k, v in msgspec.structs.asdict(event).items():
        body[k] = f"<{len(v)} bytes>" if isinstance(v, bytes) else v
    return body


# --- positions (--from / --to) --------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """A place in a stream: a sequence number or a time (UTC)."""

    seq: int | None = None
    time: dt.datetime | None = None

    def passed(self, seq: int, at: float | None) -> bool:
        """Is a message at ``seq`` (stamped ``at``, epoch seconds) beyond this position?"""
        if self.seq is not None:
            return seq > self.seq
        assert self.time is not None
        return at is not None and at > self.time.timestamp()


_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_position(text: str, now: float | None = None) -> Position:
    """``123`` (a sequence), an ISO time (``2026-11-22T08:00``, UTC unless it says
    otherwise) or an age (``90s``, ``10m``, ``2h``, ``1d`` ago)."""
    text = text.strip()
    if text.isdigit():
        seq = int(text)
        if seq < 1:
            raise InputError("a sequence starts at 1")
        return Position(seq=seq)
    m = _AGO.match(text)
    if m:
        ago = float(m.group(1)) * _UNIT_S[m.group(2)]
        t = (time.time() if now is None else now) - ago
        return Position(time=dt.datetime.fromtimestamp(t, dt.UTC))
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"{text!r} is not a sequence, an ISO time or an age like 10m / 2h"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Position(time=when)


# --- the dead-letter queue ------------------------------------------------------------


@dataclass
class DlqEntry:
    """One dead letter and what operators did with it since."""

    seq: int  # on the DLQ stream
    dead: DeadLettered
    retries: list[DeadLetterRetried] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "retried" if self.retries else "dead"

    def original(self) -> Event | None:
        try:
            return decode(self.dead.original_data)
        except EventDecodeError:
            return None

    def as_json(self, full: bool = False) -> dict[str, Any]:
        d = self.dead
        out: dict[str, Any] = {
            "seq": self.seq,
            "status": self.status,
            "time": d.time,
            "consumer": d.consumer,
            "original_subject": d.original_subject,
            "stream": d.stream,
            "stream_seq": d.stream_seq,
            "deliveries": d.deliveries,
            "error_type": d.error_type,
            "error": d.error,
            "retries": [
                {
                    "attempt": r.attempt,
                    "time": r.time,
                    "msg_id": r.republished_msg_id,
                    "stream": r.republished_stream,
                    "seq": r.republished_seq,
                    "operator": r.operator,
                }
                for r in self.retries
            ],
        }
        if full:
            original = self.original()
            out["original_headers"] = d.original_headers
            out["original_bytes"] = len(d.original_data)
            out["original_event"] = event_json(original) if original is not None else None
            if original is None:
                out["original_hex"] = d.original_data[:256].hex()
        return out


async def dlq_entries(js: JetStreamContext) -> list[DlqEntry]:
    """Every dead letter on the DLQ stream, in order, with the retries recorded for it."""
    entries: dict[int, DlqEntry] = {}
    retried: list[DeadLetterRetried] = []
    async for item in replay_raw(js, "DLQ"):
        if isinstance(item.event, DeadLettered):
            entries[item.seq] = DlqEntry(item.seq, item.event)
        elif isinstance(item.event, DeadLetterRetried):
            retried.append(item.event)
    for r in retried:
        if (entry := entries.get(r.dlq_seq)) is not None:
            entry.retries.append(r)
    return list(entries.values())


async def dlq_retry(
    js: JetStreamContext, publisher: Publisher, entry: DlqEntry, operator: str = ""
) -> DeadLetterRetried:
    """Publish the dead letter's original bytes to its original subject under a fresh
    message id, then record a :class:`DeadLetterRetried`.

    The id is ``dlq-retry:<dlq seq>:<attempt>``: fresh for JetStream (the original id may
    still be in the de-duplication window), yet the same if this is run again after a
    crash between the two publishes, so the original is sent once per attempt."""
    d = entry.dead
    attempt = len(entry.retries) + 1
    msg_id = f"dlq-retry:{entry.seq}:{attempt}"
    headers = {k: v for k, v in d.original_headers.items() if not k.lower().startswith("nats-")}
    headers[HDR_MSG_ID] = msg_id
    headers[HDR_RETRY_OF] = f"DLQ:{entry.seq}"
    original = entry.original()
    if original is not None:
        headers.setdefault(HDR_KIND, original.kind)
    [ack] = await publisher.publish_raw([(d.original_subject, d.original_data, headers)])
    record = DeadLetterRetried(
        causation_id=d.event_id,
        dlq_seq=entry.seq,
        original_subject=d.original_subject,
        republished_msg_id=msg_id,
        republished_seq=ack.seq,
        republished_stream=ack.stream,
        attempt=attempt,
        operator=operator,
    )
    await publisher.publish(record)
    entry.retries.append(record)
    return record


def _version(bus: Bus) -> str | None:
    if not bus.nc.is_connected:
        return None
    v = bus.nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"
