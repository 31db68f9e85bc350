"""Pure-Python twin of the Rust module ``engram_core``: the same functions, the same bytes,
the same exception classes, checked in the same order (docs/protocol.md, tests/vectors/).

Slow but dependency-free (hashlib, hmac, json, secrets, struct). Used when the native
module is not installed, or when ``ENGRAM_CORE_BACKEND=python``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import operator
import secrets
import struct
import sys
from typing import Any, cast

from engram.core.errors import (
    ChallengeExpired,
    InvalidArgument,
    InvalidEmbedding,
    InvalidEmbeddingDtype,
    InvalidHex,
    InvalidHotkey,
    InvalidMerkleInput,
    InvalidMetadata,
    InvalidNonce,
)

__version__ = "0.1.0"
MAX_DEPTH = 64
THREADS = 1
MODEL_VERSION_KEY = "model_version"
CID_PREFIX = "v1::"
CONTENT_CID_PREFIX = "sha256:"
_HEXCHARS = frozenset("0123456789abcdefABCDEF")
_NATIVE_F32 = ("f", "@f", "=f", "<f") if sys.byteorder == "little" else ()
_NATIVE_F64 = ("d", "@d", "=d", "<d") if sys.byteorder == "little" else ()
_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1
_sha256 = hashlib.sha256


#: Longest type name an error message repeats (engram-core caps the same way).
MAX_TYPE_NAME = 80


def _tname(obj: object) -> str:
    """``type(obj).__name__``, capped: a class can be given any name."""
    name = type(obj).__name__
    return name if len(name) <= MAX_TYPE_NAME else name[: MAX_TYPE_NAME - 1] + "…"


def _as_str(obj: object, exc: type[Exception], what: str) -> str:
    if not isinstance(obj, str):
        raise exc(f"{what} must be a str, got {_tname(obj)}")
    try:
        obj.encode("utf-8")
    except UnicodeEncodeError:
        raise exc(f"{what} is not valid Unicode (lone surrogate)") from None
    return obj


def _decode32(s: str, exc: type[Exception], what: str) -> bytes:
    if len(s) != 64 or not _HEXCHARS.issuperset(s):
        raise exc(f"{what} must be 64 hex characters (32 bytes)")
    return bytes.fromhex(s)


# ---------------------------------------------------------------------------------------
# Canonical JSON


# The refusal messages (identical in engram-core, which checks in the same order): sentences
# a client can act on; they repeat no part of the input but a capped type name.
MSG_STRING = "metadata string is not valid Unicode (it holds a lone surrogate)"
MSG_KEY = "metadata key is not valid Unicode (it holds a lone surrogate)"
MSG_INT = "metadata integers must lie in -2**63 .. 2**64-1 (64 bits)"
MSG_FLOAT = "metadata floats must be finite (NaN and infinity are not JSON)"
MSG_DUPLICATE = "metadata has two keys with the same text"
MSG_DEPTH = f"metadata nests deeper than {MAX_DEPTH} levels"


def float_repr(value: float) -> str:
    """Python ``repr(float)`` text, as canonical JSON writes floats (finite only)."""
    v = float(value)
    if not math.isfinite(v):
        raise InvalidMetadata(MSG_FLOAT)
    return float.__repr__(v)


def float_reprs(values: Any) -> list[str]:
    """:func:`float_repr` of every value of a 1-D float64 array (native byte order)."""
    try:
        mv = memoryview(values)
    except TypeError:
        mv = None
    if (
        mv is None
        or mv.format not in _NATIVE_F64
        or mv.itemsize != 8
        or mv.ndim != 1
        or not mv.c_contiguous
    ):
        raise InvalidArgument(
            "values must be a 1-D C-contiguous float64 array (native byte order), "
            f"got {_tname(values)}"
        )
    floats = cast(list[float], mv.tolist())  # format "d": floats
    if not all(map(math.isfinite, floats)):
        i = next(i for i, v in enumerate(floats) if not math.isfinite(v))
        raise InvalidMetadata(f"value {i}: {MSG_FLOAT}")
    return list(map(float.__repr__, floats))


def _text(s: str, message: str) -> str:
    """``s`` as a plain str; ``InvalidMetadata(message)`` if it holds a lone surrogate."""
    try:
        str.encode(s, "utf-8")
    except UnicodeEncodeError:
        raise InvalidMetadata(message) from None
    return s if type(s) is str else str.__str__(s)


def _plain(obj: Any, depth: int) -> Any:
    """Validate one metadata value and return it as plain builtin types.

    Subclasses of str/int/float/dict/list/tuple are read through the builtin type's own
    methods (never their overrides), as engram-core reads their storage.
    """
    if isinstance(obj, str):
        return _text(obj, MSG_STRING)
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        v = int.__int__(obj)
        if not _I64_MIN <= v <= _U64_MAX:
            raise InvalidMetadata(MSG_INT)
        return v
    if isinstance(obj, float):
        f = float.__float__(obj)
        if not math.isfinite(f):
            raise InvalidMetadata(MSG_FLOAT)
        return f
    if obj is None:
        return None
    if isinstance(obj, dict):
        _check_depth(depth + 1)
        return _plain_dict(obj, depth + 1, None)
    if isinstance(obj, list):
        _check_depth(depth + 1)
        return [_plain(item, depth + 1) for item in list.__iter__(obj)]
    if isinstance(obj, tuple):
        _check_depth(depth + 1)
        return [_plain(item, depth + 1) for item in tuple.__iter__(obj)]
    raise InvalidMetadata(
        f"metadata value of type {_tname(obj)} is not JSON "
        "(allowed: dict, list, tuple, str, int, float, bool, None)"
    )


def _check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidMetadata(MSG_DEPTH)


def _plain_dict(d: dict[Any, Any], depth: int, model_version: str | None) -> dict[str, Any]:
    """Keys are checked in the dict's order, then values in key order (as engram-core)."""
    pairs: list[tuple[str, Any]] = []
    for k, v in dict.items(d):
        if not isinstance(k, str):
            raise InvalidMetadata(f"metadata keys must be str, got {_tname(k)}")
        key = _text(k, MSG_KEY)
        if model_version is not None and key == MODEL_VERSION_KEY:
            continue
        pairs.append((key, v))
    if model_version is not None:
        pairs.append((MODEL_VERSION_KEY, model_version))
    pairs.sort(key=operator.itemgetter(0))
    # Only str subclasses that hash or compare unlike their text can do this.
    if any(a[0] == b[0] for a, b in itertools.pairwise(pairs)):
        raise InvalidMetadata(MSG_DUPLICATE)
    out: dict[str, Any] = {}
    for key, v in pairs:
        if model_version is not None and key == MODEL_VERSION_KEY:
            out[key] = model_version
        else:
            out[key] = _plain(v, depth)
    return out


