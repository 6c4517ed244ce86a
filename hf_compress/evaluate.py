"""Evaluation: perplexity with the pruning papers' pinned protocol, model size, latency.

Perplexity protocol (SparseGPT, Frantar & Alistarh 2023, sec. 4; Wanda, Sun et al. 2024, sec. 4):
the evaluation text is joined with ``"\\n\\n"`` and tokenized once, cut into non-overlapping
windows of ``seqlen`` tokens from the start, each window scored independently, and
``ppl = exp(mean NLL over all predicted tokens)``. Here NLL is accumulated in float64 and logits
are upcast to float32; the loss is computed from hidden states and the LM head in chunks of
tokens, so the ``[batch, seq, vocab]`` float32 logits are never materialized.
"""

from __future__ import annotations

import inspect
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hf_compress.calibration import IGNORE_INDEX, evaluation_plan, source_name
from hf_compress.models.table import ARCHITECTURES, base_model

logger = logging.getLogger(__name__)

# config fields that change logits after the LM head in ways the chunked path does not reproduce
_LOGIT_SCALES = ("logit_scale", "logits_scaling", "output_multiplier_scale")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class PerplexityProtocol:
    """Everything needed to reproduce a perplexity figure (printed in every report)."""

    source: str
    split: str | None
    seqlen: int
    n_windows: int
    stride: int
    add_bos: bool
    n_tokens: int
    n_stream_tokens: int
    dtype: str
    tokenizer: str
    tokenizer_class: str
    model: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One human line, e.g. ``wikitext-2/test.txt | 64 x 512-token windows, stride 512 ...``."""
        overlap = "non-overlapping" if self.stride >= self.seqlen - self.add_bos else "overlapping"
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        split = f" [{self.split}]" if self.split else ""
        return (
            f"perplexity on {self.source}{split} | {self.n_windows} x {self.seqlen}-token windows, "
            f"stride {self.stride} ({overlap}) | {self.n_tokens:,} tokens scored of {self.n_stream_tokens:,} | "
            f"{'BOS added per window' if self.add_bos else 'no BOS'} | {self.dtype} | "
            f"tokenizer {self.tokenizer_class} ({self.tokenizer}) | {versions}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PerplexityResult:
    """``ppl = exp(nll)``; ``nll`` is the mean token NLL in nats over ``n_tokens`` scored tokens."""

    ppl: float
    nll: float
    n_tokens: int
    protocol: PerplexityProtocol
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ppl": self.ppl,
            "nll": self.nll,
            "n_tokens": self.n_tokens,
            "seconds": self.seconds,
            "protocol": self.protocol.to_dict(),
        }


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    source: Any,
    *,
    seqlen: int = 2048,
    max_windows: int | None = None,
    add_bos: bool = False,
    stride: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: bool = True,
    chunk_size: int = 1024,
    check_roundtrip: bool = True,
    **load_kw: Any,
) -> PerplexityResult:
    """Perplexity of a causal LM on ``source`` with the papers' protocol (see the module docstring).

    ``source`` is anything :func:`hf_compress.calibration.load_texts` reads (``load_kw``: ``split``,
    ``text_field``, ``config_name``, ``max_texts``). The tokenizer round-trip check runs first.
    ``stride < seqlen`` gives overlapping windows in which only tokens not scored before count.
    ``device`` is where the windows go (default: the model's first parameter's device; the model is
    not moved). ``chunk_size`` tokens go through the LM head at a time.

    Raises:
        ValueError: a model that is not a causal LM, ``seqlen`` beyond the model's positions, bad
        sizes, too little text. TokenizerRoundTripError.
    """
    start = time.perf_counter()
    model = _unwrap(model)
    _check_causal(model)
    _check_sizes(model, seqlen=seqlen, batch_size=batch_size, chunk_size=chunk_size)
    ids, labels, n_stream = evaluation_plan(
        tokenizer,
        source,
        seqlen=seqlen,
        max_windows=max_windows,
        stride=stride,
        add_bos=add_bos,
        check_roundtrip=check_roundtrip,
        **load_kw,
    )
    protocol = _protocol(model, tokenizer, source, ids, labels, n_stream, stride, add_bos, load_kw)
    logger.info("%s", protocol.describe())
    total, count = _score(model, ids, labels, batch_size, device, progress, chunk_size)
    nll = total / count
    result = PerplexityResult(math.exp(nll), nll, count, protocol, time.perf_counter() - start)
    logger.info(
        "perplexity %.4f (mean NLL %.6f over %d tokens, %.1f s)", result.ppl, nll, count, result.seconds
    )
    return result


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (adapters stay active in its modules)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _check_causal(model: nn.Module) -> None:
    name = type(model).__name__
    spec = ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None))
    causal_name = name.endswith(_CAUSAL_SUFFIXES) or name in _causal_lm_classes()
    if (spec is not None and not spec.causal) or not causal_name or model.get_output_embeddings() is None:
        raise ValueError(
            f"perplexity needs a causal language model with an LM head; got {name} "
            f"(model_type={getattr(model.config, 'model_type', None)!r}). Load it with AutoModelForCausalLM."
        )


def _causal_lm_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _check_sizes(model: nn.Module, *, seqlen: int, batch_size: int, chunk_size: int) -> None:
    for name, value in (("seqlen", seqlen), ("batch_size", batch_size), ("chunk_size", chunk_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions and seqlen > positions:
        raise ValueError(
            f"seqlen={seqlen} exceeds the model's {positions} positions (max_position_embeddings)"
        )


def _protocol(
    model, tokenizer, source, ids, labels, n_stream, stride, add_bos, load_kw
) -> PerplexityProtocol:
    seqlen = ids.shape[1]
    return PerplexityProtocol(
        source=source_name(source, config_name=load_kw.get("config_name")),
        split=load_kw.get("split"),
        seqlen=seqlen,
        n_windows=ids.shape[0],
        stride=stride or seqlen - add_bos,
        add_bos=add_bos,
        n_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()),
        n_stream_tokens=n_stream,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        tokenizer=str(getattr(tokenizer, "name_or_path", "") or "?"),
        tokenizer_class=type(tokenizer).__name__,
        model=str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        versions=_versions(),
    )


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("hf-compress", "torch", "transformers", "tokenizers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


@torch.inference_mode()
def _score(model, ids, labels, batch_size, device, progress, chunk_size) -> tuple[float, int]:
    """Sum of token NLLs (float64) and the count of scored tokens over all windows."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    forward = _hidden_and_head(model)
    total, count = 0.0, 0
    try:
        for i in tqdm(range(0, ids.shape[0], batch_size), desc="perplexity", disable=not progress):
            hidden, head = forward(ids[i : i + batch_size].to(device))
            nll, n = token_nll(hidden, labels[i : i + batch_size].to(device), head, chunk_size=chunk_size)
            total, count = total + float(nll), count + n
    finally:
        model.train(was_training)
    return total, count


