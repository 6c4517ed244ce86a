"""Saving the distilled student at the end of a run, from one process or many.

Every rank joins ``Trainer.save_model`` (FSDP and ZeRO-3 gather the full weights collectively);
only the main process writes. The student, tokenizer and run report go to a temporary folder
inside the output folder first and are moved into place once complete, ``config.json`` last, so
a reader never finds a config next to half-written weights. All ranks leave together.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TMP_NAME = ".final.tmp"
REPORT_FILE = "distill_report.json"


def save_final(trainer: Any, tokenizer: Any, out: Path, report: dict[str, Any] | None = None) -> None:
    """Write the student (+ tokenizer, + ``distill_report.json`` when given) into ``out`` from the main process."""
    accelerator = trainer.accelerator
    if trainer.is_fsdp_enabled:  # one complete checkpoint, not per-rank shards
        accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    tmp = Path(out) / TMP_NAME
    if trainer.args.should_save:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a run that died while saving
    accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.args.should_save:
        tokenizer.save_pretrained(str(tmp))
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        _publish(tmp, Path(out))
        logger.info("saved the distilled student to %s", out)
    accelerator.wait_for_everyone()


def _publish(tmp: Path, out: Path) -> None:
    """Move every file of ``tmp`` into ``out`` (``config.json`` last) and remove ``tmp``."""
    items = sorted(tmp.iterdir(), key=lambda p: p.name == "config.json")
    for item in items:
        target = out / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()


def run_report(trainer: Any, started: float) -> dict[str, Any]:
    """What the run did: process layout, batch sizes, seed, steps, per-step logs, versions, time."""
    import accelerate
    import torch
    import transformers
    import trl

    args, accelerator = trainer.args, trainer.accelerator
    return {
        "distributed_type": str(accelerator.distributed_type),
        "num_processes": accelerator.num_processes,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "global_batch_size": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * accelerator.num_processes,
        "seed": args.seed,
        "steps": trainer.state.global_step,
        "log_history": trainer.state.log_history,
        "seconds": round(time.perf_counter() - started, 3),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "accelerate": accelerate.__version__,
        },
    }
