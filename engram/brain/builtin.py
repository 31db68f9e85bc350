"""The built-in agents: memory writer, scorer, prompt fixer and feedback (lessons).

Memories are Engram memories: the writer publishes the turns as ``IngestRequested`` in the
user's namespace (``brain.<user>``), the same events a miner's axon publishes, so the embed
worker embeds them, a miner stores them under CIDs, and the brain's recall projection
(:mod:`engram.brain.recall`) folds them from the MEMORY stream. Request ids derive from the
completion, so a redelivered event writes nothing twice.
"""

from __future__ import annotations

import hashlib
import re

import structlog

from streams.events import (
    CompletionGenerated,
    CompletionScored,
    FeedbackGiven,
    IngestRequested,
    PromptRewriteSuggested,
)

from .agents import AgentContext, agent
from .judge import is_judge_prompt, judge_messages, judge_of, parse_verdict

__all__ = [
    "BRAIN_CALLER",
    "feedback",
    "heuristic_score",
    "judge",
    "memory_writer",
    "prompt_fixer",
    "scorer",
]

log = structlog.get_logger("engram.brain.builtin")

#: the ``caller`` of the brain's ingests (request ids are unique per caller)
BRAIN_CALLER = "brain"


def namespace_of(user: str) -> str:
    """``brain.<user>``; a user id outside ``[A-Za-z0-9_.:-]{1,57}`` is hashed."""
    if re.fullmatch(r"[A-Za-z0-9_.:-]{1,57}", user):
        return f"brain.{user}"
    return f"brain.u-{hashlib.sha256(user.encode()).hexdigest()[:40]}"


def heuristic_score(prompt: str, answer: str, finish_reason: str) -> tuple[float, list[str]]:
    """0..1 with the reasons: an empty, truncated, repetitive or echoing answer scores low."""
    score, reasons = 1.0, []
    words = answer.split()
    if not words:
        return 0.0, ["empty answer"]
    if finish_reason == "length":
        score -= 0.3
        reasons.append("cut off at max_tokens")
    if len(words) >= 8 and len(set(words)) / len(words) < 0.5:
        score -= 0.4
        reasons.append("repetitive")
    if answer.strip().lower() == prompt.strip().lower():
        score -= 0.5
        reasons.append("echoes the prompt")
    if len(words) < 2:
        score -= 0.2
        reasons.append("very short")
    return max(0.0, round(score, 3)), reasons


@agent(on=CompletionGenerated, name="memory-writer", builtin=True)
async def memory_writer(event: CompletionGenerated, ctx: AgentContext) -> None:
    if not event.write_memory or is_judge_prompt(event.prompt):
        return
    ns = namespace_of(event.user)
    turns = [("user", event.prompt)]
    if event.answer.strip():
        turns.append(("assistant", event.answer))
    await ctx.publisher.publish_many(
        IngestRequested(
            causation_id=event.event_id,
            request_id=f"{event.completion_id}:{role}",
            text=text[:8000],
            namespace=ns,
            caller=BRAIN_CALLER,
            metadata={
                "brain_kind": "turn",
                "role": role,
                "session_id": event.session_id,
                "agent_id": event.agent_id,
                "completion_id": event.completion_id,
                "time": event.time,
            },
        )
        for role, text in turns
    )


@agent(on=CompletionGenerated, name="scorer", builtin=True)
async def scorer(event: CompletionGenerated, ctx: AgentContext) -> None:
    if is_judge_prompt(event.prompt):
        return
    score, reasons = heuristic_score(event.prompt, event.answer, event.finish_reason)
    await ctx.publisher.publish(
        CompletionScored(
            causation_id=event.event_id,
            completion_id=event.completion_id,
            score=score,
            reasons=reasons,
        )
    )


@agent(on=CompletionGenerated, name="judge", builtin=True)
async def judge(event: CompletionGenerated, ctx: AgentContext) -> None:
    """The LLM judge's grade (``brain_judge``; off by default). An engine error is raised
    (retried, then dead-lettered); a reply without a score publishes nothing."""
    if ctx.brain is None or is_judge_prompt(event.prompt):
        return
    engine = await judge_of(ctx.brain)
    if engine is None:
        return
    parts = [
        chunk.text
        async for chunk in engine.generate(
            judge_messages(event.prompt, event.answer),
            max_tokens=ctx.brain.settings.brain_judge_max_tokens,
            temperature=0.0,
        )
    ]
    reply = "".join(parts).strip()
    verdict = parse_verdict(reply)
    if verdict is None:
        log.warning("the judge gave no score", completion=event.completion_id, reply=reply[:200])
        return
    score, reason = verdict
    await ctx.publisher.publish(
        CompletionScored(
            causation_id=event.event_id,
            completion_id=event.completion_id,
            score=score,
            scorer=f"judge:{engine.name}",
            reasons=[reason],
        )
    )


@agent(on=CompletionGenerated, name="prompt-fixer", builtin=True)
async def prompt_fixer(event: CompletionGenerated, ctx: AgentContext) -> None:
    if is_judge_prompt(event.prompt):
        return
    score, reasons = heuristic_score(event.prompt, event.answer, event.finish_reason)
    if score >= 0.5:
        return
    rewrite = event.prompt.strip()
    if "cut off at max_tokens" in reasons:
        rewrite += " Answer in one or two sentences."
    elif "repetitive" in reasons or "empty answer" in reasons:
        rewrite = f"Answer briefly and directly: {rewrite}"
    else:
        rewrite = f"{rewrite} Be specific."
    await ctx.publisher.publish(
        PromptRewriteSuggested(
            causation_id=event.event_id,
            completion_id=event.completion_id,
            original=event.prompt,
            rewrite=rewrite,
            reason=", ".join(reasons),
        )
    )


@agent(on=FeedbackGiven, name="feedback", builtin=True)
async def feedback(event: FeedbackGiven, ctx: AgentContext) -> None:
    """A correction becomes a lesson: the prompt, remembered with the corrected answer."""
    if not event.correction.strip() or not event.prompt.strip():
        return
    digest = hashlib.sha256(event.correction.encode()).hexdigest()[:12]
    await ctx.publisher.publish(
        IngestRequested(
            causation_id=event.event_id,
            request_id=f"{event.completion_id}:lesson:{digest}",
            text=event.prompt[:4000],
            namespace=namespace_of(event.user),
            caller=BRAIN_CALLER,
            metadata={
                "brain_kind": "lesson",
                "answer": event.correction[:2000],
                "completion_id": event.completion_id,
                "rejected": event.answer[:1000],
                "time": event.time,
            },
        )
    )
