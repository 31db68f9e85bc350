"""The ``lora`` trainer: a LoRA adapter trained here, over the brain's own GGUF.

No PyTorch and no Hugging Face weights: the base model is read from the same GGUF file
llama.cpp serves (dequantized with the ``gguf`` package), its forward pass is written in JAX
the way llama.cpp computes it (RMSNorm, rotary embeddings on GGUF's layout, grouped-query
attention, SwiGLU), and only the low-rank matrices ``A`` (r by in) and ``B`` (out by r) of the
attention and feed-forward projections are trained, with Adam, on the assistant tokens of
the dataset rendered with the model's own chat template and tokenizer (llama.cpp's). The
adapter is written as a GGUF LoRA (``general.type = adapter``, ``adapter.lora.alpha``,
tensors ``blk.N.<name>.weight.lora_a``/``lora_b``) that llama.cpp applies over the unchanged
base: ``W x + (alpha / r) · B (A x)``.

Install with the extra: ``pip install -e '.[lora]'`` (JAX on the CPU, ``gguf``). The job runs
in a child process (``python -m engram.brain.lora``) so the brain's memory and event loop are
untouched; progress goes to stderr, the result is one JSON line on stdout.

Supported bases: GGUF files of the ``llama`` architecture (SmolLM2, Llama, Mistral-style
models) in F32, F16, Q8_0, Q4_0/Q4_1 and the other formats ``gguf`` dequantizes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from engram.config import Settings
from streams.errors import InputError

from .training import Progress, Trainer, TrainJob, TrainResult

__all__ = [
    "TARGETS",
    "BaseModel",
    "LoraTrainer",
    "encode_examples",
    "load_base",
    "train_adapter",
    "write_adapter",
]

log = structlog.get_logger("engram.brain.lora")

#: the projections that get an adapter (GGUF tensor names inside ``blk.N.``)
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
#: longest training example, in tokens (longer ones are cut from the left of the prompt)
MAX_TOKENS = 256


@dataclass
class BaseModel:
    """A llama-architecture GGUF, dequantized to float32 numpy arrays (GGUF's layout:
    each projection is ``(out, in)``, as llama.cpp multiplies it)."""

    path: Path
    layers: int
    dim: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_base: float
    eps: float
    vocab: int
    chat_template: str
    embed: np.ndarray
    out_norm: np.ndarray
    output: np.ndarray | None
    blocks: dict[str, np.ndarray]  # name → (layers, ...) stacked


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def load_base(path: str | Path) -> BaseModel:
    """Read and dequantize a llama-architecture GGUF."""
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise InputError("the lora trainer needs the `lora` extra (pip install '.[lora]')") from exc
    path = Path(path)
    reader = GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise InputError(f"{path.name}: the lora trainer supports llama GGUFs, not {arch!r}")
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        arr = dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.asarray(arr, dtype=np.float32).reshape(shape)
    layers = int(_field(reader, "llama.block_count"))
    dim = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    kv_heads = int(_field(reader, "llama.attention.head_count_kv", heads))
    blocks = {
        name: np.stack([tensors[f"blk.{i}.{name}.weight"] for i in range(layers)])
        for name in (*TARGETS, "attn_norm", "ffn_norm")
    }
    embed = tensors["token_embd.weight"]
    return BaseModel(
        path=path,
        layers=layers,
        dim=dim,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=int(_field(reader, "llama.rope.dimension_count", dim // heads)),
        rope_base=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        vocab=int(embed.shape[0]),
        chat_template=str(_field(reader, "tokenizer.chat_template", "") or ""),
        embed=embed,
        out_norm=tensors["output_norm.weight"],
        output=tensors.get("output.weight"),
        blocks=blocks,
    )


# --- the forward pass (JAX) -----------------------------------------------------------------


def _forward(base: dict[str, Any], lora: dict[str, Any], tokens: Any, cfg: BaseModel) -> Any:
    """Logits ``(T, vocab)`` of one sequence, as llama.cpp computes them, with ``lora``
    (name → (A, B) stacked over layers, already scaled) added to each target projection."""
    import jax
    import jax.numpy as jnp

    seq = tokens.shape[0]
    hd, nh, nkv = cfg.head_dim, cfg.heads, cfg.kv_heads

    def rms(x: Any, w: Any) -> Any:
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + cfg.eps) * w

    # rotary embedding on adjacent pairs (llama.cpp's "normal" mode: GGUF's q/k layout)
    inv = cfg.rope_base ** (-jnp.arange(0, hd, 2, dtype=jnp.float32) / hd)
    ang = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv[None, :]
    cos, sin = jnp.cos(ang)[:, None, :], jnp.sin(ang)[:, None, :]

    def rope(x: Any) -> Any:  # (T, H, hd)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1).reshape(x.shape)

    mask = jnp.tril(jnp.ones((seq, seq), dtype=bool))

    def layer(x: Any, p: tuple[dict[str, Any], dict[str, Any]]) -> tuple[Any, None]:
        w, ab = p

        def proj(h: Any, name: str) -> Any:
            y = h @ w[name].T
            if name in ab:
                a, b = ab[name]
                y = y + (h @ a.T) @ b.T
            return y

        h = rms(x, w["attn_norm"])
        q = rope(proj(h, "attn_q").reshape(seq, nh, hd))
        k = rope(proj(h, "attn_k").reshape(seq, nkv, hd))
        v = proj(h, "attn_v").reshape(seq, nkv, hd)
        k = jnp.repeat(k, nh // nkv, axis=1)
        v = jnp.repeat(v, nh // nkv, axis=1)
        att = jnp.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
        att = jnp.where(mask[None], att, -1e30)
        att = jax.nn.softmax(att, axis=-1)
        o = jnp.einsum("hts,shd->thd", att, v).reshape(seq, nh * hd)
        x = x + proj(o, "attn_output")
        h = rms(x, w["ffn_norm"])
        g = jax.nn.silu(proj(h, "ffn_gate")) * proj(h, "ffn_up")
        x = x + proj(g, "ffn_down")
        return x, None

    x = base["embed"][tokens]
    x, _ = jax.lax.scan(layer, x, (base["blocks"], lora))
    x = rms(x, base["out_norm"])
    return x @ base["output"].T


def _base_arrays(cfg: BaseModel) -> dict[str, Any]:
    import jax.numpy as jnp

    return {
        "embed": jnp.asarray(cfg.embed),
        "out_norm": jnp.asarray(cfg.out_norm),
        "output": jnp.asarray(cfg.output if cfg.output is not None else cfg.embed),
        "blocks": {k: jnp.asarray(v) for k, v in cfg.blocks.items()},
    }


def logits(cfg: BaseModel, tokens: list[int]) -> np.ndarray:
    """The base model's logits for ``tokens`` (no adapter): used to check this forward pass
    against llama.cpp's."""
    import jax
    import jax.numpy as jnp

    base = _base_arrays(cfg)
    fn = jax.jit(lambda b, t: _forward(b, {}, t, cfg))
    return np.asarray(fn(base, jnp.asarray(tokens, dtype=jnp.int32)))


