"""``engram brain serve|chat``: the memory-augmented LLM runtime (engram/brain/)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from engram.config import load_settings

from . import get_settings, run_async

__all__ = ["brain_group", "register"]

_stderr = Console(stderr=True)


@click.group("brain")
def brain_group() -> None:
    """A memory-augmented LLM: chat that remembers, in Engram, across sessions."""


@brain_group.command("serve")
@click.option("--host", default=None, help="Bind address (default brain_host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default brain_port, 8095).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the OpenAI-compatible API (and /v1/memories, /api/*) until SIGINT/SIGTERM."""
    from engram.brain.server import bound_port
    from engram.brain.server import serve as serve_app
    from engram.brain.service import Brain

    s = get_settings(ctx)

    async def main() -> None:
        brain = Brain(s)
        await brain.start()
        runner = await serve_app(
            brain, host or s.brain_host, s.brain_port if port is None else port
        )
        _stderr.print(
            f"brain: http://{host or s.brain_host}:{bound_port(runner)}/v1 "
            f"(model {brain.model}; /openapi.json)"
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        swaps: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            """SIGHUP: re-read the settings; a changed model is swapped in (ModelSwapped)."""
            from engram.brain.engines import build_engine

            obj = ctx.ensure_object(dict)
            try:
                new = load_settings(obj.get("config"), data_dir=obj.get("data_dir"))
                want = (new.brain_engine, new.brain_model_path, new.brain_model_name)
                have = (s.brain_engine, s.brain_model_path, s.brain_model_name)
                if want == have:
                    _stderr.print("brain: SIGHUP, the model settings are unchanged")
                    return
                engine = await asyncio.to_thread(
                    build_engine,
                    new.brain_engine,
                    path=new.brain_model_path,
                    name=new.brain_model_name,
                    openai_url=new.brain_openai_url,
                    openai_key=new.brain_openai_key,
                    context_tokens=new.brain_context_tokens,
                )
                await brain.swap(engine)
                s.brain_engine, s.brain_model_path, s.brain_model_name = want
                _stderr.print(f"brain: now serving {engine.name}")
            except Exception as exc:  # the old model keeps serving
                _stderr.print(f"brain: swap refused: {exc}")

        def on_hup() -> None:
            task = asyncio.create_task(reload())
            swaps.add(task)
            task.add_done_callback(swaps.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await brain.stop()

    run_async(main())


@brain_group.command("chat")
@click.option("--user", default="me", show_default=True, help="Whose memory.")
@click.option("--session", default=None, help="Session id (default: a new one).")
@click.option("--max-tokens", type=int, default=None)
@click.option("--no-memory", is_flag=True, help="Neither recall nor remember.")
@click.pass_context
def chat(
    ctx: click.Context, user: str, session: str | None, max_tokens: int | None, no_memory: bool
) -> None:
    """Chat in the terminal, offline. What you say is remembered for your next session.

    Commands: /fix <answer> corrects the last answer (a lesson), /train trains the model
    on the corrections (with ENGRAM_BRAIN_TRAINER=lora) and swaps it in, /quit ends."""
    from engram.brain.service import Brain, ChatRequest
    from streams.events import FeedbackGiven

    s = get_settings(ctx)
    session_id = session or uuid.uuid4().hex[:12]

    async def main() -> None:
        brain = Brain(s)
        with _stderr.status("starting the brain (bus, embedder, model)..."):
            await brain.start()
        _stderr.print(
            f"[bold]engram brain[/] model {brain.model}, user {user}, session {session_id}; "
            "/fix <answer> corrects, /train learns the corrections, /quit ends"
        )
        history: list[dict[str, str]] = []
        last = None
        try:
            while True:
                try:
                    line = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    break
                line = line.strip()
                if not line:
                    continue
                if line in ("/quit", "/exit"):
                    break
                if line.startswith("/fix "):
                    if last is None:
                        _stderr.print("nothing to correct yet")
                        continue
                    await brain.publish(
                        FeedbackGiven(
                            completion_id=last.completion_id,
                            user=user,
                            prompt=last.prompt,
                            answer=last.answer,
                            correction=line[5:].strip(),
                        )
                    )
                    _stderr.print("noted: the next similar question gets this answer")
                    continue
                if line == "/train":
                    await _train(brain)
                    continue
                history.append({"role": "user", "content": line})
                req = ChatRequest(
                    messages=history[-8:],
                    user=user,
                    session_id=session_id,
                    write=not no_memory,
                    recall=not no_memory,
                    max_tokens=max_tokens,
                )
                prep = await brain.prepare(req)
                if prep.memories or prep.lesson:
                    _stderr.print(
                        f"[dim]({len(prep.memories)} memories"
                        f"{', a learned answer' if prep.lesson else ''})[/]"
                    )
                    for hit in prep.memories[:3]:
                        _stderr.print(f"[dim]  · {escape(hit.text[:100])}[/]")
                sys.stdout.write("brain> ")
                parts = []
                async for chunk in brain.generate(prep):
                    if chunk.finish_reason is None:
                        parts.append(chunk.text)
                        sys.stdout.write(chunk.text)
                        sys.stdout.flush()
                sys.stdout.write("\n")
                history.append({"role": "assistant", "content": "".join(parts)})
                last = brain.recent.get(prep.completion_id)
        finally:
            with _stderr.status("remembering..."):
                with contextlib.suppress(Exception):
                    await brain.settle(timeout=60)
                await brain.stop()

    with contextlib.suppress(KeyboardInterrupt):
        run_async(main())


async def _train(brain: Any) -> None:
    """Export the corrections and, with a trainer configured, train and swap in the result
    (the brain's own trainer agent runs the job), showing its progress."""
    from engram.brain.server import export_dataset, training_status

    with _stderr.status("exporting the corrections..."):
        await brain.settle(timeout=60)  # the feedback just given is in the log
        exported = await export_dataset(brain)
    job, published = await brain.request_training(exported)
    if job is None:
        why = (
            "no trainer is configured (ENGRAM_BRAIN_TRAINER=lora trains here)"
            if brain.trainer is None
            else "no corrected or well-scored answer to learn from yet"
        )
        _stderr.print(f"dataset v{exported.version} ({exported.examples} examples); {why}")
        return
    if not published:
        _stderr.print(f"dataset v{exported.version} was trained already ({job.job_id})")
        return
    status: dict[str, Any] = {}
    with _stderr.status(f"training {job.job_id}...") as shown:
        while status.get("status") not in ("swapped_in", "failed"):
            await asyncio.sleep(1.0)
            status = await training_status(brain, job.job_id) or {}
            stage = status.get("stage") or status.get("status", "queued")
            shown.update(f"training {job.job_id}: {escape(str(stage))}")
    if status["status"] == "failed":
        _stderr.print(f"[red]training failed:[/] {escape(status['failures'][-1]['error'])}")
    else:
        _stderr.print(f"trained on {exported.examples} examples; now answering as {brain.model}")


def register(main: click.Group) -> None:
    main.add_command(brain_group)
