"""Running a computation *as* a wrapped model's forward, and splitting a batch into model inputs.

Distillation needs the student's final hidden states and LM-head weight, not its logits. Calling
the backbone of a DDP/FSDP/DeepSpeed-wrapped model directly would bypass the wrapper's forward
(DDP's gradient-sync bookkeeping, FSDP's parameter unsharding). ``redirect`` temporarily swaps the
inner module's ``forward`` for our function and calls the wrapper, so the wrapper's pre/post-forward
logic surrounds the whole loss computation ("forward redirection", as in PyTorch Lightning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Batch keys that are not inputs of the model's forward.
NON_MODEL_KEYS = frozenset(
    {"labels", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_logprob", "num_items_in_batch"}
)


def redirect(wrapper: nn.Module, inner: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` inside ``wrapper``'s forward, where ``wrapper`` wraps ``inner``.

    FSDP2 shards in place (``wrapper is inner``) and unshards the root's own parameters (embeddings,
    final norm, head) in hooks around its forward, so such a module is redirected too.
    """
    if wrapper is inner and not _is_fsdp2(inner):
        return fn(*args, **kwargs)
    had_instance_forward = "forward" in inner.__dict__
    original = inner.forward

    def _restore() -> None:
        if had_instance_forward:
            inner.forward = original
        else:
            inner.__dict__.pop("forward", None)

    def _patched(*a: Any, **k: Any) -> Any:
        _restore()
        return fn(*a, **k)

    inner.forward = _patched
    try:
        return wrapper(*args, **kwargs)
    finally:
        _restore()


def _is_fsdp2(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(module, FSDPModule)


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The forward kwargs of a collated batch (everything but labels and teacher-cache columns)."""
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


def backbone_hidden(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """Final (post-norm) hidden states ``[B, T, H]`` of a transformers causal LM, without the LM head."""
    backbone = model.base_model
    if backbone is model:
        raise ValueError(
            f"{type(model).__name__} exposes no separate backbone (base_model is the model itself)"
        )
    return backbone(**{**inputs, "use_cache": False}).last_hidden_state
