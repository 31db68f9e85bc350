"""The Arweave archiver: ``BlobReceived`` → the bytes in a signed Arweave transaction →
``BlobArchived`` (or, after its attempts, ``BlobArchiveFailed``).

Signing uses pyarweave (GPL-2.0-or-later, the optional extra ``engram[arweave]``): a JWK
wallet from a file, a format-2 transaction with the bytes inline, or, past
:data:`CHUNK_THRESHOLD`, the data root only and the bytes as chunks posted to ``/chunk``.
Talking to the gateway (posting, status, reading back) is plain HTTP here: pyarweave's
``Transaction`` makes its own default ``Peer()``, so the gateway is set on the wallet and
on each transaction, and its ``send()`` was refused (400) by a local gateway that took the
transaction's ``json_data`` posted as JSON to ``/tx``.

Idempotent: the tx id is recorded in the KV (``<hex>.arweave``) as soon as it is signed,
before it is posted. A redelivered ``BlobReceived`` (the worker was killed mid-upload)
asks the gateway for that id and, if it has it, only waits for its confirmation; it signs
a new transaction only when the gateway never received the first. A blob already archived
is announced again (same message id: JetStream drops the copy) and never re-uploaded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from streams.errors import EngramError, InputError, Unavailable, short
from streams.events import BlobArchived, BlobArchiveFailed, BlobReceived
from streams.publisher import Publisher
from streams.topology import ConsumerSpec
from streams.worker import Delivery, Worker

from .store import ArchiveState, BlobStore
from .workers import DEFAULT_BACKOFF_S, blob_worker

__all__ = [
    "ARCHIVE_CONSUMER",
    "CHUNK_THRESHOLD",
    "ArchiveHandler",
    "ArweaveUnavailable",
    "Gateway",
    "GatewayRefused",
    "load_wallet",
    "make_archive_worker",
    "sign_transaction",
]

log = structlog.get_logger("engram.blobs.arweave")

#: Bytes above this go as chunks (``POST /chunk``) after a transaction that carries only
#: the data root; below, inline in the transaction.
CHUNK_THRESHOLD = 256 * 1024
#: What an arlocal wallet is minted on start (winston): plenty for a devnet's uploads.
LOCAL_MINT_WINSTON = 10**15

ARCHIVE_CONSUMER = ConsumerSpec(
    "blob-archiver",
    "BLOBS",
    ("engram.blob.received",),
    ack_wait_s=60.0,
    max_ack_pending=64,
    description="BlobReceived -> an Arweave transaction -> BlobArchived / BlobArchiveFailed",
)


class ArweaveUnavailable(Unavailable):
    """The gateway did not answer or answered 5xx; the same call may succeed later."""


class GatewayRefused(EngramError):
    """The gateway refused the transaction (4xx): the status and its answer."""


class ArweaveMissing(InputError):
    """pyarweave is not installed (``pip install 'engram[arweave]'``)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Gateway:
    """An Arweave gateway over HTTP (a real one, or arlocal)."""

    url: str
    timeout_s: float = 30.0
    _http: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _call(
        self, method: str, path: str, *, json_body: Any = None, data: str | None = None
    ) -> tuple[int, bytes]:
        http = await self._session()
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with http.request(
                method, f"{self.url}/{path}", json=json_body, data=data, headers=headers
            ) as r:
                body = await r.read()
                if r.status >= 500 or r.status == 429:
                    raise ArweaveUnavailable(
                        f"gateway {self.url} answered {r.status} to {method} /{path.split('/')[0]}"
                    )
                return r.status, body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ArweaveUnavailable(f"gateway {self.url} unreachable: {exc!r}") from exc

    async def info(self) -> dict[str, Any]:
        status, body = await self._call("GET", "info")
        if status != 200:
            raise ArweaveUnavailable(f"gateway {self.url}: /info answered {status}")
        out: dict[str, Any] = json.loads(body)
        return out

    async def status(self, tx_id: str) -> str | None:
        """``confirmed`` (mined), ``pending`` (received, not mined) or None (unknown)."""
        status, _ = await self._call("GET", f"tx/{tx_id}/status")
        if status == 200:
            return "confirmed"
        if status == 202:
            return "pending"
        return None

    async def post_tx(self, json_data: str) -> None:
        status, body = await self._call("POST", "tx", data=json_data)
        if status not in (200, 202, 208):  # 208: already received
            raise GatewayRefused(f"gateway refused the transaction: {status} {short(body, 200)}")

    async def post_chunk(self, chunk: dict[str, Any]) -> None:
        status, body = await self._call("POST", "chunk", json_body=chunk)
        if status not in (200, 202, 208):
            raise GatewayRefused(f"gateway refused a chunk: {status} {short(body, 200)}")

    async def fetch(self, tx_id: str) -> bytes | None:
        """The bytes of ``tx_id`` (None if the gateway does not know it)."""
        status, body = await self._call("GET", tx_id)
        if status == 404:
            return None
        if status != 200:
            raise ArweaveUnavailable(f"gateway {self.url}: GET /{tx_id} answered {status}")
        return body

    async def find(self, content_cid: str) -> list[str]:
        """The ids of transactions tagged ``Content-Cid: content_cid`` (GraphQL)."""
        query = (
            'query($cid: [String!]!) { transactions(tags: [{name: "Content-Cid", '
            "values: $cid}]) { edges { node { id } } } }"
        )
        status, body = await self._call(
            "POST", "graphql", json_body={"query": query, "variables": {"cid": [content_cid]}}
        )
        if status != 200:
            raise ArweaveUnavailable(f"gateway {self.url}: /graphql answered {status}")
        edges = json.loads(body).get("data", {}).get("transactions", {}).get("edges", [])
        return [e["node"]["id"] for e in edges]

    # arlocal only: fund a wallet, mine the pending transactions into a block
    async def mint(self, address: str, winston: int = LOCAL_MINT_WINSTON) -> None:
        status, _ = await self._call("GET", f"mint/{address}/{winston}")
        if status != 200:
            raise ArweaveUnavailable(f"gateway {self.url}: /mint answered {status}")

    async def mine(self) -> None:
        status, _ = await self._call("GET", "mine")
        if status != 200:
            raise ArweaveUnavailable(f"gateway {self.url}: /mine answered {status}")


