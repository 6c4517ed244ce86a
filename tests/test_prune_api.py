"""prune() end to end on tiny models of every family, the report, and bad input."""

import pytest
import torch

from hf_compress.api import prune
from hf_compress.config import PrunerConfig
from hf_compress.models.table import UnsupportedArchitectureError
from hf_compress.sparsity import sparsity_report
from tests.tiny_models import FACTORIES, random_tokens


def _outside_blocks(model):
    return {m.name for m in sparsity_report(model).modules if m.block is None}


def _cfg(**kw):
    kw.setdefault("n_samples", 4)
    kw.setdefault("seqlen", 16)
    kw.setdefault("block_size", 16)
    return PrunerConfig(**kw)


@pytest.mark.parametrize("family", sorted(FACTORIES))
@pytest.mark.parametrize(
    "method,pattern",
    [("magnitude", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "unstructured"), ("sparsegpt", "4:8")],
)
def test_prune_every_family(family, method, pattern):
    model = FACTORIES[family]()
    outside = {n: m.weight.clone() for n, m in model.named_modules() if n in _outside_blocks(model)}
    sparsity = None if pattern != "unstructured" else 0.5
    prune(
        model,
        _cfg(method=method, sparsity=sparsity, pattern=pattern),
        dataset=random_tokens(4, 16),
        progress=False,
    )
    report = sparsity_report(model)
    assert report.total == pytest.approx(0.5, abs=0.01)
    if pattern != "unstructured":
        assert report.pattern_holds(pattern)
    for name, weight in outside.items():  # embeddings, lm_head, pooler, classifier untouched
        assert torch.equal(model.get_submodule(name).weight, weight), name
    run = model.hf_compress_report.to_dict()
    assert run["config"]["method"] == method and run["seconds"] > 0
    assert len(run["modules"]) == sum(1 for m in report.modules if m.block is not None)


def test_lm_head_and_tied_embeddings_are_never_pruned():
    model = FACTORIES["llama"]()
    emb = model.get_input_embeddings().weight.clone()
    prune(model, _cfg(method="magnitude", sparsity=0.9), progress=False)
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_zeros_are_positive():
    model = FACTORIES["llama"]()
    prune(model, _cfg(method="sparsegpt", sparsity=0.5), dataset=random_tokens(4, 16), progress=False)
    for name, p in model.named_parameters():
        if "layers" in name and p.ndim == 2:
            assert not torch.signbit(p[p == 0]).any(), name


def test_targets_and_ignore():
    model = FACTORIES["llama"]()
    prune(
        model,
        _cfg(method="magnitude", sparsity=0.5, targets=[r"mlp\."], ignore=[r"down_proj"]),
        progress=False,
    )
    by_name = {m.name: m.sparsity for m in sparsity_report(model).modules}
    assert by_name["model.layers.0.mlp.up_proj"] == pytest.approx(0.5, abs=0.01)
    assert by_name["model.layers.0.mlp.down_proj"] == 0
    assert by_name["model.layers.0.self_attn.q_proj"] == 0


def test_layer_sparsity_list_and_owl():
    model = FACTORIES["llama"](layers=3)
    prune(
        model,
        _cfg(method="wanda", sparsity=0.5, layer_sparsity=[0.2, 0.5, 0.8]),
        dataset=random_tokens(4, 16),
        progress=False,
    )
    per_block = sparsity_report(model).per_block()
    assert list(per_block.values()) == pytest.approx([0.2, 0.5, 0.8], abs=0.015)
    model = FACTORIES["llama"](layers=3)
    prune(
        model,
        _cfg(method="wanda", sparsity=0.5, schedule="owl", owl_lambda=0.1),
        dataset=random_tokens(4, 16),
        progress=False,
    )
    schedule = model.hf_compress_report.schedule
    assert sum(schedule["sparsity"]) / 3 == pytest.approx(0.5, abs=1e-6)
    assert max(schedule["sparsity"]) - min(schedule["sparsity"]) == pytest.approx(0.2, abs=1e-6)


def test_sparsegpt_lowers_output_error_vs_magnitude_on_calibration_data():
    ids = random_tokens(8, 32, seed=3)
    dense = FACTORIES["llama"]()
    with torch.no_grad():
        ref = dense(input_ids=ids).logits
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = FACTORIES["llama"]()
        prune(model, _cfg(method=method, sparsity=0.5, group="row"), dataset=ids, progress=False)
        with torch.no_grad():
            errors[method] = float((model(input_ids=ids).logits - ref).pow(2).mean())
    assert errors["sparsegpt"] < errors["magnitude"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.0}, r"sparsity=1.0 must be a number in \[0, 1\)"),
        ({"sparsity": -0.1}, "sparsity=-0.1"),
        ({"pattern": "4:4"}, "0 < N < M"),
        ({"method": "obs"}, "method='obs' is not supported; allowed: 'magnitude', 'wanda', 'sparsegpt'"),
        ({"pattern": "2:4", "sparsity": 0.3}, "contradicts"),
        ({"n_samples": 0}, "n_samples=0 must be a positive integer"),
        ({"targets": ["("]}, "not a valid regex"),
        ({"pattern": "2:4", "block_size": 6}, "multiple of M=4"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrunerConfig(**kwargs)


def test_config_round_trip(tmp_path):
    cfg = PrunerConfig(method="wanda", pattern="2:4", targets=["mlp"], seqlen=512)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert PrunerConfig.from_yaml(tmp_path / "c.yaml") == cfg
    with pytest.raises(ValueError, match="unknown PrunerConfig field"):
        PrunerConfig.from_dict({"metod": "wanda"})


def test_bad_input_fails_before_any_weight_changes():
    model = FACTORIES["llama"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="match no prunable module"):
        prune(model, _cfg(method="magnitude", targets=["nothing_here"]), progress=False)
    with pytest.raises(ValueError, match="needs calibration data"):
        prune(model, _cfg(method="sparsegpt"), progress=False)
    with pytest.raises(ValueError, match="layer_sparsity has 3 entries but the model has 2 blocks"):
        prune(model, _cfg(method="magnitude", layer_sparsity=[0.1, 0.2, 0.3]), progress=False)
    with pytest.raises(Exception, match="token|window|short"):
        prune(model, _cfg(method="wanda", seqlen=64), dataset=random_tokens(2, 16)[:, :0], progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unsupported_architecture():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4))
    with pytest.raises(UnsupportedArchitectureError, match="model_type='mamba'.*supported: bert"):
        prune(model, _cfg(method="magnitude"), progress=False)
