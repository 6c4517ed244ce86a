"""DistillationTrainer on tiny causal-LM pairs: loss semantics, GA invariance, vocabularies, modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hf_compress.distill import DistillationTrainer, TokenizerMismatchError
from hf_compress.distill.losses import LOGIT_LOSSES, logit_kd_loss
from tests.distill.conftest import base_args, make_llama, make_tokenizer


def _trainer(tmp_path, tokenizer, dataset, student=None, teacher=None, **kw):
    student = student or make_llama(2, 32, seed=1)
    teacher = teacher or make_llama(3, 48, seed=2)
    args = base_args(tmp_path, **kw)
    return DistillationTrainer(
        student,
        teacher,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        teacher_processing_class=tokenizer,
    )


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _reference_loss(trainer, batch, vocab):
    """alpha * CE + (1 - alpha) T^2 KL from full logits, mean over label tokens (the definition)."""
    args = trainer.args
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    s = trainer.model(**kwargs).logits[:, :-1, :vocab]
    t = trainer.teacher_model(**kwargs).logits[:, :-1, :vocab]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    kd = logit_kd_loss(s[mask], t[mask], args.loss, args.temperature, args.beta, args.skew_alpha)
    ce = F.cross_entropy(s[mask].float(), labels[mask], reduction="none")
    return ((1 - args.alpha) * args.temperature**2 * kd + args.alpha * ce).mean()


@pytest.mark.parametrize("loss", ["forward_kl", "jsd", "tvd"])
def test_loss_equals_full_logit_definition(tmp_path, tokenizer, lm_dataset, loss):
    trainer = _trainer(
        tmp_path, tokenizer, lm_dataset, loss=loss, alpha=0.3, temperature=2.0, kd_chunk_size=7
    )
    batch = _batch(trainer)
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch)
        want = _reference_loss(trainer, batch, len(tokenizer))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _one_step(tmp_path, tokenizer, dataset, bs, ga, **kw):
    trainer = _trainer(
        tmp_path / f"bs{bs}", tokenizer, dataset, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", **kw,
    )  # fmt: skip
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    return loss, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("extra", [{}, {"feature_weight": 1.0, "attention_weight": 1.0}])
def test_gradient_accumulation_gives_same_loss_and_update(tmp_path, tokenizer, lm_dataset, extra):
    data = lm_dataset.select(range(8))  # lengths differ, so micro-batches hold different token counts
    loss1, params1 = _one_step(tmp_path, tokenizer, data, bs=8, ga=1, alpha=0.5, temperature=2.0, **extra)
    loss4, params4 = _one_step(tmp_path, tokenizer, data, bs=2, ga=4, alpha=0.5, temperature=2.0, **extra)
    assert loss1 == pytest.approx(loss4, rel=1e-5)
    start = make_llama(2, 32, seed=1).state_dict()
    moved = 0
    for name, p in params1.items():
        torch.testing.assert_close(p, params4[name], rtol=1e-4, atol=1e-6)
        key = name if name in start else name.removeprefix("model.")
        moved += int(not torch.equal(p, start.get(key, p)))
    assert moved > 0


def test_padded_vocabularies_compare_over_the_real_vocabulary(tmp_path, tokenizer, lm_dataset):
    student = make_llama(2, 32, vocab=64, seed=1)
    teacher = make_llama(3, 48, vocab=96, seed=2)
    trainer = _trainer(tmp_path, tokenizer, lm_dataset, student, teacher, alpha=0.2)
    assert trainer._vocab == len(tokenizer) == 63
    batch = _batch(trainer)
    with torch.no_grad():
        torch.testing.assert_close(
            trainer.compute_loss(trainer.model, batch), _reference_loss(trainer, batch, 63)
        )
    trainer.train()


def test_different_tokenizers_are_refused_before_training(tmp_path, tokenizer, lm_dataset):
    args = base_args(tmp_path)
    other = make_tokenizer(prefix="v")
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ"):
        DistillationTrainer(
            make_llama(2, 32), make_llama(2, 32), args=args, train_dataset=lm_dataset,
            processing_class=tokenizer, teacher_processing_class=other,
        )  # fmt: skip
    with pytest.raises(TokenizerMismatchError, match="only 40 rows"):
        DistillationTrainer(
            make_llama(2, 32),
            make_llama(2, 32, vocab=40),
            args=args,
            train_dataset=lm_dataset,
            processing_class=tokenizer,
        )


def _changed(before: dict, model) -> bool:
    return any(not torch.equal(before[n], p) for n, p in model.state_dict().items() if n in before)


@pytest.mark.parametrize("loss", LOGIT_LOSSES)
def test_each_logit_loss_trains(tmp_path, tokenizer, lm_dataset, loss):
    trainer = _trainer(
        tmp_path, tokenizer, lm_dataset, loss=loss, temperature=1.5, top_k=8 if loss == "jsd" else None
    )
    before = {n: p.clone() for n, p in trainer.model.state_dict().items()}
    t_before = {n: p.clone() for n, p in trainer.teacher_model.state_dict().items()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert _changed(before, trainer.model)
    assert not _changed(t_before, trainer.teacher_model)
    assert not trainer.teacher_model.training
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())


def test_feature_attention_contrastive_train_and_projections_stay_out_of_the_student(
    tmp_path, tokenizer, lm_dataset
):
    trainer = _trainer(
        tmp_path, tokenizer, lm_dataset, feature_weight=1.0, attention_weight=1.0, contrastive_weight=0.5,
        feature_layers="0:0,1:2", feature_loss="cosine", attention_loss="mse", save_projections=True, max_steps=3,
    )  # fmt: skip
    proj = {n: p.clone() for n, p in trainer._projections.state_dict().items()}
    assert set(proj) == {"hidden.0.weight", "hidden.1.weight", "pooled.weight"}
    trainer.train()
    logs = trainer.state.log_history[0]
    assert {"feature_loss", "attention_loss", "contrastive_loss", "kd_loss"} <= set(logs)
    assert any(not torch.equal(proj[n], p) for n, p in trainer._projections.state_dict().items())
    assert "distill_projections" not in dict(trainer.model.named_children())
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    weights = load_file(str(out / "model.safetensors"))
    assert not any("distill_projections" in k for k in weights)
    assert set(load_file(str(out / "distill_projections.safetensors"))) == set(proj)


def test_attention_needs_compatible_heads(tmp_path, tokenizer, lm_dataset):
    teacher = make_llama(2, 48, seed=2, heads=6)  # 6 heads vs the student's 4: averaged to one map
    trainer = _trainer(tmp_path, tokenizer, lm_dataset, teacher=teacher, attention_weight=1.0)
    trainer.train()
    assert "attention_loss" in trainer.state.log_history[0]


def test_layer_map_out_of_range_is_refused(tmp_path, tokenizer, lm_dataset):
    with pytest.raises(ValueError, match=r"pair \(0, 7\) is out of range"):
        _trainer(tmp_path, tokenizer, lm_dataset, feature_weight=1.0, feature_layers="0:7")


def test_teacher_is_not_needed_only_for_caches(tmp_path, tokenizer, lm_dataset):
    with pytest.raises(ValueError, match="teacher_model is required"):
        DistillationTrainer(
            make_llama(2, 32),
            None,
            args=base_args(tmp_path),
            train_dataset=lm_dataset,
            processing_class=tokenizer,
        )


def test_peft_student_trains_only_adapters(tmp_path, tokenizer, lm_dataset):
    from peft import LoraConfig

    args = base_args(tmp_path, learning_rate=1e-2)
    trainer = DistillationTrainer(
        make_llama(2, 32, seed=1), make_llama(3, 48, seed=2), args=args, train_dataset=lm_dataset,
        processing_class=tokenizer, teacher_processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )  # fmt: skip
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
