"""The SDK's blob calls (``ingest_image``, ``ingest_pdf``, ``blob``, ``blob_status``) against a
real miner: ``POST /blob`` multipart → 202 ``{content_cid, media_type, size, duplicate}``,
``GET /blob/{cid}``, ``GET /blob/{cid}/status``."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest

from engram.sdk import BlobReceipt, InvalidCID, NotFound

from .conftest import CLIENT, caller


def tiny_png(rgb: tuple[int, int, int]) -> bytes:
    """A real 2x2 PNG, made with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(rgb) * 2 for _ in range(2))
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def tiny_pdf(text: str) -> bytes:
    stream = f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 144] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1,
        xref,
    )
    return out


def test_ingest_image_then_fetch_it_back(url: str, ns: str, driver: str) -> None:
    call = caller(driver, url, hotkey=CLIENT, namespace=ns)
    seed = hashlib.sha256(ns.encode()).digest()  # blobs are de-duplicated miner-wide
    png = tiny_png((seed[0], seed[1], seed[2]))
    rec = call("ingest_image", png, filename="red.png", metadata={"color": "red"})
    assert isinstance(rec, BlobReceipt)
    assert rec.content_cid == "sha256:" + hashlib.sha256(png).hexdigest()
    assert rec.media_type == "image/png" and rec.size == len(png) and not rec.duplicate
    assert call("blob", rec.content_cid) == png
    status = call("blob_status", rec.content_cid)
    assert status["content_cid"] == rec.content_cid and status["size"] == len(png)
    assert call("ingest_image", png).duplicate is True


def test_ingest_pdf_from_a_file(url: str, ns: str, driver: str, tmp_path: Path) -> None:
    call = caller(driver, url, hotkey=CLIENT, namespace=ns)
    f = tmp_path / "note.pdf"
    f.write_bytes(tiny_pdf(f"Engram stores memories {ns}"))
    rec = call("ingest_pdf", f)
    assert rec.media_type == "application/pdf"
    assert rec.content_cid == "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()


def test_unknown_and_malformed_blob_cids(url: str, driver: str) -> None:
    call = caller(driver, url, hotkey=CLIENT)
    with pytest.raises(NotFound):
        call("blob", "sha256:" + "0" * 64)
    with pytest.raises(InvalidCID):
        call("blob_status", "sha256:nothex")
