"""from_pretrained(quantization_config=PrunerConfig(...)) -> save_pretrained -> from_pretrained: same model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.quantizers import auto

import hf_compress
from hf_compress.compact import block_linears
from hf_compress.integrations.transformers import (
    MARKER,
    MARKER_KEY,
    QUANT_METHOD,
    HfCompressConfig,
    HfCompressQuantizer,
    attach_quantizer,
    register,
)
from hf_compress.models import surgery
from hf_compress.sparsity import sparsity_report
from tests.tiny_models import TOKENIZER_CORPUS, random_tokens, tiny_llama

PATTERNS = [("unstructured", 0.5), ("2:4", None)]


def prune_at_load(path, dtype=torch.float32, **kw):
    kw.setdefault("method", "magnitude")
    config = hf_compress.PrunerConfig(**kw)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=dtype)


def assert_same_model(a, b):
    x = random_tokens(2, 12)
    with torch.no_grad():
        assert (a(x).logits - b(x).logits).abs().max().item() == 0.0
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def block_bytes(path):
    """Bytes of the decoder-block projections in a saved folder (compact or dense), and of the whole file."""
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        inside = sum(
            f.get_tensor(k).numel() * f.get_tensor(k).element_size()
            for k in names
            if ".layers." in k or ".h." in k
        )
    return inside, (path / "model.safetensors").stat().st_size


def test_register_is_idempotent():
    register()
    register()
    assert auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] is HfCompressQuantizer
    assert auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] is HfCompressConfig


def test_config_round_trip_and_errors():
    pruner = hf_compress.PrunerConfig(method="magnitude", pattern="2:4", sparsity=None, dataset=["x"])
    config = HfCompressConfig.from_pruner(pruner)
    data = config.to_dict()
    assert data["quant_method"] == QUANT_METHOD and data["pruning"] == pruner.to_dict()
    assert "pruner" not in data and json.dumps(data)
    again = HfCompressConfig.from_dict(data)
    assert again.to_dict() == data and again.pruner is None
    with pytest.raises(ValueError, match="unknown hf_compress field"):
        HfCompressConfig.from_dict({**data, "codec": "zstd"})
    with pytest.raises(ValueError, match="newer hf-compress"):
        HfCompressConfig.from_dict({**data, "format_version": 99})
    with pytest.raises(ValueError, match="not a storage format"):
        HfCompressConfig(modules={"model.layers.0.mlp.up_proj": "zip"})
    with pytest.raises(ValueError, match="compact="):
        HfCompressConfig(compact="yes")


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
def test_prune_save_reload_is_exact(tiny_dir, tmp_path, family, pattern, sparsity):
    model = prune_at_load(tiny_dir[family], pattern=pattern, sparsity=sparsity)
    assert model.is_quantized and model.hf_quantizer.is_qat_trainable
    report = sparsity_report(model)
    assert report.total == pytest.approx(0.5, abs=0.01)
    assert pattern == "unstructured" or report.pattern_holds("2:4")
    model.save_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    qc = record["quantization_config"]
    assert qc["quant_method"] == QUANT_METHOD and qc["pruning"]["method"] == "magnitude"
    assert qc["sparsity"] == pytest.approx(report.total)
    expected = "bitmask" if pattern == "unstructured" else "2:4"
    assert set(qc["modules"]) == set(block_linears(model)) and set(qc["modules"].values()) == {expected}
    assert record[MARKER_KEY] == MARKER
    assert "save_pretrained" not in vars(model.config) and repr(model.config)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert_same_model(model, reloaded)
    assert reloaded.config.quantization_config.modules == qc["modules"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
def test_compact_projections_are_1_6x_smaller(tiny_dir, tmp_path, dtype, pattern, sparsity):
    model = prune_at_load(tiny_dir["llama"], dtype=dtype, pattern=pattern, sparsity=sparsity)
    model.save_pretrained(tmp_path / "compact")
    model.config.quantization_config.compact = False
    model.save_pretrained(tmp_path / "dense")
    compact_blocks, compact_file = block_bytes(tmp_path / "compact")
    dense_blocks, dense_file = block_bytes(tmp_path / "dense")
    assert dense_blocks / compact_blocks >= 1.6
    assert compact_file < dense_file
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compact", dtype=dtype)
    assert reloaded.dtype == dtype
    assert_same_model(model, reloaded)


def test_byte_plane_coding_is_lossless_keeps_ties_and_honours_dtype(tiny_dir, tmp_path):
    from safetensors import safe_open

    model = prune_at_load(tiny_dir["llama"], pattern="2:4", sparsity=None)
    model.save_pretrained(tmp_path / "coded")
    model.config.quantization_config.entropy_coding = False
    model.save_pretrained(tmp_path / "plain")
    coded = json.loads((tmp_path / "coded" / "config.json").read_text())["quantization_config"]["coded"]
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())["quantization_config"]
    assert "model.embed_tokens.weight" in coded and "lm_head.weight" not in coded
    assert any(name.endswith("mlp.up_proj.weight") for name in coded) and plain["coded"] == []
    with safe_open(str(tmp_path / "coded" / "model.safetensors"), "pt") as f:
        names = list(f.keys())  # safe_open handles do not support `in`
        assert "lm_head.weight" not in names
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "U8"
    assert block_bytes(tmp_path / "coded")[1] < block_bytes(tmp_path / "plain")[1]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "coded")
    assert_same_model(model, reloaded)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    half = [
        AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.bfloat16)
        for name in ("coded", "plain")
    ]
    assert half[0].dtype == torch.bfloat16
    assert_same_model(*half)


def test_calibrated_pruning_at_load(tiny_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir["llama"])
    model = prune_at_load(
        tiny_dir["llama"],
        method="sparsegpt",
        pattern="2:4",
        sparsity=None,
        dataset=TOKENIZER_CORPUS,
        tokenizer=tokenizer,
        n_samples=4,
        seqlen=16,
        block_size=16,
    )
    assert sparsity_report(model).pattern_holds("2:4")
    assert model.hf_compress_report.config["method"] == "sparsegpt"
    model.save_pretrained(tmp_path / "out")
    assert_same_model(model, AutoModelForCausalLM.from_pretrained(tmp_path / "out"))


def test_tokenizer_defaults_to_the_checkpoints(tiny_dir):
    model = prune_at_load(tiny_dir["llama"], method="wanda", dataset=TOKENIZER_CORPUS, n_samples=4, seqlen=16)
    assert sparsity_report(model).total == pytest.approx(0.5, abs=0.01)


def test_missing_calibration_fails_before_loading(tiny_dir, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the config was checked")

    monkeypatch.setattr(HfCompressQuantizer, "_process_model_before_weight_loading", no_weights)
    with pytest.raises(ValueError, match="needs|calibration data"):
        prune_at_load(tiny_dir["llama"], method="sparsegpt")


def test_dense_option_keeps_the_record_and_loads_plainly(tiny_dir, tmp_path):
    pruner = hf_compress.PrunerConfig(method="magnitude", sparsity=0.5)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_dir["llama"], quantization_config=HfCompressConfig(pruner=pruner, compact=False)
    )
    model.save_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    assert MARKER_KEY not in record and record["quantization_config"]["modules"] == {}
    assert_same_model(model, AutoModelForCausalLM.from_pretrained(tmp_path / "out"))


def test_dequantize_gives_a_plain_model(tiny_dir, tmp_path):
    model = prune_at_load(tiny_dir["llama"], pattern="2:4", sparsity=None)
    model.dequantize()
    assert not getattr(model, "is_quantized", False) and not hasattr(model.config, "quantization_config")
    model.save_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in record and MARKER_KEY not in record
    assert record["hf_compress"]["pruning"]["pattern"] == "2:4"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert not getattr(reloaded, "is_quantized", False)
    assert_same_model(model, reloaded)


def heterogeneous(path):
    model = AutoModelForCausalLM.from_pretrained(path)
    surgery.prune_heads(model, {1: [3, 4, 5, 6, 7, 8]})
    surgery.prune_ffn(model, {0: list(range(0, 96, 2))})
    return model


def heterogeneous_with_dropped_layers(tmp_path):
    """Four blocks -> three (block 2 dropped), with per-layer heads / KV heads / FFN widths."""
    tiny_llama(layers=4).save_pretrained(tmp_path / "four")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "four")
    surgery.prune_heads(model, {1: [3, 4, 5, 6, 7, 8], 3: [0, 1, 2]})
    surgery.prune_ffn(model, {0: list(range(0, 96, 2)), 3: list(range(80))})
    surgery.drop_layers(model, [0, 1, 3])
    return model


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("drop", [False, True])
def test_heterogeneous_model_round_trips_and_generates(tiny_dir, tmp_path, compact, drop):
    model = heterogeneous_with_dropped_layers(tmp_path) if drop else heterogeneous(tiny_dir["llama"])
    shapes = surgery.layer_shapes(model)
    assert len({s["ffn"] for s in shapes}) > 1 and len({s["num_kv_heads"] for s in shapes}) > 1
    hf_compress.prune(model, hf_compress.PrunerConfig(method="magnitude", sparsity=0.5), progress=False)
    attach_quantizer(model, hf_compress.PrunerConfig(method="magnitude", sparsity=0.5), compact=compact)
    model.save_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    assert record["quantization_config"]["layers"] == surgery.layer_shapes(model)
    assert record[MARKER_KEY] == MARKER  # per-layer shapes need the plugin, compact or not
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert surgery.layer_shapes(reloaded) == shapes
    assert reloaded.config.num_hidden_layers == len(shapes) == (3 if drop else 2)
    assert_same_model(model, reloaded)
    prompt = random_tokens(1, 5)
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 2}
    cached = reloaded.generate(prompt, use_cache=True, **kwargs)
    assert torch.equal(model.generate(prompt, use_cache=True, **kwargs), cached)
    assert torch.equal(reloaded.generate(prompt, use_cache=False, **kwargs), cached)  # the KV cache is right


def test_heterogeneous_model_refuses_dequantize(tiny_dir):
    model = attach_quantizer(heterogeneous(tiny_dir["llama"]))
    with pytest.raises(ValueError, match="per-layer shapes"):
        model.dequantize()


def test_second_save_and_resave_of_a_reloaded_model(tiny_dir, tmp_path):
    model = prune_at_load(tiny_dir["gpt2"], pattern="2:4", sparsity=None)
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    reloaded.save_pretrained(tmp_path / "c")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "c" / "model.safetensors"
    ).read_bytes()
    assert_same_model(model, AutoModelForCausalLM.from_pretrained(tmp_path / "c"))


def test_sharded_portable_and_device_map_loads(tiny_dir, tmp_path):
    from hf_compress.portable import save_pretrained_portable

    model = prune_at_load(tiny_dir["llama"], pattern="2:4", sparsity=None)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    assert_same_model(model, AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", device_map="cpu"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir["llama"])
    save_pretrained_portable(model, tokenizer, tmp_path / "portable")
    assert json.loads((tmp_path / "portable" / "config.json").read_text())[MARKER_KEY] == MARKER
    assert_same_model(model, AutoModelForCausalLM.from_pretrained(tmp_path / "portable"))


def test_pruning_an_already_compact_checkpoint_is_refused_clearly(tiny_dir, tmp_path):
    prune_at_load(tiny_dir["llama"]).save_pretrained(tmp_path / "out")
    with pytest.raises(
        ValueError, match="quantized with HfCompressConfig but you are passing a PrunerConfig"
    ):
        prune_at_load(tmp_path / "out")
