"""A model loaded through the hook trains: transformers' Trainer and PEFT accept it."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

import hf_compress
from tests.tiny_models import random_tokens


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=4, seqlen=12):
        self.ids = random_tokens(n, seqlen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def args(tmp_path):
    return TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )


@pytest.fixture
def compact_checkpoint(tiny_dir, tmp_path):
    """A compact 2:4 checkpoint; models are loaded from it through the hook (pre-quantized path)."""
    config = hf_compress.PrunerConfig(method="magnitude", pattern="2:4", sparsity=None)
    AutoModelForCausalLM.from_pretrained(tiny_dir["llama"], quantization_config=config).save_pretrained(
        tmp_path / "c"
    )
    return tmp_path / "c"


@pytest.mark.parametrize("source", ["prune_at_load", "compact_reload"])
def test_trainer_full_fine_tuning(tiny_dir, compact_checkpoint, tmp_path, source):
    if source == "prune_at_load":
        config = hf_compress.PrunerConfig(method="magnitude", sparsity=0.5)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"], quantization_config=config)
    else:
        model = AutoModelForCausalLM.from_pretrained(compact_checkpoint)
    assert model.is_quantized
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = Trainer(model=model, args=args(tmp_path), train_dataset=Tokens()).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    up = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(before[up], dict(model.named_parameters())[up])


def test_peft_lora_on_a_hook_loaded_model(compact_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(compact_checkpoint)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    lora = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert lora
    Trainer(model=peft_model, args=args(tmp_path), train_dataset=Tokens()).train()
    after = dict(peft_model.named_parameters())
    assert any(not torch.equal(value, after[name]) for name, value in lora.items())
