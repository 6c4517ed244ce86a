"""Recipes and the CLI on a tiny saved model with real text: the Hub-ready folder, errors, atomicity."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from hf_compress import recipes
from hf_compress.cli import main
from hf_compress.recipes import Recipe, run_recipe
from hf_compress.sparsity import sparsity_report
from tests.tiny_models import save_tiny_causal_lm


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model")


def _recipe_dict(model, out, data):
    return {
        "name": "tiny-2of4",
        "model": str(model),
        "output_dir": str(out),
        "evaluation": {"dataset": str(data / "wikitext-2" / "test.txt"), "seqlen": 32, "max_windows": 4},
        "stages": [
            {
                "prune": {
                    "method": "sparsegpt",
                    "pattern": "2:4",
                    "dataset": "{data}/wikitext-2/valid.txt",
                    "n_samples": 4,
                    "seqlen": 32,
                    "block_size": 16,
                }
            }
        ],
        "card": {"license": "apache-2.0"},
    }


def test_recipe_writes_hub_ready_folder(tiny_folder, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("HF_COMPRESS_DATA", str(shared_data))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe_dict(tiny_folder, tmp_path / "out", shared_data)))
    out = run_recipe(Recipe.from_yaml(path), progress=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "compression_report.json",
        "recipe.yaml",
    } <= names
    report = json.loads((out / "compression_report.json").read_text())
    assert report["evaluation"]["base"]["ppl"] > 0 and report["evaluation"]["final"]["ppl"] > 0
    assert report["stages"][0]["stage"] == "prune" and report["stages"][0]["seconds"] > 0
    card = (out / "README.md").read_text()
    assert "base_model_relation: finetune" in card and "2:4" in card
    assert f"{report['evaluation']['final']['ppl']:.3f}" in card
    assert "non-overlapping windows of 32 tokens" in card
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sparsity_report(reloaded).pattern_holds("2:4")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]  # no temp folders left


def test_existing_output_is_refused_before_loading(tiny_folder, tmp_path, shared_data):
    (tmp_path / "out").mkdir()
    recipe = Recipe(**_recipe_dict(tiny_folder, tmp_path / "out", shared_data))
    with pytest.raises(FileExistsError, match="overwrite"):
        run_recipe(recipe, progress=False)


def test_failed_stage_leaves_previous_output_intact(tiny_folder, tmp_path, shared_data, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous good release")

    def explode(state, params):
        raise RuntimeError("stage failed")

    monkeypatch.setitem(recipes.STAGES, "prune", recipes.Stage(lambda p: None, explode))
    recipe = Recipe(**_recipe_dict(tiny_folder, out, shared_data) | {"overwrite": True})
    with pytest.raises(RuntimeError, match="stage failed"):
        run_recipe(recipe, progress=False)
    assert (out / "keep.txt").read_text() == "previous good release"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize(
    "change,match",
    [
        ({"stages": []}, "'stages' is empty"),
        ({"stages": [{"quantise": {}}]}, "'quantise' is unknown"),
        ({"stages": [{"prune": {"method": "sparsegpt", "sparsity": 2.0, "dataset": "x"}}]}, "sparsity=2.0"),
        ({"stages": [{"prune": {"method": "wanda", "dataset": "/no/such/file.txt"}}]}, "does not exist"),
        ({"stages": [{"prune": {"method": "wanda"}}]}, "'dataset' is required"),
        ({"dtype": "int3"}, "dtype='int3'"),
    ],
)
def test_recipe_validation(tiny_folder, tmp_path, shared_data, change, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        Recipe(**(_recipe_dict(tiny_folder, tmp_path / "o", shared_data) | change))


def test_recipe_file_unknown_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "output_dir": "o", "stages": [], "steps": []}))
    with pytest.raises(ValueError, match=r"unknown recipe key\(s\) \['steps'\]"):
        Recipe.from_yaml(path)


def test_cli_prune_and_eval(tiny_folder, tmp_path, shared_data, capsys):
    out = tmp_path / "pruned"
    code = main(
        [
            "prune",
            "--quiet",
            "--model",
            str(tiny_folder),
            "--output-dir",
            str(out),
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--dataset",
            str(shared_data / "wikitext-2" / "valid.txt"),
            "--n-samples",
            "4",
            "--seqlen",
            "32",
        ]
    )
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sparsity_report(model).total == pytest.approx(0.5, abs=0.01)
    code = main(
        [
            "eval",
            "--quiet",
            "--model",
            str(out),
            "--dataset",
            str(shared_data / "wikitext-2" / "test.txt"),
            "--seqlen",
            "32",
            "--max-windows",
            "2",
            "--output",
            str(tmp_path / "e.json"),
        ]
    )
    assert code == 0 and "perplexity" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["protocol"]["n_windows"] == 2


def test_cli_reports_bad_input_without_traceback(tiny_folder, tmp_path, capsys):
    code = main(
        [
            "prune",
            "--quiet",
            "--model",
            str(tiny_folder),
            "--output-dir",
            str(tmp_path / "o"),
            "--method",
            "wanda",
            "--sparsity",
            "1.5",
            "--dataset",
            "x.txt",
        ]
    )
    assert code == 2
    assert "sparsity=1.5 must be a number in [0, 1)" in capsys.readouterr().err


def test_cli_config_file_with_flag_override(tiny_folder, tmp_path, shared_data):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_folder),
                "output_dir": str(tmp_path / "o"),
                "method": "magnitude",
                "sparsity": 0.3,
            }
        )
    )
    assert main(["prune", "--quiet", "--config", str(cfg), "--sparsity", "0.6"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert sparsity_report(model).total == pytest.approx(0.6, abs=0.01)
    assert torch.isfinite(model(input_ids=torch.tensor([[3, 4, 5]])).logits).all()


def test_config_file_typo_is_refused(tiny_folder, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sparsty: 0.5\n")
    code = main(["prune", "--quiet", "--config", str(cfg), "--model", str(tiny_folder), "--output-dir",
                 str(tmp_path / "o"), "--dataset", "x.txt"])  # fmt: skip
    assert code == 2 and "unknown key(s) ['sparsty']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_model_folder_and_near_miss_fetch_name(tmp_path, capsys):
    for model, message in ((str(tmp_path / "no" / "such"), "no such folder"),
                           ("smollm2-136m-instruct", "did you mean 'smollm2-135m-instruct'")):  # fmt: skip
        code = main(["eval", "--model", model, "--dataset", "x.txt"])
        assert code == 2 and message in capsys.readouterr().err


def test_recipe_stage_typo_is_refused(tiny_folder, tmp_path, shared_data):
    from hf_compress.recipes import Recipe, run_recipe

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['datset'\]"):
        recipe = Recipe(name="r", model=str(tiny_folder), output_dir=str(tmp_path / "o"),
                        stages=[{"prune": {"method": "wanda", "datset": "x.txt"}}])  # fmt: skip
        run_recipe(recipe, progress=False)
    assert not (tmp_path / "o").exists()



def test_card_says_so_when_nothing_was_measured(tiny_folder, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("HF_COMPRESS_DATA", str(shared_data))
    recipe = _recipe_dict(tiny_folder, tmp_path / "out", shared_data)
    del recipe["evaluation"]
    card = (run_recipe(Recipe(**recipe), progress=False) / "README.md").read_text()
    results = card.split("## Results", 1)[1].split("##", 1)[0]
    assert "No quality was measured" in results and "hf-compress eval" in results

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in SHIPPED if "accelerate_configs" not in p.parts], ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = Recipe.from_yaml(path)  # every stage's checks run here, before any model is loaded
    assert recipe.stages and recipe.output_dir
