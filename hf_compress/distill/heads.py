"""LM heads and vocabularies of a teacher/student pair.

The logit loss compares the two models over the *real* vocabulary: embedding matrices are often
padded (to a multiple of 64, or after adding tokens), so the compared width is the tokenizer's
length when known, else the smaller head. Different tokenizers are refused before training: a
token id must mean the same string for both models.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from .chunked import Head

logger = logging.getLogger(__name__)


class TokenizerMismatchError(ValueError):
    """Teacher and student do not share a tokenizer, so their logits cannot be compared token by token."""


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or ``model`` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def _full(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Materialise an FSDP2 ``DTensor`` shard as the full tensor (differentiable); plain tensors pass."""
    if tensor is not None and hasattr(tensor, "full_tensor"):
        return tensor.full_tensor()
    return tensor


def lm_head(model: nn.Module) -> Head:
    """The output projection of a causal LM with the config's logit scale and final soft-capping."""
    inner = unwrap_peft(model)
    out = inner.get_output_embeddings()
    if out is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings (LM head); is it a causal LM?")
    cfg = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    scale = getattr(cfg, "logit_scale", None)
    return Head(
        weight=_full(out.weight),
        bias=_full(getattr(out, "bias", None)),
        scale=1.0 if scale is None else float(scale),
        softcap=getattr(cfg, "final_logit_softcapping", None),
    )


def head_rows(model: nn.Module) -> int:
    """Number of rows of the output projection (the padded vocabulary size; ZeRO-3 partitions too)."""
    weight = unwrap_peft(model).get_output_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def vocab_fingerprint(tokenizer) -> str:
    """A short hash of ``tokenizer.get_vocab()`` (token string -> id), for caches and comparisons."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def check_same_tokenizer(student_tokenizer, teacher_tokenizer) -> None:
    """Raise :class:`TokenizerMismatchError` unless both tokenizers map the same strings to the same ids."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab == t_vocab:
        return
    only_s = len(s_vocab.keys() - t_vocab.keys())
    only_t = len(t_vocab.keys() - s_vocab.keys())
    moved = sum(1 for tok, i in s_vocab.items() if tok in t_vocab and t_vocab[tok] != i)
    raise TokenizerMismatchError(
        f"teacher and student tokenizers differ (student {len(s_vocab)} tokens, teacher {len(t_vocab)}; "
        f"{only_s} only in the student, {only_t} only in the teacher, {moved} with different ids). Logit "
        "distillation compares distributions token by token and needs one tokenizer; use sequence-level "
        "distillation (train on teacher generations) for cross-tokenizer pairs."
    )


def load_teacher_tokenizer(teacher: nn.Module):
    """The teacher's tokenizer from its local folder, or ``None`` when it cannot be found offline."""
    name = getattr(getattr(teacher, "config", None), "_name_or_path", None)
    if not name or not Path(name).is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        logger.info("could not load the teacher tokenizer from %s: %s", name, err)
        return None


def compared_vocab(
    student: nn.Module, teacher: nn.Module | None, tokenizer, teacher_vocab: int | None = None
) -> int:
    """Vocabulary width compared by the logit loss; raises if a head is narrower than the tokenizer.

    Args:
        student, teacher: causal LMs (``teacher=None`` for an offline cache, then ``teacher_vocab``).
        tokenizer: the shared tokenizer (``None`` -> the smaller head).
    """
    rows = [head_rows(student)]
    if teacher is not None:
        rows.append(head_rows(teacher))
    if teacher_vocab is not None:
        rows.append(int(teacher_vocab))
    if tokenizer is None:
        return min(rows)
    real = len(tokenizer)
    if min(rows) < real:
        raise TokenizerMismatchError(
            f"the tokenizer has {real} tokens but an LM head has only {min(rows)} rows "
            f"(student {rows[0]}, teacher {rows[1:]}); teacher and student must share the tokenizer"
        )
    return real
