"""The recipe stage ``distill``: full-parameter knowledge distillation of the current model from a teacher.

In a recipe (distil -> quantize -> export)::

    stages:
      - prune_structured: {targets: [layers], sparsity: 0.25, dataset: "{data}/wikitext-2/valid.txt"}
      - distill: {teacher: base, dataset: "{data}/wikitext-2/valid.txt", max_steps: 200,
                  loss: forward_kl, temperature: 2.0, alpha: 0.5}
      - quantize: {method: ort-dynamic-int8}
      - export: {output_dir: outputs/student-onnx-int8}

Stage keys: ``teacher`` (``base`` = the recipe's model as loaded, or a fetch name / folder / Hub
id), ``dataset``, ``seqlen`` (512), ``max_windows``, ``text_field``, ``keep_masks`` (true: a student
with pruned zeros keeps every one of them, :class:`~hf_compress.training.SparseMaskCallback`),
``checkpoint_dir`` and ``resume``. Every other key is a
:class:`~hf_compress.distill.DistillationConfig` field (``loss``, ``temperature``, ``alpha``,
``max_steps``, ``learning_rate``, ``per_device_train_batch_size``, feature/attention terms, ...).
Training data are non-overlapping ``seqlen``-token windows of the dataset, as in ``recover``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .recipes import RunState, Stage, _check_dataset
from .stages_recover import load_stage_teacher

STAGE_DEFAULTS: dict[str, Any] = {
    "teacher": None,
    "dataset": None,
    "seqlen": 512,
    "max_windows": None,
    "text_field": "text",
    "keep_masks": True,
    "checkpoint_dir": None,
    "resume": False,
}
_TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": 100,
    "per_device_train_batch_size": 4,
    "learning_rate": 5e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 5,
    "logging_steps": 5,
    "report_to": [],
    "dataloader_num_workers": 0,
    "packing": False,
    "activation_checkpointing": False,
}


def _split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(stage keys with defaults, DistillationConfig keys)``; unknown keys are refused by name."""
    from .distill import DistillationConfig

    if "output_dir" in params:
        raise ValueError("distill: 'output_dir' is the recipe's; use 'checkpoint_dir' for checkpoints")
    if "max_length" in params:
        raise ValueError("distill: 'max_length' is set from 'seqlen' (the training window length); use 'seqlen'")
    allowed = {f.name for f in dataclasses.fields(DistillationConfig)}
    unknown = sorted(set(params) - allowed - set(STAGE_DEFAULTS) - {"progress"})
    if unknown:
        raise ValueError(
            f"distill: unknown key(s) {unknown}; allowed: {sorted(STAGE_DEFAULTS)} and any "
            "DistillationConfig field (docs/distillation.md)"
        )
    stage = {k: params.get(k, v) for k, v in STAGE_DEFAULTS.items()}
    training = {k: v for k, v in params.items() if k not in STAGE_DEFAULTS and k != "progress"}
    return stage, training


def _distillation_config(run_dir: str, stage: dict[str, Any], training: dict[str, Any], progress: bool):
    import torch

    from .distill import DistillationConfig
    from .recover import _bf16_available

    derived = {
        "save_strategy": "steps" if stage["checkpoint_dir"] else "no",
        "bf16": _bf16_available(),
        "dataloader_pin_memory": torch.cuda.is_available(),
    }
    fixed = {"output_dir": run_dir, "max_length": stage["seqlen"], "disable_tqdm": not progress}
    return DistillationConfig(**(fixed | _TRAINING_DEFAULTS | derived | training))


def validate_distill(params: dict[str, Any]) -> None:
    """Check a ``distill`` stage before any model is loaded (names the field, the value and what is allowed)."""
    import tempfile

    from .launch_checks import check_launch

    stage, training = _split(params)
    _check_teacher(stage["teacher"])
    if not isinstance(params.get("dataset"), (str, type(None))):
        raise _bad("dataset", params["dataset"], "a local file/folder or a Hub dataset name")
    _check_dataset(params, "distill")
    _check_stage_values(stage)
    for name, low in (("max_steps", 1), ("per_device_train_batch_size", 1), ("gradient_accumulation_steps", 1)):
        value = training.get(name, _TRAINING_DEFAULTS.get(name, low))
        if not _is_int(value) or value < low:
            raise _bad(name, value, f"an integer >= {low}")
    rate = training.get("learning_rate", _TRAINING_DEFAULTS["learning_rate"])
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise _bad("learning_rate", rate, "a number > 0")
    with tempfile.TemporaryDirectory() as tmp:
        config = _distillation_config(tmp, stage, training, progress=False)  # field checks of the config
    check_launch(bool(config.use_cpu))


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"distill: {name}={value!r} is invalid; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_teacher(teacher: Any) -> None:
    import os
    from pathlib import Path

    if not teacher:
        raise ValueError("distill: 'teacher' is required ('base' for the recipe's model, or a model path/name)")
    if not isinstance(teacher, str):
        raise _bad("teacher", teacher, "'base', a fetch name, a model folder or a Hub id")
    if (os.sep in teacher and teacher.startswith((os.sep, "."))) and not Path(teacher).exists():
        raise FileNotFoundError(f"distill: teacher folder {teacher!r} does not exist")


