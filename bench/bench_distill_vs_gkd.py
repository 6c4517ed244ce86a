"""Throughput and peak memory: hf_compress.DistillationTrainer vs TRL's GKDTrainer, side by side.

Same teacher/student pair, same token windows, same objective (forward KL(teacher || student) at
T = 1, no hard-label term: GKD with ``lmbda=0, beta=0``; ours with ``loss="forward_kl", alpha=0``),
same optimizer and gradient-checkpointing setting. Each trainer runs in its own process so that
peak memory belongs to it alone. Timed: the training steps after ``--warmup`` steps. CPU time (``time.process_time``) is reported too: on a shared machine it is the steadier measure.
Memory: peak
RSS sampled every 5 ms during ``train()`` (CPU) or ``torch.cuda.max_memory_allocated`` (GPU), and the
same peak minus the memory held just before ``train()`` (models, data).

    python bench/bench_distill_vs_gkd.py                      # SmolLM2-135M teacher -> 15-layer student
    python bench/bench_distill_vs_gkd.py --tiny --seq-len 256 # seconds-long smoke run

Targets (issue 5): throughput >= 1.0x GKD, peak memory <= 0.7x GKD.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

DATA = Path(os.environ.get("HF_COMPRESS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Samples resident memory (or CUDA allocation) in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self.cuda = torch.cuda.is_available()

    def _now(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _rss_bytes()

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.base = self._now()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()
        if self.cuda:
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())


def drop_layers(model: nn.Module, keep_every: int) -> nn.Module:
    """A copy of ``model`` keeping blocks ``0, k, 2k, ...`` (a simple layer-dropped student)."""
    from hf_compress.models.table import arch_spec, base_model, decoder_layers

    student = copy.deepcopy(model)
    kept = list(decoder_layers(student))[::keep_every]
    for i, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
    parent_path, _, name = arch_spec(student).layers.rpartition(".")
    parent = base_model(student).get_submodule(parent_path) if parent_path else base_model(student)
    setattr(parent, name, nn.ModuleList(kept))
    student.config.num_hidden_layers = len(kept)
    if isinstance(getattr(student.config, "layer_types", None), list):
        student.config.layer_types = student.config.layer_types[::keep_every]
    return student


def load_pair(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(_model_path("smollm2-135m-instruct"))
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        )  # fmt: skip
        teacher = LlamaForCausalLM(cfg)
    else:
        path = _model_path(args.model)
        tok = AutoTokenizer.from_pretrained(path)
        teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    student = drop_layers(teacher, args.keep_every)
    return teacher, student, tok


def _model_path(name: str) -> str:
    if Path(name).is_dir():
        return name
    from hf_compress.fetch import fetch_model

    return str(fetch_model(name))


def windows(tok, n: int, seq_len: int):
    """``n`` windows of ``seq_len`` tokens from wikitext-2/valid.txt, labels = inputs."""
    from datasets import Dataset

    text = (DATA / "wikitext-2" / "valid.txt").read_text()[: n * seq_len * 8]
    ids = tok(text)["input_ids"]
    rows = [ids[i * seq_len : (i + 1) * seq_len] for i in range(n)]
    assert all(len(r) == seq_len for r in rows), "not enough text for the requested windows"
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


class StepTimer:
    """Records each optimizer step's wall time and process CPU time (all threads)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def on_step_begin(self, *a, **k):
        self._t, self._c = time.perf_counter(), time.process_time()

    def on_step_end(self, *a, **k):
        self.times.append(time.perf_counter() - self._t)
        self.cpu.append(time.process_time() - self._c)


def _common(args, out: str) -> dict:
    return dict(
        output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        learning_rate=1e-5, optim="adamw_torch", lr_scheduler_type="constant", logging_steps=1,
        save_strategy="no", report_to=[], bf16=False, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=args.gradient_checkpointing, max_length=args.seq_len, disable_tqdm=True, seed=0,
    )  # fmt: skip


