"""The recall projection on its own: real embeddings, events applied in stream order."""

from __future__ import annotations

from pathlib import Path

import pytest

from engram.brain.recall import RecallIndex, fts_query
from engram.miner.embedder import Embedder, get_embedder
from streams.events import Deleted, Embedded, Event
from streams.replay import Replayed


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return get_embedder(cache_dir=tmp_path_factory.mktemp("cache"))


class Feed:
    def __init__(self, index: RecallIndex, embedder: Embedder) -> None:
        self.index, self.embedder, self.seq = index, embedder, index.last_seq

    def event(self, event: Event) -> None:
        self.seq += 1
        out = self.index.apply_batch([Replayed(self.seq, event.subject(), event)])
        assert not out.failures, out.failures

    def memory(self, cid: str, text: str, ns: str = "brain.alice", **meta: object) -> None:
        vec = self.embedder.embed_one(text)
        self.event(
            Embedded(
                cid=cid,
                vector=vec.astype("<f4").tobytes(),
                dim=len(vec),
                text=text,
                namespace=ns,
                metadata={"brain_kind": "turn", "role": "user", **meta},
            )
        )


def test_dedup_links_hybrid_and_restart(tmp_path: Path, embedder: Embedder) -> None:
    index = RecallIndex(tmp_path / "recall.sqlite")
    feed = Feed(index, embedder)
    feed.memory("c1", "My cat is called Pixel.")
    feed.memory("c2", "my  cat is CALLED pixel.")  # the same text, normalised: linked
    feed.memory("c3", "My cat is called Pixel!")  # cosine >= 0.95: linked to c1
    feed.memory("c4", "I work as a glassblower in Murano.")
    feed.memory("c5", "The weather was grey all week.", ns="brain.bob")
    feed.memory("c6", "Public text", ns="public")  # not the brain's: ignored
    assert index.count("brain.alice") == 2 and index.count("brain.bob") == 1
    assert index.count() == 3
    assert [h["event"] for h in index.history("c1")] == ["ADD", "LINK", "LINK"]

    q = "what is my job? glassblower"
    hits = index.search("brain.alice", q, embedder.embed_one(q), 10)
    assert hits[0].cid == "c4"
    assert all(h.cid != "c5" for h in hits)  # never another user's
    # FTS5 syntax in a prompt is quoted away, never an error
    assert fts_query('" OR x) NEAR(') == '"x" OR "near"'
    assert index.search("brain.alice", '") NEAR(', embedder.embed_one("x"), 3) is not None

    # lessons: a newer correction of the same prompt replaces the answer
    feed.memory("l1", "What is the club password?", brain_kind="lesson", answer="swordfish")
    feed.memory("l2", "What is the club password?", brain_kind="lesson", answer="marlin")
    vec = embedder.embed_one("what's the club's password?")
    lesson = index.lesson_for("brain.alice", vec, 0.85)
    assert lesson is not None and lesson.metadata["answer"] == "marlin"
    assert index.lesson_for("brain.bob", vec, 0.85) is None

    feed.event(Deleted(cid="c4"))
    assert index.get("c4") is None
    assert [h["event"] for h in index.history("c4")] == ["ADD", "DELETE"]
    last = index.last_seq
    index.close()

    again = RecallIndex(tmp_path / "recall.sqlite")
    again.restore()
    assert again.last_seq == last and again.count("brain.alice") == 2
    hits = again.search("brain.alice", "cat name", embedder.embed_one("cat name"), 5)
    assert hits[0].cid == "c1"
    again.close()


def test_a_common_word_does_not_outvote_the_fact(tmp_path: Path, embedder: Embedder) -> None:
    """A keyword match on one common word of the question ("work") votes in the fusion only
    if it holds most of the question's content words, so it no longer pushes the turn that
    answers it out of the top; a match holding them all still votes."""
    index = RecallIndex(tmp_path / "recall.sqlite")
    feed = Feed(index, embedder)
    feed.memory("fact", "I started a new job as a nurse at Mercy Hospital.")
    for i, day in enumerate(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]):
        feed.memory(f"w{i}", f"Work was really busy on {day}, lots of meetings.")
        feed.memory(f"r{i}", f"I went running before work on {day} morning.")
    feed.memory("cafe", "The cafe near the office has a new espresso machine.")
    q = "Which company do I work for?"
    vec = embedder.embed_one(q)
    assert index.search("brain.alice", q, vec, 3, mode="dense")[0].cid == "fact"
    hybrid = [h.cid for h in index.search("brain.alice", q, vec, 3)]
    assert hybrid[0] == "fact", hybrid
    # every content word matched: BM25 still lifts the memory above the dense side's order
    q = "espresso office"
    vec = embedder.embed_one(q)
    assert index.search("brain.alice", q, vec, 1)[0].cid == "cafe"
    index.close()
