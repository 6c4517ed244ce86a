"""The ``recover`` recipe stage and ``hf-compress recover`` (merged release and adapter release)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_compress import recipes
from hf_compress.recipes import Recipe, run_recipe
from hf_compress.recover_cli import recover_main
from hf_compress.sparsity import sparsity_report
from hf_compress.stages_recover import RECOVER_STAGE, validate_recover
from tests.recover.recover_utils import prune_24
from tests.tiny_models import save_tiny_causal_lm

RECOVER = {"max_steps": 2, "seqlen": 32, "batch_size": 2, "logging_steps": 1}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(recipes.STAGES, "recover", RECOVER_STAGE)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("recover-cli")
    dense = save_tiny_causal_lm(root / "dense")
    model = AutoModelForCausalLM.from_pretrained(dense)
    prune_24(model).save_pretrained(root / "pruned")
    AutoTokenizer.from_pretrained(dense).save_pretrained(root / "pruned")
    return dense, root / "pruned"


def test_recipe_prune_then_kd_recover_from_base(folders, shared_data, tmp_path):
    dense, _ = folders
    valid = str(shared_data / "wikitext-2" / "valid.txt")
    recipe = Recipe(
        name="tiny-recover", model=str(dense), output_dir=str(tmp_path / "out"),
        stages=[{"prune": {"method": "magnitude", "pattern": "2:4"}},
                {"recover": {"loss": "kd", "teacher": "base", "dataset": valid, "max_windows": 8, **RECOVER}}],
    )  # fmt: skip
    out = run_recipe(recipe, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sparsity_report(model).pattern_holds("2:4")
    report = json.loads((out / "compression_report.json").read_text())
    stage = report["stages"][-1]
    assert (
        stage["stage"] == "recover" and stage["report"]["zeros_lost"] == 0 and stage["report"]["steps"] == 2
    )
    card = (out / "README.md").read_text()
    assert "LoRA recovery" in card and "knowledge-distillation" in card


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"loss": "kd", "dataset": "x.txt"}, "needs 'teacher'"),
        ({"merge": False, "dataset": "{data}/wikitext-2/valid.txt"}, "merge=false keeps an adapter"),
        ({"rank": -1, "dataset": "x.txt"}, "rank=-1"),
        ({"max_steps": 2}, "'dataset' is required"),
        ({"dataset": "/nope/missing.txt"}, "does not exist"),
    ],
)
def test_stage_validation_before_loading(params, match):
    params = recipes.expand_placeholders(params)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        validate_recover(params)


def test_cli_merged_release_keeps_zeros(folders, shared_data, tmp_path):
    _, pruned = folders
    before = {n: p == 0 for n, p in AutoModelForCausalLM.from_pretrained(pruned).named_parameters()}
    out = tmp_path / "merged"
    argv = ["--model", str(pruned), "--dataset", str(shared_data / "wikitext-2" / "valid.txt"), "--output-dir", str(out),
            "--max-steps", "2", "--seqlen", "32", "--batch-size", "2", "--max-windows", "8", "--quiet"]  # fmt: skip
    assert recover_main(argv) == 0
    after = {n: p == 0 for n, p in AutoModelForCausalLM.from_pretrained(out).named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_cli_adapter_release(folders, shared_data, tmp_path):
    from peft import PeftModel

    _, pruned = folders
    out = tmp_path / "adapter"
    argv = ["--model", str(pruned), "--dataset", str(shared_data / "wikitext-2" / "valid.txt"), "--output-dir", str(out),
            "--no-merge", "--max-steps", "2", "--seqlen", "32", "--max-windows", "8", "--rank", "4", "--quiet"]  # fmt: skip
    assert recover_main(argv) == 0
    assert (out / "adapter_config.json").is_file() and (out / "recovery_report.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(pruned)
    model = PeftModel.from_pretrained(base, str(out))
    assert model.peft_config["default"].r == 4
    report = json.loads((out / "recovery_report.json").read_text())
    assert report["recovery"]["steps"] == 2 and not report["recovery"]["masked_update"]


def test_cli_bad_input_exits_2_before_training(folders, shared_data, tmp_path, capsys):
    _, pruned = folders
    base = ["--model", str(pruned), "--output-dir", str(tmp_path / "o"), "--quiet"]
    valid = str(shared_data / "wikitext-2" / "valid.txt")
    assert recover_main(base + ["--dataset", valid, "--targets", "nothing_like_this"]) == 2
    assert "match no linear layer" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert recover_main(base + ["--dataset", str(empty)]) == 2
    assert "no usable text" in capsys.readouterr().err
    assert recover_main(base + ["--dataset", valid, "--loss", "kd"]) == 2
    assert "needs 'teacher'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
