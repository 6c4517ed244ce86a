"""The layer-sequential calibration engine: the only module that knows about hooks and devices.

One pass over the decoder blocks, as SparseGPT and Wanda do it: capture the first block's inputs
(hidden states and every keyword argument: position embeddings, masks, cache positions) for all
calibration windows; then for each block, hook its target modules, run the windows through the block
to collect statistics of their inputs, let the caller prune (or score) the block, and recompute the
block's outputs with the changed weights so the error propagates to the next block (``process_block``,
two forwards per block). With ``process_module`` the block runs once instead: all batches advance in
lockstep (:mod:`.lockstep`) and each target module is processed as soon as every batch has reached it,
so later modules of the block see the already-pruned earlier ones (GPTQ's "true sequential" order).
Only one block's activations are resident; with ``device`` set, one block at a time is moved there and
back.

Padding never reaches statistics: each module's input rows are filtered by the window's token mask.

Under ``torch.distributed`` (e.g. ``torchrun``/``accelerate launch``) the windows are split over the
ranks (``windows[rank::world]``); every statistic is summed over ranks before it is used, so
all ranks prune with the same statistics and end with the same weights, equal (up to summation
order) to a single-process run on all the windows. Each rank propagates only its own windows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .lockstep import run_in_lockstep
from .models.table import decoder_layers

logger = logging.getLogger(__name__)


class Stats(Protocol):
    def add_batch(self, inputs: torch.Tensor) -> None: ...


@dataclass
class BlockInputs:
    """Per-batch inputs of the current block: ``hidden[b]`` is ``[B, T, hidden]``, ``masks[b]`` ``[B, T]``."""

    hidden: list[torch.Tensor]
    args: list[tuple]
    kwargs: list[dict[str, Any]]
    masks: list[torch.Tensor]


@dataclass
class BlockContext:
    """What a block callback receives: block index, the block, its target modules and their stats."""

    index: int
    block: nn.Module
    modules: dict[str, nn.Module]
    stats: dict[str, Stats]
    shared: dict[str, str] = field(default_factory=dict)


class _StopForward(Exception):
    pass


def layer_sequential(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    select_modules: Callable[[int, nn.Module], dict[str, nn.Module]],
    make_stats: Callable[[str, nn.Module], Stats],
    process_block: Callable[[BlockContext], None] | None = None,
    process_module: Callable[[BlockContext, str], None] | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
    description: str = "calibrating",
) -> None:
    """Run ``process_block`` on each decoder block with statistics gathered from its real inputs.

    Args:
        input_ids: ``[n, T]`` calibration tokens; ``attention_mask``: ``[n, T]`` (1 = real token) or None.
        select_modules: ``(block index, block) -> {full name: module}`` to hook in that block.
        make_stats: ``(name, module) -> stats`` with ``add_batch([tokens, in])``. Modules that read the
            very same input tensor (q/k/v; gate/up) share one stats object (``ctx.shared`` maps them).
        process_block: called after the block's statistics are complete; may change weights in place.
            The block's outputs are then recomputed with the changed weights (two forwards per block).
        process_module: instead of ``process_block``: called for each target module as soon as its
            statistics are complete, where those statistics already see the changes made to the modules
            before it in the block (module-sequential, one forward per block; see :mod:`.lockstep`).
        device: where to run; defaults to the device of the model's first parameter.
    """
    if (process_block is None) == (process_module is None):
        raise ValueError("give exactly one of process_block and process_module")
    layers = decoder_layers(model)
    run_device = torch.device(device) if device is not None else next(model.parameters()).device
    home = next(model.parameters()).device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    input_ids, attention_mask = shard_windows(input_ids, attention_mask)
    inputs = _capture_first_block_inputs(model, layers, input_ids, attention_mask, batch_size, run_device)
    bar = tqdm(range(len(layers)), desc=description, disable=not progress or _rank() > 0, unit="block")
    for index in bar:
        block = layers[index].to(run_device)
        modules = select_modules(index, block)
        ctx = BlockContext(index, block, modules, {})
        if modules and process_module is not None:
            inputs.hidden = _module_sequential(ctx, inputs, make_stats, process_module)
        else:
            if modules:
                _collect_stats(ctx, inputs, make_stats)
                all_reduce_stats(ctx.stats.values())
                process_block(ctx)
            inputs.hidden = _run_block(block, inputs)
        layers[index].to(home)
    if run_device != home:
        _move_outside_layers(model, layers, home)


def _capture_first_block_inputs(model, layers, input_ids, attention_mask, batch_size, device) -> BlockInputs:
    """Run the model up to block 0 for every batch and keep what block 0 receives."""
    captured = BlockInputs([], [], [], [])

    def grab(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden.detach())
        captured.args.append(tuple(args[1:]))
        captured.kwargs.append(kwargs)
        raise _StopForward

    _move_outside_layers(model, layers, device)
    layers[0].to(device)
    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                ids = input_ids[start : start + batch_size].to(device)
                mask = attention_mask[start : start + batch_size].to(device)
                captured.masks.append(mask.bool())
                with contextlib.suppress(_StopForward):
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    return captured


def _collect_stats(ctx: BlockContext, inputs: BlockInputs, make_stats) -> None:
    """Forward every batch through the block with hooks feeding each module's valid input rows."""
    seen_inputs: list[tuple[torch.Tensor, str]] = []  # held alive so no address is reused mid-batch
    current: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, args, _output):
            x = args[0]
            if name not in ctx.shared:
                owner = next((who for seen, who in seen_inputs if seen is x), name)
                seen_inputs.append((x, name))
                ctx.shared[name] = owner
                if owner == name:
                    ctx.stats[name] = make_stats(name, _module)
            if ctx.shared[name] != name:
                return
            ctx.stats[name].add_batch(_valid_rows(x, current["mask"]))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in ctx.modules.items()]
    try:
        with torch.no_grad():
            for hidden, args, kwargs, mask in zip(inputs.hidden, inputs.args, inputs.kwargs, inputs.masks):
                current["mask"] = mask
                seen_inputs.clear()
                ctx.block(hidden, *args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    for name, owner in ctx.shared.items():
        ctx.stats.setdefault(name, ctx.stats[owner])


def _module_sequential(ctx: BlockContext, inputs: BlockInputs, make_stats, process_module) -> list[torch.Tensor]:
    """One lockstep forward of all batches; each module is processed before any batch computes with it."""
    last_input: list[tuple[torch.Tensor, str] | None] = [None] * len(inputs.hidden)

    def on_arrival(i: int, name: str, module: nn.Module, x: torch.Tensor) -> bool:
        """Feed the statistics; True when they are shared with a gate already processed (no wait)."""
        if name not in ctx.shared:  # the first batch decides: same tensor as the previous gate -> shared stats
            previous = last_input[i]
            owner = previous[1] if previous is not None and previous[0] is x else name
            ctx.shared[name] = owner
            if owner == name:
                ctx.stats[name] = make_stats(name, module)
        last_input[i] = (x, ctx.shared[name])
        if ctx.shared[name] != name:
            return True
        ctx.stats[name].add_batch(_valid_rows(x, inputs.masks[i]))
        return False

    def on_gate(name: str) -> None:
        owner = ctx.shared[name]
        if owner == name:
            all_reduce_stats([ctx.stats[name]])
        ctx.stats.setdefault(name, ctx.stats[owner])
        process_module(ctx, name)

    calls = [
        functools.partial(ctx.block, hidden, *args, **kwargs)
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs)
    ]
    outputs = run_in_lockstep(calls, ctx.modules, on_arrival, on_gate)
    missed = sorted(set(ctx.modules) - set(ctx.stats))
    if missed:
        raise RuntimeError(f"target modules {missed} of block {ctx.index} received no input during calibration")
    return [out[0] if isinstance(out, (tuple, list)) else out for out in outputs]


