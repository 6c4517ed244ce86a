"""Checks of the process layout of a ``torchrun`` / ``accelerate launch`` run, made before any model loads.

``accelerate launch`` starts ``num_processes`` copies of the program on each machine and tells each
one its place through ``WORLD_SIZE`` / ``LOCAL_WORLD_SIZE`` / ``LOCAL_RANK``. Two layouts fail late
or, worse, silently, so they are refused at start:

* more processes on a machine than visible GPUs: process ``LOCAL_RANK >= device_count`` would die
  with an "invalid device ordinal" CUDA error after the first models are loaded;
* several processes on a machine without GPUs and without ``use_cpu``: accelerate then runs every
  process as its own single-process job (``DistributedType.NO``), each training alone on the whole
  data set, and they all write the same output folder.

On CPU (``use_cpu=True``, ``--use_cpu true`` or ``ACCELERATE_USE_CPU=true``) any number of processes
is allowed: they talk over gloo and share the cores, each using ``OMP_NUM_THREADS`` threads, so more
processes than cores only makes the run slower (a warning says so). accelerate ignores FSDP and
DeepSpeed settings on CPU and runs plain data parallel; a warning says that too.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on", "y", "t"}


def world_size() -> int:
    """Number of processes of the whole run (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """Number of processes on this machine (``LOCAL_WORLD_SIZE``; ``WORLD_SIZE`` when not set)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def wants_cpu(use_cpu: bool) -> bool:
    """``use_cpu`` from the training arguments, or ``ACCELERATE_USE_CPU`` in the environment."""
    return bool(use_cpu) or _env_true("ACCELERATE_USE_CPU")


def accelerator_device_count() -> int:
    """Visible accelerator devices (CUDA, XPU, ...); 0 on a CPU-only machine."""
    api = getattr(torch, "accelerator", None)
    if api is not None and hasattr(api, "device_count"):
        return int(api.device_count())
    return torch.cuda.device_count()


def check_launch(use_cpu: bool = False) -> None:
    """Refuse a process layout that cannot work (see the module docstring); a no-op in one process.

    Raises:
        ValueError: naming ``num_processes`` / ``use_cpu`` and what to change.
    """
    world, local = world_size(), local_world_size()
    if world <= 1:
        return
    if wants_cpu(use_cpu):
        _warn_cpu(local)
        return
    devices = accelerator_device_count()
    if devices == 0:
        raise ValueError(
            f"{world} processes were launched (WORLD_SIZE={world}) but no GPU is visible and use_cpu is false: "
            "accelerate would run every process alone on the whole data set. Pass --use_cpu true or set "
            "ACCELERATE_USE_CPU=true to train on CPU over gloo (recipes/accelerate_configs/multi_cpu.yaml)"
        )
    if local > devices:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
        raise ValueError(
            f"num_processes={local} on this machine (LOCAL_WORLD_SIZE) but only {devices} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={visible}): set num_processes to at most {devices} in the accelerate "
            "config (or pass --num_processes to accelerate launch)"
        )


def _warn_cpu(local: int) -> None:
    cores = os.cpu_count() or 1
    if local > cores:
        logger.warning("%d processes share %d CPU cores: the run will be slow", local, cores)
    sharded = [k for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED") if _env_true(k)]
    if sharded:
        logger.warning(
            "%s is set but use_cpu is true: accelerate runs plain data parallel (gloo) instead", sharded[0]
        )


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE
