"""The web console (``engram console``, and started by the devnet): Network, Bus and
Memory pages over the node's own HTTP stack (aiohttp), static files, no build step."""

from __future__ import annotations

from .app import ConsoleServer, static_dir

__all__ = ["ConsoleServer", "static_dir"]
