"""Surgery: the GQA mapping head by head, cuts equal to zeroed weights, hidden slicing, bad plans."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_compress.models.surgery import (
    StructuredPlan,
    apply_plan,
    drop_layers,
    layer_shapes,
    prune_ffn,
    prune_heads,
    prune_hidden,
    resize_layers,
)
from hf_compress.models.table import arch_spec, decoder_layers
from hf_compress.models.weights import weight_out_in
from tests.tiny_models import FACTORIES, random_tokens, tiny_llama

CAUSAL = ("llama", "qwen2", "gpt2", "opt")


def logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_gqa_mapping_head_by_head():
    """9 query / 3 KV heads: keep groups 0 and 2 with two heads each; check every row and column."""
    model = tiny_llama(seed=0, layers=2)
    d = 8
    old = copy.deepcopy(model)
    kept = [0, 2, 6, 7]  # group 0: heads 0, 2; group 2: heads 6, 7
    summary = prune_heads(model, {1: kept})
    attn, old_attn = model.model.layers[1].self_attn, old.model.layers[1].self_attn
    assert attn.q_proj.weight.shape == (4 * d, 72) and attn.k_proj.weight.shape == (2 * d, 72)
    assert attn.o_proj.weight.shape == (72, 4 * d)
    assert attn.num_key_value_groups == 2
    kept_groups = [0, 2]
    for new_head, old_head in enumerate(kept):
        rows, old_rows = slice(new_head * d, new_head * d + d), slice(old_head * d, old_head * d + d)
        assert torch.equal(attn.q_proj.weight[rows], old_attn.q_proj.weight[old_rows])
        assert torch.equal(attn.o_proj.weight[:, rows], old_attn.o_proj.weight[:, old_rows])
        # transformers' repeat_kv: new query head j reads new KV head j // (H'/KV'); it must be the old
        # group of the old head (old group = old head // 3)
        new_group = new_head // attn.num_key_value_groups
        assert kept_groups[new_group] == old_head // 3
        g_rows, old_g = (
            slice(new_group * d, new_group * d + d),
            slice(kept_groups[new_group] * d, kept_groups[new_group] * d + d),
        )
        assert torch.equal(attn.k_proj.weight[g_rows], old_attn.k_proj.weight[old_g])
        assert torch.equal(attn.v_proj.weight[g_rows], old_attn.v_proj.weight[old_g])
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (9 * d, 72)  # other layer untouched
    assert summary["layer_shapes"][1] == {"num_heads": 4, "num_kv_heads": 2, "head_dim": 8, "ffn": 96}
    assert not summary["uniform"]


def _zero_heads(model, layer, heads, d):
    spec = arch_spec(model)
    o = decoder_layers(model)[layer].get_submodule(spec.o)
    with torch.no_grad():
        w = weight_out_in(o)
        for h in heads:
            w[:, h * d : (h + 1) * d] = 0.0


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_head_cut_equals_zeroed_output_columns(family):
    """Removing heads (whole KV groups here) = the dense model with those heads' o columns zeroed."""
    model = FACTORIES[family](seed=1, layers=2)
    shape = layer_shapes(model)[0]
    per_group = shape["num_heads"] // shape["num_kv_heads"]
    kept = list(range(per_group, shape["num_heads"]))  # drop the first KV group with its heads
    reference = copy.deepcopy(model)
    _zero_heads(reference, 0, range(per_group), shape["head_dim"])
    prune_heads(model, {0: kept})
    ids = random_tokens(2, 12)
    if family == "bert":
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    else:
        torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)


def test_query_heads_within_groups_equal_zeroed_columns():
    model = tiny_llama(seed=2)
    reference = copy.deepcopy(model)
    _zero_heads(reference, 0, [1, 5, 8], 8)  # one head from each of the 3 groups
    prune_heads(model, {0: [0, 2, 3, 4, 6, 7]})
    assert model.model.layers[0].self_attn.k_proj.weight.shape[0] == 24  # all KV heads stay
    ids = random_tokens(2, 12)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_ffn_cut_equals_zeroed_down_columns(family):
    model = FACTORIES[family](seed=3, layers=2)
    spec = arch_spec(model)
    width = layer_shapes(model)[1]["ffn"]
    drop = list(range(0, width, 3))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        weight_out_in(decoder_layers(reference)[1].get_submodule(spec.down))[:, drop] = 0.0
    prune_ffn(model, {1: [j for j in range(width) if j not in drop]})
    assert layer_shapes(model)[1]["ffn"] == width - len(drop)
    ids = random_tokens(2, 12)
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", CAUSAL)
def test_drop_layers_equals_identity_blocks(family):
    """A pre-norm block whose writers are zero is the identity; dropping it gives the same logits."""
    model = FACTORIES[family](seed=4, layers=3)
    spec = arch_spec(model)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for path in (spec.o, spec.down):
            module = decoder_layers(reference)[1].get_submodule(path)
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()
    with torch.no_grad():
        for path in (spec.o, spec.down):  # the same in the model, so only dropping differs
            module = decoder_layers(model)[1].get_submodule(path)
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()
    summary = drop_layers(model, [0, 2])
    assert summary["num_layers"] == 2 and len(decoder_layers(model)) == 2
    assert [
        getattr(b.get_submodule(spec.attention), "layer_idx", i) for i, b in enumerate(decoder_layers(model))
    ] == [0, 1]
    ids = random_tokens(2, 12)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)
    out = model.generate(
        ids[:1, :4], max_new_tokens=4, do_sample=False
    )  # the cache indexes renumbered blocks
    assert out.shape == (1, 8)


def test_drop_layers_cuts_layer_types():
    model = FACTORIES["qwen2"](layers=3)
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    drop_layers(model, [1, 2])
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hidden_cut_slices_every_tensor(family):
    model = FACTORIES[family](seed=5, layers=2)
    spec = arch_spec(model)
    old = copy.deepcopy(model)
    width = model.get_input_embeddings().embedding_dim
    keep = [c for c in range(width) if c % 4 != 1]
    idx = torch.tensor(keep)
    summary = prune_hidden(model, keep)
    assert summary["hidden_size"] == len(keep)
    emb, old_emb = model.get_input_embeddings(), old.get_input_embeddings()
    assert torch.equal(emb.weight, old_emb.weight[:, idx])
    assert model.get_output_embeddings().weight is emb.weight  # still tied
    for i in range(2):
        block, old_block = decoder_layers(model)[i], decoder_layers(old)[i]
        for path in (*spec.attention_inputs, *spec.ffn_inputs):
            assert torch.equal(
                weight_out_in(block.get_submodule(path)), weight_out_in(old_block.get_submodule(path))[:, idx]
            )
        for path in (spec.o, spec.down):
            assert torch.equal(
                weight_out_in(block.get_submodule(path)), weight_out_in(old_block.get_submodule(path))[idx]
            )
        for path in spec.norms:
            assert torch.equal(block.get_submodule(path).weight, old_block.get_submodule(path).weight[idx])
    ids = random_tokens(2, 8)
    assert logits(model, ids).shape == (2, 8, emb.num_embeddings)


def test_bad_plans_change_nothing():
    model = tiny_llama(seed=6)
    before = state(model)
    bad = [
        StructuredPlan(heads={0: [0, 1, 3]}),  # group 0 keeps 2, group 1 keeps 1: no integer GQA ratio
        StructuredPlan(heads={0: []}),
        StructuredPlan(ffn={0: [0, 0, 1]}),
        StructuredPlan(ffn={1: list(range(8))}, layers=[]),
        StructuredPlan(hidden=[0, 99]),
        StructuredPlan(heads={5: [0]}),
    ]
    for plan in bad:
        with pytest.raises(ValueError):
            apply_plan(model, plan)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_resize_layers_rebuilds_per_layer_shapes():
    """What a per-layer loader does: build from the largest dims, shrink to the shapes, load the weights."""
    model = tiny_llama(seed=7)
    apply_plan(
        model, StructuredPlan(heads={0: [0, 1, 3, 4, 6, 7], 1: [3, 4, 5]}, ffn={0: list(range(0, 96, 2))})
    )
    shapes = layer_shapes(model)
    fresh = type(model)(model.config).eval()
    resize_layers(fresh, shapes)
    fresh.load_state_dict(model.state_dict())
    ids = random_tokens(2, 10)
    assert torch.equal(logits(fresh, ids), logits(model, ids))
