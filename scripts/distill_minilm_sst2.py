"""Issue 5 real run (b): all-MiniLM-L6-v2 fine-tuned on SST-2 (teacher) -> a 3-layer student by KD.

1. Teacher: all-MiniLM-L6-v2 + a fresh 2-class head, fine-tuned on the first ``--teacher-train``
   SST-2 training sentences (plain ``transformers.Trainer``).
2. Student: a copy of the fine-tuned teacher keeping blocks 0, 2, 4 (DistilBERT-style init from
   every other block), distilled with ``hf_compress.DistillationTrainer`` (soft labels at
   temperature T + hard labels, plus hidden-state MSE on blocks 0:1, 1:3, 2:5).
3. Dev accuracy (872 sentences) of both; the target is student >= 97% of the teacher.

    python scripts/distill_minilm_sst2.py --out /tmp/kdruns/b   # ~3 min on 2 quiet CPU cores

Defaults: teacher on 10,000 sentences; student on those plus 10,000 new ones, lr 2e-4. Measured:
teacher 85.21%, student 85.09% (99.9% of the teacher), 17.4M vs 22.7M parameters.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from hf_compress.distill import DistillationConfig, DistillationTrainer
from hf_compress.distill.classification import prepare_classification_dataset
from hf_compress.distill.cli_entry import load_local_dataset
from hf_compress.fetch import fetch_model
from hf_compress.models.table import arch_spec, base_model, decoder_layers

DATA = Path(os.environ.get("HF_COMPRESS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def accuracy(pred) -> dict:
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}


def keep_blocks(model: nn.Module, blocks: list[int]) -> nn.Module:
    """A copy of ``model`` with only ``blocks`` (in order)."""
    student = copy.deepcopy(model)
    kept = [decoder_layers(student)[i] for i in blocks]
    parent_path, _, name = arch_spec(student).layers.rpartition(".")
    setattr(base_model(student).get_submodule(parent_path), name, nn.ModuleList(kept))
    student.config.num_hidden_layers = len(kept)
    return student


def common_args(out: Path, name: str, args, epochs: float) -> dict:
    return dict(
        output_dir=str(out / name), num_train_epochs=epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0.06,
        weight_decay=0.01, logging_steps=25, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0, train_sampling_strategy="group_by_length",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/kdruns/b"))
    parser.add_argument("--teacher-train", type=int, default=10000)
    parser.add_argument("--student-train", type=int, default=10000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--student-epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--student-lr", type=float, default=2e-4)
    parser.add_argument(
        "--student-data",
        choices=("new", "all"),
        default="all",
        help="new sentences only, or the teacher's too",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    path = fetch_model("all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    train = load_local_dataset(str(DATA / "sst2" / "train.tsv")).shuffle(seed=0)
    dev = prepare_classification_dataset(
        load_local_dataset(str(DATA / "sst2" / "dev.tsv")), tok, max_length=args.max_len
    )
    results = {"args": {k: str(v) for k, v in vars(args).items()}}

    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    teacher_data = prepare_classification_dataset(
        train.select(range(args.teacher_train)), tok, max_length=args.max_len
    )
    t_trainer = Trainer(
        teacher, TrainingArguments(**common_args(args.out, "teacher", args, args.epochs)), train_dataset=teacher_data,
        eval_dataset=dev, processing_class=tok, compute_metrics=accuracy,
    )  # fmt: skip
    started = time.perf_counter()
    t_trainer.train()
    results["teacher_train_seconds"] = time.perf_counter() - started
    results["teacher_dev_accuracy"] = t_trainer.evaluate()["eval_accuracy"]
    print(
        f"teacher dev accuracy {results['teacher_dev_accuracy']:.4f} ({results['teacher_train_seconds']:.0f} s)"
    )

    student = keep_blocks(teacher, [0, 2, 4])
    first = 0 if args.student_data == "all" else args.teacher_train
    s_data = train.select(range(first, args.teacher_train + args.student_train))
    cfg = DistillationConfig(
        **{**common_args(args.out, "student", args, args.student_epochs), "learning_rate": args.student_lr or args.lr},
        bf16=False, gradient_checkpointing=False,
        max_length=args.max_len, loss="forward_kl", temperature=args.temperature, alpha=args.alpha,
        feature_weight=args.feature_weight, feature_layers="0:1,1:3,2:5",
    )  # fmt: skip
    s_trainer = DistillationTrainer(
        student, teacher, args=cfg, train_dataset=s_data, eval_dataset=dev, processing_class=tok,
        teacher_processing_class=tok, compute_metrics=accuracy,
    )  # fmt: skip
    started = time.perf_counter()
    s_trainer.train()
    results["student_train_seconds"] = time.perf_counter() - started
    results["student_dev_accuracy"] = s_trainer.evaluate()["eval_accuracy"]
    results["ratio"] = results["student_dev_accuracy"] / results["teacher_dev_accuracy"]
    results["student_params"] = sum(p.numel() for p in student.parameters())
    results["teacher_params"] = sum(p.numel() for p in teacher.parameters())
    print(json.dumps(results, indent=2))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