def check_base(path: str | Path, text: str = "") -> dict[str, float]:
    """Compare this forward pass with llama.cpp's on ``path``: the lowest per-position
    correlation of the logits and the share of positions with the same top token. A base
    whose figures are low (another architecture's quirks) would train a useless adapter."""
    from llama_cpp import Llama

    cfg = load_base(path)
    llm: Any = Llama(model_path=str(cfg.path), logits_all=True, n_ctx=256, verbose=False)
    text = text or (
        "<|im_start|>user\nName three colours and one animal.<|im_end|>\n"
        "<|im_start|>assistant\nRed, green"
    )
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)[:200]
    llm.eval(tokens)
    ref = np.asarray(llm.scores[: len(tokens)])
    mine = logits(cfg, tokens)
    corr = [float(np.corrcoef(ref[i], mine[i])[0, 1]) for i in range(len(tokens))]
    return {
        "tokens": float(len(tokens)),
        "min_logit_correlation": round(min(corr), 5),
        "top1_agreement": round(float((ref.argmax(-1) == mine.argmax(-1)).mean()), 4),
    }


# --- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    tokens: list[int]
    first_target: int  # tokens[first_target:] are the answer (and the end-of-turn token)


def _examples(dataset: Path) -> list[list[dict[str, str]]]:
    try:
        lines = dataset.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"dataset {dataset}: {exc}") from exc
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"dataset {dataset.name} line {n}: not a chat example") from exc
        if not messages or messages[-1].get("role") != "assistant":
            raise InputError(f"dataset {dataset.name} line {n}: must end with the assistant")
        out.append(messages)
    return out


