"""Encryption at the edge (issue 9): the client encrypts a memory's text and metadata with
a key only its owner holds, and embeds the text itself, before anything leaves it.

The miner then stores ciphertext it cannot read: it receives ``raw_embedding`` (the
client's own vector), ``text`` as an opaque token, and metadata as one opaque token (plus
any keys the client chose to leave in clear, e.g. for filters). Search still works,
because the miner searches vectors, not text.

**What this does not hide: an embedding still reveals meaning.** A vector is a lossy
description of the text: whoever holds it (the miner, a validator challenging it) can
compare it with vectors of guessed texts, cluster it with others, and recover topics and
often close paraphrases (embedding inversion). Encrypting the text protects the words,
not what they are about. Keep anything whose *topic* is secret off the network.

Scheme (AEAD from ``cryptography``): AES-256-GCM with a random 96-bit nonce. The key is
HKDF-SHA256 of the owner's sr25519 private key (from a bittensor key file or keypair),
salted with a fixed label and bound to the namespace, so each namespace has its own key
and nobody without the hotkey's secret can derive it. Each token binds (as associated
data) the namespace and the field it belongs to, so a ciphertext cannot be moved to
another field or namespace unnoticed. A token is ``"engram-aead:v1:" + base64url(nonce ||
ciphertext+tag)``. The nonce is random, so the same text encrypted twice gives two tokens
and two CIDs: encrypted memories are not de-duplicated.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from streams.errors import InputError

__all__ = [
    "METADATA_KEY",
    "PREFIX",
    "DecryptError",
    "EdgeCipher",
    "encrypted_ingest",
    "is_token",
]

PREFIX = "engram-aead:v1:"
#: the metadata key holding the encrypted metadata
METADATA_KEY = "_engram_enc"
_SALT = b"engram/edge-encryption/v1"
_NONCE = 12


class DecryptError(InputError):
    """A token that is not ours, was altered, or belongs to another field or namespace."""


class _Embeds(Protocol):
    def embed_one(self, text: str) -> Any: ...


def is_token(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _private_key_of(keypair: Any) -> bytes:
    """The sr25519 private key of a bittensor keypair (what its key file holds)."""
    import bittensor_core

    data = json.loads(bittensor_core.serialized_keypair_to_keyfile_data(keypair))
    return _key_from_json(data)


def _key_from_json(data: Mapping[str, Any]) -> bytes:
    secret = data.get("privateKey") or data.get("secretSeed")
    if not isinstance(secret, str) or not secret:
        raise InputError("the key file holds no private key (privateKey or secretSeed)")
    return bytes.fromhex(secret.removeprefix("0x"))


class EdgeCipher:
    """Encrypts and decrypts one namespace's memories with the owner's key."""

    def __init__(self, key: bytes, namespace: str) -> None:
        if len(key) != 32:
            raise InputError("an edge key is 32 bytes")
        self.namespace = namespace
        self._aead = AESGCM(key)

    @classmethod
    def from_secret(cls, secret: bytes, namespace: str) -> EdgeCipher:
        """From the owner's secret key material (at least 32 bytes)."""
        if len(secret) < 32:
            raise InputError("the key material must be at least 32 bytes")
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=_SALT,
            info=b"namespace:" + namespace.encode(),
        )
        return cls(hkdf.derive(secret), namespace)

    @classmethod
    def from_keypair(cls, keypair: Any, namespace: str) -> EdgeCipher:
        """From a ``bittensor_core.Keypair`` (the owner's hotkey)."""
        return cls.from_secret(_private_key_of(keypair), namespace)

    @classmethod
    def from_keyfile(cls, path: str | os.PathLike[str], namespace: str) -> EdgeCipher:
        """From a bittensor hotkey file (JSON with ``privateKey`` or ``secretSeed``)."""
        return cls.from_secret(_key_from_json(json.loads(Path(path).read_text())), namespace)

    def _aad(self, field: str) -> bytes:
        return f"engram|{self.namespace}|{field}".encode()

    def encrypt(self, plaintext: bytes, field: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext, self._aad(field))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def decrypt(self, token: str, field: str) -> bytes:
        if not is_token(token):
            raise DecryptError(f"not an {PREFIX} token")
        body = token[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise DecryptError("the token is not base64url") from None
        if len(raw) < _NONCE + 16:
            raise DecryptError("the token is too short")
        try:
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._aad(field))
        except InvalidTag:
            raise DecryptError(
                "the token does not open with this key, field and namespace"
            ) from None

    def encrypt_text(self, text: str) -> str:
        return self.encrypt(text.encode(), "text")

    def decrypt_text(self, token: str) -> str:
        return self.decrypt(token, "text").decode()

    def encrypt_metadata(
        self, metadata: Mapping[str, Any], clear: Iterable[str] = ()
    ) -> dict[str, Any]:
        """``{METADATA_KEY: token}`` plus the keys named in ``clear`` left readable (for
        metadata filters: the miner sees those)."""
        keep = set(clear)
        secret = {k: v for k, v in metadata.items() if k not in keep}
        out = {k: v for k, v in metadata.items() if k in keep}
        blob = json.dumps(secret, sort_keys=True, separators=(",", ":")).encode()
        out[METADATA_KEY] = self.encrypt(blob, "metadata")
        return out

    def decrypt_metadata(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in metadata.items() if k != METADATA_KEY}
        token = metadata.get(METADATA_KEY)
        if token is not None:
            secret = json.loads(self.decrypt(str(token), "metadata"))
            out.update(secret)
        return out


def encrypted_ingest(
    cipher: EdgeCipher,
    embedder: _Embeds,
    text: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    clear: Iterable[str] = (),
    request_id: str | None = None,
) -> dict[str, Any]:
    """The body of an ``/IngestSynapse`` that sends no plaintext: the text embedded here
    (``raw_embedding``, unit-normalised by the embedder), the text and metadata as
    tokens. ``embedder`` is the miner's model (``engram.miner.embedder``), so queries by
    vector find it."""
    vec = embedder.embed_one(text)
    body: dict[str, Any] = {
        "raw_embedding": [float(x) for x in vec],
        "text": cipher.encrypt_text(text),
        "metadata": cipher.encrypt_metadata(dict(metadata or {}), clear),
        "namespace": cipher.namespace,
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body
