"""Module-sequential calibration: each module's statistics see its pruned predecessors, one forward per block."""

import functools

import pytest
import torch

from hf_compress.engine import layer_sequential
from hf_compress.lockstep import LockstepError, run_in_lockstep
from hf_compress.models.table import decoder_layers
from hf_compress.models.weights import prunable_modules
from hf_compress.pruning.sparsegpt import HessianStats
from tests.tiny_models import FACTORIES, random_tokens


def _block_targets(model, index):
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    return prunable_modules(layers[index], prefix=f"{prefix}.{index}.")


def _crude_prune_(module) -> None:
    with torch.no_grad():
        module.weight[..., ::2] = 0.0


def _reference_module_sequential(model, ids, mask, batch_size):
    """Naive: for each block, for each target in forward order, rerun the whole model to get its inputs."""
    seen = {}
    for index in range(len(decoder_layers(model))):
        targets = _block_targets(model, index)
        order = _call_order(model, ids[:1], targets)
        for name in order:
            xtx = HessianStats(_in_features(targets[name]))
            hook = targets[name].register_forward_pre_hook(
                lambda _m, args, xtx=xtx: xtx.add_batch(args[0].reshape(-1, args[0].shape[-1]))
            )
            with torch.no_grad():
                for start in range(0, ids.shape[0], batch_size):
                    model(input_ids=ids[start : start + batch_size], attention_mask=mask[start : start + batch_size])
            hook.remove()
            seen[name] = xtx.xtx
            _crude_prune_(targets[name])
    return seen


def _call_order(model, ids, targets):
    order = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n) if n not in order else None)
             for n, m in targets.items()]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return order


def _in_features(module):
    return module.weight.shape[0] if hasattr(module, "nf") else module.weight.shape[-1]


def _engine_module_sequential(model, ids, mask, batch_size):
    seen = {}

    def process_module(ctx, name):
        seen[name] = ctx.stats[name].xtx.clone()
        _crude_prune_(ctx.modules[name])

    layer_sequential(
        model, ids, mask, select_modules=lambda i, _b: _block_targets(model, i),
        make_stats=lambda _n, m: HessianStats(_in_features(m)), process_module=process_module,
        batch_size=batch_size, progress=False,
    )
    return seen


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_module_sequential_statistics_match_naive_rerun(family):
    ids = random_tokens(6, 12)
    mask = torch.ones_like(ids)
    expected = _reference_module_sequential(FACTORIES[family](layers=2), ids, mask, batch_size=2)
    got = _engine_module_sequential(FACTORIES[family](layers=2), ids, mask, batch_size=2)
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-3, msg=name)


def test_module_sequential_differs_from_block_mode():
    """Without the lockstep, o_proj would see the dense q/k/v's output: the statistics must differ."""
    ids = random_tokens(4, 12)
    mask = torch.ones_like(ids)
    by_module = _engine_module_sequential(FACTORIES["llama"](layers=1), ids, mask, batch_size=2)
    by_block = {}

    def process_block(ctx):
        for name, module in ctx.modules.items():
            by_block[name] = ctx.stats[name].xtx.clone()
            _crude_prune_(module)

    model = FACTORIES["llama"](layers=1)
    layer_sequential(model, ids, mask, select_modules=lambda i, _b: _block_targets(model, i),
                     make_stats=lambda _n, m: HessianStats(m.weight.shape[1]), process_block=process_block,
                     batch_size=2, progress=False)
    q = next(n for n in by_module if n.endswith("q_proj"))
    o = next(n for n in by_module if n.endswith("o_proj"))
    torch.testing.assert_close(by_module[q], by_block[q])
    assert not torch.allclose(by_module[o], by_block[o])


def test_lockstep_gates_every_batch_before_the_callback():
    layer = torch.nn.Linear(3, 3)
    arrived = []
    log = []

    def on_gate(name):
        log.append((name, sorted(arrived)))

    inputs = [torch.full((1, 3), float(i)) for i in range(3)]
    calls = [functools.partial(layer, x) for x in inputs]
    out = run_in_lockstep(calls, {"lin": layer}, lambda i, n, _m, _x: arrived.append(i), on_gate)
    assert log == [("lin", [0, 1, 2])]
    assert len(out) == 3 and out[2].shape == (1, 3)


def test_a_gate_ready_on_arrival_is_processed_at_once_without_pausing():
    first, second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    events = []

    def on_arrival(i, name, _m, _x):
        events.append(("arrive", name, i))
        return name == "second"  # e.g. statistics shared with "first", already complete

    def on_gate(name):
        events.append(("gate", name))

    calls = [functools.partial(lambda x: second(first(x)), torch.ones(1, 3)) for _ in range(3)]
    run_in_lockstep(calls, {"first": first, "second": second}, on_arrival, on_gate)
    assert events == [("arrive", "first", 0), ("arrive", "first", 1), ("arrive", "first", 2), ("gate", "first"),
                      ("arrive", "second", 0), ("gate", "second")]


def test_lockstep_reraises_a_batch_error_and_stops_every_thread():
    layer = torch.nn.Linear(3, 3)

    def bad():
        raise ValueError("batch 1 broke")

    calls = [lambda: layer(torch.ones(1, 3)), bad, lambda: layer(torch.ones(1, 3))]
    with pytest.raises(ValueError, match="batch 1 broke"):
        run_in_lockstep(calls, {"lin": layer}, lambda *a: None, lambda n: None)


def test_lockstep_refuses_diverging_batches():
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    calls = [lambda: first(torch.ones(1, 2)), lambda: second(torch.ones(1, 2))]
    with pytest.raises(LockstepError, match="diverged"):
        run_in_lockstep(calls, {"first": first, "second": second}, lambda *a: None, lambda n: None)


def test_exactly_one_callback_is_required():
    model = FACTORIES["llama"](layers=1)
    with pytest.raises(ValueError, match="exactly one"):
        layer_sequential(model, random_tokens(2, 8), None, select_modules=lambda i, b: {},
                         make_stats=lambda n, m: None, progress=False)