def load_wallet(path: Path, *, create: bool) -> Any:
    """The JWK wallet in ``path`` (pyarweave ``Wallet``); generated (RSA-4096, 0600) when
    absent and ``create`` (a local gateway's wallet, funded by minting)."""
    try:
        from ar.wallet import Wallet
    except ImportError:
        raise ArweaveMissing(
            "archiving on Arweave needs pyarweave: pip install 'engram[arweave]' (GPL-2.0+)"
        ) from None
    if not path.exists():
        if not create:
            raise InputError(f"arweave_wallet_file {path} does not exist")
        from Crypto.PublicKey import RSA
        from jose import jwk

        key = RSA.generate(4096)
        data = jwk.RSAKey(key.export_key(), jwk.ALGORITHMS.RS256).to_dict()
        data = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in data.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        log.info("generated an Arweave wallet", path=str(path))
    return Wallet(jwk_file=str(path))


@dataclass(frozen=True)
class SignedTx:
    id: str
    json_data: str
    chunks: list[dict[str, Any]]


def sign_transaction(wallet: Any, gateway_url: str, data: bytes, tags: dict[str, str]) -> SignedTx:
    """A signed format-2 transaction for ``data`` (blocking: it asks the gateway for the
    anchor and the price). Large data: the transaction holds the data root; the chunks
    are returned to be posted after it."""
    from ar.transaction import Transaction

    wallet.api_url = gateway_url  # the anchor is read through the wallet's own peer
    if len(data) <= CHUNK_THRESHOLD:
        tx = Transaction(wallet, data=data)
        tx.api_url = gateway_url  # ...and the price through the transaction's
        for name, value in tags.items():
            tx.add_tag(name, value)
        tx.sign()
        return SignedTx(str(tx.id), tx.json_data, [])
    with tempfile.NamedTemporaryFile(prefix="engram-arweave-") as f:
        f.write(data)
        f.flush()
        f.seek(0)
        tx = Transaction(wallet, file_handler=f, file_path=f.name)
        tx.api_url = gateway_url
        for name, value in tags.items():
            tx.add_tag(name, value)
        tx.sign()  # prepares the chunks and the data root
        chunks = [tx.get_chunk(i) for i in range(len(tx.chunks["chunks"]))]
        for c in chunks:
            for k, v in list(c.items()):
                if isinstance(v, bytes):
                    c[k] = v.decode()
        return SignedTx(str(tx.id), tx.json_data, chunks)


