"""The brain's recall projection: MEMORY-stream ``Embedded`` events of ``brain.*``
namespaces folded into sqlite (FTS5 for BM25, the vectors as blobs) plus one exact dense
matrix per namespace, searched by both and fused by reciprocal rank. The dense side of the
hybrid also matches each sentence of a multi-sentence memory (best of whole and parts);
``mode="dense"`` is the plain one-vector-per-memory baseline.

Deterministic de-duplication, in stream order: a text whose normalised hash is already in
the namespace (same kind) is not added again, nor is one whose vector has cosine ≥
:data:`LINK_COSINE` with an earlier memory: both are *linked* to the earlier memory (its
``links`` count and history record them). A lesson (a correction) that repeats an earlier
lesson's prompt replaces that lesson's answer instead. ``Deleted`` removes a memory;
an ingest whose metadata names ``replaces`` retires the memory it updates. Every change is
recorded in ``history`` (the mem0-style ``/v1/memories/{id}/history``).

The state and ``last_seq`` are committed together at the end of each batch, so a restart
resumes after the last applied event and replays nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from streams.events import Deleted, Embedded, Event
from streams.projection import BatchOutcome, Projection
from streams.replay import Replayed

__all__ = [
    "LINK_COSINE",
    "NAMESPACE_PREFIX",
    "Hit",
    "RecallIndex",
    "fts_query",
    "normalise",
    "query_terms",
]

NAMESPACE_PREFIX = "brain."
#: a memory this close to an earlier one links to it instead of adding a copy
LINK_COSINE = 0.95
#: reciprocal-rank-fusion constant (Cormack et al.)
RRF_K = 60
#: candidates each retriever contributes before fusion
CANDIDATES = 50
#: a keyword match votes in the fusion only if it holds at least this share of the query's
#: content words ("minimum should match"): a match on one common word of a question
#: ("work" in "which company do I work for?") is noise that, fused, outvotes the dense
#: side's best. Chosen on generated sets of other seeds than the bench's (any value in
#: 0.6-1.0 scored the same there; 0.5 lost 0.07-0.14 of the evidence)
MIN_TERM_COVERAGE = 2 / 3

_WORD = re.compile(r"[A-Za-z0-9]+")
_STOP = frozenset(
    """a an and are as at be but by do does did for from has have had he her his how i i'm
    in is it its me my of on or our she so that the their them they this to was we were
    what when where which who whom why will with you your yours mine am can could would
    should tell about know remember""".split()
)

Vector = npt.NDArray[np.float32]


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """A memory's sentences (at most 16; short texts are one sentence)."""
    parts = [p.strip() for p in _SENTENCE.split(text) if p.strip()]
    return parts[:16] if len(text) > 80 else [text]


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()


def query_terms(text: str) -> list[str]:
    """The text's content words (lower case, in order, at most 32)."""
    words: list[str] = []
    for w in _WORD.findall(text.lower()):
        if w not in _STOP and w not in words:
            words.append(w)
    return words[:32]


def fts_query(text: str) -> str:
    """An FTS5 query OR-ing the text's content words (each quoted: no operator injection)."""
    return " OR ".join(f'"{w}"' for w in query_terms(text))


@dataclass
class Hit:
    cid: str
    text: str
    score: float
    kind: str = "turn"
    role: str = ""
    session_id: str = ""
    time: float = 0.0
    cosine: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.cid,
            "memory": self.text,
            "score": round(self.score, 6),
            "kind": self.kind,
            "role": self.role,
            "session_id": self.session_id,
            "created_at": self.time,
            "metadata": self.metadata,
        }


