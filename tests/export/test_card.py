"""Model cards: metadata the Hub reads, the results table, model-index results, re-rendering."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

from hf_compress.hub import CardContext, ResultRow, create_model_card, validate_card, write_model_card
from hf_compress.release import card_context, export_card_context
from hf_compress.release_cli import card_main

PROTOCOL = {
    "source": "wikitext-2/test.txt",
    "n_windows": 64,
    "seqlen": 512,
    "stride": 512,
    "n_tokens": 32_704,
    "add_bos": False,
    "dtype": "float32",
}
LATENCY = {
    "prefill_ms": 812.0,
    "decode_tokens_per_s": 21.5,
    "prompt_tokens": 512,
    "new_tokens": 64,
    "repeats": 3,
    "device": "cpu",
    "threads": 2,
}


def export_report(backend: str = "optimum") -> dict:
    return {
        "backend": backend,
        "task": "text-generation-with-past",
        "files": {
            "fp32": {"path": "model.onnx", "bytes": 540_000_000},
            "int8": {"path": "model_quantized.onnx", "bytes": 140_000_000},
        },
        "parity": {
            "fp32": {
                "max_abs_diff": 2e-5,
                "argmax_agreement": 1.0,
                "generation": [{"equal": True}, {"equal": True}],
            },
            "int8": {
                "max_abs_diff": 0.9,
                "argmax_agreement": 0.93,
                "generation": [{"equal": True}, {"equal": False}],
            },
        },
        "evaluation": {"int8": {"ppl": 27.5, "protocol": PROTOCOL}},
        "latency": {
            "int8": LATENCY
            | {"prefill_ms": 300.0, "decode_tokens_per_s": 60.0, "device": "cpu (onnxruntime)"}
        },
        "quantization": {
            "method": "onnxruntime dynamic int8",
            "weights": "QInt8",
            "activations": "QUInt8",
            "per_channel": True,
            "arch": "avx512_vnni",
        },
        "cross_version": {
            "checked": True,
            "argmax_agreement": 1.0,
            "max_abs_diff": 1e-5,
            "checked_with": {"transformers": "4.57.6"},
            "recorded_with": {"transformers": "5.25.0"},
        },
        "source": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "fp32_bytes": 538_000_000},
        "versions": {"transformers": "5.25.0"},
        "optimum_versions": {"optimum": "2.1.0"},
    }


SOURCE = {
    "name": "smollm2-2of4",
    "ppl": 26.2,
    "weights_bytes": 538_000_000,
    "latency": LATENCY,
    "protocol": PROTOCOL,
}


def test_export_card_states_relation_results_and_model_index(tmp_path):
    ctx = export_card_context(
        export_report(),
        {
            "source_results": SOURCE,
            "repo_id": "me/smol-onnx",
            "license": "apache-2.0",
            "tags": ["pruned", "2:4"],
        },
    )
    card = create_model_card(ctx)
    (tmp_path / "README.md").write_text(str(card))
    assert validate_card(tmp_path / "README.md") == []
    data = ModelCard.load(tmp_path / "README.md").data
    assert (
        data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.base_model_relation == "quantized"
    )
    assert {"onnx", "int8", "pruned", "2:4", "hf-compress"} <= set(data.tags)
    (result,) = data.eval_results
    assert result.metric_type == "perplexity" and result.metric_value == 27.5
    text = card.text
    assert "| smollm2-2of4 (PyTorch fp32) | 26.200 | 538.0 | 812 | 21.5 |" in text.replace("  ", " ")
    assert "ONNX int8 (this model)" in text and "140.0 MB, 3.84x smaller" in text
    assert 'ORTModelForCausalLM.from_pretrained("me/smol-onnx", file_name="model_quantized.onnx")' in text
    assert "`import hf_compress` is not needed" in text
    assert "identical to PyTorch for 1/2 prompts" in text and "transformers 4.57.6" in text
    assert "- PyTorch fp32, latency: batch 1" in text and "- ONNX int8, latency: batch 1" in text


def test_transformers_backend_card_says_how_to_load(tmp_path):
    report = export_report("transformers")
    report["files"]["int8"]["path"] = "int8/model.onnx"
    text = create_model_card(export_card_context(report, {"repo_id": "me/x"})).text
    assert 'ExportedModel.from_pretrained("me/x", subfolder="int8")' in text
    assert "batch size 1" in text


def fake_state(adapter_only: bool = False):
    recipe = SimpleNamespace(
        name="smol-2of4",
        card={"license": "apache-2.0", "repo_id": "me/smol-2of4"},
        source_text="name: smol-2of4\n",
        output_dir="out",
    )
    state = SimpleNamespace(
        recipe=recipe,
        base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        tags=["pruned", "sparsity", "2:4"],
        steps=["sparsegpt pruning to 2:4."],
        model=SimpleNamespace(),
    )
    if adapter_only:
        state.adapter_only = True
    return state


def release_report() -> dict:
    return {
        "evaluation": {
            "base": {"ppl": 20.0, "protocol": PROTOCOL},
            "final": {"ppl": 26.2, "protocol": PROTOCOL},
        },
        "sparsity": {"total_decoder_sparsity": 0.5, "model_zero_fraction": 0.4, "patterns": {"2:4": True}},
        "versions": {"transformers": "5.25.0"},
        "latency": LATENCY,
    }


def test_release_card_relation_and_latency():
    ctx = card_context(fake_state(), release_report())
    assert ctx.relation == "finetune"
    assert ctx.results[-1].values["prefill (ms)"] == "812"
    assert any("prefill of 512 random tokens" in p for p in ctx.protocols)
    assert "`import hf_compress` is not needed" in ctx.load_note
    assert card_context(fake_state(adapter_only=True), release_report()).relation == "adapter"


def test_context_round_trips_through_json():
    ctx = export_card_context(export_report(), {"source_results": SOURCE})
    again = CardContext.from_dict(json.loads(json.dumps(ctx.to_dict())))
    assert str(create_model_card(again)) == str(create_model_card(ctx))


def test_card_needs_a_hub_relation_and_base_model():
    with pytest.raises(ValueError, match="relation='pruned'"):
        CardContext(model_name="m", base_model="a/b", summary="s", relation="pruned")
    with pytest.raises(ValueError, match="base_model is empty"):
        CardContext(model_name="m", base_model="", summary="s")


def test_validate_card_flags_a_local_path_as_base_model(tmp_path):
    write_model_card(CardContext(model_name="m", base_model="/tmp/models/x", summary="s"), tmp_path)
    assert any("not a Hub model id" in p for p in validate_card(tmp_path / "README.md"))
    assert validate_card(tmp_path / "missing.md")[0].startswith("no model card")


def test_cli_card_rerenders_from_the_stored_context(tmp_path, capsys):
    ctx = export_card_context(export_report(), {"source_results": SOURCE})
    report = export_report() | {"card": ctx.to_dict()}
    (tmp_path / "export_report.json").write_text(json.dumps(report))
    assert card_main([str(tmp_path), "--repo-id", "me/final", "--license", "mit"]) == 0
    text = (tmp_path / "README.md").read_text()
    assert 'from_pretrained("me/final"' in text and "license: mit" in text
    assert card_main([str(tmp_path / "nothing-here")]) == 2
    assert "no compression_report.json" in capsys.readouterr().err


def test_files_table_is_rendered():
    ctx = CardContext(
        model_name="m",
        base_model="a/b",
        summary="s",
        files=[ResultRow("model.onnx", {"size": "1.0 MB"})],
        results=[],
    )
    assert "| `model.onnx` | 1.0 MB |" in create_model_card(ctx).text
