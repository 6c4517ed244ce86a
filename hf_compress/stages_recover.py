"""The recipe stage ``recover``: LoRA recovery (LM loss or KD from the dense model), merged with masks kept.

In a recipe::

    stages:
      - prune: {method: sparsegpt, pattern: "2:4", dataset: "{data}/wikitext-2/valid.txt"}
      - recover: {loss: kd, teacher: base, dataset: "{data}/wikitext-2/valid.txt", max_steps: 200}

``teacher: base`` is the recipe's model as loaded (before any stage); any other value is a fetch
name, a local folder or a Hub id. ``checkpoint_dir`` keeps checkpoints (``save_steps``) for
``resume``. Every other key is a :class:`~hf_compress.recover.RecoveryConfig` field.
"""

from __future__ import annotations

from typing import Any

from .recipes import RunState, Stage, _check_dataset

_STAGE_KEYS = ("dataset", "teacher", "checkpoint_dir", "progress")


def _config(params: dict[str, Any]):
    from .recover import RecoveryConfig

    return RecoveryConfig(**{k: v for k, v in params.items() if k not in _STAGE_KEYS})


def validate_recover(params: dict[str, Any]) -> None:
    """Check a ``recover`` stage (and the process layout of the run) before any model is loaded."""
    from .launch_checks import check_launch

    config = _config(params)
    check_launch(bool(config.training_args.get("use_cpu", False)))
    if config.loss == "kd" and not params.get("teacher"):
        raise ValueError(
            "recover: loss 'kd' needs 'teacher' ('base' for the recipe's model, or a model path/name)"
        )
    _check_dataset(params, "recover")
    if not config.merge:
        raise ValueError(
            "recover: merge=false keeps an adapter, which a recipe's release folder cannot hold; "
            "use `hf-compress recover --no-merge` for an adapter release"
        )


def load_stage_teacher(state: RunState, name: str):
    """The teacher of a training stage: ``base`` is the recipe's model as loaded, else a name or folder."""
    from .models.loading import load_causal_lm

    model, tokenizer, _ = load_causal_lm(
        state.recipe.model if name == "base" else name, dtype=state.recipe.dtype
    )
    return model, tokenizer


def run_recover(state: RunState, params: dict[str, Any]) -> None:
    """Recover ``state.model`` in place of itself; records the stage, tags and a card step."""
    from .recover import recover_with_lora

    progress = params.pop("progress", True)
    dataset, teacher_name = params.pop("dataset"), params.pop("teacher", None)
    checkpoint_dir = params.pop("checkpoint_dir", None)
    config = _config(params)
    teacher = teacher_tokenizer = None
    if config.loss == "kd":
        teacher, teacher_tokenizer = load_stage_teacher(state, teacher_name)
    state.model = recover_with_lora(
        state.model, dataset, teacher, tokenizer=state.tokenizer, config=config, output_dir=checkpoint_dir,
        teacher_tokenizer=teacher_tokenizer, progress=progress,
    )  # fmt: skip
    report = state.model.hf_compress_recovery
    state.stages.append({"stage": "recover", "config": config.to_dict(), "report": report.to_dict(),
                         "dataset": str(dataset), "teacher": teacher_name})  # fmt: skip
    state.tags += ["lora", "recovery"] + (["knowledge-distillation"] if config.loss == "kd" else [])
    how = (
        f"distillation ({config.kd_loss}, T={config.temperature:g}) from {teacher_name}"
        if config.loss == "kd"
        else "the language-modeling loss"
    )
    state.steps.append(
        f"LoRA recovery (rank {config.rank}, {report.targets} linear layers) with {how} on {dataset}: "
        f"{report.steps} steps, {report.tokens:,} tokens; merged keeping every pruned weight at zero."
    )


RECOVER_STAGE = Stage(validate_recover, run_recover)
