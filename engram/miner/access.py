"""Who may read, write, list and delete (issue 9): namespaces with owners, as a projection.

A namespace is ``public`` (anyone reads) or ``private`` (its owner and the hotkeys it
granted ``read`` read it). It has an owner when a hotkey created it
(:class:`~streams.events.NamespaceCreated`); a namespace first written by an ingest is
public and has no owner (the behaviour before issue 9: ``public`` and the validators'
probe namespaces stay open to every writer). Writing an owned namespace takes its owner
or a ``write`` grant; a grant opens exactly what it says (``write`` does not read).
Deleting takes the owner, or, in a public namespace, a hotkey that ingested the memory.

The rules are applied twice, on purpose:

* at the axon, from :class:`AccessState` (an in-memory view, updated as events apply), so
  a refused request is answered at once;
* by the store projection when it applies an ``Embedded``, against the state *as of that
  point in the log*, so a write that raced a revocation is refused deterministically, on
  every replay and rebuild.

State lives in the store's sqlite (tables below, in every snapshot), changed only by
events on MEMORY, in stream order with the memories: ``NamespaceCreated``,
``AccessGranted``, ``AccessRevoked`` and ``Deleted``. ``access_log`` keeps each of them
with its outcome: who could read what, and when, without re-reading the stream.

Deletion and re-ingest: a ``Deleted`` drops the memory; an ``Embedded`` of the same
request applied after it (a redelivery of the old ingest) is a duplicate and does not
bring it back. A *new* ingest of the same content (another request id) by a hotkey that
may write stores it again: it is a new act by someone allowed to make it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.errors import InputError, short

from .limits import check_namespace

__all__ = [
    "ACCESS_SCHEMA",
    "ACCESS_TABLES",
    "AccessDenied",
    "AccessState",
    "NamespaceInfo",
    "check_hotkey",
]

Visibility = Literal["public", "private"]
VISIBILITIES = ("public", "private")
ACCESSES = ("read", "write")

ACCESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    namespace  TEXT PRIMARY KEY,
    visibility TEXT NOT NULL,
    owner      TEXT NOT NULL DEFAULT '',
    seq        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    namespace TEXT NOT NULL,
    hotkey    TEXT NOT NULL,
    access    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (namespace, hotkey, access)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ingesters (
    namespace TEXT NOT NULL,
    cid       TEXT NOT NULL,
    caller    TEXT NOT NULL,
    PRIMARY KEY (namespace, cid, caller)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS access_log (
    seq       INTEGER PRIMARY KEY,
    kind      TEXT NOT NULL,
    namespace TEXT NOT NULL,
    subject   TEXT NOT NULL DEFAULT '',
    access    TEXT NOT NULL DEFAULT '',
    by        TEXT NOT NULL DEFAULT '',
    outcome   TEXT NOT NULL,
    time      REAL NOT NULL DEFAULT 0
);
"""
#: the tables a snapshot copies besides the store's own
ACCESS_TABLES = ("namespaces", "grants", "ingesters", "access_log")


class AccessDenied(InputError):
    """An ``Embedded`` whose caller may not write its namespace at that point of the log
    (the store turns it into a refusal; see engram.miner.store)."""


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    namespace: str
    visibility: str
    owner: str = ""  # "" = no owner (first written by an ingest)
    readers: frozenset[str] = frozenset()
    writers: frozenset[str] = frozenset()
    seq: int = 0

    @property
    def private(self) -> bool:
        return self.visibility == "private"

    def can_read(self, caller: str | None) -> bool:
        if not self.private:
            return True
        return caller is not None and (caller == self.owner or caller in self.readers)

    def can_write(self, caller: str | None) -> bool:
        if not self.owner:
            return True
        return caller is not None and (caller == self.owner or caller in self.writers)

    def grants(self) -> list[dict[str, str]]:
        out = [{"hotkey": h, "access": "read"} for h in self.readers]
        out += [{"hotkey": h, "access": "write"} for h in self.writers]
        return sorted(out, key=lambda g: (g["hotkey"], g["access"]))

    def as_json(self, caller: str | None) -> dict[str, Any]:
        """``GET /namespaces/{ns}``: grants are the owner's business only."""
        return {
            "namespace": self.namespace,
            "visibility": self.visibility,
            "owner": self.owner or None,
            "grants": self.grants() if caller is not None and caller == self.owner else [],
        }


