"""Structured importance against hand-computed values and naive float64 references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_compress.calibration import CalibrationSet
from hf_compress.models.table import arch_spec, decoder_layers
from hf_compress.pruning.structured import (
    allocate,
    block_influence_scores,
    importance_scores,
    rank_slices,
    select_heads,
    top_units,
)
from tests.structured.reference import (
    l1_element,
    l2_element,
    ref_attention_scores,
    ref_block_influence,
    ref_ffn_scores,
    ref_rms_groups,
    taylor_element,
)
from tests.tiny_models import FACTORIES, random_tokens, tiny_llama


def calib_set(ids: torch.Tensor) -> CalibrationSet:
    return CalibrationSet(ids, torch.ones_like(ids), "random", ids.shape[1], ids.shape[0], 0, ids.numel())


def toy_llama() -> LlamaForCausalLM:
    """2 layers, hidden 4, 2 query heads / 1 KV head of width 2, FFN 2 (weights set by hand)."""
    cfg = LlamaConfig(
        vocab_size=16,
        hidden_size=4,
        intermediate_size=2,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for block in model.model.layers:
            attn, mlp = block.self_attn, block.mlp
            attn.q_proj.weight.fill_(1.0)
            attn.q_proj.weight[2:4] = 2.0  # head 1 rows
            attn.k_proj.weight.fill_(1.0)
            attn.v_proj.weight.fill_(-1.0)
            attn.o_proj.weight.fill_(1.0)
            mlp.gate_proj.weight.fill_(1.0)
            mlp.gate_proj.weight[1] = 3.0  # neuron 1
            mlp.up_proj.weight.fill_(1.0)
            mlp.down_proj.weight.fill_(-1.0)
    return model


def test_magnitude_scores_by_hand():
    scores = importance_scores(toy_llama(), "magnitude_l1", ["heads", "ffn"])
    # head 0: q rows 2x4 of 1 (8) + o columns 4x2 of 1 (8) = 16; head 1: 2x4 of 2 (16) + 8 = 24
    assert scores.heads[0].tolist() == [16.0, 24.0]
    # the one KV group: its heads (16 + 24) + k rows 2x4 (8) + v rows 2x4 (8) = 56
    assert scores.kv_groups[1].tolist() == [56.0]
    # neuron 0: gate row 4 + up row 4 + down column 4 = 12; neuron 1: 12 + 4 + 4 = 20
    assert scores.ffn[0].tolist() == [12.0, 20.0]
    l2 = importance_scores(toy_llama(), "magnitude_l2", ["heads", "ffn"])
    # head 0: sqrt(8 * 1 + 8 * 1) = 4; head 1: sqrt(8 * 4 + 8) = sqrt(40); neuron 1: sqrt(4 * 9 + 4 + 4)
    assert torch.allclose(l2.heads[1], torch.tensor([4.0, math.sqrt(40.0)], dtype=torch.float64))
    assert torch.allclose(l2.ffn[1], torch.tensor([math.sqrt(12.0), math.sqrt(44.0)], dtype=torch.float64))


def _weights64(block, spec):
    names = [spec.q, spec.k, spec.v, spec.o, spec.gate, spec.up, spec.down]
    return [block.get_submodule(n).weight.detach().double() for n in names]


@pytest.mark.parametrize("criterion", ["magnitude_l1", "magnitude_l2"])
def test_magnitude_matches_naive_reference(criterion):
    model = tiny_llama(seed=1)
    spec = arch_spec(model)
    scores = importance_scores(model, criterion, ["heads", "ffn"])
    element = l1_element if criterion == "magnitude_l1" else l2_element
    root = math.sqrt if criterion == "magnitude_l2" else (lambda x: x)
    for i, block in enumerate(decoder_layers(model)):
        q, k, v, o, gate, up, down = _weights64(block, spec)
        heads, groups = ref_attention_scores(q, k, v, o, 9, 3, 8, element)
        if criterion == "magnitude_l2":  # the group norm is taken over all of the group's weights
            per_head = [
                sum(element(q, r, c) for r in range(h * 8, h * 8 + 8) for c in range(72))
                + sum(element(o, r, c) for r in range(72) for c in range(h * 8, h * 8 + 8))
                for h in range(9)
            ]
            assert torch.allclose(
                scores.heads[i], torch.tensor([root(x) for x in per_head], dtype=torch.float64)
            )
        else:
            assert torch.allclose(scores.heads[i], torch.tensor(heads, dtype=torch.float64))
            assert torch.allclose(scores.kv_groups[i], torch.tensor(groups, dtype=torch.float64))
        ffn = [root(x) for x in ref_ffn_scores(gate, up, down, element)]
        assert torch.allclose(scores.ffn[i], torch.tensor(ffn, dtype=torch.float64))


def _float64_gradients(model, ids):
    """dL/dW of the mean next-token loss over all windows, in a float64 copy (plain autograd)."""
    model64 = copy.deepcopy(model).double()
    loss = model64(input_ids=ids, labels=ids).loss
    params = list(model64.parameters())
    grads = torch.autograd.grad(loss, params)
    return model64, {id(p): g for p, g in zip(params, grads, strict=True)}


def test_taylor_matches_naive_reference():
    model = tiny_llama(seed=2)
    ids = random_tokens(4, 16, seed=3)
    scores = importance_scores(model, "taylor", ["heads", "ffn"], calib=calib_set(ids), batch_size=3)
    assert all(p.grad is None for p in model.parameters())  # gradients cleared
    model64, grads = _float64_gradients(model, ids)
    element = taylor_element(grads)
    spec = arch_spec(model64)
    for i, block in enumerate(decoder_layers(model64)):
        q, k, v, o, gate, up, down = (
            block.get_submodule(n).weight
            for n in (spec.q, spec.k, spec.v, spec.o, spec.gate, spec.up, spec.down)
        )
        heads, groups = ref_attention_scores(q, k, v, o, 9, 3, 8, element)
        assert torch.allclose(scores.heads[i], torch.tensor(heads, dtype=torch.float64), rtol=1e-3, atol=1e-9)
        assert torch.allclose(
            scores.kv_groups[i], torch.tensor(groups, dtype=torch.float64), rtol=1e-3, atol=1e-9
        )
        ffn = ref_ffn_scores(gate, up, down, element)
        assert torch.allclose(scores.ffn[i], torch.tensor(ffn, dtype=torch.float64), rtol=1e-3, atol=1e-9)


def _capture_inputs(model, ids, paths):
    """Float64 input rows ``[tokens, in]`` of each named module in one ordinary forward."""
    modules = dict(model.named_modules())
    rows, handles = {}, []
    for path in paths:
        handles.append(
            modules[path].register_forward_hook(
                lambda _m, args, _o, path=path: rows.__setitem__(
                    path, args[0].reshape(-1, args[0].shape[-1]).double()
                )
            )
        )
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return rows


def test_activation_matches_naive_reference():
    model = tiny_llama(seed=4)
    ids = random_tokens(3, 12, seed=5)
    scores = importance_scores(
        model, "activation", ["heads", "ffn", "hidden"], calib=calib_set(ids), batch_size=2, progress=False
    )
    paths = [
        f"model.layers.{i}.{p}"
        for i in range(2)
        for p in ("self_attn.o_proj", "mlp.down_proj", "self_attn.q_proj", "mlp.gate_proj")
    ]
    rows = _capture_inputs(model, ids, paths)
    hidden = torch.zeros(72, dtype=torch.float64)
    for i in range(2):
        heads = ref_rms_groups(rows[f"model.layers.{i}.self_attn.o_proj"], 8, 9)
        assert torch.allclose(scores.heads[i], torch.tensor(heads, dtype=torch.float64), rtol=1e-5)
        groups = [sum(heads[g * 3 : g * 3 + 3]) for g in range(3)]
        assert torch.allclose(scores.kv_groups[i], torch.tensor(groups, dtype=torch.float64), rtol=1e-5)
        ffn = ref_rms_groups(rows[f"model.layers.{i}.mlp.down_proj"], 1, 96)
        assert torch.allclose(scores.ffn[i], torch.tensor(ffn, dtype=torch.float64), rtol=1e-5)
        for reader in ("self_attn.q_proj", "mlp.gate_proj"):  # q/k/v and gate/up read one tensor each
            hidden += torch.tensor(
                ref_rms_groups(rows[f"model.layers.{i}.{reader}"], 1, 72), dtype=torch.float64
            )
    assert torch.allclose(scores.hidden, hidden, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_block_influence_matches_block_inputs_and_outputs(family):
    model = FACTORIES[family](seed=6, layers=3)
    ids = random_tokens(2, 10, seed=7)
    layers = decoder_layers(model)
    seen = {}
    handles = [
        block.register_forward_hook(
            lambda _m, args, out, i=i: seen.__setitem__(
                i, (args[0], out[0] if isinstance(out, tuple) else out)
            )
        )
        for i, block in enumerate(layers)
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    bi = block_influence_scores(model, calib_set(ids), batch_size=1, progress=False)
    for i in range(3):
        x_in, x_out = (t.reshape(-1, t.shape[-1]) for t in seen[i])
        assert bi[i].item() == pytest.approx(ref_block_influence(x_in, x_out), abs=1e-6)
    assert not hasattr(model.config, "tie_last_hidden_states") or model.config.tie_last_hidden_states is None


def test_block_influence_ignores_padding():
    model = tiny_llama(seed=8, layers=2)
    ids = random_tokens(2, 12, seed=9)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    padded = CalibrationSet(ids, mask, "x", 12, 2, 0, 20)
    changed = ids.clone()
    changed[1, 8:] = 5  # padding content must not matter
    again = CalibrationSet(changed, mask, "x", 12, 2, 0, 20)
    a = block_influence_scores(model, padded, progress=False)
    b = block_influence_scores(model, again, progress=False)
    assert torch.allclose(a, b)


def test_random_scores_are_seeded():
    model = tiny_llama()
    a = importance_scores(model, "random", ["ffn", "layers"], seed=1)
    b = importance_scores(model, "random", ["ffn", "layers"], seed=1)
    c = importance_scores(model, "random", ["ffn", "layers"], seed=2)
    assert torch.equal(a.ffn[0], b.ffn[0]) and not torch.equal(a.ffn[0], c.ffn[0])


def test_selection_helpers():
    assert top_units(torch.tensor([0.1, 0.9, 0.5, 0.9]), 2) == [1, 3]
    heads = torch.tensor([1.0, 5.0, 2.0, 9.0, 8.0, 0.0])  # 3 groups of 2
    groups = torch.tensor([6.0, 11.0, 8.0])
    assert select_heads(heads, groups, keep_groups=2, keep_per_group=1) == [3, 4]
    assert rank_slices(heads, 3, [0, 1]).tolist() == [14.0, 3.0]
    assert allocate([torch.tensor([5.0, 4.0, 3.0]), torch.tensor([1.0, 0.5, 0.2])], 4) == [3, 1]
    assert allocate([torch.arange(16.0), torch.zeros(16)], 20, minimum=8, multiple=8) == [16, 8]
    with pytest.raises(ValueError, match="cannot keep"):
        allocate([torch.ones(2), torch.ones(2)], 1)
