"""Run as ``accelerate launch --config_file recipes/accelerate_configs/multi_cpu.yaml distill_worker.py ROOT``.

``ROOT`` holds the inputs of :func:`tests.distributed.distill_cases.write_inputs`. Writes:

* ``ROOT/kd``: ``hf-compress distill`` through its entry point (2 ranks x batch 2), saved by rank 0;
* ``ROOT/worker.json``: per rank, how the teacher was placed, and for an on-policy run
  (``lmbda=0.5``, 2 micro-batches per step) every decision and token count;
* ``ROOT/recovered.pt``: every rank's weights after LoRA recovery with KD (2 ranks x batch 2).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hf_compress.distill.distillation_trainer as trainer_module  # noqa: E402
from hf_compress.distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_compress.distill.cli_entry import distill_main, load_local_dataset  # noqa: E402
from tests.distributed.clean_exit import run_and_exit  # noqa: E402
from tests.distributed.distill_cases import ON_POLICY_SEED, distill_argv, recover  # noqa: E402


def teacher_facts(trainer) -> dict:
    teacher = trainer.teacher_model
    return {
        "teacher_type": type(teacher).__name__,
        "teacher_trainable": any(p.requires_grad for p in teacher.parameters()),
        "teacher_training_mode": teacher.training,
        "student_wrapper": type(trainer.model_wrapped).__name__,
        "world": trainer.accelerator.num_processes,
    }


def on_policy_run(root: Path) -> dict:
    """Two steps of 2 micro-batches with lmbda=0.5; records decisions and token counts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    decisions, counts = [], []
    real_decision = trainer_module.on_policy_decision

    def spy_decision(seed, step, micro, lmbda):
        decisions.append((step, micro, real_decision(seed, step, micro, lmbda)))
        return decisions[-1][2]

    trainer_module.on_policy_decision = spy_decision
    args = DistillationConfig(
        output_dir=str(root / "on_policy"), lmbda=0.5, max_new_tokens=4, max_steps=2,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3, use_cpu=True,
        bf16=False, report_to=[], save_strategy="no", logging_steps=1, seed=ON_POLICY_SEED,
        disable_tqdm=True, dataloader_num_workers=0, gradient_checkpointing=False,
    )  # fmt: skip
    with args.main_process_first():
        data = load_local_dataset(str(root / "prompts.jsonl"))
    trainer = DistillationTrainer(
        AutoModelForCausalLM.from_pretrained(root / "student"), str(root / "teacher"), args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(root / "student"),
    )  # fmt: skip
    fetch = trainer.get_batch_samples

    def spy_fetch(iterator, n, device):
        batches, num_items = fetch(iterator, n, device)
        local = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
        counts.append({"step": trainer.state.global_step, "num_items": float(num_items), "local": local})
        return batches, num_items

    trainer.get_batch_samples = spy_fetch
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"decisions": decisions, "counts": counts, "losses": losses}


def main(root: Path) -> None:
    trainer = distill_main(distill_argv(_paths(root), root / "kd", per_device=2))
    facts = teacher_facts(trainer)
    facts["on_policy"] = on_policy_run(root)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, facts)
    recovered = {k: v.detach().clone() for k, v in recover(per_device=2).state_dict().items()}
    every_rank = [None] * dist.get_world_size()
    dist.all_gather_object(every_rank, recovered)
    if dist.get_rank() == 0:
        (root / "worker.json").write_text(json.dumps(gathered, indent=1))
        torch.save(every_rank, root / "recovered.pt")
    dist.barrier()


def _paths(root: Path) -> dict[str, Path]:
    return {name: root / name for name in ("student", "teacher")} | {"text": root / "train.txt"}


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_and_exit(main, Path(sys.argv[1]))