@dataclass
class _Space:
    """One namespace's dense matrix (rows of live memories) and their sqlite row ids."""

    rowids: list[int] = field(default_factory=list)
    matrix: Vector = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    #: the sentences of multi-sentence memories: their vectors and owners (memory row ids)
    owners: list[int] = field(default_factory=list)
    sentences: Vector = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def add(self, rowid: int, vec: Vector, sentences: Vector | None = None) -> None:
        row = vec.reshape(1, -1)
        self.matrix = row.copy() if not self.rowids else np.vstack([self.matrix, row])
        self.rowids.append(rowid)
        if sentences is not None and len(sentences):
            self.sentences = (
                sentences.copy() if not self.owners else np.vstack([self.sentences, sentences])
            )
            self.owners.extend([rowid] * len(sentences))

    def remove(self, rowid: int) -> None:
        if rowid in self.rowids:
            i = self.rowids.index(rowid)
            del self.rowids[i]
            self.matrix = np.delete(self.matrix, i, axis=0)
        if rowid in self.owners:
            keep = [i for i, o in enumerate(self.owners) if o != rowid]
            self.owners = [self.owners[i] for i in keep]
            self.sentences = self.sentences[keep]

    def scores(self, vec: Vector, sentence_aware: bool) -> npt.NDArray[np.float32]:
        """Cosine per memory (rows in ``rowids`` order); sentence-aware: the best of the
        whole memory and each of its sentences (a fact said in passing in a long turn)."""
        sims = self.matrix @ vec
        if sentence_aware and self.owners:
            at = {rowid: i for i, rowid in enumerate(self.rowids)}
            np.maximum.at(sims, [at[o] for o in self.owners], self.sentences @ vec)
        return sims


