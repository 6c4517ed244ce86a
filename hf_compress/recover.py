"""Recovery after pruning: PEFT LoRA trained with the LM loss or with KD from the dense teacher.

LoRA recovery follows LLM-Pruner (Ma et al. 2023); distillation from the unpruned model follows
Minitron (Muralidharan et al. 2024). The LoRA update is merged with the pruning masks kept: every
weight that was zero before is ``+0.0`` after, so N:M patterns stay valid (PEFT's own merge adds a
dense update). For a sparse model the update is masked during training as well
(:class:`~hf_compress.training.masked_lora.MaskedLoraLinear`), so what is trained is what ships.

Data: the text is joined with ``"\\n\\n"``, tokenized once and cut into non-overlapping windows of
``seqlen`` tokens (packed windows, every token a label), as in :mod:`hf_compress.calibration`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models.table import arch_spec
from .sparsity import sparsity_report
from .training.masks import block_modules

logger = logging.getLogger(__name__)

LOSSES = ("lm", "kd")
MASKED_UPDATE = ("auto", "masked", "dense")
CLOCKS = ("wall", "process")
AUTO_MASK_MIN_ZEROS = 0.01  # "auto" masks the update when at least this share of target weights is zero
# SFTConfig fields RecoveryConfig sets itself (training_args may not override them)
_OWN_ARGS = (
    "output_dir",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "seed",
    "logging_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "max_length",
    "loss",
    "temperature",
    "alpha",
    "packing",
)


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"RecoveryConfig.{name}={value!r} is invalid; allowed: {allowed}")


@dataclass
class RecoveryConfig:
    """How to recover a pruned model with LoRA. Validated on creation.

    Args:
        loss: ``"lm"`` (next-token cross-entropy on the text) or ``"kd"`` (distillation from the
            dense teacher through :class:`~hf_compress.distill.DistillationTrainer`).
        rank, lora_alpha, lora_dropout: LoRA ``r``, ``alpha`` (scale ``alpha / r``) and dropout.
        targets, ignore: regexes (``re.search``) over full module names of the decoder blocks'
            linear layers; ``None`` = all of them (q/k/v/o and the MLP projections).
        merge: merge into the weights keeping the masks (``True``) or return the PEFT model with
            the adapter (for an adapter release).
        masked_update: ``"masked"`` trains ``W + M̄ ⊙ ΔW`` (the merged model exactly); ``"dense"``
            trains plain LoRA (what PEFT applies to an adapter release); ``"auto"`` = masked when
            merging a model whose targets are at least 1% zeros.
        seqlen, max_windows, text_field: training windows (tokens each, how many at most, the
            text column of jsonl/csv/datasets sources).
        max_steps: optimizer steps. max_seconds, clock: optional time budget (``"wall"`` or
            ``"process"`` CPU seconds), checked after every step.
        learning_rate, lr_scheduler_type, warmup_steps, weight_decay, batch_size,
        gradient_accumulation_steps, seed, logging_steps: as in ``transformers.TrainingArguments``.
        save_steps: checkpoint every this many steps into ``output_dir`` (``None`` = no checkpoints).
        save_total_limit: checkpoints kept. resume: ``True`` = continue from the last checkpoint in
            ``output_dir`` (start fresh if none), or a checkpoint path.
        kd_loss, temperature, kd_alpha: KD divergence (see ``DistillationConfig.loss``), softmax
            temperature, and the weight of the hard-label CE mixed in (``0`` = pure KD).
        training_args: further ``SFTConfig``/``DistillationConfig`` fields (e.g. ``bf16``,
            ``gradient_checkpointing``).
    """

    loss: str = "lm"
    rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    targets: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    merge: bool = True
    masked_update: str = "auto"
    seqlen: int = 512
    max_windows: int | None = None
    text_field: str = "text"
    max_steps: int = 100
    max_seconds: float | None = None
    clock: str = "process"
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    seed: int = 0
    logging_steps: int = 10
    save_steps: int | None = None
    save_total_limit: int | None = 2
    resume: bool | str = False
    kd_loss: str = "forward_kl"
    temperature: float = 1.0
    kd_alpha: float = 0.0
    training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .distill.losses import LOGIT_LOSSES

        _choice("loss", self.loss, LOSSES)
        _choice("masked_update", self.masked_update, MASKED_UPDATE)
        _choice("clock", self.clock, CLOCKS)
        _choice("kd_loss", self.kd_loss, LOGIT_LOSSES)
        for name in (
            "rank",
            "seqlen",
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
        ):
            _int_at_least(name, getattr(self, name), 1)
        for name in ("max_windows", "save_steps", "save_total_limit"):
            if getattr(self, name) is not None:
                _int_at_least(name, getattr(self, name), 1)
        _int_at_least("warmup_steps", self.warmup_steps, 0)
        if not self.lora_alpha > 0:
            raise _bad("lora_alpha", self.lora_alpha, "a number > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise _bad("lora_dropout", self.lora_dropout, "a number in [0, 1)")
        if not self.learning_rate > 0:
            raise _bad("learning_rate", self.learning_rate, "a number > 0")
        if self.weight_decay < 0:
            raise _bad("weight_decay", self.weight_decay, "a number >= 0")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise _bad("max_seconds", self.max_seconds, "None or a number > 0")
        if not self.temperature > 0:
            raise _bad("temperature", self.temperature, "a number > 0")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise _bad("kd_alpha", self.kd_alpha, "a number in [0, 1]")
        if self.masked_update == "masked" and not self.merge:
            raise _bad(
                "masked_update",
                self.masked_update,
                "'auto' or 'dense' with merge=False (PEFT applies an adapter densely)",
            )
        self._check_patterns()
        self._check_training_args()

    def _check_patterns(self) -> None:
        import re

        for name in ("targets", "ignore"):
            for pattern in getattr(self, name) or []:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise _bad(name, pattern, f"valid Python regexes ({err})") from None

    def _check_training_args(self) -> None:
        from .distill import DistillationConfig

        known = {f.name for f in fields(DistillationConfig)}
        for key in self.training_args:
            if key in _OWN_ARGS:
                raise _bad(
                    "training_args",
                    key,
                    "fields RecoveryConfig does not set itself; set RecoveryConfig fields directly",
                )
            if key not in known:
                raise _bad("training_args", key, "SFTConfig / DistillationConfig field names")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise _bad(name, value, ", ".join(allowed))


def _int_at_least(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _bad(name, value, f"an integer >= {low}")


# ------------------------------------------------------------------------------------ data


def recovery_dataset(
    tokenizer: Any,
    source: Any,
    *,
    seqlen: int = 512,
    max_windows: int | None = None,
    text_field: str = "text",
):
    """Packed training windows: a ``datasets.Dataset`` with ``input_ids`` rows of ``seqlen`` tokens.

    ``source`` is anything :func:`hf_compress.calibration.load_texts` reads, or a ``datasets.Dataset``
    that already has ``input_ids`` (used as given). Windows are non-overlapping, from the start of
    the token stream; the tail shorter than a window is dropped.

    Raises:
        NoTextError: no usable text. TooShortError: fewer tokens than one window.
        TokenizerRoundTripError: the tokenizer does not give the text back.
    """
    from datasets import Dataset

    from .calibration import evaluation_windows

    columns = getattr(source, "column_names", None)
    if isinstance(columns, list) and "input_ids" in columns and text_field not in columns:
        if len(source) == 0:
            from .calibration import NoTextError

            raise NoTextError("the pre-tokenized dataset has no rows")
        return source
    ids = evaluation_windows(tokenizer, source, seqlen=seqlen, max_windows=max_windows, text_field=text_field)
    return Dataset.from_dict({"input_ids": ids.tolist()})


# ----------------------------------------------------------------------------------- targets


def lora_targets(
    model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None
) -> list[str]:
    """Full names of the decoder-block linear layers LoRA adapts; a clear error if none matches."""
    arch_spec(model)
    try:
        return sorted(block_modules(model, targets, ignore or ()))
    except ValueError as err:
        raise ValueError(
            f"LoRA targets={targets!r} / ignore={ignore!r} match no linear layer of the decoder blocks: {err}"
        ) from None


def zero_fraction(model: nn.Module, names: list[str]) -> float:
    """Share of exact zeros over the weights of the named modules."""
    modules = dict(model.named_modules())
    zeros = sum(int((modules[n].weight == 0).sum()) for n in names)
    return zeros / max(sum(modules[n].weight.numel() for n in names), 1)


# ----------------------------------------------------------------------------------- teacher


def prepare_teacher(
    teacher: Any, tokenizer: Any, teacher_tokenizer: Any = None, dtype: torch.dtype | None = None
):
    """``(teacher model, its tokenizer or None)``; refuses a teacher with another tokenizer.

    ``teacher`` is a model or a local folder / Hub id. Raises ``TokenizerMismatchError``.
    """
    from .distill import TokenizerMismatchError
    from .distill.heads import check_same_tokenizer, load_teacher_tokenizer

    if isinstance(teacher, (str, Path)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        teacher_tokenizer = teacher_tokenizer or AutoTokenizer.from_pretrained(str(teacher))
        teacher = AutoModelForCausalLM.from_pretrained(str(teacher), dtype=dtype).eval()
    teacher_tokenizer = teacher_tokenizer or load_teacher_tokenizer(teacher)
    if teacher_tokenizer is not None:
        check_same_tokenizer(tokenizer, teacher_tokenizer)
    else:
        logger.warning("the teacher's tokenizer is unknown: only its vocabulary size is checked")
    rows = teacher.get_output_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise TokenizerMismatchError(
            f"the teacher's LM head has {rows} rows but the tokenizer has {len(tokenizer)} tokens"
        )
    return teacher, teacher_tokenizer


# ------------------------------------------------------------------------------------ report


@dataclass
class RecoveryReport:
    """What a recovery run did (left on the returned model as ``hf_compress_recovery``)."""

    config: dict[str, Any]
    targets: int
    trainable_parameters: int
    masked_update: bool
    n_windows: int
    seqlen: int
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    stopped_by_budget: bool = False
    losses: list[tuple[int, float]] = field(default_factory=list)
    sparsity_before: float = 0.0
    sparsity_after: float | None = None
    zeros_lost: int | None = None
    zeros_gained: int | None = None
    patterns_after: dict[str, bool] = field(default_factory=dict)
    resumed_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- recovery


def recover_with_lora(
    model: nn.Module,
    dataset: Any,
    teacher: Any = None,
    *,
    tokenizer: Any,
    config: RecoveryConfig | None = None,
    output_dir: str | Path | None = None,
    teacher_tokenizer: Any = None,
    callbacks: list | None = None,
    progress: bool = True,
) -> nn.Module:
    """Recover a pruned causal LM with LoRA; returns the merged model (masks kept) or the PEFT model.

    Args:
        model: the pruned (sparse or structurally smaller) causal LM; changed in place when merging.
        dataset: training text (see :func:`recovery_dataset`).
        teacher: the dense model (instance or path) for ``config.loss == "kd"``; must share the tokenizer.
        tokenizer: the model's tokenizer. teacher_tokenizer: the teacher's, if not in its folder.
        output_dir: checkpoints (``config.save_steps``) and resume; a temporary folder when ``None``.
        callbacks: extra ``TrainerCallback`` instances.

    All inputs (config, targets, teacher tokenizer, data) are checked before training starts.
    The run's :class:`RecoveryReport` is left on the result as ``hf_compress_recovery``.
    """
    config = config or RecoveryConfig()
    started = time.perf_counter()
    names = lora_targets(model, config.targets, config.ignore)
    _check_run(config, teacher, output_dir)
    resume = _resume_path(config.resume, output_dir)
    if config.loss == "kd":
        teacher, teacher_tokenizer = prepare_teacher(
            teacher, tokenizer, teacher_tokenizer, next(model.parameters()).dtype
        )
    data = recovery_dataset(
        tokenizer, dataset, seqlen=config.seqlen, max_windows=config.max_windows, text_field=config.text_field
    )
    wanted = set(names)
    zeros_before = {n: m.weight.detach() == 0 for n, m in model.named_modules() if n in wanted}
    masked = config.masked_update == "masked" or (
        config.masked_update == "auto" and config.merge and zero_fraction(model, names) >= AUTO_MASK_MIN_ZEROS
    )
    report = RecoveryReport(config.to_dict(), len(names), 0, masked, len(data), config.seqlen,
                            sparsity_before=sparsity_report(model).total, resumed_from=resume)  # fmt: skip
    peft_model = _wrap_lora(model, names, config, masked)
    report.trainable_parameters = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    try:
        _train(peft_model, data, teacher, tokenizer, teacher_tokenizer, config, output_dir, callbacks, progress,
               report)  # fmt: skip
    except BaseException:
        peft_model.unload()  # give the caller back the model as it was (LoRA layers removed)
        raise
    report.seconds = time.perf_counter() - started
    if not config.merge:
        peft_model.hf_compress_recovery = report
        return peft_model
    from .training.masked_lora import merge_lora_keep_masks

    merged = merge_lora_keep_masks(peft_model)
    _check_masks(merged, zeros_before, report)
    merged.hf_compress_recovery = report
    logger.info("recovery done: %d steps, %.0f s, sparsity %.4f -> %.4f", report.steps, report.seconds,
                report.sparsity_before, report.sparsity_after)  # fmt: skip
    return merged


def _train(
    peft_model, data, teacher, tokenizer, teacher_tokenizer, config, output_dir, callbacks, progress, report
):
    """Build the trainer (SFTTrainer or DistillationTrainer), train, and record steps/tokens/losses."""
    with _run_dir(output_dir) as run_dir:
        trainer, budget = _build_trainer(
            peft_model, data, teacher, tokenizer, teacher_tokenizer, config, run_dir, callbacks, progress
        )
        trainer.train(resume_from_checkpoint=report.resumed_from)
    _fill_training(report, trainer, budget)


def _check_run(config: RecoveryConfig, teacher: Any, output_dir: Any) -> None:
    from .launch_checks import check_launch

    check_launch(bool(config.training_args.get("use_cpu", False)))
    if config.loss == "kd" and teacher is None:
        raise ValueError("RecoveryConfig.loss='kd' needs teacher=... (the dense model or its folder)")
    if config.loss == "lm" and teacher is not None:
        logger.warning("a teacher was given but RecoveryConfig.loss='lm': the teacher is not used")
    if output_dir is None and (config.resume or config.save_steps):
        raise ValueError("RecoveryConfig.resume / save_steps need output_dir=... (where checkpoints live)")


def _wrap_lora(model: nn.Module, names: list[str], config: RecoveryConfig, masked: bool):
    from peft import LoraConfig, get_peft_model

    from .training.masked_lora import register_masked_layers

    lora = LoraConfig(
        r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=names,
        bias="none", task_type="CAUSAL_LM", fan_in_fan_out=arch_spec(model).conv1d,
    )  # fmt: skip
    if masked:
        register_masked_layers(lora)
    with torch.random.fork_rng(devices=[]):  # reproducible LoRA init without touching the global RNG
        torch.manual_seed(config.seed)
        return get_peft_model(model, lora)


class _run_dir:
    """The given output folder, or a temporary one removed afterwards."""

    def __init__(self, output_dir: str | Path | None) -> None:
        self._given, self._tmp = output_dir, None

    def __enter__(self) -> str:
        if self._given is not None:
            Path(self._given).mkdir(parents=True, exist_ok=True)
            return str(self._given)
        self._tmp = tempfile.TemporaryDirectory(prefix="hf-compress-recover-")
        return self._tmp.name

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _resume_path(resume: bool | str, run_dir: str | Path | None) -> str | None:
    """The checkpoint to resume from (checked before any heavy work), or ``None``."""
    if not resume or run_dir is None:
        return None
    if isinstance(resume, str):
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"RecoveryConfig.resume={resume!r}: no such checkpoint folder")
        return resume
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(run_dir).is_dir():
        return None
    last = get_last_checkpoint(str(run_dir))
    if last is None:
        logger.info("resume=True but %s holds no checkpoint: starting from step 0", run_dir)
    return last


def _training_args(config: RecoveryConfig, run_dir: str, progress: bool) -> dict[str, Any]:
    args = dict(
        output_dir=run_dir, max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.warmup_steps, weight_decay=config.weight_decay,
        seed=config.seed, logging_steps=config.logging_steps, max_length=config.seqlen,
        save_strategy="steps" if config.save_steps else "no", save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit, report_to=[], disable_tqdm=not progress,
        activation_checkpointing=False, dataloader_num_workers=0, packing=False, bf16=_bf16_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    return args | config.training_args


def _bf16_available() -> bool:
    """Mixed precision where the accelerator has bf16 (TRL's default); fp32 on CPU."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _build_trainer(
    peft_model, data, teacher, tokenizer, teacher_tokenizer, config, run_dir, callbacks, progress
):
    from .training.budget import TimeBudgetCallback

    callbacks = list(callbacks or [])
    budget = None
    if config.max_seconds is not None:
        budget = TimeBudgetCallback(config.max_seconds, config.clock)
        callbacks.append(budget)
    args = _training_args(config, run_dir, progress)
    if config.loss == "kd":
        from .distill import DistillationConfig, DistillationTrainer

        kd_args = DistillationConfig(
            **args, loss=config.kd_loss, temperature=config.temperature, alpha=config.kd_alpha
        )
        trainer = DistillationTrainer(
            model=peft_model, teacher_model=teacher, args=kd_args, train_dataset=data, processing_class=tokenizer,
            teacher_processing_class=teacher_tokenizer, callbacks=callbacks,
        )  # fmt: skip
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=peft_model, args=SFTConfig(**args), train_dataset=data, processing_class=tokenizer,
                             callbacks=callbacks)  # fmt: skip
    return trainer, budget


