"""On-policy batches (GKD's lambda, Agarwal et al. 2024): the student writes the completions.

For a chosen fraction of micro-batches, each example's prompt (the tokens whose label is -100
before the first trained token) is kept and its completion is replaced by a sample from the
student; the teacher then scores the student's own tokens. The choice is a pure function of
``(seed, global step, micro-step)``, so every data-parallel rank takes the same branch.
"""

from __future__ import annotations

import random

import torch


def on_policy_decision(seed: int, global_step: int, micro_step: int, lmbda: float) -> bool:
    """Whether this micro-batch is on-policy; identical on every rank for the same arguments."""
    if lmbda <= 0.0:
        return False
    if lmbda >= 1.0:
        return True
    return random.Random(f"{seed}:{global_step}:{micro_step}").random() < lmbda


def prompt_lengths(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Length of each row's prompt: index of the first label != -100 (``[B, T] -> [B]``).

    Rows without any trained token count their whole (unpadded) length as prompt.
    """
    trained = labels != -100
    first = trained.long().argmax(1)
    return torch.where(trained.any(1), first, attention_mask.sum(1))


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors, padding on the left: ``ids [B, P]``, ``mask [B, P]``."""
    width = max(int(r.numel()) for r in rows)
    ids = rows[0].new_full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        if row.numel():
            ids[i, width - row.numel() :] = row
            mask[i, width - row.numel() :] = 1
    return ids, mask


def cut_at_eos(completion: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """Keep a 1-D completion up to and including its first EOS token."""
    for j, tok in enumerate(completion.tolist()):
        if tok in eos_ids:
            return completion[: j + 1]
    return completion


def build_on_policy_batch(
    batch: dict[str, torch.Tensor], generated: torch.Tensor, prompt_width: int, pad_id: int, eos_ids: set[int]
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids / attention_mask / labels`` of prompt + student completion.

    Args:
        batch: the original batch (``input_ids``, ``attention_mask``, ``labels``).
        generated: ``[B, P + new]`` output of ``generate`` on left-padded prompts of width ``P``.
        prompt_width: ``P``.
    """
    lengths = prompt_lengths(batch["labels"], batch["attention_mask"])
    seqs, n_prompt = [], []
    for i in range(generated.shape[0]):
        prompt = batch["input_ids"][i, : int(lengths[i])]
        completion = cut_at_eos(generated[i, prompt_width:], eos_ids)
        seqs.append(torch.cat([prompt, completion]))
        n_prompt.append(prompt.numel())
    width = max(s.numel() for s in seqs)
    ids = generated.new_full((len(seqs), width), pad_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, seq in enumerate(seqs):
        ids[i, : seq.numel()] = seq
        mask[i, : seq.numel()] = 1
        labels[i, n_prompt[i] : seq.numel()] = seq[n_prompt[i] :]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def prompts_of(batch: dict[str, torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of a right-padded batch: ``ids [B, P]``, ``mask [B, P]``."""
    lengths = prompt_lengths(batch["labels"], batch["attention_mask"])
    rows = [batch["input_ids"][i, : int(n)] for i, n in enumerate(lengths)]
    if any(r.numel() == 0 for r in rows):
        raise ValueError(
            "on-policy distillation (lmbda > 0) needs a prompt in every example (labels -100 before the "
            "completion); use a prompt/completion dataset with completion_only_loss"
        )
    return left_pad(rows, pad_id)
