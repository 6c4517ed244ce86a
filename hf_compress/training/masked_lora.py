"""LoRA that keeps a pruned model's zeros: a mask-preserving merge and a masked PEFT LoRA layer.

PEFT's ``merge_and_unload`` adds the dense update ``s * B @ A`` to ``W``, so a sparse ``W`` comes
back dense (PEFT 0.21 has no mask-aware merge). Here the zeros of the frozen base weight are the
pruning mask ``M = (W == 0)`` and survive the merge as ``+0.0``::

    W' = W + s * (B @ A);   W'[M] = +0.0

:class:`MaskedLoraLinear` also masks the update while training, so the model trained is exactly
the model merged (sparsity-preserving LoRA as in SPP, Lu et al. 2024, and SQFT's SparsePEFT,
Munoz et al. 2024). With ``lora_dropout == 0`` its forward is one matmul with the effective
weight ``W + M̄ ⊙ s B A``; the saved adapter is a plain PEFT LoRA adapter (``lora_A``/``lora_B``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.other import transpose
from torch import nn

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old transformers
    Conv1D = ()  # type: ignore[assignment]


def masked_merge(weight: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight + delta`` with ``+0.0`` wherever ``mask``; summed in float32, returned in ``weight``'s dtype.

    Args:
        weight, delta: tensors of one shape (any layout, e.g. ``[out, in]``).
        mask: bool, same shape, ``True`` = pruned (stays exactly ``+0.0``).
    """
    if not (weight.shape == delta.shape == mask.shape):
        raise ValueError(
            f"shapes differ: weight {list(weight.shape)}, delta {list(delta.shape)}, mask {list(mask.shape)}"
        )
    merged = weight.float() + delta.float()
    return merged.masked_fill_(mask, 0.0).to(weight.dtype)


def _active(layer: LoraLayer) -> list[str]:
    return [a for a in layer.active_adapters if a in layer.lora_A]


class MaskedLoraLinear(LoraLinear):
    """PEFT LoRA for ``nn.Linear`` / GPT-2 ``Conv1D`` whose update is zero wherever the base weight is zero.

    Registered through ``LoraConfig._register_custom_module`` (see :func:`masked_lora_config`). The
    mask is read from the frozen base weight at every call (``W == 0``), so it needs no state,
    follows the model across devices and survives checkpoints. ``get_delta_weight`` is masked too,
    so PEFT's own ``merge``/``merge_and_unload`` keep the zeros with this layer.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any) -> None:
        inner = base_layer.get_base_layer() if isinstance(base_layer, LoraLayer) else base_layer
        if Conv1D and isinstance(inner, Conv1D):
            kwargs["is_target_conv_1d_layer"] = True
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def pruning_mask(self) -> torch.Tensor:
        """Bool mask in the base weight's storage layout, ``True`` where the weight is zero."""
        return self.get_base_layer().weight == 0

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``s * B @ A`` in the base weight's layout, ``+0.0`` at the base weight's zeros."""
        return super().get_delta_weight(adapter).masked_fill(self.pruning_mask(), 0.0)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = _active(self)
        if self.disable_adapters or self.merged or not adapters:
            return super().forward(x, *args, **kwargs)
        if args or kwargs:
            raise ValueError(
                f"masked LoRA takes only the input tensor; got extra arguments {list(kwargs) or len(args)}"
            )
        base = self.get_base_layer()
        if all(isinstance(self.lora_dropout[a], nn.Identity) for a in adapters):
            weight = base.weight + sum(self.get_delta_weight(a) for a in adapters).to(base.weight.dtype)
            out = F.linear(x.to(weight.dtype), transpose(weight, self.fan_in_fan_out), base.bias)
            return out.to(x.dtype)
        result = base(x)
        for a in adapters:  # dropout acts on the update's input only: one extra matmul per adapter
            h = self.lora_dropout[a](x.to(self.lora_A[a].weight.dtype))
            delta = transpose(self.get_delta_weight(a), self.fan_in_fan_out)
            result = result + F.linear(h, delta).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "masked_" + super().__repr__()


def register_masked_layers(lora_config: Any) -> Any:
    """Make ``lora_config`` build :class:`MaskedLoraLinear` for ``nn.Linear`` and ``Conv1D`` targets."""
    mapping = {nn.Linear: MaskedLoraLinear}
    if Conv1D:
        mapping[Conv1D] = MaskedLoraLinear
    lora_config._register_custom_module(mapping)
    return lora_config


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every PEFT LoRA layer in ``model`` by full name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merge_lora_keep_masks(model: nn.Module) -> nn.Module:
    """Merge the active LoRA adapters of a PEFT model into its base weights, keeping every zero.

    For each LoRA layer: ``M = (W == 0)``; ``W <- W + s * B @ A`` (float32); ``W[M] = +0.0``. Then the
    LoRA layers are removed (``unload``, not PEFT's densifying merge) and the plain transformers
    model is returned.

    Raises:
        ValueError: ``model`` holds no LoRA layer, a layer is already merged, or a LoRA layer is
            not a linear one (embedding/convolution LoRA is not supported here).
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no LoRA layer to merge")
    for name, layer in layers.items():
        if not isinstance(layer, LoraLinear):
            raise ValueError(
                f"{name}: only linear LoRA layers can be merged with masks, got {type(layer).__name__}"
            )
        if layer.merged:
            raise ValueError(
                f"{name}: adapters {layer.merged_adapters} are already merged (densely); unmerge first"
            )
        base = layer.get_base_layer()
        mask = base.weight == 0
        delta = sum(LoraLinear.get_delta_weight(layer, a) for a in _active(layer))
        if isinstance(delta, torch.Tensor):
            base.weight.copy_(masked_merge(base.weight, delta, mask))
        bias_adapters = [a for a in _active(layer) if layer.lora_bias.get(a)]
        if bias_adapters:
            raise ValueError(f"{name}: lora_bias=True adapters are not supported by the masked merge")
    unload = getattr(model, "unload", None)
    if unload is None:
        raise ValueError(
            f"{type(model).__name__} has no unload(); pass the PeftModel returned by get_peft_model"
        )
    return unload()
