"""transformers.exporters (transformers >= 5.20): the path for shapes Optimum cannot handle.

One export of a tiny Llama whose block 0 keeps 1 of 3 KV heads (per-layer KV heads, which Optimum
refuses): fp32 and int8 graphs, parity, generation, and both folders load with ``ExportedModel``.
Slow (a ``torch.export`` trace, ~30-90 s on 2 busy cores).
"""

from __future__ import annotations

import pytest
from test_backend_choice import per_layer_kv_model
from tiny_models import tiny_tokenizer

from hf_compress.export_transformers import transformers_exporter_problem

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        transformers_exporter_problem() is not None,
        reason=f"transformers.exporters unavailable here: {transformers_exporter_problem()}",
    ),
]


def test_per_layer_kv_heads_export_with_transformers(tmp_path):
    from transformers.exporters import ExportedModel

    from hf_compress.export import export_onnx
    from hf_compress.onnx_session import OnnxCausalLM

    tokenizer = tiny_tokenizer()
    model = per_layer_kv_model()
    model.resize_token_embeddings(len(tokenizer))
    result = export_onnx(
        model,
        tmp_path / "out",
        tokenizer=tokenizer,
        generate_tokens=4,
        card={"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    )
    report = result.report
    assert report["backend"] == "transformers"  # auto: Optimum cannot handle these shapes
    assert report["parity"]["fp32"]["max_abs_diff"] < 1e-4
    assert all(g["equal"] for g in report["parity"]["fp32"]["generation"])
    assert report["parity"]["int8"]["max_abs_diff"] < 1.0
    lm = OnnxCausalLM(result.graph("fp32"))
    assert [s.heads for s in lm.slots[:2]] == [1, 1] and lm.slots[2].heads == 3
    for sub in ("", "int8"):
        exported = ExportedModel.from_pretrained(result.path / sub if sub else result.path)
        assert list(exported.components) == ["model"]
    assert "quantization_config" not in (result.path / "config.json").read_text()
