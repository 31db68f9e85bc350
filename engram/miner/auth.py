"""Signed requests on the axon: the bittensor SDK's ``btauth/1`` (PROTOCOL.md, "Axon").

A caller signs method, path (with its query), the body's sha256, a nanosecond nonce and the
receiver (this miner's hotkey) with its sr25519 hotkey; :meth:`AxonAuth.middleware`
verifies that with ``bittensor.http_auth.verify`` (freshness window plus a nonce store
against replay) and then applies the endpoint's :class:`Access` rule:

- a missing, malformed, stale, replayed or wrongly-addressed signature is 401;
- a valid signature whose hotkey is not allowed (a non-validator on a challenge, too little
  stake to ingest) is 403.

Modes: ``signed`` requires a signature wherever the rule is not :attr:`Access.PUBLIC`;
``open`` accepts unsigned requests but still verifies any that carry btauth headers (a bad
signature is never silently accepted). Role rules apply in ``signed`` mode only: in
``open`` mode a caller could drop its signature to get past them. ``auto`` is ``open``
on a loopback bind address and ``signed`` otherwise (:func:`resolve_mode`).

The SDK is imported lazily (``import bittensor`` costs ~0.5 s); keys come from
``bittensor_core`` (the SDK's native key library), which is cheap to import.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog
from aiohttp import web

from engram.config import ConfigError, Settings
from engram.keys import keypair_from_file, keypair_from_seed, load_or_create_key

if TYPE_CHECKING:  # (typedefs.Middleware: not in every aiohttp 3.x)
    from aiohttp.typedefs import Middleware
    from bittensor.http_auth import Caller, NonceStore

    from .nonces import SharedNonces

__all__ = [
    "AUTH_KEY",
    "CALLER_KEY",
    "ENDPOINT_ACCESS",
    "Access",
    "AxonAuth",
    "Mode",
    "Refusal",
    "StaticRegistry",
    "ValidatorRegistry",
    "build_auth",
    "caller_of",
    "check_access",
    "has_btauth",
    "is_loopback",
    "load_or_create_key",
    "public_key_hex",
    "resolve_mode",
]

log = structlog.get_logger("engram.miner.auth")

Mode = Literal["signed", "open"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# header names of btauth/1 (bittensor.http_auth.HEADER_*), lower-cased; spelled out here so
# telling "unsigned" from "signed" does not import the SDK
_BTAUTH_HEADERS = (
    "x-bittensor-version",
    "x-bittensor-hotkey",
    "x-bittensor-nonce",
    "x-bittensor-signature",
    "x-bittensor-receiver",
    "x-bittensor-crypto",
)


class Access(StrEnum):
    PUBLIC = "public"  # never checked: liveness and Prometheus scrapes
    CALLER = "caller"  # any valid signature
    INGEST = "ingest"  # a valid signature with at least ``min_stake``
    VALIDATOR = "validator"  # a valid signature from a registered validator


# the rule per route (aiohttp's canonical path); anything not listed is CALLER
ENDPOINT_ACCESS: Mapping[str, Access] = MappingProxyType(
    {
        "/health": Access.PUBLIC,
        "/metrics": Access.PUBLIC,
        "/IngestSynapse": Access.INGEST,
        "/IngestBatch": Access.INGEST,
        "/blob": Access.INGEST,  # POST /blob (engram.blobs); GET /blob/... are CALLER
        "/ChallengeSynapse": Access.VALIDATOR,
    }
)


class ValidatorRegistry(Protocol):
    """Who is a validator and how much stake a hotkey has. The static allowlist below is
    configured by the operator; the chain-backed one (metagraph) comes with the validator."""

    def is_validator(self, hotkey_ss58: str) -> bool: ...

    def stake(self, hotkey_ss58: str) -> float: ...

    @property
    def knows_stake(self) -> bool: ...

    def why_not_validator(self, hotkey_ss58: str) -> str:
        """The reason a 403 gives a hotkey that is not a validator."""
        ...

    async def recheck(self, hotkey_ss58: str) -> bool:
        """``is_validator`` once more before a 403 (a chain view may be stale)."""
        ...


@dataclass(frozen=True)
class StaticRegistry:
    validators: frozenset[str] = frozenset()
    stakes: Mapping[str, float] = field(default_factory=dict)

    def is_validator(self, hotkey_ss58: str) -> bool:
        return hotkey_ss58 in self.validators

    def stake(self, hotkey_ss58: str) -> float:
        return self.stakes.get(hotkey_ss58, 0.0)

    @property
    def knows_stake(self) -> bool:
        return bool(self.stakes)

    def why_not_validator(self, hotkey_ss58: str) -> str:
        return f"hotkey {hotkey_ss58} is not a validator allowed to call this endpoint"

    async def recheck(self, hotkey_ss58: str) -> bool:
        return self.is_validator(hotkey_ss58)  # the operator's list: nothing to re-read


@dataclass(frozen=True)
class Refusal:
    status: int  # 401 or 403
    reason: str  # safe to send to the (unauthenticated) caller


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1; False for a wildcard or a LAN address."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: assume it is reachable from elsewhere


def resolve_mode(mode: str, host: str) -> Mode:
    if mode == "signed":
        return "signed"
    if mode == "open":
        return "open"
    if mode == "auto":
        return "open" if is_loopback(host) else "signed"
    raise ConfigError(f"axon_auth: must be auto, signed or open (not {mode!r})")


def has_btauth(headers: Mapping[str, str]) -> bool:
    return any(h in headers for h in _BTAUTH_HEADERS)


def check_access(
    access: Access,
    *,
    mode: Mode,
    caller: str | None,
    registry: ValidatorRegistry,
    min_stake: float = 0.0,
) -> Refusal | None:
    """The decision, given an already verified caller hotkey (None = unsigned)."""
    if access is Access.PUBLIC:
        return None
    if caller is None:
        if mode == "open":
            return None
        return Refusal(401, "this axon requires btauth/1 signed requests (X-Bittensor-* headers)")
    if mode == "open":
        return None
    if access is Access.VALIDATOR and not registry.is_validator(caller):
        return Refusal(403, registry.why_not_validator(caller))
    if access is Access.INGEST and min_stake > 0:
        stake = registry.stake(caller)
        if stake < min_stake:
            return Refusal(403, f"hotkey {caller} has stake {stake:g}; ingest needs {min_stake:g}")
    return None


AUTH_KEY: web.AppKey[AxonAuth] = web.AppKey("axon_auth")
# request[CALLER_KEY]: the verified caller's ss58. aiohttp >= 3.14 has typed request keys
# (and warns about str ones); older 3.x take a str
CALLER_KEY: Any = (
    web.RequestKey("btauth_caller", str) if hasattr(web, "RequestKey") else "btauth_caller"
)


def public_key_hex(hotkey_ss58: str) -> str:
    """The 32-byte public key of an ss58 address, as lower-case hex (what a v2 challenge's
    ``validator_hotkey_hex`` holds)."""
    import bittensor_core

    return bytes(bittensor_core.ss58_decode(hotkey_ss58)).hex()


def caller_of(request: web.Request) -> str | None:
    """The hotkey that signed this request (None: unsigned, or a public endpoint)."""
    caller = request.get(CALLER_KEY)
    return caller if isinstance(caller, str) else None


def _new_nonce_store(window_s: float) -> NonceStore:
    from bittensor.http_auth import InMemoryNonceStore

    return InMemoryNonceStore(retention=max(60.0, window_s + 1.0))


@dataclass
class AxonAuth:
    """The axon's identity and its request policy; ``middleware()`` enforces it."""

    mode: Mode
    keypair: Any  # bittensor_core.Keypair: the miner's hotkey (the receiver of requests)
    registry: ValidatorRegistry = field(default_factory=StaticRegistry)
    min_stake: float = 0.0
    max_age_s: float = 10.0
    allowed_skew_s: float = 2.0
    access: Mapping[str, Access] = field(default_factory=lambda: ENDPOINT_ACCESS)
    nonce_store: NonceStore | None = None  # per process: answers a replay without a round trip
    #: shared by every axon process of the node (JetStream KV): a replay sent to another
    #: process is refused too (engram.miner.nonces)
    shared_nonces: SharedNonces | None = None

    def __post_init__(self) -> None:
        if self.nonce_store is None:
            self.nonce_store = _new_nonce_store(self.max_age_s + self.allowed_skew_s)

    @property
    def hotkey_ss58(self) -> str:
        return str(self.keypair.ss58_address)

    def public_info(self) -> dict[str, Any]:
        """What ``/health`` tells callers: whom to sign for, and whether they must."""
        return {"hotkey_ss58": self.hotkey_ss58, "auth": self.mode}

    def access_for(self, request: web.Request) -> Access:
        resource = request.match_info.route.resource
        return self.access.get(resource.canonical if resource else "", Access.CALLER)

    def verify(self, headers: Mapping[str, str], body: bytes, method: str, path: str) -> str:
        """The caller's hotkey; raises ``bittensor.http_auth.AuthError``."""
        return str(self.verify_caller(headers, body, method, path).hotkey_ss58)

    def verify_caller(
        self, headers: Mapping[str, str], body: bytes, method: str, path: str
    ) -> Caller:
        """The verified caller (hotkey and nonce); raises ``bittensor.http_auth.AuthError``."""
        from bittensor.http_auth import verify

        return verify(
            headers,
            body,
            method=method,
            path=path,
            self_hotkey_ss58=self.hotkey_ss58,
            max_age=self.max_age_s,
            allowed_skew=self.allowed_skew_s,
            nonce_store=self.nonce_store,
        )

    async def claim_shared(self, caller: Caller) -> Refusal | None:
        """The node-wide replay check, after the signature verified (so unsigned traffic
        cannot use nonces up for a legitimate sender)."""
        if self.shared_nonces is None:
            return None
        key = f"{self.hotkey_ss58}.{caller.hotkey_ss58}.{caller.nonce_ns}"
        if await self.shared_nonces.claim(key):
            return None
        return Refusal(401, "btauth/1: nonce already used by this hotkey (replayed request)")

    def middleware(self) -> Middleware:
        @web.middleware
        async def btauth(request: web.Request, handler: Handler) -> web.StreamResponse:
            access = self.access_for(request)
            caller: str | None = None
            if access is not Access.PUBLIC and has_btauth(request.headers):
                from bittensor.http_auth import AuthError

                # aiohttp caches the body: the handler's request.json() reads these bytes
                body = await request.read()
                try:
                    signer = self.verify_caller(
                        request.headers, body, request.method, request.raw_path
                    )
                except AuthError as exc:  # its messages never echo secrets (SDK contract)
                    return _refuse(Refusal(401, f"btauth/1: {exc}"))
                if (replayed := await self.claim_shared(signer)) is not None:
                    return _refuse(replayed)
                caller = str(signer.hotkey_ss58)
                request[CALLER_KEY] = caller
            refusal = check_access(
                access,
                mode=self.mode,
                caller=caller,
                registry=self.registry,
                min_stake=self.min_stake,
            )
            if (
                refusal is not None
                and refusal.status == 403
                and access is Access.VALIDATOR
                and caller is not None
                and await self.registry.recheck(caller)
            ):
                refusal = None  # a permit newer than the cached metagraph
            if refusal is not None:
                return _refuse(refusal)
            return await handler(request)

        return btauth


