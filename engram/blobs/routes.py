"""The axon's blob routes (docs/protocol.md, "Blobs"):

* ``POST /blob``: ``multipart/form-data`` (a ``file`` part; optional ``namespace`` and
  ``metadata``, a JSON object) or JSON ``{"data_b64", "filename"?, "namespace"?,
  "metadata"?}`` → 202 ``{"content_cid", "media_type", "size", "duplicate"}``;
* ``GET /blob/{content_cid}``: the bytes, from the Object Store or else from Arweave by
  the blob's tx id, verified against the ``content_cid`` (a mismatch is a 502, never served);
* ``GET /blob/{content_cid}/status``: archive state, tx id, whether described, the
  memories' CIDs.

The axon's 4 MiB body limit does not apply to ``POST /blob``: a middleware placed before
authentication raises the limit for that route only, to ``blob_max_bytes`` (multipart) or
its base64 size (JSON), so a signed upload can be read whole to check its signature.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email
import email.policy
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import PurePath
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from engram.miner.access import AccessState
from engram.miner.auth import caller_of
from engram.miner.axon import (
    Invalid,
    NotFound,
    Refused,
    TooLarge,
    Unreadable,
    UnsupportedMediaType,
    _parse_object,
    caller_scope,
    check_write,
)
from engram.miner.limits import check_metadata, check_namespace

from .service import BlobService, Mismatch
from .sniff import UnsupportedBlob, check_content_cid

__all__ = ["BLOB_SERVICE", "add_blob_routes", "body_limit"]

BLOB_SERVICE: web.AppKey[BlobService] = web.AppKey("blob_service", BlobService)
#: room for the multipart framing and the small text parts beside the file
FORM_SLACK = 64 * 1024
#: metadata keys the blob's memories get from the blob itself
RESERVED = frozenset({"content_cid", "media_type", "page", "pages", "section", "describer"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body_limit(max_bytes: int, content_type: str) -> int:
    """The most body bytes ``POST /blob`` reads for a file of ``max_bytes``."""
    if content_type == "application/json":
        return 4 * math.ceil(max_bytes / 3) + FORM_SLACK
    return max_bytes + FORM_SLACK


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(f"the file is larger than blob_max_bytes ({max_bytes} bytes)")


def _metadata(value: Any, filename: str | None) -> dict[str, Any]:
    if value is None:
        value = {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            raise Invalid("metadata must be a JSON object") from None
    if not isinstance(value, dict):
        raise Invalid("metadata must be a JSON object")
    if clash := sorted(RESERVED & value.keys()):
        raise Invalid(f"metadata must not set {', '.join(clash)} (the blob sets them)")
    meta = dict(value)
    if filename:
        meta["filename"] = PurePath(filename.replace("\\", "/")).name[:200]
    # room for what the describer adds (content_cid, media_type, page, pages, describer)
    probe = {**meta, "content_cid": "sha256:" + "0" * 64, "media_type": "application/pdf",
             "page": 99999, "pages": 99999, "section": 999, "describer": "x" * 40}  # fmt: skip
    if reason := check_metadata(probe):
        raise Invalid(reason)
    return meta


def _namespace(value: Any) -> str:
    namespace = "public" if value is None or value == "" else value
    if reason := check_namespace(namespace):
        raise Invalid(reason)
    return str(namespace)


def _parse_form(content_type: str, raw: bytes) -> dict[str, tuple[bytes, str | None]]:
    """``multipart/form-data`` → ``{name: (bytes, filename)}`` (the stdlib's MIME parser:
    the body was read whole by then, for the body deadline and the signature check)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.message_from_bytes(head + raw, policy=email.policy.HTTP)
    if not msg.is_multipart():
        raise Invalid("malformed multipart body")
    out: dict[str, tuple[bytes, str | None]] = {}
    for part in msg.iter_parts():
        if part.get_content_disposition() != "form-data":
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name in out:
            continue
        payload = part.get_payload(decode=True)
        out[name] = (payload if isinstance(payload, bytes) else b"", part.get_filename())
    return out


