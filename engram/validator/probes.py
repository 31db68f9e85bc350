"""The private probe corpus: texts generated fresh for every round (never the same texts
twice, never shipped to miners in advance), and held-out queries near them.

Texts are short notes a user might store (a subject, an action, an object, a detail),
drawn with the OS CSPRNG from word lists written for Engram (no third-party corpus, no
licence to carry). A query is a paraphrase of one probe — some of its content words in a
new frame plus a distractor word — so it is never a text that was ingested, and its
exact top-10 over the round's probes is computed by the validator itself.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

__all__ = ["ProbeSet", "make_probes"]

_SUBJECTS = (
    "my sister",
    "the landlord",
    "our team lead",
    "the dentist",
    "grandpa",
    "the plumber",
    "a neighbour",
    "the new intern",
    "my running coach",
    "the bakery owner",
    "the pilot",
    "our accountant",
    "the gardener",
    "a museum guide",
    "the night nurse",
    "my cousin",
    "the violin teacher",
    "the ferry captain",
    "a beekeeper",
    "the librarian",
)
_ACTIONS = (
    "recommended",
    "borrowed",
    "fixed",
    "lost",
    "painted",
    "ordered",
    "returned",
    "photographed",
    "repaired",
    "measured",
    "planted",
    "cancelled",
    "booked",
    "shipped",
    "translated",
    "tasted",
    "rehearsed",
    "inspected",
    "sketched",
    "assembled",
)
_OBJECTS = (
    "a cast-iron skillet",
    "the blue bicycle",
    "an old telescope",
    "the quarterly report",
    "a sourdough starter",
    "the garden hose",
    "a train ticket to Lisbon",
    "the wool scarf",
    "a jar of plum jam",
    "the broken umbrella",
    "a chess set",
    "the kitchen tiles",
    "a paperback thriller",
    "the solar lantern",
    "a pair of hiking boots",
    "the fish tank",
    "a wedding invitation",
    "the spare car key",
    "a box of watercolours",
    "the tax form",
)
_DETAILS = (
    "on Tuesday morning",
    "before the storm",
    "after the concert",
    "near the harbour",
    "during the power cut",
    "for the school fair",
    "at the weekend market",
    "while it was snowing",
    "in the back office",
    "for twelve euros",
    "without telling anyone",
    "two days late",
    "next to the fountain",
    "at midnight",
    "for the anniversary",
    "in a hurry",
    "with a borrowed van",
    "behind the station",
    "under the old bridge",
    "after lunch",
)
_FRAMES = (
    "who {action} {obj}?",
    "what did {subject} do with {obj}",
    "remind me about {obj} and {subject}",
    "when was {obj} {action}",
    "that note about {subject} and {obj}",
)
_DISTRACTORS = ("honestly", "again", "somewhere", "quickly", "maybe", "exactly", "still")


@dataclass(frozen=True)
class ProbeSet:
    docs: tuple[str, ...]
    queries: tuple[str, ...]
    query_of: tuple[int, ...]  # the doc each query paraphrases


def _pick(options: tuple[str, ...]) -> str:
    return options[secrets.randbelow(len(options))]


def make_probes(n_docs: int, n_queries: int) -> ProbeSet:
    """``n_docs`` distinct fresh notes and ``n_queries`` held-out queries about them."""
    docs: list[str] = []
    seen: set[str] = set()
    parts: list[tuple[str, str, str]] = []
    while len(docs) < n_docs:
        subject, action, obj = _pick(_SUBJECTS), _pick(_ACTIONS), _pick(_OBJECTS)
        tag = secrets.token_hex(2)  # keeps texts unique across rounds and miners
        text = f"{subject.capitalize()} {action} {obj} {_pick(_DETAILS)} (ref {tag})."
        if text in seen:
            continue
        seen.add(text)
        docs.append(text)
        parts.append((subject, action, obj))
    queries: list[str] = []
    query_of: list[int] = []
    for _ in range(n_queries):
        i = secrets.randbelow(len(docs)) if docs else 0
        subject, action, obj = parts[i] if parts else ("", "", "")
        frame = _pick(_FRAMES)
        q = frame.format(subject=subject, action=action, obj=obj) + f" {_pick(_DISTRACTORS)}"
        queries.append(q)
        query_of.append(i)
    return ProbeSet(tuple(docs), tuple(queries), tuple(query_of))