def _hidden_and_head(model: nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, Callable]]:
    """``ids -> (hidden [b, s, h], head)`` with ``head(h) = logits``; full logits when not reproducible."""
    config = model.config
    backbone, lm_head = base_model(model), model.get_output_embeddings()
    chunked = (
        config.model_type in ARCHITECTURES
        and backbone is not model
        and not any(getattr(config, k, None) not in (None, 1, 1.0) for k in _LOGIT_SCALES)
    )
    cap = getattr(config, "final_logit_softcapping", None)

    def head(h: torch.Tensor) -> torch.Tensor:
        logits = lm_head(h).float()
        return torch.tanh(logits / cap) * cap if cap else logits

    def hidden_forward(ids: torch.Tensor):
        out = backbone(input_ids=ids, use_cache=False)
        return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]), head

    def logits_forward(ids: torch.Tensor):
        return model(input_ids=ids, use_cache=False).logits, lambda x: x.float()

    if not chunked:
        logger.info(
            "perplexity: %s logits computed in full (no chunked LM head for it)", type(model).__name__
        )
    return hidden_forward if chunked else logits_forward


def token_nll(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    *,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, int]:
    """Sum of next-token NLLs (float64 scalar) and the number of scored tokens.

    Args:
        hidden: ``[b, s, h]`` states (or ``[b, s, vocab]`` logits with ``head`` the identity).
        labels: ``[b, s]`` token ids, ``-100`` where nothing is scored (padding, position 0, BOS);
            position ``p`` is predicted from position ``p - 1``.
        head: maps ``[n, h]`` states to ``[n, vocab]`` float32 logits.
        chunk_size: tokens per head call (bounds the float32 logits to ``[chunk_size, vocab]``).
    """
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    states, targets = states[keep], targets[keep]
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for i in range(0, targets.numel(), chunk_size):
        logits = head(states[i : i + chunk_size]).float()
        total += F.cross_entropy(logits, targets[i : i + chunk_size], reduction="none").double().sum()
    return total, int(targets.numel())


# ------------------------------------------------------------------------------------ size, speed


def model_size(model_or_path: nn.Module | str | Path) -> dict[str, Any]:
    """Parameter counts (total, non-zero, sparsity) and bytes (on disk for a safetensors path).

    A model counts each shared (tied) parameter once; a path counts the tensors stored in its
    ``*.safetensors`` files (a folder or one file), which also store tied weights once.
    """
    if isinstance(model_or_path, (str, Path)):
        return _checkpoint_size(Path(model_or_path))
    params = list(model_or_path.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    return _size_dict(total, nonzero, bytes_in_memory=sum(p.numel() * p.element_size() for p in params))


def _checkpoint_size(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no .safetensors file at {str(path)!r}")
    total = nonzero = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                tensor = f.get_tensor(key)
                total += tensor.numel()
                nonzero += int(torch.count_nonzero(tensor))
    return _size_dict(total, nonzero, bytes_on_disk=sum(f.stat().st_size for f in files))


def _size_dict(total: int, nonzero: int, **extra: int) -> dict[str, Any]:
    return {
        "parameters": total,
        "nonzero_parameters": nonzero,
        "sparsity": 1.0 - nonzero / total if total else 0.0,
        "bytes_on_disk": extra.get("bytes_on_disk"),
        "bytes_in_memory": extra.get("bytes_in_memory"),
    }


@torch.inference_mode()
def latency(
    model: nn.Module,
    *,
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Median prefill time (ms) and greedy decode speed (tokens/s, with KV cache) on random ids.

    Returns ``{"prefill_ms", "decode_tokens_per_s", "decode_ms_per_token", "prompt_tokens",
    "new_tokens", "repeats", "device", "dtype", "threads"}``.
    """
    for name, value in (("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens), ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be >= 0")
    param = next(model.parameters())
    vocab = model.get_input_embeddings().num_embeddings
    prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(seed))
    prompt = prompt.to(param.device)
    was_training = model.training
    model.eval()
    try:
        runs = [_one_generation(model, prompt, new_tokens) for _ in range(warmup + repeats)][warmup:]
    finally:
        model.train(was_training)
    prefill = statistics.median(r[0] for r in runs)
    decode = statistics.median(r[1] for r in runs)
    return {
        "prefill_ms": prefill * 1e3,
        "decode_tokens_per_s": new_tokens / decode,
        "decode_ms_per_token": decode / new_tokens * 1e3,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "device": str(param.device),
        "dtype": str(param.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }


def _one_generation(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for the prefill and for ``new_tokens`` greedy cached decode steps."""
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    sync = torch.cuda.synchronize if prompt.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True, **keep)
    sync()
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        cache = out.get("cache", out.get("past_key_values"))
        out = model(input_ids=out.logits[:, -1:].argmax(-1), use_cache=True, **{cache_arg: cache})
    sync()
    return t1 - t0, time.perf_counter() - t1
