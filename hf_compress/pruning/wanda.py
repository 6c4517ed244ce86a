"""Wanda: prune by ``|W_ij| * ||X_j||_2`` per output row, no weight update.

Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning Approach for Large Language Models".
"""

from __future__ import annotations

import torch

from .masks import mask_lowest, mask_nm


class WandaStats:
    """Accumulates the squared L2 norm of each input feature over calibration tokens (fp32)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        """``inputs``: ``[tokens, in]`` activations of valid (non-padding) tokens."""
        x = inputs.float()
        self.sq_norm += x.pow(2).sum(dim=0)
        self.tokens += x.shape[0]


def wanda_scores(weight: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` scores ``|W| * sqrt(sum_t x_tj^2)``."""
    return weight.detach().float().abs() * sq_norm.sqrt().unsqueeze(0)


def wanda_mask(
    weight: torch.Tensor, stats: WandaStats, sparsity: float, nm: tuple[int, int] | None = None
) -> torch.Tensor:
    """Bool ``[out, in]`` mask: per-row lowest Wanda scores (or the N:M lowest in each group)."""
    scores = wanda_scores(weight, stats.sq_norm.to(weight.device))
    return mask_nm(scores, *nm) if nm else mask_lowest(scores, sparsity, "row")
