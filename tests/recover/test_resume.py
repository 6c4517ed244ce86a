"""An interrupted LoRA recovery resumes from its last checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TrainerCallback

from hf_compress.recover import RecoveryConfig, recover_with_lora


class Crash(Exception):
    pass


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"simulated failure at step {self.step}")


def test_interrupted_run_resumes_to_the_same_weights(pruned, tokenizer, text, tmp_path):
    config = dict(max_steps=4, seqlen=32, batch_size=2, save_steps=2, logging_steps=1, lora_dropout=0.1,
                  masked_update="masked", learning_rate=5e-3)  # fmt: skip
    reference = recover_with_lora(copy.deepcopy(pruned), text, tokenizer=tokenizer, config=RecoveryConfig(**config),
                                  output_dir=tmp_path / "ref", progress=False)  # fmt: skip
    run_dir = tmp_path / "cut"
    cut = copy.deepcopy(pruned)
    with pytest.raises(Crash):
        recover_with_lora(cut, text, tokenizer=tokenizer, config=RecoveryConfig(**config), output_dir=run_dir,
                          callbacks=[CrashAt(3)], progress=False)  # fmt: skip
    # a failed run hands the model back as it was: no LoRA layers left in it, weights untouched
    assert not any("lora" in n for n, _ in cut.named_parameters())
    assert all(torch.equal(p, dict(pruned.named_parameters())[n]) for n, p in cut.named_parameters())
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = recover_with_lora(copy.deepcopy(pruned), text, tokenizer=tokenizer,
                                config=RecoveryConfig(**config, resume=True), output_dir=run_dir, progress=False)  # fmt: skip
    report = resumed.hf_compress_recovery
    assert report.resumed_from == str(run_dir / "checkpoint-2") and report.steps == 4
    assert report.losses == reference.hf_compress_recovery.losses
    ref = dict(reference.named_parameters())
    for name, p in resumed.named_parameters():
        assert torch.equal(p, ref[name]), name
    assert any(not torch.equal(p, dict(pruned.named_parameters())[n]) for n, p in resumed.named_parameters())


def test_resume_without_a_checkpoint_starts_fresh_and_a_missing_path_is_refused(
    pruned, tokenizer, text, tmp_path
):
    config = RecoveryConfig(max_steps=1, seqlen=32, batch_size=2, resume=True)
    out = recover_with_lora(
        pruned, text, tokenizer=tokenizer, config=config, output_dir=tmp_path, progress=False
    )
    assert out.hf_compress_recovery.resumed_from is None and out.hf_compress_recovery.steps == 1
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        recover_with_lora(out, text, tokenizer=tokenizer, output_dir=tmp_path, progress=False,
                          config=RecoveryConfig(max_steps=1, seqlen=32, resume=str(tmp_path / "checkpoint-9")))  # fmt: skip
