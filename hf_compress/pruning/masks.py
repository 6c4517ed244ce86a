"""Which weights to remove, given scores: the comparison groups shared by every method.

Convention everywhere: a mask is a bool tensor shaped like the ``[out, in]`` weight, ``True`` = pruned.
An ``N:M`` pattern keeps at most ``N`` nonzeros in every run of ``M`` consecutive input weights
(NVIDIA's 2:4 semi-structured sparsity; Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").
"""

from __future__ import annotations

import torch


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``None`` / ``"unstructured"`` -> ``None``. Validates ``0 < N < M``."""
    if pattern in (None, "unstructured"):
        return None
    try:
        n, m = (int(part) for part in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"pattern={pattern!r} is not 'unstructured' or 'N:M' (e.g. '2:4', '4:8')") from None
    if not 0 < n < m:
        raise ValueError(f"pattern={pattern!r} needs 0 < N < M (N kept of every M); got N={n}, M={m}")
    return n, m


def mask_lowest(scores: torch.Tensor, sparsity: float, group: str = "layer") -> torch.Tensor:
    """Prune the ``sparsity`` fraction of lowest scores in each comparison group.

    Args:
        scores: ``[out, in]`` importance (higher = keep).
        group: ``"layer"`` (one group: the whole matrix) or ``"row"`` (each output row separately,
            as Wanda; Sun et al. 2023).
    Returns:
        bool ``[out, in]``, ``True`` where pruned; exactly ``floor(sparsity * group size)`` per group.
    """
    if group == "row":
        k = int(scores.shape[1] * sparsity)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        if k:
            idx = torch.topk(scores, k, dim=1, largest=False).indices
            mask.scatter_(1, idx, True)
        return mask
    if group == "layer":
        k = int(scores.numel() * sparsity)
        mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        if k:
            mask[torch.topk(scores.flatten(), k, largest=False).indices] = True
        return mask.view_as(scores)
    raise ValueError(f"group={group!r} is not one of 'layer', 'row'")


def mask_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in each run of ``m`` consecutive inputs; ``[out, in]`` -> bool mask.

    ``in`` must be a multiple of ``m``.
    """
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M pattern needs in_features divisible by M={m}; got in_features={cols}")
    groups = scores.reshape(rows, cols // m, m)
    drop = torch.topk(groups, m - n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, drop, True)
    return mask.reshape(rows, cols)


def apply_mask_(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero ``weight`` where ``mask`` in place, writing ``+0.0`` (multiplying by 0 would leave ``-0.0``)."""
    return weight.masked_fill_(mask, 0.0)


def satisfies_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every run of ``m`` consecutive inputs of ``[out, in]`` has at most ``n`` nonzeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    nonzero = (weight != 0).reshape(rows, cols // m, m).sum(dim=2)
    return bool((nonzero <= n).all())