def _refuse(refusal: Refusal) -> web.Response:
    headers = {"WWW-Authenticate": "btauth/1"} if refusal.status == 401 else None
    return web.json_response({"error": refusal.reason}, status=refusal.status, headers=headers)


# --- keys ---------------------------------------------------------------------------------


def _keypair_from_file(path: Path) -> Any:
    return keypair_from_file(path)


def _keypair_from_seed(seed: str) -> Any:
    return keypair_from_seed(seed)


def miner_keypair(settings: Settings) -> Any:
    """The miner's hotkey: ``miner_hotkey_seed``, else ``miner_hotkey_file``, else
    ``<data_dir>/keys/miner_hotkey`` (generated on first use)."""
    if settings.miner_hotkey_seed:
        return _keypair_from_seed(settings.miner_hotkey_seed)
    if settings.miner_hotkey_file:
        path = Path(settings.miner_hotkey_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"miner_hotkey_file: {path} does not exist")
        return _keypair_from_file(path)
    keypair, created = load_or_create_key(settings.data_path / "keys" / "miner_hotkey")
    if created:
        log.info("generated the miner's hotkey", hotkey=keypair.ss58_address)
    return keypair


def _check_ss58(addresses: list[str]) -> frozenset[str]:
    import bittensor_core

    for a in addresses:
        try:
            bittensor_core.ss58_decode(a)
        except Exception:
            raise ConfigError(f"axon_validators: {a!r} is not an ss58 address") from None
    return frozenset(addresses)