def _valid_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, in]`` -> ``[valid tokens, in]`` (all rows when the leading dims are not ``[B, T]``)."""
    flat = x.reshape(-1, x.shape[-1])
    if x.shape[:-1] == mask.shape and not bool(mask.all()):
        return flat[mask.reshape(-1)]
    return flat  # no padding: no copy


def _run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """The block's outputs for every batch (the next block's inputs)."""
    outputs = []
    with torch.no_grad():
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
            out = block(hidden, *args, **kwargs)
            outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outputs


def _move_outside_layers(model: nn.Module, layers: nn.ModuleList, device: torch.device) -> None:
    """Move every parameter and buffer that is not inside ``layers`` (embeddings, norms, rotary)."""
    inside = {id(t) for t in layers.parameters()} | {id(t) for t in layers.buffers()}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is not None and id(tensor) not in inside and tensor.device != device:
                    store[key].data = tensor.data.to(device)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0 of a distributed run, or a single process."""
    return _rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _world() > 1:
        dist.barrier()


def shard_windows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the calibration windows (all of them in a single process)."""
    world = _world()
    if world == 1:
        return input_ids, attention_mask
    if input_ids.shape[0] < world:
        raise ValueError(
            f"{input_ids.shape[0]} calibration windows cannot be split over {world} processes; "
            f"use n_samples >= {world}"
        )
    rank = _rank()
    return input_ids[rank::world], attention_mask[rank::world]


def all_reduce_stats(stats) -> None:
    """Sum every tensor and integer counter of each distinct stats object over all ranks (in place)."""
    if _world() == 1:
        return
    unique = list({id(s): s for s in stats}.values())
    for s in unique:
        for key, value in sorted(vars(s).items()):
            if torch.is_tensor(value):
                dist.all_reduce(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                count = torch.tensor(value, dtype=torch.float64, device=_reduce_device())
                dist.all_reduce(count)
                setattr(s, key, int(count.item()))


def _reduce_device() -> torch.device:
    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
