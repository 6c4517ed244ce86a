"""Perplexity and latency of an ONNX causal LM, with the same protocols as :mod:`hf_compress.evaluate`.

The windows come from :func:`hf_compress.calibration.evaluation_plan` and the NLL from
:func:`hf_compress.evaluate.token_nll`, so an ONNX figure and a PyTorch figure on the same text
are computed identically (only the forward pass differs). Latency follows
:func:`hf_compress.evaluate.latency`: median prefill of ``prompt_tokens`` random ids (batch 1) and
greedy cached decode speed, with ONNX Runtime on as many threads as torch uses.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration import IGNORE_INDEX, evaluation_plan, source_name
from .evaluate import PerplexityProtocol, PerplexityResult, token_nll
from .onnx_session import OnnxCausalLM

logger = logging.getLogger(__name__)


def onnx_perplexity(
    lm: OnnxCausalLM,
    tokenizer: Any,
    source: Any,
    *,
    seqlen: int = 2048,
    max_windows: int | None = None,
    add_bos: bool = False,
    stride: int | None = None,
    progress: bool = True,
    check_roundtrip: bool = True,
    **load_kw: Any,
) -> PerplexityResult:
    """Perplexity of the ONNX graph behind ``lm`` on ``source`` (the papers' protocol, see evaluate.py)."""
    start = time.perf_counter()
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
    total, count = 0.0, 0
    for row in tqdm(range(ids.shape[0]), desc=f"perplexity ({lm.path.name})", disable=not progress):
        logits = lm.logits(ids[row : row + 1])
        nll, n = token_nll(logits, labels[row : row + 1], lambda x: x.float())
        total, count = total + float(nll), count + n
    nll = total / count
    protocol = PerplexityProtocol(
        source=source_name(source, config_name=load_kw.get("config_name")),
        split=load_kw.get("split"),
        seqlen=ids.shape[1],
        n_windows=ids.shape[0],
        stride=stride or ids.shape[1] - add_bos,
        add_bos=add_bos,
        n_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()),
        n_stream_tokens=n_stream,
        dtype=f"onnx ({lm.path.name})",
        tokenizer=str(getattr(tokenizer, "name_or_path", "") or "?"),
        tokenizer_class=type(tokenizer).__name__,
        model=str(lm.path),
        versions=_versions(),
    )
    result = PerplexityResult(math.exp(nll), nll, count, protocol, time.perf_counter() - start)
    logger.info("%s -> perplexity %.4f", protocol.describe(), result.ppl)
    return result


def onnx_latency(
    lm: OnnxCausalLM,
    *,
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """Median prefill time (ms) and greedy cached decode speed (tokens/s) of ``lm`` (batch 1)."""
    for name, value in (("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens), ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    vocab = vocab_size or int(lm.config.get("vocab_size", 0))
    if vocab < 1:
        raise ValueError("vocab_size is unknown: pass vocab_size= (no config.json next to the graph)")
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=generator).numpy()
    runs = [_one_generation(lm, prompt, new_tokens) for _ in range(warmup + repeats)][warmup:]
    prefill = statistics.median(r[0] for r in runs)
    decode = statistics.median(r[1] for r in runs)
    return {
        "prefill_ms": prefill * 1e3,
        "decode_tokens_per_s": new_tokens / decode,
        "decode_ms_per_token": decode / new_tokens * 1e3,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "device": "cpu (onnxruntime)",
        "dtype": lm.path.name,
        "threads": lm.session.get_session_options().intra_op_num_threads,
    }


def _one_generation(lm: OnnxCausalLM, prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    logits, cache = lm.forward(prompt)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        logits, cache = lm.forward(token, cache)
    return t1 - t0, time.perf_counter() - t1


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("hf-compress", "onnxruntime", "transformers", "tokenizers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


PARITY_TEXTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
    " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor .",
)


@torch.inference_mode()
def causal_parity(
    model: Any,
    tokenizer: Any,
    lm: OnnxCausalLM,
    *,
    generate_tokens: int = 8,
    texts: tuple[str, ...] = PARITY_TEXTS,
) -> dict[str, Any]:
    """ONNX vs PyTorch on ``texts``: max |logit diff|, argmax agreement, greedy generations.

    Returns ``{"max_abs_diff", "argmax_agreement", "generation": [{"prompt", "pytorch", "onnx",
    "equal", "common_prefix"}]}``; generated continuations are decoded text.
    """
    worst, agree, total, generations = 0.0, 0, 0, []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        ref = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        got = lm.logits(ids)
        worst = max(worst, float((ref - got).abs().max()))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += ids.shape[1]
        if generate_tokens:
            generations.append(_generation_pair(model, tokenizer, lm, ids, generate_tokens, text))
    return {"max_abs_diff": worst, "argmax_agreement": agree / total, "generation": generations}


def _generation_pair(model, tokenizer, lm, ids, n, text) -> dict[str, Any]:
    mask = torch.ones_like(ids)
    want = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
    )[0, ids.shape[1] :].tolist()
    have = lm.generate(ids, n)[0, ids.shape[1] :].tolist()
    prefix = next(
        (i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b), min(len(want), len(have))
    )
    return {
        "prompt": text,
        "pytorch": tokenizer.decode(want),
        "onnx": tokenizer.decode(have),
        "equal": want == have,
        "common_prefix": prefix,
    }


@torch.inference_mode()
def classifier_parity(
    model: Any, tokenizer: Any, session: Any, texts: tuple[str, ...] = PARITY_TEXTS
) -> dict[str, Any]:
    """Classifier logits ONNX vs PyTorch: max |diff| and label agreement."""
    from .onnx_session import run_classifier

    worst, agree = 0.0, 0
    for text in texts:
        enc = tokenizer(text, return_tensors="pt")
        ref = model(**enc).logits.float()
        got = run_classifier(session, enc["input_ids"], enc.get("attention_mask"))
        worst = max(worst, float((ref - got).abs().max()))
        agree += int((ref.argmax(-1) == got.argmax(-1)).all())
    return {"max_abs_diff": worst, "label_agreement": agree / len(texts)}
