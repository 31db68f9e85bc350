"""The devnet: a whole subnet on loopback (``engram devnet``), with misbehaving miners."""

from .adversaries import KINDS, AdversaryProxy
from .net import Devnet, DevnetConfig
from .view import DevnetView, MinerRow

__all__ = ["KINDS", "AdversaryProxy", "Devnet", "DevnetConfig", "DevnetView", "MinerRow"]
