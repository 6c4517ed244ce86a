"""Slow checks on the real models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) and a 2-rank DDP run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hf_compress.distill import DistillationTrainer
from hf_compress.distill.losses import logit_kd_loss
from tests.distill.conftest import base_args

ROOT = Path(__file__).resolve().parents[2]


def _keep(model, every: int):
    from torch import nn

    from hf_compress.models.table import arch_spec, base_model, decoder_layers

    kept = list(decoder_layers(model))[::every]
    parent_path, _, name = arch_spec(model).layers.rpartition(".")
    parent = base_model(model).get_submodule(parent_path) if parent_path else base_model(model)
    setattr(parent, name, nn.ModuleList(kept))
    model.config.num_hidden_layers = len(kept)
    return model


@pytest.mark.slow
def test_smollm2_chunked_loss_equals_full_logits_and_trains(tmp_path, smollm2_path, shared_data):
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    teacher = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    student = _keep(AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32), 3)
    ids = tok((shared_data / "wikitext-2" / "valid.txt").read_text()[:20000])["input_ids"]
    data = Dataset.from_dict({"input_ids": [ids[i * 96 : (i + 1) * 96] for i in range(4)]})
    args = base_args(tmp_path, per_device_train_batch_size=2, temperature=2.0, alpha=0.5, learning_rate=1e-5)
    trainer = DistillationTrainer(student, teacher, args=args, train_dataset=data, processing_class=tok)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch)
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s, t = student(**kw).logits[:, :-1], teacher(**kw).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        kd = logit_kd_loss(s[mask], t[mask], "forward_kl", 2.0)
        ce = torch.nn.functional.cross_entropy(s[mask], labels[mask], reduction="none")
        want = (0.5 * 4.0 * kd + 0.5 * ce).mean()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow
def test_minilm_classifier_pair_trains(tmp_path, minilm_path, shared_data):
    from hf_compress.distill.cli_entry import load_local_dataset

    tok = AutoTokenizer.from_pretrained(minilm_path)
    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    student = _keep(AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2), 2)
    data = load_local_dataset(str(shared_data / "sst2" / "train.tsv"), max_rows=32)
    args = base_args(
        tmp_path, per_device_train_batch_size=8, feature_weight=1.0, attention_weight=1.0, max_length=64
    )
    trainer = DistillationTrainer(student, teacher, args=args, train_dataset=data, processing_class=tok)
    assert trainer._layer_map == [(0, 1), (1, 3), (2, 5)]
    trainer.train()
    assert {"kd_loss", "feature_loss", "attention_loss"} <= set(trainer.state.log_history[0])


@pytest.mark.slow
def test_two_ddp_ranks_match_one_process():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "distill_ddp_check.py")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
