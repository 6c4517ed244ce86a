"""Optimum's ONNX export through the [optimum] environment (transformers 4.57), end to end on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_compress.export import ExportParityError, export_onnx
from hf_compress.export_optimum import optimum_problem
from hf_compress.hub import validate_card
from hf_compress.onnx_session import OnnxCausalLM

pytestmark = pytest.mark.optimum
IN_OPTIMUM_ENV = optimum_problem() is None  # running inside the [optimum] env itself
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def exported(optimum_python, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    return export_onnx(
        str(tiny_ckpt),
        out,
        backend="optimum",
        card={"base_model": BASE, "repo_id": "me/tiny-onnx"},
        latency={"prompt_tokens": 16, "new_tokens": 4, "repeats": 1},
    )


def test_export_writes_both_graphs_and_checks_them(exported):
    report = exported.report
    assert report["backend"] == "optimum" and set(report["files"]) == {"fp32", "int8"}
    assert (
        exported.graph("fp32").name == "model.onnx" and exported.graph("int8").name == "model_quantized.onnx"
    )
    assert report["files"]["int8"]["bytes"] < report["files"]["fp32"]["bytes"]
    assert report["parity"]["fp32"]["max_abs_diff"] < 1e-4
    assert all(g["equal"] for g in report["parity"]["fp32"]["generation"])
    assert 0 < report["parity"]["int8"]["max_abs_diff"] < 1.0
    assert report["quantization"]["weights"] == "QInt8"


def test_the_checkpoint_was_proven_identical_under_transformers_457(exported):
    cross = exported.report["cross_version"]
    assert cross["checked"] and cross["ok"] and cross["ids_equal"]
    assert cross["checked_with"]["transformers"].startswith("4.57")
    if not IN_OPTIMUM_ENV:  # from the main environment the reference was recorded under 5.x
        assert cross["recorded_with"]["transformers"].startswith("5.")


def test_optimum_generates_like_pytorch_in_its_own_environment(exported):
    checks = exported.report["optimum_checks"]["fp32"]
    assert checks["max_abs_diff"] < 1e-4 and all(g["equal"] for g in checks["generation"])


def test_folder_is_hub_ready(exported):
    folder = exported.path
    assert validate_card(folder / "README.md") == []
    assert json.loads((folder / "export_report.json").read_text())["card"]["relation"] == "quantized"
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temp folders left behind
    lm = OnnxCausalLM(folder / "model_quantized.onnx")
    assert lm.generate([[5, 6, 7]], 3).shape == (1, 6)
    assert exported.report["latency"]["int8"]["prompt_tokens"] == 16


def test_failed_export_keeps_the_previous_folder(exported, tiny_ckpt):
    before = sorted(p.name for p in exported.path.iterdir())
    with pytest.raises(ExportParityError, match="parity_atol"):
        export_onnx(
            str(tiny_ckpt),
            exported.path,
            backend="optimum",
            overwrite=True,
            parity_atol=1e-12,
            quantize=None,
            card={"base_model": BASE},
        )
    assert sorted(p.name for p in exported.path.iterdir()) == before
    assert not any(p.name.startswith(".") for p in exported.path.parent.iterdir())


def test_sequence_classifier_export(optimum_python, tiny_classifier, tmp_path):
    result = export_onnx(str(tiny_classifier), tmp_path / "cls", backend="optimum", card={"base_model": BASE})
    assert result.report["task"] == "text-classification"
    assert result.report["parity"]["fp32"]["max_abs_diff"] < 1e-4
    assert result.report["parity"]["int8"]["label_agreement"] >= 0.5


@pytest.mark.skipif(
    IN_OPTIMUM_ENV, reason="needs a checkpoint written by transformers 5.x (runs from the main env)"
)
def test_a_checkpoint_457_reads_differently_is_refused(optimum_python, tiny_ckpt, tmp_path):
    """A 5.x config without top-level rope_theta: 4.57 silently uses RoPE base 1e4 — the check must stop it."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_compress.portable import save_tokenizer_portable
    from hf_compress.reference_logits import write_reference

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config.pop("rope_theta", None)
    assert config["rope_parameters"]["rope_theta"] == 100000.0
    (ckpt / "config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    save_tokenizer_portable(tokenizer, ckpt)
    write_reference(AutoModelForCausalLM.from_pretrained(ckpt), tokenizer, ckpt)
    out = tmp_path / "out"
    out.mkdir()
    python = sys.executable if optimum_python == "in-process" else optimum_python
    proc = subprocess.run(
        [
            python,
            "-m",
            "hf_compress.export_optimum",
            str(ckpt),
            str(out),
            "--report",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "ReferenceMismatchError" in proc.stderr and "does not load as the same model" in proc.stderr
    assert not (out / "model.onnx").exists()