_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY,
    cid TEXT NOT NULL,
    namespace TEXT NOT NULL,
    text TEXT NOT NULL,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    session_id TEXT NOT NULL,
    time REAL NOT NULL,
    hash TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    links INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    sentences BLOB NOT NULL DEFAULT x'',
    UNIQUE (namespace, cid)
);
CREATE INDEX IF NOT EXISTS memories_hash ON memories (namespace, kind, hash);
CREATE INDEX IF NOT EXISTS memories_cid ON memories (cid);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5 (text, tokenize = 'porter unicode61');
CREATE TABLE IF NOT EXISTS history (
    cid TEXT NOT NULL,
    namespace TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    text TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_cid ON history (cid);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class RecallIndex(Projection):
    """Hybrid recall over the brain's namespaces (see the module docstring)."""

    stream: ClassVar[str] = "MEMORY"
    #: the whole stream (IngestRejected too, ignored): ``last_seq`` then reaches the
    #: stream's end, which is how a caller waits for a write to become recallable
    subjects: ClassVar[list[str] | None] = None
    threaded: ClassVar[bool] = True

    def __init__(
        self, path: str | Path, prefix: str = NAMESPACE_PREFIX, embedder: Any = None
    ) -> None:
        super().__init__()
        #: embeds the sentences of multi-sentence memories (None: whole memories only)
        self.embedder = embedder
        self._pending: dict[str, Vector] = {}
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._lock = threading.RLock()
        self.db = sqlite3.connect(str(self.path), check_same_thread=False)
        self.db.executescript(_SCHEMA)
        self._spaces: dict[str, _Space] = {}
        self.applied_events = 0

    # --- the projection -----------------------------------------------------------------

    def restore(self) -> None:
        with self._lock:
            row = self.db.execute("SELECT value FROM state WHERE key = 'last_seq'").fetchone()
            self.last_seq = int(row[0]) if row else 0
            self._spaces = {}
            for rowid, ns, blob, sent in self.db.execute(
                "SELECT id, namespace, vector, sentences FROM memories WHERE deleted = 0"
                " ORDER BY id"
            ):
                vec = np.frombuffer(blob, dtype="<f4").astype(np.float32)
                sents = np.frombuffer(sent, dtype="<f4").astype(np.float32).reshape(-1, len(vec))
                self._space(ns).add(rowid, vec, sents)

    def reset(self) -> None:
        with self._lock:
            for table in ("memories", "fts", "history", "state"):
                self.db.execute(f"DELETE FROM {table}")
            self.db.commit()
            self._spaces = {}
            self.last_seq = 0

    def apply_batch(self, items: Sequence[Replayed]) -> BatchOutcome:
        self._embed_sentences(items)
        with self._lock:
            out = super().apply_batch(items)
            self._pending.clear()
            self.db.execute(
                "INSERT OR REPLACE INTO state (key, value) VALUES ('last_seq', ?)",
                (self.last_seq,),
            )
            self.db.commit()
            return out

    def apply(self, seq: int, event: Event) -> None:
        if isinstance(event, Embedded):
            if event.namespace.startswith(self.prefix) and event.text:
                self._add(seq, event)
        elif isinstance(event, Deleted):
            for (rowid,) in self.db.execute(
                "SELECT id FROM memories WHERE cid = ? AND deleted = 0", (event.cid,)
            ).fetchall():
                self._retire(rowid, seq, event.time, "DELETE", event.reason)
        self.applied_events += 1

    def _embed_sentences(self, items: Sequence[Replayed]) -> None:
        """Embed the sentences of the batch's multi-sentence memories in one model call."""
        if self.embedder is None:
            return
        todo: list[str] = []
        for item in items:
            ev = item.event
            if isinstance(ev, Embedded) and ev.namespace.startswith(self.prefix) and ev.text:
                parts = split_sentences(ev.text)
                if len(parts) > 1:
                    todo.extend(p for p in parts if p not in self._pending)
        todo = list(dict.fromkeys(todo))
        if todo:
            for text, vec in zip(todo, self.embedder.embed(todo), strict=True):
                self._pending[text] = np.asarray(vec, dtype=np.float32)

    def _sentence_vectors(self, text: str, dim: int) -> Vector:
        parts = split_sentences(text)
        if len(parts) < 2 or self.embedder is None:
            return np.zeros((0, dim), dtype=np.float32)
        missing = [p for p in parts if p not in self._pending]
        if missing:  # not pre-embedded (a single apply): embed now
            for p, v in zip(missing, self.embedder.embed(missing), strict=True):
                self._pending[p] = np.asarray(v, dtype=np.float32)
        return np.vstack([self._pending[p] for p in parts]).astype(np.float32)

    def _space(self, namespace: str) -> _Space:
        space = self._spaces.get(namespace)
        if space is None:
            space = self._spaces[namespace] = _Space()
        return space

    def _history(
        self, cid: str, ns: str, seq: int, when: float, what: str, text: str, detail: str = ""
    ) -> None:
        self.db.execute(
            "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cid, ns, seq, when, what, text, detail),
        )

    def _retire(self, rowid: int, seq: int, when: float, what: str, detail: str) -> None:
        cid, ns, text = self.db.execute(
            "SELECT cid, namespace, text FROM memories WHERE id = ?", (rowid,)
        ).fetchone()
        self.db.execute("UPDATE memories SET deleted = 1 WHERE id = ?", (rowid,))
        self.db.execute("DELETE FROM fts WHERE rowid = ?", (rowid,))
        self._space(ns).remove(rowid)
        self._history(cid, ns, seq, when, what, text, detail)

    def _add(self, seq: int, ev: Embedded) -> None:
        ns, text = ev.namespace, str(ev.text)
        meta = dict(ev.metadata)
        kind = str(meta.get("brain_kind", "turn"))
        vec = np.frombuffer(ev.vector, dtype="<f4").astype(np.float32)
        if self.db.execute(
            "SELECT 1 FROM memories WHERE namespace = ? AND cid = ?", (ns, ev.cid)
        ).fetchone():
            return  # the same event again (a redelivered ingest): nothing new
        replaces = meta.get("replaces")
        if isinstance(replaces, str):
            for (rowid,) in self.db.execute(
                "SELECT id FROM memories WHERE namespace = ? AND cid = ? AND deleted = 0",
                (ns, replaces),
            ).fetchall():
                self._retire(rowid, seq, ev.time, "UPDATE", f"replaced by {ev.cid}")
        h = text_hash(text)
        earlier = self._earlier(ns, kind, h, vec)
        if earlier is not None:
            rowid, cid, cos = earlier
            if kind == "lesson":  # a newer correction of the same prompt wins
                old = json.loads(
                    self.db.execute(
                        "SELECT metadata FROM memories WHERE id = ?", (rowid,)
                    ).fetchone()[0]
                )
                old["answer"] = meta.get("answer", "")
                self.db.execute(
                    "UPDATE memories SET metadata = ?, links = links + 1 WHERE id = ?",
                    (json.dumps(old, sort_keys=True), rowid),
                )
                self._history(cid, ns, seq, ev.time, "UPDATE", text, f"corrected by {ev.cid}")
            else:
                self.db.execute("UPDATE memories SET links = links + 1 WHERE id = ?", (rowid,))
                self._history(cid, ns, seq, ev.time, "LINK", text, f"{ev.cid} cosine {cos:.3f}")
            return
        sents = self._sentence_vectors(text, len(vec))
        cur = self.db.execute(
            "INSERT INTO memories (cid, namespace, text, kind, role, session_id, time, hash,"
            " metadata, vector, seq, sentences) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ev.cid,
                ns,
                text,
                kind,
                str(meta.get("role", "")),
                str(meta.get("session_id", "")),
                float(meta.get("time", ev.time)),
                h,
                json.dumps(meta, sort_keys=True),
                vec.astype("<f4").tobytes(),
                seq,
                sents.astype("<f4").tobytes(),
            ),
        )
        rowid = int(cur.lastrowid or 0)
        self.db.execute("INSERT INTO fts (rowid, text) VALUES (?, ?)", (rowid, text))
        self._space(ns).add(rowid, vec, sents)
        self._history(ev.cid, ns, seq, ev.time, "ADD", text)

    def _earlier(self, ns: str, kind: str, h: str, vec: Vector) -> tuple[int, str, float] | None:
        row = self.db.execute(
            "SELECT id, cid FROM memories WHERE namespace = ? AND kind = ? AND hash = ?"
            " AND deleted = 0 ORDER BY id LIMIT 1",
            (ns, kind, h),
        ).fetchone()
        if row:
            return int(row[0]), str(row[1]), 1.0
        space = self._spaces.get(ns)
        if space is None or not space.rowids:
            return None
        sims = space.matrix @ vec
        for i in np.flatnonzero(sims >= LINK_COSINE):  # earliest first (rows in id order)
            rowid = space.rowids[int(i)]
            got = self.db.execute(
                "SELECT cid FROM memories WHERE id = ? AND kind = ?", (rowid, kind)
            ).fetchone()
            if got:
                return rowid, str(got[0]), float(sims[i])
        return None

    # --- reads (any thread) -------------------------------------------------------------

    def _hits(self, rows: list[int], scores: dict[int, float], cos: dict[int, float]) -> list[Hit]:
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        found = {
            r[0]: r
            for r in self.db.execute(
                "SELECT id, cid, text, kind, role, session_id, time, metadata FROM memories"
                f" WHERE id IN ({marks}) AND deleted = 0",
                rows,
            )
        }
        out = []
        for rowid in rows:
            r = found.get(rowid)
            if r is None:
                continue
            out.append(
                Hit(
                    cid=r[1],
                    text=r[2],
                    score=scores.get(rowid, 0.0),
                    kind=r[3],
                    role=r[4],
                    session_id=r[5],
                    time=r[6],
                    cosine=cos.get(rowid, 0.0),
                    metadata=json.loads(r[7]),
                )
            )
        return out

    def _dense(
        self, ns: str, vec: Vector, n: int, sentence_aware: bool = True
    ) -> tuple[list[int], dict[int, float]]:
        space = self._spaces.get(ns)
        if space is None or not space.rowids:
            return [], {}
        sims = space.scores(vec, sentence_aware)
        order = np.argsort(-sims, kind="stable")[:n]
        rows = [space.rowids[int(i)] for i in order]
        return rows, {space.rowids[int(i)]: float(sims[i]) for i in range(len(space.rowids))}

    def _bm25(self, ns: str, text: str, n: int, min_coverage: float = 0.0) -> list[int]:
        """BM25's ``n`` best memories, less those holding under ``min_coverage`` of the
        query's content words (counted by FTS5 itself, so stemmed alike)."""
        terms = query_terms(text)
        if not terms:
            return []
        rows = [
            int(r[0])
            for r in self.db.execute(
                "SELECT m.id FROM fts JOIN memories m ON m.id = fts.rowid WHERE fts MATCH ?"
                " AND m.namespace = ? AND m.deleted = 0 ORDER BY bm25(fts), m.id LIMIT ?",
                (fts_query(text), ns, n),
            )
        ]
        if not rows or min_coverage <= 0:
            return rows
        held = dict.fromkeys(rows, 0)
        marks = ",".join("?" * len(rows))
        for term in terms:
            for (rowid,) in self.db.execute(
                f"SELECT rowid FROM fts WHERE fts MATCH ? AND rowid IN ({marks})",
                (f'"{term}"', *rows),
            ):
                held[int(rowid)] += 1
        return [r for r in rows if held[r] >= min_coverage * len(terms) - 1e-9]

    def search(
        self,
        namespace: str,
        text: str,
        vec: Vector,
        k: int = 10,
        *,
        session_id: str = "",
        mode: str = "hybrid",
        kinds: tuple[str, ...] | None = None,
    ) -> list[Hit]:
        """The ``k`` best memories of ``namespace`` for a query: ``mode`` "hybrid" (dense and
        BM25 fused by reciprocal rank; BM25's matches vote only if they hold
        :data:`MIN_TERM_COVERAGE` of the query's content words), "dense" or "bm25". Ties
        go to the same session, then to the newer memory; texts are de-duplicated."""
        with self._lock:
            # "dense" is the plain baseline (one vector per memory); hybrid's dense side
            # also matches each sentence of a long memory
            dense_rows, cos = self._dense(namespace, vec, CANDIDATES, mode != "dense")
            lists: list[list[int]] = []
            if mode in ("hybrid", "dense"):
                lists.append(dense_rows)
            if mode == "hybrid":
                lists.append(self._bm25(namespace, text, CANDIDATES, MIN_TERM_COVERAGE))
            elif mode == "bm25":
                lists.append(self._bm25(namespace, text, CANDIDATES))
            fused: dict[int, float] = {}
            for ranked in lists:
                for rank, rowid in enumerate(ranked):
                    fused[rowid] = fused.get(rowid, 0.0) + 1.0 / (RRF_K + rank + 1)
            hits = self._hits(list(fused), fused, cos)
        # session- and time-aware: equal fused scores go to the same session, then the newer
        hits.sort(
            key=lambda h: (
                -round(h.score, 12),
                not (session_id and h.session_id == session_id),
                -h.time,
                h.cid,
            )
        )
        seen: set[str] = set()
        out = []
        for h in hits:
            key = normalise(h.text)
            if key in seen or (kinds is not None and h.kind not in kinds):
                continue
            seen.add(key)
            out.append(h)
            if len(out) >= k:
                break
        return out

    def lesson_for(self, namespace: str, vec: Vector, threshold: float) -> Hit | None:
        """The closest correction of ``namespace`` with cosine ≥ ``threshold``, if any."""
        with self._lock:
            space = self._spaces.get(namespace)
            if space is None or not space.rowids:
                return None
            rows = [
                int(r[0])
                for r in self.db.execute(
                    "SELECT id FROM memories WHERE namespace = ? AND kind = 'lesson'"
                    " AND deleted = 0",
                    (namespace,),
                )
            ]
            if not rows:
                return None
            index = {rowid: i for i, rowid in enumerate(space.rowids)}
            best, best_cos = None, threshold
            for rowid in rows:
                c = float(space.matrix[index[rowid]] @ vec)
                if c >= best_cos:
                    best, best_cos = rowid, c
            if best is None:
                return None
            return self._hits([best], {best: best_cos}, {best: best_cos})[0]

    def listing(self, namespace: str, limit: int = 100, offset: int = 0) -> list[Hit]:
        with self._lock:
            rows = [
                int(r[0])
                for r in self.db.execute(
                    "SELECT id FROM memories WHERE namespace = ? AND deleted = 0"
                    " ORDER BY id LIMIT ? OFFSET ?",
                    (namespace, limit, offset),
                )
            ]
            return self._hits(rows, {}, {})

    def get(self, cid: str) -> tuple[str, Hit] | None:
        """(namespace, memory) of a live memory."""
        with self._lock:
            row = self.db.execute(
                "SELECT id, namespace FROM memories WHERE cid = ? AND deleted = 0", (cid,)
            ).fetchone()
            if row is None:
                return None
            return str(row[1]), self._hits([int(row[0])], {}, {})[0]

    def history(self, cid: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"memory_id": r[0], "event": r[3], "memory": r[4], "time": r[2], "detail": r[5]}
                for r in self.db.execute(
                    "SELECT cid, namespace, time, event, text, detail, seq FROM history"
                    " WHERE cid = ? ORDER BY seq, rowid",
                    (cid,),
                )
            ]

    def owner(self, cid: str) -> str | None:
        """The namespace that holds (or held) ``cid``."""
        with self._lock:
            row = self.db.execute("SELECT namespace FROM memories WHERE cid = ?", (cid,)).fetchone()
            return str(row[0]) if row else None

    def count(self, namespace: str | None = None) -> int:
        with self._lock:
            if namespace is None:
                return int(
                    self.db.execute("SELECT count(*) FROM memories WHERE deleted = 0").fetchone()[0]
                )
            return int(
                self.db.execute(
                    "SELECT count(*) FROM memories WHERE namespace = ? AND deleted = 0",
                    (namespace,),
                ).fetchone()[0]
            )

    def close(self) -> None:
        with self._lock:
            self.db.close()
