"""Sparse full fine-tuning: keep pruned weights at exactly ``+0.0`` while any HF/TRL Trainer trains.

Two things move a pruned weight during training: its gradient (through the optimizer) and weight
decay / optimizer state. :class:`SparseMaskCallback` zeroes the gradient of every pruned weight as
soon as it is computed (a tensor hook, so gradient clipping and the logged norm already exclude
them) and writes ``+0.0`` back into pruned positions after every optimizer step.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import TrainerCallback

from ..models.table import ARCHITECTURES, decoder_layers
from ..models.weights import Conv1D, is_prunable, prunable_modules

logger = logging.getLogger(__name__)


def _inner(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or ``model``)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def block_modules(
    model: nn.Module, targets: Sequence[str] | None = None, ignore: Sequence[str] = ()
) -> dict[str, nn.Module]:
    """Prunable modules of the decoder blocks (architecture table) matching ``targets``/``ignore`` regexes.

    Names are full names in ``model``. Raises ``ValueError`` if nothing matches.
    """
    inner = _inner(model)
    if getattr(getattr(inner, "config", None), "model_type", None) not in ARCHITECTURES:
        if targets is None:
            raise ValueError(
                f"model_type={getattr(getattr(inner, 'config', None), 'model_type', None)!r} is not in the "
                "architecture table: pass targets=[regex, ...] naming the modules to prune"
            )
        found = prunable_modules(model, targets, ignore)
    else:
        blocks = {id(m) for layer in decoder_layers(inner) for m in layer.modules()}
        found = {n: m for n, m in prunable_modules(model, targets, ignore).items() if id(m) in blocks}
    if not found:
        example = ", ".join(n for n, m in model.named_modules() if is_prunable(m))[:200]
        raise ValueError(
            f"targets={targets!r} / ignore={ignore!r} match no prunable module (names such as {example})"
        )
    return found


def storage_mask(module: nn.Module, mask_out_in: torch.Tensor) -> torch.Tensor:
    """An ``[out, in]`` mask in the module's weight layout (transposed for GPT-2 ``Conv1D``)."""
    mask = mask_out_in.t() if Conv1D and isinstance(module, Conv1D) else mask_out_in
    if mask.shape != module.weight.shape:
        raise ValueError(
            f"mask shape {list(mask_out_in.shape)} does not fit weight {list(module.weight.shape)}"
        )
    return mask.to(device=module.weight.device, dtype=torch.bool)


class SparseMaskCallback(TrainerCallback):
    """Keep masks during sparse full fine-tuning; usable with any ``transformers``/TRL trainer.

    Args:
        masks: ``{module name: bool [out, in] mask}`` (``True`` = pruned). Default: the zeros of
            every matched module's weight when training begins (modules without zeros are skipped).
        targets, ignore: regexes (``re.search``) over full module names of ``nn.Linear``/``Conv1D``
            modules; ``None`` = all of them.

    Pruned gradients are zeroed by tensor hooks (before clipping); after each optimizer step the
    pruned positions are set to ``+0.0``. Works with a single process and DDP (the callback sees
    the unwrapped model); FSDP/DeepSpeed-sharded parameters are not supported.
    """

    def __init__(
        self,
        masks: Mapping[str, torch.Tensor] | None = None,
        *,
        targets: Sequence[str] | None = None,
        ignore: Sequence[str] = (),
    ) -> None:
        for name, value in (("targets", targets), ("ignore", ignore)):
            for pattern in value or ():
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{name} holds an invalid regex {pattern!r}: {err}") from None
        self._given = dict(masks) if masks is not None else None
        self._targets, self._ignore = targets, tuple(ignore)
        self.masks: dict[str, torch.Tensor] = {}
        self._params: dict[str, nn.Parameter] = {}
        self._hooks: list = []

    # ------------------------------------------------------------------ setup
    def _modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return prunable_modules(model, self._targets, self._ignore)

    def attach(self, model: nn.Module) -> None:
        """Read the masks, hook the gradients and zero the pruned weights (idempotent)."""
        self.detach()
        modules = self._modules(model)
        self.masks = self._initial_masks(modules)
        if not self.masks:
            logger.warning("SparseMaskCallback: no pruned weight found; nothing to keep")
        self._params = {n: modules[n].weight for n in self.masks}
        for name, param in self._params.items():
            if param.requires_grad:
                self._hooks.append(param.register_hook(functools.partial(self._masked_grad, name)))
        self.apply_masks()

    def _initial_masks(self, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        """The given masks (storage layout), else the zeros of every module that has some."""
        if self._given is not None:
            unknown = sorted(set(self._given) - set(modules))
            if unknown:
                raise ValueError(f"masks given for {unknown[:3]} which are not prunable modules of the model")
            return {n: storage_mask(modules[n], m) for n, m in self._given.items()}
        masks = {n: m.weight.detach() == 0 for n, m in modules.items()}
        return {n: m for n, m in masks.items() if m.any()}

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _masked_grad(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(self.masks[name], 0.0)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Write ``+0.0`` into every pruned position."""
        for name, param in self._params.items():
            param.masked_fill_(self.masks[name], 0.0)

    def sparsity(self) -> float:
        """Pruned fraction over the masked modules (0.0 when none)."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0

    # --------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("SparseMaskCallback needs the model (the Trainer passes it to callbacks)")
        self.attach(model)
        logger.info(
            "keeping %d masks (%.2f%% pruned) during training", len(self.masks), 100 * self.sparsity()
        )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for name, param in self._params.items():  # grads reach here without hooks under some wrappers
            if param.grad is not None:
                param.grad.masked_fill_(self.masks[name], 0.0)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.apply_masks()

    def on_train_end(self, args, state, control, **kwargs):
        self.apply_masks()
        self.detach()
