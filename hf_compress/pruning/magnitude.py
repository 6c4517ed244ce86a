"""Magnitude pruning: remove the smallest ``|W|`` (Han et al. 2015, "Learning both Weights and Connections")."""

from __future__ import annotations

import torch

from .masks import mask_lowest, mask_nm


def magnitude_mask(
    weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None, group: str = "layer"
) -> torch.Tensor:
    """Bool ``[out, in]`` mask of the weights to prune by ``|W|`` (per layer, per row, or N:M)."""
    scores = weight.detach().abs().float()
    return mask_nm(scores, *nm) if nm else mask_lowest(scores, sparsity, group)
