"""Offline teacher cache round trip and the on-policy fraction."""

from __future__ import annotations

import pytest
import torch

from hf_compress.distill import DistillationTrainer, cache_teacher_topk, load_teacher_cache
from hf_compress.distill.on_policy import (
    build_on_policy_batch,
    on_policy_decision,
    prompt_lengths,
    prompts_of,
)
from hf_compress.distill.teacher_cache import CACHE_COLUMNS, read_cache_meta
from tests.distill.conftest import base_args, make_llama


@pytest.fixture
def cache_dir(tmp_path, tokenizer, lm_dataset):
    teacher = make_llama(3, 48, seed=2)
    return cache_teacher_topk(
        teacher,
        lm_dataset,
        tmp_path / "cache",
        k=6,
        tokenizer=tokenizer,
        temperature=2.0,
        batch_size=5,
        shard_rows=8,
    )


def test_cache_layout_and_metadata(cache_dir, lm_dataset):
    meta = read_cache_meta(cache_dir)
    assert meta["k"] == 6 and meta["temperature"] == 2.0 and meta["rows"] == 16 and meta["shards"] >= 2
    data = load_teacher_cache(cache_dir)
    assert set(CACHE_COLUMNS) <= set(data.column_names) and len(data) == 16
    row = data[3]
    assert row["input_ids"] == lm_dataset[3]["input_ids"]
    assert len(row["teacher_topk_ids"]) == len(row["input_ids"]) and len(row["teacher_topk_ids"][0]) == 6
    probs = (
        torch.tensor(row["teacher_topk_logprobs"]).exp().sum(-1)
        + torch.tensor(row["teacher_tail_logprob"]).exp()
    )
    torch.testing.assert_close(probs, torch.ones_like(probs))
    assert not list(cache_dir.parent.glob(".cache.*"))  # temp folder renamed into place


def test_training_from_cache_equals_online_topk(tmp_path, tokenizer, cache_dir):
    student = make_llama(2, 32, seed=1)
    cached = load_teacher_cache(cache_dir, tokenizer=tokenizer)
    offline = DistillationTrainer(
        student,
        None,
        args=base_args(tmp_path / "off", temperature=2.0, alpha=0.2),
        train_dataset=cached,
        processing_class=tokenizer,
    )
    assert offline.args.top_k == 6 and offline.teacher_model is None
    online = DistillationTrainer(
        student, make_llama(3, 48, seed=2), args=base_args(tmp_path / "on", temperature=2.0, alpha=0.2, top_k=6),
        train_dataset=cached.remove_columns(list(CACHE_COLUMNS)), processing_class=tokenizer, teacher_processing_class=tokenizer,
    )  # fmt: skip
    off_batch = offline._prepare_inputs(next(iter(offline.get_train_dataloader())))
    on_batch = online._prepare_inputs(next(iter(online.get_train_dataloader())))
    assert torch.equal(off_batch["input_ids"], on_batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(
            offline.compute_loss(student, off_batch), online.compute_loss(student, on_batch)
        )
    offline.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in offline.state.log_history if "loss" in h)


def test_cache_temperature_and_k_must_match(tmp_path, tokenizer, cache_dir):
    cached = load_teacher_cache(cache_dir)
    with pytest.raises(ValueError, match="top_k=4 but the teacher cache holds top-6"):
        DistillationTrainer(
            make_llama(2, 32),
            None,
            args=base_args(tmp_path, top_k=4),
            train_dataset=cached,
            processing_class=tokenizer,
        )
    trainer = DistillationTrainer(
        make_llama(2, 32),
        None,
        args=base_args(tmp_path, temperature=1.0),
        train_dataset=cached,
        processing_class=tokenizer,
    )
    with pytest.raises(ValueError, match="written at temperature 2.0"):
        next(iter(trainer.get_train_dataloader()))


def test_on_policy_decision_is_deterministic_and_has_the_right_rate():
    draws = [on_policy_decision(7, step, micro, 0.3) for step in range(400) for micro in range(2)]
    assert draws == [on_policy_decision(7, step, micro, 0.3) for step in range(400) for micro in range(2)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert not on_policy_decision(7, 3, 0, 0.0) and on_policy_decision(7, 3, 0, 1.0)


def test_on_policy_batch_keeps_prompts_and_masks_them():
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 0], [5, 9, 10, 11, 12]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
        "labels": torch.tensor([[-100, -100, 7, 8, -100], [-100, 9, 10, 11, 12]]),
    }
    assert prompt_lengths(batch["labels"], batch["attention_mask"]).tolist() == [2, 1]
    ids, mask = prompts_of(batch, pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 5]] and mask.tolist() == [[1, 1], [0, 1]]
    generated = torch.tensor([[5, 6, 20, 1, 0], [0, 5, 21, 22, 23]])  # row 0 stops at eos=1
    new = build_on_policy_batch(batch, generated, prompt_width=2, pad_id=0, eos_ids={1})
    assert new["input_ids"].tolist() == [[5, 6, 20, 1], [5, 21, 22, 23]]
    assert new["labels"].tolist() == [[-100, -100, 20, 1], [-100, 21, 22, 23]]
    assert new["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]


def test_on_policy_training_uses_student_completions(tmp_path, tokenizer, prompt_dataset):
    trainer = DistillationTrainer(
        make_llama(2, 32, seed=1), make_llama(3, 48, seed=2),
        args=base_args(tmp_path, lmbda=1.0, max_new_tokens=4, max_steps=2),
        train_dataset=prompt_dataset, processing_class=tokenizer, teacher_processing_class=tokenizer,
    )  # fmt: skip
    seen = []
    original = trainer.compute_loss

    def spy(model, inputs, *a, **k):
        seen.append((inputs["input_ids"].clone(), inputs["labels"].clone()))
        return original(model, inputs, *a, **k)

    trainer.compute_loss = spy
    trainer.train()
    assert len(seen) == 2
    ids, labels = seen[0]
    assert ((labels != -100).sum(1) <= 4).all()  # completions are the student's (max_new_tokens=4)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_on_policy_needs_prompts(tmp_path, tokenizer, lm_dataset):
    trainer = DistillationTrainer(
        make_llama(2, 32), make_llama(2, 32), args=base_args(tmp_path, lmbda=1.0), train_dataset=lm_dataset,
        processing_class=tokenizer, teacher_processing_class=tokenizer,
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs a prompt in every example"):
        trainer.train()