def encode_examples(
    model_path: Path, conversations: Iterable[list[dict[str, str]]], chat_template: str
) -> list[Example]:
    """Render each conversation with the model's chat template and tokenize it with the
    model's own tokenizer (llama.cpp's), marking where the final answer starts."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab: Any = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    eos = vocab.detokenize([vocab.token_eos()], special=True).decode(errors="replace")
    bos = vocab.detokenize([vocab.token_bos()], special=True).decode(errors="replace")
    fmt = Jinja2ChatFormatter(template=chat_template, eos_token=eos, bos_token=bos)
    done = []
    for messages in conversations:
        prompt = fmt(messages=messages[:-1]).prompt  # type: ignore[arg-type]
        answer = messages[-1]["content"]
        whole = fmt(messages=messages).prompt  # type: ignore[arg-type]
        if not whole.startswith(prompt):  # templates that render the last turn differently
            whole = prompt + answer + eos
        head = vocab.tokenize(prompt.encode(), add_bos=False, special=True)
        tokens = vocab.tokenize(whole.encode(), add_bos=False, special=True)
        if tokens[: len(head)] != head:
            raise InputError("the chat template's prompt does not prefix the whole example")
        tail = tokens[len(head) :]
        while tail and vocab.detokenize(tail[-1:], special=True).strip() == b"":
            tail = tail[:-1]  # the template's trailing newline is not part of the answer
        tokens = head + tail
        if len(tokens) > MAX_TOKENS:
            cut = len(tokens) - MAX_TOKENS
            if cut >= len(head):
                continue  # an answer longer than the window: skipped
            head, tokens = head[cut:], tokens[cut:]
        done.append(Example(tokens, len(head)))
    return done


# --- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    steps: int = 60
    lr: float = 2e-3
    seed: int = 0
    batch: int = 4  # examples a step (the whole dataset is cycled through, epoch by epoch)


def _init_lora(cfg: BaseModel, lc: LoraConfig) -> dict[str, tuple[Any, Any]]:
    import jax.numpy as jnp

    rng = np.random.default_rng(lc.seed)
    params = {}
    for name in TARGETS:
        out_dim, in_dim = cfg.blocks[name].shape[1:]
        a = rng.normal(0.0, 1.0 / math.sqrt(in_dim), (cfg.layers, lc.rank, in_dim))
        params[name] = (
            jnp.asarray(a, dtype=jnp.float32),
            jnp.zeros((cfg.layers, out_dim, lc.rank), dtype=jnp.float32),
        )
    return params


def train_adapter(
    cfg: BaseModel,
    examples: list[Example],
    lc: LoraConfig,
    progress: Progress | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """Adam on the masked next-token loss of the answers, ``lc.batch`` examples a step
    (padded to the dataset's longest, so one compiled step serves every batch); returns
    ``(A, B)`` per target (stacked over layers, unscaled) and the metrics."""
    import jax
    import jax.numpy as jnp

    if not examples:
        raise InputError("the dataset has no example the trainer can use")
    started = time.perf_counter()
    base = _base_arrays(cfg)
    scale = lc.alpha / lc.rank
    length = max(len(e.tokens) for e in examples)
    tokens = np.zeros((len(examples), length), dtype=np.int32)
    weights = np.zeros((len(examples), length), dtype=np.float32)
    for i, e in enumerate(examples):
        tokens[i, : len(e.tokens)] = e.tokens
        weights[i, e.first_target - 1 : len(e.tokens) - 1] = 1.0  # predicts tokens[t + 1]
    total = float(weights.sum())
    batch = min(lc.batch, len(examples))
    rng = np.random.default_rng(lc.seed)
    order: list[int] = []

    def loss_fn(lora: dict[str, Any], base: dict[str, Any], toks: Any, w: Any) -> Any:
        scaled = {k: (a, b * scale) for k, (a, b) in lora.items()}

        def one(t: Any, wt: Any) -> Any:
            lg = _forward(base, scaled, t, cfg)
            lp = jax.nn.log_softmax(lg[:-1], axis=-1)
            nll = -jnp.take_along_axis(lp, t[1:, None], axis=-1)[:, 0]
            return jnp.sum(nll * wt[:-1])

        return jnp.sum(jax.vmap(one)(toks, w)) / jnp.maximum(jnp.sum(w), 1.0)

    b1, b2 = 0.9, 0.999

    @jax.jit
    def step_fn(state: Any, t: Any, base: dict[str, Any], toks: Any, w: Any) -> Any:
        params, m, v = state
        loss, grads = jax.value_and_grad(loss_fn)(params, base, toks, w)
        m = jax.tree_util.tree_map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
        lr = lc.lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree_util.tree_map(
            lambda p, a, s: p - lr * a / (jnp.sqrt(s) + 1e-8), params, m, v
        )
        return (params, m, v), loss

    params = _init_lora(cfg, lc)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = (params, zeros, zeros)
    losses = []
    for step in range(1, lc.steps + 1):
        if len(order) < batch:  # the next epoch, in a seeded order
            order.extend(int(i) for i in rng.permutation(len(examples)))
        pick = order[:batch]
        del order[:batch]
        toks, w = jnp.asarray(tokens[pick]), jnp.asarray(weights[pick])
        state, loss = step_fn(state, jnp.float32(step), base, toks, w)
        losses.append(float(loss))
        if progress is not None:
            progress(f"step {step}/{lc.steps} loss {losses[-1]:.4f}", step / lc.steps)
    out = {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in state[0].items()}
    metrics = {
        "examples": float(len(examples)),
        "batch": float(batch),
        "answer_tokens": total,
        "steps": float(lc.steps),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return out, metrics


def write_adapter(
    cfg: BaseModel, lora: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float, out: Path
) -> str:
    """Write the adapter as a GGUF LoRA llama.cpp loads over ``cfg``; returns its SHA-256.
    The file is written beside and renamed into place, so a reader never sees half of it."""
    from gguf import GGUFWriter

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    writer = GGUFWriter(str(tmp), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    writer.add_string("general.name", f"{cfg.path.stem} LoRA")
    for i in range(cfg.layers):
        for name, (a, b) in lora.items():
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_a", np.ascontiguousarray(a[i]))
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_b", np.ascontiguousarray(b[i]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, out)
    return digest


# --- the backend ----------------------------------------------------------------------------


class LoraTrainer(Trainer):
    """Runs ``python -m engram.brain.lora`` for a job and reads its JSON result."""

    name = "lora"

    def __init__(self, config: LoraConfig | None = None, python: str = sys.executable) -> None:
        self.config = config or LoraConfig()
        self.python = python

    @classmethod
    def from_settings(cls, settings: Settings) -> LoraTrainer:
        return cls(
            LoraConfig(
                rank=settings.brain_lora_rank,
                alpha=2.0 * settings.brain_lora_rank,
                steps=settings.brain_lora_steps,
                lr=settings.brain_lora_lr,
            )
        )

    async def train(self, job: TrainJob, progress: Progress | None = None) -> TrainResult:
        if job.base_engine != "llama" or not job.base_path:
            raise InputError(
                f"{job.job_id}: a LoRA needs a llama (GGUF) base, not {job.base_engine!r}"
            )
        out = job.out_dir / f"{job.job_id}.lora.gguf"
        c = self.config
        args = [
            self.python, "-m", "engram.brain.lora",
            "--base", job.base_path, "--dataset", str(job.dataset_path), "--out", str(out),
            "--rank", str(c.rank), "--alpha", str(c.alpha), "--steps", str(c.steps),
            "--lr", str(c.lr), "--seed", str(c.seed), "--batch", str(c.batch),
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        assert proc.stdout is not None and proc.stderr is not None
        tail: list[str] = []

        async def read_progress() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                tail.append(line)
                del tail[:-20]
                if line.startswith("progress "):
                    _, frac, stage = line.split(" ", 2)
                    if progress is not None:
                        progress(stage, float(frac))

        reader = asyncio.create_task(read_progress())
        try:
            stdout = await proc.stdout.read()
            code = await proc.wait()
        finally:
            await reader
        if code != 0:
            reason = next((ln for ln in reversed(tail) if ln.strip()), f"exit {code}")
            if code == 2:
                raise InputError(f"{job.job_id}: {reason}")
            raise RuntimeError(f"{job.job_id}: the LoRA trainer failed: {reason}")
        result = json.loads(stdout.decode().strip().splitlines()[-1])
        stem = Path(job.base_path).stem
        return TrainResult(
            engine="llama",
            model=f"{stem}+{job.job_id}",
            base_path=job.base_path,
            adapter=str(out),
            adapter_sha256=result["sha256"],
            metrics=result["metrics"],
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m engram.brain.lora --base M.gguf --dataset D.jsonl --out A.gguf``."""
    p = argparse.ArgumentParser(prog="python -m engram.brain.lora", description=__doc__)
    p.add_argument("--base", required=True)
    p.add_argument("--check", action="store_true", help="compare with llama.cpp; JSON out")
    p.add_argument("--dataset")
    p.add_argument("--out")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args(argv)

    def report(stage: str, frac: float) -> None:
        print(f"progress {frac:.3f} {stage}", file=sys.stderr, flush=True)

    if a.check:
        print(json.dumps(check_base(a.base)))
        return 0
    if not a.dataset or not a.out:
        p.error("--dataset and --out are required to train")
    try:
        report("loading the base", 0.0)
        cfg = load_base(a.base)
        examples = encode_examples(cfg.path, _examples(Path(a.dataset)), cfg.chat_template)
        lc = LoraConfig(
            rank=a.rank, alpha=a.alpha, steps=a.steps, lr=a.lr, seed=a.seed, batch=a.batch
        )
        lora, metrics = train_adapter(cfg, examples, lc, report)
        digest = write_adapter(cfg, lora, lc.alpha, Path(a.out))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"adapter": a.out, "sha256": digest, "metrics": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
