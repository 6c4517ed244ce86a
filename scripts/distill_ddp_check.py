"""Check that 2 DDP ranks give the same distillation update as one process (tiny models, CPU/gloo).

    python scripts/distill_ddp_check.py            # runs both and compares (exit code 1 on mismatch)

Single process: batch 8, no accumulation. DDP: ``torchrun --nproc_per_node 2``, batch 2 per rank,
gradient accumulation 2. Same 8 sequences of different lengths, one SGD step, logit + feature KD.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_one(bs: int, ga: int, out: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "distill"))
    from conftest import base_args, make_llama, make_tokenizer, token_rows
    from datasets import Dataset

    from hf_compress.distill import DistillationTrainer

    tok = make_tokenizer()
    data = Dataset.from_dict({"input_ids": token_rows(8)})
    extra = {"ddp_backend": "gloo"} if "WORLD_SIZE" in os.environ else {}
    args = base_args(
        out, per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1, optim="sgd",
        learning_rate=0.5, lr_scheduler_type="constant", alpha=0.5, temperature=2.0, feature_weight=1.0, **extra,
    )  # fmt: skip
    trainer = DistillationTrainer(
        make_llama(2, 32, seed=1), make_llama(3, 48, seed=2), args=args, train_dataset=data,
        processing_class=tok, teacher_processing_class=tok,
    )  # fmt: skip
    trainer.train()
    if trainer.args.process_index == 0:
        torch.save({n: p.detach() for n, p in trainer.model.named_parameters()}, out / "params.pt")
        info = {
            "loss": trainer.state.log_history[0]["loss"],
            "wrapper": type(trainer.model_wrapped).__name__,
            "teacher": type(trainer.teacher_model).__name__,
        }
        (out / "info.json").write_text(json.dumps(info))


def main() -> int:
    if len(sys.argv) == 4:
        if "WORLD_SIZE" in os.environ:  # a torchrun rank: leave without interpreter teardown
            sys.path.insert(0, str(ROOT))
            from tests.distributed.clean_exit import run_and_exit

            run_and_exit(run_one, int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
        run_one(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        single, multi = Path(tmp) / "single", Path(tmp) / "multi"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, __file__, "8", "1", str(single)], check=True, env=env)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        subprocess.run([*torchrun, __file__, "2", "2", str(multi)], check=True, env=env)
        a, b = torch.load(single / "params.pt"), torch.load(multi / "params.pt")
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        info_a, info_b = (json.loads((p / "info.json").read_text()) for p in (single, multi))
    print(f"single: {info_a}  ddp: {info_b}  max |param diff| = {diff:.2e}")
    ok = (
        diff < 1e-5
        and abs(info_a["loss"] - info_b["loss"]) < 1e-5
        and info_b["wrapper"] == "DistributedDataParallel"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
