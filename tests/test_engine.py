"""The layer-sequential engine: capture, statistics, error propagation, padding, shared inputs."""

import pytest
import torch

from hf_compress.engine import layer_sequential
from hf_compress.models.table import arch_spec, decoder_layers
from hf_compress.models.weights import prunable_modules
from hf_compress.pruning.sparsegpt import HessianStats
from tests.tiny_models import FACTORIES, random_tokens


def _full_forward_xtx(model, ids, mask, module_names):
    """X^T X of each named module's valid input rows, from one ordinary forward of the whole model."""
    modules = dict(model.named_modules())
    acc = {
        n: HessianStats(
            modules[n].weight.shape[-1] if not hasattr(modules[n], "nf") else modules[n].weight.shape[0]
        )
        for n in module_names
    }
    handles = []
    for n in module_names:

        def hook(_m, args, _out, n=n):
            x = args[0]
            acc[n].add_batch(x.reshape(-1, x.shape[-1])[mask.reshape(-1).bool()])

        handles.append(modules[n].register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in handles:
        h.remove()
    return {n: s.xtx for n, s in acc.items()}


def _first_reader(model, block):
    spec = arch_spec(model)
    return spec.attention_inputs[0]


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_engine_statistics_equal_full_forward_after_pruning_earlier_blocks(family):
    """Block i's statistics must see the *pruned* blocks < i (error propagation, as in SparseGPT)."""
    model = FACTORIES[family](layers=3)
    ids = random_tokens(4, 16)
    mask = torch.ones_like(ids)
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    first = _first_reader(model, layers[0])
    seen = {}

    def process(ctx):
        name = f"{prefix}.{ctx.index}.{first}"
        seen[name] = ctx.stats[name].xtx.clone()
        for module in ctx.modules.values():  # prune: zero half of every weight (a crude change)
            with torch.no_grad():
                module.weight[..., ::2] = 0.0

    layer_sequential(
        model,
        ids,
        mask,
        select_modules=lambda i, b: prunable_modules(b, prefix=f"{prefix}.{i}."),
        make_stats=lambda n, m: HessianStats(
            m.weight.shape[1] if isinstance(m, torch.nn.Linear) else m.weight.shape[0]
        ),
        process_block=process,
        batch_size=3,
        progress=False,
    )
    expected = _full_forward_xtx(model, ids, mask, list(seen))
    for name in seen:
        torch.testing.assert_close(seen[name], expected[name], rtol=1e-4, atol=1e-3)


def test_padding_never_reaches_statistics():
    model = FACTORIES["llama"](layers=2)
    ids = random_tokens(3, 12)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0
    padded_ids = ids.clone()
    padded_ids[mask == 0] = 0
    layers = decoder_layers(model)
    got = {}

    def process(ctx):
        got[ctx.index] = {n: (s.xtx.clone(), s.tokens) for n, s in ctx.stats.items()}

    def run(input_ids, attention_mask, batch):
        got.clear()
        layer_sequential(
            model,
            input_ids,
            attention_mask,
            select_modules=lambda i, b: prunable_modules(b, prefix=f"model.layers.{i}."),
            make_stats=lambda n, m: HessianStats(m.weight.shape[1]),
            process_block=process,
            batch_size=batch,
            progress=False,
        )
        return {k: dict(v) for k, v in got.items()}

    padded = run(padded_ids, mask, 3)
    singles = [run(ids[i : i + 1, : int(mask[i].sum())], None, 1) for i in range(3)]
    assert len(layers) == 2
    for block, per_module in padded.items():
        for name, (xtx, tokens) in per_module.items():
            assert tokens == int(mask.sum())
            summed = sum(s[block][name][0] for s in singles)
            torch.testing.assert_close(xtx, summed, rtol=1e-4, atol=1e-4)


def test_modules_reading_one_input_share_statistics():
    model = FACTORIES["llama"](layers=1)
    shared = {}

    def process(ctx):
        shared.update(ctx.shared)
        assert ctx.stats["model.layers.0.self_attn.k_proj"] is ctx.stats["model.layers.0.self_attn.q_proj"]
        assert ctx.stats["model.layers.0.mlp.up_proj"] is ctx.stats["model.layers.0.mlp.gate_proj"]
        assert ctx.stats["model.layers.0.mlp.up_proj"] is not ctx.stats["model.layers.0.self_attn.q_proj"]

    layer_sequential(
        model,
        random_tokens(2, 8),
        None,
        select_modules=lambda i, b: prunable_modules(b, prefix=f"model.layers.{i}."),
        make_stats=lambda n, m: HessianStats(m.weight.shape[1]),
        process_block=process,
        progress=False,
    )
    assert shared["model.layers.0.self_attn.v_proj"] == "model.layers.0.self_attn.q_proj"
    assert shared["model.layers.0.self_attn.o_proj"] == "model.layers.0.self_attn.o_proj"
