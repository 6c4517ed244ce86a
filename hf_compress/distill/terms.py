"""Feature, attention and contrastive terms of one micro-batch (the non-logit parts of the loss).

Each term is a weighted sum over *rows* (trained token positions for causal LMs, real tokens with
weight 1/length for classifiers) divided by the step's global count, so it normalises like the
logit term. Teacher heads are averaged in groups onto the student's (all heads when counts do not
divide). See :mod:`.losses` for the per-row definitions and references.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .distillation_config import DistillationConfig
from .features import Captured, Projections, pool
from .losses import attention_kl, attention_mse, hidden_cosine, hidden_mse, info_nce, map_heads

Rows = Callable[[torch.Tensor], torch.Tensor]


def feature_terms(
    args: DistillationConfig,
    layer_map: list[tuple[int, int]],
    projections: Projections | None,
    student: Captured,
    teacher: Captured,
    rows: Rows,
    weights: torch.Tensor,
    count: torch.Tensor,
    logs: dict[str, torch.Tensor],
) -> torch.Tensor:
    """``feature_weight * hidden loss + attention_weight * attention loss``, mean over mapped layers."""
    total = weights.new_zeros(())
    if not layer_map:
        return total
    norm = weights.sum().clamp(min=1e-12)
    if args.feature_weight > 0:
        fn = hidden_mse if args.feature_loss == "mse" else hidden_cosine
        per = sum(
            fn(projections.hidden[str(s)](rows(student.hidden[s])), rows(teacher.hidden[t]))
            for s, t in layer_map
        ) / len(layer_map)
        logs["feature_loss"] = (per * weights).sum().detach() / norm
        total = total + args.feature_weight * (per * weights).sum() / count
    if args.attention_weight > 0:
        fn = attention_kl if args.attention_loss == "kl" else attention_mse
        per = sum(attention_rows(student.attn[s], teacher.attn[t], rows, fn) for s, t in layer_map) / len(
            layer_map
        )
        logs["attention_loss"] = (per * weights).sum().detach() / norm
        total = total + args.attention_weight * (per * weights).sum() / count
    return total


def attention_rows(s_attn: torch.Tensor, t_attn: torch.Tensor, rows: Rows, fn) -> torch.Tensor:
    """Per-query-row loss between ``[B, H, T, T]`` maps, after mapping teacher heads onto the student's."""
    hs, ht = s_attn.shape[1], t_attn.shape[1]
    if hs != ht:
        if ht % hs == 0:
            t_attn = map_heads(t_attn, hs)
        else:
            s_attn, t_attn = map_heads(s_attn, 1), map_heads(t_attn, 1)
    # [B, H, T, T] -> [B, T, H, T] so that rows select query positions
    return fn(rows(s_attn.transpose(1, 2)), rows(t_attn.transpose(1, 2)))


def contrastive_term(
    args: DistillationConfig,
    projections: Projections,
    s_last: torch.Tensor,
    t_last: torch.Tensor,
    attention_mask: torch.Tensor | None,
    accumulation_steps: int,
    logs: dict[str, torch.Tensor],
) -> torch.Tensor:
    """InfoNCE on pooled final states: a micro-batch mean divided by the accumulation steps."""
    s_pool = pool(s_last, attention_mask, args.contrastive_pooling)
    t_pool = pool(t_last.to(s_last.device), attention_mask, args.contrastive_pooling)
    nce = info_nce(projections.pooled(s_pool), t_pool, args.contrastive_temperature).mean()
    logs["contrastive_loss"] = nce.detach()
    return args.contrastive_weight * nce / accumulation_steps
