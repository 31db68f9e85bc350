"""What a blob is, from its first bytes (never from its name), and its content CID."""

from __future__ import annotations

import hashlib
import re

from streams.errors import InputError

__all__ = [
    "IMAGE_TYPES",
    "SUPPORTED",
    "UnsupportedBlob",
    "check_content_cid",
    "content_cid",
    "sniff",
]

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
SUPPORTED = IMAGE_TYPES | {"application/pdf"}
_CID = re.compile(r"sha256:[0-9a-f]{64}")


class UnsupportedBlob(InputError):
    """The bytes are not a kind of blob Engram takes (PNG, JPEG, GIF, WebP, PDF)."""


def sniff(data: bytes) -> str:
    """The media type of ``data`` from its magic bytes; :class:`UnsupportedBlob` (with
    what it looks like, where that is easy to tell) otherwise."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:1024].lstrip(b"\r\n\t \x00").startswith(b"%PDF-"):
        return "application/pdf"
    if not data:
        raise UnsupportedBlob("the file is empty")
    hint = ""
    head = data[:512]
    if head.startswith(b"PK\x03\x04"):
        hint = " (it looks like a ZIP archive)"
    elif b"\x00" not in head:
        try:
            head.decode("utf-8")
            hint = " (it looks like text: send text to /IngestSynapse)"
        except UnicodeDecodeError:
            pass
    raise UnsupportedBlob(
        f"unsupported media type{hint}: blobs must be PNG, JPEG, GIF, WebP or PDF "
        "(recognised from the bytes, not the name)"
    )


def content_cid(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_content_cid(value: str) -> str | None:
    if not _CID.fullmatch(value):
        return "content_cid must be 'sha256:' followed by 64 lower-case hex digits"
    return None