def make_trainer(side: str, args, teacher, student, tok, data, out: str):
    from transformers import TrainerCallback
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id or 0)
    if side == "ours":
        from hf_compress.distill import DistillationConfig, DistillationTrainer

        cfg = DistillationConfig(**_common(args, out), loss="forward_kl", temperature=1.0, alpha=0.0)
        trainer = DistillationTrainer(
            student, teacher, args=cfg, train_dataset=data, processing_class=tok, teacher_processing_class=tok,
            data_collator=collator,
        )  # fmt: skip
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        cfg = GKDConfig(**_common(args, out), lmbda=0.0, beta=0.0, temperature=1.0)
        trainer = GKDTrainer(
            model=student, teacher_model=teacher, args=cfg, train_dataset=data, processing_class=tok,
            data_collator=collator,
        )  # fmt: skip
    timer = StepTimer()
    trainer.add_callback(
        type(
            "Timer",
            (TrainerCallback,),
            {"on_step_begin": timer.on_step_begin, "on_step_end": timer.on_step_end},
        )()
    )
    return trainer, timer


def run_side(args) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    teacher, student, tok = load_pair(args)
    data = windows(tok, (args.warmup + args.steps) * args.batch_size, args.seq_len)
    with tempfile.TemporaryDirectory() as out:
        trainer, timer = make_trainer(args.side, args, teacher, student, tok, data, out)
        with PeakSampler() as mem:
            trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    timed, cpu = timer.times[args.warmup :], timer.cpu[args.warmup :]
    tokens = args.batch_size * args.seq_len * len(timed)
    return {
        "side": args.side,
        "tokens_per_s": tokens / sum(timed),
        "tokens_per_cpu_s": tokens / sum(cpu),
        "step_s": timed,
        "step_cpu_s": cpu,
        "peak_bytes": mem.peak,
        "peak_above_start_bytes": mem.peak - mem.base,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "first_loss": losses[0],
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="teacher: known name or folder")
    parser.add_argument("--keep-every", type=int, default=2, help="student keeps every k-th block")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--gradient-checkpointing", type=lambda s: s.lower() in ("1", "true", "yes"), default=True
    )
    parser.add_argument("--tiny", action="store_true", help="random 4-layer model with SmolLM2's tokenizer")
    parser.add_argument("--side", choices=("ours", "gkd"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write both results here")
    args = parser.parse_args(argv)
    if args.side:
        Path(args.result).write_text(json.dumps(run_side(args)))
        return
    results = {}
    for side in ("ours", "gkd"):
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            cmd = [
                sys.executable,
                __file__,
                *(argv if argv is not None else sys.argv[1:]),
                "--side",
                side,
                "--result",
                fh.name,
            ]
            subprocess.run(cmd, check=True)
            results[side] = json.loads(Path(fh.name).read_text())
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


def report(results: dict, args) -> None:
    ours, gkd = results["ours"], results["gkd"]
    mib = 1 / 2**20
    print(f"\nteacher {args.model if not args.tiny else 'tiny'} -> student keeping every {args.keep_every}th block | "
          f"seq {args.seq_len} x batch {args.batch_size} | {args.steps} timed steps after {args.warmup} warm-up | "
          f"{ours['device']}, {ours['threads']} threads | gradient checkpointing {args.gradient_checkpointing}")  # fmt: skip
    print(f"{'':28}{'ours':>14}{'GKDTrainer':>14}{'ratio':>10}")
    rows = [
        ("tokens/s (wall)", ours["tokens_per_s"], gkd["tokens_per_s"], 1.0),
        ("tokens per CPU-second", ours["tokens_per_cpu_s"], gkd["tokens_per_cpu_s"], 1.0),
        ("peak memory (MiB)", ours["peak_bytes"] * mib, gkd["peak_bytes"] * mib, None),
        (
            "peak above start (MiB)",
            ours["peak_above_start_bytes"] * mib,
            gkd["peak_above_start_bytes"] * mib,
            None,
        ),
        ("first-step loss", ours["first_loss"], gkd["first_loss"], None),
    ]
    for name, a, b, _ in rows:
        print(f"{name:28}{a:14.3f}{b:14.3f}{a / b:10.3f}")
    print(
        f"targets: throughput ratio >= 1.0 -> {ours['tokens_per_s'] / gkd['tokens_per_s']:.2f} wall, "
        f"{ours['tokens_per_cpu_s'] / gkd['tokens_per_cpu_s']:.2f} CPU time; "
        f"peak memory ratio <= 0.7 -> {ours['peak_bytes'] / gkd['peak_bytes']:.2f} "
        f"(above start: {ours['peak_above_start_bytes'] / gkd['peak_above_start_bytes']:.2f})"
    )


if __name__ == "__main__":
    main()