def _canonical(metadata: Any, model_version: str | None) -> bytes:
    if not isinstance(metadata, dict):
        raise InvalidMetadata(f"metadata must be a dict (a JSON object), got {_tname(metadata)}")
    plain = _plain_dict(metadata, 1, model_version)
    return json.dumps(
        plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _model_version(v: object) -> str:
    return _as_str(v, InvalidArgument, "model_version")


def canonical_json(metadata: dict[str, Any], model_version: str | None = None) -> bytes:
    """Canonical JSON bytes of ``metadata`` (with ``model_version`` set when given)."""
    version = None if model_version is None else _model_version(model_version)
    return _canonical(metadata, version)


# ---------------------------------------------------------------------------------------
# Embeddings


def _dtype_error(obj: object, what: str) -> InvalidEmbeddingDtype:
    dtype = getattr(obj, "dtype", None)
    extra = f" with dtype {dtype}" if dtype is not None else ""
    return InvalidEmbeddingDtype(
        f"{what} must be a C-contiguous float32 array (native byte order), got {_tname(obj)}{extra}"
    )


def _float32_view(obj: Any, ndim: int, what: str) -> memoryview:
    try:
        mv = memoryview(obj)
    except TypeError:
        raise _dtype_error(obj, what) from None
    if mv.format not in _NATIVE_F32 or mv.itemsize != 4:
        raise _dtype_error(obj, what)
    if mv.ndim != ndim:
        raise InvalidEmbedding(f"{what} must be {ndim}-D, got shape {list(mv.shape or ())}")
    if not mv.c_contiguous:
        raise InvalidEmbedding(f"{what} is not C-contiguous; pass np.ascontiguousarray(x)")
    return mv


def _check_finite(b: bytes) -> None:
    if not b:
        raise InvalidEmbedding("embedding is empty")
    if len(b) % 4:
        raise InvalidEmbedding(f"embedding has {len(b)} bytes, not a multiple of 4")
    # NaN and +-inf are the floats whose 8 exponent bits are all ones: the high byte is
    # 0x7f or 0xff and the top bit of the next byte is set (little-endian layout).
    hi = b[3::4]
    if 0x7F in hi or 0xFF in hi:
        for i, (h, m) in enumerate(zip(hi, b[2::4], strict=True)):
            if h & 0x7F == 0x7F and m & 0x80:
                raise InvalidEmbedding(f"embedding value at index {i} is NaN or infinite")


def _vector_bytes(vec: Any) -> bytes:
    if isinstance(vec, (list, tuple)):
        try:
            return struct.pack(f"<{len(vec)}f", *vec)
        except (struct.error, OverflowError, TypeError):
            for i, x in enumerate(vec):
                try:
                    struct.pack("<f", x)
                except OverflowError:
                    raise InvalidEmbedding(
                        f"embedding value at index {i} is out of float range"
                    ) from None
                except (struct.error, TypeError):
                    raise InvalidEmbeddingDtype(
                        f"embedding list item {i} is {_tname(x)}, not a number"
                    ) from None
            raise
    return _float32_view(vec, 1, "embedding").tobytes()


def _matrix(matrix: Any) -> tuple[bytes, int, int]:
    mv = _float32_view(matrix, 2, "matrix")
    shape = mv.shape or (0, 0)
    rows, dim = shape[0], shape[1]
    if dim == 0:
        raise InvalidEmbedding("matrix rows are empty (dim 0)")
    return mv.tobytes(), rows, dim * 4


def _rows(data: bytes, rows: int, width: int) -> list[bytes]:
    return [data[i * width : (i + 1) * width] for i in range(rows)]


def _row_error(i: int, e: Exception) -> Exception:
    return type(e)(f"row {i}: {e}")


def embedding_hash(vec: Any) -> str:
    b = _vector_bytes(vec)
    _check_finite(b)
    return _sha256(b).hexdigest()


def embedding_hashes(matrix: Any) -> list[str]:
    data, rows, width = _matrix(matrix)
    out = []
    for i, row in enumerate(_rows(data, rows, width)):
        try:
            _check_finite(row)
        except InvalidEmbedding as e:
            raise _row_error(i, e) from None
        out.append(_sha256(row).hexdigest())
    return out


def _cid(row: bytes, canon: bytes) -> str:
    h = _sha256(row)
    h.update(canon)
    return CID_PREFIX + h.hexdigest()


def compute_cid(vec: Any, metadata: dict[str, Any], model_version: str) -> str:
    b = _vector_bytes(vec)
    canon = _canonical(metadata, _model_version(model_version))
    _check_finite(b)
    return _cid(b, canon)


def compute_cids(matrix: Any, metadatas: list[dict[str, Any]], model_version: str) -> list[str]:
    data, rows, width = _matrix(matrix)
    version = _model_version(model_version)
    if not isinstance(metadatas, list):
        raise InvalidMetadata(f"metadatas must be a list of dicts, got {_tname(metadatas)}")
    if len(metadatas) != rows:
        raise InvalidMetadata(f"{len(metadatas)} metadata objects for {rows} embedding rows")
    canons = []
    for i, m in enumerate(metadatas):
        try:
            canons.append(_canonical(m, version))
        except InvalidMetadata as e:
            raise _row_error(i, e) from None
    out = []
    for i, (row, canon) in enumerate(zip(_rows(data, rows, width), canons, strict=True)):
        try:
            _check_finite(row)
        except InvalidEmbedding as e:
            raise _row_error(i, e) from None
        out.append(_cid(row, canon))
    return out


def content_cid(data: bytes | bytearray) -> str:
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidArgument(f"content must be bytes or bytearray, got {_tname(data)}")
    return CONTENT_CID_PREFIX + _sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------
# Challenges and proofs


def new_nonce() -> str:
    """32 bytes from the OS CSPRNG, as lowercase hex."""
    return secrets.token_hex(32)


def _nonce(s: object) -> bytes:
    return _decode32(_as_str(s, InvalidNonce, "nonce"), InvalidNonce, "nonce")


def _hotkey(s: object) -> bytes:
    return _decode32(
        _as_str(s, InvalidHotkey, "validator hotkey"), InvalidHotkey, "validator hotkey"
    )


def _v1_message(embedding_hash_hex: str) -> bytes:
    raw = _decode32(embedding_hash_hex, InvalidHex, "embedding hash")
    return raw.hex().encode("ascii")


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _v2_key(hotkey: bytes, nonce: bytes) -> bytes:
    return _sha256(hotkey + nonce).digest()


def proof_v1(nonce_hex: str, embedding_hash_hex: str) -> str:
    _as_str(nonce_hex, InvalidNonce, "nonce")
    eh = _as_str(embedding_hash_hex, InvalidHex, "embedding hash")
    return _hmac(_nonce(nonce_hex), _v1_message(eh)).hex()


def _str_list(items: list[Any], exc: type[Exception], what: str) -> list[str]:
    return [_as_str(x, exc, what) for x in items]


def _list(obj: object, what: str) -> list[Any]:
    if not isinstance(obj, list):
        raise InvalidArgument(f"{what} must be a list, got {_tname(obj)}")
    return obj


def proofs_v1(nonces_hex: list[str], embedding_hashes_hex: list[str]) -> list[str]:
    nonces = _list(nonces_hex, "nonces")
    hashes = _list(embedding_hashes_hex, "embedding hashes")
    n = _str_list(nonces, InvalidNonce, "nonce")
    h = _str_list(hashes, InvalidHex, "embedding hash")
    if len(n) != len(h):
        raise InvalidArgument(f"{len(n)} nonces for {len(h)} embedding hashes")
    keys = [_nonce(x) for x in n]
    return [_hmac(k, _v1_message(e)).hex() for k, e in zip(keys, h, strict=True)]


def proof_v2(validator_hotkey_hex: str, nonce_hex: str, vec: Any) -> str:
    hk = _hotkey(validator_hotkey_hex)
    nonce = _nonce(nonce_hex)
    b = _vector_bytes(vec)
    _check_finite(b)
    return _hmac(_v2_key(hk, nonce), b).hex()


def proofs_v2(validator_hotkey_hex: str, nonces_hex: list[str], matrix: Any) -> list[str]:
    hk = _hotkey(validator_hotkey_hex)
    n = _str_list(_list(nonces_hex, "nonces"), InvalidNonce, "nonce")
    data, rows, width = _matrix(matrix)
    if len(n) != rows:
        raise InvalidArgument(f"{len(n)} nonces for {rows} embedding rows")
    keys = [_v2_key(hk, _nonce(x)) for x in n]
    out = []
    for i, (key, row) in enumerate(zip(keys, _rows(data, rows, width), strict=True)):
        try:
            _check_finite(row)
        except InvalidEmbedding as e:
            raise _row_error(i, e) from None
        out.append(_hmac(key, row).hex())
    return out


def _check_expiry(expires_at: int, now: float) -> None:
    expires_at = operator.index(expires_at)
    now = float(now)
    if math.isnan(now) or now >= float(expires_at):
        raise ChallengeExpired(f"challenge expired at {expires_at} (now {now})")


def _matches(expected: bytes, proof_hex: object) -> bool:
    if not isinstance(proof_hex, str) or len(proof_hex) != 64:
        return False
    if not _HEXCHARS.issuperset(proof_hex):
        return False
    return hmac.compare_digest(expected, bytes.fromhex(proof_hex))


def verify_proof_v1(
    nonce_hex: str, embedding_hash_hex: str, proof_hex: str, expires_at: int, now: float
) -> bool:
    _as_str(nonce_hex, InvalidNonce, "nonce")
    eh = _as_str(embedding_hash_hex, InvalidHex, "embedding hash")
    expected = _hmac(_nonce(nonce_hex), _v1_message(eh))
    _check_expiry(expires_at, now)
    return _matches(expected, proof_hex)


def verify_proof_v2(
    validator_hotkey_hex: str,
    nonce_hex: str,
    vec: Any,
    proof_hex: str,
    expires_at: int,
    now: float,
) -> bool:
    hk = _hotkey(validator_hotkey_hex)
    nonce = _nonce(nonce_hex)
    b = _vector_bytes(vec)
    _check_finite(b)
    expected = _hmac(_v2_key(hk, nonce), b)
    _check_expiry(expires_at, now)
    return _matches(expected, proof_hex)


# ---------------------------------------------------------------------------------------
# Merkle commitments


_LEAF = "a leaf must be a (cid, embedding_hash_hex) pair"


def _pair(obj: object, what: str = _LEAF) -> tuple[str, str]:
    if isinstance(obj, tuple) and len(obj) == 2:
        a, b = obj
        if isinstance(a, str) and isinstance(b, str):
            try:
                a.encode("utf-8")
                b.encode("utf-8")
            except UnicodeEncodeError:
                pass
            else:
                return str.__str__(a), str.__str__(b)
    raise InvalidMerkleInput(f"{what} of str, got {_tname(obj)}")


def _pairs(leaves: object) -> list[tuple[str, str]]:
    if not isinstance(leaves, list):
        raise InvalidMerkleInput(
            f"leaves must be a list of (cid, embedding_hash_hex) tuples, got {_tname(leaves)}"
        )
    return [_pair(x) for x in leaves]


def _leaf_hash(cid: str, embedding_hash_hex: str) -> bytes:
    eh = _decode32(embedding_hash_hex, InvalidHex, "embedding hash")
    c = cid.encode("utf-8")
    if len(c) > 0xFFFFFFFF:
        raise InvalidMerkleInput("cid longer than 4 GiB")
    return _sha256(b"\x00" + len(c).to_bytes(4, "big") + c + eh).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _leaf_hashes(pairs: list[tuple[str, str]]) -> list[bytes]:
    if not pairs:
        raise InvalidMerkleInput("no leaves: an empty list has no root")
    out = []
    for i, (c, e) in enumerate(pairs):
        try:
            out.append(_leaf_hash(c, e))
        except (InvalidHex, InvalidMerkleInput) as err:
            raise type(err)(f"leaf {i}: {err}") from None
    return out


def _next_level(level: list[bytes]) -> list[bytes]:
    return [
        _node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
        for i in range(0, len(level), 2)
    ]


def merkle_leaf(cid: str, embedding_hash_hex: str) -> str:
    c = _as_str(cid, InvalidMerkleInput, "cid")
    e = _as_str(embedding_hash_hex, InvalidHex, "embedding hash")
    return _leaf_hash(c, e).hex()


def merkle_root(leaves: list[tuple[str, str]]) -> str:
    level = _leaf_hashes(_pairs(leaves))
    while len(level) > 1:
        level = _next_level(level)
    return level[0].hex()


def merkle_proof(leaves: list[tuple[str, str]], index: int) -> list[tuple[str, str]]:
    index = operator.index(index)
    level = _leaf_hashes(_pairs(leaves))
    if not 0 <= index < len(level):
        raise InvalidMerkleInput(f"leaf index {index} out of range for {len(level)} leaves")
    idx = index
    steps: list[tuple[str, str]] = []
    while len(level) > 1:
        sib = idx ^ 1
        if sib < len(level):
            steps.append(("L" if sib < idx else "R", level[sib].hex()))
        level = _next_level(level)
        idx //= 2
    return steps


def verify_merkle_proof(root_hex: str, leaf: tuple[str, str], proof: list[tuple[str, str]]) -> bool:
    r = _as_str(root_hex, InvalidHex, "merkle root")
    c, e = _pair(leaf)
    if not isinstance(proof, list):
        raise InvalidMerkleInput("proof must be a list of steps")
    steps = []
    for step in proof:
        side, h = _pair(step, 'a proof step must be a ("L"|"R", hash_hex) pair')
        if side not in ("L", "R"):
            raise InvalidMerkleInput(f'proof step side must be "L" or "R", got {side!r}')
        steps.append((side, _decode32(h, InvalidHex, "proof step hash")))
    want = _decode32(r, InvalidHex, "merkle root")
    acc = _leaf_hash(c, e)
    for side, sib in steps:
        acc = _node(sib, acc) if side == "L" else _node(acc, sib)
    return acc == want
