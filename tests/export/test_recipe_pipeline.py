"""prune → quantize → export as one recipe on a tiny model: the PyTorch release and its ONNX int8 sibling."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from hf_compress import recipes
from hf_compress.hub import validate_card
from hf_compress.stages_export import run_export, run_quantize, validate_export, validate_quantize

pytestmark = pytest.mark.optimum


@pytest.fixture
def wired(monkeypatch):
    """The stages as recipes.py wires them (done here so this test does not depend on that wiring)."""
    monkeypatch.setitem(recipes.STAGES, "quantize", recipes.Stage(validate_quantize, run_quantize))
    monkeypatch.setitem(recipes.STAGES, "export", recipes.Stage(validate_export, run_export))


def test_prune_quantize_export_recipe(wired, optimum_python, tiny_ckpt, tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    recipe = recipes.Recipe(
        name="tiny-2of4",
        model=str(tiny_ckpt),
        output_dir=str(tmp_path / "tiny-2of4"),
        evaluation={"dataset": str(text), "seqlen": 32, "max_windows": 2},
        stages=[
            {"prune": {"method": "magnitude", "pattern": "2:4"}},
            {"quantize": {"method": "ort-dynamic-int8"}},
            {
                "export": {
                    "backend": "optimum",
                    "latency": {"prompt_tokens": 16, "new_tokens": 4, "repeats": 1},
                    "card": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                }
            },
        ],
        card={"repo_id": "me/tiny-2of4", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    )
    release = recipes.run_recipe(recipe, progress=False)
    onnx_dir = tmp_path / "tiny-2of4-onnx"
    report = json.loads((release / "compression_report.json").read_text())
    (export,) = report["exports"]
    assert export["path"] == str(onnx_dir) and set(export["files"]) == {"fp32", "int8"}
    assert export["perplexity"]["int8"] > 1 and export["max_abs_diff"]["fp32"] < 1e-4
    assert "ONNX export" in (release / "README.md").read_text()
    onnx_report = json.loads((onnx_dir / "export_report.json").read_text())
    assert onnx_report["source_report"]["recipe"] == "tiny-2of4"
    card = (onnx_dir / "README.md").read_text()
    assert "tiny-2of4 (PyTorch fp32)" in card and "base_model_relation: quantized" in card
    assert {"pruned", "2:4", "onnx", "int8"} <= set(ModelCard.load(onnx_dir / "README.md").data.tags)
    assert validate_card(onnx_dir / "README.md") == [] and validate_card(release / "README.md") == []
    # the ONNX perplexity uses the recipe's protocol, the PyTorch one is in the same card
    final = report["evaluation"]["final"]["protocol"]
    assert onnx_report["evaluation"]["int8"]["protocol"]["n_tokens"] == final["n_tokens"]
