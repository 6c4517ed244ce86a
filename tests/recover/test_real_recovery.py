"""Slow: LoRA recovery of the real SmolLM2-135M-Instruct after 2:4 pruning keeps every zero (CI runs these)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_compress as hfc
from hf_compress.recover import RecoveryConfig, recover_with_lora

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("loss", ["lm", "kd"])
def test_real_recovery_keeps_the_2of4_zeros_position_for_position(smollm2_path, shared_data, loss):
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    teacher = (
        AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
        if loss == "kd"
        else None
    )
    hfc.prune(model, hfc.PrunerConfig(method="magnitude", pattern="2:4"), progress=False)
    before = {n: p.detach() == 0 for n, p in model.named_parameters()}
    config = RecoveryConfig(loss=loss, max_steps=2, seqlen=64, batch_size=1, max_windows=16, logging_steps=1)
    out = recover_with_lora(model, shared_data / "wikitext-2" / "valid.txt", teacher, tokenizer=tok, config=config,
                            progress=False)  # fmt: skip
    after = {n: p.detach() == 0 for n, p in out.named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in before)
    report = out.hf_compress_recovery
    assert report.targets == 210 and report.masked_update and report.steps == 2
    assert report.patterns_after["2:4"] and report.zeros_lost == 0
    assert all(torch.isfinite(torch.tensor([v for _, v in report.losses])))
