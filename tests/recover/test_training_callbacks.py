"""Sparse full fine-tuning and pruning during training, with a plain transformers Trainer on a tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_compress.pruning.masks import satisfies_nm
from hf_compress.training import (
    GradualPruningCallback,
    SparseMaskCallback,
    TimeBudgetCallback,
    cubic_sparsity,
)
from hf_compress.training.gradual import grow_mask, movement_update_
from tests.recover.recover_utils import zeros

BLOCKS = r"layers\.\d+\.(self_attn|mlp)\."


def _data(n=8, seqlen=16) -> Dataset:
    ids = torch.randint(3, 290, (n, seqlen), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _train(model, tmp_path, callbacks, max_steps=4, resume=None, **kw):
    kw = {"save_strategy": "no"} | kw
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=max_steps, per_device_train_batch_size=2, learning_rate=1e-2,
        weight_decay=0.1, report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=1,
        seed=0, dataloader_num_workers=0, **kw,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=_data(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class _GradSpy(TrainerCallback):
    """Records, just before each optimizer step, every block weight and its gradient."""

    def __init__(self):
        self.seen = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.seen.append({n: (p.detach().clone(), p.grad.detach().clone()) for n, p in model.named_parameters()
                          if p.grad is not None and ".layers." in n and p.dim() == 2})  # fmt: skip


# --------------------------------------------------------------------------- sparse fine-tuning


def test_sparse_full_finetuning_keeps_every_zero(pruned, tmp_path):
    before, start = zeros(pruned), copy.deepcopy(pruned)
    spy = _GradSpy()
    _train(pruned, tmp_path, [SparseMaskCallback(targets=[BLOCKS]), spy])
    after = zeros(pruned)
    assert all(torch.equal(before[n], after[n]) for n in before if ".layers." in n)
    for name, p in pruned.named_parameters():
        if ".layers." in name and p.dim() == 2:
            assert not torch.signbit(p[before[name]]).any(), name  # +0.0
            assert not torch.equal(p, dict(start.named_parameters())[name]), name  # kept weights trained
    for step in spy.seen:
        for name, (_, grad) in step.items():
            assert not grad[before[name]].any(), name


def test_without_the_callback_zeros_are_lost(pruned, tmp_path):
    before = zeros(pruned)
    _train(pruned, tmp_path, [], max_steps=1)
    after = zeros(pruned)
    assert sum(int((before[n] & ~after[n]).sum()) for n in before) > 0


def test_explicit_masks_are_applied_and_kept(dense, tmp_path):
    name = "model.layers.0.mlp.up_proj"
    mask = torch.zeros_like(dense.get_submodule(name).weight, dtype=torch.bool)
    mask[:, ::3] = True
    callback = SparseMaskCallback({name: mask})
    _train(dense, tmp_path, [callback], max_steps=2)
    w = dense.get_submodule(name).weight
    assert bool((w[mask] == 0).all()) and bool((w[~mask] != 0).all())
    assert callback.sparsity() == pytest.approx(mask.float().mean().item())
    with pytest.raises(ValueError, match="not prunable modules"):
        SparseMaskCallback({"model.nope": mask}).attach(dense)


# ------------------------------------------------------------------------------- schedule


def _paper_schedule(s_i, s_f, t0, n, dt):
    """Zhu & Gupta eq. (1) evaluated at the pruning steps t = t0 + k*dt, k = 0..n."""
    return {t0 + k * dt: s_f + (s_i - s_f) * (1 - (k * dt) / (n * dt)) ** 3 for k in range(n + 1)}


def test_cubic_schedule_matches_the_paper():
    for t, want in _paper_schedule(0.1, 0.8, 10, 6, 5).items():
        assert cubic_sparsity(t, initial=0.1, final=0.8, start=10, end=40) == pytest.approx(want, abs=1e-12)
    assert cubic_sparsity(0, initial=0.1, final=0.8, start=10, end=40) == 0.1
    assert cubic_sparsity(99, initial=0.1, final=0.8, start=10, end=40) == 0.8
    values = [cubic_sparsity(t, initial=0.0, final=0.5, start=0, end=20) for t in range(21)]
    assert values == sorted(values) and values[-1] == 0.5


def test_movement_update_is_minus_weight_times_grad():
    w, g = torch.randn(3, 4), torch.randn(3, 4)
    scores = torch.ones(3, 4)
    movement_update_(scores, w, g)
    torch.testing.assert_close(scores.double(), 1.0 - w.double() * g.double())


def test_grow_mask_is_monotone_and_exact():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(8, 16, generator=gen)
    old = torch.zeros(8, 16, dtype=torch.bool)
    old[0, :3] = True
    mask = grow_mask(scores, old, 0.25)
    assert bool((mask & old).eq(old).all()) and int(mask.sum()) == 32
    rows = grow_mask(scores, torch.zeros_like(old), 0.25, group="row")
    assert rows.sum(dim=1).tolist() == [4] * 8
    half = grow_mask(scores, torch.zeros_like(old), 0.25, nm=(2, 4))
    full = grow_mask(scores, half, 0.5, nm=(2, 4))
    assert int(half.sum()) == 32 and satisfies_nm(torch.where(full, 0.0, 1.0), 2, 4) and int(full.sum()) == 64
    assert bool(full[half].all())
    with pytest.raises(ValueError, match="exceeds 0.5"):
        grow_mask(scores, old, 0.6, nm=(2, 4))


# --------------------------------------------------------------------------- gradual pruning


class _MaskSpy(TrainerCallback):
    def __init__(self, pruner):
        self.pruner, self.masks = pruner, []

    def on_step_end(self, args, state, control, **kwargs):
        self.masks.append({n: m.clone() for n, m in self.pruner.masks.items()})


def test_gradual_magnitude_reaches_the_target_exactly_at_end_step(dense, tmp_path):
    pruner = GradualPruningCallback(0.5, start_step=1, end_step=5, frequency=2)
    spy = _MaskSpy(pruner)
    _train(dense, tmp_path, [pruner, spy], max_steps=6)
    steps = [h[0] for h in pruner.history]
    assert steps == [1, 3, 5]
    for step, scheduled, realised in pruner.history:
        assert scheduled == pytest.approx(cubic_sparsity(step, initial=0.0, final=0.5, start=1, end=5))
        assert realised == pytest.approx(scheduled, abs=1e-3)
    assert pruner.history[-1][2] == 0.5
    for name, mask in pruner.masks.items():
        assert int(mask.sum()) == mask.numel() // 2, name
        assert bool((dense.get_submodule(name).weight[mask] == 0).all())
    for earlier, later in zip(spy.masks, spy.masks[1:], strict=False):
        assert all(bool(later[n][earlier[n]].all()) for n in earlier)  # once pruned, pruned for good
    assert all(torch.equal(spy.masks[-1][n], spy.masks[-2][n]) for n in spy.masks[-1])  # held after end_step


def test_gradual_nm_ends_with_a_valid_pattern(dense, tmp_path):
    pruner = GradualPruningCallback(pattern="2:4", start_step=0, end_step=3, frequency=1, group="row")
    _train(dense, tmp_path, [pruner], max_steps=3)
    assert pruner.history[-1][1:] == (0.5, 0.5)
    for name in pruner.masks:
        w = dense.get_submodule(name).weight
        assert satisfies_nm(w, 2, 4) and int((w == 0).sum()) == w.numel() // 2, name


def test_movement_scores_accumulate_minus_weight_times_grad(dense, tmp_path):
    pruner = GradualPruningCallback(0.5, method="movement", start_step=3, end_step=4, frequency=1)
    grads, snapshot = _GradSpy(), {}

    class Snap(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                snapshot.update({n: s.clone() for n, s in pruner.scores.items()})

    _train(dense, tmp_path, [pruner, grads, Snap()], max_steps=4)
    assert len(snapshot) == 14
    for name, scores in snapshot.items():
        key = name + ".weight"
        want = -sum(w.double() * g.double() for w, g in (step[key] for step in grads.seen[:2]))
        torch.testing.assert_close(scores.double(), want, rtol=1e-5, atol=1e-8)
    assert pruner.history[-1][2] == 0.5


def test_movement_scores_survive_an_interrupted_run(dense, tmp_path):
    class Crash(Exception):
        pass

    class CrashAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Crash

    def pruner():
        return GradualPruningCallback(0.5, method="movement", start_step=4, end_step=5, frequency=1)

    kw = dict(save_strategy="steps", save_steps=2, max_steps=5)  # checkpoints at steps 2 and 4
    reference = pruner()
    _train(copy.deepcopy(dense), tmp_path / "ref", [reference], **kw)
    with pytest.raises(Crash):
        _train(copy.deepcopy(dense), tmp_path / "cut", [pruner(), CrashAt3()], **kw)
    assert (tmp_path / "cut" / "run" / "checkpoint-2" / "movement_scores.safetensors").is_file()
    resumed = pruner()
    _train(copy.deepcopy(dense), tmp_path / "cut", [resumed], resume=True, **kw)
    assert all(torch.equal(reference.masks[n], resumed.masks[n]) for n in reference.masks)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.0, "end_step": 2}, r"sparsity=1.0"),
        ({"sparsity": 0.3, "pattern": "2:4", "end_step": 2}, r"sparsity=0.3.*None or 0.5"),
        ({"sparsity": 0.5, "end_step": 0}, r"end_step=0"),
        ({"sparsity": 0.5, "end_step": 3, "frequency": 0}, r"frequency=0"),
        ({"sparsity": 0.5, "end_step": 3, "method": "random"}, r"method='random'.*magnitude, movement"),
        ({"sparsity": 0.5, "end_step": 3, "initial_sparsity": 0.7}, r"initial_sparsity=0.7"),
        ({"sparsity": 0.5, "end_step": 3, "pattern": "4:2"}, r"0 < N < M"),
    ],
)
def test_gradual_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradualPruningCallback(**kwargs)


def test_end_step_beyond_the_run_is_refused_before_training(dense, tmp_path):
    with pytest.raises(ValueError, match="end_step=10 exceeds the run's max_steps=2"):
        _train(dense, tmp_path, [GradualPruningCallback(0.5, end_step=10)], max_steps=2)


def test_time_budget_validation_and_stop(dense, tmp_path):
    with pytest.raises(ValueError, match="max_seconds"):
        TimeBudgetCallback(0)
    with pytest.raises(ValueError, match="clock='gpu'"):
        TimeBudgetCallback(1, clock="gpu")
    budget = TimeBudgetCallback(1e-9, clock="process")
    trainer = _train(dense, tmp_path, [budget], max_steps=5)
    assert budget.stopped_at == 1 and trainer.state.global_step == 1


def test_initial_sparsity_applies_from_step_zero(dense, tmp_path):
    pruner = GradualPruningCallback(0.5, initial_sparsity=0.2, start_step=0, end_step=2, frequency=1)
    _train(dense, tmp_path, [pruner], max_steps=2)
    assert [h[:2] for h in pruner.history] == [(0, 0.2), (1, pytest.approx(0.5 - 0.3 / 8)), (2, 0.5)]