@dataclass
class ArchiveHandler:
    store: BlobStore
    publisher: Publisher
    gateway: Gateway
    wallet_path: Path
    producer: str = ""
    local: bool = False  # arlocal: mine a block after each upload
    max_attempts: int = 5
    confirm_timeout_s: float = 300.0
    confirm_poll_s: float = 2.0
    archived: int = 0
    failed: int = 0
    _wallet: Any = field(default=None, init=False, repr=False)
    _funded: bool = field(default=False, init=False)

    async def wallet(self) -> Any:
        """The wallet, loaded on first use (generated and minted on a local gateway)."""
        if self._wallet is None:
            self._wallet = await asyncio.to_thread(load_wallet, self.wallet_path, create=self.local)
        if self.local and not self._funded:
            await self.gateway.mint(self._wallet.address)
            self._funded = True
        return self._wallet

    async def __call__(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            ev = d.event
            if not isinstance(ev, BlobReceived):
                d.poison(f"the archiver does not handle {type(ev).__name__} events")
                continue
            await self._one(d, ev)

    async def _one(self, d: Delivery, ev: BlobReceived) -> None:
        state = await self.store.archive(ev.content_cid)
        if state is not None and state.state == "archived" and state.arweave_tx:
            await self._announce(ev, state.arweave_tx)  # de-duplicated by its message id
            return
        if state is not None and state.state == "failed":
            return
        try:
            tx_id = await self._archive(ev, state, d.num_delivered)
        except asyncio.CancelledError:
            raise
        except InputError as exc:  # e.g. pyarweave missing, the bytes gone: no retry helps
            await self._give_up(d, ev, state, str(exc))
            return
        except Exception as exc:
            if d.num_delivered >= self.max_attempts:
                await self._give_up(d, ev, state, f"{type(exc).__name__}: {exc}")
                return
            log.info(
                "archive attempt failed; will retry",
                content_cid=ev.content_cid,
                attempt=d.num_delivered,
                error=repr(exc),
            )
            d.retry(exc)
            return
        await self.store.set_archive(
            ev.content_cid,
            ArchiveState(
                state="archived",
                arweave_tx=tx_id,
                gateway=self.gateway.url,
                attempts=d.num_delivered,
            ),
        )
        await self._announce(ev, tx_id)
        self.archived += 1

    async def _announce(self, ev: BlobReceived, tx_id: str) -> None:
        await self.publisher.publish(
            BlobArchived(
                content_cid=ev.content_cid,
                arweave_tx=tx_id,
                gateway=self.gateway.url,
                producer=self.producer,
                causation_id=ev.event_id,
            )
        )

    async def _give_up(
        self, d: Delivery, ev: BlobReceived, state: ArchiveState | None, reason: str
    ) -> None:
        reason = reason[:500]
        await self.store.set_archive(
            ev.content_cid,
            ArchiveState(
                state="failed",
                arweave_tx=state.arweave_tx if state is not None else None,
                gateway=self.gateway.url,
                attempts=d.num_delivered,
                reason=reason,
            ),
        )
        await self.publisher.publish(
            BlobArchiveFailed(
                content_cid=ev.content_cid,
                reason=reason,
                attempts=d.num_delivered,
                producer=self.producer,
                causation_id=ev.event_id,
            )
        )
        self.failed += 1
        log.warning("archive failed", content_cid=ev.content_cid, reason=reason)
        # the original goes to the dead-letter stream too: an operator can replay it
        d.poison(f"archive failed after {d.num_delivered} attempt(s): {reason}")

    async def _archive(self, ev: BlobReceived, state: ArchiveState | None, attempt: int) -> str:
        cid = ev.content_cid
        if state is not None and state.arweave_tx:
            if await self.gateway.status(state.arweave_tx) is not None:
                # signed and posted before a restart: wait for it, never upload twice
                await self._confirm(state.arweave_tx)
                return state.arweave_tx
        found = await self.gateway.find(cid)
        if found:  # on the gateway already (e.g. the KV was lost): adopt it
            await self._confirm(found[0])
            return found[0]
        data = await self.store.get(cid)
        if data is None:
            raise InputError(f"the bytes of {cid} are missing from the Object Store")
        if "sha256:" + hashlib.sha256(data).hexdigest() != cid:
            raise InputError(f"the Object Store holds other bytes under {cid}")
        tags = {"Content-Type": ev.media_type, "Content-Cid": cid, "App-Name": "Engram"}
        wallet = await self.wallet()
        signed = await asyncio.to_thread(sign_transaction, wallet, self.gateway.url, data, tags)
        # recorded before it is posted: a restart finds it instead of uploading again
        await self.store.set_archive(
            cid,
            ArchiveState(
                state="signed", arweave_tx=signed.id, gateway=self.gateway.url, attempts=attempt
            ),
        )
        await self.gateway.post_tx(signed.json_data)
        for chunk in signed.chunks:
            await self.gateway.post_chunk(chunk)
        log.info("posted to arweave", content_cid=cid, tx=signed.id, chunks=len(signed.chunks))
        await self._confirm(signed.id)
        return signed.id

    async def _confirm(self, tx_id: str) -> None:
        """Wait until the gateway reports ``tx_id`` mined (arlocal: mine a block first)."""
        deadline = time.monotonic() + self.confirm_timeout_s
        while True:
            if self.local:
                await self.gateway.mine()
            status = await self.gateway.status(tx_id)
            if status == "confirmed":
                return
            if time.monotonic() >= deadline:
                raise ArweaveUnavailable(
                    f"transaction {tx_id} not confirmed within {self.confirm_timeout_s} s "
                    f"(gateway says {status or 'unknown'})"
                )
            await asyncio.sleep(self.confirm_poll_s)


def make_archive_worker(
    js: Any,
    handler: ArchiveHandler,
    publisher: Publisher,
    *,
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
    replicas: int = 1,
) -> Worker:
    return blob_worker(
        js, ARCHIVE_CONSUMER, handler, publisher, backoff_s=backoff_s, replicas=replicas
    )
