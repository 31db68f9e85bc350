"""The LLM judge: a second engine that grades each completion (``brain_judge``).

The ``judge`` agent (:mod:`engram.brain.builtin`) asks the judge, at temperature 0, to grade
the answer to the prompt from 0 to 10, parses the verdict (``Score: 7/10 - reason``, ``8 out
of 10``, ``80%`` or a JSON ``{"score": .., "reason": ..}``) and publishes
``CompletionScored(scorer="judge:<model>")`` beside the heuristic scorer's. A reply without a
score publishes nothing (no score is invented); a transport error is raised, so the agent
runner retries it and dead-letters it after ``worker_max_deliver`` deliveries.

The judge is an :class:`~engram.brain.engines.Engine` (``llama``: a local GGUF; ``openai``:
any OpenAI-compatible endpoint), built once per brain on first use and closed when the brain
stops. Its request starts with :data:`JUDGE_MARKER`: if the judge is this very brain over
HTTP, the judge's own completions come back as ``CompletionGenerated`` events, and the
built-in agents skip them (no judging of judging, no memory of it).
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from typing import Any

import structlog

from engram.config import Settings

from .engines import Engine, Message, build_engine

__all__ = [
    "JUDGE_MARKER",
    "close_judge",
    "is_judge_prompt",
    "judge_messages",
    "judge_of",
    "parse_verdict",
]

log = structlog.get_logger("engram.brain.judge")

#: the first line of every judge request (the built-in agents ignore such prompts)
JUDGE_MARKER = "[engram-judge]"
#: most characters of the judge's reason kept in the event
REASON_CHARS = 300
#: most characters of the prompt and of the answer shown to the judge
SHOWN_CHARS = 2000

SYSTEM = (
    "You are a strict grader. Grade how well the answer answers the question, from 0 "
    "(wrong or useless) to 10 (correct and helpful). Reply with one line: "
    "Score: N/10 - reason."
)
#: worked examples: small models follow a pattern far better than an instruction
SHOTS = (
    ("What is 2 + 2?", "2 + 2 is 4.", "Score: 10/10 - correct and direct."),
    (
        "What colour is the sky on a clear day?",
        "Bananas are yellow.",
        "Score: 1/10 - does not answer the question.",
    ),
)


def is_judge_prompt(prompt: str) -> bool:
    return prompt.lstrip().startswith(JUDGE_MARKER)


def _case(prompt: str, answer: str) -> str:
    return f"{JUDGE_MARKER}\nQuestion: {prompt[:SHOWN_CHARS]}\nAnswer: {answer[:SHOWN_CHARS]}"


def judge_messages(prompt: str, answer: str) -> list[Message]:
    """The judge's conversation: the instruction, two graded examples, then the case."""
    messages: list[Message] = [{"role": "system", "content": SYSTEM}]
    for q, a, verdict in SHOTS:
        messages.append({"role": "user", "content": _case(q, a)})
        messages.append({"role": "assistant", "content": verdict})
    messages.append({"role": "user", "content": _case(prompt, answer)})
    return messages


_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE = re.compile(
    rf"(?:score|rating|grade)\s*(?:is|of)?\s*[:=]?\s*\**\s*{_NUMBER}\s*"
    rf"(?:(?:/|out\s+of)\s*{_NUMBER}|(%))?",
    re.IGNORECASE,
)
_FRACTION = re.compile(rf"{_NUMBER}\s*(?:/|out\s+of)\s*{_NUMBER}", re.IGNORECASE)
_PERCENT = re.compile(rf"{_NUMBER}\s*%")
_LEAD = re.compile(r"^[\s\-\u2013\u2014:,.;)*]+")


def _scaled(value: float, scale: float) -> float | None:
    if scale <= 0 or not 0 <= value <= scale:
        return None
    return round(value / scale, 4)


def _reason(text: str, end: int) -> str:
    rest = _LEAD.sub("", text[end:]).strip()
    return (rest or text.strip())[:REASON_CHARS]


def _from_json(text: str) -> tuple[float, str] | None:
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        raw = obj.get("score") if isinstance(obj, dict) else None
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        # asked for 0..10; a fraction such as 0.8 is read as already on 0..1
        scale = 1.0 if isinstance(raw, float | str) and 0 < value < 1 else 10.0
        score = _scaled(value, scale)
        if score is not None:
            reason = str(obj.get("reason") or obj.get("explanation") or "").strip()
            return score, (reason or text.strip())[:REASON_CHARS]
    return None


def parse_verdict(text: str) -> tuple[float, str] | None:
    """The judge's score on 0..1 and its reason, or None when the reply holds no score."""
    found = _from_json(text)
    if found is not None:
        return found
    for m in _SCORE.finditer(text):
        value = float(m.group(1))
        scale = 100.0 if m.group(3) else float(m.group(2)) if m.group(2) else 10.0
        score = _scaled(value, scale)
        if score is not None:
            return score, _reason(text, m.end())
    for pattern in (_FRACTION, _PERCENT):
        for m in pattern.finditer(text):
            scale = float(m.group(2)) if pattern is _FRACTION else 100.0
            score = _scaled(float(m.group(1)), scale)
            if score is not None:
                return score, _reason(text, m.end())
    return None


def build_judge(settings: Settings) -> Engine:
    """The judge engine of ``settings`` (``brain_judge`` must not be empty)."""
    s = settings
    if s.brain_judge == "llama":
        return build_engine(
            "llama",
            path=s.brain_judge_path,
            name=s.brain_judge_model,
            context_tokens=s.brain_context_tokens,
        )
    return build_engine(
        "openai",
        name=s.brain_judge_model or s.brain_model_name,
        openai_url=s.brain_judge_url or s.brain_openai_url,
        openai_key=s.brain_judge_key or s.brain_openai_key,
    )


# one judge per brain, built on first use (loading a model per event would be absurd)
_judges: weakref.WeakKeyDictionary[Any, Engine] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


async def judge_of(brain: Any) -> Engine | None:
    """The brain's judge (built once), or None when ``brain_judge`` is off."""
    settings: Settings = brain.settings
    if not settings.brain_judge:
        return None
    lock = _locks.setdefault(brain, asyncio.Lock())
    async with lock:
        engine = _judges.get(brain)
        if engine is None:
            engine = await asyncio.to_thread(build_judge, settings)
            _judges[brain] = engine
            log.info("judge ready", model=engine.name, engine=engine.kind)
        return engine


async def close_judge(brain: Any) -> None:
    """Close the brain's judge, if it was built (the brain calls it on stop)."""
    engine = _judges.pop(brain, None)
    if engine is not None:
        await engine.close()
