"""``AsyncEngramClient``: the SDK on aiohttp, the same surface as
:class:`~engram.sdk.client.EngramClient` with ``await``.

It drives the same sans-IO core (:mod:`engram.sdk.protocol`): request building, signing,
error mapping and the retry policy are shared, this module only sends requests (one
pooled ``aiohttp.ClientSession``) and sleeps with ``asyncio.sleep``. Use it as an async
context manager, or ``await client.close()``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from engram.keys import resolve_keypair

from .models import BlobReceipt, Hit, ItemResult, Memory, MemoryPage
from .protocol import (
    DEFAULT_CHUNK,
    DEFAULT_CONCURRENCY,
    ClientCore,
    Concurrently,
    CoreView,
    Exchange,
    Op,
    Parallel,
    Reply,
    RetryPolicy,
    Sleep,
    Step,
    TransportFailure,
    axon_urls,
    pick_live,
)

__all__ = ["AsyncEngramClient"]

T = TypeVar("T")


async def _exchange(http: aiohttp.ClientSession, ex: Exchange) -> Reply | TransportFailure:
    try:
        async with http.request(
            ex.method,
            URL(ex.url, encoded=True),  # signed as given: no re-quoting
            data=ex.body,
            headers=dict(ex.headers),
            timeout=aiohttp.ClientTimeout(total=ex.timeout_s),
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
    except TimeoutError:
        return TransportFailure("timeout", f"no answer within {ex.timeout_s:g}s")
    except aiohttp.ClientError as err:
        return TransportFailure("connect", f"{type(err).__name__}: {err}")
    except OSError as err:
        return TransportFailure("connect", f"{type(err).__name__}: {err}")


class AsyncEngramClient(CoreView):
    """The asynchronous client; arguments as :class:`~engram.sdk.client.EngramClient`."""

    def __init__(
        self,
        base_url: str | Sequence[str] = "http://127.0.0.1:8091",
        timeout: float = 30.0,
        namespace: str = "public",
        *,
        hotkey: Any = None,
        keypair: Any = None,
        retries: int = 3,
        wait_s: float = 30.0,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: give at least one miner URL")
        hotkey = hotkey if hotkey is not None else keypair  # ``keypair``: predecessor name
        self._core = ClientCore(
            urls=[u.rstrip("/") for u in urls],
            timeout_s=timeout,
            namespace=namespace,
            keypair=resolve_keypair(hotkey) if hotkey is not None else None,
            retry=retry or RetryPolicy(retries=retries),
            wait_s=wait_s,
        )
        self._http = session
        self._own_http = session is None

    # --- the driver ---------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
            self._own_http = True
        return self._http

    async def _timed(self, ex: Exchange) -> tuple[Reply | TransportFailure, float]:
        t0 = time.monotonic()
        out = await _exchange(self._session(), ex)
        return out, time.monotonic() - t0

    async def _perform(self, step: Step) -> Any:
        if isinstance(step, Exchange):
            return await _exchange(self._session(), step)
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, Parallel):
            return list(await asyncio.gather(*(self._timed(e) for e in step.exchanges)))
        if isinstance(step, Concurrently):
            return await self._concurrently(step)
        raise TypeError(f"unknown step {step!r}")

    async def _concurrently(self, step: Concurrently) -> list[Any]:
        """``step.limit`` tasks, each running the next operation as the last one ends; the
        first error cancels the others."""
        out: dict[int, Any] = {}
        ops = enumerate(step.ops)

        async def lane() -> None:
            for i, op in ops:  # shared: each task takes the next operation
                out[i] = await self._run(op)

        lanes = [asyncio.create_task(lane()) for _ in range(step.limit)]
        try:
            await asyncio.wait(lanes, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in lanes:
                t.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        for t in lanes:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [out[i] for i in sorted(out)]

    async def _run(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                step = op.send(await self._perform(step))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the HTTP session (if the client made it)."""
        if self._http is not None and self._own_http:
            await self._http.close()
        self._http = None

    async def __aenter__(self) -> AsyncEngramClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- discovery ----------------------------------------------------------------------

    @classmethod
    async def from_subnet(
        cls,
        source: Any = None,
        *,
        netuid: int = 1,
        network: str = "finney",
        top_n: int = 5,
        probe_timeout: float = 3.0,
        **kwargs: Any,
    ) -> AsyncEngramClient:
        """As :meth:`EngramClient.from_subnet`; ``source`` is awaited in this loop."""
        if isinstance(source, int) and not isinstance(source, bool):
            source, netuid = None, source  # the predecessor's from_subnet(netuid)
        if source is None:
            from engram.chain.subtensor import BittensorChain

            source = BittensorChain(resolve_keypair("//EngramSDKReader"), netuid, network=network)
        metagraph = source if hasattr(source, "neurons") else await source.metagraph()
        urls = axon_urls(metagraph)
        client = cls(urls or ["-"], **kwargs)
        live = await client._run(client._core.probe(urls, probe_timeout))
        where = f"subnet {metagraph.netuid} ({len(urls)} serving miners)"
        try:
            client._core.urls = pick_live(live, top_n, where)
        except BaseException:
            await client.close()
            raise
        return client

    # --- the API (see EngramClient for each call) ---------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self._run(self._core.health())

    async def is_online(self) -> bool:
        return await self._run(self._core.is_online())

    async def stats(self) -> dict[str, Any]:
        return await self._run(self._core.stats())

    async def ingest(
        self,
        text: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        wait_s: float | None = None,
    ) -> str:
        return await self._run(self._core.ingest(text, metadata, namespace, request_id, wait_s))

    async def ingest_embedding(
        self,
        embedding: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        wait_s: float | None = None,
        model_version: str | None = None,
    ) -> str:
        return await self._run(
            self._core.ingest_embedding(
                embedding, metadata, namespace, request_id, wait_s, model_version
            )
        )

    async def ingest_status(self, request_id: str, kind: str | None = None) -> dict[str, Any]:
        return await self._run(self._core.ingest_status(request_id, kind))

    async def batch_ingest(
        self,
        items: Iterable[Any] | str | os.PathLike[str],
        *,
        namespace: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        wait: bool = True,
        timeout_s: float = 60.0,
        progress: Callable[[int, int | None], None] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> list[ItemResult]:
        return await self._run(
            self._core.batch_ingest(
                items,
                namespace=namespace,
                chunk_size=chunk_size,
                wait=wait,
                timeout_s=timeout_s,
                progress=progress,
                concurrency=concurrency,
            )
        )

    async def query(
        self,
        text: str,
        top_k: int = 10,
        *,
        namespace: str | None = None,
        filter: Mapping[str, Any] | None = None,
        include_text: bool = False,
    ) -> list[Hit]:
        return await self._run(
            self._core.query(
                text, top_k, namespace=namespace, filter=filter, include_text=include_text
            )
        )

    async def query_by_vector(
        self,
        vector: Any,
        top_k: int = 10,
        *,
        namespace: str | None = None,
        filter: Mapping[str, Any] | None = None,
        include_text: bool = False,
    ) -> list[Hit]:
        return await self._run(
            self._core.query_by_vector(
                vector, top_k, namespace=namespace, filter=filter, include_text=include_text
            )
        )

    async def get(self, cid: str, *, namespace: str | None = None) -> Memory:
        mem = await self._run(self._core.get(cid, namespace))
        assert mem is not None
        return mem

    async def delete(self, cid: str) -> bool:
        return await self._run(self._core.delete(cid))

    async def list(
        self,
        namespace: str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> MemoryPage:
        return await self._run(
            self._core.list_memories(namespace, limit=limit, cursor=cursor, filter=filter)
        )

    async def create_namespace(self, namespace: str, visibility: str = "private") -> dict[str, Any]:
        return await self._run(self._core.create_namespace(namespace, visibility))

    async def grant(self, namespace: str, hotkey: str, access: str = "read") -> dict[str, Any]:
        return await self._run(self._core.grant(namespace, hotkey, access))

    async def revoke(self, namespace: str, hotkey: str) -> dict[str, Any]:
        return await self._run(self._core.revoke(namespace, hotkey))

    async def ingest_image(
        self,
        image: bytes | str | os.PathLike[str],
        *,
        media_type: str | None = None,
        filename: str | None = None,
        namespace: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BlobReceipt:
        return await self._run(
            self._core.ingest_blob(
                image,
                media_type=media_type,
                filename=filename,
                namespace=namespace,
                metadata=metadata,
            )
        )

    async def ingest_pdf(
        self,
        pdf: bytes | str | os.PathLike[str],
        *,
        filename: str | None = None,
        namespace: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BlobReceipt:
        return await self._run(
            self._core.ingest_blob(
                pdf,
                media_type="application/pdf",
                filename=filename,
                namespace=namespace,
                metadata=metadata,
            )
        )

    async def blob(self, content_cid: str) -> bytes:
        return await self._run(self._core.blob(content_cid))

    async def blob_status(self, content_cid: str) -> dict[str, Any]:
        return await self._run(self._core.blob_status(content_cid))

    def __repr__(self) -> str:
        return f"AsyncEngramClient({self.base_url!r}, timeout={self.timeout})"
