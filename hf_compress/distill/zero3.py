"""LM-head weights under DeepSpeed ZeRO-3, where every parameter is partitioned over the ranks.

ZeRO-3 gathers a module's parameters only around that module's own forward. The chunked logit
loss reads the LM-head weights *outside* the head's forward (it never builds full logits), so:

* the student's head parameters are registered as external parameters of the student's root
  module, whose (redirected) forward encloses the whole loss; DeepSpeed then gathers them for
  that forward and again for its backward;
* the teacher's head parameters (no gradient) are gathered for the duration of the loss.

Outside ZeRO-3 (no ``ds_id`` on the parameters) both helpers do nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn

from .heads import unwrap_peft


def head_parameters(model: nn.Module | None) -> list[nn.Parameter]:
    """Weight (and bias) of the output projection of ``model`` (unwrapped from PEFT); empty for ``None``."""
    if model is None:
        return []
    head = unwrap_peft(model).get_output_embeddings()
    if head is None:
        return []
    return [p for p in (head.weight, getattr(head, "bias", None)) if p is not None]


def partitioned(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters ZeRO-3 has partitioned (those carrying a ``ds_id``)."""
    return [p for p in params if hasattr(p, "ds_id")]


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Full values of ZeRO-3 partitioned ``params`` inside the block (read-only); a no-op otherwise."""
    todo = partitioned(params)
    if not todo:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(todo, modifier_rank=None):
        yield


def register_external(module: nn.Module, params: Iterable[nn.Parameter]) -> None:
    """Have ZeRO-3 gather ``params`` (owned by submodules) for ``module``'s forward and backward."""
    todo = partitioned(params)
    if todo:
        from deepspeed.zero import register_external_parameter

        for param in todo:
            register_external_parameter(module, param)
