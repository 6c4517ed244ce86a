"""Per-layer shapes: recorded from the modules, rebuilt on a freshly built model, same logits."""

from __future__ import annotations

import pytest
import torch

from hf_compress.heterogeneous import apply_recorded_layers, build_block, layers_to_record
from hf_compress.models import surgery
from hf_compress.models.table import decoder_layers
from tests.tiny_models import FACTORIES, random_tokens

CAUSAL = ("llama", "qwen2", "gpt2", "opt")


def make_heterogeneous(model):
    """Drop the second KV group (or two heads without GQA) of block 1 and half the FFN of block 0."""
    shape = surgery.layer_shapes(model)[1]
    per_group = shape["num_heads"] // shape["num_kv_heads"]
    heads = list(range(per_group, shape["num_heads"])) if per_group > 1 else [0, 2]
    surgery.prune_heads(model, {1: heads})
    ffn = surgery.layer_shapes(model)[0]["ffn"]
    surgery.prune_ffn(model, {0: list(range(0, ffn, 2))})
    return model


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_plain_models_record_nothing(family):
    assert layers_to_record(FACTORIES[family]()) is None


@pytest.mark.parametrize("family", CAUSAL)
def test_uniform_pruning_that_rewrote_the_config_records_nothing(family):
    model = FACTORIES[family]()
    ffn = surgery.layer_shapes(model)[0]["ffn"]
    surgery.prune_ffn(model, {i: list(range(ffn // 2)) for i in range(2)})
    assert layers_to_record(model) is None


@pytest.mark.parametrize("family", CAUSAL)
def test_recorded_shapes_rebuild_the_same_model(family):
    model = make_heterogeneous(FACTORIES[family]())
    shapes = layers_to_record(model)
    assert shapes is not None and shapes[0] != shapes[1]
    fresh = FACTORIES[family](seed=7)
    fresh.config = model.config
    for block in decoder_layers(fresh):
        for module in block.modules():
            if hasattr(module, "config"):
                module.config = model.config
    apply_recorded_layers(fresh, shapes)
    assert surgery.layer_shapes(fresh) == shapes
    fresh.load_state_dict(model.state_dict())
    x = random_tokens(2, 12)
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, model(x).logits)


def test_apply_checks_the_record():
    model = FACTORIES["llama"]()
    shapes = surgery.layer_shapes(model)
    with pytest.raises(ValueError, match="records shapes for 1 blocks"):
        apply_recorded_layers(model, shapes[:1])
    with pytest.raises(ValueError, match="lacks"):
        apply_recorded_layers(model, [{"ffn": 4}, shapes[1]])


def test_build_block_is_free():
    model = FACTORIES["llama"]()
    block = build_block(type(decoder_layers(model)[0]), model.config, 0)
    assert all(p.device.type == "meta" for p in block.parameters())
