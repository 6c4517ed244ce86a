"""StructuredConfig validation and the recipe stage."""

from __future__ import annotations

import pytest

from hf_compress.recipes import Recipe, RunState
from hf_compress.stages_structured import run_prune_structured, validate_prune_structured
from hf_compress.structured import StructuredConfig
from tests.tiny_models import random_tokens, tiny_llama


def test_defaults_and_normalisation():
    config = StructuredConfig(sparsity=0.25)
    assert config.targets == ["heads", "ffn"] and config.importance == "taylor" and config.needs_calibration
    assert StructuredConfig(targets="ffn, layers", sparsity=0.2).targets == ["ffn", "layers"]
    assert StructuredConfig(keep_ffn=64, keep_layers=3).targets == ["ffn", "layers"]
    assert "dataset" not in StructuredConfig(sparsity=0.1, dataset="x").to_dict()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "give sparsity="),
        (dict(sparsity=1.0), "sparsity=1.0 must be a fraction"),
        (dict(sparsity=0.0), "sparsity=0.0 must be a fraction"),
        (dict(sparsity=0.2, keep_ffn=8), "not both"),
        (dict(sparsity=0.2, targets=["ffn", "neurons"]), r"\['neurons'\] unknown"),
        (dict(sparsity=0.2, targets=[]), "non-empty list"),
        (dict(sparsity=0.2, importance="fisher"), "importance='fisher' is not one of"),
        (dict(keep_heads=0), "keep_heads=0 must be an integer >= 1"),
        (dict(keep_ffn=[8, -1]), r"keep_ffn=\[8, -1\] must be"),
        (dict(keep_hidden=[8, 8]), "keep_hidden=.* must be an integer >= 1$"),
        (dict(keep_heads=6, keep_kv_heads=4), "breaks the GQA ratio"),
        (dict(keep_ffn=8, targets="heads"), "disagree with the explicit dims"),
        (dict(keep_ffn=8, uniform=False), "uniform=False spreads a sparsity budget"),
        (dict(sparsity=0.2, round_to=0), "round_to=0 must be an integer >= 1"),
        (dict(sparsity=0.2, n_samples=0), "n_samples=0"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredConfig(**kwargs)


def test_stage_validates_and_runs(tmp_path):
    validate_prune_structured({"targets": "ffn", "sparsity": 0.25, "importance": "magnitude_l1"})
    with pytest.raises(ValueError, match="unknown setting"):
        validate_prune_structured({"sparsity": 0.25, "method": "wanda"})
    with pytest.raises(ValueError, match="'dataset' is required"):
        validate_prune_structured({"sparsity": 0.25, "importance": "activation"})
    with pytest.raises(FileNotFoundError):
        validate_prune_structured(
            {"sparsity": 0.25, "importance": "taylor", "dataset": str(tmp_path / "no.txt")}
        )
    recipe = Recipe(
        name="r", model="m", output_dir=str(tmp_path / "out"), stages=[{"prune": {"method": "magnitude"}}]
    )
    state = RunState(tiny_llama(), None, recipe, "m")
    run_prune_structured(
        state,
        {
            "targets": "heads,ffn",
            "sparsity": 0.25,
            "importance": "activation",
            "dataset": random_tokens(4, 16),
            "n_samples": 4,
            "seqlen": 16,
            "progress": False,
        },
    )
    stage = state.stages[-1]
    assert stage["stage"] == "prune_structured" and 0.2 < stage["report"]["removed_decoder_fraction"] < 0.3
    assert "structured-pruning" in state.tags and "decoder parameters removed" in state.steps[-1]