def trained_tokens(trainer, seqlen: int) -> int:
    """Tokens a finished run trained on (all ranks): the Trainer's count, else steps x global batch x ``seqlen``."""
    state, args = trainer.state, trainer.args
    return int(getattr(state, "num_input_tokens_seen", 0) or 0) or (
        state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * seqlen
        * args.world_size
    )  # fmt: skip


def logged_losses(trainer) -> list[tuple[int, float]]:
    """``(step, loss)`` of every logged training step."""
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


def _fill_training(report: RecoveryReport, trainer, budget) -> None:
    report.steps = trainer.state.global_step
    report.tokens = trained_tokens(trainer, report.seqlen)
    report.losses = logged_losses(trainer)
    report.stopped_by_budget = budget is not None and budget.stopped_at is not None


def _check_masks(model: nn.Module, zeros_before: dict[str, torch.Tensor], report: RecoveryReport) -> None:
    """Every zero before is a zero after (raises otherwise); records gained zeros and patterns."""
    modules = dict(model.named_modules())
    lost = gained = 0
    for name, before in zeros_before.items():
        after = modules[name].weight.detach() == 0
        lost += int((before & ~after).sum())
        gained += int((after & ~before).sum())
    if lost:
        raise RuntimeError(f"the masked merge lost {lost} zero(s): a bug, please report it")
    sparsity = sparsity_report(model)
    report.zeros_lost, report.zeros_gained = lost, gained
    report.sparsity_after = sparsity.total
    report.patterns_after = {p: sparsity.pattern_holds(p) for p in ("2:4", "4:8")}
