"""Placing the frozen teacher of a run: replicated under DDP, sharded under FSDP / DeepSpeed ZeRO-3.

The teacher takes no gradient, so it is never wrapped for gradient sync: under DDP (and in one
process) it goes through ``accelerator.prepare_model(teacher, evaluation_mode=True)``, which only
moves it to the device. Under DeepSpeed and FSDP it is prepared with TRL's ``prepare_deepspeed`` /
``prepare_fsdp`` (ZeRO-3 partitions it like the student; lower stages keep a full copy). For FSDP
its blocks are sharded one by one first: TRL shards an FSDP2 teacher only at the root, which
gathers the whole teacher at once in every forward.

These rules are checked before sharding, so a teacher that cannot be sharded fails at start with
an error naming the setting, not deep inside FSDP or DeepSpeed:

1. every teacher parameter is floating point — an int8 / 4-bit quantized teacher cannot be
   sharded (keep it whole on each device with ``teacher_device``, or load it in a float dtype);
2. FSDP's ``cpu_ram_efficient_loading`` is off — it loads weights on rank 0 only and lets
   accelerate broadcast them into the *student*; nothing does that for the teacher, whose other
   ranks would hold meta tensors (a teacher with meta parameters is refused for the same reason);
3. with FSDP's ``TRANSFORMER_BASED_WRAP`` the teacher has a block class to wrap: a module class
   named in ``fsdp_transformer_layer_cls_to_wrap``, else one named in its own ``_no_split_modules``.
"""

from __future__ import annotations

import functools
from typing import Any

from accelerate.utils import DistributedType
from torch import nn


def place_teacher(teacher: nn.Module, accelerator: Any, device: str | None = None) -> nn.Module:
    """Put an already frozen, eval-mode ``teacher`` where the run needs it (see the module docstring).

    Args:
        teacher: the teacher model (``requires_grad`` off).
        accelerator: the trainer's ``accelerate.Accelerator``.
        device: keep a whole copy on this device instead (``DistillationConfig.teacher_device``).
    """
    if device is not None:
        return teacher.to(device)
    kind = accelerator.state.distributed_type
    if kind == DistributedType.DEEPSPEED:
        from trl.models import prepare_deepspeed

        check_shardable(teacher, "DeepSpeed")
        return prepare_deepspeed(teacher, accelerator)
    if kind == DistributedType.FSDP:
        check_shardable(teacher, "FSDP", accelerator.state.fsdp_plugin)
        return _prepare_fsdp(teacher, accelerator)
    return accelerator.prepare_model(teacher, evaluation_mode=True)


def check_shardable(teacher: nn.Module, backend: str, fsdp_plugin: Any = None) -> None:
    """Rules 1-3 of the module docstring; raises ``ValueError`` naming the field and value."""
    for name, param in teacher.named_parameters():
        if not param.is_floating_point():
            quant = getattr(getattr(teacher, "config", None), "quantization_config", None)
            how = f" (quantization_config={_quant_method(quant)!r})" if quant is not None else ""
            raise ValueError(
                f"{backend} cannot shard the teacher: parameter {name!r} has dtype {param.dtype}{how}. "
                "Load the teacher in a float dtype, or keep a whole copy on each device with "
                "DistillationConfig.teacher_device (e.g. 'cuda')"
            )
    if fsdp_plugin is not None and getattr(fsdp_plugin, "cpu_ram_efficient_loading", False):
        raise ValueError(
            "fsdp_cpu_ram_efficient_loading=true loads the teacher's weights on rank 0 only and nothing "
            "broadcasts them to the other ranks: set fsdp_cpu_ram_efficient_loading: false in the accelerate config"
        )
    meta = next((name for name, p in teacher.named_parameters() if p.is_meta), None)
    if meta is not None:
        raise ValueError(
            f"{backend} cannot shard the teacher: parameter {meta!r} is on the meta device (its weights were "
            "never loaded in this process)"
        )
    if fsdp_plugin is not None:
        teacher_block_classes(teacher, fsdp_plugin)


def teacher_block_classes(teacher: nn.Module, fsdp_plugin: Any) -> tuple[type, ...]:
    """The teacher's module classes FSDP shards one by one (empty unless ``TRANSFORMER_BASED_WRAP``)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = fsdp_plugin.auto_wrap_policy
    if getattr(policy, "func", policy) is not transformer_auto_wrap_policy:
        return ()
    configured = _names(fsdp_plugin.transformer_cls_names_to_wrap)
    own = list(getattr(teacher, "_no_split_modules", None) or [])
    for names in (configured, own):
        found = {type(m) for m in teacher.modules() if type(m).__name__ in names}
        if found:
            return tuple(sorted(found, key=lambda c: c.__name__))
    raise ValueError(
        f"FSDP cannot shard the teacher ({type(teacher).__name__}): it has no transformer layer class to wrap — "
        f"fsdp_transformer_layer_cls_to_wrap={configured or None} and the teacher's "
        f"_no_split_modules={own or None} name none of its modules. Name the teacher's block class in "
        "fsdp_transformer_layer_cls_to_wrap, or keep a whole copy with DistillationConfig.teacher_device"
    )


def _names(value: Any) -> list[str]:
    if not value:
        return []
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)


def _quant_method(quant: Any) -> str:
    if isinstance(quant, dict):
        return str(quant.get("quant_method", quant))
    return str(getattr(quant, "quant_method", type(quant).__name__))


def _prepare_fsdp(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """Shard the teacher's blocks, then the root with TRL's ``prepare_fsdp``; the plugin is left as found."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from trl.models import prepare_fsdp

    plugin = accelerator.state.fsdp_plugin
    blocks = teacher_block_classes(teacher, plugin)
    if plugin.fsdp_version == 2:
        _shard_blocks_fsdp2(teacher, blocks, accelerator)
        return prepare_fsdp(teacher, accelerator)
    saved = plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap
    if blocks:  # prepare_fsdp would otherwise fix the plugin's policy to the teacher's classes
        plugin.auto_wrap_policy = functools.partial(
            transformer_auto_wrap_policy, transformer_layer_cls=set(blocks)
        )
    try:
        return prepare_fsdp(teacher, accelerator)
    finally:
        plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = saved


def _shard_blocks_fsdp2(teacher: nn.Module, blocks: tuple[type, ...], accelerator: Any) -> None:
    """``fully_shard`` every block of the teacher with the plugin's settings (the root comes after)."""
    if not blocks:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    kwargs = {
        "reshard_after_forward": plugin.reshard_after_forward,
        "offload_policy": plugin.cpu_offload,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
    }
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None:
        kwargs["mesh"] = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    for module in [m for m in teacher.modules() if isinstance(m, blocks)]:
        fully_shard(module, **kwargs)