async def _read_form(request: web.Request, max_bytes: int) -> tuple[bytes, str | None, Any, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    except (RequestPayloadError, HttpProcessingError) as exc:
        raise Unreadable(f"the body could not be read: {str(exc)[:80]}") from None
    ctype = request.headers.get("Content-Type", "")
    form = await asyncio.to_thread(_parse_form, ctype, raw)
    if "file" not in form:
        raise Invalid("send the file as a multipart part named 'file'")
    data, filename = form["file"]

    def text(name: str) -> str | None:
        if name not in form:
            return None
        try:
            return form[name][0].decode()
        except UnicodeDecodeError:
            raise Invalid(f"the {name} part must be UTF-8 text") from None

    return data, filename, text("namespace"), text("metadata")


async def _read_json(request: web.Request, max_bytes: int) -> tuple[bytes, str | None, Any, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    except (RequestPayloadError, HttpProcessingError) as exc:
        raise Unreadable(f"the body could not be read: {str(exc)[:80]}") from None
    if not raw.strip():
        raise Invalid("the body is empty; send a JSON object with data_b64")
    body = await asyncio.to_thread(_parse_object, raw)
    b64 = body.get("data_b64")
    if not isinstance(b64, str) or not b64:
        raise Invalid("data_b64 is required: the file's bytes in base64")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("data_b64 is not valid base64 (standard alphabet, padded)") from None
    filename = body.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise Invalid("filename must be a string")
    return data, filename, body.get("namespace"), body.get("metadata")


def add_blob_routes(
    app: web.Application, service: BlobService, access: AccessState | None = None
) -> None:
    """Mount the blob routes on the axon's ``app`` (before it is started). With ``access``
    (the store's namespaces), an upload needs write access to its namespace and a blob of a
    private namespace is served only to its readers (others get the 404 of an unknown
    blob)."""
    max_bytes = service.max_bytes

    @web.middleware
    async def blob_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/blob":
            return await handler(request)
        limit = body_limit(max_bytes, request.content_type)
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(max_bytes)
        try:
            return await handler(request.clone(client_max_size=limit))
        except web.HTTPRequestEntityTooLarge:  # read by the auth middleware, past the limit
            raise _too_large(max_bytes) from None

    # right after the outermost error middleware: before limits and authentication
    app.middlewares.insert(1, blob_body)

    async def upload(request: web.Request) -> web.Response:
        ctype = request.content_type
        if ctype == "multipart/form-data":
            data, filename, namespace, metadata = await _read_form(request, max_bytes)
        elif ctype == "application/json":
            data, filename, namespace, metadata = await _read_json(request, max_bytes)
        else:
            raise UnsupportedMediaType(
                "send multipart/form-data with a 'file' part, or application/json with data_b64"
            )
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
        ns = _namespace(namespace)
        if access is not None:
            check_write(access, ns, caller_of(request))
        meta = _metadata(metadata, filename)
        try:
            stored = await service.accept(data, meta, ns, caller_scope(request))
        except UnsupportedBlob as exc:
            raise UnsupportedMediaType(str(exc)) from None
        return web.json_response(
            {
                "content_cid": stored.content_cid,
                "media_type": stored.media_type,
                "size": stored.size,
                "duplicate": stored.duplicate,
                "error": None,
            },
            status=202,
        )

    def _cid(request: web.Request) -> str:
        cid = request.match_info["content_cid"]
        if reason := check_content_cid(cid):
            raise Invalid(reason)
        return cid

    def _readable(request: web.Request, out: dict[str, Any]) -> bool:
        """May the caller see this blob (its namespace is readable to it)?"""
        namespace = str(out.get("namespace") or "public")
        return access is None or access.can_read(namespace, caller_of(request))

    async def get_blob(request: web.Request) -> web.Response:
        cid = _cid(request)
        if access is not None:
            known = await service.status(cid)
            if known is not None and not _readable(request, known):
                raise NotFound(f"no blob {cid} here or on the gateway")
        try:
            found = await service.read(cid)
        except Mismatch as exc:
            raise Refused(502, str(exc)) from None
        if found is None:
            raise NotFound(f"no blob {cid} here or on the gateway")
        data, media_type, source = found
        return web.Response(
            body=data,
            content_type=media_type,
            headers={
                "X-Content-Cid": cid,
                "X-Blob-Source": source,
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )

    async def status(request: web.Request) -> web.Response:
        cid = _cid(request)
        out = await service.status(cid)
        if out is None or not _readable(request, out):
            raise NotFound(f"no blob {cid} here")
        return web.json_response({**out, "error": None})

    app[BLOB_SERVICE] = service
    app.router.add_post("/blob", upload)
    app.router.add_get("/blob/{content_cid}", get_blob)
    app.router.add_get("/blob/{content_cid}/status", status)