def _check_stage_values(stage: dict[str, Any]) -> None:
    if not _is_int(stage["seqlen"]) or stage["seqlen"] < 2:
        raise _bad("seqlen", stage["seqlen"], "an integer >= 2")
    if stage["max_windows"] is not None and (not _is_int(stage["max_windows"]) or stage["max_windows"] < 1):
        raise _bad("max_windows", stage["max_windows"], "null or an integer >= 1")
    for name in ("keep_masks", "resume"):
        if not isinstance(stage[name], bool):
            raise _bad(name, stage[name], "true or false")
    for name in ("text_field", "checkpoint_dir"):
        if stage[name] is not None and not isinstance(stage[name], str):
            raise _bad(name, stage[name], "a string")


def run_distill(state: RunState, params: dict[str, Any]) -> None:
    """Distil ``state.model`` in place from the teacher; records the stage, tags and a card step."""
    from .recover import _resume_path, _run_dir, recovery_dataset
    from .training import SparseMaskCallback

    progress = params.pop("progress", True)
    stage, training = _split(params)
    data = recovery_dataset(
        state.tokenizer, stage["dataset"], seqlen=stage["seqlen"], max_windows=stage["max_windows"],
        text_field=stage["text_field"],
    )  # fmt: skip
    resume = _resume_path(stage["resume"], stage["checkpoint_dir"])
    teacher, teacher_tokenizer = load_stage_teacher(state, stage["teacher"])
    masks = SparseMaskCallback(targets=[_blocks_pattern(state.model)]) if stage["keep_masks"] else None
    with _run_dir(stage["checkpoint_dir"]) as run_dir:
        trainer = _trainer(state, teacher, teacher_tokenizer, data, masks, stage, training, run_dir, progress)
        trainer.train(resume_from_checkpoint=resume)
    _record(state, trainer, masks, stage, len(data))


def _blocks_pattern(model) -> str:
    """A regex over module names matching the decoder blocks' modules (not embeddings or the head)."""
    import re

    from .models.table import arch_spec

    return rf"(^|\.){re.escape(arch_spec(model).layers)}\.\d+\."


def _trainer(state, teacher, teacher_tokenizer, data, masks, stage, training, run_dir, progress):
    from .distill import DistillationTrainer

    return DistillationTrainer(
        state.model, teacher, args=_distillation_config(run_dir, stage, training, progress), train_dataset=data,
        processing_class=state.tokenizer, teacher_processing_class=teacher_tokenizer,
        callbacks=[masks] if masks is not None else None,
    )  # fmt: skip


def _record(state: RunState, trainer, masks, stage: dict[str, Any], windows: int) -> None:
    from .recover import logged_losses, trained_tokens

    args, steps = trainer.args, trainer.state.global_step
    kept = masks.sparsity() if masks is not None and masks.masks else None
    report = {
        "steps": steps, "tokens": trained_tokens(trainer, stage["seqlen"]), "windows": windows,
        "losses": logged_losses(trainer),
        "loss": args.loss, "temperature": args.temperature, "alpha": args.alpha,
        "learning_rate": args.learning_rate, "masked_sparsity_kept": kept,
    }  # fmt: skip
    state.stages.append({"stage": "distill", "teacher": stage["teacher"], "dataset": str(stage["dataset"]),
                         "report": report})  # fmt: skip
    state.tags += ["knowledge-distillation"]
    hard = f", {args.alpha:g} x hard-label CE" if args.alpha else ""
    state.steps.append(
        f"Knowledge distillation from {stage['teacher']} ({args.loss}, T={args.temperature:g}{hard}) on "
        f"{stage['dataset']}: {steps} steps, {report['tokens']:,} tokens, all parameters trained"
        + ("; every pruned weight kept at zero." if kept else ".")
    )


DISTILL_STAGE = Stage(validate_distill, run_distill)
