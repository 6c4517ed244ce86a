"""Shared by the distillation worker and its test: the tiny pair, the data and the CLI flags."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.distill.conftest import N_WORDS, make_llama, make_tokenizer

STEPS = 3
GLOBAL_BATCH = 4
ON_POLICY_SEED = 1  # gives both on- and off-policy micro-batches in the first steps (lmbda=0.5)


def write_inputs(root: Path) -> dict[str, Path]:
    """Student, teacher (same tokenizer), a text file with lines of different lengths, and prompts."""
    tok = make_tokenizer()
    paths = {"student": root / "student", "teacher": root / "teacher"}
    for name, model in (("student", make_llama(2, 32, seed=1)), ("teacher", make_llama(3, 48, seed=2))):
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    rng = random.Random(3)
    lines = [" ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(rng.randrange(3, 14))) for _ in range(16)]
    paths["text"] = root / "train.txt"
    paths["text"].write_text("\n".join(lines) + "\n")
    rows = [
        {
            "prompt": " ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(rng.randrange(2, 6))),
            "completion": " ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(rng.randrange(2, 6))),
        }
        for _ in range(16)
    ]
    paths["prompts"] = root / "prompts.jsonl"
    paths["prompts"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def distill_argv(paths: dict[str, Path], out: Path, per_device: int) -> list[str]:
    """``hf-compress distill`` flags; the global batch is ``GLOBAL_BATCH`` whatever the process count."""
    return [
        "--model_name_or_path", str(paths["student"]), "--teacher_model_name_or_path", str(paths["teacher"]),
        "--dataset", str(paths["text"]), "--output_dir", str(out), "--loss", "forward_kl",
        "--temperature", "2.0", "--alpha", "0.5", "--max_steps", str(STEPS),
        "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-2", "--optim", "sgd",
        "--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_strategy", "no", "--seed", "0",
        "--report_to", "none", "--use_cpu", "true", "--bf16", "false", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0", "--gradient_checkpointing", "false",
    ]  # fmt: skip


def pruned_student():
    """The student with half of every decoder weight matrix zeroed (by magnitude), as after pruning."""
    import torch

    model = make_llama(2, 32, seed=1)
    with torch.no_grad():
        for name, param in model.model.layers.named_parameters():
            if name.endswith("proj.weight"):
                param.mul_(param.abs() > param.abs().median())
    return model


def recovery_windows():
    """Eight pre-tokenized windows of 16 tokens (two steps of a global batch of 4)."""
    from datasets import Dataset

    rng = random.Random(5)
    return Dataset.from_dict(
        {"input_ids": [[rng.randrange(3, 3 + N_WORDS) for _ in range(16)] for _ in range(8)]}
    )


def recovery_config(per_device: int):
    from hf_compress.recover import RecoveryConfig

    return RecoveryConfig(
        loss="kd", rank=4, max_steps=2, batch_size=per_device, seqlen=16, learning_rate=1e-2,
        lr_scheduler_type="constant", logging_steps=1, temperature=2.0, training_args={"use_cpu": True},
    )  # fmt: skip


def recover(per_device: int):
    """LoRA recovery with KD from the teacher; returns the merged model."""
    from hf_compress.recover import recover_with_lora

    tok = make_tokenizer()
    teacher = make_llama(3, 48, seed=2)
    return recover_with_lora(
        pruned_student(), recovery_windows(), teacher, tokenizer=tok, teacher_tokenizer=tok,
        config=recovery_config(per_device), progress=False,
    )  # fmt: skip
