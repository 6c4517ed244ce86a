"""Classifier students: per-example logits, no shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_compress.distill import DistillationTrainer
from hf_compress.distill.losses import logit_kd_loss
from tests.distill.conftest import base_args, make_bert


def _accuracy(pred) -> dict:
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}


def _trainer(tmp_path, tokenizer, data, **kw):
    return DistillationTrainer(
        make_bert(2, seed=1), make_bert(4, hidden=48, seed=2), args=base_args(tmp_path, **kw),
        train_dataset=data, eval_dataset=data, processing_class=tokenizer, teacher_processing_class=tokenizer,
        compute_metrics=_accuracy,
    )  # fmt: skip


def test_classifier_loss_is_per_example(tmp_path, tokenizer, sst_like):
    trainer = _trainer(tmp_path, tokenizer, sst_like, alpha=0.4, temperature=3.0, loss="reverse_kl")
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch)
        s, t = trainer.model(**kwargs).logits, trainer.teacher_model(**kwargs).logits
        kd = logit_kd_loss(s, t, "reverse_kl", 3.0)
        ce = F.cross_entropy(s, batch["labels"], reduction="none")
        want = (0.6 * 9.0 * kd + 0.4 * ce).mean()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "feature_weight": 1.0,
            "attention_weight": 1.0,
            "contrastive_weight": 0.2,
            "contrastive_pooling": "first",
        },
    ],
)
def test_classifier_pair_trains_and_evaluates(tmp_path, tokenizer, sst_like, extra):
    trainer = _trainer(tmp_path, tokenizer, sst_like, max_steps=3, per_device_eval_batch_size=8, **extra)
    before = {n: p.clone() for n, p in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.state_dict().items())
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and np.isfinite(metrics["eval_loss"])
    if extra:
        assert {"feature_loss", "attention_loss", "contrastive_loss"} <= set(trainer.state.log_history[0])


def test_label_counts_must_match(tmp_path, tokenizer, sst_like):
    teacher = make_bert(2)
    teacher.config.num_labels = 3
    with pytest.raises(ValueError, match="student has 2 labels but the teacher has 3"):
        DistillationTrainer(
            make_bert(2),
            teacher,
            args=base_args(tmp_path),
            train_dataset=sst_like,
            processing_class=tokenizer,
        )


def test_classifier_refuses_lm_only_options(tmp_path, tokenizer, sst_like):
    with pytest.raises(ValueError, match="classifier students support neither"):
        _trainer(tmp_path, tokenizer, sst_like, top_k=4)
