"""Naive float64 references written from the papers, for testing the fast implementations."""

from __future__ import annotations

import torch


def ref_wanda_mask(weight: torch.Tensor, inputs: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda (Sun et al. 2023, eq. 1): S_ij = |W_ij| * ||X_j||_2; per row, drop the k lowest."""
    w, x = weight.double(), inputs.double()
    norms = torch.sqrt((x * x).sum(dim=0))
    mask = torch.zeros(w.shape, dtype=torch.bool)
    k = int(w.shape[1] * sparsity)
    for i in range(w.shape[0]):
        scores = [abs(float(w[i, j])) * float(norms[j]) for j in range(w.shape[1])]
        for j in sorted(range(w.shape[1]), key=lambda j: scores[j])[:k]:
            mask[i, j] = True
    return mask


def ref_sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damping: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1) without its tricks, in float64.

    Each column j is pruned with the OBS update from the explicit inverse of the Hessian restricted to
    the columns not yet processed, F = {j, ..., d-1}: for a pruned weight, delta_F = -w_j / [H_F^-1]_jj *
    [H_F^-1]_{j,F}. The saliency for choosing the mask is w_j^2 / [H_F^-1]_jj, chosen per block of
    ``block_size`` columns (unstructured) or per M columns (N:M), on the current weights.
    """
    w = weight.double().clone()
    h = hessian.double().clone()
    d = h.shape[0]
    h = h + damping * torch.diagonal(h).mean() * torch.eye(d, dtype=torch.float64)
    mask = torch.zeros(w.shape, dtype=torch.bool)

    def inv_diag(j):
        return torch.linalg.inv(h[j:, j:])[0, 0]

    for j in range(d):
        if nm is None and j % block_size == 0:
            cols = range(j, min(j + block_size, d))
            sal = torch.stack([w[:, c] ** 2 / inv_diag(c) for c in cols], dim=1)
            k = int(sal.numel() * sparsity)
            order = torch.argsort(sal.flatten())[:k]
            block_mask = torch.zeros(sal.numel(), dtype=torch.bool)
            block_mask[order] = True
            mask[:, j : j + len(cols)] = block_mask.view_as(sal)
        if nm is not None and j % nm[1] == 0:
            cols = range(j, j + nm[1])
            sal = torch.stack([w[:, c] ** 2 / inv_diag(c) for c in cols], dim=1)
            drop = torch.argsort(sal, dim=1)[:, : nm[1] - nm[0]]
            for r in range(w.shape[0]):
                for c in drop[r]:
                    mask[r, j + int(c)] = True
        h_inv = torch.linalg.inv(h[j:, j:])
        for r in range(w.shape[0]):
            if mask[r, j]:
                w[r, j:] -= w[r, j] / h_inv[0, 0] * h_inv[0, :]
                w[r, j] = 0.0
    return w, mask
