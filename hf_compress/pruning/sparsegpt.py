"""SparseGPT: one-shot pruning with an OBS weight update from the layer-input Hessian.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot".
For ``W`` (``[out, in]``) and ``H = 2/n * X^T X`` (``[in, in]``, fp32), columns are processed left to
right; pruning column ``j`` adds ``-(w_j / d_j) * U[j, j:]`` to the columns still to come, where
``U`` is the upper Cholesky factor of ``H^-1`` (so ``U[j, j]^2 = [(H_{j:, j:})^-1]_{00}``). Updates to
columns past the current block are applied lazily, once per block. Masks are chosen per block of
``block_size`` columns (unstructured: lowest ``w^2 / U_jj^2`` in the ``[out, block]`` group) or per
``M`` columns (N:M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .masks import apply_mask_, mask_lowest, mask_nm


class HessianStats:
    """Accumulates ``X^T X`` of a linear layer's inputs in fp32 over calibration tokens.

    Only the upper block triangle is computed (the matrix is symmetric): the columns are split into
    ``k`` bands and band ``i`` accumulates ``X[:, band_i]^T X[:, start_i:]`` (one GEMM per band, about
    ``(k + 1) / 2k`` of the full product's work). All bands live in one flat buffer, so a distributed
    run reduces a single tensor. :attr:`xtx` assembles the full matrix.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        bands = min(16, max(1, math.ceil(in_features / 256)))
        self._starts = [round(i * in_features / bands) for i in range(bands + 1)]
        sizes = [(b - a) * (in_features - a) for a, b in zip(self._starts, self._starts[1:])]
        self.packed = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
        self._views = [
            chunk.view(b - a, in_features - a)
            for chunk, a, b in zip(self.packed.split(sizes), self._starts, self._starts[1:])
        ]
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        """``inputs``: ``[tokens, in]`` activations of valid (non-padding) tokens."""
        x = inputs.float()
        for view, a, b in zip(self._views, self._starts, self._starts[1:]):
            view.addmm_(x[:, a:b].t(), x[:, a:])
        self.tokens += x.shape[0]

    @property
    def xtx(self) -> torch.Tensor:
        """The full symmetric ``X^T X`` (``[in, in]``, fp32), assembled from the bands."""
        size = self._starts[-1]
        full = torch.empty(size, size, dtype=torch.float32, device=self.packed.device)
        for view, a, b in zip(self._views, self._starts, self._starts[1:]):
            full[a:b, a:] = view
            full[b:, a:b] = view[:, b - a :].t()
        return full

    def hessian(self) -> torch.Tensor:
        """``2/n * X^T X`` (``[in, in]``, fp32)."""
        return self.xtx.mul_(2.0 / max(self.tokens, 1))


@dataclass
class SparseGPTResult:
    """Pruned ``[out, in]`` fp32 weight, its mask, the OBS loss, and how the inversion went."""

    weight: torch.Tensor
    mask: torch.Tensor
    loss: float
    damping: float
    cholesky_retries: int


class CholeskyError(RuntimeError):
    """The damped Hessian stayed non-positive-definite after every retry."""


def inverse_hessian_factor(
    hessian: torch.Tensor, damping: float, max_retries: int = 6
) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of ``(H + damping * mean(diag H) * I)^-1``.

    On failure the damping grows 10x per retry; the retries are returned so reports can count them.
    Raises :class:`CholeskyError` rather than silently skipping the update.
    """
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    mean_diag = hessian.diagonal().mean()
    for retry in range(max_retries + 1):
        lower, info = torch.linalg.cholesky_ex(hessian + damping * mean_diag * eye)
        if info == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info == 0:
                return upper, damping, retry
        damping *= 10
    raise CholeskyError(f"Hessian not positive definite even with damping {damping / 10:g} x mean diagonal")


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damping: float = 0.01,
) -> SparseGPTResult:
    """Prune ``weight`` (``[out, in]``) to ``sparsity`` (or N:M) and update the kept weights.

    The input is not modified; the returned weight is fp32 with ``+0.0`` at every pruned position.
    """
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    upper, used_damping, retries = inverse_hessian_factor(h, damping)
    mask = torch.zeros_like(w, dtype=torch.bool)
    loss = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
    for start in range(0, w.shape[1], block_size):
        end = min(start + block_size, w.shape[1])
        errors = _prune_block(w, upper, mask, loss, start, end, sparsity, nm)
        w[:, end:] -= errors @ upper[start:end, end:]
    apply_mask_(w, mask)
    return SparseGPTResult(w, mask, float(loss.sum()), used_damping, retries)


def _prune_block(w, upper, mask, loss, start, end, sparsity, nm) -> torch.Tensor:
    """Prune columns ``start:end`` in place, propagating inside the block; returns ``[out, end-start]`` errors.

    Column ``j``'s error is ``w_j * pruned_j / d_j``; subtracting ``err (x) U[j, j:]`` (one rank-1 update)
    also leaves column ``j`` at its kept value, since ``U[j, j] = d_j`` (pruned entries are zeroed at the end).
    """
    block = w[:, start:end]
    u = upper[start:end, start:end]
    d = u.diagonal()
    block_mask = mask[:, start:end]
    if nm is None:
        block_mask.copy_(mask_lowest(block.pow(2) / d.pow(2), sparsity, "layer"))
    errors = torch.empty_like(block)
    for j in range(block.shape[1]):
        if nm is not None and j % nm[1] == 0:
            cols = slice(j, j + nm[1])
            block_mask[:, cols] = mask_nm(block[:, cols].pow(2) / d[cols].pow(2), *nm)
        err = errors[:, j]
        torch.mul(block[:, j], block_mask[:, j], out=err).div_(d[j])
        block[:, j:].addr_(err, u[j, j:], alpha=-1.0)
    loss += errors.pow(2).sum(dim=1) / 2
    return errors
