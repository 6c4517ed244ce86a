"""Per-block sparsity schedules: uniform, explicit lists, and OWL.

OWL: Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
LLMs to High Sparsity". A block's layerwise outlier distribution (LOD) is the fraction of its Wanda
scores ``|W| * ||X||`` above ``M`` times the module's mean score; blocks with more outliers keep more
weights. Sparsities are ``target - lambda * (2 * norm(LOD) - 1)`` with ``norm`` min-max scaling,
then shifted so their mean is exactly ``target``.
"""

from __future__ import annotations

import torch


def uniform_sparsities(n_blocks: int, sparsity: float) -> list[float]:
    return [float(sparsity)] * n_blocks


def explicit_sparsities(values: list[float], n_blocks: int) -> list[float]:
    """Validate a per-block list against the model's block count."""
    if len(values) != n_blocks:
        raise ValueError(f"layer_sparsity has {len(values)} entries but the model has {n_blocks} blocks")
    return [float(v) for v in values]


def outlier_ratio(scores: torch.Tensor, threshold: float) -> tuple[int, int]:
    """``(outliers, total)`` for one module's ``[out, in]`` Wanda scores: count of scores > threshold x mean."""
    return int((scores > threshold * scores.mean()).sum()), scores.numel()


def owl_sparsities(lod: list[float], target: float, lam: float) -> list[float]:
    """OWL per-block sparsities from each block's outlier ratio; mean equals ``target``, all in [0, 1)."""
    ratios = torch.tensor(lod, dtype=torch.float64)
    spread = ratios.max() - ratios.min()
    norm = (ratios - ratios.min()) / spread if spread > 0 else torch.zeros_like(ratios)
    sparsities = target - lam * (2 * norm - 1)
    sparsities += target - sparsities.mean()
    return [min(max(float(s), 0.0), 0.999) for s in sparsities]
