"""Export settings, task detection and backend choice: clear errors before any export work."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_models import tiny_bert, tiny_llama
from transformers import LlamaConfig, LlamaForCausalLM

from hf_compress import export as export_mod
from hf_compress.export import (
    ExportConfig,
    UnsupportedExportError,
    choose_backend,
    detect_task,
    export_onnx,
    optimum_shape_problem,
)
from hf_compress.export_optimum import OptimumUnavailableError, cpu_arch


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("backend", "tensorrt", "backend='tensorrt'"),
        ("quantize", "int4", "quantize='int4'"),
        ("task", "fill-mask", "task='fill-mask'"),
        ("arch", "x86", "arch='x86'"),
        ("opset", 9, "opset=9"),
        ("parity_atol", 0, "parity_atol=0"),
        ("generate_tokens", -1, "generate_tokens=-1"),
    ],
)
def test_bad_settings_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        ExportConfig(**{field: value})


def test_fp32_only_must_keep_fp32():
    with pytest.raises(ValueError, match="keep_fp32=False needs quantize='int8'"):
        ExportConfig(quantize=None, keep_fp32=False)


def test_missing_optimum_python_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="optimum_python"):
        ExportConfig(optimum_python=str(tmp_path / "python"))


def test_task_detection():
    assert detect_task(tiny_llama()) == "text-generation-with-past"
    assert detect_task(tiny_bert()) == "text-classification"
    with pytest.raises(UnsupportedExportError, match="neither a causal LM nor a sequence classifier"):
        detect_task(tiny_bert().bert)


def test_uniform_model_has_no_shape_problem():
    assert optimum_shape_problem(tiny_llama()) is None


def explicit_head_dim_model() -> LlamaForCausalLM:
    """Heads pruned uniformly with an explicit head_dim: 6 heads of 8 in a 72-wide model (72 // 6 = 12)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=72,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def per_layer_kv_model() -> LlamaForCausalLM:
    """Block 0 keeps 1 of 3 KV heads (what structured pruning makes): k/v of 8 instead of 24 features."""
    model = tiny_llama()
    attn = model.model.layers[0].self_attn
    for name in ("k_proj", "v_proj"):
        old = getattr(attn, name)
        new = torch.nn.Linear(old.in_features, 8, bias=False)
        new.weight.data.copy_(old.weight.data[:8])
        setattr(attn, name, new)
    attn.num_key_value_groups = 9
    return model


def test_explicit_head_dim_is_refused_by_optimum_with_the_alternative(monkeypatch):
    monkeypatch.setattr(export_mod, "optimum_interpreter", lambda config: "in-process")
    with pytest.raises(UnsupportedExportError) as err:
        choose_backend(ExportConfig(backend="optimum"), explicit_head_dim_model())
    assert "head_dim=8" in str(err.value) and "backend='transformers'" in str(err.value)


def test_per_layer_kv_heads_are_refused_by_optimum_with_the_alternative(monkeypatch):
    monkeypatch.setattr(export_mod, "optimum_interpreter", lambda config: "in-process")
    model = per_layer_kv_model()
    assert "0:k_proj" in optimum_shape_problem(model)
    with pytest.raises(UnsupportedExportError, match="per-layer KV heads.*backend='transformers'"):
        choose_backend(ExportConfig(backend="optimum"), model)


def test_auto_falls_back_to_transformers_for_shapes_optimum_cannot_handle(monkeypatch, caplog):
    monkeypatch.setattr(export_mod, "optimum_interpreter", lambda config: "in-process")
    monkeypatch.setattr("hf_compress.export_transformers.transformers_exporter_problem", lambda: None)
    with caplog.at_level(logging.WARNING, logger="hf_compress.export"):
        assert choose_backend(ExportConfig(), per_layer_kv_model()) == ("transformers", None)
    assert "Optimum cannot export this model" in caplog.text


def test_auto_prefers_optimum_when_it_can_run(monkeypatch):
    monkeypatch.setattr(export_mod, "optimum_interpreter", lambda config: "/opt/venv/bin/python")
    assert choose_backend(ExportConfig(), tiny_llama()) == ("optimum", "/opt/venv/bin/python")


def test_no_exporter_at_all_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(export_mod, "optimum_interpreter", lambda config: None)
    monkeypatch.setattr(
        "hf_compress.export_transformers.transformers_exporter_problem",
        lambda: "transformers 4.57.6 has none",
    )
    with pytest.raises(OptimumUnavailableError, match="setup_optimum_venv.sh.*HF_COMPRESS_OPTIMUM_PYTHON"):
        choose_backend(ExportConfig(), tiny_llama())
    with pytest.raises(UnsupportedExportError, match="transformers 4.57.6 has none"):
        choose_backend(ExportConfig(backend="transformers"), tiny_llama())


def test_explicit_optimum_without_its_environment(monkeypatch):
    monkeypatch.setattr(export_mod, "optimum_interpreter", lambda config: None)
    with pytest.raises(OptimumUnavailableError, match="transformers<4.58"):
        choose_backend(ExportConfig(backend="optimum"), tiny_llama())


def test_interpreter_lookup_order(monkeypatch, tmp_path):
    monkeypatch.setattr("hf_compress.export.optimum_problem", lambda: "not here")
    monkeypatch.setattr(export_mod, "_package_root", lambda: tmp_path)
    monkeypatch.delenv(export_mod.OPTIMUM_PYTHON_ENV, raising=False)
    assert export_mod.optimum_interpreter(ExportConfig()) is None
    env_python = tmp_path / "env-python"
    env_python.write_text("")
    monkeypatch.setenv(export_mod.OPTIMUM_PYTHON_ENV, str(env_python))
    assert export_mod.optimum_interpreter(ExportConfig()) == str(env_python)
    given = tmp_path / "given-python"
    given.write_text("")
    assert export_mod.optimum_interpreter(ExportConfig(optimum_python=str(given))) == str(given)


def test_existing_output_is_refused_before_loading(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(str(tmp_path / "missing-model"), tmp_path / "out")


def test_in_memory_model_needs_its_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="tokenizer=None"):
        export_onnx(tiny_llama(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cpu_arch_is_a_known_constructor():
    assert cpu_arch() in ("arm64", "avx512_vnni", "avx512", "avx2")


def test_fp32_layers_must_be_regexes():
    assert ExportConfig(fp32_layers="down_proj").fp32_layers == ["down_proj"]
    with pytest.raises(ValueError, match="fp32_layers: '\\(' is not a regular expression"):
        ExportConfig(fp32_layers=["("])


def test_only_weight_matmuls_are_quantized(tmp_path):
    """Activation x activation MatMuls (attention scores, RoPE angles) are excluded from int8."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from hf_compress.export_optimum import activation_matmuls, matmuls_matching

    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="/layers.0/mlp/down_proj/MatMul"),
        helper.make_node("Transpose", ["W"], ["Wt"], name="t"),
        helper.make_node("MatMul", ["h", "Wt"], ["y"], name="/lm_head/MatMul"),
        helper.make_node("Transpose", ["h"], ["ht"], name="t2"),
        helper.make_node("MatMul", ["h", "ht"], ["scores"], name="/layers.0/self_attn/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "scores")],
        [numpy_helper.from_array(np.ones((3, 3), dtype=np.float32), "W")],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    assert activation_matmuls(tmp_path / "g.onnx") == ["/layers.0/self_attn/MatMul"]
    assert matmuls_matching(tmp_path / "g.onnx", ("down_proj",)) == ["/layers.0/mlp/down_proj/MatMul"]
    assert matmuls_matching(tmp_path / "g.onnx", ()) == []
    with pytest.raises(ValueError, match=r"fp32_layers \['up_proj'\] match no MatMul node"):
        matmuls_matching(tmp_path / "g.onnx", ("up_proj",))


def test_fp32_layers_also_match_the_module_path_of_torch_exported_nodes():
    """torch.onnx names nodes ``node_linear_N`` and keeps the module path in ``namespace`` metadata."""
    from onnx import helper

    from hf_compress.onnx_nodes import matmuls_named

    def node(name, namespace):
        made = helper.make_node("MatMul", ["a", "b"], ["c"], name=name)
        entry = made.metadata_props.add()
        entry.key, entry.value = "namespace", namespace
        return made

    nodes = [node("node_linear_4", "model.layers.0.mlp: LlamaMLP/model.layers.0.mlp.down_proj: Linear"),
             node("node_linear_5", "model.layers.0.mlp: LlamaMLP/model.layers.0.mlp.up_proj: Linear")]  # fmt: skip
    assert matmuls_named(nodes, ("down_proj",)) == ["node_linear_4"]
    assert matmuls_named(nodes, ("node_linear_5$",)) == ["node_linear_5"]
