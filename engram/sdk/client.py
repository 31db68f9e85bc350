"""``EngramClient``: the synchronous SDK, on the standard library's ``urllib`` only.

Every call runs one :data:`~engram.sdk.protocol.Op` of the shared sans-IO core
(:mod:`engram.sdk.protocol`): this module only sends HTTP requests and sleeps. It imports
no aiohttp and no numpy (vectors may still be numpy arrays: they are read with
``tolist``); ``bittensor`` is imported only when a ``hotkey`` signs a request.

Written for the predecessor Engram SDK? ``EngramClient(base_url)`` with ``ingest(text,
metadata)``, ``ingest_embedding``, ``batch_ingest_file``, ``query``, ``query_by_vector``,
``health`` and ``is_online`` work as they did: only the import line changes.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
    run_sync,
)

__all__ = ["EngramClient"]

T = TypeVar("T")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would change what a signature covers: answer it as it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _exchange(ex: Exchange) -> Reply | TransportFailure:
    req = urllib.request.Request(ex.url, data=ex.body, headers=dict(ex.headers), method=ex.method)
    try:
        with _OPENER.open(req, timeout=ex.timeout_s) as resp:
            body = resp.read()
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return Reply(resp.status, headers, body)
    except urllib.error.HTTPError as err:  # a 4xx/5xx answer is still an answer
        try:
            body = err.read()
        finally:
            err.close()
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, body)
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, TimeoutError | socket.timeout):
            return TransportFailure("timeout", f"no answer within {ex.timeout_s:g}s ({reason})")
        return TransportFailure("connect", str(reason))
    except TimeoutError as err:
        return TransportFailure("timeout", f"no answer within {ex.timeout_s:g}s ({err})")
    except (ConnectionError, http.client.HTTPException, OSError) as err:
        return TransportFailure("connect", f"{type(err).__name__}: {err}")


def _timed(ex: Exchange) -> tuple[Reply | TransportFailure, float]:
    t0 = time.monotonic()
    out = _exchange(ex)
    return out, time.monotonic() - t0


def _perform(step: Step) -> Any:
    if isinstance(step, Exchange):
        return _exchange(step)
    if isinstance(step, Sleep):
        time.sleep(step.seconds)
        return None
    if isinstance(step, Parallel):
        if not step.exchanges:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(step.exchanges))) as pool:
            return list(pool.map(_timed, step.exchanges))
    if isinstance(step, Concurrently):
        return _concurrently(step)
    raise TypeError(f"unknown step {step!r}")


def _concurrently(step: Concurrently) -> list[Any]:
    """``step.limit`` threads, each running the next operation as the last one ends."""
    out: dict[int, Any] = {}
    ops = enumerate(step.ops)
    lock = threading.Lock()
    failed = threading.Event()

    def lane() -> None:
        while not failed.is_set():
            with lock:  # the operations are made lazily, one thread at a time
                try:
                    i, op = next(ops)
                except StopIteration:
                    return
            try:
                out[i] = run_sync(op, _perform)
            except BaseException:
                failed.set()
                raise

    with ThreadPoolExecutor(max_workers=step.limit, thread_name_prefix="engram-sdk") as pool:
        lanes = [pool.submit(lane) for _ in range(step.limit)]
        for f in lanes:
            f.result()  # the first error, once every lane has stopped
    return [out[i] for i in sorted(out)]


class EngramClient(CoreView):
    """A client of one Engram miner (or several: ``base_url`` may be a list, tried in turn
    when one does not answer).

    ``hotkey`` (a bittensor keypair, a hotkey file, or a mnemonic / secret URI such as
    ``//Alice``; ``keypair`` is the predecessor's name for it) signs every request with
    btauth/1; without it requests are unsigned
    (accepted only by a miner in ``open`` mode). ``timeout`` is per HTTP request;
    ``retries`` on connection errors, timeouts and 5xx only, with backoff and the miner's
    ``Retry-After``; ``wait_s`` bounds how long ``ingest`` waits for its memory to be
    stored; ``namespace`` is the default namespace of every call."""

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

    def _run(self, op: Op[T]) -> T:
        return run_sync(op, _perform)

    # --- properties ---------------------------------------------------------------------

    @property
    def miner_url(self) -> str:  # predecessor name
        return self._core.url

    # --- discovery ----------------------------------------------------------------------

    @classmethod
    def from_subnet(
        cls,
        source: Any = None,
        *,
        netuid: int = 1,
        network: str = "finney",
        top_n: int = 5,
        probe_timeout: float = 3.0,
        **kwargs: Any,
    ) -> EngramClient:
        """A client for the live miners of a subnet: the serving miners of the chain's
        metagraph whose ``/health`` answers ``ok``, fastest first (at most ``top_n``; the
        next takes over when one stops answering).

        ``source``: a :class:`~engram.chain.base.Metagraph`, a chain adapter
        (:class:`~engram.chain.local.LocalChain`, ``BittensorChain``; read here with
        ``asyncio.run``, so not from inside a running event loop: use
        :meth:`AsyncEngramClient.from_subnet` there) or None for the bittensor network
        ``network`` / ``netuid``. Other keyword arguments go to the client."""
        metagraph = _read_metagraph(source, netuid, network)
        core = ClientCore(urls=["-"])
        urls = axon_urls(metagraph)
        live = run_sync(core.probe(urls, probe_timeout), _perform)
        where = f"subnet {metagraph.netuid} ({len(urls)} serving miners)"
        return cls(pick_live(live, top_n, where), **kwargs)

    # --- the API ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The miner's ``/health``: status, model, memories, its hotkey and auth mode."""
        return self._run(self._core.health())

    def is_online(self) -> bool:
        """True if the miner answers ``/health``."""
        return self._run(self._core.is_online())

    def stats(self) -> dict[str, Any]:
        """The miner's ``/stats``: memories per namespace, store and projection counters."""
        return self._run(self._core.stats())

    def ingest(
        self,
        text: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        wait_s: float | None = None,
    ) -> str:
        """Remember ``text``; returns its CID once it is stored (queryable).
        ``request_id`` is the idempotency key (one is made when omitted): the same id
        again is never stored twice."""
        return self._run(self._core.ingest(text, metadata, namespace, request_id, wait_s))

    def ingest_embedding(
        self,
        embedding: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        wait_s: float | None = None,
        model_version: str | None = None,
    ) -> str:
        """Store your own unit-normalised vector (the miner's dimension); returns the CID."""
        return self._run(
            self._core.ingest_embedding(
                embedding, metadata, namespace, request_id, wait_s, model_version
            )
        )

    def ingest_status(self, request_id: str, kind: str | None = None) -> dict[str, Any]:
        """Where an ingest stands: ``pending``, ``stored`` (``cid``) or ``rejected``."""
        return self._run(self._core.ingest_status(request_id, kind))

    def batch_ingest(
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
        """Ingest many items: strings, or objects with ``text`` (or ``embedding``),
        ``metadata``, ``namespace``, ``request_id``; or a JSONL file path (one such item a
        line). Sent in chunks of ``chunk_size``, up to ``concurrency`` in flight (the
        miner embeds one while the next wait in its queue: 4 in flight were ~1.3x the
        rate of one at a time on 2 cores); ``progress(done, total)`` after each chunk,
        from this client's threads (``total`` None for a file). One :class:`ItemResult`
        per item, in order."""
        return self._run(
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

    def batch_ingest_file(
        self, path: str | os.PathLike[str], return_errors: bool = False
    ) -> list[str] | tuple[list[str], list[str]]:
        """Predecessor shape of :meth:`batch_ingest` for a JSONL file: the CIDs stored
        (and, with ``return_errors``, one message per line that failed)."""
        if not Path(path).exists():
            raise FileNotFoundError(f"JSONL file not found: {path}")
        results = self.batch_ingest(path)
        cids = [r.cid for r in results if r.cid]
        errors = [
            f"line {r.line}: {r.error}" if r.line else str(r.error) for r in results if not r.ok
        ]
        return (cids, errors) if return_errors else cids

    def query(
        self,
        text: str,
        top_k: int = 10,
        *,
        namespace: str | None = None,
        filter: Mapping[str, Any] | None = None,
        include_text: bool = False,
    ) -> list[Hit]:
        """The ``top_k`` memories closest to ``text``, best first; ``filter`` is metadata
        equality; ``include_text`` fetches each hit's text too."""
        return self._run(
            self._core.query(
                text, top_k, namespace=namespace, filter=filter, include_text=include_text
            )
        )

    def query_by_vector(
        self,
        vector: Any,
        top_k: int = 10,
        *,
        namespace: str | None = None,
        filter: Mapping[str, Any] | None = None,
        include_text: bool = False,
    ) -> list[Hit]:
        """Like :meth:`query` with your own query vector."""
        return self._run(
            self._core.query_by_vector(
                vector, top_k, namespace=namespace, filter=filter, include_text=include_text
            )
        )

    def get(self, cid: str, *, namespace: str | None = None) -> Memory:
        """One memory by CID (its text, metadata and embedding)."""
        mem = self._run(self._core.get(cid, namespace))
        assert mem is not None
        return mem

    def delete(self, cid: str) -> bool:
        """Delete a memory you may delete (``DELETE /memory/{cid}``)."""
        return self._run(self._core.delete(cid))

    def list(
        self,
        namespace: str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> MemoryPage:
        """One page of a namespace's memories; pass ``next_cursor`` for the next."""
        return self._run(
            self._core.list_memories(namespace, limit=limit, cursor=cursor, filter=filter)
        )

    def create_namespace(self, namespace: str, visibility: str = "private") -> dict[str, Any]:
        """Create a namespace owned by your hotkey (``private`` or ``public``)."""
        return self._run(self._core.create_namespace(namespace, visibility))

    def grant(self, namespace: str, hotkey: str, access: str = "read") -> dict[str, Any]:
        """Give ``hotkey`` ``access`` (``read`` / ``write``) to your namespace."""
        return self._run(self._core.grant(namespace, hotkey, access))

    def revoke(self, namespace: str, hotkey: str) -> dict[str, Any]:
        """Take back a grant."""
        return self._run(self._core.revoke(namespace, hotkey))

    def ingest_image(
        self,
        image: bytes | str | os.PathLike[str],
        *,
        media_type: str | None = None,
        filename: str | None = None,
        namespace: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BlobReceipt:
        """Upload an image (bytes or a file); the miner describes and remembers it.
        ``media_type`` is read from the bytes (PNG, JPEG, GIF, WebP) when not given."""
        return self._run(
            self._core.ingest_blob(
                image,
                media_type=media_type,
                filename=filename,
                namespace=namespace,
                metadata=metadata,
            )
        )

    def ingest_pdf(
        self,
        pdf: bytes | str | os.PathLike[str],
        *,
        filename: str | None = None,
        namespace: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BlobReceipt:
        """Upload a PDF (bytes or a file); the miner extracts and remembers its text."""
        return self._run(
            self._core.ingest_blob(
                pdf,
                media_type="application/pdf",
                filename=filename,
                namespace=namespace,
                metadata=metadata,
            )
        )

    def blob(self, content_cid: str) -> bytes:
        """A blob's bytes by its content CID."""
        return self._run(self._core.blob(content_cid))

    def blob_status(self, content_cid: str) -> dict[str, Any]:
        """A blob's archive / description state and the memories made from it."""
        return self._run(self._core.blob_status(content_cid))

    def close(self) -> None:
        """Nothing to release (urllib keeps no connection); for symmetry."""

    def __enter__(self) -> EngramClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EngramClient({self.base_url!r}, timeout={self.timeout})"


def _read_metagraph(source: Any, netuid: int, network: str) -> Any:
    """A metagraph from a Metagraph, a chain adapter, or (None, or a netuid as the
    predecessor's first argument) the bittensor network."""
    if isinstance(source, int) and not isinstance(source, bool):
        source, netuid = None, source
    if source is None:
        from engram.chain.subtensor import BittensorChain

        # reading the metagraph signs nothing: any key will do
        source = BittensorChain(resolve_keypair("//EngramSDKReader"), netuid, network=network)
    if hasattr(source, "neurons"):
        return source
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(source.metagraph())
    raise RuntimeError(
        "EngramClient.from_subnet was given a chain inside a running event loop: "
        "use AsyncEngramClient.from_subnet, or pass the metagraph"
    )
