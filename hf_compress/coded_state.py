"""Byte-plane coded tensors in a saved state dict, and their decoding after a load.

On save, every floating tensor large enough to pay for its header (:func:`byte_planes.worth_coding`)
is replaced by its :func:`byte_planes.encode` stream where that is smaller; the names go into the
checkpoint's record. On load the streams arrive as ``uint8`` parameters (the quantizer lets their
shapes differ) and :func:`decode_into` turns them back into the model's tensors, in the dtype the
model was built with, on the device the stream landed on.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from . import byte_planes

logger = logging.getLogger(__name__)


def without_aliases(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` minus tied duplicates (e.g. ``lm_head.weight`` = ``embed_tokens.weight``).

    Coding breaks storage sharing, after which ``save_pretrained`` could no longer tell a tied copy
    from a real tensor and would write both; transformers' own rule picks the name to keep.
    """
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    return remove_tied_weights_from_state_dict(dict(state), model)


def code_state_dict(
    state: dict[str, torch.Tensor], level: int = 1
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(state with coded streams, sorted names coded)``; a tensor stays as it is unless coding shrinks it."""
    out, coded = dict(state), []
    for name, tensor in state.items():
        if not byte_planes.worth_coding(tensor):
            continue
        stream = byte_planes.encode(tensor, level)
        if stream.numel() < tensor.numel() * tensor.element_size():
            out[name] = stream
            coded.append(name)
    logger.info("byte-plane coded %d of %d tensors", len(coded), len(state))
    return out, sorted(coded)


def model_dtypes(model: nn.Module, names: list[str]) -> dict[str, torch.dtype]:
    """Before loading: the dtype each coded tensor must come back in (the model's, after ``dtype=``)."""
    return {name: _tensor(model, name).dtype for name in names}


def decode_into(model: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """After loading: replace each ``uint8`` stream by its decoded tensor (as a parameter or buffer)."""
    for name, dtype in dtypes.items():
        stream = _tensor(model, name)
        if stream.is_meta or stream.dtype != torch.uint8:
            raise ValueError(f"the checkpoint lacks the coded tensor {name!r} its record lists")
        value = byte_planes.decode(stream).to(device=stream.device, dtype=dtype)
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(value, requires_grad=True)
        else:
            module._buffers[attr] = value


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        module = None
    tensor = None if module is None else module._parameters.get(attr, module._buffers.get(attr))
    if tensor is None:
        raise ValueError(f"the checkpoint stores a coded tensor for {name!r}, which this model does not have")
    return tensor