def check_hotkey(value: Any) -> str | None:
    """Why ``value`` is not an ss58 hotkey, or None."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        return "hotkey must be an ss58 address (a string)"
    import bittensor_core

    try:
        bittensor_core.ss58_decode(value)
    except Exception:  # the native library raises its own error types
        return f"hotkey {short(value, 64)} is not an ss58 address"
    return None


@dataclass
class AccessState:
    """The access tables, and a copy in memory for lock-free reads by the axon (each
    namespace's :class:`NamespaceInfo` is immutable and replaced whole)."""

    namespaces: dict[str, NamespaceInfo] = field(default_factory=dict)
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- loading ----------------------------------------------------------------------------

    def load(self, db: sqlite3.Connection, indexed: Iterable[str]) -> None:
        """Read the tables (on open); an indexed namespace with no row (a store from before
        issue 9) is public with no owner."""
        grants: dict[str, dict[str, set[str]]] = {}
        for ns, hotkey, access in db.execute("SELECT namespace, hotkey, access FROM grants"):
            grants.setdefault(ns, {"read": set(), "write": set()})[access].add(hotkey)
        out: dict[str, NamespaceInfo] = {}
        for ns, vis, owner, seq in db.execute(
            "SELECT namespace, visibility, owner, seq FROM namespaces"
        ):
            g = grants.get(ns, {"read": set(), "write": set()})
            out[ns] = NamespaceInfo(
                ns, vis, owner, frozenset(g["read"]), frozenset(g["write"]), int(seq)
            )
        for ns in indexed:
            if ns not in out:
                db.execute(
                    "INSERT OR IGNORE INTO namespaces (namespace, visibility, owner, seq)"
                    " VALUES (?, 'public', '', 0)",
                    (ns,),
                )
                out[ns] = NamespaceInfo(ns, "public")
        with self._mutex:
            self.namespaces = out

    # --- reading (lock-free) ------------------------------------------------------------------

    def info(self, namespace: str) -> NamespaceInfo | None:
        return self.namespaces.get(namespace)

    def can_read(self, namespace: str, caller: str | None) -> bool:
        """A namespace that does not exist reads as empty: anyone may ask."""
        info = self.namespaces.get(namespace)
        return info is None or info.can_read(caller)

    def can_write(self, namespace: str, caller: str | None) -> bool:
        info = self.namespaces.get(namespace)
        return info is None or info.can_write(caller)

    def readable(self, namespaces: Iterable[str], caller: str | None) -> list[str]:
        return [ns for ns in namespaces if self.can_read(ns, caller)]

    def __len__(self) -> int:
        return len(self.namespaces)

    # --- applying (inside the store's transaction, under its write lock) ------------------------

    def _set(self, info: NamespaceInfo) -> None:
        with self._mutex:
            self.namespaces = {**self.namespaces, info.namespace: info}

    @staticmethod
    def _log(db: sqlite3.Connection, seq: int, ev: Any, outcome: str, **kw: str) -> None:
        db.execute(
            "INSERT OR REPLACE INTO access_log (seq, kind, namespace, subject, access, by,"
            " outcome, time) VALUES (?,?,?,?,?,?,?,?)",
            (
                seq,
                ev.kind,
                kw.get("namespace", getattr(ev, "namespace", "")),
                kw.get("subject", ""),
                kw.get("access", ""),
                kw.get("by", ""),
                outcome,
                float(getattr(ev, "time", 0.0)),
            ),
        )

    def apply(self, db: sqlite3.Connection, seq: int, ev: Any) -> str:
        """Apply one access event; returns its outcome (``created``, ``exists``, ``granted``,
        ``revoked``, ``refused: <why>``), also written to ``access_log``."""
        info = self.namespaces.get(ev.namespace)
        if ev.kind == "NamespaceCreated":
            if info is not None:
                outcome = "exists"
            elif ev.visibility not in VISIBILITIES or check_namespace(ev.namespace) or not ev.owner:
                outcome = "refused: malformed"
            else:
                db.execute(
                    "INSERT INTO namespaces (namespace, visibility, owner, seq) VALUES (?,?,?,?)",
                    (ev.namespace, ev.visibility, ev.owner, seq),
                )
                info = NamespaceInfo(ev.namespace, ev.visibility, ev.owner, seq=seq)
                outcome = "created"
            self._log(db, seq, ev, outcome, subject=ev.owner, access=ev.visibility, by=ev.owner)
            if outcome == "created":
                assert info is not None
                self._set(info)
            return outcome
        # AccessGranted / AccessRevoked: only the owner, only read or write
        if info is None or not info.owner or ev.by != info.owner:
            outcome = "refused: not the owner"
        elif ev.access not in ACCESSES:
            outcome = "refused: malformed"
        elif ev.kind == "AccessGranted":
            db.execute(
                "INSERT OR IGNORE INTO grants (namespace, hotkey, access, seq) VALUES (?,?,?,?)",
                (ev.namespace, ev.hotkey, ev.access, seq),
            )
            outcome = "granted"
        else:
            db.execute(
                "DELETE FROM grants WHERE namespace=? AND hotkey=? AND access=?",
                (ev.namespace, ev.hotkey, ev.access),
            )
            outcome = "revoked"
        self._log(db, seq, ev, outcome, subject=ev.hotkey, access=ev.access, by=ev.by)
        if info is not None and outcome in ("granted", "revoked"):
            field_ = "readers" if ev.access == "read" else "writers"
            have: frozenset[str] = getattr(info, field_)
            new = have | {ev.hotkey} if outcome == "granted" else have - {ev.hotkey}
            self._set(_replace(info, field_, new))
        return outcome

    def check_write(self, namespace: str, caller: str) -> None:
        """Before an ``Embedded`` is applied: raise :class:`AccessDenied` unless ``caller``
        may write ``namespace`` at this point of the log."""
        info = self.namespaces.get(namespace)
        if info is not None and not info.can_write(caller or None):
            raise AccessDenied(
                f"{caller or 'an unsigned caller'} may not write namespace {short(namespace)}"
            )

    def wrote(
        self, db: sqlite3.Connection, seq: int, namespace: str, cid: str, caller: str
    ) -> None:
        """After an ``Embedded`` is stored: the namespace exists (public, no owner, when
        this is its first write) and ``caller`` is one of the memory's ingesters."""
        if namespace not in self.namespaces:
            db.execute(
                "INSERT OR IGNORE INTO namespaces (namespace, visibility, owner, seq)"
                " VALUES (?, 'public', '', ?)",
                (namespace, seq),
            )
            self._set(NamespaceInfo(namespace, "public", seq=seq))
        if caller:
            db.execute(
                "INSERT OR IGNORE INTO ingesters (namespace, cid, caller) VALUES (?,?,?)",
                (namespace, cid, caller),
            )

    @staticmethod
    def ingesters(db: sqlite3.Connection, namespace: str, cid: str) -> set[str]:
        rows = db.execute(
            "SELECT caller FROM ingesters WHERE namespace=? AND cid=?", (namespace, cid)
        )
        return {str(r[0]) for r in rows}

    def deleted(self, db: sqlite3.Connection, seq: int, ev: Any, namespaces: list[str]) -> None:
        """After a ``Deleted``: its ingesters are forgotten, the deletion logged."""
        for ns in namespaces:
            db.execute("DELETE FROM ingesters WHERE namespace=? AND cid=?", (ns, ev.cid))
        self._log(
            db,
            seq,
            ev,
            "deleted" if namespaces else "absent",
            namespace=ev.namespace or ",".join(namespaces),
            subject=ev.cid,
            by=getattr(ev, "by", ""),
        )

    @staticmethod
    def replays_deleted(db: sqlite3.Connection, ev: Any) -> bool:
        """Whether ``ev`` (an ``Embedded``) is the redelivery of an ingest whose memory was
        stored and then deleted: it must not bring the memory back."""
        if not ev.request_id:
            return False
        row = db.execute(
            "SELECT m.deleted FROM requests r JOIN memories m"
            " ON m.namespace = r.namespace AND m.cid = r.cid"
            " WHERE r.rkey=? AND r.status='stored'",
            (ev.request_key(),),
        ).fetchone()
        return row is not None and bool(row[0])

    def may_delete(self, info: NamespaceInfo | None, caller: str, ingesters: set[str]) -> bool:
        """The owner deletes anything in its namespace; in a public namespace a hotkey that
        ingested the memory deletes it too."""
        if info is not None and info.owner and caller == info.owner:
            return True
        return (info is None or not info.private) and caller in ingesters


def _replace(info: NamespaceInfo, name: str, value: frozenset[str]) -> NamespaceInfo:
    if name == "readers":
        return NamespaceInfo(
            info.namespace, info.visibility, info.owner, value, info.writers, info.seq
        )
    return NamespaceInfo(info.namespace, info.visibility, info.owner, info.readers, value, info.seq)
