"""The ``distill`` recipe stage: prune -> distil from the base model, sparsity kept, recorded in report and card."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_compress as hfc
from hf_compress import recipes
from hf_compress.recipes import Recipe, run_recipe
from hf_compress.sparsity import sparsity_report
from hf_compress.stages_distill import DISTILL_STAGE, validate_distill
from tests.tiny_models import save_tiny_causal_lm

TRAIN = {"max_steps": 2, "warmup_steps": 0, "seqlen": 32, "per_device_train_batch_size": 2, "logging_steps": 1, "max_windows": 8}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(recipes.STAGES, "distill", DISTILL_STAGE)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("distill-stage") / "dense")


def _recipe(dense, out, valid, **distill) -> Recipe:
    return Recipe(
        name="tiny-distill", model=str(dense), output_dir=str(out),
        stages=[{"prune": {"method": "magnitude", "pattern": "2:4"}},
                {"distill": {"teacher": "base", "dataset": valid, **TRAIN, **distill}}],
    )  # fmt: skip


def _magnitude_24(dense):
    model = AutoModelForCausalLM.from_pretrained(dense)
    return hfc.prune(model, hfc.PrunerConfig(method="magnitude", pattern="2:4"), progress=False)


def test_prune_then_distill_trains_every_kept_weight_and_keeps_the_zeros(dense, shared_data, tmp_path):
    valid = str(shared_data / "wikitext-2" / "valid.txt")
    out = run_recipe(_recipe(dense, tmp_path / "out", valid, loss="jsd", alpha=0.5, learning_rate=1e-2), progress=False)
    student, pruned = AutoModelForCausalLM.from_pretrained(out), _magnitude_24(dense)
    assert sparsity_report(student).pattern_holds("2:4")
    weights = dict(pruned.named_parameters())
    for name, param in student.named_parameters():
        if name.startswith("model.layers.") and param.dim() == 2:
            assert torch.equal(param == 0, weights[name] == 0), name  # the same zeros, position for position
            assert not torch.equal(param, weights[name]), name  # and the kept weights trained
    report = json.loads((out / "compression_report.json").read_text())
    stage = report["stages"][-1]
    assert stage["stage"] == "distill" and stage["teacher"] == "base"
    assert stage["report"]["steps"] == 2 and stage["report"]["loss"] == "jsd"
    assert stage["report"]["masked_sparsity_kept"] == pytest.approx(0.5)
    card = (out / "README.md").read_text()
    assert "Knowledge distillation from base (jsd" in card and "knowledge-distillation" in card


def test_without_keep_masks_the_zeros_fill_in(dense, shared_data, tmp_path):
    valid = str(shared_data / "wikitext-2" / "valid.txt")
    recipe = _recipe(dense, tmp_path / "out", valid, keep_masks=False, learning_rate=1e-2)
    student = AutoModelForCausalLM.from_pretrained(run_recipe(recipe, progress=False))
    assert not sparsity_report(student).pattern_holds("2:4")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"dataset": "{data}/wikitext-2/valid.txt"}, "'teacher' is required"),
        ({"teacher": "base"}, "'dataset' is required"),
        ({"teacher": "base", "dataset": "/nope/missing.txt"}, "does not exist"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "lora_rank": 8}, r"unknown key\(s\) \['lora_rank'\]"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "output_dir": "x"}, "use 'checkpoint_dir'"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "loss": "l2"}, "DistillationConfig.loss='l2'"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "seqlen": 1}, "seqlen=1"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "keep_masks": "yes"}, "keep_masks='yes'"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "temperature": "hot"}, "temperature='hot'.*a number"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "max_length": 256}, "use 'seqlen'"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "max_steps": 0}, "max_steps=0"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "learning_rate": "fast"}, "learning_rate='fast'"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "per_device_train_batch_size": 0}, "batch_size=0"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "max_windows": -1}, "max_windows=-1"),
        ({"teacher": "base", "dataset": "{data}/wikitext-2/valid.txt", "resume": "maybe"}, "resume='maybe'"),
        ({"teacher": 5, "dataset": "{data}/wikitext-2/valid.txt"}, "teacher=5"),
        ({"teacher": "/nope/model", "dataset": "{data}/wikitext-2/valid.txt"}, "teacher folder '/nope/model'"),
    ],
)
def test_stage_validation_before_loading(params, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        validate_distill(recipes.expand_placeholders(params))


def test_a_stage_that_is_not_a_mapping_is_refused(dense, tmp_path):
    with pytest.raises(ValueError, match="'distill' must map to a mapping of settings"):
        Recipe(name="x", model=str(dense), output_dir=str(tmp_path / "o"), stages=[{"distill": "base"}])
