"""Uniform access to prunable weights: ``nn.Linear`` ([out, in]) and GPT-2 ``Conv1D`` ([in, out])."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

try:  # transformers keeps Conv1D in pytorch_utils
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old transformers
    Conv1D = ()  # type: ignore[assignment]


def is_prunable(module: nn.Module) -> bool:
    """True for modules whose weight is a 2-D projection we know how to prune."""
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out_features, in_features]`` (a view; a transpose for Conv1D)."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.t()


def set_weight_out_in(module: nn.Module, new: torch.Tensor) -> None:
    """Copy an ``[out, in]`` tensor into the module's weight, in its own layout and dtype."""
    target = weight_out_in(module)
    with torch.no_grad():
        target.copy_(new.to(dtype=target.dtype, device=target.device))


def prunable_modules(
    root: nn.Module, targets: Sequence[str] | None = None, ignore: Sequence[str] = (), prefix: str = ""
) -> dict[str, nn.Module]:
    """Prunable modules under ``root`` whose full name matches a ``targets`` regex and no ``ignore`` one.

    ``targets=None`` means every prunable module. Names are ``prefix + name`` (``re.search`` semantics).
    """
    found = {}
    for name, module in root.named_modules():
        full = f"{prefix}{name}"
        if not is_prunable(module):
            continue
        if targets is not None and not any(re.search(p, full) for p in targets):
            continue
        if any(re.search(p, full) for p in ignore):
            continue
        found[full] = module
    return found
