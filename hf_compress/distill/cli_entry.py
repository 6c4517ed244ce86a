"""``hf-compress distill``: parse a ``DistillationConfig`` (+ paths) from flags and/or ``--config x.yaml``.

    hf-compress distill --model_name_or_path STUDENT --teacher_model_name_or_path TEACHER \\
        --dataset wikitext-2/valid.txt --output_dir out --loss forward_kl --temperature 2 --alpha 0.5
    hf-compress distill --config recipes/smollm2/distill.yaml --max_steps 100   # flags override the file
    hf-compress distill --model_name_or_path STUDENT --teacher_cache CACHE_DIR --output_dir out  # offline

Many processes: ``accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m hf_compress.cli distill ...``
(the teacher is never DDP-wrapped; FSDP / ZeRO-3 shard it). The main process writes the student and
``distill_report.json`` (per-step losses, process layout, versions) into ``--output_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

TASKS = ("causal-lm", "sequence-classification")


@dataclass
class DistillScriptArguments:
    """Paths and data options of ``hf-compress distill`` (the training options are DistillationConfig's)."""

    model_name_or_path: str = field(metadata={"help": "student model folder (or Hub id)"})
    teacher_model_name_or_path: str | None = field(default=None, metadata={"help": "teacher model folder"})
    dataset: str | None = field(
        default=None, metadata={"help": "local file, saved dataset folder or Hub name"}
    )
    dataset_split: str = field(default="train", metadata={"help": "split for Hub datasets"})
    eval_dataset: str | None = field(default=None, metadata={"help": "optional evaluation data"})
    teacher_cache: str | None = field(
        default=None, metadata={"help": "folder from cache_teacher_topk (no teacher)"}
    )
    task: str = field(default="causal-lm", metadata={"help": "causal-lm | sequence-classification"})
    max_rows: int | None = field(default=None, metadata={"help": "use only the first N rows"})
    dtype: str = field(default="float32", metadata={"help": "student dtype: float32 | bfloat16 | float16"})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"DistillScriptArguments.task={self.task!r} is invalid; allowed: {', '.join(TASKS)}"
            )
        if (self.teacher_model_name_or_path is None) == (self.teacher_cache is None):
            raise ValueError("give exactly one of --teacher_model_name_or_path and --teacher_cache")
        if self.teacher_cache is None and self.dataset is None:
            raise ValueError("--dataset is required unless --teacher_cache is given")


def load_local_dataset(path: str, split: str = "train", max_rows: int | None = None) -> Dataset:
    """A ``datasets.Dataset`` from a local file (txt/jsonl/json/csv/tsv/parquet), a saved folder or a Hub name.

    Text files give one row per non-empty line in a ``text`` column.
    """
    from datasets import load_dataset, load_from_disk

    from .teacher_cache import META_FILE, load_teacher_cache

    p = Path(path)
    if p.is_dir() and (p / META_FILE).is_file():
        data = load_teacher_cache(p)
    elif p.is_dir():
        data = load_from_disk(str(p))
    elif p.is_file():
        kind = {
            ".txt": "text",
            ".jsonl": "json",
            ".json": "json",
            ".csv": "csv",
            ".tsv": "csv",
            ".parquet": "parquet",
        }
        builder = kind.get(p.suffix)
        if builder is None:
            raise ValueError(f"unsupported data file {path!r}; use one of {', '.join(kind)}")
        extra = {"delimiter": "\t"} if p.suffix == ".tsv" else {}
        data = load_dataset(builder, data_files=str(p), split="train", **extra)
        if builder == "text":
            data = data.filter(lambda row: bool(row["text"].strip()))
    else:
        data = load_dataset(path, split=split)
    return data.select(range(min(max_rows, len(data)))) if max_rows else data


def distill_main(argv: Sequence[str] | None = None):
    """Run one distillation from command-line flags; returns the trainer after saving the student."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import TrlParser

    from .distillation_config import DistillationConfig
    from .distillation_trainer import DistillationTrainer
    from .final_save import run_report, save_final

    started = time.perf_counter()
    script, cfg = TrlParser((DistillScriptArguments, DistillationConfig)).parse_args_and_config(
        list(argv) if argv is not None else None
    )
    auto = (
        AutoModelForSequenceClassification
        if script.task == "sequence-classification"
        else AutoModelForCausalLM
    )
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    student = auto.from_pretrained(script.model_name_or_path, dtype=getattr(torch, script.dtype))
    source = script.teacher_cache or script.dataset
    with cfg.main_process_first(desc="loading the data"):  # one process fills the datasets cache
        train = load_local_dataset(source, script.dataset_split, script.max_rows)
        evaluation = (
            load_local_dataset(script.eval_dataset, script.dataset_split) if script.eval_dataset else None
        )
    trainer = DistillationTrainer(
        student,
        script.teacher_model_name_or_path,
        args=cfg,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    save_final(trainer, tokenizer, Path(cfg.output_dir), run_report(trainer, started))
    return trainer
