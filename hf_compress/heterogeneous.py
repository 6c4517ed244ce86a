"""Per-layer shapes of structurally pruned models: record them on save, rebuild them on load.

A structurally pruned block may keep fewer FFN neurons or attention heads than its neighbours.
transformers builds every block from the one global config, so such a checkpoint records its
per-layer shapes and the blocks are cut to them before the weights load.

Both directions go through :mod:`hf_compress.models.surgery`, the code that makes these models:
:func:`~hf_compress.models.surgery.layer_shapes` reads each block's heads / KV heads / FFN width from
its weights, and :func:`~hf_compress.models.surgery.resize_layers` cuts freshly built blocks (on the
``meta`` device inside ``from_pretrained``) to those shapes, syncing the attention attributes the
same way the pruning did. Surgery writes the largest per-layer value of each field to the config,
so the freshly built blocks are never smaller than the recorded ones.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .models.surgery import block_shape, layer_shapes, resize_layers
from .models.table import arch_spec, decoder_layers

SHAPE_KEYS = ("num_heads", "num_kv_heads", "head_dim", "ffn")


def layers_to_record(model: nn.Module) -> list[dict[str, int]] | None:
    """Every block's shape when some block differs from what ``model.config`` builds, else ``None``.

    ``None`` means plain ``from_pretrained`` rebuilds the model (uniform shapes matching the config).
    """
    shapes = layer_shapes(model)
    layers = decoder_layers(model)
    reference = block_shape(build_block(type(layers[0]), model.config, 0), arch_spec(model)).to_dict()
    return None if all(shape == reference for shape in shapes) else shapes


def apply_recorded_layers(model: nn.Module, shapes: list[dict[str, Any]]) -> None:
    """Cut the blocks of a freshly built ``model`` to the recorded ``shapes`` (before weights load)."""
    layers = decoder_layers(model)
    if len(shapes) != len(layers):
        raise ValueError(
            f"the checkpoint records shapes for {len(shapes)} blocks but its config builds {len(layers)}"
        )
    for index, shape in enumerate(shapes):
        missing = [key for key in SHAPE_KEYS if key not in shape]
        if missing:
            raise ValueError(f"recorded shape of block {index} lacks {missing}; it has {sorted(shape)}")
    with torch.device("cpu"):  # index tensors on the CPU even inside from_pretrained's meta-device context
        resize_layers(model, shapes)


def build_block(block_class: type, config: Any, index: int, device: str = "meta") -> nn.Module:
    """One decoder block built from ``config`` (on the ``meta`` device by default: no memory)."""
    takes_index = "layer_idx" in inspect.signature(block_class.__init__).parameters
    with torch.device(device):
        return block_class(config, **({"layer_idx": index} if takes_index else {}))
