"""Recipe stages quantize / export: validation before any model loads, and the deferred export."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hf_compress.stages_export import (
    check_stage_order,
    run_export,
    run_quantize,
    validate_export,
    validate_quantize,
)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"method": "gptq"}, "method='gptq'"),
        ({"arch": "sparc"}, "arch='sparc'"),
        ({"per_channel": "yes"}, "per_channel='yes'"),
        ({"bits": 4}, r"unknown setting\(s\) \['bits'\]"),
        ({"fp32_layers": ["("]}, "quantize: fp32_layers"),
    ],
)
def test_quantize_settings(params, match):
    with pytest.raises(ValueError, match=match):
        validate_quantize(params)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"backend": "tflite"}, "export: backend='tflite'"),
        ({"evaluate": "yes"}, "evaluate='yes'"),
        ({"latency": 3}, "latency=3"),
        ({"card": "x"}, "card='x'"),
        ({"format": "gguf"}, r"unknown setting\(s\) \['format'\]"),
    ],
)
def test_export_settings(params, match):
    with pytest.raises(ValueError, match=match):
        validate_export(params)


def test_good_settings_pass():
    validate_quantize({"method": "ort-dynamic-int8", "arch": "avx2", "per_channel": False})
    validate_export({"backend": "optimum", "keep_fp32": False, "evaluate": True, "latency": True, "card": {}})


def test_stage_order():
    check_stage_order([{"prune": {}}, {"quantize": {}}, {"export": {}}])
    check_stage_order([{"export": {}}])
    with pytest.raises(ValueError, match="no `export` stage after it"):
        check_stage_order([{"prune": {}}, {"quantize": {}}])
    with pytest.raises(ValueError, match="second `quantize`"):
        check_stage_order([{"quantize": {}}, {"quantize": {}}, {"export": {}}])


def state_for(stages, tmp_path, overwrite=False):
    recipe = SimpleNamespace(stages=stages, output_dir=str(tmp_path / "release"), overwrite=overwrite)
    return SimpleNamespace(recipe=recipe, stages=[])


def test_quantize_then_export_queues_an_int8_export(tmp_path):
    stages = [{"quantize": {"arch": "avx2"}}, {"export": {"latency": True}}]
    state = state_for(stages, tmp_path)
    run_quantize(state, {"arch": "avx2", "progress": False})
    run_export(state, {"latency": True, "progress": False})
    queued = state.stages[-1]
    assert queued["pending"] and queued["output_dir"] == str(tmp_path / "release") + "-onnx"
    assert queued["quantization"] == {
        "method": "ort-dynamic-int8",
        "arch": "avx2",
        "per_channel": True,
        "fp32_layers": [],
    }
    assert state.stages[0]["applies_to"] == "the ONNX export"


def test_quantize_without_export_fails_at_once(tmp_path):
    state = state_for([{"quantize": {}}], tmp_path)
    with pytest.raises(ValueError, match="no `export` stage follows it"):
        run_quantize(state, {})


def test_export_refuses_an_existing_folder_before_the_release(tmp_path):
    (tmp_path / "taken").mkdir()
    state = state_for([{"export": {}}], tmp_path)
    with pytest.raises(FileExistsError):
        run_export(state, {"output_dir": str(tmp_path / "taken")})
