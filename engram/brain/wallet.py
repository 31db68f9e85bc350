"""Wallet-signed sessions: sign a server nonce, get a short-lived session token.

1. ``POST /v1/auth/nonce {"address", "scheme"}`` → a one-time message to sign
   (``engram-brain sign-in`` + address + nonce + expiry).
2. ``POST /v1/auth/verify {"address", "scheme", "nonce", "signature"}`` → ``{"token"}``.

Schemes: ``solana`` (ed25519; the address is the base58 public key, the signature base58,
verified with PyNaCl) and ``btauth`` (a Bittensor hotkey, sr25519; ss58 address, hex
signature, as btauth/1 signs). A nonce is used once: a replay is refused. Tokens are
HMAC-SHA256-signed with a per-process secret and expire after ``brain_token_ttl_s``.

Gated features ask a :class:`BalanceChecker`: :class:`SolanaRpcBalance` asks a Solana
JSON-RPC node (``getBalance``), :class:`LocalBalance` holds balances in memory (tests, dev).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from streams.errors import InputError, Unavailable

__all__ = [
    "AuthError",
    "BalanceChecker",
    "LocalBalance",
    "Sessions",
    "SolanaRpcBalance",
    "sign_in_message",
]

NONCE_TTL_S = 300.0
SCHEMES = ("solana", "btauth")


class AuthError(InputError):
    """A sign-in or token was refused (bad signature, replayed or unknown nonce, expired)."""


def sign_in_message(address: str, nonce: str, expires: int) -> bytes:
    return f"engram-brain sign-in\naddress: {address}\nnonce: {nonce}\nexpires: {expires}".encode()


def _verify_solana(address: str, message: bytes, signature: str) -> None:
    import base58
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        key = base58.b58decode(address)
        sig = base58.b58decode(signature)
    except ValueError:
        raise AuthError("address and signature must be base58") from None
    if len(key) != 32 or len(sig) != 64:
        raise AuthError("a Solana address is 32 bytes and a signature 64 (base58)")
    try:
        VerifyKey(key).verify(message, sig)
    except BadSignatureError:
        raise AuthError("the signature does not verify") from None


def _verify_btauth(address: str, message: bytes, signature: str) -> None:
    import bittensor_core

    try:
        sig = bytes.fromhex(signature.removeprefix("0x"))
        key = bittensor_core.Keypair(ss58_address=address)
    except Exception:
        raise AuthError("btauth: an ss58 address and a hex sr25519 signature") from None
    if not key.verify(message, sig):
        raise AuthError("the signature does not verify")


@dataclass
class Sessions:
    ttl_s: float = 900.0
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _nonces: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    _used: dict[str, float] = field(default_factory=dict)

    def issue_nonce(self, address: str, scheme: str) -> dict[str, object]:
        if scheme not in SCHEMES:
            raise AuthError(f"scheme must be one of {', '.join(SCHEMES)}")
        if not isinstance(address, str) or not 32 <= len(address) <= 64:
            raise AuthError("address: a base58 (solana) or ss58 (btauth) address")
        now = time.time()
        for n, (_, _, exp) in list(self._nonces.items()):
            if exp < now:
                del self._nonces[n]
        nonce = secrets.token_hex(16)
        expires = int(now + NONCE_TTL_S)
        self._nonces[nonce] = (address, scheme, expires)
        return {
            "nonce": nonce,
            "expires": expires,
            "message": sign_in_message(address, nonce, expires).decode(),
        }

    def verify(self, address: str, scheme: str, nonce: str, signature: str) -> dict[str, object]:
        if nonce in self._used:
            raise AuthError("this nonce was already used")
        issued = self._nonces.get(nonce)
        if issued is None:
            raise AuthError("unknown or expired nonce")
        want_address, want_scheme, expires = issued
        if (address, scheme) != (want_address, want_scheme):
            raise AuthError("the nonce was issued to another address or scheme")
        if expires < time.time():
            del self._nonces[nonce]
            raise AuthError("the nonce expired")
        message = sign_in_message(address, nonce, expires)
        if scheme == "solana":
            _verify_solana(address, message, str(signature))
        else:
            _verify_btauth(address, message, str(signature))
        del self._nonces[nonce]
        self._used[nonce] = time.time()
        token_exp = int(time.time() + self.ttl_s)
        return {
            "token": self._token(address, scheme, token_exp),
            "expires": token_exp,
            "user": address,
        }

    def _token(self, address: str, scheme: str, expires: int) -> str:
        body = base64.urlsafe_b64encode(
            json.dumps({"sub": address, "scheme": scheme, "exp": expires}).encode()
        ).decode()
        mac = hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def check(self, token: str) -> str:
        """The address a valid, unexpired token was issued to."""
        body, _, mac = token.partition(".")
        want = hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()
        if not mac or not hmac.compare_digest(mac, want):
            raise AuthError("invalid session token")
        try:
            claims = json.loads(base64.urlsafe_b64decode(body.encode()))
        except ValueError:
            raise AuthError("invalid session token") from None
        if float(claims.get("exp", 0)) < time.time():
            raise AuthError("the session token expired; sign in again")
        return str(claims["sub"])


class BalanceChecker(Protocol):
    async def balance(self, address: str) -> int:
        """The address's balance in the chain's smallest unit (lamports)."""
        ...


@dataclass
class LocalBalance:
    balances: dict[str, int] = field(default_factory=dict)

    async def balance(self, address: str) -> int:
        return self.balances.get(address, 0)


@dataclass
class SolanaRpcBalance:
    """``getBalance`` on a Solana JSON-RPC endpoint (commitment ``confirmed``)."""

    url: str
    timeout_s: float = 10.0

    async def balance(self, address: str) -> int:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "getBalance",
            "params": [address, {"commitment": "confirmed"}],
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as s,
                s.post(self.url, json=body) as resp,
            ):
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"Solana RPC {self.url}: {exc!r}") from exc
        if "error" in data:
            raise AuthError(f"Solana RPC refused the address: {data['error'].get('message')}")
        return int(data["result"]["value"])
