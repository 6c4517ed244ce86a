"""The mask-preserving merge and the masked LoRA layer, against float64 references written from the definition."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_compress.pruning.masks import satisfies_nm
from hf_compress.training.masked_lora import (
    MaskedLoraLinear,
    masked_merge,
    merge_lora_keep_masks,
    register_masked_layers,
)
from tests.recover.recover_utils import make_gpt2, prune_24, zeros

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _reference_merge(weight, delta, mask):
    """W' = W + delta element by element in float64; exactly +0.0 where pruned."""
    out = torch.empty_like(weight, dtype=torch.float64)
    for i in range(weight.shape[0]):
        for j in range(weight.shape[1]):
            out[i, j] = 0.0 if mask[i, j] else float(weight[i, j]) + float(delta[i, j])
    return out


def _randomize_lora(model, seed=1):
    """LoRA B starts at zero; give every adapter weight a value so the update is not trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _peft(model, masked: bool, targets=PROJ, fan_in_fan_out=False):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=fan_in_fan_out)
    if masked:
        register_masked_layers(config)
    peft_model = get_peft_model(model, config)
    _randomize_lora(peft_model)
    return peft_model


def test_masked_merge_matches_reference_and_writes_positive_zero():
    gen = torch.Generator().manual_seed(0)
    weight, delta = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    mask = torch.rand(6, 8, generator=gen) < 0.5
    weight = weight.masked_fill(mask, 0.0) * torch.where(mask, -1.0, 1.0)  # pruned positions hold -0.0
    got = masked_merge(weight, delta, mask)
    torch.testing.assert_close(got.double(), _reference_merge(weight, delta, mask), rtol=1e-6, atol=1e-7)
    assert torch.all(torch.signbit(got[mask]) == 0)  # +0.0, not -0.0
    assert got.dtype == weight.dtype
    with pytest.raises(ValueError, match="shapes differ"):
        masked_merge(weight, delta[:, :4], mask)


def test_masked_merge_keeps_bfloat16_dtype_and_zeros():
    weight = torch.randn(4, 8).to(torch.bfloat16)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, ::2] = True
    got = masked_merge(weight, torch.full((4, 8), 1e-3), mask)
    assert got.dtype == torch.bfloat16 and bool((got[mask] == 0).all())


def test_peft_merge_densifies_but_ours_keeps_every_zero(pruned):
    before = zeros(pruned)
    dense_merge = _peft(copy.deepcopy(pruned), masked=False).merge_and_unload()
    lost = sum(int((before[n] & (p != 0)).sum()) for n, p in dense_merge.named_parameters())
    assert lost > 0  # the trap this module exists for
    ours = merge_lora_keep_masks(_peft(copy.deepcopy(pruned), masked=False))
    after = zeros(ours)
    assert all(torch.equal(before[n], after[n]) for n in before)
    changed = sum(int((p != dict(pruned.named_parameters())[n]).sum()) for n, p in ours.named_parameters())
    assert changed > 0
    for name, p in ours.named_parameters():
        if any(k in name for k in PROJ):
            assert satisfies_nm(p, 2, 4), name


def test_merge_equals_float64_reference_per_layer(pruned):
    peft_model = _peft(copy.deepcopy(pruned), masked=False)
    expected = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            w = module.get_base_layer().weight.detach()
            delta = (
                module.lora_B["default"].weight @ module.lora_A["default"].weight
            ).detach() * module.scaling["default"]
            expected[name.removeprefix("base_model.model.") + ".weight"] = _reference_merge(w, delta, w == 0)
    merged = merge_lora_keep_masks(peft_model)
    params = dict(merged.named_parameters())
    assert len(expected) == 14
    for name, want in expected.items():
        torch.testing.assert_close(params[name].double(), want, rtol=1e-5, atol=1e-6)


def test_masked_layer_trains_exactly_the_merged_model(pruned):
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    peft_model = _peft(copy.deepcopy(pruned), masked=True)
    layers = [m for m in peft_model.modules() if isinstance(m, MaskedLoraLinear)]
    assert len(layers) == 14
    layer = layers[0]
    x = torch.randn(3, layer.in_features)
    w = layer.get_base_layer().weight
    full = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    want = x @ (w + full.masked_fill(w == 0, 0.0)).t()
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        trained = peft_model(input_ids=ids).logits
    merged = merge_lora_keep_masks(peft_model)
    with torch.no_grad():
        shipped = merged(input_ids=ids).logits
    torch.testing.assert_close(shipped, trained, rtol=1e-4, atol=1e-5)


def test_masked_layer_trains_the_adapter_and_leaves_the_base_frozen(pruned):
    peft_model = _peft(copy.deepcopy(pruned), masked=True)
    layer = next(m for m in peft_model.modules() if isinstance(m, MaskedLoraLinear))
    out = layer(torch.randn(5, layer.in_features)).square().sum()
    out.backward()
    assert layer.lora_A["default"].weight.grad is not None
    assert layer.get_base_layer().weight.grad is None  # the base stays frozen


def test_masked_dropout_path_matches_definition(pruned):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=PROJ, lora_dropout=0.5)
    register_masked_layers(config)
    peft_model = get_peft_model(copy.deepcopy(pruned), config)
    _randomize_lora(peft_model)
    peft_model.eval()  # dropout off: must equal the fused effective-weight formula
    layer = next(m for m in peft_model.modules() if isinstance(m, MaskedLoraLinear))
    x = torch.randn(3, layer.in_features)
    w = layer.get_base_layer().weight
    want = x @ (w + layer.get_delta_weight("default")).t()
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_peft_merge_and_unload_of_masked_layers_keeps_zeros(pruned):
    before = zeros(pruned)
    merged = _peft(copy.deepcopy(pruned), masked=True).merge_and_unload()
    after = zeros(merged)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_conv1d_gpt2_masked_lora_and_merge(tokenizer):
    model = prune_24(make_gpt2(tokenizer))
    before = zeros(model)
    peft_model = _peft(model, masked=True, targets=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = peft_model(input_ids=ids).logits
    merged = merge_lora_keep_masks(peft_model)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-5)
    after = zeros(merged)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_merge_refuses_a_model_without_lora(pruned):
    with pytest.raises(ValueError, match="no LoRA layer"):
        merge_lora_keep_masks(pruned)
