"""Issue 5 real run (a): recover a 2:4-pruned SmolLM2 by distillation vs by plain LM fine-tuning.

Teacher: dense SmolLM2-135M-Instruct. Student: the same model pruned 2:4 (SparseGPT by default,
through ``hf_compress.prune``). Both recoveries get the same fixed budget on
``wikitext-2/valid.txt`` (same token windows, optimizer, learning rate, steps); the 2:4 masks are
kept by ``hf_compress.training.SparseMaskCallback`` (pruned gradients zeroed, weights re-masked after
every optimizer step). Perplexity:
``hf_compress.evaluate.perplexity`` on the first 64 x 512-token windows of ``wikitext-2/test.txt``.

    python scripts/distill_smollm2_pruned.py --out /tmp/kdruns/a --steps 40 --batch-size 4 --seq-len 256
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_compress as hfc
from hf_compress.distill import DistillationConfig, DistillationTrainer
from hf_compress.evaluate import perplexity
from hf_compress.fetch import fetch_model
from hf_compress.training import SparseMaskCallback

DATA = Path(os.environ.get("HF_COMPRESS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pruned_student(teacher_dir: Path, tok, out: Path, method: str, calib_samples: int) -> Path:
    """Prune a copy of the teacher 2:4 once and save it (reused by both recoveries)."""
    target = out / f"student_{method}_2of4"
    if (target / "model.safetensors").is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    config = hfc.PrunerConfig(method=method, sparsity=0.5, pattern="2:4", n_samples=calib_samples, seqlen=512)
    started = time.perf_counter()
    hfc.prune(model, config, dataset=str(DATA / "wikitext-2" / "valid.txt"), tokenizer=tok)
    print(
        f"pruned ({method} 2:4, {calib_samples} x 512 calibration windows) in {time.perf_counter() - started:.0f} s"
    )
    tmp = out / f".{target.name}.tmp"
    model.save_pretrained(tmp)
    tmp.rename(target)
    return target


def train_windows(tok, n: int, seq_len: int) -> Dataset:
    """The first ``n`` non-overlapping ``seq_len``-token windows of wikitext-2/valid.txt."""
    ids = tok((DATA / "wikitext-2" / "valid.txt").read_text())["input_ids"]
    rows = [ids[i * seq_len : (i + 1) * seq_len] for i in range(n)]
    return Dataset.from_dict({"input_ids": rows})


def ppl(model, tok) -> float:
    result = perplexity(
        model, tok, str(DATA / "wikitext-2" / "test.txt"), seqlen=512, max_windows=64, progress=False
    )
    return result.ppl


def recover(mode: str, student_dir: Path, teacher, tok, data: Dataset, args) -> tuple[nn.Module, dict]:
    """Fine-tune a fresh copy of the pruned student for the fixed budget; ``mode`` is ``kd`` or ``lm``."""
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    common = dict(
        output_dir=str(args.out / f"run_{mode}"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 10), weight_decay=0.0,
        optim="adamw_torch", logging_steps=5, save_strategy="no", report_to=[], bf16=False, use_cpu=True,
        gradient_checkpointing=False, max_length=args.seq_len, seed=0, disable_tqdm=True,
    )  # fmt: skip
    keep = SparseMaskCallback(targets=[r"^model\.layers\.\d+\."])  # decoder blocks, not the tied embedding
    callbacks = [keep]
    if mode == "kd":
        cfg = DistillationConfig(**common, loss=args.loss, temperature=args.temperature, alpha=args.alpha)
        trainer = DistillationTrainer(
            student, teacher, args=cfg, train_dataset=data, processing_class=tok, teacher_processing_class=tok,
            callbacks=callbacks,
        )  # fmt: skip
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            student, args=SFTConfig(**common), train_dataset=data, processing_class=tok, callbacks=callbacks
        )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    modules = dict(student.named_modules())
    weights = [modules[name].weight for name in keep.masks]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return student, {
        "train_seconds": seconds,
        "pruned_sparsity": zeros / total,
        "log": trainer.state.log_history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/kdruns/a"))
    parser.add_argument("--method", default="sparsegpt", choices=("sparsegpt", "wanda", "magnitude"))
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--loss", default="forward_kl")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--modes", default="kd,lm")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    teacher_dir = fetch_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    student_dir = pruned_student(teacher_dir, tok, args.out, args.method, args.calib_samples)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    data = train_windows(tok, args.steps * args.batch_size, args.seq_len)

    results = {"args": {k: str(v) for k, v in vars(args).items()}}
    before = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    results["ppl_pruned_before"] = ppl(before, tok)
    print(f"pruned student before recovery: ppl {results['ppl_pruned_before']:.2f}")
    del before
    for mode in args.modes.split(","):
        model, info = recover(mode, student_dir, teacher if mode == "kd" else None, tok, data, args)
        info["ppl"] = ppl(model, tok)
        results[mode] = info
        print(
            f"{mode}: ppl {info['ppl']:.2f} after {args.steps} steps ({info['train_seconds']:.0f} s), sparsity {info['pruned_sparsity']:.3f}"
        )
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "args"}, indent=2, default=str)[:2000])


if __name__ == "__main__":
    main()
