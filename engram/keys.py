"""sr25519 hotkeys from files, seeds and secret URIs (bittensor's key format).

Shared by the miner's axon (its identity), the validator and the clients that sign
requests (``engram.miner.client``, the SDK). Only ``bittensor_core`` (the SDK's native key
library, cheap to import) is used, imported when a key is first needed, so importing this
module costs nothing and pulls in no HTTP library.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import structlog

from engram.config import ConfigError

__all__ = ["keypair_from_file", "keypair_from_seed", "load_or_create_key", "resolve_keypair"]

log = structlog.get_logger("engram.keys")


def keypair_from_file(path: Path) -> Any:
    """The keypair of a bittensor hotkey file (JSON with ``secretPhrase``/``secretSeed``)."""
    import bittensor_core

    data = path.read_bytes()
    if bittensor_core.keyfile_data_is_encrypted(data):
        raise ConfigError(f"{path}: encrypted key files are not supported; use a hotkey file")
    try:
        return bittensor_core.deserialize_keypair_from_keyfile_data(data)
    except Exception as exc:  # the native library raises its own error types
        raise ConfigError(f"{path}: not a bittensor key file ({exc})") from None


def load_or_create_key(path: Path) -> tuple[Any, bool]:
    """The sr25519 keypair in ``path`` (a bittensor hotkey file: JSON with ``secretPhrase``
    and ``ss58Address``); created 0600 if absent. Returns (keypair, created)."""
    import bittensor_core

    if path.exists():
        if path.stat().st_mode & 0o077:
            log.warning("key file is readable by others; chmod 600 it", path=str(path))
        return keypair_from_file(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mnemonic = bittensor_core.Keypair.generate_mnemonic(12)
    keypair = bittensor_core.Keypair.from_mnemonic(mnemonic)
    data = bittensor_core.serialized_keypair_to_keyfile_data(keypair)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and never overwrites: a concurrent creator wins
        except FileExistsError:
            return keypair_from_file(path), False
    finally:
        os.unlink(tmp)
    return keypair, True


def keypair_from_seed(seed: str, what: str = "miner_hotkey_seed") -> Any:
    """A mnemonic, a secret URI (``//Alice``, ``<mnemonic>//hard``) or a 0x-hex seed."""
    import bittensor_core

    try:
        return bittensor_core.Keypair.from_uri(seed.strip())
    except Exception:
        raise ConfigError(f"{what}: not a mnemonic, secret URI or 0x-hex 32-byte seed") from None


def resolve_keypair(hotkey: Any) -> Any:
    """A keypair from what a caller may hand a client: a keypair object (anything with
    ``ss58_address`` and ``sign``), a path to a hotkey file, or a mnemonic / secret URI /
    0x-hex seed."""
    if hasattr(hotkey, "ss58_address") and hasattr(hotkey, "sign"):
        return hotkey
    if isinstance(hotkey, os.PathLike):
        return keypair_from_file(Path(hotkey).expanduser())
    if isinstance(hotkey, str):
        path = Path(hotkey).expanduser()
        if not hotkey.startswith("//") and path.is_file():
            return keypair_from_file(path)
        return keypair_from_seed(hotkey, "hotkey")
    raise ConfigError(
        f"hotkey: give a keypair, a hotkey file or a secret URI, not {type(hotkey).__name__}"
    )