def build_auth(
    settings: Settings,
    host: str,
    registry: ValidatorRegistry | None = None,
    *,
    keypair: Any | None = None,
    shared_nonces: SharedNonces | None = None,
) -> AxonAuth:
    """The axon's auth from settings and the bind address (for ``axon_auth = "auto"``).
    ``registry`` is the chain-backed one when ``chain`` is set (engram.miner.trust), else
    the static ``axon_validators`` list."""
    mode = resolve_mode(settings.axon_auth, host)
    if registry is None:
        registry = StaticRegistry(validators=_check_ss58(settings.axon_validators))
    if settings.axon_min_stake > 0 and not registry.knows_stake:
        raise ConfigError(
            "axon_min_stake: needs a validator registry that knows stake: set chain = local "
            "or bittensor, or leave it at 0"
        )
    auth = AxonAuth(
        mode,
        keypair if keypair is not None else miner_keypair(settings),
        registry,
        min_stake=settings.axon_min_stake,
        shared_nonces=shared_nonces,
    )
    log.info(
        "axon identity",
        hotkey=auth.hotkey_ss58,
        auth=mode,
        registry=type(registry).__name__,
        shared_nonces=shared_nonces is not None,
    )
    if mode == "open" and not is_loopback(host):
        log.warning("axon_auth is open on a non-loopback address: anyone can call it", host=host)
    return auth
