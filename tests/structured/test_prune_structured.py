"""prune_structured end to end on tiny models: save -> reload -> equal logits, generate, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

from hf_compress.models.table import UnsupportedArchitectureError
from hf_compress.portable import save_pretrained_portable
from hf_compress.structured import StructuredConfig, prune_structured
from tests.tiny_models import FACTORIES, random_tokens, tiny_llama

# (targets, sparsity): every family, including heads + hidden together for GPT-2 / OPT / BERT, whose
# configs have no head_dim field (hidden stays heads x head_dim)
PLAIN_CASES = {
    "llama": ["heads,ffn", "kv_groups,hidden", "layers", "heads,kv_groups,ffn,hidden,layers"],
    "qwen2": ["kv_groups,ffn", "hidden", "layers,ffn"],
    "gpt2": ["ffn", "layers", "heads,hidden,ffn"],
    "opt": ["ffn", "layers", "heads,hidden"],
    "bert": ["ffn", "layers", "heads,hidden,ffn"],
}


def same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def generate_matches_forward(model, ids) -> bool:
    """Greedy generate with the KV cache picks the same tokens as full forwards without a cache."""
    out = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    with torch.no_grad():
        full = model(out, use_cache=False).logits[0, ids.shape[1] - 1 : -1].argmax(-1)
    return torch.equal(full, out[0, ids.shape[1] :])


@pytest.mark.parametrize(
    "family,targets", [(f, t) for f, cases in PLAIN_CASES.items() for t in cases], ids=lambda x: str(x)
)
def test_prune_save_reload_equal_logits(tmp_path, family, targets):
    model = FACTORIES[family](seed=1, layers=3)
    ids = random_tokens(4, 16)
    importance = "activation" if family == "bert" else "taylor"
    config = StructuredConfig(targets=targets, sparsity=0.3, importance=importance, n_samples=4, seqlen=16)
    prune_structured(model, config, dataset=ids, progress=False)
    report = model.hf_compress_report
    assert report.plain_config and report.uniform, report.to_dict()
    assert 0.2 < report.removed_decoder_fraction < 0.45
    path = save_pretrained_portable(model, None, tmp_path / "pruned")
    loader = AutoModelForSequenceClassification if family == "bert" else AutoModelForCausalLM
    reloaded = loader.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    if family != "bert":
        assert generate_matches_forward(reloaded, ids[:1, :6])


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "opt"])
def test_per_layer_shapes_run_and_generate(family):
    model = FACTORIES[family](seed=2, layers=3)
    ids = random_tokens(4, 16)
    config = StructuredConfig(
        targets="heads,ffn", sparsity=0.3, importance="magnitude_l1", uniform=False, round_to=4
    )
    prune_structured(model, config, progress=False)
    report = model.hf_compress_report
    shapes = report.layer_shapes
    assert len(shapes) == 3 and not report.uniform and not report.plain_config
    assert all(s["ffn"] % 4 == 0 for s in shapes)
    assert all(s["num_heads"] % s["num_kv_heads"] == 0 for s in shapes)
    assert generate_matches_forward(model, ids[:1, :6])


def test_explicit_dims_and_report():
    model = tiny_llama(seed=3, layers=3)
    config = StructuredConfig(
        keep_heads=4,
        keep_kv_heads=2,
        keep_ffn=[64, 48, 32],
        keep_hidden=36,
        keep_layers=2,
        importance="magnitude_l2",
    )
    prune_structured(model, config, progress=False)
    report = model.hf_compress_report
    assert report.after["layers"] == 2 and report.after["hidden"] == 36 and report.after["heads"] == 4
    assert report.after["kv_heads"] == 2 and report.after["head_dim"] == 8
    kept = report.kept["layers"]
    assert report.after["ffn"] == [[64, 48, 32][i] for i in kept]
    assert model.config.head_dim == 8 and model.config.num_key_value_heads == 2
    assert report.to_dict()["config"]["keep_ffn"] == [64, 48, 32]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(targets="heads", sparsity=0.28), "would leave 0 of 3 query heads per KV group"),
        (
            dict(targets="heads", sparsity=0.5),
            r"cannot be met: removing every unit of \['heads'\] removes 29.9%",
        ),
        (dict(targets="kv_groups", sparsity=0.38), "would leave 0 of 3 KV groups"),
        (dict(targets="layers", sparsity=0.9), "would leave 0 of 2 blocks"),
        (dict(keep_heads=7), "cannot keep the GQA ratio"),
        (dict(keep_heads=6, keep_kv_heads=1), "cannot keep the GQA ratio"),
        (dict(keep_ffn=[8, 8, 8]), "has 3 entries but the model has 2 blocks"),
        (dict(keep_hidden=100), "exceeds the model's 72"),
    ],
)
def test_bad_requests_fail_before_any_change(kwargs, match):
    model = tiny_llama(seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = model.config.to_dict()
    with pytest.raises(ValueError, match=match):
        prune_structured(model, StructuredConfig(importance="magnitude_l1", **kwargs), progress=False)
    assert same_state(before, model.state_dict()) and model.config.to_dict() == config_before


def test_unsupported_architecture_and_heads_fail_early():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(
        T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=32)
    )
    with pytest.raises(UnsupportedArchitectureError, match="model_type='t5'"):
        prune_structured(t5, StructuredConfig(sparsity=0.2, importance="random"))
    bert = FACTORIES["bert"]()
    with pytest.raises(ValueError, match="needs a causal LM loss"):
        prune_structured(bert, StructuredConfig(sparsity=0.2, importance="taylor"), dataset=random_tokens())
    mlm = BertForMaskedLM(
        BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48
        )
    ).eval()
    before = {k: v.clone() for k, v in mlm.state_dict().items()}
    with pytest.raises(ValueError, match="does not say how to cut it"):
        prune_structured(mlm, StructuredConfig(targets="hidden", sparsity=0.2, importance="random"))
    assert same_state(before, mlm.state_dict())


def test_calibration_is_required_before_work():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_structured(model, StructuredConfig(sparsity=0.2, importance="activation"))
    assert same_state(before, model.state_dict())


def test_precomputed_scores_give_the_same_model():
    from hf_compress.calibration import calibration_windows
    from hf_compress.pruning.structured import importance_scores

    ids = random_tokens(4, 16)
    config = StructuredConfig(
        targets="heads,ffn", sparsity=0.25, importance="activation", n_samples=4, seqlen=16
    )
    a, b = tiny_llama(seed=5), tiny_llama(seed=5)
    scores = importance_scores(
        b, "activation", config.targets, calib=calibration_windows(None, ids), progress=False
    )
    prune_structured(a, config, dataset=ids, progress=False)
    prune_structured(b, config, scores=scores, progress=False)
    assert same_state(a.state_dict(), b.state_dict())


def tiny_gemma(kind: str):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GemmaConfig, GemmaForCausalLM

    torch.manual_seed(0)
    dims = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
    )
    if kind == "gemma":
        return GemmaForCausalLM(GemmaConfig(**dims)).eval()
    return Gemma3ForCausalLM(Gemma3TextConfig(**dims, sliding_window=8)).eval()


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_gemma_hidden_pruning_reloads_with_its_embedding_scale(tmp_path, kind):
    """Gemma multiplies embeddings by sqrt(hidden); the pruned model uses the new width's scale, as a reload does."""
    model = tiny_gemma(kind)
    prune_structured(
        model,
        StructuredConfig(targets="heads,hidden", sparsity=0.3, importance="magnitude_l1"),
        progress=False,
    )
    assert model.get_input_embeddings().embed_scale.item() == pytest.approx(model.config.hidden_size**0.5)
    reloaded = AutoModelForCausalLM.from_pretrained(
        save_pretrained_portable(model, None, tmp_path / "g")
    ).eval()
    ids = random_tokens(2, 12)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
