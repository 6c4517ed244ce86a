"""Intermediate states for feature distillation: layer maps, capture hooks and projections.

Block outputs (hidden states) and attention probabilities are captured with forward hooks on the
*mapped* blocks only, for the duration of one forward pass. Attention probabilities need the eager
attention implementation (SDPA/flash kernels never form them).

Layer map ``"uniform"`` follows TinyBERT (Jiao et al. 2020): student block ``i`` (0-based, of ``Ls``)
learns from teacher block ``(i + 1) * Lt // Ls - 1``, so the last blocks are paired.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.table import arch_spec, config_value, decoder_layers


def uniform_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """TinyBERT's uniform map: ``[(i, (i + 1) * n_teacher // n_student - 1) for i in range(n_student)]``."""
    return [(i, (i + 1) * n_teacher // n_student - 1) for i in range(n_student)]


def resolve_layer_map(
    spec: str | Sequence[Sequence[int]], n_student: int, n_teacher: int
) -> list[tuple[int, int]]:
    """``"uniform"`` or explicit ``(student_block, teacher_block)`` pairs, checked against the depths."""
    pairs = (
        uniform_layer_map(n_student, n_teacher) if spec == "uniform" else [(int(s), int(t)) for s, t in spec]
    )
    for s, t in pairs:
        if not (0 <= s < n_student and 0 <= t < n_teacher):
            raise ValueError(
                f"feature_layers pair ({s}, {t}) is out of range: the student has {n_student} blocks "
                f"and the teacher {n_teacher} (0-based indices)"
            )
    return pairs


def hidden_width(model: nn.Module) -> int:
    """Hidden width from the config through the architecture table."""
    return int(config_value(model.config, arch_spec(model).hidden))


def _attention_module(block: nn.Module, model: nn.Module) -> nn.Module:
    """The attention module of one block: the parent of its q (or fused qkv) projection."""
    spec = arch_spec(model)
    path = spec.qkv or spec.q
    return block.get_submodule(path.rsplit(".", 1)[0])


@dataclass
class Captured:
    """States captured during one forward: ``hidden[block] [B, T, D]``, ``attn[block] [B, H, T, T]``."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    attn: dict[int, torch.Tensor] = field(default_factory=dict)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def capture(
    model: nn.Module, hidden_blocks: Sequence[int] = (), attn_blocks: Sequence[int] = ()
) -> Iterator[Captured]:
    """Hook the listed blocks of ``model`` for one forward and yield what they produce.

    Hidden states are the block outputs; attention maps are the second output of the block's
    attention module (eager attention). Hooks are removed on exit.
    """
    got = Captured()
    handles = []
    layers = decoder_layers(model) if (hidden_blocks or attn_blocks) else []
    for i in sorted(set(hidden_blocks)):
        handles.append(
            layers[i].register_forward_hook(lambda _m, _a, out, i=i: got.hidden.__setitem__(i, _first(out)))
        )
    for i in sorted(set(attn_blocks)):
        attn = _attention_module(layers[i], model)

        def _keep(_m, _a, out, i=i):
            weights = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
            if weights is None:
                raise RuntimeError(
                    "attention distillation needs attention probabilities, but the attention module returned "
                    "none; load the model with attn_implementation='eager'"
                )
            got.attn[i] = weights

        handles.append(attn.register_forward_hook(_keep))
    try:
        yield got
    finally:
        for handle in handles:
            handle.remove()


class Projections(nn.Module):
    """Learned linear maps from student widths to teacher widths (TinyBERT's ``W_h``; CRD's embedding head).

    ``hidden[str(i)]`` maps student block ``i``'s state; ``pooled`` maps the pooled representation for
    the contrastive loss. A map is ``nn.Identity`` when widths already agree.
    """

    def __init__(self, student_width: int, teacher_width: int, blocks: Sequence[int], pooled: bool) -> None:
        super().__init__()

        def make() -> nn.Module:
            if student_width == teacher_width:
                return nn.Identity()
            return nn.Linear(student_width, teacher_width, bias=False)

        self.hidden = nn.ModuleDict({str(i): make() for i in blocks})
        self.pooled = make() if pooled else None

    @property
    def has_parameters(self) -> bool:
        return any(True for _ in self.parameters())


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """Pool ``[B, T, D]`` into ``[B, D]``: ``mean`` over valid tokens, ``first`` token, or ``last`` valid token."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    if how == "first":
        return hidden[:, 0]
    if how == "last":
        last = attention_mask.long().cumsum(1).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling={how!r} is not supported; allowed: mean, first, last")
